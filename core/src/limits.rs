//! Every limit of the protocol, in one place.
//!
//! A message or stored state that would cross one of these limits is rejected
//! with a typed error and changes nothing. Each limit is covered by a test that
//! pushes against it.

/// The most message keys one message may make the receiver skip on one chain
/// (the Signal specification's `MAX_SKIP`). A message further ahead than this is
/// rejected with [`DecryptError::TooFarAhead`](crate::DecryptError::TooFarAhead).
pub const MAX_SKIP: u32 = 2_000;

/// The most skipped message keys a session keeps in total, over all its
/// receiving chains. When a message would store more, the oldest keys are
/// evicted first; a message whose key was evicted can no longer be decrypted.
pub const MAX_STORED_SKIPPED_KEYS: usize = 2_000;

/// The most decrypted counters a session state remembers, each with a tag of
/// the message that used it (over all its receiving chains; the oldest are
/// forgotten first). They tell a replay of a decrypted message
/// ([`DecryptError::Duplicate`](crate::DecryptError::Duplicate)) from another
/// message on the same counter, which only a sender whose state went
/// backwards can make ([`DecryptError::Rollback`](crate::DecryptError::Rollback)).
/// A message on a forgotten counter is reported as a duplicate.
pub const MAX_USED_COUNTERS: usize = 128;

/// Counters whose skipped keys were evicted unused (past
/// [`MAX_STORED_SKIPPED_KEYS`]) that one session state remembers, over its
/// receiving chains, oldest forgotten first: a message on one of them is
/// [`DecryptError::KeyEvicted`](crate::DecryptError::KeyEvicted) (it never
/// arrived, and its sender must send it again), not a duplicate. A message on
/// a counter evicted longer ago is reported as a duplicate (PROTOCOL.md 4.8).
pub const MAX_EVICTED_COUNTERS: usize = 2_000;

/// The most receiving chains a session keeps: the current one and up to four
/// previous ones. The oldest chain (with its skipped keys) is dropped when a
/// new one starts.
pub const MAX_RECEIVING_CHAINS: usize = 5;

/// The most archived session states kept per peer (besides the current one).
pub const MAX_ARCHIVED_STATES: usize = 10;

/// How many heals an archived state's kept keys outlive. A heal is a DH step
/// the current state takes on a message from the peer; at each, every other
/// state is cut down to its skipped message keys (for messages still in
/// flight), and kept keys this many heals old are dropped.
pub const MAX_KEPT_STATE_HEALS: u64 = 20;

/// The largest encoded message, version byte included (256 KiB).
pub const MAX_MESSAGE_LEN: usize = 256 * 1024;

/// The largest plaintext one message may carry (240 KiB). Padded and sealed,
/// with the largest header, it still fits in [`MAX_MESSAGE_LEN`].
pub const MAX_PLAINTEXT_LEN: usize = 240 * 1024;

/// The largest serialized session state accepted from a store (1 MiB). A state
/// within every other limit is far smaller (about 95 KiB with every skipped key
/// slot and every evicted counter in use).
pub const MAX_STATE_LEN: usize = 1024 * 1024;

/// The largest associated data a session may bind into its messages.
pub const MAX_ASSOCIATED_DATA_LEN: usize = 1024;

/// The most signed X25519 prekeys a device keeps: the current one and the
/// previous ones that messages in flight may still name.
pub const MAX_SIGNED_PREKEYS: usize = 3;

/// The most last-resort ML-KEM prekeys a device keeps (current and previous).
pub const MAX_LAST_RESORT_PREKEYS: usize = 3;

/// The most one-time prekeys of each kind (X25519, ML-KEM) a device holds.
pub const MAX_ONE_TIME_PREKEYS: usize = 200;

/// The most base keys of processed prekey messages a session record
/// remembers, to recognise a replayed first message after its session state
/// was archived away.
pub const MAX_SEEN_BASE_KEYS: usize = 1_000;

/// The most base keys a device remembers for handshakes that used no one-time
/// X25519 prekey (only the signed and possibly the last-resort keys), across
/// all peers. Such a first message carries nothing that is used up, so its
/// base key is the only thing that stops a replay from building a second
/// session; entries go when their signed prekey is rotated away, and the
/// oldest go first past this limit.
pub const MAX_REMEMBERED_BASE_KEYS: usize = 10_000;

/// The most times a device call that has handed nothing out yet (an
/// encryption, a new session, a trust decision, a prekey change, a creation)
/// reads its rows, computes and tries its conditional write, when another
/// handle on the same store keeps writing those rows first. Past it the call
/// fails with [`StoreError::Conflict`](crate::store::StoreError::Conflict),
/// having written nothing; the app may call again.
pub const MAX_WRITE_ATTEMPTS: usize = 8;

/// The fewest bytes of rows (keys and sealed values) a handle on a SQLite
/// store writes between two scrubs it runs by itself (1 MiB). Its budget is
/// the larger of this and the database's size after its last scrub: a scrub
/// rewrites the whole database, so its cost stays in proportion to what was
/// written since the last one. A fragment of a superseded row that SQLite
/// leaves in a rebuilt page survives until the scrub after the commit that
/// takes the handle past its budget ([`Backend::scrub`](crate::store::Backend::scrub),
/// PROTOCOL.md 14.8, 16.6).
pub const MIN_SCRUB_BUDGET: u64 = 1024 * 1024;

/// The longest group id, in bytes (the shortest is one byte). The app
/// chooses group ids; they travel in the clear in every group message.
pub const MAX_GROUP_ID_LEN: usize = 64;

/// The most member devices a group holds, besides this device.
pub const MAX_GROUP_MEMBERS: usize = 5_000;

/// The most chains a device keeps per sender of a group: the newest one
/// and the ones it replaced, so that messages in flight on a chain the
/// sender has rotated away from still decrypt. A fourth distribution drops
/// the oldest chain with its skipped keys.
pub const MAX_SENDER_CHAINS: usize = 3;

/// The most chains given up (evicted by newer ones, or dropped when their
/// sender was removed from the group) whose floor a device keeps per sender
/// of a group: the iteration below which a chain taken again opens nothing
/// (PROTOCOL.md 18.6). A chain given up longer ago than this many others
/// and then given again opens its messages from the distribution's
/// iteration.
pub const MAX_CHAIN_FLOORS: usize = 8;

/// The largest generation a member's request may make us start a chain of
/// in a group (PROTOCOL.md 18.7): a request that asks for more is answered
/// as if it asked for none. It leaves 2^63 chains after any leap, so no
/// member can exhaust our generations.
pub const MAX_LEAP_GENERATION: u64 = 1 << 63;

/// The most leaps (PROTOCOL.md 18.7) we make in a group between two
/// rotations of our chain by our app (`rotate_group_chain`,
/// `remove_group_members`, `create_group`): hostile members, however many,
/// make us start at most this many chains until then.
pub const MAX_LEAPS_PER_ROTATION: u32 = 2;

/// The most members removed from a group whose member row (the floors of
/// their chains, [`MAX_CHAIN_FLOORS`]) a device keeps, so that a member
/// added back cannot have its old messages read twice; past it, the row of
/// the member removed longest ago is deleted.
pub const MAX_REMOVED_MEMBERS: usize = 5_000;

/// The most skipped message keys a device keeps per sender of a group, over
/// that sender's chains (the oldest are evicted first). One message may
/// skip at most [`MAX_SKIP`] keys on its chain.
pub const MAX_GROUP_SKIPPED_KEYS: usize = 2_000;

/// The most decrypted iterations a device remembers per sender of a group
/// (with a tag of each message), to tell a replay
/// ([`DecryptError::Duplicate`](crate::DecryptError::Duplicate)) from a
/// sender whose state went backwards
/// ([`DecryptError::Rollback`](crate::DecryptError::Rollback)).
pub const MAX_GROUP_USED_ITERATIONS: usize = 128;

/// The most iterations whose skipped keys were evicted unused (past
/// [`MAX_GROUP_SKIPPED_KEYS`]) a device remembers per sender of a group,
/// oldest forgotten first: a message on one of them is
/// [`DecryptError::KeyEvicted`](crate::DecryptError::KeyEvicted) (it never
/// arrived), not a duplicate (PROTOCOL.md 18.5).
pub const MAX_GROUP_EVICTED_ITERATIONS: usize = 2_000;

/// How far behind its current iteration a sender keeps a copy of its chain
/// key, to answer a member that lost the chain's distribution or fell too
/// far behind on it (PROTOCOL.md 18.7): the member gets the chain from the
/// iteration it asks for (where a chain given up stopped, else 0, for a
/// missing chain; [`MAX_SKIP`] before the message, for one too far ahead),
/// never from before the iteration at which it was first given the chain,
/// and never from further back than this many messages (then from the
/// oldest iteration kept). A phone seized from the sender exposes at most
/// this many of its past messages on the current chain.
pub const GROUP_RECOVERY_WINDOW: u32 = 2_000;

/// The most chain ids a device remembers asking one sender of a group for
/// (a new one takes the place of the oldest, so made-up chain ids cannot
/// keep it from asking for one that exists); each is asked for at most
/// [`MAX_GROUP_KEY_REQUESTS`] times.
pub const MAX_REQUESTED_CHAINS: usize = 4;

/// How many new requests a device makes of a sender for one chain (until
/// the sender proves itself again: a distribution from it, or a message of
/// it that decrypts). Past it, a message on that chain still missing hands
/// the last request again, the same bytes (kept with its
/// [`MAX_REQUESTED_CHAINS`] entry): a request that died with the app before
/// it was sent is never lost, and a copy that was sent is refused by the
/// sender's session as a duplicate. One more than [`MAX_GROUP_KEY_ANSWERS`],
/// so that a member whose every answer died with its sender's app still
/// makes one new request, which the sender answers with its last answer
/// again.
pub const MAX_GROUP_KEY_REQUESTS: u32 = 3;

/// How many new answers a sender makes to one member's requests on one of
/// its chains. Past it, a request of that member for that chain gets the
/// last answer again, the same bytes (kept in the member's row): a hostile
/// member cannot make the sender send new messages without bound, and one
/// incoming request makes at most one outgoing message.
pub const MAX_GROUP_KEY_ANSWERS: u32 = 2;

/// The largest one-to-one message a device keeps to hand again (a request,
/// [`MAX_GROUP_KEY_REQUESTS`], or an answer, [`MAX_GROUP_KEY_ANSWERS`]), in
/// bytes: such a message carries at most 256 bytes of padded control content
/// (a distribution with a 64-byte group id), in a prekey message at most
/// (its ML-KEM-1024 ciphertext included), about 2 KiB in all. A stored
/// message longer than this is corrupt.
pub const MAX_KEPT_CONTROL_MESSAGE_LEN: usize = 4096;

/// The most new requests a device makes of one sender of a group until that
/// sender proves itself again (a distribution from it, or a message of it
/// that decrypts): forged messages with made-up chain ids cannot make it
/// send more new messages (past it, a chain id asked for already gets its
/// last request again, [`MAX_GROUP_KEY_REQUESTS`]; another gets none).
pub const MAX_GROUP_REQUESTS_PER_SENDER: u32 = 8;

/// The most message ids one reset names (PROTOCOL.md 20.5): a device that
/// could not read more names the latest of them.
pub const MAX_RESET_IDS: usize = 64;

/// The most resets the peer answered that name one message: a message the
/// peer never sends again (it no longer holds it, or it never existed: a
/// forgery) is named no more after this many, so that waiting for it cannot
/// make resets for ever; a reset that was lost on the way (never answered)
/// does not count (PROTOCOL.md 20.4).
pub const MAX_RESET_NAMINGS: u32 = 3;

/// The most ids a session record awaits a resend for (PROTOCOL.md 20.4);
/// the oldest make room.
pub const MAX_AWAITED_RESENDS: usize = 64;

/// The most ids of resent messages a session record remembers, so that a
/// late first copy of one is a duplicate (PROTOCOL.md 20.4).
pub const MAX_DELIVERED_RESENDS: usize = 64;

/// The most plaintexts the outbox keeps per peer (PROTOCOL.md 20.3); the
/// oldest make room. A [`HealPolicy`](crate::device::HealPolicy) may set
/// fewer.
pub const MAX_OUTBOX_MESSAGES: usize = 256;

/// The most ids of its resends an outbox entry remembers (the latest): a
/// reset may name a resend that did not arrive where it could be read, and
/// gets the message again (PROTOCOL.md 20.3).
pub const MAX_RESEND_IDS: usize = 4;

/// The largest plaintext the outbox keeps: room is left within
/// [`MAX_PLAINTEXT_LEN`] for the framing of its largest resend (the control
/// content's tags and lengths, its id and [`MAX_RESEND_IDS`] other ids: at
/// most 26 + 18 x 4 = 98 bytes).
pub const MAX_KEPT_PLAINTEXT_LEN: usize = MAX_PLAINTEXT_LEN - 128;

/// The largest plaintext one fan-out sends
/// ([`Device::encrypt_to_user`](crate::device::Device::encrypt_to_user),
/// PROTOCOL.md 23.6): room is left within [`MAX_PLAINTEXT_LEN`] for the
/// framing of the sent sync our other devices get (23.7: the control
/// content's tags and lengths and a recipient of up to
/// [`MAX_USER_ID_LEN`](crate::address::MAX_USER_ID_LEN) = 256 bytes: at most
/// 267 bytes).
pub const MAX_FAN_OUT_PLAINTEXT_LEN: usize = MAX_PLAINTEXT_LEN - 512;

/// How far back the app's clock may be set before a stored time is taken
/// for a clock that was wrong (ahead) rather than for the present: a heal
/// at a clock set back by more than this is not refused for the time the
/// wrong clock was ahead (PROTOCOL.md 20.5). One day.
pub const CLOCK_CORRECTION: u64 = 24 * 3_600;

/// The most memory, in KiB, a backup's Argon2id may use (256 MiB): a file
/// whose header asks for more is refused before any key is derived
/// ([`BackupError::ParamsOutOfBounds`](crate::backup::BackupError::ParamsOutOfBounds)),
/// so a hostile backup makes a device allocate at most this much. Four
/// times the default (64 MiB); an export may not ask for more either, so
/// every backup a device makes restores on another.
pub const MAX_BACKUP_MEMORY_KIB: u32 = 256 * 1024;

/// The most passes over the memory a backup's Argon2id may make. With
/// [`MAX_BACKUP_MEMORY_KIB`], the worst a hostile file can cost a device
/// before its tag is checked: 256 MiB for about 13 times the work of the
/// default parameters (PROTOCOL.md 21.5 gives the time measured).
pub const MAX_BACKUP_ITERATIONS: u32 = 10;

/// The most lanes a backup's Argon2id may have. This crate computes lanes
/// one after another: they change neither the memory nor the work.
pub const MAX_BACKUP_PARALLELISM: u32 = 4;

/// The least memory, in KiB, an export accepts (19 MiB, OWASP's floor for
/// Argon2id with two passes). A restore accepts less: only the holder of the
/// passphrase can make a file that opens, so a weak one hurts only its maker
/// (and lets test vectors be checked quickly).
pub const MIN_BACKUP_MEMORY_KIB: u32 = 19 * 1024;

/// The fewest passes an export accepts.
pub const MIN_BACKUP_ITERATIONS: u32 = 2;

/// The most trust decisions (peer devices with a trusted identity key) one
/// backup holds: an export of a device that trusts more fails with
/// [`BackupError::TooManyPeers`](crate::backup::BackupError::TooManyPeers).
/// A restore writes one row per peer in one transaction.
pub const MAX_BACKUP_PEERS: usize = 100_000;

/// The longest backup file accepted (32 MiB): room for
/// [`MAX_BACKUP_PEERS`] peers with the longest user ids (about 300 bytes
/// each encoded), padded, with the header and the tag. A longer file is
/// refused before anything else.
pub const MAX_BACKUP_LEN: usize = 32 * 1024 * 1024;

/// The most pinned contact users a link message carries (PROTOCOL.md 23.8):
/// a device that pinned more cannot link another (`LinkError::TooManyUsers`).
pub const MAX_LINK_PINNED_USERS: usize = 10_000;

/// The longest link message (PROTOCOL.md 23.8): one that carries
/// [`MAX_LINK_PINNED_USERS`] lists at their longest
/// ([`MAX_DEVICE_LIST_LEN`](crate::user::MAX_DEVICE_LIST_LEN)) fits. A
/// longer one is refused before any key is derived.
pub const MAX_LINK_MESSAGE_LEN: usize = 24 * 1024 * 1024;

/// How long a link code stays valid (PROTOCOL.md 23.8), in seconds: the
/// scanning device refuses a code made longer ago than this (or that far
/// in the future, by its clock), and the new device refuses to finish an
/// offer older than this.
pub const LINK_CODE_LIFETIME_SECS: u64 = 600;
