//! Sessions with one peer device: a record of a current state and up to
//! [`MAX_ARCHIVED_STATES`] archived ones.
//!
//! # Archived states and post-compromise security
//!
//! A record holds several states after a re-initiation (a second
//! [`SessionRecord::initiate`], a peer's new prekey message, both sides
//! initiating at once). Only the current state is a full ratchet in every
//! respect. An archived state decrypts the messages of the chains it has
//! (messages in flight); it may take a DH step only if it is our initiation
//! the peer had not answered, or the state the peer's new session displaced
//! (until the next heal); and it becomes current again only by the rules of
//! `SessionRecord::promotes`, which both sides apply alike and which a copy
//! of an old record cannot use to move a record back and forth. Each time
//! the current state takes a DH step on a message from the peer (a heal),
//! every other state is cut down to its skipped message keys (a state
//! without any is dropped): a cut state has no root key, ratchet key pair,
//! chain key or next header key, derives nothing and never becomes current
//! again. Kept keys expire after [`MAX_KEPT_STATE_HEALS`] more heals.
//! PROTOCOL.md 9.10 gives the argument, and why this follows DESIGN.md's
//! rule for archived states with one addition (the displaced state).
//!
//! A [`SessionRecord`] owns everything this device knows about one peer
//! device: the identity key it trusts for that peer, the session state it
//! sends with, older states it still accepts messages on (simultaneous
//! initiation, a peer that restarted a session), and the base keys of prekey
//! messages already processed (so a replayed first message is a duplicate,
//! never a second session). It does not own our identity, our prekeys or
//! storage: callers pass the first two in and persist the record with
//! [`SessionRecord::to_bytes`].
//!
//! Decryption is two-phase: [`SessionRecord::decrypt`] returns a
//! [`PendingDecrypt`] with the plaintext and changes nothing; the caller
//! stores the plaintext, then [`SessionRecord::commit`]s, deleting the
//! consumed prekeys ([`PendingDecrypt::consumed_prekeys`]) in the same
//! transaction.
//!
//! # Example
//!
//! ```
//! # use std::time::SystemTime;
//! use samizdat::{address::Address, keys::IdentityKeyPair, prekeys::PreKeySet, session::SessionRecord};
//! # use rand_core::SeedableRng;
//! # let mut rng = chacha20::ChaCha20Rng::from_seed([1; 32]);
//! let alice = IdentityKeyPair::generate(&mut rng);
//! let bob = IdentityKeyPair::generate(&mut rng);
//! let mut bob_prekeys = PreKeySet::new(&mut rng, &bob, SystemTime::now());
//! bob_prekeys.add_one_time_prekeys(&mut rng, &bob, 10, SystemTime::now())?;
//! let bundle = bob_prekeys.bundle(&bob, &Address::new("bob", 1)?).expect("a signed prekey");
//!
//! // Alice starts a session from Bob's bundle (as the server would send it).
//! let bundle = samizdat::prekeys::PreKeyBundle::from_bytes(&bundle.to_bytes())?;
//! let (alice_address, bob_address) = (Address::new("alice", 1)?, Address::new("bob", 1)?);
//! let mut alice_record = SessionRecord::new();
//! alice_record.initiate(&mut rng, &alice, &alice_address, &bundle)?;
//! let wire = alice_record.encrypt(&mut rng, b"hello Bob")?;
//!
//! // Bob decrypts: first the plaintext and the prekeys to delete, then the commit.
//! let mut bob_record = SessionRecord::new();
//! let pending = bob_record.decrypt(&mut rng, &bob, &bob_address, &alice_address, &bob_prekeys, &wire)?;
//! assert_eq!(pending.plaintext(), b"hello Bob");
//! bob_prekeys.consume(&pending.consumed_prekeys());
//! bob_record.commit(pending)?;
//! let reply = bob_record.encrypt(&mut rng, b"hi Alice")?;
//! let alice_prekeys = PreKeySet::new(&mut rng, &alice, SystemTime::now());
//! let (plaintext, _) =
//!     alice_record.decrypt_and_commit(&mut rng, &alice, &alice_address, &bob_address, &alice_prekeys, &reply)?;
//! assert_eq!(plaintext, b"hi Alice");
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

mod state;

use std::{
    collections::VecDeque,
    fmt,
    sync::atomic::{AtomicU64, Ordering},
};

use prost::Message as _;
use rand_core::CryptoRng;
use samizdat_proto::storage;
use zeroize::Zeroizing;

use self::state::{Keys, SessionState};
use crate::{
    DecodeError, DecryptError, SessionError,
    address::Address,
    handshake::pqxdh,
    heal::Healing,
    keys::{IdentityKey, IdentityKeyPair, Secret32, X25519PublicKey},
    limits::MAX_STORED_SKIPPED_KEYS,
    limits::{MAX_ARCHIVED_STATES, MAX_KEPT_STATE_HEALS, MAX_SEEN_BASE_KEYS, MAX_STATE_LEN},
    padding::ContentType,
    prekeys::{ConsumedPreKeys, PreKeyBundle, PreKeySet},
    ratchet::{DecryptPlan, PlanError, Seeds, message_key::MessageKey},
    wire::{Message, PreKeyHeader, PreKeyMessage, RatchetMessage},
};

/// The format version of a serialized [`SessionRecord`].
pub const RECORD_VERSION: u32 = 1;

/// The format version of a record's skipped keys' seeds stored apart.
const SEEDS_VERSION: u32 = 1;

/// The largest seeds-apart row accepted: [`MAX_STORED_SKIPPED_KEYS`] keys
/// (about 40 bytes each encoded) and a header per chain of each state.
const MAX_SEEDS_LEN: usize = MAX_STORED_SKIPPED_KEYS * 48 + (MAX_ARCHIVED_STATES + 1) * 5 * 80 + 64;

/// The largest serialized record accepted: every state at its largest, plus
/// the remembered base keys.
pub const MAX_RECORD_LEN: usize = (MAX_ARCHIVED_STATES + 1) * MAX_STATE_LEN / 8 + MAX_SEEN_BASE_KEYS * 40;

/// Gives every record object its own number, so that a pending decryption
/// commits only into the object it was made on (two empty records, of two
/// peers or two devices, are otherwise alike).
static RECORD_OBJECTS: AtomicU64 = AtomicU64::new(1);

fn next_object() -> u64 {
    RECORD_OBJECTS.fetch_add(1, Ordering::Relaxed)
}

/// Everything this device knows about one peer device.
pub struct SessionRecord {
    trusted_identity: Option<IdentityKey>,
    current: Option<SessionState>,
    /// Most recently used first.
    archived: VecDeque<SessionState>,
    /// Oldest first.
    seen_base_keys: VecDeque<X25519PublicKey>,
    generation: u64,
    /// How many times the current state took a DH step on a peer's message.
    heals: u64,
    /// How many sessions we initiated with the peer.
    initiations: u64,
    /// What healing knows of the peer (PROTOCOL.md 20.4).
    healing: Healing,
    /// This object's number (not stored): see [`RECORD_OBJECTS`].
    object: u64,
    /// Whether the skipped keys (which ones there are) changed since the
    /// record was loaded: then a device rewrites their seeds' row. Not stored.
    skipped_changed: bool,
}

/// Why a decryption attempt on a record loaded with its seeds apart did not
/// give a pending decryption.
pub(crate) enum Attempt {
    /// It failed (nothing changed).
    Failed(SessionError),
    /// The message needs a skipped key whose seed is stored apart: attach
    /// the seeds ([`SessionRecord::attach_seeds`]) and decrypt again.
    NeedSeeds,
    /// A forgery (`Unauthenticated`) whose refusal cost many chain steps:
    /// `key`, with the session's associated data, opens the body of any
    /// message with this header, so that a device can refuse a replay of the
    /// header with another broken body at the cost of one AEAD.
    Costly {
        /// The message key of the header.
        key: Box<MessageKey>,
        /// The associated data of the state whose chain it is on.
        associated_data: Vec<u8>,
    },
}

impl<E: Into<SessionError>> From<E> for Attempt {
    fn from(error: E) -> Self {
        Self::Failed(error.into())
    }
}

impl From<PlanError> for SessionError {
    /// Only for states that hold every seed (the public loaders').
    fn from(error: PlanError) -> Self {
        match error {
            PlanError::Decrypt(error) => error.into(),
            PlanError::SeedApart | PlanError::Costly(_) => DecryptError::Unauthenticated.into(),
        }
    }
}

/// Which state of a record a message decrypted with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Slot {
    Current,
    Archived(usize),
}

/// How an archived state became current (`SessionRecord::promotes`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Promotion {
    /// By rule 4: the state it leaves is displaced in turn.
    Back,
    /// By any other rule.
    Plain,
}

enum Change {
    /// A message of an existing state; `prekey` if it came with a prekey
    /// header (its sender has not had our answer on that state yet).
    Existing {
        slot: Slot,
        plan: DecryptPlan,
        prekey: bool,
    },
    New(Box<SessionState>),
}

/// A decryption that has not been committed: the plaintext, the prekeys to
/// delete, and the change to the record. Dropping it changes nothing, and the
/// same message will decrypt again.
pub struct PendingDecrypt {
    plaintext: Zeroizing<Vec<u8>>,
    /// What the plaintext is: the app's message, or a control message
    /// between the two devices' libraries (PROTOCOL.md 5.2).
    content: ContentType,
    sender: IdentityKey,
    consumed: ConsumedPreKeys,
    /// The record this was made against: its generation, and the base key of
    /// the state the change applies to (the current one for a new session).
    generation: u64,
    base_key: Option<X25519PublicKey>,
    /// The record object it was made on ([`SessionRecord::object`]).
    object: u64,
    change: Change,
}

impl PendingDecrypt {
    /// The decrypted plaintext.
    pub fn plaintext(&self) -> &[u8] {
        &self.plaintext
    }

    /// The sender's identity key.
    pub fn sender_identity(&self) -> IdentityKey {
        self.sender
    }

    /// What the plaintext is (only the device layer receives control content).
    pub(crate) fn content(&self) -> ContentType {
        self.content
    }

    /// The prekeys to delete in the same transaction as the commit (only for
    /// a prekey message that started a new session).
    pub fn consumed_prekeys(&self) -> ConsumedPreKeys {
        self.consumed
    }

    /// Whether this message started a new session.
    pub fn is_new_session(&self) -> bool {
        matches!(self.change, Change::New(_))
    }
}

impl fmt::Debug for PendingDecrypt {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PendingDecrypt")
            .field("plaintext_len", &self.plaintext.len())
            .field("consumed", &self.consumed)
            .field("new_session", &self.is_new_session())
            .finish_non_exhaustive()
    }
}

impl Default for SessionRecord {
    fn default() -> Self {
        Self {
            trusted_identity: None,
            current: None,
            archived: VecDeque::new(),
            seen_base_keys: VecDeque::new(),
            generation: 0,
            heals: 0,
            initiations: 0,
            healing: Healing::default(),
            object: next_object(),
            skipped_changed: false,
        }
    }
}

impl SessionRecord {
    /// An empty record: no trusted identity, no session.
    pub fn new() -> Self {
        Self::default()
    }

    /// The identity key trusted for this peer, if any.
    pub fn trusted_identity(&self) -> Option<IdentityKey> {
        self.trusted_identity
    }

    /// What healing knows of the peer.
    pub(crate) fn healing(&self) -> &Healing {
        &self.healing
    }

    /// Whether the session we initiated with base key `base_key` was
    /// answered: a state of it that is no longer an unanswered initiation, or
    /// none at all (a state is dropped only after a reply on another).
    pub(crate) fn answered(&self, base_key: &[u8; 32]) -> bool {
        self.current
            .iter()
            .chain(self.archived.iter())
            .find(|state| state.initiator && state.base_key.as_bytes() == base_key)
            .is_none_or(|state| !state.is_unanswered_initiation())
    }

    /// What healing knows of the peer, to change: a change counts as a
    /// change of the record (a pending decryption made before it is stale).
    pub(crate) fn healing_mut(&mut self) -> &mut Healing {
        self.generation = self.generation.wrapping_add(1);
        &mut self.healing
    }

    /// Whether there is a state to encrypt with.
    pub fn has_session(&self) -> bool {
        self.current.is_some()
    }

    /// How many archived states are kept (at most [`MAX_ARCHIVED_STATES`]),
    /// full ones and those cut down to their kept keys.
    pub fn archived_states(&self) -> usize {
        self.archived.len()
    }

    /// How many archived states were cut down to their kept keys.
    pub fn kept_states(&self) -> usize {
        self.archived.iter().filter(|s| !s.is_full()).count()
    }

    /// The base key of the current state's handshake: two records use the
    /// same session exactly when their current base keys are equal.
    pub fn current_base_key(&self) -> Option<X25519PublicKey> {
        self.current.as_ref().map(|s| s.base_key)
    }

    /// The app's explicit decision to trust `identity` for this peer (after
    /// [`SessionError::UntrustedIdentity`], typically once the user compared
    /// safety numbers). States built with another identity are dropped.
    pub fn trust_identity(&mut self, identity: IdentityKey) {
        let skipped_before = self.skipped_count();
        self.trusted_identity = Some(identity);
        if self.current.as_ref().is_some_and(|s| s.remote_identity != identity) {
            self.current = None;
        }
        self.archived.retain(|s| s.remote_identity == identity);
        if self.current.is_none() {
            // The most recent full state sends; without one, kept keys alone
            // are of no use.
            match self.archived.iter().position(SessionState::is_full) {
                Some(i) => {
                    self.current = self.archived.remove(i);
                    if let Some(current) = &mut self.current {
                        current.displaced = false;
                    }
                }
                None => self.archived.clear(),
            }
        }
        self.skipped_changed |= self.skipped_count() != skipped_before;
        self.generation = self.generation.wrapping_add(1);
    }

    fn check_identity(&self, identity: IdentityKey) -> Result<(), SessionError> {
        match self.trusted_identity {
            Some(trusted) if trusted != identity => Err(SessionError::UntrustedIdentity { identity }),
            _ => Ok(()),
        }
    }

    /// Starts a new session from the peer's verified bundle; it becomes the
    /// current state and the previous one is archived. An identity is
    /// trusted on first use; a different one later is refused.
    ///
    /// Both addresses (ours, and the bundle's) are bound into the handshake:
    /// the peer must decrypt with the same two addresses, so a message
    /// relabelled by a server as coming from someone else does not decrypt.
    ///
    /// # Errors
    /// [`SessionError::UntrustedIdentity`] if the bundle's identity differs
    /// from the trusted one; [`SessionError::Bundle`] for a bundle whose keys
    /// give an all-zero agreement.
    pub fn initiate<R: CryptoRng + ?Sized>(
        &mut self,
        rng: &mut R,
        ours: &IdentityKeyPair,
        our_address: &Address,
        bundle: &PreKeyBundle,
    ) -> Result<(), SessionError> {
        self.check_identity(bundle.identity_key())?;
        let initiated = pqxdh::initiate(rng, ours, our_address, bundle)?;
        self.initiations = self.initiations.saturating_add(1);
        let state = SessionState {
            keys: Keys::Full(initiated.ratchet),
            remote_identity: bundle.identity_key(),
            base_key: initiated.header.base_key,
            initiator: true,
            pending_prekey: Some(initiated.header),
            kept_since: 0,
            initiated: self.initiations,
            displaced: false,
            came_back: false,
            left_answered: false,
            followed: false,
        };
        self.install(state);
        Ok(())
    }

    /// [`Self::initiate`] to heal (PROTOCOL.md 20.5): the state it archives
    /// is marked displaced, as a new session of the peer's would mark it, so
    /// that the peer's messages in flight on it, a DH step included, still
    /// decrypt until the next heal (the peer has not heard of the new session
    /// yet). It does not come back while the new session is unanswered
    /// (`SessionRecord::promotes`, rule 3). When the current state is the
    /// session of our previous heal (`previous_heal`), still unanswered and
    /// with the bundle's identity, nothing is initiated: the reset goes on it
    /// again.
    pub(crate) fn initiate_heal<R: CryptoRng + ?Sized>(
        &mut self,
        rng: &mut R,
        ours: &IdentityKeyPair,
        our_address: &Address,
        bundle: &PreKeyBundle,
        previous_heal: Option<X25519PublicKey>,
    ) -> Result<(), SessionError> {
        // Our last heal's session, still unanswered, with the same identity:
        // the new reset goes on it (one more prekey message of it), rather
        // than archiving one more state per interval while the peer is away
        // (the session the peer is on would fall off the archived states).
        if let Some(current) = &self.current
            && current.remote_identity == bundle.identity_key()
            && previous_heal == Some(current.base_key)
            // Made on the signed prekey the fresh bundle still offers (one
            // the peer rotated out would never be read).
            && current.pending_prekey.as_ref().is_some_and(|header| header.signed_prekey_id == bundle.signed_prekey_id())
        {
            return Ok(());
        }
        let had_current = self.current.is_some();
        self.initiate(rng, ours, our_address, bundle)?;
        if let Some(previous) = self.archived.front_mut().filter(|_| had_current) {
            previous.displaced = previous.is_full() && !previous.is_unanswered_initiation();
        }
        Ok(())
    }

    /// Makes `state` current, archiving the previous one.
    fn install(&mut self, state: SessionState) {
        self.trusted_identity = Some(state.remote_identity);
        if let Some(mut previous) = self.current.replace(state) {
            // Only the current state sends, so only it carries the flag; and
            // rule 6 looks only at the current state's `followed`.
            previous.left_answered = false;
            previous.followed = false;
            self.archived.push_front(previous);
            if let Some(dropped) = self.archived.get(MAX_ARCHIVED_STATES) {
                self.skipped_changed |= dropped.skipped_count() > 0;
            }
            self.archived.truncate(MAX_ARCHIVED_STATES);
        }
        self.generation = self.generation.wrapping_add(1);
    }

    /// Encrypts with the current state and returns the wire bytes: a prekey
    /// message until the peer's first reply decrypted, a ratchet message
    /// after. The record is advanced before the bytes are returned, so a key
    /// is never used twice: persist it before sending.
    ///
    /// # Errors
    /// [`SessionError::NoSession`], or [`SessionError::Encrypt`].
    pub fn encrypt<R: CryptoRng + ?Sized>(&mut self, rng: &mut R, plaintext: &[u8]) -> Result<Vec<u8>, SessionError> {
        self.encrypt_content(rng, plaintext, ContentType::App)
    }

    /// [`Self::encrypt`] of content of type `content` (PROTOCOL.md 5.2).
    pub(crate) fn encrypt_content<R: CryptoRng + ?Sized>(
        &mut self,
        rng: &mut R,
        plaintext: &[u8],
        content: ContentType,
    ) -> Result<Vec<u8>, SessionError> {
        let state = self.current.as_mut().ok_or(SessionError::NoSession)?;
        // The current state is always full (cut states are never current).
        let Keys::Full(ratchet) = &mut state.keys else { return Err(SessionError::NoSession) };
        let message = ratchet.encrypt_content(rng, plaintext, content, state.left_answered)?;
        self.generation = self.generation.wrapping_add(1);
        Ok(match &state.pending_prekey {
            Some(header) => Message::PreKey(Box::new(PreKeyMessage { header: header.clone(), message })).into_bytes(),
            None => message.into_bytes(),
        })
    }

    /// Decrypts `bytes` from `peer` (the address the transport gave) without
    /// changing the record: see [`PendingDecrypt`].
    ///
    /// A ratchet message is tried on the current state, then on the archived
    /// ones (full ones may take a DH step; cut ones use only their kept
    /// keys). A prekey message whose base key is known goes to that state; an
    /// unknown one runs the responder's side of PQXDH with `ours`,
    /// `our_address`, `peer` and `prekeys`.
    ///
    /// # Errors
    /// [`SessionError::Decrypt`] with [`DecryptError::Duplicate`] for a
    /// message already decrypted, [`DecryptError::Rollback`] for another
    /// message on a counter already used (a sender that went backwards),
    /// [`DecryptError::KeyEvicted`], [`DecryptError::TooFarAhead`] and
    /// [`DecryptError::NoMatchingState`] (no state opens the header),
    /// [`SessionError::DuplicatePreKeyMessage`],
    /// [`SessionError::UntrustedIdentity`], [`SessionError::UnknownPreKey`],
    /// [`SessionError::NoSession`], [`SessionError::Malformed`], and
    /// [`DecryptError::Unauthenticated`] for a message altered after its
    /// header opened.
    pub fn decrypt<R: CryptoRng + ?Sized>(
        &self,
        rng: &mut R,
        ours: &IdentityKeyPair,
        our_address: &Address,
        peer: &Address,
        prekeys: &PreKeySet,
        bytes: &[u8],
    ) -> Result<PendingDecrypt, SessionError> {
        let message = Message::from_bytes(bytes)?;
        // A record from the public loader holds every seed: no `NeedSeeds`.
        let pending =
            self.decrypt_decoded(rng, ours, our_address, peer, prekeys, &message).map_err(|attempt| match attempt {
                Attempt::Failed(error) => error,
                Attempt::NeedSeeds | Attempt::Costly { .. } => DecryptError::Unauthenticated.into(),
            })?;
        // This API carries the app's messages only: a control message of a
        // peer's device layer (PROTOCOL.md 5.2) is for a `Device`.
        if pending.content() != ContentType::App {
            return Err(DecryptError::Unauthenticated.into());
        }
        Ok(pending)
    }

    /// [`Self::decrypt`] of a message already decoded (by
    /// [`Message::from_bytes`]) on a record that may have been loaded with
    /// its skipped keys' seeds apart ([`Self::from_hot_bytes`]).
    pub(crate) fn decrypt_decoded<R: CryptoRng + ?Sized>(
        &self,
        rng: &mut R,
        ours: &IdentityKeyPair,
        our_address: &Address,
        peer: &Address,
        prekeys: &PreKeySet,
        message: &Message,
    ) -> Result<PendingDecrypt, Attempt> {
        match message {
            Message::Ratchet(message) => self.decrypt_existing(rng, message, None),
            Message::PreKey(prekey) => self.decrypt_prekey(rng, (ours, our_address), peer, prekeys, prekey),
        }
    }

    /// Whether [`Self::decrypt`] of a prekey message with this header would
    /// use the prekeys: `false` when the header goes to a state of this
    /// record (its base key and identity are those of a state we responded
    /// to) or its base key is one this record remembers (a duplicate). These
    /// are the checks a prekey message meets first (PROTOCOL.md 9.5, steps 2
    /// and 3); a caller that keeps its prekeys in a store loads none for such
    /// a message.
    pub fn needs_prekeys(&self, header: &PreKeyHeader) -> bool {
        self.slot_of_base_key(&header.base_key, header.identity_key).is_none()
            && !self.seen_base_keys.contains(&header.base_key)
    }

    fn decrypt_prekey<R: CryptoRng + ?Sized>(
        &self,
        rng: &mut R,
        (ours, our_address): (&IdentityKeyPair, &Address),
        peer: &Address,
        prekeys: &PreKeySet,
        prekey: &PreKeyMessage,
    ) -> Result<PendingDecrypt, Attempt> {
        let header = prekey.header();
        if let Some(slot) = self.slot_of_base_key(&header.base_key, header.identity_key) {
            return self.decrypt_existing(rng, prekey.message(), Some(slot));
        }
        if self.seen_base_keys.contains(&header.base_key) {
            return Err(SessionError::DuplicatePreKeyMessage.into());
        }
        let (mut ratchet, consumed) = pqxdh::respond(ours, our_address, peer, prekeys, header)?;
        // A header that does not open under the state made from this very
        // message's keys: altered, or made for prekeys of ours that are gone
        // (we reinstalled, and a new prekey has the old one's id): it opens
        // under no state (PROTOCOL.md 9.5, 20.1).
        let (plaintext, content, plan) =
            ratchet.plan_decrypt(rng, prekey.message(), true).map_err(SessionError::from)?;
        // Only now, with the first message authenticated under the identity
        // key it offers, is that key a trust decision: anything that does not
        // authenticate (relabelled, random identity bytes) failed above as a
        // forgery, so a server cannot make the app drop a trusted identity.
        self.check_identity(header.identity_key)?;
        ratchet.apply(plan);
        let state = SessionState {
            keys: Keys::Full(ratchet),
            remote_identity: header.identity_key,
            base_key: header.base_key,
            initiator: false,
            pending_prekey: None,
            kept_since: 0,
            initiated: 0,
            displaced: false,
            came_back: false,
            left_answered: false,
            followed: false,
        };
        Ok(PendingDecrypt {
            plaintext: Zeroizing::new(plaintext),
            content,
            sender: header.identity_key,
            consumed,
            generation: self.generation,
            base_key: self.current_base_key(),
            object: self.object,
            change: Change::New(Box::new(state)),
        })
    }

    fn state(&self, slot: Slot) -> Option<&SessionState> {
        match slot {
            Slot::Current => self.current.as_ref(),
            Slot::Archived(i) => self.archived.get(i),
        }
    }

    fn slots(&self) -> impl Iterator<Item = Slot> + '_ {
        self.current.iter().map(|_| Slot::Current).chain((0..self.archived.len()).map(Slot::Archived))
    }

    fn slot_of_base_key(&self, base_key: &X25519PublicKey, identity: IdentityKey) -> Option<Slot> {
        self.slots().find(|slot| {
            self.state(*slot).is_some_and(|s| !s.initiator && s.base_key == *base_key && s.remote_identity == identity)
        })
    }

    fn decrypt_existing<R: CryptoRng + ?Sized>(
        &self,
        rng: &mut R,
        message: &RatchetMessage,
        only: Option<Slot>,
    ) -> Result<PendingDecrypt, Attempt> {
        let mut best_error: Option<DecryptError> = None;
        let mut costly: Option<(Box<MessageKey>, Vec<u8>)> = None;
        // Whether a state opened the header on a chain it has (and then
        // refused the message); whether one opened it as a DH step of the
        // peer's and the body did not open under the chain the step gives.
        let mut opened = false;
        let mut stepped = false;
        let slots: Vec<Slot> = match only {
            Some(slot) => vec![slot],
            None => self.slots().collect(),
        };
        for slot in slots {
            let Some(state) = self.state(slot) else { continue };
            // An archived state decrypts on the chains it has; only our
            // unanswered initiation may take a DH step (its first answer),
            // and a state a new session of the peer's displaced.
            let allow_step = slot == Slot::Current || state.is_unanswered_initiation() || state.displaced;
            match state.plan_decrypt(rng, message, allow_step) {
                Ok((plaintext, content, plan)) => {
                    return Ok(PendingDecrypt {
                        plaintext: Zeroizing::new(plaintext),
                        content,
                        sender: state.remote_identity,
                        consumed: ConsumedPreKeys::default(),
                        generation: self.generation,
                        base_key: Some(state.base_key),
                        object: self.object,
                        change: Change::Existing { slot, plan, prekey: only.is_some() },
                    });
                }
                // The answer needs a seed stored apart: load it and try again.
                Err(PlanError::SeedApart) => return Err(Attempt::NeedSeeds),
                // A DH step whose body does not open, after many keys: as
                // below, no state reads it (nothing to remember: a header
                // replayed is derived again, at the same bounded cost).
                Err(PlanError::Costly(_)) if state.opens_as_step(message) => stepped = true,
                // A forgery like any other, but remember the key it cost.
                Err(PlanError::Costly(key)) => {
                    let ad = state.ratchet_associated_data().to_vec();
                    costly.get_or_insert((key, ad));
                }
                // No header key of this state opened it: try the next state.
                Err(PlanError::Decrypt(DecryptError::NoMatchingState)) => {}
                // A header that opened says more than one that did not: keep
                // the first such error.
                // A step whose body does not open: the peer answered a
                // ratchet key of ours this state does not have (our store is
                // older than what the peer saw), or the body was altered.
                Err(PlanError::Decrypt(DecryptError::Unauthenticated)) if state.opens_as_step(message) => {
                    stepped = true;
                }
                Err(PlanError::Decrypt(DecryptError::Unauthenticated)) => opened = true,
                Err(PlanError::Decrypt(e)) => {
                    best_error.get_or_insert(e);
                }
            }
        }
        match (best_error, costly) {
            (Some(e), _) => Err(e.into()),
            (None, Some((key, associated_data))) => Err(Attempt::Costly { key, associated_data }),
            // No state, and no identity trusted: no session was ever made
            // with the peer (or we reinstalled). With a trusted identity and
            // no state (a device restored from a backup, PROTOCOL.md 21.6, or
            // states dropped by a trust decision), the peer sends on a
            // session we lost: out of step, and healing brings its messages.
            (None, None) if self.current.is_none() && self.archived.is_empty() && self.trusted_identity.is_none() => {
                Err(SessionError::NoSession.into())
            }
            // A header opened and its body did not: only a forger makes that.
            (None, None) if opened => Err(DecryptError::Unauthenticated.into()),
            // The peer's DH step, on a ratchet key of ours that is gone: no
            // state reads it (PROTOCOL.md 9.5), and healing brings it.
            (None, None) if stepped => Err(DecryptError::NoMatchingState.into()),
            // No state opens the header: the peer's state and ours went apart,
            // or it is forged (PROTOCOL.md 9.5).
            (None, None) => Err(DecryptError::NoMatchingState.into()),
        }
    }

    /// Applies a pending decryption made on this record.
    ///
    /// The state that decrypted becomes current. If it already was and the
    /// message made it take a DH step, the session has healed: every other
    /// state is cut down to its skipped keys (PROTOCOL.md 9.6, 9.10).
    ///
    /// # Errors
    /// [`SessionError::StalePending`] if the record changed since the
    /// decryption was made, or the pending value was made on another record
    /// (nothing is applied then; decrypt again).
    pub fn commit(&mut self, pending: PendingDecrypt) -> Result<(), SessionError> {
        if pending.generation != self.generation || pending.object != self.object {
            return Err(SessionError::StalePending);
        }
        let skipped_before = self.skipped_count();
        let touched = match &pending.change {
            Change::Existing { plan, .. } => plan.touches_skipped(),
            Change::New(state) => state.skipped_count() > 0,
        };
        match pending.change {
            Change::New(state) => {
                if pending.base_key != self.current_base_key() {
                    return Err(SessionError::StalePending);
                }
                self.seen_base_keys.push_back(state.base_key);
                while self.seen_base_keys.len() > MAX_SEEN_BASE_KEYS {
                    self.seen_base_keys.pop_front();
                }
                // The peer started a new session; but its prekey message may
                // be one it sent long ago, on a session it has since left for
                // the current one: until the next heal, the current one may
                // still step, and a step brings it back.
                let mut state = state;
                if let Some(current) = &mut self.current {
                    current.displaced = !current.is_unanswered_initiation();
                    // And the peer may still be on the current one: if the
                    // peer may hold it as answered (our initiation it
                    // answered, or its initiation we answered), it may have
                    // got there after making the new session (their
                    // initiations crossed, 9.9). Our messages on the new one
                    // say that we left it, so that the peer follows (rule 2
                    // on its side). Not for its initiation we never answered:
                    // the peer still waits on it (rule 3), as in a plain
                    // simultaneous initiation.
                    state.left_answered = current.displaced && !current.owes_an_answer();
                }
                self.install(*state);
            }
            Change::Existing { slot, plan, prekey } => {
                if self.state(slot).is_none_or(|s| Some(s.base_key) != pending.base_key) {
                    return Err(SessionError::StalePending);
                }
                let step = plan.is_step();
                // Decided before the plan clears the pending prekey header.
                let peer_left = plan.peer_left_answered();
                let promote = match slot {
                    Slot::Archived(i) => self.promotes(i, prekey, step, peer_left),
                    Slot::Current => None,
                };
                // Our initiation, answered by a peer that left another session
                // for it (rule 2 with the flag): rule 6 must not take us off
                // it for a late message of that other session.
                let followed = peer_left && self.state(slot).is_some_and(SessionState::is_unanswered_initiation);
                let Some(state) = (match slot {
                    Slot::Current => self.current.as_mut(),
                    Slot::Archived(i) => self.archived.get_mut(i),
                }) else {
                    return Err(SessionError::StalePending);
                };
                state.apply(plan);
                match slot {
                    Slot::Current if step => self.heal(),
                    Slot::Current => {}
                    Slot::Archived(i) => self.after_archived_decrypt(i, promote),
                }
                if followed
                    && promote.is_some()
                    && let Some(current) = &mut self.current
                {
                    current.followed = true;
                }
                self.generation = self.generation.wrapping_add(1);
            }
        }
        // The peer is not away since our last reset (20.5).
        self.healing.heard();
        self.evict_across_states();
        self.skipped_changed |= touched || self.skipped_count() != skipped_before;
        Ok(())
    }

    /// How many skipped keys the record holds, over all its states.
    pub(crate) fn skipped_count(&self) -> usize {
        self.current.iter().chain(self.archived.iter()).map(SessionState::skipped_count).sum()
    }

    /// Keeps at most [`MAX_STORED_SKIPPED_KEYS`] skipped keys over all the
    /// record's states, so that what a peer can make us store, and what a
    /// call on its record may have to read, does not grow with the number of
    /// states: the excess goes from the least recently used archived state
    /// first, then the next, the current state last; within a state, from
    /// the oldest chain first, lowest counter first. A kept state left
    /// without keys is dropped.
    fn evict_across_states(&mut self) {
        let mut excess = self.skipped_count().saturating_sub(MAX_STORED_SKIPPED_KEYS);
        if excess == 0 {
            return;
        }
        for state in self.archived.iter_mut().rev().chain(self.current.iter_mut()) {
            // Their counters are remembered as evicted (4.8): a message on
            // one never arrived, and is `KeyEvicted`, not a duplicate.
            for chain in state.chains_mut().iter_mut() {
                let len = chain.skipped.len();
                chain.evict_skipped(excess.min(len));
                excess = excess.saturating_sub(len);
            }
            crate::ratchet::bound_evicted(state.chains_mut());
        }
        self.archived.retain(|state| !state.is_spent());
    }

    /// The current state took a DH step on a message from the peer: cut
    /// every other state down to its kept keys, and drop kept keys older
    /// than [`MAX_KEPT_STATE_HEALS`] heals.
    fn heal(&mut self) {
        self.heals = self.heals.saturating_add(1);
        if let Some(current) = &mut self.current {
            current.came_back = false;
            // The peer stepped on it: it is on this session, and knows it;
            // every other state is cut, so rule 6 has nothing to move to.
            current.left_answered = false;
            current.followed = false;
        }
        let heals = self.heals;
        self.archived = std::mem::take(&mut self.archived)
            .into_iter()
            .filter_map(|state| state.cut(heals))
            .filter(|state| heals.saturating_sub(state.kept_since) < MAX_KEPT_STATE_HEALS)
            .collect();
    }

    /// Whether archived state `i`, which decrypted a message of the peer
    /// (with a prekey header if `prekey`, with a DH step if `step`), becomes
    /// current (PROTOCOL.md 9.10). The peer sends only on its current state,
    /// so the message says which session the peer was on when it sent it;
    /// but it may have been in flight for long, and a copy of an old record
    /// can make more on the chains it holds. The rules, which both sides
    /// apply alike, in order:
    ///
    /// 1. Without a current state, it does.
    /// 2. Our initiation that the peer had not answered, answered by this
    ///    message: while the current state is another such initiation, it
    ///    replaces it only if it is the later of the two, or if the current
    ///    one offered the same one-time prekey (which the peer consumed
    ///    answering this one: the current one can never be answered).
    ///    Otherwise, if the message says (the header's left-answered flag,
    ///    `peer_left`) that the peer left for it a session on which it had
    ///    heard from us: our initiation and the peer's crossed, and we
    ///    answered the peer's before ours arrived (PROTOCOL.md 9.9), so the
    ///    peer is here and will not come back. Otherwise (both sides
    ///    initiated at once, neither had heard from the other), if its base
    ///    key is the smaller, bytewise: the peer, holding the same two
    ///    sessions the other way round, picks the same.
    /// 3. Nothing else replaces our unanswered initiation: we wait for the
    ///    peer's answer, which its prekey message makes the peer's current
    ///    state.
    /// 4. A state a new session of the peer's displaced (it had heard from
    ///    the peer), on a DH step: the peer answered our latest message on
    ///    it, so the new session's prekey message may be one it sent long
    ///    ago and has left behind. Not for a state that came back since the
    ///    last heal; the state it leaves is displaced in turn, so that if the
    ///    step was an old message of the peer's (sent before its new
    ///    session), the peer's next step on the new session brings that one
    ///    back (`Promotion::Back`).
    /// 5. A state the peer initiated and has sent on only with its first
    ///    chain, on a message with a prekey header: the peer is still
    ///    waiting for our answer on it, and will wait (rule 3 on its side).
    ///    Not for a state that came back since the last heal: a copy of the
    ///    record can forge such messages. Nor for a state we answered while
    ///    the current one is `followed`: the peer left a session it had our
    ///    answer on for ours, so that prekey message is older than its move.
    /// 6. Any other, if its base key is the smaller, unless the current state
    ///    is a session the peer initiated and waits for us to answer on
    ///    (`owes_an_answer`), or one chosen over an answered session by the
    ///    left-answered flag, ours (`left_answered`) or the peer's that we
    ///    followed (`followed`): the peer is on it; otherwise the peer,
    ///    holding the same two sessions, picks the same.
    ///
    /// Between two heals a copy of an old record can therefore move the
    /// record a bounded number of times: by rules 4 and 5 once per state, by
    /// rule 6 only down the order of base keys, by rules 1 to 3 only on
    /// states a copy cannot make. The peer's next DH step on the state it
    /// lands on heals, and a heal cuts every other state (PROTOCOL.md 9.10).
    fn promotes(&self, i: usize, prekey: bool, step: bool, peer_left: bool) -> Option<Promotion> {
        let promote = |yes: bool| yes.then_some(Promotion::Plain);
        let state = self.archived.get(i).filter(|state| state.is_full())?;
        let Some(current) = &self.current else { return Some(Promotion::Plain) };
        let smaller = state.base_key.as_bytes() < current.base_key.as_bytes();
        if state.is_unanswered_initiation() {
            if !current.is_unanswered_initiation() {
                return promote(peer_left || smaller);
            }
            let one_time = |s: &SessionState| s.pending_prekey.as_ref().and_then(|h| h.one_time_prekey_id);
            let dead = one_time(current).is_some() && one_time(current) == one_time(state);
            return promote(dead || state.initiated > current.initiated);
        }
        if current.is_unanswered_initiation() {
            return None;
        }
        // A session chosen over an answered one by the left-answered flag
        // (ours, or the peer's that we followed): the peer is on it, so until
        // the next heal rule 6 does not leave it for a late message of
        // another session (9.9). Rule 5 still may, for a state we never
        // answered: blocking it for every state made a follow on a late
        // flagged answer stick for good
        // (`regression_two_initiations_of_bob_crossing_alices_converge`).
        let chosen = current.left_answered || current.followed;
        // Rule 4, once per state between heals; the state it leaves is then
        // displaced in turn (one late message of the old session must not
        // strand us there: audit2_3_*).
        if state.displaced && step && !state.came_back {
            return Some(Promotion::Back);
        }
        // Rule 5 brings a state back at most once between heals: a copy of an
        // old record can forge its messages (the header is public, the chain
        // key copied), and alternating it with rule 6 would otherwise
        // postpone the heal for ever (audit2_1_*).
        // Nor for a state we answered while the current one is our
        // initiation that the peer's flagged first answer chose (`followed`):
        // the peer left an answered session for ours, so a prekey message of
        // a session it had our answer on was sent before it left (9.9).
        if prekey
            && !state.initiator
            && state.chains().len() == 1
            && !state.came_back
            && (state.owes_an_answer() || !current.followed)
        {
            return Some(Promotion::Plain);
        }
        // Rule 6 never leaves a session the peer waits for us to answer, nor
        // one the peer or we said was chosen over an answered session (the
        // left-answered flag, sent or followed: a late message of the
        // session left must not undo that, 9.9), nor brings back one a new
        // session of the peer's displaced: the peer left it (a late message
        // of it must not undo the peer's reset, PROTOCOL.md 20.6); only rule
        // 4 does, on a DH step.
        promote(!current.owes_an_answer() && !chosen && !state.displaced && smaller)
    }

    /// Archived state `i` decrypted a message: it becomes current if
    /// `promote` ([`Self::promotes`]); a cut state that used its last key is
    /// dropped.
    fn after_archived_decrypt(&mut self, i: usize, promote: Option<Promotion>) {
        if let Some(promotion) = promote {
            if let Some(mut promoted) = self.archived.remove(i) {
                // (Set for rule 2 too: such a state cannot come back by it
                // again anyway.)
                promoted.came_back = true;
                promoted.displaced = false;
                if let Some(mut previous) = self.current.replace(promoted) {
                    previous.displaced = promotion == Promotion::Back && !previous.is_unanswered_initiation();
                    previous.left_answered = false;
                    previous.followed = false;
                    self.archived.push_front(previous);
                }
            }
        } else if self.archived.get(i).is_some_and(SessionState::is_spent) {
            self.archived.remove(i);
        }
    }

    /// [`Self::decrypt`] then [`Self::commit`], for callers that persist the
    /// plaintext and the record together. Returns the plaintext and the
    /// prekeys to delete.
    ///
    /// # Errors
    /// As [`Self::decrypt`].
    pub fn decrypt_and_commit<R: CryptoRng + ?Sized>(
        &mut self,
        rng: &mut R,
        ours: &IdentityKeyPair,
        our_address: &Address,
        peer: &Address,
        prekeys: &PreKeySet,
        bytes: &[u8],
    ) -> Result<(Vec<u8>, ConsumedPreKeys), SessionError> {
        let mut pending = self.decrypt(rng, ours, our_address, peer, prekeys, bytes)?;
        // Moved out: the caller owns the plaintext from here.
        let plaintext = std::mem::take(&mut *pending.plaintext);
        let consumed = pending.consumed;
        self.commit(pending)?;
        Ok((plaintext, consumed))
    }

    /// Serializes the record (storage protobuf `SessionRecord`, version
    /// [`RECORD_VERSION`]). The bytes hold secrets: store them sealed.
    pub fn to_bytes(&self) -> Zeroizing<Vec<u8>> {
        self.encode(Seeds::In)
    }

    /// The record without the seeds of its skipped keys (`seeds_apart`): what
    /// a device stores in the peer's session row. The seeds go to their own
    /// row ([`Self::seeds_to_bytes`]).
    pub(crate) fn to_hot_bytes(&self) -> Zeroizing<Vec<u8>> {
        self.encode(Seeds::Apart)
    }

    fn encode(&self, seeds: Seeds) -> Zeroizing<Vec<u8>> {
        let record = Zeroizing::new(storage::SessionRecord {
            version: RECORD_VERSION,
            trusted_identity: self.trusted_identity.map(|k| k.as_bytes().to_vec()).unwrap_or_default(),
            current: self.current.as_ref().map(|state| state.to_record(seeds)),
            archived: self.archived.iter().map(|state| state.to_record(seeds)).collect(),
            seen_base_keys: self.seen_base_keys.iter().map(|k| k.as_bytes().to_vec()).collect(),
            generation: self.generation,
            heals: self.heals,
            seeds_apart: seeds == Seeds::Apart,
            initiations: self.initiations,
            healing: self.healing.to_proto(),
        });
        let mut out = Zeroizing::new(Vec::with_capacity(record.encoded_len()));
        let _ = record.encode(&mut *out);
        out
    }

    /// The seeds of every skipped key (storage protobuf `SkippedSeeds`), to
    /// store apart from [`Self::to_hot_bytes`]; `None` if some seed was not
    /// loaded (attach them first).
    pub(crate) fn seeds_to_bytes(&self) -> Option<Zeroizing<Vec<u8>>> {
        let mut chains = Vec::new();
        for state in self.current.iter().chain(self.archived.iter()) {
            for chain in state.chains().iter().filter(|chain| !chain.skipped.is_empty()) {
                let keys = chain
                    .skipped
                    .iter()
                    .map(|key| {
                        let seed = key.seed()?;
                        Some(storage::SkippedKey { counter: key.counter(), seed: seed.as_bytes().to_vec() })
                    })
                    .collect::<Option<Vec<_>>>()?;
                chains.push(storage::ChainSeeds {
                    base_key: state.base_key.as_bytes().to_vec(),
                    header_key: chain.header_key.as_secret().as_bytes().to_vec(),
                    keys,
                });
            }
        }
        let seeds = Zeroizing::new(storage::SkippedSeeds { version: SEEDS_VERSION, chains });
        let mut out = Zeroizing::new(Vec::with_capacity(seeds.encoded_len()));
        let _ = seeds.encode(&mut *out);
        Some(out)
    }

    /// Whether every skipped key's seed is loaded.
    pub(crate) fn has_all_seeds(&self) -> bool {
        self.current
            .iter()
            .chain(self.archived.iter())
            .flat_map(|state| state.chains().iter())
            .all(|chain| chain.skipped.iter().all(MessageKey::has_seed))
    }

    /// Whether the set of skipped keys changed since the record was loaded
    /// (a device then rewrites the row of their seeds).
    pub(crate) fn skipped_changed(&self) -> bool {
        self.skipped_changed
    }

    /// Gives the skipped keys of a record loaded with [`Self::from_hot_bytes`]
    /// their seeds, from bytes made by [`Self::seeds_to_bytes`] (seeds of
    /// keys the record no longer has are ignored).
    ///
    /// # Errors
    /// A [`DecodeError`] if the bytes do not parse, or leave a skipped key
    /// without its seed.
    pub(crate) fn attach_seeds(&mut self, bytes: &[u8]) -> Result<(), DecodeError> {
        if bytes.len() > MAX_SEEDS_LEN {
            return Err(DecodeError::TooLarge { len: bytes.len(), max: MAX_SEEDS_LEN });
        }
        let seeds = crate::codec::decode_secret::<storage::SkippedSeeds>(bytes)?;
        if seeds.version != SEEDS_VERSION {
            return Err(DecodeError::UnsupportedVersion(seeds.version));
        }
        for state in self.current.iter_mut().chain(self.archived.iter_mut()) {
            let base_key = state.base_key;
            for chain in state.chains_mut().iter_mut() {
                let header_key = chain.header_key.as_secret().as_bytes().to_owned();
                let Some(stored) = seeds.chains.iter().find(|c| {
                    c.base_key.as_slice() == base_key.as_bytes().as_slice()
                        && c.header_key.as_slice() == header_key.as_slice()
                }) else {
                    continue;
                };
                for key in chain.skipped.iter_mut().filter(|key| !key.has_seed()) {
                    if let Some(entry) = stored.keys.iter().find(|entry| entry.counter == key.counter()) {
                        key.attach(Secret32::from_slice(&entry.seed, "seeds.seed")?);
                    }
                }
            }
        }
        if self.has_all_seeds() { Ok(()) } else { Err(DecodeError::InvalidValue("seeds")) }
    }

    /// Parses a record serialized by [`Self::to_bytes`].
    ///
    /// # Errors
    /// A [`DecodeError`] naming what is wrong.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, DecodeError> {
        Self::decode(bytes, Seeds::In)
    }

    /// Parses a record serialized by [`Self::to_hot_bytes`]: its skipped keys
    /// have no seeds until [`Self::attach_seeds`].
    pub(crate) fn from_hot_bytes(bytes: &[u8]) -> Result<Self, DecodeError> {
        Self::decode(bytes, Seeds::Apart)
    }

    /// Parses a device's stored record: one written with its seeds apart
    /// ([`Self::to_hot_bytes`]), or one written by a release that kept them
    /// in the record (`seeds_apart` false), which is then marked so that its
    /// next commit writes its seeds to their own row and the record without
    /// them.
    pub(crate) fn from_stored_bytes(bytes: &[u8]) -> Result<Self, DecodeError> {
        match Self::from_hot_bytes(bytes) {
            Err(DecodeError::InvalidValue("seeds_apart")) => {
                let mut record = Self::decode(bytes, Seeds::In)?;
                record.skipped_changed = true;
                Ok(record)
            }
            result => result,
        }
    }

    fn decode(bytes: &[u8], seeds: Seeds) -> Result<Self, DecodeError> {
        if bytes.len() > MAX_RECORD_LEN {
            return Err(DecodeError::TooLarge { len: bytes.len(), max: MAX_RECORD_LEN });
        }
        let record = crate::codec::decode_secret::<storage::SessionRecord>(bytes)?;
        if record.version != RECORD_VERSION {
            return Err(DecodeError::UnsupportedVersion(record.version));
        }
        if record.seeds_apart != (seeds == Seeds::Apart) {
            return Err(DecodeError::InvalidValue("seeds_apart"));
        }
        if record.archived.len() > MAX_ARCHIVED_STATES {
            return Err(DecodeError::InvalidValue("archived"));
        }
        if record.seen_base_keys.len() > MAX_SEEN_BASE_KEYS {
            return Err(DecodeError::InvalidValue("seen_base_keys"));
        }
        if record.current.is_none() && !record.archived.is_empty() {
            return Err(DecodeError::InvalidValue("current"));
        }
        let trusted_identity = if record.trusted_identity.is_empty() {
            None
        } else {
            Some(IdentityKey::from_stored_slice(&record.trusted_identity, "trusted_identity")?)
        };
        let current = record.current.as_ref().map(|state| SessionState::from_record(state, seeds)).transpose()?;
        if current.as_ref().is_some_and(|state| !state.is_full() || state.displaced) {
            return Err(DecodeError::InvalidValue("current"));
        }
        let archived: VecDeque<SessionState> =
            record.archived.iter().map(|state| SessionState::from_record(state, seeds)).collect::<Result<_, _>>()?;
        if archived.iter().any(|s| !s.is_full() && s.kept_since > record.heals) {
            return Err(DecodeError::InvalidValue("kept_since"));
        }
        if current.iter().chain(archived.iter()).any(|s| s.initiated > record.initiations) {
            return Err(DecodeError::InvalidValue("initiated"));
        }
        // Only the current state sends, so only it carries the flag.
        if archived.iter().any(|s| s.left_answered) {
            return Err(DecodeError::InvalidValue("left_answered"));
        }
        if archived.iter().any(|s| s.followed) {
            return Err(DecodeError::InvalidValue("followed"));
        }
        let seen_base_keys = record
            .seen_base_keys
            .iter()
            .map(|k| X25519PublicKey::from_slice(k, "seen_base_keys"))
            .collect::<Result<_, _>>()?;
        let record = Self {
            trusted_identity,
            current,
            archived,
            seen_base_keys,
            generation: record.generation,
            heals: record.heals,
            initiations: record.initiations,
            healing: Healing::from_proto(record.healing.as_ref())?,
            object: next_object(),
            skipped_changed: false,
        };
        if record.skipped_count() > MAX_STORED_SKIPPED_KEYS {
            return Err(DecodeError::InvalidValue("skipped"));
        }
        Ok(record)
    }
}

impl fmt::Debug for SessionRecord {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SessionRecord")
            .field("trusted_identity", &self.trusted_identity)
            .field("current", &self.current)
            .field("archived", &self.archived.len())
            .field("generation", &self.generation)
            .finish_non_exhaustive()
    }
}
