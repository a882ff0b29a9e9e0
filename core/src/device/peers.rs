//! The peers a device has records of: listing them, deleting one, and what
//! one costs in stored skipped keys.

use samizdat_proto::storage;

use super::{Device, DeviceError, ROW_VERSION, lock, retry_on_conflict};
use crate::{
    address::Address,
    store::{Backend, Expected, StoreError, Table, Write},
};

/// Rows read at a time by [`Device::peers`].
const PEERS_PAGE: usize = 256;
/// The length of a session row's key: a keyed hash of the address (the
/// rows of table `sessions` with longer keys are the seeds and outbox rows
/// of a peer, PROTOCOL.md 14.2).
const SESSION_ROW_KEY_LEN: usize = 32;

impl<B: Backend> Device<B> {
    /// Every peer device this device has a session record for (a session,
    /// or only a trusted identity), in no particular order.
    ///
    /// Cost: one read of every session row, by pages of 256 rows (memory
    /// bounded by a page), each opened to read its address: the store keeps
    /// addresses only inside the sealed rows. Measured
    /// (`benches/benches/scale.rs`): about 4 s for 100,000 peers (36 to 40
    /// µs each, most of it reading 480 MB), 11 µs each for 14. Call it for a
    /// settings screen, not per message, and keep the app's own contact list
    /// for the rest.
    ///
    /// # Errors
    /// A store error; [`StoreError::Corrupt`] for a row that does not open.
    ///
    /// # Examples
    ///
    /// ```
    /// # use std::time::SystemTime;
    /// # use samizdat::store::StorageKey;
    /// use samizdat::{address::Address, device::Device, store::MemoryBackend};
    ///
    /// let alice = Device::create_in(MemoryBackend::new(), &StorageKey::from_bytes([1; 32]), Address::new("alice", 1)?, SystemTime::now())?;
    /// let bob = Device::create_in(MemoryBackend::new(), &StorageKey::from_bytes([2; 32]), Address::new("bob", 1)?, SystemTime::now())?;
    /// alice.start_session(&bob.prekey_bundle()?)?;
    /// assert_eq!(alice.peers()?, vec![Address::new("bob", 1)?]);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn peers(&self) -> Result<Vec<Address>, DeviceError> {
        self.check_process()?;
        let corrupt = || StoreError::Corrupt { table: Table::Sessions };
        let mut peers = Vec::new();
        let mut after: Option<Vec<u8>> = None;
        loop {
            let page = self.backend.scan_after(Table::Sessions, after.as_deref(), PEERS_PAGE)?;
            let Some((last, _)) = page.last() else { break };
            after = Some(last.clone());
            for (key, sealed) in page.iter().filter(|(key, _)| key.len() == SESSION_ROW_KEY_LEN) {
                let bytes = self.open_sealed(Table::Sessions, key, sealed)?;
                let row =
                    crate::codec::decode_secret::<storage::SessionRow>(bytes.as_slice()).map_err(|_| corrupt())?;
                if row.version != ROW_VERSION {
                    return Err(corrupt().into());
                }
                let address = Address::new(row.user_id.clone(), row.device_id).map_err(|_| corrupt())?;
                // A row under another address's key was moved there.
                if self.sealer.address_key(&address) != *key {
                    return Err(corrupt().into());
                }
                peers.push(address);
            }
        }
        Ok(peers)
    }

    /// Deletes everything this device keeps of `peer`, in one transaction:
    /// its session record (every state, its skipped keys, the trusted
    /// identity) and its outbox. Returns whether there was anything.
    ///
    /// Afterwards the peer is a stranger: its next prekey message starts a
    /// new session under whatever identity it carries (trusted on first use
    /// again), and its ratchet messages open under no state (code
    /// `out_of_step`, as for any peer whose state is gone: heal, if the app
    /// wants the conversation back, or drop them). Its place in groups
    /// is the app's roster's business ([`Device::remove_group_members`]).
    ///
    /// Rows that do not open (a damaged store) are deleted all the same: no
    /// row is opened, each is deleted on the condition that it still holds
    /// the bytes read.
    ///
    /// The deleted rows' bytes are overwritten in the database file and its
    /// log when the transaction commits (`secure_delete`, PROTOCOL.md
    /// 14.8); copies that a b-tree rebuild left in other pages go at the
    /// next scrub: call [`Device::scrub`] after deleting, to be sure now.
    ///
    /// # Errors
    /// A store error (nothing deleted).
    ///
    /// # Examples
    ///
    /// ```
    /// # use std::time::SystemTime;
    /// # use samizdat::store::StorageKey;
    /// use samizdat::{address::Address, device::Device, store::MemoryBackend};
    ///
    /// let alice = Device::create_in(MemoryBackend::new(), &StorageKey::from_bytes([1; 32]), Address::new("alice", 1)?, SystemTime::now())?;
    /// let bob = Device::create_in(MemoryBackend::new(), &StorageKey::from_bytes([2; 32]), Address::new("bob", 1)?, SystemTime::now())?;
    /// let bob_address = alice.start_session(&bob.prekey_bundle()?)?;
    /// assert!(alice.delete_session(&bob_address)?);
    /// assert!(!alice.has_session(&bob_address)? && alice.peers()?.is_empty());
    /// assert!(!alice.delete_session(&bob_address)?);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn delete_session(&self, peer: &Address) -> Result<bool, DeviceError> {
        self.check_process()?;
        let row = self.sealer.address_key(peer);
        let peer_lock = self.peer_lock(&row);
        let _guard = lock(&peer_lock);
        retry_on_conflict(|| {
            // The rows as stored, not opened: a damaged row is deleted too
            // (a row that does not open must not keep its peer for good).
            let mut writes = Vec::new();
            let mut delete = |table: Table, key: Vec<u8>| -> Result<(), StoreError> {
                if let Some(value) = self.backend.get(table, &key)? {
                    writes.push(Write { table, key, value: None, expected: Expected::Value(value) });
                }
                Ok(())
            };
            delete(Table::Sessions, super::sessions::seeds_key(&row))?;
            delete(Table::Outboxes, row.clone())?;
            delete(Table::Sessions, row.clone())?;
            // The outbox entries: the rows keyed `row || "/out/" || ...`,
            // found by their prefix whatever the index says.
            let prefix = super::healing::entry_prefix(&row);
            let mut after = prefix.clone();
            loop {
                let page = self.backend.scan_after(Table::Sessions, Some(&after), PEERS_PAGE)?;
                let mut done = page.len() < PEERS_PAGE;
                for (key, value) in page {
                    if !key.starts_with(&prefix) {
                        done = true;
                        break;
                    }
                    after.clone_from(&key);
                    writes.push(Write { table: Table::Sessions, key, value: None, expected: Expected::Value(value) });
                }
                if done {
                    break;
                }
            }
            if writes.is_empty() {
                return Ok(false);
            }
            self.write(&writes)?;
            Ok(true)
        })
    }

    /// How many skipped message keys (kept for messages of `peer` that have
    /// not arrived) the store holds for `peer`, over every state of its
    /// record: at most [`MAX_STORED_SKIPPED_KEYS`](crate::limits::MAX_STORED_SKIPPED_KEYS).
    ///
    /// # Errors
    /// A store error.
    pub fn skipped_key_count(&self, peer: &Address) -> Result<usize, DeviceError> {
        self.check_process()?;
        Ok(self.load_record(&self.sealer.address_key(peer))?.1.skipped_count())
    }
}
