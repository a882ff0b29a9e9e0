//! Users in the Device API (PROTOCOL.md 23.5): this device's own signed
//! device list, which its bundles carry, and the user trust pinned for each
//! peer user, which refuses devices that no verified list names (no ghost
//! device, whatever the server serves).
//!
//! What this layer owns: the rows of table `users` (loading them with their
//! checks, writing them conditionally on what was read), the calls that give
//! the device a list ([`Device::set_device_list`],
//! [`Device::update_device_list`], [`Device::trust_new_user_identity`]),
//! and the check every pairwise call makes ([`Device::check_listed`]). The
//! rules for a list are [`UserTrust`]'s (`core/src/user`); the session calls
//! (`sessions.rs`, `prekeys.rs`, `healing.rs`) call the check before they
//! compute.
//!
//! A user whose list this device has never seen is not pinned: its devices
//! are trusted per device, on first use, as before (PROTOCOL.md 9.2). Our
//! own user is pinned by our own list, once the app sets it.

use std::collections::HashMap;

use samizdat_proto::storage;
use zeroize::Zeroizing;

use super::{Device, DeviceError, ROW_VERSION, encode, lock, retry_on_conflict};
use crate::{
    address::Address,
    keys::IdentityKey,
    prekeys::PreKeyBundle,
    store::{Backend, Expected, StoreError, Table, Write},
    user::{DeviceListError, ListChange, SignedDeviceList, UserIdentityKey, UserTrust},
};

/// The row key of this device's own list in [`Table::Users`]; a peer user's
/// row is keyed by the 32-byte keyed hash of its user id.
pub(super) const OWN_LIST_ROW: &[u8] = b"self";

/// The most verified rows a handle keeps in memory ([`UserCache`]).
const MAX_CACHED_USERS: usize = 64;

/// Verified user rows, by row key: the sealed bytes read and the trust they
/// hold. Every write seals with a fresh nonce, so the same sealed bytes are
/// the same row: a call that reads them again skips opening and verifying
/// the list (an Ed25519 verification and up to 33 point decodings), which
/// every message of a pinned user would otherwise cost.
#[derive(Default)]
pub(super) struct UserCache(HashMap<Vec<u8>, (Vec<u8>, UserTrust)>);

/// A user row as a call read it: its sealed bytes (`None`: absent) and the
/// trust it holds (`None`: the user is not pinned).
pub(super) struct LoadedUser {
    key: Vec<u8>,
    sealed: Option<Vec<u8>>,
    pub(super) trust: Option<UserTrust>,
}

/// What our own row holds besides the list, from a replacement of the user
/// identity (PROTOCOL.md 23.9): the key it replaced, and the devices that
/// have not acknowledged its handover yet.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(super) struct OwnExtras {
    /// The user identity key the list's replaced.
    pub(super) replaced: Option<UserIdentityKey>,
    /// Device ids of our own list awaiting the handover, increasing.
    pub(super) awaiting: Vec<u32>,
}

/// Every user row, as a backup holds them: our own list (if set), then each
/// pinned peer user with its signed list ([`Device::user_rows`]).
pub(super) type UserRows = (Option<SignedDeviceList>, Vec<(String, SignedDeviceList)>);

/// Which rule a list given by the app goes through (PROTOCOL.md 23.3).
#[derive(Clone, Copy)]
enum Rule {
    /// `Update`: a newer list of the pinned identity.
    Update,
    /// `TrustNewIdentity`: the app's decision to trust a new user identity.
    NewIdentity,
    /// Our own list, from [`Device::set_device_list`]: the only call that
    /// pins our own user, or gives it a new user identity.
    Own,
}

impl<B: Backend> Device<B> {
    /// The row key of `user_id`'s row: [`OWN_LIST_ROW`] for our own user.
    fn user_row_key(&self, user_id: &str) -> Vec<u8> {
        if user_id == self.address.user_id() { OWN_LIST_ROW.to_vec() } else { self.sealer.user_key(user_id) }
    }

    /// The key of the in-process lock of `user_id`'s row.
    pub(super) fn user_lock_key(&self, user_id: &str) -> Vec<u8> {
        [b"user/".as_slice(), &self.user_row_key(user_id)].concat()
    }

    /// Reads `user_id`'s row and checks it (PROTOCOL.md 23.5): it opens, is
    /// a `UserRow` of version 1 for this user id, and its list verifies
    /// again (L1 to L12) and is this user's; our own list also names this
    /// device with its identity key. Anything else is
    /// [`StoreError::Corrupt`] of table `users`.
    pub(super) fn load_user(&self, user_id: &str) -> Result<LoadedUser, StoreError> {
        let key = self.user_row_key(user_id);
        let Some(sealed) = self.backend.get(Table::Users, &key)? else {
            return Ok(LoadedUser { key, sealed: None, trust: None });
        };
        if let Some((cached, trust)) = lock(&self.users).0.get(&key)
            && *cached == sealed
        {
            let trust = Some(trust.clone());
            return Ok(LoadedUser { key, sealed: Some(sealed), trust });
        }
        let trust = self.open_user_row(&key, user_id, &sealed)?;
        let mut cache = lock(&self.users);
        if cache.0.len() >= MAX_CACHED_USERS {
            cache.0.clear();
        }
        cache.0.insert(key.clone(), (sealed.clone(), trust.clone()));
        Ok(LoadedUser { key, sealed: Some(sealed), trust: Some(trust) })
    }

    /// Opens and checks a sealed user row (see [`Self::load_user`]).
    pub(super) fn open_user_row(&self, key: &[u8], user_id: &str, sealed: &[u8]) -> Result<UserTrust, StoreError> {
        let corrupt = || StoreError::Corrupt { table: Table::Users };
        let bytes = self.open_sealed(Table::Users, key, sealed)?;
        let row = crate::codec::decode::<storage::UserRow>(bytes.as_slice()).map_err(|_| corrupt())?;
        if row.version != ROW_VERSION || row.user_id != user_id {
            return Err(corrupt());
        }
        let trust = UserTrust::from_bytes(user_id, &row.device_list).map_err(|_| corrupt())?;
        if key == OWN_LIST_ROW && trust.check_device(self.address.device_id(), &self.identity_key()).is_err() {
            return Err(corrupt());
        }
        Ok(trust)
    }

    /// The write of `trust` into the row `loaded` read, conditional on the
    /// row still holding what was read. Our own row keeps what a replacement
    /// wrote there ([`OwnExtras`]) while its list stays under the same key
    /// (PROTOCOL.md 23.9).
    pub(super) fn user_write(&self, loaded: &LoadedUser, trust: &UserTrust) -> Write {
        let same_key = loaded.trust.as_ref().is_some_and(|held| held.user_identity_key() == trust.user_identity_key());
        let extras = if same_key { self.own_extras(loaded) } else { OwnExtras::default() };
        self.user_write_with(loaded, trust, &extras)
    }

    /// What our own row holds besides the list (empty for a peer's row).
    pub(super) fn own_extras(&self, loaded: &LoadedUser) -> OwnExtras {
        let Some(sealed) = loaded.sealed.as_ref().filter(|_| loaded.key == OWN_LIST_ROW) else {
            return OwnExtras::default();
        };
        // The row opened and decoded when it was loaded.
        let Ok(bytes) = self.open_sealed(Table::Users, &loaded.key, sealed) else { return OwnExtras::default() };
        let Ok(row) = crate::codec::decode::<storage::UserRow>(bytes.as_slice()) else {
            return OwnExtras::default();
        };
        OwnExtras {
            replaced: UserIdentityKey::from_slice(&row.replaced_identity).ok(),
            awaiting: row.awaiting_handover,
        }
    }

    /// [`Self::user_write`] with `extras` (our own row only).
    pub(super) fn user_write_with(&self, loaded: &LoadedUser, trust: &UserTrust, extras: &OwnExtras) -> Write {
        let row = storage::UserRow {
            version: ROW_VERSION,
            user_id: trust.list().user_id().to_owned(),
            device_list: trust.to_bytes(),
            replaced_identity: extras.replaced.map(|key| key.as_bytes().to_vec()).unwrap_or_default(),
            awaiting_handover: extras.awaiting.clone(),
        };
        let bytes = Zeroizing::new(encode(&row));
        Write {
            table: Table::Users,
            key: loaded.key.clone(),
            value: Some(self.sealer.seal(&mut crate::os_rng(), Table::Users, &loaded.key, &bytes)),
            expected: Expected::read(loaded.sealed.clone()),
        }
    }

    /// Refuses `peer` with `identity` if its user is pinned and the newest
    /// list verified for it does not name it with that key
    /// ([`DeviceListError::UnlistedDevice`]). A user that is not pinned is
    /// not checked (trust per device, PROTOCOL.md 9.2).
    pub(super) fn check_listed(&self, peer: &Address, identity: &IdentityKey) -> Result<(), DeviceError> {
        match self.load_user(peer.user_id())?.trust {
            Some(trust) => Ok(trust.check_device(peer.device_id(), identity)?),
            None => Ok(()),
        }
    }

    /// What starting a session from `bundle` does to the trust in its user
    /// (PROTOCOL.md 23.5, rules S1 to S3): the trust to check the bundle's
    /// device against (`None`: the user is not pinned), and the write of the
    /// users row if it changes. A list in a bundle of our own user is not
    /// applied: our own list is the app's to set.
    ///
    /// # Errors
    /// [`DeviceListError::UntrustedUser`] or
    /// [`DeviceListError::Equivocation`] (from `Update`; an older list under
    /// the pinned key is taken as no list), then
    /// [`DeviceListError::UnlistedDevice`]; a store error.
    pub(super) fn plan_bundle_trust(&self, bundle: &PreKeyBundle) -> Result<Option<Write>, DeviceError> {
        let peer = bundle.address();
        let loaded = self.load_user(peer.user_id())?;
        let own = peer.user_id() == self.address.user_id();
        let (trust, write) = match (loaded.trust.clone(), bundle.device_list()) {
            (None, None) => return Ok(None),
            (Some(trust), None) => (trust, None),
            (Some(trust), Some(_)) if own => (trust, None),
            (None, Some(_)) if own => return Ok(None),
            (None, Some(signed)) => {
                let trust = UserTrust::first_use(peer.user_id(), signed)?;
                let write = self.user_write(&loaded, &trust);
                (trust, Some(write))
            }
            (Some(mut trust), Some(signed)) => {
                match trust.update(signed) {
                    // An older list under the pinned key (a bundle uploaded
                    // before the list changed, or from a device that has
                    // not set the newest list yet): applied as no list, so
                    // the pinned list decides (S2). Refusing it made every
                    // such bundle unusable, and a server gains nothing by
                    // it: the device is still checked below.
                    Ok(_) | Err(DeviceListError::Rollback { .. }) => {}
                    Err(error) => return Err(error.into()),
                }
                let write = (loaded.trust.as_ref() != Some(&trust)).then(|| self.user_write(&loaded, &trust));
                (trust, write)
            }
        };
        trust.check_device(peer.device_id(), &bundle.identity_key())?;
        Ok(write)
    }

    /// Gives this device its user's signed device list, which its bundles
    /// then carry ([`Self::prekey_bundle`]) and which pins our own user: a
    /// session with another device of ours needs it listed. The list must
    /// verify (PROTOCOL.md 23.2), be of this device's user id and name this
    /// device (its device id with its identity key). A list under the user
    /// identity already held must be newer ([`UserTrust::update`]: no
    /// rollback, no other list with the same version); one under another
    /// user identity replaces it (the app holds the user identity: a new one
    /// is its decision, [`UserTrust::trust_new_identity`]). Returns the
    /// devices added and removed (every device, added, for the first list).
    /// The same list again writes nothing.
    ///
    /// # Errors
    /// [`DeviceError::DeviceList`] with [`DeviceListError::Malformed`],
    /// [`DeviceListError::BadSignature`], [`DeviceListError::WrongUser`],
    /// [`DeviceListError::Rollback`] or [`DeviceListError::Equivocation`];
    /// [`DeviceError::NotInOwnList`]; a store error. Nothing is written.
    ///
    /// # Examples
    ///
    /// ```
    /// # use std::time::SystemTime;
    /// # use samizdat::store::StorageKey;
    /// use samizdat::{address::Address, device::Device, store::MemoryBackend, user::{DeviceList, UserIdentityKeyPair}};
    ///
    /// let bob = Device::create_in(MemoryBackend::new(), &StorageKey::from_bytes([2; 32]), Address::new("bob", 1)?, SystemTime::now())?;
    /// let bob_user = UserIdentityKeyPair::generate(&mut samizdat::os_rng());
    /// let list = DeviceList::new("bob", 1, &bob_user.public_key(), [(1, bob.identity_key())])?.sign(&bob_user)?;
    /// bob.set_device_list(&list)?;
    /// assert_eq!(bob.device_list()?, Some(list));
    ///
    /// // Alice pins Bob's user from the list his bundle carries.
    /// let alice = Device::create_in(MemoryBackend::new(), &StorageKey::from_bytes([1; 32]), Address::new("alice", 1)?, SystemTime::now())?;
    /// alice.start_session(&bob.prekey_bundle()?)?;
    /// assert_eq!(alice.user_trust("bob")?.map(|trust| *trust.user_identity_key()), Some(bob_user.public_key()));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn set_device_list(&self, signed: &SignedDeviceList) -> Result<ListChange, DeviceError> {
        self.check_process()?;
        let list = signed.verify()?;
        if list.user_id() != self.address.user_id() {
            let (expected, found) = (self.address.user_id().to_owned(), list.user_id().to_owned());
            return Err(DeviceListError::WrongUser { expected, found }.into());
        }
        self.apply_list(signed, list.user_id(), Rule::Own)
    }

    /// This device's own signed device list, if the app set one.
    ///
    /// # Errors
    /// A store error ([`StoreError::Corrupt`] for a row that does not load).
    pub fn device_list(&self) -> Result<Option<SignedDeviceList>, DeviceError> {
        self.check_process()?;
        Ok(self.load_user(self.address.user_id())?.trust.map(|trust| trust.signed_list().clone()))
    }

    /// What this device trusts of `user_id`: the user identity pinned and the
    /// newest list verified (our own list for our own user id), or `None`
    /// if the user is not pinned.
    ///
    /// # Errors
    /// A store error ([`StoreError::Corrupt`] for a row that does not load).
    pub fn user_trust(&self, user_id: &str) -> Result<Option<UserTrust>, DeviceError> {
        self.check_process()?;
        Ok(self.load_user(user_id)?.trust)
    }

    /// Gives this device a newer list of a user (a contact's list, fetched
    /// from the server or pushed by it; or our own): pinned on first use if
    /// the user is not pinned yet, else by the rule `Update` (PROTOCOL.md
    /// 23.3). Returns the devices added and removed.
    ///
    /// A removed device keeps its session rows, but every call refuses it
    /// with [`DeviceListError::UnlistedDevice`] (start a session, heal,
    /// encrypt, encrypt kept, decrypt; PROTOCOL.md 23.5), until a newer list names it again with
    /// the same key; delete its sessions with [`Self::delete_session`] if
    /// the app wants them gone.
    ///
    /// # Errors
    /// [`DeviceError::DeviceList`] with [`DeviceListError::Malformed`],
    /// [`DeviceListError::BadSignature`],
    /// [`DeviceListError::UntrustedUser`] (another user identity: the users
    /// compare safety numbers, then [`Self::trust_new_user_identity`]),
    /// [`DeviceListError::Rollback`], [`DeviceListError::Equivocation`];
    /// for our own user id, [`DeviceError::NotInOwnList`], and
    /// [`DeviceListError::UntrustedUser`] while no own list is set (only
    /// [`Self::set_device_list`] pins our own user); a store error.
    /// Nothing is written.
    ///
    /// # Examples
    ///
    /// ```
    /// # use std::time::SystemTime;
    /// # use samizdat::store::StorageKey;
    /// use samizdat::{address::Address, device::Device, keys::IdentityKeyPair, store::MemoryBackend, user::{DeviceList, UserIdentityKeyPair}};
    ///
    /// let mut rng = samizdat::os_rng();
    /// let alice = Device::create_in(MemoryBackend::new(), &StorageKey::from_bytes([1; 32]), Address::new("alice", 1)?, SystemTime::now())?;
    /// let bob_user = UserIdentityKeyPair::generate(&mut rng);
    /// let (phone, laptop) = (IdentityKeyPair::generate(&mut rng).public_key(), IdentityKeyPair::generate(&mut rng).public_key());
    /// let first = DeviceList::new("bob", 1, &bob_user.public_key(), [(1, phone)])?.sign(&bob_user)?;
    /// let second = DeviceList::new("bob", 2, &bob_user.public_key(), [(2, laptop)])?.sign(&bob_user)?;
    /// alice.update_device_list(&first)?;
    /// let change = alice.update_device_list(&second)?;
    /// assert_eq!((change.added, change.removed), (vec![(2, laptop)], vec![(1, phone)]));
    /// assert!(alice.update_device_list(&first).is_err()); // a rollback
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn update_device_list(&self, signed: &SignedDeviceList) -> Result<ListChange, DeviceError> {
        self.check_process()?;
        let list = signed.verify()?;
        self.apply_list(signed, list.user_id(), Rule::Update)
    }

    /// The app's decision to trust a new user identity for a user, after
    /// [`DeviceListError::UntrustedUser`] (typically once the users compared
    /// safety numbers, [`SafetyNumber::for_users`](crate::fingerprint::SafetyNumber::for_users)):
    /// pins the key that signed `signed` and its list, whatever its version
    /// (PROTOCOL.md 23.3, `TrustNewIdentity`); a list of the identity
    /// already pinned goes through `Update` (no rollback). Pins on first use
    /// if the user is not pinned. Returns the devices added and removed.
    ///
    /// For our own user id this is [`Self::update_device_list`]: a new user
    /// identity of ours is given by [`Self::set_device_list`] only.
    ///
    /// # Errors
    /// As [`Self::update_device_list`], without `UntrustedUser` for a peer
    /// user.
    pub fn trust_new_user_identity(&self, signed: &SignedDeviceList) -> Result<ListChange, DeviceError> {
        self.check_process()?;
        let list = signed.verify()?;
        self.apply_list(signed, list.user_id(), Rule::NewIdentity)
    }

    /// Applies `signed` (a list of `user_id`) to `user_id`'s row by `rule`,
    /// under the user's lock, writing the row only if the trust changed.
    fn apply_list(&self, signed: &SignedDeviceList, user_id: &str, rule: Rule) -> Result<ListChange, DeviceError> {
        let user_lock = self.peer_lock(&self.user_lock_key(user_id));
        let _guard = lock(&user_lock);
        retry_on_conflict(|| {
            let loaded = self.load_user(user_id)?;
            // Our own user is pinned, or given a new user identity, only by
            // `set_device_list`: a list of our user id that the server
            // supplies and the app passes on is at most a newer list under
            // the key we hold (the outside audit of the users slice found a
            // server's list pinned on first use into our own row, and our
            // bundles then carried it).
            let own = loaded.key == OWN_LIST_ROW;
            let rule = if own && matches!(rule, Rule::NewIdentity) { Rule::Update } else { rule };
            let (trust, change) = match loaded.trust.clone() {
                None if own && !matches!(rule, Rule::Own) => {
                    let offered = *UserTrust::first_use(user_id, signed)?.user_identity_key();
                    return Err(DeviceListError::UntrustedUser { offered }.into());
                }
                None => {
                    let trust = UserTrust::first_use(user_id, signed)?;
                    let added = trust.list().devices().to_vec();
                    (trust, ListChange { added, removed: Vec::new() })
                }
                Some(mut trust) => {
                    let change = match rule {
                        Rule::Update => trust.update(signed)?,
                        Rule::NewIdentity | Rule::Own => trust.trust_new_identity(signed)?,
                    };
                    (trust, change)
                }
            };
            if loaded.key == OWN_LIST_ROW && trust.check_device(self.address.device_id(), &self.identity_key()).is_err()
            {
                return Err(DeviceError::NotInOwnList);
            }
            if loaded.trust.as_ref() != Some(&trust) {
                self.write(&[self.user_write(&loaded, &trust)])?;
            }
            Ok(change)
        })
    }

    /// Every user row: our own list (if set), then each pinned peer user
    /// with its signed list, in increasing user id order (for backups).
    ///
    /// # Errors
    /// A store error; [`StoreError::Corrupt`] for a row that does not load.
    pub(super) fn user_rows(&self) -> Result<UserRows, DeviceError> {
        let corrupt = || StoreError::Corrupt { table: Table::Users };
        let mut own = None;
        let mut users = Vec::new();
        let mut after: Option<Vec<u8>> = None;
        loop {
            let page = self.backend.scan_after(Table::Users, after.as_deref(), 256)?;
            let Some((last, _)) = page.last() else { break };
            after = Some(last.clone());
            for (key, sealed) in page {
                let bytes = self.open_sealed(Table::Users, &key, &sealed)?;
                let row = crate::codec::decode::<storage::UserRow>(bytes.as_slice()).map_err(|_| corrupt())?;
                // The row is under the key of the user id it names.
                if self.user_row_key(&row.user_id) != key {
                    return Err(corrupt().into());
                }
                let trust = self.open_user_row(&key, &row.user_id, &sealed)?;
                if key == OWN_LIST_ROW {
                    own = Some(trust.signed_list().clone());
                } else {
                    users.push((row.user_id, trust.signed_list().clone()));
                }
            }
        }
        users.sort_by(|a, b| a.0.cmp(&b.0));
        Ok((own, users))
    }
}
