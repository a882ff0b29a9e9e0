//! The Double Ratchet with header encryption (the Signal specification,
//! sections 3 and 4), with the key derivations of the private `kdf` module.
//!
//! This layer owns one session state: the root chain, our sending chain, and
//! up to [`MAX_RECEIVING_CHAINS`] receiving chains with their skipped message
//! keys. It does not own identities, the handshake that produced its first
//! keys, or storage: [`DoubleRatchet::to_bytes`] and
//! [`DoubleRatchet::from_bytes`] hand the state to whoever stores it.
//!
//! Every decryption is computed first on borrowed state (a *plan*) and applied
//! only after the message authenticated, so a failed decryption leaves the
//! state exactly as it was.
//!
//! # Example
//!
//! ```
//! use samizdat::ratchet::{DoubleRatchet, RatchetInit};
//! use samizdat::keys::X25519Secret;
//! # use rand_core::{Rng, SeedableRng};
//! # let mut rng = chacha20::ChaCha20Rng::from_seed([7; 32]);
//!
//! // In a real session these come from the PQXDH handshake.
//! let (mut rk, mut hka, mut hkb) = ([0u8; 32], [0u8; 32], [0u8; 32]);
//! rng.fill_bytes(&mut rk);
//! rng.fill_bytes(&mut hka);
//! rng.fill_bytes(&mut hkb);
//! let ad = b"alice and bob";
//! let bob_ratchet_key = X25519Secret::generate(&mut rng);
//! let bob_public = bob_ratchet_key.public_key();
//!
//! let mut alice = DoubleRatchet::new_initiator(&mut rng, RatchetInit::new(rk, hka, hkb, ad)?, &bob_public)?;
//! let mut bob = DoubleRatchet::new_responder(RatchetInit::new(rk, hka, hkb, ad)?, bob_ratchet_key);
//!
//! let message = alice.encrypt(&mut rng, b"hello")?;
//! assert_eq!(bob.decrypt(&mut rng, &message)?, b"hello");
//! let reply = bob.encrypt(&mut rng, b"hi")?;
//! assert_eq!(alice.decrypt(&mut rng, &reply)?, b"hi");
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

pub(crate) mod chain;
pub(crate) mod header;
mod kept;
pub(crate) mod message_key;
pub(crate) mod receiver;
pub(crate) mod root;

use std::{collections::VecDeque, fmt};

use prost::Message as _;
use rand_core::CryptoRng;
use samizdat_proto::storage;
use zeroize::Zeroizing;

pub use self::header::ENCRYPTED_HEADER_LEN;
use self::{
    chain::ChainKey,
    header::{Header, HeaderKey, fresh_nonce, nonce_of},
    message_key::{MessageKey, TAG_LEN},
    receiver::{NONCE_TAG_LEN, NonceTag, nonce_tag},
    root::RootKey,
};
pub(crate) use self::{
    kept::KeptKeys,
    receiver::{ReceivingChain, bound_evicted, remember_evicted},
};
use crate::{
    DecodeError, DecryptError, EncryptError,
    keys::{Secret32, X25519PublicKey, X25519Secret},
    limits::{
        MAX_ASSOCIATED_DATA_LEN, MAX_EVICTED_COUNTERS, MAX_RECEIVING_CHAINS, MAX_SKIP, MAX_STATE_LEN,
        MAX_STORED_SKIPPED_KEYS, MAX_USED_COUNTERS,
    },
    padding::{self, ContentType},
    wire::RatchetMessage,
};

/// The format version of a serialized [`DoubleRatchet`].
pub const STATE_VERSION: u32 = 1;

/// What a handshake hands to the ratchet: the first root key, the two initial
/// header keys, and the session's associated data.
///
/// In the Signal specification's terms: `SK`, `shared_hka` (the initiator's
/// first sending header key) and `shared_nhkb` (the responder's first
/// sending header key), plus the `AD` bound into every message.
pub struct RatchetInit {
    root_key: Secret32,
    initiator_header_key: Secret32,
    responder_header_key: Secret32,
    associated_data: Vec<u8>,
}

impl RatchetInit {
    /// Collects the handshake's output.
    ///
    /// # Errors
    /// [`InitError::AssociatedDataTooLong`] if `associated_data` is longer
    /// than [`MAX_ASSOCIATED_DATA_LEN`].
    pub fn new(
        root_key: [u8; 32],
        initiator_header_key: [u8; 32],
        responder_header_key: [u8; 32],
        associated_data: &[u8],
    ) -> Result<Self, InitError> {
        let init = Self {
            root_key: Secret32::new(root_key),
            initiator_header_key: Secret32::new(initiator_header_key),
            responder_header_key: Secret32::new(responder_header_key),
            associated_data: associated_data.to_vec(),
        };
        if associated_data.len() > MAX_ASSOCIATED_DATA_LEN {
            return Err(InitError::AssociatedDataTooLong { len: associated_data.len(), max: MAX_ASSOCIATED_DATA_LEN });
        }
        Ok(init)
    }
}

impl fmt::Debug for RatchetInit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RatchetInit").finish_non_exhaustive()
    }
}

/// Why a ratchet could not be initialized.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum InitError {
    /// The associated data is longer than [`MAX_ASSOCIATED_DATA_LEN`].
    #[error("associated data of {len} bytes exceeds the limit of {max}")]
    AssociatedDataTooLong {
        /// Its length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// The responder's ratchet key has small order (the X25519 output is all zeros).
    #[error("the peer's ratchet key is invalid")]
    InvalidRatchetKey,
}

/// One Double Ratchet session state.
///
/// Secrets are zeroized when it is dropped; `Debug` shows only counters.
pub struct DoubleRatchet {
    associated_data: Vec<u8>,
    root_key: RootKey,
    sending: SendingChain,
    /// Oldest first; the last one is the current receiving chain.
    receiving: VecDeque<ReceivingChain>,
    next_receiving_header_key: HeaderKey,
}

/// Our ratchet key pair `DHs` and sending chain.
#[derive(Clone)]
struct SendingChain {
    ratchet_key: X25519Secret,
    /// `(CKs, HKs)`; `None` for a responder that has not received yet.
    chain: Option<(ChainKey, HeaderKey)>,
    next_header_key: HeaderKey,
    previous_counter: u32,
}

/// Why a decryption could not be planned: a decryption error, or a skipped
/// key whose seed is stored apart and must be loaded first (only for states
/// loaded from a device's session row; the public loaders load every seed).
#[derive(Debug)]
pub(crate) enum PlanError {
    Decrypt(DecryptError),
    SeedApart,
    /// The body did not authenticate (`Unauthenticated`) after its key cost
    /// at least [`COSTLY_DERIVATIONS`] chain steps: here is the key that
    /// opens this header's body, so that a replay of the header with another
    /// broken body can be refused without deriving it again.
    Costly(Box<MessageKey>),
}

/// A message whose key needs at least this many chain steps (a far-ahead
/// counter, a DH step that closes a chain far ahead) is costly to refuse.
pub(crate) const COSTLY_DERIVATIONS: usize = 64;

impl From<DecryptError> for PlanError {
    fn from(error: DecryptError) -> Self {
        Self::Decrypt(error)
    }
}

/// Whether the seeds of a stored state's skipped keys are in the state, or
/// stored apart (and loaded on demand).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Seeds {
    In,
    Apart,
}

/// A decryption computed against the current state but not yet applied.
pub(crate) struct DecryptPlan {
    kind: PlanKind,
    /// The counter the message used and its tag, remembered on its chain.
    used: (u32, NonceTag),
    /// Whether the message is a DH step whose header carries the
    /// left-answered flag (PROTOCOL.md 4.4): the session layer reads it.
    left_answered: bool,
}

impl DecryptPlan {
    /// Whether applying the plan takes a DH ratchet step.
    pub(crate) fn is_step(&self) -> bool {
        matches!(self.kind, PlanKind::Step(_))
    }

    /// Whether the message is a DH step of the peer's whose header says that
    /// the peer's state replaced a session on which it had heard from us
    /// (the flag of PROTOCOL.md 4.4; only a step's flag is acted on, 9.6).
    pub(crate) fn peer_left_answered(&self) -> bool {
        self.left_answered && self.is_step()
    }

    /// Whether applying the plan uses or adds skipped keys.
    pub(crate) fn touches_skipped(&self) -> bool {
        match &self.kind {
            PlanKind::Skipped { .. } => true,
            PlanKind::Advance { skipped, .. } => !skipped.is_empty(),
            PlanKind::Step(step) => {
                step.closing.as_ref().is_some_and(|(keys, _)| !keys.is_empty()) || !step.receiving.skipped.is_empty()
            }
        }
    }
}

enum PlanKind {
    /// The key was a skipped one: delete it.
    Skipped { chain: usize, position: usize },
    /// Advance the current receiving chain, keeping the keys it skips.
    Advance { chain_key: ChainKey, skipped: Vec<MessageKey> },
    /// A DH ratchet step.
    Step(Box<StepPlan>),
}

/// A DH step, complete.
struct StepPlan {
    /// Keys skipped on the chain being closed, up to the peer's `PN`, and its final chain key.
    closing: Option<(Vec<MessageKey>, ChainKey)>,
    /// The peer's `PN`: where the chain being closed ends.
    previous_counter: u32,
    root_key: RootKey,
    receiving: ReceivingChain,
    sending: SendingChain,
    next_receiving_header_key: HeaderKey,
}

/// Where a message's key was found, before the body is opened.
enum Found {
    Skipped { chain: usize, position: usize },
    Advance { chain_key: ChainKey, skipped: Vec<MessageKey> },
    Step(Box<ReceiveStep>),
}

/// The receiving half of a DH step: computed before the body is opened,
/// without randomness.
struct ReceiveStep {
    closing: Option<(Vec<MessageKey>, ChainKey)>,
    previous_counter: u32,
    /// The root key after the receiving root step.
    root_key: RootKey,
    receiving: ReceivingChain,
    next_receiving_header_key: HeaderKey,
    /// The header's left-answered flag.
    left_answered: bool,
}

impl DoubleRatchet {
    /// `RatchetInitAliceHE`: the initiator's state, from the handshake output
    /// and the responder's ratchet public key (its signed prekey). The
    /// initiator can send at once.
    ///
    /// # Errors
    /// [`InitError::InvalidRatchetKey`] if `responder_ratchet_key` has small order.
    pub fn new_initiator<R: CryptoRng + ?Sized>(
        rng: &mut R,
        init: RatchetInit,
        responder_ratchet_key: &X25519PublicKey,
    ) -> Result<Self, InitError> {
        let ratchet_key = X25519Secret::generate(rng);
        let dh = ratchet_key.diffie_hellman(responder_ratchet_key).ok_or(InitError::InvalidRatchetKey)?;
        let (root_key, chain_key, next_header_key) = RootKey::new(init.root_key.clone()).advance(&dh);
        Ok(Self {
            associated_data: init.associated_data.clone(),
            root_key,
            sending: SendingChain {
                ratchet_key,
                chain: Some((chain_key, HeaderKey::new(init.initiator_header_key.clone()))),
                next_header_key,
                previous_counter: 0,
            },
            receiving: VecDeque::new(),
            next_receiving_header_key: HeaderKey::new(init.responder_header_key.clone()),
        })
    }

    /// `RatchetInitBobHE`: the responder's state, from the handshake output
    /// and its ratchet key pair (the signed prekey the initiator used). The
    /// responder can send only after it has decrypted a first message.
    pub fn new_responder(init: RatchetInit, ratchet_key: X25519Secret) -> Self {
        Self {
            associated_data: init.associated_data.clone(),
            root_key: RootKey::new(init.root_key.clone()),
            sending: SendingChain {
                ratchet_key,
                chain: None,
                next_header_key: HeaderKey::new(init.responder_header_key.clone()),
                previous_counter: 0,
            },
            receiving: VecDeque::new(),
            next_receiving_header_key: HeaderKey::new(init.initiator_header_key.clone()),
        }
    }

    /// The associated data bound into every message of this session.
    pub fn associated_data(&self) -> &[u8] {
        &self.associated_data
    }

    /// Whether this state can encrypt (false for a responder that has not
    /// received a message yet).
    pub fn can_send(&self) -> bool {
        self.sending.chain.is_some()
    }

    /// Our current ratchet public key `DHs`.
    pub fn ratchet_public_key(&self) -> X25519PublicKey {
        self.sending.ratchet_key.public_key()
    }

    /// How many skipped message keys are stored, over all receiving chains.
    pub fn stored_skipped_keys(&self) -> usize {
        self.receiving.iter().map(|c| c.skipped.len()).sum()
    }

    /// How many receiving chains are kept (at most [`MAX_RECEIVING_CHAINS`]).
    pub fn receiving_chains(&self) -> usize {
        self.receiving.len()
    }

    /// `RatchetEncryptHE`: seals `plaintext` (padded first) and advances the
    /// sending chain. The state is changed only on success.
    ///
    /// # Errors
    /// - [`EncryptError::MessageTooLarge`] over [`MAX_PLAINTEXT_LEN`](crate::limits::MAX_PLAINTEXT_LEN);
    /// - [`EncryptError::NoSendingChain`] for a responder that has not received yet;
    /// - [`EncryptError::ChainExhausted`] after 2^32 - 1 messages on one chain.
    pub fn encrypt<R: CryptoRng + ?Sized>(
        &mut self,
        rng: &mut R,
        plaintext: &[u8],
    ) -> Result<RatchetMessage, EncryptError> {
        self.encrypt_content(rng, plaintext, ContentType::App, false)
    }

    /// [`Self::encrypt`] of content of type `content` (PROTOCOL.md 5.2),
    /// with the header's left-answered flag if `left_answered` (4.4; the
    /// session layer decides it, 9.6).
    pub(crate) fn encrypt_content<R: CryptoRng + ?Sized>(
        &mut self,
        rng: &mut R,
        plaintext: &[u8],
        content: ContentType,
        left_answered: bool,
    ) -> Result<RatchetMessage, EncryptError> {
        if plaintext.len() > crate::limits::MAX_PLAINTEXT_LEN {
            return Err(EncryptError::MessageTooLarge { len: plaintext.len(), max: crate::limits::MAX_PLAINTEXT_LEN });
        }
        let Some((chain_key, header_key)) = &mut self.sending.chain else {
            return Err(EncryptError::NoSendingChain);
        };
        let next = chain_key.next().ok_or(EncryptError::ChainExhausted)?;
        let message_key = chain_key.message_key();
        let header = Header {
            ratchet_key: self.sending.ratchet_key.public_key(),
            previous_counter: self.sending.previous_counter,
            counter: chain_key.index(),
            left_answered,
        };
        // The header nonce also salts the body key: a sender that comes back
        // to this counter (restored, cloned, forked) uses another key.
        let nonce = fresh_nonce(rng);
        let encrypted_header = header_key.seal(nonce, header, &self.associated_data);
        // Padded and sealed in one buffer, which becomes the body: no copy of
        // the plaintext is left behind.
        let mut body = padding::pad_content(plaintext, TAG_LEN, content)
            .ok_or(EncryptError::MessageTooLarge { len: plaintext.len(), max: crate::limits::MAX_PLAINTEXT_LEN })?;
        message_key.seal_in_place(&mut body, &body_associated_data(&self.associated_data, &encrypted_header), &nonce);
        *chain_key = next;
        Ok(RatchetMessage::new(encrypted_header, body))
    }

    /// `RatchetDecryptHE`: opens `message` and advances the state. On any
    /// error the state is exactly as it was.
    ///
    /// # Errors
    /// [`DecryptError::Duplicate`] for a message already decrypted,
    /// [`DecryptError::Rollback`] for another message on a counter already
    /// used (a sender whose state went backwards),
    /// [`DecryptError::KeyEvicted`] for a message whose skipped key was
    /// evicted unused, [`DecryptError::TooFarAhead`] past [`MAX_SKIP`],
    /// [`DecryptError::NoMatchingState`] for a header no key of the state
    /// opens, and [`DecryptError::Unauthenticated`] for a message altered
    /// after its header opened.
    pub fn decrypt<R: CryptoRng + ?Sized>(
        &mut self,
        rng: &mut R,
        message: &RatchetMessage,
    ) -> Result<Vec<u8>, DecryptError> {
        // A state from the public loaders holds every seed: `SeedApart`
        // cannot happen here.
        let (plaintext, content, plan) = self.plan_decrypt(rng, message, true).map_err(|error| match error {
            PlanError::Decrypt(error) => error,
            PlanError::SeedApart | PlanError::Costly(_) => DecryptError::Unauthenticated,
        })?;
        // This API carries the app's messages only; a control message (from
        // a peer's device layer) is left for that layer, untouched.
        if content != ContentType::App {
            return Err(DecryptError::Unauthenticated);
        }
        self.apply(plan);
        Ok(plaintext)
    }

    /// Computes the decryption of `message` without changing the state. With
    /// `allow_step` false, a message that would start a DH step (a header
    /// that opens under `NHKr`) is refused as [`DecryptError::NoMatchingState`]:
    /// the state only decrypts on the receiving chains it has.
    ///
    /// Randomness (the new ratchet key of a DH step) is drawn only after the
    /// body authenticated, so a rejected message consumes none.
    pub(crate) fn plan_decrypt<R: CryptoRng + ?Sized>(
        &self,
        rng: &mut R,
        message: &RatchetMessage,
        allow_step: bool,
    ) -> Result<(Vec<u8>, ContentType, DecryptPlan), PlanError> {
        let tag = nonce_tag(&nonce_of(message.header()));
        let (message_key, found) = self.find_key(message, &tag, allow_step)?;
        let derived = match &found {
            Found::Skipped { .. } => 0,
            Found::Advance { skipped, .. } => skipped.len(),
            // Compared with a threshold: saturating changes no outcome.
            Found::Step(step) => {
                step.receiving.skipped.len().saturating_add(step.closing.as_ref().map_or(0, |(keys, _)| keys.len()))
            }
        };
        let (plaintext, counter, content) = match open_body(&self.associated_data, message, &message_key) {
            Ok(opened) => opened,
            Err(DecryptError::Unauthenticated) if derived >= COSTLY_DERIVATIONS => {
                return Err(PlanError::Costly(Box::new(message_key)));
            }
            Err(error) => return Err(error.into()),
        };
        let left_answered = matches!(&found, Found::Step(step) if step.left_answered);
        let kind = match found {
            Found::Skipped { chain, position } => PlanKind::Skipped { chain, position },
            Found::Advance { chain_key, skipped } => PlanKind::Advance { chain_key, skipped },
            Found::Step(step) => PlanKind::Step(Box::new(self.complete_step(rng, *step)?)),
        };
        Ok((plaintext, content, DecryptPlan { kind, used: (counter, tag), left_answered }))
    }

    /// Whether the header of `message` opens under the next header key: the
    /// peer took a DH step with it (the body is not looked at).
    pub(crate) fn opens_as_step(&self, message: &RatchetMessage) -> bool {
        self.next_receiving_header_key.open(message.header(), &self.associated_data).is_some()
    }

    /// Whether a DH step has ever been taken on a message from the peer:
    /// false only for an initiator whose first messages are unanswered (and
    /// for a responder before its first message, which it never is once
    /// stored).
    pub(crate) fn has_received(&self) -> bool {
        !self.receiving.is_empty()
    }

    /// Whether this state has sent on its current sending chain yet (false
    /// for a responder that has not answered its first receiving chain).
    pub(crate) fn has_sent_on_chain(&self) -> bool {
        self.sending.chain.as_ref().is_some_and(|(chain_key, _)| chain_key.index() > 0)
    }

    /// The receiving chains, oldest first.
    pub(crate) fn chains(&self) -> &VecDeque<ReceivingChain> {
        &self.receiving
    }

    /// The receiving chains, to attach seeds stored apart.
    pub(crate) fn chains_mut(&mut self) -> &mut VecDeque<ReceivingChain> {
        &mut self.receiving
    }

    /// What an archived state keeps once the session healed: its receiving
    /// chains, closed, with their skipped keys and remembered counters. The
    /// root key, our ratchet key pair, the sending chain and the next header
    /// keys are dropped: nothing can be derived from what is kept.
    pub(crate) fn into_kept_keys(mut self) -> KeptKeys {
        for chain in &mut self.receiving {
            chain.close();
        }
        KeptKeys::new(std::mem::take(&mut self.associated_data), std::mem::take(&mut self.receiving))
    }

    /// The second half of a DH step: a fresh `DHs`, the root step with it,
    /// and the new sending chain (`PN := Ns`, `HKs := NHKs`).
    fn complete_step<R: CryptoRng + ?Sized>(&self, rng: &mut R, step: ReceiveStep) -> Result<StepPlan, PlanError> {
        let ratchet_key = X25519Secret::generate(rng);
        let dh_send = ratchet_key.diffie_hellman(&step.receiving.ratchet_key).ok_or(DecryptError::Unauthenticated)?;
        let (root_key, chain_key, next_header_key) = step.root_key.advance(&dh_send);
        let sending = SendingChain {
            ratchet_key,
            chain: Some((chain_key, self.sending.next_header_key.clone())),
            next_header_key,
            previous_counter: self.sending.chain.as_ref().map_or(0, |(ck, _)| ck.index()),
        };
        Ok(StepPlan {
            closing: step.closing,
            previous_counter: step.previous_counter,
            root_key,
            receiving: step.receiving,
            sending,
            next_receiving_header_key: step.next_receiving_header_key,
        })
    }

    /// Applies a plan made by [`Self::plan_decrypt`] on this very state. Infallible.
    pub(crate) fn apply(&mut self, plan: DecryptPlan) {
        let used = plan.used;
        match plan.kind {
            PlanKind::Skipped { chain, position } => {
                if let Some(chain) = self.receiving.get_mut(chain) {
                    chain.skipped.remove(position);
                    chain.used.push_back(used);
                }
            }
            PlanKind::Advance { chain_key, skipped } => {
                if let Some(current) = self.receiving.back_mut() {
                    current.skipped.extend(skipped);
                    current.set_chain_key(chain_key);
                    current.used.push_back(used);
                }
            }
            PlanKind::Step(step) => {
                let StepPlan { closing, previous_counter, root_key, receiving, sending, next_receiving_header_key } =
                    *step;
                if let (Some(current), Some((skipped, chain_key))) = (self.receiving.back_mut(), closing) {
                    current.skipped.extend(skipped);
                    current.set_chain_key(chain_key);
                }
                // The peer sent `PN` messages on the chain it closed: keys at
                // or past it were derived for messages it never sent (a
                // forgery far ahead, from a copy of the chain key), and go.
                if let Some(current) = self.receiving.back_mut() {
                    current.close_at(previous_counter);
                }
                let mut receiving = receiving;
                receiving.used.push_back(used);
                self.receiving.push_back(receiving);
                while self.receiving.len() > MAX_RECEIVING_CHAINS {
                    self.receiving.pop_front();
                }
                self.root_key = root_key;
                self.sending = sending;
                self.next_receiving_header_key = next_receiving_header_key;
            }
        }
        evict(&mut self.receiving);
    }

    /// Finds the header key that opens the header, then the message key
    /// (PROTOCOL.md 4.6.1): on a kept receiving chain (its skipped keys and
    /// its chain), or the next header key, which starts a DH step.
    fn find_key(
        &self,
        message: &RatchetMessage,
        tag: &NonceTag,
        allow_step: bool,
    ) -> Result<(MessageKey, Found), PlanError> {
        // A header opens under at most one of these keys, so the order of the
        // trials changes only their cost: the current chain first (messages in
        // order), then the next header key (a DH step: every message of a
        // ping-pong), then the older chains, newest first (late messages).
        let ad = &self.associated_data;
        let mut chains = self.receiving.iter().enumerate().rev();
        if let Some((index, current)) = chains.next()
            && let Some(found) = try_chain(index, current, message, ad, tag)
        {
            return found;
        }
        if let Some(header) = self.next_receiving_header_key.open(message.header(), ad) {
            // A state that may not step treats the header as one it cannot open.
            return if allow_step { Ok(self.plan_step(header)?) } else { Err(DecryptError::NoMatchingState.into()) };
        }
        // No header key of this state opens it (PROTOCOL.md 4.6.1).
        chains
            .find_map(|(index, chain)| try_chain(index, chain, message, ad, tag))
            .unwrap_or(Err(DecryptError::NoMatchingState.into()))
    }

    fn plan_step(&self, header: Header) -> Result<(MessageKey, Found), DecryptError> {
        if header.counter > MAX_SKIP {
            return Err(DecryptError::TooFarAhead { gap: header.counter, max: MAX_SKIP });
        }
        let closing = match self.receiving.back().and_then(ReceivingChain::chain_key) {
            Some(chain_key) if header.previous_counter > chain_key.index() => {
                Some(skip_to(chain_key, header.previous_counter)?)
            }
            _ => None,
        };
        let dh_receive =
            self.sending.ratchet_key.diffie_hellman(&header.ratchet_key).ok_or(DecryptError::Unauthenticated)?;
        let (root_key, receiving_chain_key, next_receiving_header_key) = self.root_key.advance(&dh_receive);
        let (skipped, message_key, receiving_chain_key) = advance(&receiving_chain_key, header.counter)?;
        let step = ReceiveStep {
            closing,
            previous_counter: header.previous_counter,
            root_key,
            receiving: ReceivingChain::new(
                header.ratchet_key,
                self.next_receiving_header_key.clone(),
                Some(receiving_chain_key),
                0,
                skipped.into(),
                VecDeque::new(),
            ),
            next_receiving_header_key,
            left_answered: header.left_answered,
        };
        Ok((message_key, Found::Step(Box::new(step))))
    }

    /// Serializes the state (storage protobuf `RatchetState`, version
    /// [`STATE_VERSION`]). The bytes hold secrets: store them sealed.
    pub fn to_bytes(&self) -> Zeroizing<Vec<u8>> {
        let record = Zeroizing::new(self.to_record());
        let mut out = Zeroizing::new(Vec::with_capacity(record.encoded_len()));
        // Encoding into a Vec cannot run out of space.
        let _ = record.encode(&mut *out);
        out
    }

    /// Parses a state serialized by [`Self::to_bytes`], checking every length
    /// and invariant.
    ///
    /// # Errors
    /// A [`DecodeError`] naming what is wrong; nothing is half-built.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, DecodeError> {
        if bytes.len() > MAX_STATE_LEN {
            return Err(DecodeError::TooLarge { len: bytes.len(), max: MAX_STATE_LEN });
        }
        let record = crate::codec::decode_secret::<storage::RatchetState>(bytes)?;
        Self::from_record(&record)
    }

    pub(crate) fn to_record(&self) -> storage::RatchetState {
        self.to_record_with(Seeds::In)
    }

    /// The stored form, with the skipped keys' seeds in it or apart (then
    /// only their counters, as ranges: 13.1).
    pub(crate) fn to_record_with(&self, seeds: Seeds) -> storage::RatchetState {
        let (chain_key, counter, header_key) = match &self.sending.chain {
            Some((ck, hk)) => (ck.as_secret().as_bytes().to_vec(), ck.index(), hk.as_secret().as_bytes().to_vec()),
            None => (Vec::new(), 0, Vec::new()),
        };
        storage::RatchetState {
            version: STATE_VERSION,
            associated_data: self.associated_data.clone(),
            root_key: self.root_key.as_secret().as_bytes().to_vec(),
            sending: Some(storage::SendingChain {
                ratchet_secret: self.sending.ratchet_key.to_bytes().to_vec(),
                chain_key,
                counter,
                header_key,
                next_header_key: self.sending.next_header_key.as_secret().as_bytes().to_vec(),
                previous_counter: self.sending.previous_counter,
                ratchet_public: self.sending.ratchet_key.public_key().as_bytes().to_vec(),
            }),
            receiving: self.receiving.iter().map(|chain| chain_to_record(chain, seeds)).collect(),
            next_receiving_header_key: self.next_receiving_header_key.as_secret().as_bytes().to_vec(),
        }
    }

    pub(crate) fn from_record(record: &storage::RatchetState) -> Result<Self, DecodeError> {
        Self::from_record_with(record, Seeds::In)
    }

    /// As [`Self::from_record`], with the skipped keys' seeds in the state or
    /// stored apart (then each stored seed must be empty).
    pub(crate) fn from_record_with(record: &storage::RatchetState, seeds: Seeds) -> Result<Self, DecodeError> {
        if record.version != STATE_VERSION {
            return Err(DecodeError::UnsupportedVersion(record.version));
        }
        if record.associated_data.len() > MAX_ASSOCIATED_DATA_LEN {
            return Err(DecodeError::InvalidValue("associated_data"));
        }
        let sending = record.sending.as_ref().ok_or(DecodeError::MissingField("sending"))?;
        let chain = match (sending.chain_key.is_empty(), sending.header_key.is_empty()) {
            (true, true) => None,
            (false, false) => Some((
                ChainKey::new(Secret32::from_slice(&sending.chain_key, "sending.chain_key")?, sending.counter),
                HeaderKey::new(Secret32::from_slice(&sending.header_key, "sending.header_key")?),
            )),
            _ => return Err(DecodeError::InvalidValue("sending")),
        };
        let secret = crate::keys::fixed::<32>(&sending.ratchet_secret, "sending.ratchet_secret")?;
        // The stored public key is taken as given (a store authenticates its
        // rows); a state without one computes it when it is first needed.
        let ratchet_key = if sending.ratchet_public.is_empty() {
            X25519Secret::from_bytes(secret)
        } else {
            let public = X25519PublicKey::from_slice(&sending.ratchet_public, "sending.ratchet_public")?;
            X25519Secret::from_bytes_and_public(secret, public)
        };
        let sending = SendingChain {
            ratchet_key,
            chain,
            next_header_key: HeaderKey::new(Secret32::from_slice(&sending.next_header_key, "sending.next_header_key")?),
            previous_counter: sending.previous_counter,
        };
        let receiving = chains_from_record(&record.receiving, true, seeds)?;
        // After any DH step the newest chain is current and we can send.
        if receiving.back().is_some_and(|chain| chain.chain_key().is_none()) {
            return Err(DecodeError::InvalidValue("receiving.chain_key"));
        }
        if !receiving.is_empty() && sending.chain.is_none() {
            return Err(DecodeError::InvalidValue("sending"));
        }
        Ok(Self {
            associated_data: record.associated_data.clone(),
            root_key: RootKey::new(Secret32::from_slice(&record.root_key, "root_key")?),
            sending,
            receiving,
            next_receiving_header_key: HeaderKey::new(Secret32::from_slice(
                &record.next_receiving_header_key,
                "next_receiving_header_key",
            )?),
        })
    }
}

impl fmt::Debug for DoubleRatchet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DoubleRatchet")
            .field("sending_counter", &self.sending.chain.as_ref().map(|(ck, _)| ck.index()))
            .field("previous_counter", &self.sending.previous_counter)
            .field("receiving_chains", &self.receiving)
            .finish_non_exhaustive()
    }
}

/// The body's AEAD associated data: the session's `AD || encrypted header`.
fn body_associated_data(ad: &[u8], encrypted_header: &[u8]) -> Vec<u8> {
    [ad, encrypted_header].concat()
}

/// Opens the body of `message` with `message_key` and removes the padding;
/// returns the plaintext and the message's counter.
fn open_body(
    ad: &[u8],
    message: &RatchetMessage,
    message_key: &MessageKey,
) -> Result<(Vec<u8>, u32, ContentType), DecryptError> {
    let body_ad = body_associated_data(ad, message.header());
    // Decrypted into a wiping buffer; on success the plaintext is moved out
    // of it, so it is neither copied nor wiped on the way to the app.
    let mut padded =
        message_key.open(message.body(), &body_ad, &nonce_of(message.header())).ok_or(DecryptError::Unauthenticated)?;
    let (len, content) = padding::unpadded_content(&padded).ok_or(DecryptError::Unauthenticated)?;
    // The bytes past `len` are the padding: a marker and zeros.
    padded.truncate(len);
    Ok((std::mem::take(&mut *padded), message_key.counter(), content))
}

/// The key of `message` on receiving chain `index`, if its header opens
/// under the chain's header key (PROTOCOL.md 4.6.2).
fn try_chain(
    index: usize,
    chain: &ReceivingChain,
    message: &RatchetMessage,
    ad: &[u8],
    tag: &NonceTag,
) -> Option<Result<(MessageKey, Found), PlanError>> {
    let header = chain.header_key.open(message.header(), ad)?;
    if header.ratchet_key != chain.ratchet_key {
        // Only the peer holds this header key: a header under it that names
        // another ratchet key comes from a sender that went back to before a
        // DH step and took it again (restored or cloned): its state went
        // backwards (4.8).
        return Some(Err(DecryptError::Rollback { counter: header.counter }.into()));
    }
    Some(plan_on_chain(index, chain, header.counter, tag))
}

/// The key of message `counter` (with tag `tag`) on `chain`, whose header
/// key opened the message's header: the message is the peer's.
fn plan_on_chain(
    index: usize,
    chain: &ReceivingChain,
    counter: u32,
    tag: &NonceTag,
) -> Result<(MessageKey, Found), PlanError> {
    if counter < chain.next_counter() {
        if let Some((position, key)) = chain.find_skipped(counter) {
            if !key.has_seed() {
                return Err(PlanError::SeedApart);
            }
            return Ok((key.clone(), Found::Skipped { chain: index, position }));
        }
        // The counter was used: by this very message (a replay), or by
        // another one, which only a sender that went backwards makes. Its
        // key evicted unused: the message never arrived before (4.8). A
        // counter forgotten is a duplicate.
        return match chain.used_tag(counter) {
            Some(used) if !bool::from(subtle::ConstantTimeEq::ct_eq(used.as_slice(), tag.as_slice())) => {
                Err(DecryptError::Rollback { counter }.into())
            }
            None if chain.was_evicted(counter) => Err(DecryptError::KeyEvicted { counter }.into()),
            _ => Err(DecryptError::Duplicate { counter }.into()),
        };
    }
    // Only the current chain keeps a chain key. A closed chain ends at the
    // peer's PN: an authentic header past it comes from a sender that went
    // back to a chain it had left.
    let Some(chain_key) = chain.chain_key() else {
        return Err(DecryptError::Rollback { counter }.into());
    };
    let (skipped, message_key, chain_key) = advance(chain_key, counter)?;
    Ok((message_key, Found::Advance { chain_key, skipped }))
}

/// Drops the oldest skipped keys until at most [`MAX_STORED_SKIPPED_KEYS`]
/// remain (remembering their counters as evicted), then the oldest
/// remembered counters until at most [`MAX_USED_COUNTERS`] used and
/// [`MAX_EVICTED_COUNTERS`] evicted remain: oldest chain first, lowest
/// counter (or earliest use) first within a chain.
fn evict(chains: &mut VecDeque<ReceivingChain>) {
    // Each chain gives up to its whole length, and what it cannot give
    // stays owed by the next ones.
    let mut excess = chains.iter().map(|c| c.skipped.len()).sum::<usize>().saturating_sub(MAX_STORED_SKIPPED_KEYS);
    for chain in chains.iter_mut() {
        let len = chain.skipped.len();
        chain.evict_skipped(excess.min(len));
        excess = excess.saturating_sub(len);
    }
    bound_evicted(chains);
    let mut excess = chains.iter().map(|c| c.used.len()).sum::<usize>().saturating_sub(MAX_USED_COUNTERS);
    for chain in chains.iter_mut() {
        let len = chain.used.len();
        chain.used.drain(..excess.min(len));
        excess = excess.saturating_sub(len);
    }
}

/// Length of one remembered counter in storage: `u32be(counter) || tag`.
const USED_ENTRY_LEN: usize = 4 + NONCE_TAG_LEN;

fn chain_to_record(chain: &ReceivingChain, seeds: Seeds) -> storage::ReceivingChain {
    let mut used = Vec::with_capacity(chain.used.len().saturating_mul(USED_ENTRY_LEN));
    for (counter, tag) in &chain.used {
        used.extend_from_slice(&counter.to_be_bytes());
        used.extend_from_slice(tag);
    }
    storage::ReceivingChain {
        ratchet_key: chain.ratchet_key.as_bytes().to_vec(),
        header_key: chain.header_key.as_secret().as_bytes().to_vec(),
        chain_key: chain.chain_key().map(|ck| ck.as_secret().as_bytes().to_vec()).unwrap_or_default(),
        counter: chain.next_counter(),
        // With the seeds in: a seed not loaded is written as empty bytes.
        // Apart: only the counters, packed (13.4), built straight from the
        // chain (no per-key allocation: this runs at every write).
        skipped: match seeds {
            Seeds::In => chain
                .skipped
                .iter()
                .map(|key| storage::SkippedKey {
                    counter: key.counter(),
                    seed: key.seed().map(|seed| seed.as_bytes().to_vec()).unwrap_or_default(),
                })
                .collect(),
            Seeds::Apart => Vec::new(),
        },
        skipped_apart: match seeds {
            Seeds::In => Vec::new(),
            Seeds::Apart => to_ranges(chain.skipped.iter().map(MessageKey::counter)),
        },
        used,
        evicted: to_ranges(chain.evicted.iter().copied()),
    }
}

/// The skipped keys' counters of a chain stored with its seeds apart, as
/// ranges (13.1): for each maximal run of consecutive counters, the distance
/// from the end of the previous run (from 0 for the first; at least 1 after
/// it) and the run's length (at least 1). A gap leaves one run however long
/// it is; a peer that delivers every other message of a gap leaves one run
/// per key, two small numbers each.
///
/// `counters` must increase strictly, as a chain's skipped keys do (4.7; the
/// loader checks it), and so stay below `u32::MAX`: then nothing below
/// saturates. Were they to go backwards, the run after the step back would
/// get a distance of 0, which the loader refuses (13.1), instead of naming
/// other counters.
pub(crate) fn to_ranges(counters: impl IntoIterator<Item = u32>) -> Vec<u32> {
    let mut out = Vec::new();
    let mut end = 0u32;
    let mut run: Option<(u32, u32)> = None;
    for counter in counters {
        run = match run {
            Some((start, len)) if start.checked_add(len) == Some(counter) => Some((start, len.saturating_add(1))),
            Some((start, len)) => {
                out.extend([start.saturating_sub(end), len]);
                end = start.saturating_add(len);
                Some((counter, 1))
            }
            None => Some((counter, 1)),
        };
    }
    if let Some((start, len)) = run {
        out.extend([start.saturating_sub(end), len]);
    }
    out
}

/// How many counters `ranges` (of [`to_ranges`]) holds, checking its form.
pub(crate) fn ranges_len(ranges: &[u32], field: &'static str) -> Result<usize, DecodeError> {
    let invalid = || DecodeError::InvalidValue(field);
    if !ranges.len().is_multiple_of(2) {
        return Err(invalid());
    }
    let mut total = 0usize;
    let mut end = 0u32;
    for (i, pair) in ranges.chunks_exact(2).enumerate() {
        let &[distance, len] = pair else { return Err(invalid()) };
        if len == 0 || (i > 0 && distance == 0) {
            return Err(invalid());
        }
        end = end.checked_add(distance).and_then(|start| start.checked_add(len)).ok_or_else(invalid)?;
        total = total.saturating_add(len as usize);
    }
    Ok(total)
}

/// The counters of `ranges`, already checked by [`ranges_len`].
pub(crate) fn skipped_ranges(
    ranges: &[u32],
    field: &'static str,
) -> Result<impl Iterator<Item = u32> + use<>, DecodeError> {
    let mut end = 0u32;
    let mut runs = Vec::with_capacity(ranges.len() / 2);
    let invalid = DecodeError::InvalidValue(field);
    for pair in ranges.chunks_exact(2) {
        let &[distance, len] = pair else { return Err(invalid) };
        let start = end.checked_add(distance).ok_or(invalid.clone())?;
        end = start.checked_add(len).ok_or(invalid.clone())?;
        runs.push(start..end);
    }
    Ok(runs.into_iter().flatten())
}

/// Parses stored receiving chains, checking every length and invariant.
/// Only the last chain may keep a chain key, and only if `may_have_current`.
fn chains_from_record(
    records: &[storage::ReceivingChain],
    may_have_current: bool,
    seeds: Seeds,
) -> Result<VecDeque<ReceivingChain>, DecodeError> {
    if records.len() > MAX_RECEIVING_CHAINS {
        return Err(DecodeError::InvalidValue("receiving"));
    }
    let mut receiving = VecDeque::with_capacity(records.len());
    let (mut total_skipped, mut total_used, mut total_evicted) = (0usize, 0usize, 0usize);
    for (i, chain) in records.iter().enumerate() {
        let is_current = may_have_current && i.checked_add(1) == Some(records.len());
        let chain_key = if chain.chain_key.is_empty() {
            None
        } else if is_current {
            Some(ChainKey::new(Secret32::from_slice(&chain.chain_key, "receiving.chain_key")?, chain.counter))
        } else {
            return Err(DecodeError::InvalidValue("receiving.chain_key"));
        };
        // Stored with their seeds, or (seeds apart) as ranges of counters only.
        let stored = match seeds {
            Seeds::In if chain.skipped_apart.is_empty() => chain.skipped.len(),
            Seeds::Apart if chain.skipped.is_empty() => ranges_len(&chain.skipped_apart, "receiving.skipped_apart")?,
            Seeds::In => return Err(DecodeError::InvalidValue("receiving.skipped_apart")),
            Seeds::Apart => return Err(DecodeError::InvalidValue("receiving.skipped")),
        };
        total_skipped = total_skipped.saturating_add(stored);
        if total_skipped > MAX_STORED_SKIPPED_KEYS {
            return Err(DecodeError::InvalidValue("receiving.skipped"));
        }
        let mut skipped = VecDeque::with_capacity(stored);
        let mut previous: Option<u32> = None;
        let mut check = |counter: u32| {
            if counter >= chain.counter || previous.is_some_and(|p| p >= counter) {
                return Err(DecodeError::InvalidValue("receiving.skipped.counter"));
            }
            previous = Some(counter);
            Ok(counter)
        };
        match seeds {
            Seeds::In => {
                for key in &chain.skipped {
                    let counter = check(key.counter)?;
                    skipped.push_back(MessageKey::new(
                        Secret32::from_slice(&key.seed, "receiving.skipped.seed")?,
                        counter,
                    ));
                }
            }
            Seeds::Apart => {
                for counter in skipped_ranges(&chain.skipped_apart, "receiving.skipped_apart")? {
                    skipped.push_back(MessageKey::apart(check(counter)?));
                }
            }
        }
        if chain.used.len() % USED_ENTRY_LEN != 0 {
            return Err(DecodeError::InvalidValue("receiving.used"));
        }
        total_used = total_used.saturating_add(chain.used.len() / USED_ENTRY_LEN);
        if total_used > MAX_USED_COUNTERS {
            return Err(DecodeError::InvalidValue("receiving.used"));
        }
        let mut used: VecDeque<(u32, NonceTag)> = VecDeque::with_capacity(chain.used.len() / USED_ENTRY_LEN);
        for entry in chain.used.chunks_exact(USED_ENTRY_LEN) {
            let (counter, tag) = entry.split_first_chunk::<4>().ok_or(DecodeError::InvalidValue("receiving.used"))?;
            let counter = u32::from_be_bytes(*counter);
            let tag: NonceTag = tag.try_into().map_err(|_| DecodeError::InvalidValue("receiving.used"))?;
            // A used counter was derived, is not skipped, and is used once.
            let skipped_too = skipped.binary_search_by_key(&counter, MessageKey::counter).is_ok();
            if counter >= chain.counter || skipped_too || used.iter().any(|(c, _)| *c == counter) {
                return Err(DecodeError::InvalidValue("receiving.used.counter"));
            }
            used.push_back((counter, tag));
        }
        // Evicted counters: increasing, derived, neither skipped nor used.
        total_evicted = total_evicted.saturating_add(ranges_len(&chain.evicted, "receiving.evicted")?);
        if total_evicted > MAX_EVICTED_COUNTERS {
            return Err(DecodeError::InvalidValue("receiving.evicted"));
        }
        let mut evicted = VecDeque::new();
        // Sorted, so that each of up to MAX_EVICTED_COUNTERS checks is a
        // binary search, not a scan of the used counters.
        let mut used_counters: Vec<u32> = used.iter().map(|(c, _)| *c).collect();
        used_counters.sort_unstable();
        for counter in skipped_ranges(&chain.evicted, "receiving.evicted")? {
            let skipped_too = skipped.binary_search_by_key(&counter, MessageKey::counter).is_ok();
            if counter >= chain.counter || skipped_too || used_counters.binary_search(&counter).is_ok() {
                return Err(DecodeError::InvalidValue("receiving.evicted.counter"));
            }
            evicted.push_back(counter);
        }
        receiving.push_back(
            ReceivingChain::new(
                X25519PublicKey::from_slice(&chain.ratchet_key, "receiving.ratchet_key")?,
                HeaderKey::new(Secret32::from_slice(&chain.header_key, "receiving.header_key")?),
                chain_key,
                chain.counter,
                skipped,
                used,
            )
            .with_evicted(evicted),
        );
    }
    Ok(receiving)
}

/// Derives every key of `chain_key`'s chain up to (not including) `counter`,
/// then the key of `counter`, and the chain key after it.
fn advance(chain_key: &ChainKey, counter: u32) -> Result<(Vec<MessageKey>, MessageKey, ChainKey), DecryptError> {
    let (skipped, chain_key) = skip_to(chain_key, counter)?;
    let message_key = chain_key.message_key();
    let next = chain_key.next().ok_or(DecryptError::Unauthenticated)?;
    Ok((skipped, message_key, next))
}

/// Derives the keys of `chain_key.index()..counter`, bounded by [`MAX_SKIP`].
fn skip_to(chain_key: &ChainKey, counter: u32) -> Result<(Vec<MessageKey>, ChainKey), DecryptError> {
    let gap = counter.saturating_sub(chain_key.index());
    if gap > MAX_SKIP {
        return Err(DecryptError::TooFarAhead { gap, max: MAX_SKIP });
    }
    let mut skipped = Vec::with_capacity(gap as usize);
    let mut chain_key = chain_key.clone();
    while chain_key.index() < counter {
        skipped.push(chain_key.message_key());
        chain_key = chain_key.next().ok_or(DecryptError::Unauthenticated)?;
    }
    Ok((skipped, chain_key))
}

#[cfg(test)]
#[allow(clippy::cast_possible_truncation)]
mod tests;
