//! Encrypted backups: the format, the passphrase's key and the sealing
//! (PROTOCOL.md 21).
//!
//! A backup holds what a device needs to keep its identity and its trust
//! decisions on a new installation: the identity seed and address, when the
//! backup was made, and for each peer device with a trusted identity key its
//! address and that key. It holds no ratchet state, prekey, outbox or group:
//! a ratchet restored from a copy would use its keys again, and prekeys
//! restored would be consumed twice. The restored device gets fresh prekeys
//! and its sessions heal (PROTOCOL.md 20).
//!
//! ```text
//! file   = header || XChaCha20-Poly1305(key, nonce, pad_row(Backup), AD = header)
//! header = "SZBK" || version (1) || u32be(m) || u32be(t) || u32be(p) || salt (16) || nonce (24)   # 57 bytes
//! key    = HKDF-SHA256(salt = 0^32, ikm = Argon2id-v0x13(passphrase, salt, m KiB, t, p, 32 bytes),
//!                      info = "samizdat/v1/backup")
//! ```
//!
//! This module owns the format, the key derivation, sealing and opening, and
//! the bounds on the Argon2id parameters (checked before any key is derived,
//! so a hostile file cannot make a device allocate more than
//! [`MAX_BACKUP_MEMORY_KIB`]). It does no I/O and knows no store: the device
//! calls ([`Device::export_backup`](crate::device::Device::export_backup),
//! [`Device::restore`](crate::device::Device::restore)) read and write the
//! store.

use std::fmt;

use argon2::{Algorithm, Argon2, Block, Params, Version};
use chacha20poly1305::{
    KeyInit, XChaCha20Poly1305, XNonce,
    aead::{Aead, Payload},
};
use rand_core::CryptoRng;
use samizdat_proto::storage;
use zeroize::Zeroizing;

use crate::{
    DecodeError,
    address::Address,
    kdf,
    keys::{IdentityKey, IdentityKeyPair, fixed},
    limits::{
        MAX_BACKUP_ITERATIONS, MAX_BACKUP_LEN, MAX_BACKUP_MEMORY_KIB, MAX_BACKUP_PARALLELISM, MAX_BACKUP_PEERS,
        MIN_BACKUP_ITERATIONS, MIN_BACKUP_MEMORY_KIB,
    },
    padding,
    user::{SignedDeviceList, UserTrust},
};

/// The first four bytes of every backup file.
pub const BACKUP_MAGIC: [u8; 4] = *b"SZBK";
/// The format version of the file (the byte after the magic), and of the
/// `Backup` plaintext inside it.
pub const BACKUP_VERSION: u8 = 1;
/// The length of the random Argon2id salt in the header.
pub const BACKUP_SALT_LEN: usize = 16;
/// The length of the random XChaCha20-Poly1305 nonce in the header.
pub const BACKUP_NONCE_LEN: usize = 24;
/// The length of the header: magic, version, the three parameters, salt and
/// nonce. The whole header is the AEAD's associated data.
pub const BACKUP_HEADER_LEN: usize = 4 + 1 + 3 * 4 + BACKUP_SALT_LEN + BACKUP_NONCE_LEN;
/// The length of the AEAD tag at the end of the file.
const TAG_LEN: usize = 16;
/// The shortest file: the header, the smallest padded plaintext and the tag.
const MIN_BACKUP_LEN: usize = BACKUP_HEADER_LEN + padding::MIN_ROW_BUCKET + TAG_LEN;

/// The Argon2id parameters of a backup, stated in its header.
///
/// The default is [`BackupParams::RECOMMENDED`]: 64 MiB, 3 passes, one lane,
/// the second recommended option of RFC 9106 (section 4) with one lane
/// instead of four, for phones (this crate computes lanes one after another,
/// so more lanes would not be faster, and memory is what costs an attacker).
/// Export refuses parameters below [`BackupParams::MINIMUM`] (19 MiB, 2
/// passes, OWASP's floor for Argon2id) or above the bounds of
/// [`crate::limits`]; restore refuses only those above the bounds (a file's
/// parameters can be small: only the passphrase's holder can make a file that
/// opens).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct BackupParams {
    /// Memory, in KiB (Argon2's `m`).
    pub memory_kib: u32,
    /// Passes over the memory (Argon2's `t`).
    pub iterations: u32,
    /// Lanes (Argon2's `p`).
    pub parallelism: u32,
}

impl BackupParams {
    /// m = 65,536 KiB (64 MiB), t = 3, p = 1: the default.
    pub const RECOMMENDED: Self = Self { memory_kib: 64 * 1024, iterations: 3, parallelism: 1 };

    /// m = 19,456 KiB (19 MiB), t = 2, p = 1: the weakest parameters an
    /// export accepts ([`MIN_BACKUP_MEMORY_KIB`], [`MIN_BACKUP_ITERATIONS`]).
    pub const MINIMUM: Self =
        Self { memory_kib: MIN_BACKUP_MEMORY_KIB, iterations: MIN_BACKUP_ITERATIONS, parallelism: 1 };

    /// Whether a file with these parameters may be opened: within the
    /// bounds of [`crate::limits`] and valid for Argon2 (`t >= 1`, `p >= 1`,
    /// `m >= 8p`). Checked before anything is derived.
    ///
    /// # Errors
    /// [`BackupError::ParamsOutOfBounds`].
    pub fn check_bounds(&self) -> Result<(), BackupError> {
        let Self { memory_kib: m, iterations: t, parallelism: p } = *self;
        let within = (1..=MAX_BACKUP_PARALLELISM).contains(&p)
            && (1..=MAX_BACKUP_ITERATIONS).contains(&t)
            && m <= MAX_BACKUP_MEMORY_KIB
            && u64::from(m) >= u64::from(p).saturating_mul(8);
        if within { Ok(()) } else { Err(BackupError::ParamsOutOfBounds { params: *self }) }
    }

    /// Whether an export may use these parameters: [`Self::check_bounds`],
    /// and at least [`Self::MINIMUM`] memory and passes.
    ///
    /// # Errors
    /// [`BackupError::ParamsOutOfBounds`].
    pub fn check_export(&self) -> Result<(), BackupError> {
        self.check_bounds()?;
        if self.memory_kib < MIN_BACKUP_MEMORY_KIB || self.iterations < MIN_BACKUP_ITERATIONS {
            return Err(BackupError::ParamsOutOfBounds { params: *self });
        }
        Ok(())
    }

    /// The parameters a backup file states, read from its header without
    /// the passphrase (an app can tell the user how long a restore will
    /// take, or refuse early).
    ///
    /// # Errors
    /// [`BackupError::Malformed`] for a file too short or without the magic;
    /// [`BackupError::UnsupportedVersion`].
    pub fn of_file(file: &[u8]) -> Result<Self, BackupError> {
        Header::parse(file).map(|header| header.params)
    }
}

impl Default for BackupParams {
    fn default() -> Self {
        Self::RECOMMENDED
    }
}

/// Why a backup could not be made or opened. Nothing was written.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum BackupError {
    /// The backup does not authenticate under this passphrase: the
    /// passphrase is wrong, **or the file was altered or damaged** (any bit
    /// of it: the header is authenticated too). The two cannot be told apart,
    /// on purpose: the AEAD's failure says nothing more, and a tool that
    /// guesses passphrases learns nothing from the error but that one guess
    /// failed.
    #[error("the backup does not open with this passphrase (a wrong passphrase, or an altered file)")]
    WrongPassphrase,
    /// Not a backup of this format: too short, too long, without the magic
    /// `SZBK`, with a length no padded plaintext has, or (after it opened,
    /// so only from a passphrase holder's other implementation) a plaintext
    /// that does not parse or breaks a rule of PROTOCOL.md 21.4.
    #[error("not a well-formed backup: {0}")]
    Malformed(DecodeError),
    /// A backup of a format version this release does not read (the
    /// header's version byte, or the plaintext's version).
    #[error("unsupported backup version {0}")]
    UnsupportedVersion(u32),
    /// The Argon2id parameters are outside the bounds: above the maximum
    /// memory, passes or lanes of [`crate::limits`] (a file's header: refused
    /// before any key is derived, so a hostile file costs no memory), not
    /// valid for Argon2, or, for an export, below [`BackupParams::MINIMUM`].
    #[error(
        "Argon2id parameters m = {} KiB, t = {}, p = {} are outside the bounds",
        .params.memory_kib,
        .params.iterations,
        .params.parallelism
    )]
    ParamsOutOfBounds {
        /// The parameters asked for.
        params: BackupParams,
    },
    /// The device trusts more peers than a backup holds
    /// ([`MAX_BACKUP_PEERS`]).
    #[error("{count} trusted peers exceed the limit of {max} per backup")]
    TooManyPeers {
        /// How many the device trusts.
        count: usize,
        /// The limit.
        max: usize,
    },
    /// This device could not allocate the memory the parameters ask for
    /// (at most [`MAX_BACKUP_MEMORY_KIB`] KiB). Nothing was derived.
    #[error("could not allocate {memory_kib} KiB for Argon2id")]
    OutOfMemory {
        /// The memory asked for, in KiB.
        memory_kib: u32,
    },
}

/// What a backup holds (PROTOCOL.md 21.3): the identity, the address, the
/// time it was made and the trust decisions. The seed is wiped on drop and
/// never printed.
pub(crate) struct BackupContents {
    pub(crate) seed: Zeroizing<[u8; 32]>,
    pub(crate) address: Address,
    pub(crate) created_at: u64,
    /// In increasing address order, each address once.
    pub(crate) peers: Vec<(Address, IdentityKey)>,
    /// The device's own signed device list, verified: of its user id, naming
    /// it with its identity key (PROTOCOL.md 23.5).
    pub(crate) own_device_list: Option<SignedDeviceList>,
    /// The pinned users: user id and signed list (verified, of that user),
    /// in increasing user id order, each once, never the device's own.
    pub(crate) users: Vec<(String, SignedDeviceList)>,
}

impl BackupContents {
    /// The identity the seed gives.
    pub(crate) fn identity(&self) -> IdentityKeyPair {
        IdentityKeyPair::from_seed(&self.seed)
    }

    /// The canonical encoding of the `Backup` message (wiped on drop).
    fn to_bytes(&self) -> Zeroizing<Vec<u8>> {
        let message = Zeroizing::new(storage::Backup {
            version: u32::from(BACKUP_VERSION),
            seed: self.seed.to_vec(),
            user_id: self.address.user_id().to_owned(),
            device_id: self.address.device_id(),
            created_at: self.created_at,
            peers: self
                .peers
                .iter()
                .map(|(address, key)| storage::BackupPeer {
                    user_id: address.user_id().to_owned(),
                    device_id: address.device_id(),
                    identity_key: key.as_bytes().to_vec(),
                })
                .collect(),
            own_device_list: self.own_device_list.as_ref().map(SignedDeviceList::to_bytes).unwrap_or_default(),
            users: self
                .users
                .iter()
                .map(|(user_id, list)| storage::BackupUser { user_id: user_id.clone(), device_list: list.to_bytes() })
                .collect(),
        });
        let mut out = Zeroizing::new(Vec::with_capacity(prost::Message::encoded_len(&*message)));
        // Encoding into a Vec cannot run out of space.
        let _ = prost::Message::encode(&*message, &mut *out);
        out
    }

    /// The loader of PROTOCOL.md 21.4, on the opened, unpadded plaintext.
    fn from_bytes(bytes: &[u8]) -> Result<Self, BackupError> {
        let malformed = BackupError::Malformed;
        // Counted before anything is decoded: a plaintext of 32 MiB of empty
        // peer entries would otherwise allocate about a gigabyte of them.
        if entries(bytes, PEERS_FIELD) > MAX_BACKUP_PEERS {
            return Err(malformed(DecodeError::InvalidValue("backup.peers")));
        }
        if entries(bytes, USERS_FIELD) > MAX_BACKUP_PEERS {
            return Err(malformed(DecodeError::InvalidValue("backup.users")));
        }
        let message = crate::codec::decode_secret::<storage::Backup>(bytes).map_err(malformed)?;
        if message.version != u32::from(BACKUP_VERSION) {
            return Err(BackupError::UnsupportedVersion(message.version));
        }
        let seed = Zeroizing::new(fixed::<32>(&message.seed, "backup.seed").map_err(malformed)?);
        let own = Address::new(message.user_id.clone(), message.device_id)
            .map_err(|_| malformed(DecodeError::InvalidValue("backup.user_id")))?;
        if message.peers.len() > MAX_BACKUP_PEERS {
            return Err(malformed(DecodeError::InvalidValue("backup.peers")));
        }
        let mut peers: Vec<(Address, IdentityKey)> = Vec::with_capacity(message.peers.len());
        for peer in &message.peers {
            let address = Address::new(peer.user_id.clone(), peer.device_id)
                .map_err(|_| malformed(DecodeError::InvalidValue("backup.peers.user_id")))?;
            // Increasing, so each address once; never the device's own.
            if peers.last().is_some_and(|(previous, _)| *previous >= address) || address == own {
                return Err(malformed(DecodeError::InvalidValue("backup.peers")));
            }
            let key = fixed::<32>(&peer.identity_key, "backup.peers.identity_key").map_err(malformed)?;
            let key = IdentityKey::from_bytes(&key)
                .map_err(|_| malformed(DecodeError::InvalidValue("backup.peers.identity_key")))?;
            peers.push((address, key));
        }
        let identity = IdentityKeyPair::from_seed(&seed).public_key();
        let own_device_list = match message.own_device_list.as_slice() {
            [] => None,
            bytes => {
                let bad = || malformed(DecodeError::InvalidValue("backup.own_device_list"));
                let trust = UserTrust::from_bytes(own.user_id(), bytes).map_err(|_| bad())?;
                trust.check_device(own.device_id(), &identity).map_err(|_| bad())?;
                Some(trust.signed_list().clone())
            }
        };
        let mut users: Vec<(String, SignedDeviceList)> = Vec::with_capacity(message.users.len());
        for user in &message.users {
            let bad = || malformed(DecodeError::InvalidValue("backup.users"));
            // Increasing, so each user once; never the device's own.
            if users.last().is_some_and(|(previous, _)| *previous >= user.user_id) || user.user_id == own.user_id() {
                return Err(bad());
            }
            let trust = UserTrust::from_bytes(&user.user_id, &user.device_list).map_err(|_| bad())?;
            users.push((user.user_id.clone(), trust.signed_list().clone()));
        }
        Ok(Self { seed, address: own, created_at: message.created_at, peers, own_device_list, users })
    }
}

impl fmt::Debug for BackupContents {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BackupContents")
            .field("address", &self.address)
            .field("created_at", &self.created_at)
            .field("peers", &self.peers.len())
            .field("users", &self.users.len())
            .finish_non_exhaustive()
    }
}

/// A parsed header (PROTOCOL.md 21.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Header {
    params: BackupParams,
    salt: [u8; BACKUP_SALT_LEN],
    nonce: [u8; BACKUP_NONCE_LEN],
}

impl Header {
    fn to_bytes(self) -> Vec<u8> {
        [
            &BACKUP_MAGIC[..],
            &[BACKUP_VERSION],
            &self.params.memory_kib.to_be_bytes(),
            &self.params.iterations.to_be_bytes(),
            &self.params.parallelism.to_be_bytes(),
            &self.salt,
            &self.nonce,
        ]
        .concat()
    }

    /// Checks 2 to 4 of PROTOCOL.md 21.4 on the first bytes of `file`.
    fn parse(file: &[u8]) -> Result<Self, BackupError> {
        let malformed = |what| BackupError::Malformed(DecodeError::InvalidValue(what));
        let short = || malformed("backup.length");
        let header = file.first_chunk::<BACKUP_HEADER_LEN>().ok_or_else(short)?;
        let (magic, rest) = header.split_first_chunk::<4>().ok_or_else(short)?;
        if *magic != BACKUP_MAGIC {
            return Err(malformed("backup.magic"));
        }
        let (&version, rest) = rest.split_first().ok_or_else(short)?;
        if version != BACKUP_VERSION {
            return Err(BackupError::UnsupportedVersion(u32::from(version)));
        }
        let (memory, rest) = rest.split_first_chunk::<4>().ok_or_else(short)?;
        let (iterations, rest) = rest.split_first_chunk::<4>().ok_or_else(short)?;
        let (parallelism, rest) = rest.split_first_chunk::<4>().ok_or_else(short)?;
        let (salt, nonce) = rest.split_first_chunk::<BACKUP_SALT_LEN>().ok_or_else(short)?;
        let params = BackupParams {
            memory_kib: u32::from_be_bytes(*memory),
            iterations: u32::from_be_bytes(*iterations),
            parallelism: u32::from_be_bytes(*parallelism),
        };
        Ok(Self { params, salt: *salt, nonce: nonce.try_into().map_err(|_| short())? })
    }
}

/// The key of a backup: Argon2id of the passphrase, then HKDF with
/// [`kdf::BACKUP_LABEL`] (PROTOCOL.md 21.2). The parameters must have
/// passed [`BackupParams::check_bounds`]. Argon2's memory is this function's
/// own and wiped before it returns.
fn derive_key(
    passphrase: &[u8],
    params: BackupParams,
    salt: &[u8; BACKUP_SALT_LEN],
) -> Result<Zeroizing<[u8; 32]>, BackupError> {
    derive_key_steps(passphrase, params, salt).map(|(_, key)| key)
}

/// The Argon2id output and the key HKDF makes of it.
pub(crate) type KeySteps = (Zeroizing<[u8; 32]>, Zeroizing<[u8; 32]>);

/// [`derive_key`], with the Argon2id output before HKDF (for test vectors).
pub(crate) fn derive_key_steps(
    passphrase: &[u8],
    params: BackupParams,
    salt: &[u8; BACKUP_SALT_LEN],
) -> Result<KeySteps, BackupError> {
    params.check_bounds()?;
    let out_of_bounds = BackupError::ParamsOutOfBounds { params };
    let argon_params = Params::new(params.memory_kib, params.iterations, params.parallelism, Some(32))
        .map_err(|_| out_of_bounds.clone())?;
    let blocks = argon_params.block_count();
    let mut memory: Zeroizing<Vec<Block>> = Zeroizing::new(Vec::new());
    memory.try_reserve_exact(blocks).map_err(|_| BackupError::OutOfMemory { memory_kib: params.memory_kib })?;
    memory.resize(blocks, Block::new());
    let mut stretched = Zeroizing::new([0u8; 32]);
    Argon2::new(Algorithm::Argon2id, Version::V0x13, argon_params)
        .hash_password_into_with_memory(passphrase, salt, stretched.as_mut_slice(), memory.as_mut_slice())
        .map_err(|_| out_of_bounds)?;
    let key = kdf::hkdf_expand::<32>(&[0; 32], stretched.as_slice(), kdf::BACKUP_LABEL);
    Ok((stretched, key))
}

/// Seals `contents` into a backup file under `passphrase`, with a fresh salt
/// and nonce from `rng`.
///
/// # Errors
/// [`BackupError::ParamsOutOfBounds`] for parameters an export may not use
/// ([`BackupParams::check_export`]); [`BackupError::TooManyPeers`];
/// [`BackupError::OutOfMemory`].
pub(crate) fn seal<R: CryptoRng + ?Sized>(
    rng: &mut R,
    passphrase: &[u8],
    params: BackupParams,
    contents: &BackupContents,
) -> Result<Vec<u8>, BackupError> {
    params.check_export()?;
    if contents.peers.len() > MAX_BACKUP_PEERS {
        return Err(BackupError::TooManyPeers { count: contents.peers.len(), max: MAX_BACKUP_PEERS });
    }
    let mut salt = [0u8; BACKUP_SALT_LEN];
    rng.fill_bytes(&mut salt);
    let mut nonce = [0u8; BACKUP_NONCE_LEN];
    rng.fill_bytes(&mut nonce);
    seal_plaintext(passphrase, params, salt, nonce, &contents.to_bytes())
}

/// Seals the encoding of a `Backup` message with a chosen salt and nonce
/// and parameters within the bounds (the export minimum is not checked:
/// for test vectors, through [`crate::hazmat`], and for [`seal`]).
pub(crate) fn seal_plaintext(
    passphrase: &[u8],
    params: BackupParams,
    salt: [u8; BACKUP_SALT_LEN],
    nonce: [u8; BACKUP_NONCE_LEN],
    plaintext: &[u8],
) -> Result<Vec<u8>, BackupError> {
    params.check_bounds()?;
    let header = Header { params, salt, nonce }.to_bytes();
    let key = derive_key(passphrase, params, &salt)?;
    let padded = padding::pad_row(plaintext, TAG_LEN);
    let cipher = XChaCha20Poly1305::new((&*key).into());
    let sealed = cipher
        .encrypt(&XNonce::from(nonce), Payload { msg: padded.as_slice(), aad: &header })
        .map_err(|_| BackupError::Malformed(DecodeError::TooLarge { len: padded.len(), max: MAX_BACKUP_LEN }))?;
    let file = [&header[..], &sealed].concat();
    if file.len() > MAX_BACKUP_LEN {
        return Err(BackupError::Malformed(DecodeError::TooLarge { len: file.len(), max: MAX_BACKUP_LEN }));
    }
    Ok(file)
}

/// Opens a backup file: the checks of PROTOCOL.md 21.4 up to the AEAD, and
/// the plaintext, unpadded (the encoding of a `Backup`, not yet parsed).
///
/// # Errors
/// [`BackupError::Malformed`], [`BackupError::UnsupportedVersion`],
/// [`BackupError::ParamsOutOfBounds`] (all before any key is derived);
/// [`BackupError::OutOfMemory`]; [`BackupError::WrongPassphrase`].
pub(crate) fn open_plaintext(passphrase: &[u8], file: &[u8]) -> Result<Zeroizing<Vec<u8>>, BackupError> {
    if file.len() > MAX_BACKUP_LEN {
        return Err(BackupError::Malformed(DecodeError::TooLarge { len: file.len(), max: MAX_BACKUP_LEN }));
    }
    let header = Header::parse(file)?;
    header.params.check_bounds()?;
    // A file of a length no sealed plaintext has (truncated, or grown) is
    // refused before the costly derivation.
    let body = file.get(BACKUP_HEADER_LEN..).unwrap_or_default();
    let padded_len = body.len().saturating_sub(TAG_LEN);
    if file.len() < MIN_BACKUP_LEN || padding::row_padded_len(padded_len.saturating_sub(1)) != padded_len {
        return Err(BackupError::Malformed(DecodeError::InvalidValue("backup.length")));
    }
    let key = derive_key(passphrase, header.params, &header.salt)?;
    let cipher = XChaCha20Poly1305::new((&*key).into());
    let aad = file.get(..BACKUP_HEADER_LEN).unwrap_or_default();
    let mut padded = cipher
        .decrypt(&XNonce::from(header.nonce), Payload { msg: body, aad })
        .map(Zeroizing::new)
        .map_err(|_| BackupError::WrongPassphrase)?;
    let len = padding::unpadded_row_len(&padded)
        .ok_or(BackupError::Malformed(DecodeError::InvalidValue("backup.padding")))?;
    padded.truncate(len);
    Ok(padded)
}

/// Opens and loads a backup file (PROTOCOL.md 21.4).
///
/// # Errors
/// As [`open_plaintext`], then [`BackupError::Malformed`] or
/// [`BackupError::UnsupportedVersion`] for a plaintext the loader refuses.
pub(crate) fn open(passphrase: &[u8], file: &[u8]) -> Result<BackupContents, BackupError> {
    BackupContents::from_bytes(&open_plaintext(passphrase, file)?)
}

/// The field number of `peers` in `Backup`.
const PEERS_FIELD: u32 = 6;
/// The field number of `users` in `Backup`.
const USERS_FIELD: u32 = 8;

/// The number of entries of the repeated field `field` (`peers` or `users`)
/// at the top level of an encoded `Backup`, read from the keys and lengths
/// alone: nothing is allocated.
/// Counting stops where the bytes stop parsing (the decoder then refuses
/// them with its own error).
fn entries(mut bytes: &[u8], field: u32) -> usize {
    use prost::encoding::{DecodeContext, decode_key, skip_field};
    let mut count = 0usize;
    while !bytes.is_empty() {
        let Ok((tag, wire_type)) = decode_key(&mut bytes) else { break };
        if tag == field {
            count = count.saturating_add(1);
        }
        if skip_field(wire_type, tag, &mut bytes, DecodeContext::default()).is_err() {
            break;
        }
    }
    count
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The peers of a plaintext are counted from its keys and lengths,
    /// before it is decoded: one over the limit is refused however small
    /// each entry (empty ones here, 2 bytes each), and bytes that stop
    /// parsing stop the count (the decoder refuses them).
    #[test]
    fn peers_are_counted_before_the_plaintext_is_decoded() {
        let peers = |n: usize| -> Vec<u8> { [0x32, 0x00].repeat(n) };
        let with_version = |n: usize| [&[0x08, 0x01][..], &peers(n)].concat();
        assert_eq!(entries(&with_version(3), PEERS_FIELD), 3);
        assert_eq!(
            entries(&[with_version(2), vec![0x32, 0x05, 0x01]].concat(), PEERS_FIELD),
            3,
            "a truncated last entry"
        );
        assert_eq!(entries(&[with_version(2), vec![0xff]].concat(), PEERS_FIELD), 2, "garbage stops the count");
        let over = with_version(MAX_BACKUP_PEERS + 1);
        assert_eq!(entries(&over, PEERS_FIELD), MAX_BACKUP_PEERS + 1);
        assert!(matches!(
            BackupContents::from_bytes(&over),
            Err(BackupError::Malformed(DecodeError::InvalidValue("backup.peers")))
        ));
        // The pinned users likewise (field 8, empty entries).
        let users = [&[0x08, 0x01][..], &[0x42, 0x00].repeat(MAX_BACKUP_PEERS + 1)].concat();
        assert_eq!(entries(&users, USERS_FIELD), MAX_BACKUP_PEERS + 1);
        assert!(matches!(
            BackupContents::from_bytes(&users),
            Err(BackupError::Malformed(DecodeError::InvalidValue("backup.users")))
        ));
    }

    /// Small parameters, which a file may state (not an export): fast tests.
    const SMALL: BackupParams = BackupParams { memory_kib: 64, iterations: 1, parallelism: 1 };

    fn contents() -> BackupContents {
        let peer = IdentityKeyPair::from_seed(&[5; 32]).public_key();
        BackupContents {
            seed: Zeroizing::new([7; 32]),
            address: Address::new("alice", 1).unwrap(),
            created_at: 1_700_000_000,
            peers: vec![(Address::new("bob", 1).unwrap(), peer), (Address::new("bob", 2).unwrap(), peer)],
            own_device_list: None,
            users: Vec::new(),
        }
    }

    fn small_file(passphrase: &[u8]) -> Vec<u8> {
        seal_plaintext(passphrase, SMALL, [1; 16], [2; 24], &contents().to_bytes()).unwrap()
    }

    #[test]
    fn round_trip_and_layout() {
        let file = small_file(b"correct horse");
        assert_eq!(&file[..4], b"SZBK");
        assert_eq!(file[4], 1);
        assert_eq!(&file[5..9], &64u32.to_be_bytes());
        assert_eq!(&file[9..13], &1u32.to_be_bytes());
        assert_eq!(&file[13..17], &1u32.to_be_bytes());
        assert_eq!(&file[17..33], &[1; 16]);
        assert_eq!(&file[33..57], &[2; 24]);
        // A row's smallest bucket, and the tag.
        assert_eq!(file.len(), BACKUP_HEADER_LEN + 512 + 16);
        let opened = open(b"correct horse", &file).unwrap();
        assert_eq!(*opened.seed, [7; 32]);
        assert_eq!(opened.address, contents().address);
        assert_eq!(opened.created_at, 1_700_000_000);
        assert_eq!(opened.peers, contents().peers);
        assert_eq!(BackupParams::of_file(&file).unwrap(), SMALL);
    }

    #[test]
    fn a_wrong_passphrase_is_its_own_error() {
        let file = small_file(b"correct horse");
        assert_eq!(open(b"correct horsf", &file).unwrap_err(), BackupError::WrongPassphrase);
        assert_eq!(open(b"", &file).unwrap_err(), BackupError::WrongPassphrase);
    }

    /// Every bit of the file is covered: a flip anywhere is refused (and
    /// never panics), whether it lands in the header (a check, or another
    /// key) or in the ciphertext (the tag).
    #[test]
    fn every_flipped_bit_is_refused() {
        let file = small_file(b"pass");
        for bit in 0..file.len() * 8 {
            let mut altered = file.clone();
            altered[bit / 8] ^= 1 << (bit % 8);
            let error = open(b"pass", &altered).unwrap_err();
            let byte = bit / 8;
            match byte {
                0..4 => assert!(matches!(error, BackupError::Malformed(_)), "bit {bit}: {error:?}"),
                4 => assert!(matches!(error, BackupError::UnsupportedVersion(_)), "bit {bit}: {error:?}"),
                5..17 => assert!(
                    matches!(error, BackupError::WrongPassphrase | BackupError::ParamsOutOfBounds { .. }),
                    "bit {bit}: {error:?}"
                ),
                _ => assert_eq!(error, BackupError::WrongPassphrase, "bit {bit}"),
            }
        }
    }

    #[test]
    fn truncated_and_extended_files_are_refused_before_the_key() {
        let file = small_file(b"pass");
        for len in [0, 3, 4, 5, BACKUP_HEADER_LEN - 1, BACKUP_HEADER_LEN, file.len() - 1, file.len() - 16] {
            assert!(matches!(open(b"pass", &file[..len]).unwrap_err(), BackupError::Malformed(_)), "{len}");
        }
        let mut longer = file.clone();
        longer.push(0);
        assert!(matches!(open(b"pass", &longer).unwrap_err(), BackupError::Malformed(_)));
        // Grown to the next bucket: the length passes, the tag does not.
        let mut grown = file.clone();
        grown.extend_from_slice(&[0; 512]);
        assert_eq!(open(b"pass", &grown).unwrap_err(), BackupError::WrongPassphrase);
    }

    #[test]
    fn parameter_bounds() {
        assert!(BackupParams::RECOMMENDED.check_export().is_ok());
        assert!(BackupParams::MINIMUM.check_export().is_ok());
        assert_eq!(BackupParams::default(), BackupParams { memory_kib: 65_536, iterations: 3, parallelism: 1 });
        let over = [
            BackupParams { memory_kib: MAX_BACKUP_MEMORY_KIB + 1, ..BackupParams::RECOMMENDED },
            BackupParams { iterations: MAX_BACKUP_ITERATIONS + 1, ..BackupParams::RECOMMENDED },
            BackupParams { parallelism: MAX_BACKUP_PARALLELISM + 1, ..BackupParams::RECOMMENDED },
            BackupParams { parallelism: 0, ..BackupParams::RECOMMENDED },
            BackupParams { iterations: 0, ..BackupParams::RECOMMENDED },
            BackupParams { memory_kib: 7, iterations: 1, parallelism: 1 },
            BackupParams { memory_kib: u32::MAX, iterations: u32::MAX, parallelism: u32::MAX },
        ];
        for params in over {
            assert_eq!(params.check_bounds(), Err(BackupError::ParamsOutOfBounds { params }));
            assert!(params.check_export().is_err());
        }
        let limits = BackupParams {
            memory_kib: MAX_BACKUP_MEMORY_KIB,
            iterations: MAX_BACKUP_ITERATIONS,
            parallelism: MAX_BACKUP_PARALLELISM,
        };
        assert!(limits.check_export().is_ok());
        for weak in [
            BackupParams { memory_kib: MIN_BACKUP_MEMORY_KIB - 1, ..BackupParams::MINIMUM },
            BackupParams { iterations: 1, ..BackupParams::MINIMUM },
            SMALL,
        ] {
            assert!(weak.check_bounds().is_ok());
            assert_eq!(weak.check_export(), Err(BackupError::ParamsOutOfBounds { params: weak }));
        }
    }

    /// A header asking for 4 TiB: refused by the bounds, before Argon2 would
    /// try to allocate it.
    #[test]
    fn a_hostile_header_is_refused_before_any_derivation() {
        let mut file = small_file(b"pass");
        file[5..9].copy_from_slice(&u32::MAX.to_be_bytes());
        let started = std::time::Instant::now();
        assert!(matches!(open(b"pass", &file).unwrap_err(), BackupError::ParamsOutOfBounds { .. }));
        assert!(started.elapsed() < std::time::Duration::from_secs(1));
    }

    #[test]
    fn the_loader_refuses_what_no_export_writes() {
        let seal = |message: &storage::Backup| {
            let bytes = prost::Message::encode_to_vec(message);
            open(b"p", &seal_plaintext(b"p", SMALL, [0; 16], [0; 24], &bytes).unwrap())
        };
        let good = || storage::Backup {
            version: 1,
            seed: vec![1; 32],
            user_id: "alice".into(),
            device_id: 1,
            created_at: 0,
            peers: vec![
                storage::BackupPeer {
                    user_id: "a".into(),
                    device_id: 1,
                    identity_key: contents().peers[0].1.as_bytes().to_vec(),
                },
                storage::BackupPeer {
                    user_id: "b".into(),
                    device_id: 1,
                    identity_key: contents().peers[0].1.as_bytes().to_vec(),
                },
            ],
            own_device_list: Vec::new(),
            users: vec![
                storage::BackupUser { user_id: "a".into(), device_list: user_list("a", 1).to_bytes() },
                storage::BackupUser { user_id: "b".into(), device_list: user_list("b", 1).to_bytes() },
            ],
        };
        assert!(seal(&good()).is_ok());
        let with_own = |list: SignedDeviceList| storage::Backup { own_device_list: list.to_bytes(), ..good() };
        let own_key = IdentityKeyPair::from_seed(&[1; 32]).public_key();
        let opened = seal(&with_own(own_list(own_key))).unwrap();
        assert_eq!(opened.own_device_list, Some(own_list(own_key)));
        assert_eq!(opened.users.iter().map(|(u, _)| u.as_str()).collect::<Vec<_>>(), ["a", "b"]);
        let users = |m: storage::Backup| seal(&m).unwrap_err();
        let bad_users = BackupError::Malformed(DecodeError::InvalidValue("backup.users"));
        let bad_own = BackupError::Malformed(DecodeError::InvalidValue("backup.own_device_list"));
        // Our own list must name this device with the seed's identity.
        assert_eq!(users(with_own(own_list(contents().peers[0].1))), bad_own);
        assert_eq!(users(with_own(user_list("b", 1))), bad_own);
        let mut m = good();
        m.users.swap(0, 1);
        assert_eq!(users(m), bad_users);
        let mut m = good();
        m.users[1] = m.users[0].clone();
        assert_eq!(users(m), bad_users);
        let mut m = good();
        m.users[1].user_id = "alice".into();
        m.users[1].device_list = user_list("alice", 1).to_bytes();
        assert_eq!(users(m), bad_users, "our own user among the pins");
        let mut m = good();
        m.users[1].device_list = user_list("c", 1).to_bytes();
        assert_eq!(users(m), bad_users, "another user's list");
        let mut m = good();
        m.users[1].device_list.truncate(20);
        assert_eq!(users(m), bad_users);
        let mut m = good();
        m.version = 2;
        assert_eq!(seal(&m).unwrap_err(), BackupError::UnsupportedVersion(2));
        let mut m = good();
        m.seed.pop();
        assert!(matches!(seal(&m).unwrap_err(), BackupError::Malformed(DecodeError::InvalidLength { .. })));
        let mut m = good();
        m.user_id.clear();
        assert!(matches!(seal(&m).unwrap_err(), BackupError::Malformed(_)));
        let mut m = good();
        m.peers.swap(0, 1);
        assert_eq!(seal(&m).unwrap_err(), BackupError::Malformed(DecodeError::InvalidValue("backup.peers")));
        let mut m = good();
        m.peers[1] = m.peers[0].clone();
        assert_eq!(seal(&m).unwrap_err(), BackupError::Malformed(DecodeError::InvalidValue("backup.peers")));
        let mut m = good();
        m.peers[0].identity_key = vec![0; 32];
        assert!(matches!(seal(&m).unwrap_err(), BackupError::Malformed(_)));
        // Not canonical: a trailing byte.
        let mut bytes = prost::Message::encode_to_vec(&good());
        bytes.push(0);
        let file = seal_plaintext(b"p", SMALL, [0; 16], [0; 24], &bytes).unwrap();
        assert_eq!(open(b"p", &file).unwrap_err(), BackupError::Malformed(DecodeError::Protobuf));
    }

    /// A list of `user` naming one device, signed.
    fn user_list(user: &str, version: u64) -> SignedDeviceList {
        let uik = crate::user::UserIdentityKeyPair::from_seed(&[9; 32]);
        let device = IdentityKeyPair::from_seed(&[5; 32]).public_key();
        crate::user::DeviceList::new(user, version, &uik.public_key(), [(1, device)]).unwrap().sign(&uik).unwrap()
    }

    /// Alice's list naming device 1 with `key`.
    fn own_list(key: IdentityKey) -> SignedDeviceList {
        let uik = crate::user::UserIdentityKeyPair::from_seed(&[8; 32]);
        crate::user::DeviceList::new("alice", 1, &uik.public_key(), [(1, key)]).unwrap().sign(&uik).unwrap()
    }

    #[test]
    fn contents_are_never_printed() {
        let printed = format!("{:?}", contents());
        assert!(printed.contains("alice"), "{printed}");
        assert!(!printed.contains("seed"), "{printed}");
        assert!(!printed.contains("7, 7"), "{printed}");
    }
}
