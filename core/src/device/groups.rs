//! Groups in the Device API: membership, sending, receiving, and the
//! control messages (distributions, requests) over the pairwise sessions
//! (PROTOCOL.md 18.8 to 18.10).
//!
//! Rows of [`Table::Groups`], keyed by keyed hashes ([`Sealer::group_row_key`]):
//! - the roster: the member devices, and for each what it has of our chain;
//! - our sending chain, with a flag that says every member has it (then a
//!   message reads and writes this row only);
//! - per member, the chains we keep of it: the row exists while the device
//!   is a member, so a message from anyone else finds none;
//! - the store's lists mark (key `lists`, not a keyed hash), which the
//!   rosters follow (`group_users.rs`, PROTOCOL.md 18.8).
//!
//! Lock order: the device's group lock, then peer locks in increasing row
//! key order, then the prekey lock.

use std::{collections::BTreeSet, fmt};

use samizdat_proto::storage;
use zeroize::Zeroizing;

use super::{
    Device, DeviceError, PendingMessage, ROW_VERSION, encode, healing::Resends, lock, pending::Inner, retry_on_conflict,
};
use crate::{
    DecryptError, EncryptError, SessionError,
    address::Address,
    group::{Control, Distribution, GroupDecrypt, GroupId, GroupMessage, OwnChain, Request, SenderChains},
    heal::{Healing, MessageId},
    keys::IdentityKey,
    limits::{
        MAX_GROUP_KEY_ANSWERS, MAX_GROUP_MEMBERS, MAX_LEAP_GENERATION, MAX_LEAPS_PER_ROTATION, MAX_REMOVED_MEMBERS,
        MAX_SKIP,
    },
    padding::ContentType,
    session::SessionRecord,
    store::{Backend, Expected, GroupRowKind, StoreError, Table, Write},
    user::DeviceListError,
};

/// Why a group call failed. Nothing was written, except where
/// [`GroupError::MissingChain`] says so.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum GroupError {
    /// A group id is 1 to [`MAX_GROUP_ID_LEN`](crate::limits::MAX_GROUP_ID_LEN) bytes.
    #[error("a group id is 1 to 64 bytes")]
    InvalidGroupId,
    /// A group with this id already exists on this device.
    #[error("the group already exists")]
    AlreadyExists,
    /// No group with this id exists on this device.
    #[error("unknown group")]
    UnknownGroup,
    /// The roster would pass [`MAX_GROUP_MEMBERS`] member devices.
    #[error("a group holds at most {max} member devices")]
    TooManyMembers {
        /// The limit.
        max: usize,
    },
    /// This device itself was named as a member (it always is one).
    #[error("this device cannot be its own group member")]
    SelfAsMember,
    /// A user named as a group member has no device list verified on this
    /// device: its member devices cannot follow its list. Fetch one of its
    /// bundles and start a session (the list the bundle carries pins the
    /// user), or give its list ([`Device::update_device_list`]).
    #[error("the user has no verified device list on this device")]
    UnpinnedUser,
    /// A device named in [`Device::remove_group_members`] belongs to a
    /// member user, whose member devices are those of its list: remove the
    /// user ([`Device::remove_group_users`]), or the device from its list.
    #[error("the device's user is a member: its list decides its devices")]
    FollowedUser,
    /// A group message came from a device that is not a member of the
    /// group on this device (never added, or removed): refused.
    #[error("the sender is not a member of the group")]
    NotMember,
    /// A group message came on a chain of its sender that this device does
    /// not have (its distribution was lost, or has not arrived yet), or more
    /// than [`MAX_SKIP`](crate::limits::MAX_SKIP) messages ahead of where this
    /// device is on it (the sender's messages in between were lost). The
    /// message was not consumed: keep it, and decrypt it again when the
    /// chain arrives.
    ///
    /// `request`, if any, is a one-to-one message for the sender asking for
    /// the chain: send it as it is. A new request advanced the session with
    /// the sender (committed) before it is returned. Once this device made
    /// [`MAX_GROUP_KEY_REQUESTS`](crate::limits::MAX_GROUP_KEY_REQUESTS) new
    /// requests for this chain, or
    /// [`MAX_GROUP_REQUESTS_PER_SENDER`](crate::limits::MAX_GROUP_REQUESTS_PER_SENDER)
    /// of this sender in all, since the sender last proved itself (a
    /// distribution from it, or a message of it that decrypted), `request`
    /// is the last request made for this chain again, the same bytes, and
    /// nothing is written: if the app died before sending it, it goes now;
    /// if it was sent, the sender refuses the copy as a duplicate. It is
    /// `None` when the session with the sender is missing, or when no new
    /// request may be made and none was made for this chain (among the last
    /// [`MAX_REQUESTED_CHAINS`](crate::limits::MAX_REQUESTED_CHAINS) chain
    /// ids asked): forged messages cannot make it make new messages without
    /// bound.
    #[error("no chain {chain_id} of this sender")]
    MissingChain {
        /// The chain id of the message.
        chain_id: u32,
        /// The request to send to the sender, if one may be sent.
        request: Option<Vec<u8>>,
    },
    /// The group message does not decrypt: forged or altered, a duplicate
    /// (also one below where a chain given up or recovered starts), or a
    /// sender gone back ([`DecryptError::Rollback`]). Nothing changed. (A
    /// message too far ahead is [`GroupError::MissingChain`].)
    #[error(transparent)]
    Decrypt(#[from] DecryptError),
    /// The message could not be encrypted (too large; a chain exhausted).
    #[error(transparent)]
    Encrypt(#[from] EncryptError),
}

/// A one-to-one message the library made for a peer (a group's chain, a
/// request for one, the answer to a request): send it to `to` like any
/// other message.
#[derive(Clone, PartialEq, Eq)]
pub struct Outgoing {
    /// The recipient.
    pub to: Address,
    /// The wire bytes.
    pub message: Vec<u8>,
}

impl fmt::Debug for Outgoing {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Outgoing").field("to", &self.to).field("len", &self.message.len()).finish()
    }
}

/// What [`Device::group_encrypt`] made: the group message, for every member,
/// and the one-to-one messages that give our current chain to the members
/// that lack it (send them before or with the group message).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupSend {
    /// The group message: the same bytes for every member.
    pub message: Vec<u8>,
    /// The chain for the members that lacked it, one message each: only
    /// members that were never given the current chain, never again to one
    /// that has it.
    pub distributions: Vec<Outgoing>,
    /// Members that lack the chain but with whom there is no session yet,
    /// or only one under an identity key that their user's pinned list no
    /// longer names (a device listed again under a new key): start one
    /// ([`Device::start_session`] with its bundle; for a new key, the app's
    /// trust decision first) and the next message gives them the chain
    /// (from its own iteration on).
    pub without_session: Vec<Address>,
}

/// A group message decrypted and waiting for its commit.
pub(super) struct GroupPending {
    pub(super) group_id: Vec<u8>,
    pub(super) plaintext: Zeroizing<Vec<u8>>,
    /// The member row's key, as read (sealed), and the chains after the message.
    row: Vec<u8>,
    sealed: Vec<u8>,
    chains: SenderChains,
    user: Address,
    /// The identity trusted for the sender, under which its chain came.
    pub(super) identity: Option<IdentityKey>,
}

/// What committing a control message does besides advancing the session.
pub(super) enum ControlAction {
    /// Control content that changes nothing (its group id; empty for a kind
    /// of a later release): a distribution from a non-member, for an unknown
    /// group, of a chain already kept; a request from a non-member, for a
    /// chain of ours we no longer have, or past the answers allowed with no
    /// answer to hand again.
    Ignored(Vec<u8>),
    /// A distribution to store in the sender's member row.
    Store { group_id: Vec<u8>, row: Vec<u8>, sealed: Vec<u8>, chains: SenderChains },
    /// A request to answer: the roster and our chain as read, the member
    /// updated, its row as read (the answer is kept there), and the chain to
    /// send.
    Answer {
        group_id: GroupId,
        roster: Loaded<Roster>,
        own: Box<Loaded<OwnRow>>,
        member: Box<(Vec<u8>, Loaded<SenderChains>)>,
        distribution: Box<Distribution>,
    },
    /// A request past the answers allowed, for our current chain: the last
    /// answer, handed again, as long as our chain row is still the one read
    /// (its key and sealed bytes).
    AnswerAgain { group_id: GroupId, own: (Vec<u8>, Vec<u8>), message: Vec<u8> },
    /// A reset from the peer (PROTOCOL.md 20.5): the plaintexts of our
    /// outbox it named, to send again once the new session is installed.
    Reset(Box<Resends>),
    /// A resend our reset awaited (by its id or another of the message's):
    /// a message for the app.
    Resent { id: MessageId, also: Vec<MessageId>, plaintext: Zeroizing<Vec<u8>> },
    /// A resend of a message another resend brought already: its ids (the
    /// message's first, its resends') are remembered as delivered.
    ResentAgain { ids: Vec<MessageId> },
}

impl ControlAction {
    /// The group a group control message is about; `None` for healing.
    pub(super) fn group_id(&self) -> Option<&[u8]> {
        match self {
            // Content of a later release, or a resend not for the app: no group.
            Self::Ignored(group_id) if group_id.is_empty() => None,
            Self::Ignored(group_id) | Self::Store { group_id, .. } => Some(group_id),
            Self::Answer { group_id, .. } | Self::AnswerAgain { group_id, .. } => Some(group_id.as_bytes()),
            Self::Reset(_) | Self::Resent { .. } | Self::ResentAgain { .. } => None,
        }
    }

    /// Whether committing it writes group rows (then the commit takes the
    /// group lock first).
    pub(super) fn is_group(&self) -> bool {
        !matches!(self, Self::Reset(_) | Self::Resent { .. } | Self::ResentAgain { .. } | Self::Ignored(_))
    }
}

/// What [`Device::request_chain`] did.
enum Requested {
    /// A request to send: a new one (committed), or the last one again
    /// (nothing written).
    Sent(Vec<u8>),
    /// None: the limits, or no session with the sender.
    NotSent,
    /// The chain arrived meanwhile: decrypt again.
    Arrived,
}

/// A row as read: its sealed bytes (the write's precondition) and value.
pub(super) struct Loaded<T> {
    pub(super) sealed: Vec<u8>,
    pub(super) value: T,
}

/// A member of a roster.
#[derive(Clone)]
pub(super) struct Member {
    pub(super) address: Address,
    /// The identity key its user's list named for it when the roster last
    /// followed the lists (`None`: not known).
    pub(super) identity: Option<IdentityKey>,
    has_chain: bool,
    given_at: u32,
    answered: u32,
}

impl Member {
    /// A new member, without our chain.
    pub(super) fn new(address: Address, identity: Option<IdentityKey>) -> Self {
        Self { address, identity, has_chain: false, given_at: 0, answered: 0 }
    }

    /// The member after a rotation of our chain: without it.
    pub(super) fn rotated(&self) -> Self {
        Self::new(self.address.clone(), self.identity)
    }
}

/// A group's roster.
#[derive(Clone)]
pub(super) struct Roster {
    pub(super) group_id: GroupId,
    pub(super) members: Vec<Member>,
    /// Members removed and not added back, oldest first: their rows keep
    /// the floors of their chains.
    removed: Vec<Address>,
    /// The member users: their member devices are those of their newest
    /// verified lists (PROTOCOL.md 18.8).
    pub(super) users: Vec<String>,
}

/// Our sending chain in a group.
pub(super) struct OwnRow {
    chain: Option<OwnChain>,
    distributed: bool,
    /// The generation of the last chain made in the group (that of `chain`
    /// when it is present; 0: none yet): the next chain's is larger.
    generation: u64,
    /// Leaps made since our app last rotated: at most
    /// [`MAX_LEAPS_PER_ROTATION`].
    leaps: u32,
    /// The lists mark as read when the roster last followed its users'
    /// lists (empty: none read; PROTOCOL.md 18.8).
    pub(super) lists_seen: Vec<u8>,
}

impl OwnRow {
    /// Our app's rotation: no chain (the next message starts one, of a
    /// larger generation), and the leaps counted anew.
    pub(super) fn rotated(&self) -> Self {
        Self {
            chain: None,
            distributed: false,
            generation: self.generation,
            leaps: 0,
            lists_seen: self.lists_seen.clone(),
        }
    }
}

/// A member row as read, and whether the member was removed (then the
/// chains hold only floors).
type MemberRow = (Loaded<SenderChains>, bool);

/// A row of the groups table as read: sealed, and parsed.
type SealedRow<M> = (Vec<u8>, Zeroizing<M>);

fn corrupt() -> StoreError {
    StoreError::Corrupt { table: Table::Groups }
}

fn group_id(bytes: &[u8]) -> Result<GroupId, DeviceError> {
    GroupId::new(bytes).ok_or(DeviceError::Group(GroupError::InvalidGroupId))
}

impl<B: Backend> Device<B> {
    fn group_row(&self, kind: GroupRowKind, group_id: &GroupId, member: Option<&Address>) -> Vec<u8> {
        self.sealer.group_row_key(kind, group_id.as_bytes(), member)
    }

    fn seal_group_row<M: prost::Message>(&self, key: &[u8], row: &M) -> Vec<u8> {
        let bytes = Zeroizing::new(encode(row));
        self.sealer.seal(&mut crate::os_rng(), Table::Groups, key, &bytes)
    }

    fn open_group_row<M: prost::Message + Default + zeroize::Zeroize>(
        &self,
        key: &[u8],
    ) -> Result<Option<SealedRow<M>>, StoreError> {
        let Some(sealed) = self.backend.get(Table::Groups, key)? else { return Ok(None) };
        let bytes = self.open_sealed(Table::Groups, key, &sealed)?;
        let row = crate::codec::decode_secret::<M>(&bytes).map_err(|_| corrupt())?;
        Ok(Some((sealed, row)))
    }

    pub(super) fn load_roster(&self, group_id: &GroupId) -> Result<Option<Loaded<Roster>>, StoreError> {
        let key = self.group_row(GroupRowKind::Roster, group_id, None);
        let Some((sealed, row)) = self.open_group_row::<storage::GroupRow>(&key)? else { return Ok(None) };
        if row.version != ROW_VERSION
            || row.group_id != group_id.as_bytes()
            || row.members.len() > MAX_GROUP_MEMBERS
            || row.removed.len() > MAX_REMOVED_MEMBERS
            || row.users.len() > MAX_GROUP_MEMBERS
            || row.users.iter().collect::<BTreeSet<_>>().len() != row.users.len()
            || row.users.iter().any(|user| Address::new(user.clone(), 1).is_err())
        {
            return Err(corrupt());
        }
        let removed = row
            .removed
            .iter()
            .map(|m| Address::new(m.user_id.clone(), m.device_id).map_err(|_| corrupt()))
            .collect::<Result<Vec<_>, StoreError>>()?;
        let members = row
            .members
            .iter()
            .map(|m| {
                let identity = match m.identity.as_slice() {
                    [] => None,
                    bytes => Some(IdentityKey::from_slice(bytes).map_err(|_| corrupt())?),
                };
                Ok(Member {
                    address: Address::new(m.user_id.clone(), m.device_id).map_err(|_| corrupt())?,
                    identity,
                    has_chain: m.has_chain,
                    given_at: m.given_at,
                    answered: m.answered,
                })
            })
            .collect::<Result<Vec<_>, StoreError>>()?;
        // Each member once (members and removed ones apart), never this
        // device, answers within the limit.
        let distinct: BTreeSet<(&str, u32)> =
            members.iter().map(|m| &m.address).chain(&removed).map(|a| (a.user_id(), a.device_id())).collect();
        if distinct.len() != members.len().saturating_add(removed.len())
            || members.iter().any(|m| m.address == self.address || m.answered > MAX_GROUP_KEY_ANSWERS)
            || removed.contains(&self.address)
        {
            return Err(corrupt());
        }
        let users = row.users.clone();
        Ok(Some(Loaded { sealed, value: Roster { group_id: group_id.clone(), members, removed, users } }))
    }

    pub(super) fn roster_write(&self, roster: &Roster, expected: Expected) -> Write {
        let key = self.group_row(GroupRowKind::Roster, &roster.group_id, None);
        let row = storage::GroupRow {
            version: ROW_VERSION,
            group_id: roster.group_id.as_bytes().to_vec(),
            members: roster
                .members
                .iter()
                .map(|m| storage::GroupMember {
                    user_id: m.address.user_id().to_owned(),
                    device_id: m.address.device_id(),
                    has_chain: m.has_chain,
                    given_at: m.given_at,
                    answered: m.answered,
                    identity: m.identity.map(|key| key.as_bytes().to_vec()).unwrap_or_default(),
                })
                .collect(),
            removed: roster
                .removed
                .iter()
                .map(|a| storage::RemovedMember { user_id: a.user_id().to_owned(), device_id: a.device_id() })
                .collect(),
            users: roster.users.clone(),
        };
        Write { table: Table::Groups, value: Some(self.seal_group_row(&key, &row)), key, expected }
    }

    pub(super) fn load_own(&self, group_id: &GroupId) -> Result<Option<Loaded<OwnRow>>, StoreError> {
        let key = self.group_row(GroupRowKind::OwnChain, group_id, None);
        let Some((sealed, row)) = self.open_group_row::<storage::OwnChainRow>(&key)? else { return Ok(None) };
        if row.version != ROW_VERSION || row.group_id != group_id.as_bytes() || row.leaps > MAX_LEAPS_PER_ROTATION {
            return Err(corrupt());
        }
        let chain = row
            .chain
            .as_ref()
            .map(|chain| OwnChain::from_record(chain, row.generation))
            .transpose()
            .map_err(|_| corrupt())?;
        let value = OwnRow {
            chain,
            distributed: row.distributed,
            generation: row.generation,
            leaps: row.leaps,
            lists_seen: row.lists_seen.clone(),
        };
        Ok(Some(Loaded { sealed, value }))
    }

    pub(super) fn own_write(&self, group_id: &GroupId, own: &OwnRow, expected: Expected) -> Write {
        let key = self.group_row(GroupRowKind::OwnChain, group_id, None);
        let row = Zeroizing::new(storage::OwnChainRow {
            version: ROW_VERSION,
            group_id: group_id.as_bytes().to_vec(),
            chain: own.chain.as_ref().map(OwnChain::to_record),
            distributed: own.distributed,
            generation: own.generation,
            leaps: own.leaps,
            lists_seen: own.lists_seen.clone(),
        });
        Write { table: Table::Groups, value: Some(self.seal_group_row(&key, &*row)), key, expected }
    }

    /// The member row of `member` in `group_id`: its key, and the row as
    /// read with its chains (`None`: not a member, or removed).
    fn load_member(
        &self,
        group_id: &GroupId,
        member: &Address,
    ) -> Result<(Vec<u8>, Option<Loaded<SenderChains>>), StoreError> {
        let (key, row) = self.load_member_row(group_id, member)?;
        Ok((key, row.and_then(|(loaded, removed)| (!removed).then_some(loaded))))
    }

    /// The member row of `member` in `group_id`, also of a removed member
    /// (then only floors, and `true`).
    fn load_member_row(
        &self,
        group_id: &GroupId,
        member: &Address,
    ) -> Result<(Vec<u8>, Option<MemberRow>), StoreError> {
        let key = self.group_row(GroupRowKind::Member, group_id, Some(member));
        let Some((sealed, row)) = self.open_group_row::<storage::SenderChainsRow>(&key)? else {
            return Ok((key, None));
        };
        if row.version != ROW_VERSION
            || row.group_id != group_id.as_bytes()
            || row.user_id != member.user_id()
            || row.device_id != member.device_id()
        {
            return Err(corrupt());
        }
        let chains = SenderChains::from_records(
            &row.chains,
            &row.requested,
            row.requests,
            &row.floors,
            row.last_answer.as_ref(),
            row.min_generation,
        )
        .map_err(|_| corrupt())?;
        // A removed member's row keeps floors only: no chain, request or answer.
        if row.removed && !chains.only_floors() {
            return Err(corrupt());
        }
        Ok((key, Some((Loaded { sealed, value: chains }, row.removed))))
    }

    fn member_write(
        &self,
        key: Vec<u8>,
        group_id: &[u8],
        member: &Address,
        chains: &SenderChains,
        expected: Expected,
    ) -> Write {
        self.member_row_write(key, group_id, member, chains, false, expected)
    }

    /// A member row; `removed`: the member was removed (`chains` holds only
    /// floors).
    fn member_row_write(
        &self,
        key: Vec<u8>,
        group_id: &[u8],
        member: &Address,
        chains: &SenderChains,
        removed: bool,
        expected: Expected,
    ) -> Write {
        let (records, requested) = chains.to_records();
        let row = Zeroizing::new(storage::SenderChainsRow {
            version: ROW_VERSION,
            group_id: group_id.to_vec(),
            user_id: member.user_id().to_owned(),
            device_id: member.device_id(),
            chains: records,
            requested,
            requests: chains.requests(),
            removed,
            floors: chains.floor_records(),
            last_answer: chains.answer_record(),
            min_generation: chains.min_generation(),
        });
        Write { table: Table::Groups, value: Some(self.seal_group_row(&key, &*row)), key, expected }
    }

    /// Checks a list of members to add: not this device, within the limit
    /// with `existing`; duplicates and members already in `existing` are
    /// dropped.
    fn new_members(&self, existing: &[Member], members: &[Address]) -> Result<Vec<Address>, DeviceError> {
        let mut seen: BTreeSet<(&str, u32)> =
            existing.iter().map(|m| (m.address.user_id(), m.address.device_id())).collect();
        let mut out = Vec::new();
        for member in members {
            if *member == self.address {
                return Err(GroupError::SelfAsMember.into());
            }
            if seen.insert((member.user_id(), member.device_id())) {
                out.push(member.clone());
            }
        }
        if existing.len().saturating_add(out.len()) > MAX_GROUP_MEMBERS {
            return Err(GroupError::TooManyMembers { max: MAX_GROUP_MEMBERS }.into());
        }
        Ok(out)
    }

    /// Creates a group with `members` (the other member devices; this device
    /// is always one). The app owns the roster: it tells each of its devices
    /// who is in the group, and this device gives its chain to exactly those
    /// members, and reads messages from exactly those.
    ///
    /// # Errors
    /// [`GroupError::InvalidGroupId`], [`GroupError::AlreadyExists`],
    /// [`GroupError::SelfAsMember`], [`GroupError::TooManyMembers`];
    /// [`DeviceListError::UnlistedDevice`] for a device of a pinned user
    /// that its list does not name; a store error.
    ///
    /// # Examples
    ///
    /// ```
    /// # use std::time::SystemTime;
    /// # use samizdat::store::StorageKey;
    /// use samizdat::{address::Address, device::{Device, MessageKind}, store::MemoryBackend};
    ///
    /// let alice = Device::create_in(MemoryBackend::new(), &StorageKey::from_bytes([1; 32]), Address::new("alice", 1)?, SystemTime::now())?;
    /// let bob = Device::create_in(MemoryBackend::new(), &StorageKey::from_bytes([2; 32]), Address::new("bob", 1)?, SystemTime::now())?;
    /// alice.start_session(&bob.prekey_bundle()?)?;
    /// alice.create_group(b"book club", &[bob.address().clone()])?;
    /// bob.create_group(b"book club", &[alice.address().clone()])?;
    ///
    /// let sent = alice.group_encrypt(b"book club", b"hello all")?;
    /// // First Alice's chain, in a one-to-one message, then the group message.
    /// for outgoing in &sent.distributions {
    ///     let pending = bob.decrypt(alice.address(), &outgoing.message)?;
    ///     assert_eq!(pending.kind(), MessageKind::Control);
    ///     bob.commit(pending)?;
    /// }
    /// let pending = bob.decrypt(alice.address(), &sent.message)?;
    /// assert_eq!((pending.kind(), pending.plaintext()), (MessageKind::Group, &b"hello all"[..]));
    /// bob.commit(pending)?;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn create_group(&self, group_id: &[u8], members: &[Address]) -> Result<(), DeviceError> {
        self.check_process()?;
        let group_id = self::group_id(group_id)?;
        let members = self.new_members(&[], members)?;
        let _guard = lock(&self.group_lock);
        retry_on_conflict(|| {
            if self.load_roster(&group_id)?.is_some() {
                return Err(GroupError::AlreadyExists.into());
            }
            // The mark first: a list written after it makes the next send
            // follow the lists again. A store with no mark gets one, so that
            // a mark deleted later differs from what every roster saw.
            let mut writes = Vec::new();
            let mut lists_seen = self.lists_mark()?;
            if lists_seen.is_empty() {
                let mark = self.lists_mark_write()?;
                lists_seen = mark.value.clone().unwrap_or_default();
                writes.push(mark);
            }
            self.check_listed_members(&members)?;
            let roster = Roster {
                group_id: group_id.clone(),
                members: members
                    .iter()
                    .map(|address| Ok(Member::new(address.clone(), self.listed_key(address)?)))
                    .collect::<Result<_, StoreError>>()?,
                removed: Vec::new(),
                users: Vec::new(),
            };
            writes.push(self.roster_write(&roster, Expected::Absent));
            writes.push(self.own_write(
                &group_id,
                &OwnRow { chain: None, distributed: false, generation: 0, leaps: 0, lists_seen },
                Expected::Absent,
            ));
            for member in &members {
                let key = self.group_row(GroupRowKind::Member, &group_id, Some(member));
                let expected = Expected::read(self.backend.get(Table::Groups, &key)?);
                writes.push(self.member_write(key, group_id.as_bytes(), member, &SenderChains::default(), expected));
            }
            Ok(self.write(&writes)?)
        })
    }

    /// The member devices of a group (besides this one), in the order they
    /// were added, as the newest verified lists make them: the roster
    /// follows a list written since it last did first (PROTOCOL.md 18.8),
    /// as a send would.
    ///
    /// # Errors
    /// [`GroupError::InvalidGroupId`], [`GroupError::UnknownGroup`]; a store error.
    pub fn group_members(&self, group_id: &[u8]) -> Result<Vec<Address>, DeviceError> {
        self.check_process()?;
        let group_id = self::group_id(group_id)?;
        {
            let _guard = lock(&self.group_lock);
            self.follow_lists(&group_id)?;
        }
        let roster = self.load_roster(&group_id)?.ok_or(GroupError::UnknownGroup)?;
        Ok(roster.value.members.into_iter().map(|m| m.address).collect())
    }

    /// Adds member devices to a group. The next message gives them our
    /// current chain at its current iteration: they cannot read what was
    /// sent before they joined. Members already in the group are left as
    /// they are. A member added back after a removal starts with no chain
    /// of its own, but none of its chains this device had can open again a
    /// message read (or given up) before the removal (PROTOCOL.md 18.8).
    ///
    /// # Errors
    /// As [`Self::create_group`]; [`GroupError::UnknownGroup`].
    pub fn add_group_members(&self, group_id: &[u8], members: &[Address]) -> Result<(), DeviceError> {
        self.check_process()?;
        let group_id = self::group_id(group_id)?;
        let _guard = lock(&self.group_lock);
        retry_on_conflict(|| {
            let mut roster = self.load_roster(&group_id)?.ok_or(GroupError::UnknownGroup)?;
            let mut own = self.load_own(&group_id)?.ok_or_else(corrupt)?;
            let added = self.new_members(&roster.value.members, members)?;
            if added.is_empty() {
                return Ok(());
            }
            self.check_listed_members(&added)?;
            let mut writes = Vec::with_capacity(added.len().saturating_add(2));
            self.add_to_roster(&mut roster.value, &mut own.value, &added, &mut writes)?;
            writes.push(self.roster_write(&roster.value, Expected::Value(roster.sealed)));
            writes.push(self.own_write(&group_id, &own.value, Expected::Value(own.sealed)));
            Ok(self.write(&writes)?)
        })
    }

    /// Refuses a device whose user is pinned and whose newest verified list
    /// does not name it ([`DeviceListError::UnlistedDevice`]): it cannot be
    /// a member (PROTOCOL.md 18.8). A device of a user not pinned is
    /// trusted per device, as for one-to-one messages.
    fn check_listed_members(&self, members: &[Address]) -> Result<(), DeviceError> {
        for member in members {
            if let Some(trust) = self.load_user(member.user_id())?.trust
                && trust.list().device(member.device_id()).is_none()
            {
                return Err(DeviceListError::UnlistedDevice { device_id: member.device_id() }.into());
            }
        }
        Ok(())
    }

    /// Adds `added` (new members, within the limit) to `roster`, each with
    /// a member row (a member added back keeps the floors of its chains),
    /// pushing the row writes; our chain goes to them with our next message.
    pub(super) fn add_to_roster(
        &self,
        roster: &mut Roster,
        own: &mut OwnRow,
        added: &[Address],
        writes: &mut Vec<Write>,
    ) -> Result<(), StoreError> {
        let group_id = roster.group_id.clone();
        for member in added {
            roster.members.push(Member::new(member.clone(), self.listed_key(member)?));
            roster.removed.retain(|a| a != member);
            writes.push(self.retired_member_write(&group_id, member, false)?);
        }
        if !added.is_empty() {
            own.distributed = false;
        }
        Ok(())
    }

    /// Removes member devices from a group: their chains are deleted (their
    /// messages are refused from now on, [`GroupError::NotMember`]), and our
    /// chain is dropped, so that our next message starts a new chain that
    /// only the remaining members receive: the removed devices cannot read
    /// anything we send after this call. Every other member device rotates
    /// likewise when its app removes them there. Names that are not members
    /// are ignored; if none is, nothing changes.
    ///
    /// Of each removed member's chains only the floors are kept (the
    /// iteration each had reached, no key), for the last
    /// [`MAX_REMOVED_MEMBERS`] members removed: if it is added back, a
    /// chain of it given again opens nothing read before.
    ///
    /// # Errors
    /// [`GroupError::InvalidGroupId`], [`GroupError::UnknownGroup`];
    /// [`GroupError::FollowedUser`] for a device of a member user (its list
    /// decides: [`Self::remove_group_users`]); a store error.
    pub fn remove_group_members(&self, group_id: &[u8], members: &[Address]) -> Result<(), DeviceError> {
        self.check_process()?;
        let group_id = self::group_id(group_id)?;
        let _guard = lock(&self.group_lock);
        retry_on_conflict(|| {
            let mut roster = self.load_roster(&group_id)?.ok_or(GroupError::UnknownGroup)?;
            let mut own = self.load_own(&group_id)?.ok_or_else(corrupt)?;
            let gone: Vec<Address> = roster
                .value
                .members
                .iter()
                .map(|m| m.address.clone())
                .filter(|address| members.contains(address))
                .collect();
            if gone.iter().any(|address| roster.value.users.iter().any(|user| user == address.user_id())) {
                return Err(GroupError::FollowedUser.into());
            }
            if gone.is_empty() {
                return Ok(());
            }
            let mut writes = Vec::new();
            self.remove_from_roster(&mut roster.value, &mut own.value, &gone, &mut writes)?;
            writes.push(self.roster_write(&roster.value, Expected::Value(roster.sealed)));
            writes.push(self.own_write(&group_id, &own.value, Expected::Value(own.sealed)));
            Ok(self.write(&writes)?)
        })
    }

    /// The write of `member`'s row in `group_id` with every chain given up
    /// (`RetireAll`: the floors kept), as a member's row (`removed` false:
    /// a member added, or added back) or a tombstone; a new empty row if it
    /// has none.
    fn retired_member_write(&self, group_id: &GroupId, member: &Address, removed: bool) -> Result<Write, StoreError> {
        Ok(match self.load_member_row(group_id, member)? {
            (key, Some((mut loaded, _))) => {
                loaded.value.retire_all();
                let expected = Expected::Value(loaded.sealed);
                self.member_row_write(key, group_id.as_bytes(), member, &loaded.value, removed, expected)
            }
            (key, None) => self.member_row_write(
                key,
                group_id.as_bytes(),
                member,
                &SenderChains::default(),
                removed,
                Expected::Absent,
            ),
        })
    }

    /// Removes `gone` (members of `roster`) from it, pushing the writes of
    /// their member rows (the chains go, the floors stay; past
    /// [`MAX_REMOVED_MEMBERS`], the row of the member removed longest ago
    /// is deleted), and rotates: our next message starts a new chain, given
    /// to the remaining members only.
    pub(super) fn remove_from_roster(
        &self,
        roster: &mut Roster,
        own: &mut OwnRow,
        gone: &[Address],
        writes: &mut Vec<Write>,
    ) -> Result<(), StoreError> {
        let group_id = roster.group_id.clone();
        roster.members.retain(|m| !gone.contains(&m.address));
        for member in gone {
            writes.push(self.retired_member_write(&group_id, member, true)?);
            roster.removed.push(member.clone());
        }
        // Past the limit, the member removed longest ago is forgotten.
        let excess = roster.removed.len().saturating_sub(MAX_REMOVED_MEMBERS);
        for forgotten in roster.removed.drain(..excess).collect::<Vec<_>>() {
            let key = self.group_row(GroupRowKind::Member, &group_id, Some(&forgotten));
            if let Some(sealed) = self.backend.get(Table::Groups, &key)? {
                writes.push(Write { table: Table::Groups, key, value: None, expected: Expected::Value(sealed) });
            }
        }
        // Rotation: the remaining members get a new chain with our next message.
        for member in &mut roster.members {
            *member = member.rotated();
        }
        *own = own.rotated();
        Ok(())
    }

    /// Starts a new chain for our next message in the group, given to every
    /// member then, without changing the roster: what a removal does, for an
    /// app that wants post-compromise security for its messages on a
    /// schedule (a device that saw our chain reads nothing on the new one
    /// unless it is a member).
    ///
    /// # Errors
    /// [`GroupError::InvalidGroupId`], [`GroupError::UnknownGroup`]; a store error.
    pub fn rotate_group_chain(&self, group_id: &[u8]) -> Result<(), DeviceError> {
        self.check_process()?;
        let group_id = self::group_id(group_id)?;
        let _guard = lock(&self.group_lock);
        retry_on_conflict(|| {
            let mut roster = self.load_roster(&group_id)?.ok_or(GroupError::UnknownGroup)?;
            let own = self.load_own(&group_id)?.ok_or_else(corrupt)?;
            for member in &mut roster.value.members {
                *member = member.rotated();
            }
            Ok(self.write(&[
                self.roster_write(&roster.value, Expected::Value(roster.sealed)),
                self.own_write(&group_id, &own.value.rotated(), Expected::Value(own.sealed)),
            ])?)
        })
    }

    /// Deletes a group from this device (leaving it): its roster, our chain
    /// and every member's chains. Messages of the group are refused from
    /// then on ([`GroupError::UnknownGroup`]).
    ///
    /// # Errors
    /// [`GroupError::InvalidGroupId`], [`GroupError::UnknownGroup`]; a store error.
    pub fn delete_group(&self, group_id: &[u8]) -> Result<(), DeviceError> {
        self.check_process()?;
        let group_id = self::group_id(group_id)?;
        let _guard = lock(&self.group_lock);
        retry_on_conflict(|| {
            let roster = self.load_roster(&group_id)?.ok_or(GroupError::UnknownGroup)?;
            let mut writes = Vec::new();
            let mut delete = |key: Vec<u8>| -> Result<(), StoreError> {
                if let Some(sealed) = self.backend.get(Table::Groups, &key)? {
                    writes.push(Write { table: Table::Groups, key, value: None, expected: Expected::Value(sealed) });
                }
                Ok(())
            };
            for member in roster.value.members.iter().map(|m| &m.address).chain(&roster.value.removed) {
                delete(self.group_row(GroupRowKind::Member, &group_id, Some(member)))?;
            }
            delete(self.group_row(GroupRowKind::OwnChain, &group_id, None))?;
            writes.push(Write {
                table: Table::Groups,
                key: self.group_row(GroupRowKind::Roster, &group_id, None),
                value: None,
                expected: Expected::Value(roster.sealed),
            });
            Ok(self.write(&writes)?)
        })
    }

    /// Encrypts `plaintext` for the group, and gives our current chain to the
    /// members that lack it (after [`Self::create_group`], an add, or a
    /// removal, which starts a new chain). Everything is committed before it
    /// returns, in one transaction: the chain's key is never used twice.
    /// Send [`GroupSend::distributions`] first (to their recipients) and the
    /// group message to every member.
    ///
    /// # Errors
    /// [`GroupError::InvalidGroupId`], [`GroupError::UnknownGroup`],
    /// [`GroupError::Encrypt`]; a session error of a distribution; a store
    /// error. Nothing of the send was written (following the lists, which
    /// comes first in a transaction of its own, may have been).
    pub fn group_encrypt(&self, group_id: &[u8], plaintext: &[u8]) -> Result<GroupSend, DeviceError> {
        self.check_process()?;
        let group_id = self::group_id(group_id)?;
        let _guard = lock(&self.group_lock);
        // A list written since the roster last followed the lists changes
        // the member devices first (in a transaction of its own).
        let own = self.follow_lists(&group_id)?.map(|(own, _)| own);
        // The members that will need the chain: lock their sessions first
        // (in row key order, as every call that locks several does).
        let lacking = match &own {
            Some(own) if own.value.chain.is_some() && own.value.distributed => Vec::new(),
            Some(_) => {
                let roster = self.load_roster(&group_id)?.ok_or_else(corrupt)?;
                let mut rows: Vec<Vec<u8>> = roster
                    .value
                    .members
                    .iter()
                    .filter(|m| !m.has_chain)
                    .map(|m| self.sealer.address_key(&m.address))
                    .collect();
                rows.sort();
                rows
            }
            None => return Err(GroupError::UnknownGroup.into()),
        };
        let locks: Vec<_> = lacking.iter().map(|row| self.peer_lock(row)).collect();
        let _guards: Vec<_> = locks.iter().map(|l| lock(l)).collect();
        // The first attempt uses the row read above (the group lock is held,
        // so only another process can have changed it: its write is then
        // refused, and the retry reads the row again).
        let mut loaded = own;
        retry_on_conflict(|| self.group_encrypt_once(&group_id, plaintext, loaded.take()))
    }

    /// One attempt of [`Self::group_encrypt`], on our chain's row as read
    /// (`None`: read it now).
    fn group_encrypt_once(
        &self,
        group_id: &GroupId,
        plaintext: &[u8],
        own: Option<Loaded<OwnRow>>,
    ) -> Result<GroupSend, DeviceError> {
        let mut rng = crate::os_rng();
        let mut own = match own {
            Some(own) => own,
            None => self.load_own(group_id)?.ok_or(GroupError::UnknownGroup)?,
        };
        let mut writes = Vec::new();
        let mut distributions = Vec::new();
        let mut without_session = Vec::new();
        let mut chain = match own.value.chain.take() {
            Some(chain) => chain,
            None => {
                own.value.distributed = false;
                own.value.generation = next_generation(own.value.generation)?;
                OwnChain::generate(&mut rng, own.value.generation)
            }
        };
        if !own.value.distributed {
            let mut roster = self.load_roster(group_id)?.ok_or_else(corrupt)?;
            let distribution = chain.distribution(group_id, chain.iteration());
            let content = Control::Distribution(distribution).to_bytes();
            for member in roster.value.members.iter_mut().filter(|m| !m.has_chain) {
                let row = self.sealer.address_key(&member.address);
                let (mut loaded, mut record) = self.load_record(&row)?;
                // No session, or one under an identity key its user's
                // pinned list does not name (a device listed again under a
                // new key, whose old key may be in someone else's hands):
                // no chain over it (PROTOCOL.md 18.8).
                let listed = match record.trusted_identity() {
                    Some(identity) => match self.check_listed(&member.address, &identity) {
                        Ok(()) => true,
                        Err(DeviceError::DeviceList(_)) => false,
                        Err(e) => return Err(e),
                    },
                    None => false,
                };
                if !record.has_session() || !listed {
                    without_session.push(member.address.clone());
                    continue;
                }
                let message = record.encrypt_content(&mut rng, &content, ContentType::Control)?;
                writes.extend(self.record_writes(&row, &member.address, &mut record, &mut loaded)?);
                distributions.push(Outgoing { to: member.address.clone(), message });
                member.has_chain = true;
                member.given_at = chain.iteration();
                member.answered = 0;
            }
            own.value.distributed = without_session.is_empty();
            if !distributions.is_empty() {
                writes.push(self.roster_write(&roster.value, Expected::Value(roster.sealed)));
            }
        }
        let message = chain.encrypt(&mut rng, group_id, &self.address, plaintext).map_err(GroupError::from)?;
        own.value.chain = Some(chain);
        writes.push(self.own_write(group_id, &own.value, Expected::Value(own.sealed)));
        // A ciphertext whose write is refused is dropped, never returned.
        self.write(&writes)?;
        Ok(GroupSend { message: message.to_bytes(), distributions, without_session })
    }

    /// Phase 1 of a group message from `peer`: decrypts it without changing
    /// anything (but see [`GroupError::MissingChain`]).
    pub(super) fn decrypt_group(&self, peer: &Address, message: &GroupMessage) -> Result<PendingMessage, DeviceError> {
        let group_id = GroupId::new(message.group_id()).ok_or(GroupError::InvalidGroupId)?;
        // Once more if the chain arrived while this call asked for it, or
        // the roster followed a newer list.
        let mut followed = false;
        for _ in 0..3 {
            let (key, loaded) = self.load_member(&group_id, peer)?;
            // Chains are used only under the identity trusted for the sender now.
            let trusted = match &loaded {
                Some(_) => self.load_record(&self.sealer.address_key(peer))?.1.trusted_identity(),
                None => None,
            };
            // A member device that the pinned list of its user no longer
            // names (removed, or never listed) is refused, as its one-to-one
            // messages are (PROTOCOL.md 23.5): before any key is used.
            if let Some(identity) = &trusted {
                self.check_listed(peer, identity)?;
            }
            let Some(loaded) = loaded else {
                // Not the roster (it may be large): the own-chain row says
                // whether the group exists. A device a list written since
                // the roster last followed the lists added may be a member
                // now (once per call: a list is the app's, not the sender's).
                let exists = self.load_own(&group_id)?.is_some();
                if exists && !followed {
                    followed = true;
                    let _guard = lock(&self.group_lock);
                    if self.follow_lists(&group_id)?.is_some_and(|(_, changed)| changed) {
                        continue;
                    }
                }
                return Err(if exists { GroupError::NotMember } else { GroupError::UnknownGroup }.into());
            };
            match loaded.value.plan_decrypt(peer, trusted.as_ref(), message) {
                Ok((plaintext, plan)) => {
                    let mut chains = loaded.value;
                    chains.apply(plan);
                    return Ok(PendingMessage {
                        device: self.identity.public_key(),
                        peer: peer.clone(),
                        inner: Inner::Group(GroupPending {
                            group_id: group_id.as_bytes().to_vec(),
                            plaintext,
                            row: key,
                            sealed: loaded.sealed,
                            chains,
                            user: peer.clone(),
                            identity: trusted,
                        }),
                    });
                }
                Err(GroupDecrypt::Failed(error)) => return Err(GroupError::Decrypt(error).into()),
                Err(GroupDecrypt::MissingChain | GroupDecrypt::TooFarAhead { .. }) => {
                    match self.request_chain(&group_id, peer, message)? {
                        Requested::Sent(request) => {
                            return Err(GroupError::MissingChain {
                                chain_id: message.chain_id(),
                                request: Some(request),
                            }
                            .into());
                        }
                        Requested::NotSent => {
                            return Err(GroupError::MissingChain { chain_id: message.chain_id(), request: None }.into());
                        }
                        Requested::Arrived => {}
                    }
                }
            }
        }
        Err(GroupError::MissingChain { chain_id: message.chain_id(), request: None }.into())
    }

    /// Makes a request for the chain of `message` to `peer` (from where a
    /// chain of that id given up stopped, else from 0, for a missing chain;
    /// from [`MAX_SKIP`] before the message, for one too far ahead), if it
    /// is still needed, the limits allow one and there is a session: the
    /// request is encrypted and both rows (the session, the member's request
    /// count and the request itself) written in one transaction before it
    /// is returned. Past the limits, the last request made for that chain id
    /// is returned again, and nothing is written.
    fn request_chain(
        &self,
        group_id: &GroupId,
        peer: &Address,
        message: &GroupMessage,
    ) -> Result<Requested, DeviceError> {
        let _group_guard = lock(&self.group_lock);
        let row = self.sealer.address_key(peer);
        let peer_lock = self.peer_lock(&row);
        let _guard = lock(&peer_lock);
        retry_on_conflict(|| {
            let (key, Some(mut chains)) = self.load_member(group_id, peer)? else { return Ok(Requested::NotSent) };
            let (mut loaded, mut record) = self.load_record(&row)?;
            // The chain from the earliest iteration the sender will give (it
            // knows when this device was first given it), or, on a chain this
            // device has but is too far behind on, from where the message is
            // just within reach.
            let from = match chains.value.plan_decrypt(peer, record.trusted_identity().as_ref(), message) {
                // From the floor of a chain given up: what it opened before
                // stays closed, and nothing below it is asked for.
                Err(GroupDecrypt::MissingChain) => chains.value.floor(message.chain_id()).unwrap_or(0),
                Err(GroupDecrypt::TooFarAhead { .. }) => message.iteration().saturating_sub(MAX_SKIP),
                // It arrived meanwhile (or the message no longer needs it).
                _ => return Ok(Requested::Arrived),
            };
            if !record.has_session() {
                return Ok(Requested::NotSent);
            }
            if !chains.value.count_request(message.chain_id()) {
                // The same bytes again: a request that died with the app
                // before it was sent goes now; a copy of one sent is a
                // duplicate to the sender. Never a new message.
                return Ok(match chains.value.last_request(message.chain_id()) {
                    Some(request) => Requested::Sent(request.to_vec()),
                    None => Requested::NotSent,
                });
            }
            let content = Control::Request(Request {
                group_id: group_id.clone(),
                chain_id: message.chain_id(),
                iteration: from,
                min_generation: chains.value.min_generation(),
            })
            .to_bytes();
            let request = record.encrypt_content(&mut crate::os_rng(), &content, ContentType::Control)?;
            chains.value.keep_request(message.chain_id(), request.clone());
            let mut writes = self.record_writes(&row, peer, &mut record, &mut loaded)?;
            writes.push(self.member_write(
                key,
                group_id.as_bytes(),
                peer,
                &chains.value,
                Expected::Value(chains.sealed),
            ));
            self.write(&writes)?;
            Ok(Requested::Sent(request))
        })
    }

    /// What the commit of control content from `peer` will do, decided
    /// now, from the rows as they are (PROTOCOL.md 18.6, 18.7).
    ///
    /// # Errors
    /// [`SessionError::Malformed`] for content that does not parse (the
    /// message is refused, nothing changes); a store error.
    pub(super) fn plan_control(
        &self,
        peer: &Address,
        identity: IdentityKey,
        content: &[u8],
        healing: &Healing,
    ) -> Result<ControlAction, DeviceError> {
        let control = match Control::from_bytes(content) {
            Ok(control) => control,
            // A kind of a later release: consumed, and nothing done.
            Err(crate::DecodeError::UnknownKind) => return Ok(ControlAction::Ignored(Vec::new())),
            Err(e) => return Err(SessionError::from(e).into()),
        };
        match control {
            Control::Reset(ids) => self.plan_reset(peer, identity, &ids),
            // A resend our reset did not ask for, or one already delivered:
            // nothing for the app.
            Control::Resend { id, also, plaintext } => {
                let ids = || std::iter::once(&id).chain(&also);
                Ok(if ids().any(|i| healing.was_resent(i)) {
                    // Another resend of it reached the app: nothing for the
                    // app, but its ids are the message's too.
                    ControlAction::ResentAgain { ids: ids().copied().collect() }
                } else if ids().any(|i| healing.awaits(i)) {
                    ControlAction::Resent { id, also, plaintext }
                } else {
                    ControlAction::Ignored(Vec::new())
                })
            }
            Control::Distribution(distribution) => {
                let group_id = distribution.group_id.clone();
                let (mut row, mut loaded) = self.load_member(&group_id, peer)?;
                // From a device a list written since the roster last
                // followed the lists may have added: follow them, then look
                // again.
                if loaded.is_none() {
                    let _guard = lock(&self.group_lock);
                    if self.follow_lists(&group_id)?.is_some_and(|(_, changed)| changed) {
                        (row, loaded) = self.load_member(&group_id, peer)?;
                    }
                }
                let Some(mut loaded) = loaded else { return Ok(ControlAction::Ignored(group_id.as_bytes().to_vec())) };
                if !loaded.value.receive(&distribution, identity) {
                    return Ok(ControlAction::Ignored(group_id.as_bytes().to_vec()));
                }
                Ok(ControlAction::Store {
                    group_id: group_id.as_bytes().to_vec(),
                    row,
                    sealed: loaded.sealed,
                    chains: loaded.value,
                })
            }
            Control::Request(request) => {
                let ignored = || ControlAction::Ignored(request.group_id.as_bytes().to_vec());
                // The roster as the newest lists make it first: a device
                // listed again under a new key asks from where its old key
                // was given our chain, which it must not get (PROTOCOL.md 18.8).
                {
                    let _guard = lock(&self.group_lock);
                    self.follow_lists(&request.group_id)?;
                }
                // Only a member asks (its row is small; the roster may not be).
                let (member_key, Some(member_row)) = self.load_member(&request.group_id, peer)? else {
                    return Ok(ignored());
                };
                let (Some(mut roster), Some(own)) =
                    (self.load_roster(&request.group_id)?, self.load_own(&request.group_id)?)
                else {
                    return Ok(ignored());
                };
                if !roster.value.members.iter().any(|m| m.address == *peer) {
                    return Ok(ignored());
                }
                // The member takes in no chain of ours of the generation we
                // are at: a new chain, of the generation it asks for, goes
                // to it now and to every other member with our next message
                // (our generation went back: a store restored, a group
                // deleted and made again; PROTOCOL.md 18.7). At most
                // MAX_LEAPS_PER_ROTATION in all, and MAX_GROUP_KEY_ANSWERS
                // per member, until our app rotates.
                if leaps(own.value.generation, request.min_generation)
                    && own.value.leaps < MAX_LEAPS_PER_ROTATION
                    && roster.value.members.iter().any(|m| m.address == *peer && m.answered < MAX_GROUP_KEY_ANSWERS)
                {
                    let mut own = own;
                    let chain = OwnChain::generate(&mut crate::os_rng(), request.min_generation);
                    let distribution = chain.distribution(&request.group_id, 0);
                    for member in &mut roster.value.members {
                        if member.address == *peer {
                            member.has_chain = true;
                            member.given_at = 0;
                            member.answered = member.answered.saturating_add(1);
                        } else {
                            member.has_chain = false;
                            member.given_at = 0;
                        }
                    }
                    own.value.chain = Some(chain);
                    own.value.generation = request.min_generation;
                    own.value.leaps = own.value.leaps.saturating_add(1);
                    return Ok(ControlAction::Answer {
                        group_id: request.group_id.clone(),
                        roster,
                        own: Box::new(own),
                        member: Box::new((member_key, member_row)),
                        distribution: Box::new(distribution),
                    });
                }
                let Some(chain) = &own.value.chain else { return Ok(ignored()) };
                let Some(member) = roster.value.members.iter_mut().find(|m| m.address == *peer) else {
                    return Ok(ignored());
                };
                // A request gets our current chain, from the iteration asked
                // for if it is on it (never from before the member was first
                // given it), else from now: at most MAX_GROUP_KEY_ANSWERS new
                // answers per member and chain; past them, a request for our
                // current chain gets the last answer again (the app may have
                // died before sending it), the same bytes, and nothing else
                // changes.
                // Past them, a request for our current chain from a later
                // iteration than the last answer gave it from (the member
                // read on it past that answer, so it had it, and lost the
                // chain since: removed and added back by its app, say) gets
                // a new answer from there: each such answer starts further
                // on, so they are at most as many as our messages on the
                // chain (PROTOCOL.md 18.7).
                let again = (request.chain_id == chain.chain_id())
                    .then(|| member_row.value.last_answer(chain.chain_id()))
                    .flatten();
                let later = again.is_some_and(|(_, from)| {
                    member.has_chain && request.iteration > from && request.iteration <= chain.iteration()
                });
                if member.answered >= MAX_GROUP_KEY_ANSWERS && !later {
                    return Ok(match again {
                        Some((message, _)) => ControlAction::AnswerAgain {
                            group_id: request.group_id.clone(),
                            own: (self.group_row(GroupRowKind::OwnChain, &request.group_id, None), own.sealed.clone()),
                            message: message.to_vec(),
                        },
                        None => ignored(),
                    });
                }
                // Another chain id than ours from a member that has ours: a
                // message of someone else's relabelled as ours (the server
                // names the sender), or one of our rotated-away chains, whose
                // messages no answer can open now. Nothing to send.
                if request.chain_id != chain.chain_id() && member.has_chain {
                    return Ok(ignored());
                }
                let from = if request.chain_id != chain.chain_id() {
                    chain.iteration()
                } else if member.has_chain {
                    request.iteration.max(member.given_at)
                } else {
                    chain.iteration()
                };
                let distribution = chain.distribution(&request.group_id, from);
                if !member.has_chain {
                    member.given_at = distribution.iteration;
                }
                member.has_chain = true;
                member.answered = member.answered.saturating_add(1).min(MAX_GROUP_KEY_ANSWERS);
                Ok(ControlAction::Answer {
                    group_id: request.group_id.clone(),
                    roster,
                    own: Box::new(own),
                    member: Box::new((member_key, member_row)),
                    distribution: Box::new(distribution),
                })
            }
        }
    }

    /// The writes of a control message's action on top of its session's
    /// (`record`, already committed), and the answer to send, if any.
    pub(super) fn control_writes(
        &self,
        action: ControlAction,
        peer: &Address,
        record: &mut SessionRecord,
    ) -> Result<(Vec<Write>, Vec<Outgoing>), DeviceError> {
        match action {
            ControlAction::Ignored(_) => Ok((Vec::new(), Vec::new())),
            ControlAction::ResentAgain { ids } => {
                if let Some((first, also)) = ids.split_first() {
                    record.healing_mut().resent(first, also);
                }
                Ok((Vec::new(), Vec::new()))
            }
            ControlAction::Resent { id, also, .. } => {
                record.healing_mut().resent(&id, &also);
                Ok((Vec::new(), Vec::new()))
            }
            ControlAction::Reset(resends) => self.encrypt_resends(peer, record, *resends),
            ControlAction::Store { group_id, row, sealed, chains } => {
                Ok((vec![self.member_write(row, &group_id, peer, &chains, Expected::Value(sealed))], Vec::new()))
            }
            ControlAction::Answer { group_id, roster, own, member, distribution } => {
                let (chain_id, from) = (distribution.chain_id, distribution.iteration);
                let content = Control::Distribution(*distribution).to_bytes();
                let message = record.encrypt_content(&mut crate::os_rng(), &content, ContentType::Control)?;
                // Our chain must still be the one the answer gives: rewritten
                // as it was, conditionally.
                let Loaded { sealed: own_sealed, value: mut own_row } = *own;
                own_row.distributed = own_row.chain.is_some() && roster.value.members.iter().all(|m| m.has_chain);
                // The answer is kept in the member's row, to hand again.
                let (member_key, Loaded { sealed: member_sealed, value: mut chains }) = *member;
                chains.keep_answer(chain_id, from, message.clone());
                Ok((
                    vec![
                        self.roster_write(&roster.value, Expected::Value(roster.sealed)),
                        self.own_write(&group_id, &own_row, Expected::Value(own_sealed)),
                        self.member_write(
                            member_key,
                            group_id.as_bytes(),
                            peer,
                            &chains,
                            Expected::Value(member_sealed),
                        ),
                    ],
                    vec![Outgoing { to: peer.clone(), message }],
                ))
            }
            ControlAction::AnswerAgain { own: (key, sealed), message, .. } => {
                // Nothing changes; our chain row, rewritten as it is (the
                // same bytes), must still be the one read: the answer gives
                // our current chain.
                let write =
                    Write { table: Table::Groups, key, value: Some(sealed.clone()), expected: Expected::Value(sealed) };
                Ok((vec![write], vec![Outgoing { to: peer.clone(), message }]))
            }
        }
    }

    /// Commits a group message: its sender's chains, conditionally on the
    /// row the decryption read.
    pub(super) fn commit_group(&self, pending: GroupPending) -> Result<(), DeviceError> {
        let GroupPending { group_id, row, sealed, chains, user, .. } = pending;
        // (A change of the trusted identity since the decryption rewrote the
        // session row, not this one: the chain came under the identity that
        // was trusted when the message was read.)
        let _guard = lock(&self.group_lock);
        let write = self.member_write(row, &group_id, &user, &chains, Expected::Value(sealed));
        match self.write(&[write]) {
            Err(StoreError::Conflict { .. }) => Err(SessionError::StalePending.into()),
            result => Ok(result?),
        }
    }
}

/// The generation of the chain after one of generation `generation`.
///
/// # Errors
/// [`EncryptError::ChainExhausted`] past `u64::MAX` (not reached by any
/// app: a generation grows by one per chain, and a leap goes to at most
/// [`MAX_LEAP_GENERATION`], PROTOCOL.md 18.7).
fn next_generation(generation: u64) -> Result<u64, GroupError> {
    generation.checked_add(1).ok_or(GroupError::Encrypt(EncryptError::ChainExhausted))
}

/// Whether a member's request that takes in chains of `min_generation` and
/// later makes us start a chain of that generation: ours, `generation`, is
/// below it, and it is at most [`MAX_LEAP_GENERATION`].
fn leaps(generation: u64, min_generation: u64) -> bool {
    min_generation > generation && min_generation <= MAX_LEAP_GENERATION
}

impl From<GroupError> for DeviceError {
    fn from(error: GroupError) -> Self {
        Self::Group(error)
    }
}
