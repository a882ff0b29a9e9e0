//! Parties at the session layer and what an attacker does with a stolen
//! record: shared by the audits (`audit.rs`, `audit2.rs`).

use chacha20::ChaCha20Rng;
use prost::Message as _;
use samizdat::{
    SessionError,
    address::Address,
    keys::{IdentityKeyPair, X25519PublicKey},
    prekeys::{PreKeyBundle, PreKeySet},
    ratchet::{DoubleRatchet, RatchetInit},
    session::SessionRecord,
};
use samizdat_proto::storage;
use std::time::{Duration, UNIX_EPOCH};

/// A party holding its identity, prekeys and its record of one peer.
pub struct Party {
    pub identity: IdentityKeyPair,
    pub prekeys: PreKeySet,
    pub address: Address,
    pub record: SessionRecord,
}

impl Party {
    pub fn new(rng: &mut ChaCha20Rng, name: &str) -> Self {
        let identity = IdentityKeyPair::generate(rng);
        let mut prekeys = PreKeySet::new(rng, &identity, UNIX_EPOCH + Duration::from_secs(1_000));
        prekeys.add_one_time_prekeys(rng, &identity, 40, UNIX_EPOCH + Duration::from_secs(1_000)).unwrap();
        Self { identity, prekeys, address: Address::new(name, 1).unwrap(), record: SessionRecord::new() }
    }

    pub fn bundle(&self) -> PreKeyBundle {
        PreKeyBundle::from_bytes(&self.prekeys.bundle(&self.identity, &self.address).unwrap().to_bytes()).unwrap()
    }

    pub fn initiate(&mut self, rng: &mut ChaCha20Rng, peer: &Party) {
        let bundle = peer.bundle();
        self.record.initiate(rng, &self.identity, &self.address, &bundle).unwrap();
    }

    pub fn send(&mut self, rng: &mut ChaCha20Rng, text: &[u8]) -> Vec<u8> {
        self.record.encrypt(rng, text).unwrap()
    }

    pub fn receive(&mut self, rng: &mut ChaCha20Rng, from: &Address, wire: &[u8]) -> Result<Vec<u8>, SessionError> {
        let pending = self.record.decrypt(rng, &self.identity, &self.address, from, &self.prekeys, wire)?;
        let plaintext = pending.plaintext().to_vec();
        self.prekeys.consume(&pending.consumed_prekeys());
        self.record.commit(pending)?;
        Ok(plaintext)
    }

    /// A stolen copy of the record (a seized phone, a backup).
    pub fn copy(&self) -> Vec<u8> {
        self.record.to_bytes().to_vec()
    }

    /// The base key of the current state.
    pub fn current(&self) -> [u8; 32] {
        *self.record.current_base_key().unwrap().as_bytes()
    }

    /// Its record saved and loaded again (an app restart).
    pub fn reload(&mut self) {
        self.record = SessionRecord::from_bytes(&self.record.to_bytes()).unwrap();
    }

    /// This party with its record as `record` (a restored backup, or the
    /// attacker's view of the copy for control experiments).
    pub fn with_record(&self, record: &[u8]) -> Party {
        Party {
            identity: IdentityKeyPair::from_seed(&self.identity.to_seed()),
            prekeys: PreKeySet::from_bytes(&self.prekeys.to_bytes()).unwrap(),
            address: self.address.clone(),
            record: SessionRecord::from_bytes(record).unwrap(),
        }
    }
}

/// A full round trip: Alice to Bob, Bob to Alice.
pub fn round_trip(rng: &mut ChaCha20Rng, alice: &mut Party, bob: &mut Party, n: usize) {
    let (a, b) = (alice.address.clone(), bob.address.clone());
    for i in 0..n {
        let text = format!("alice {i}");
        let wire = alice.send(rng, text.as_bytes());
        assert_eq!(bob.receive(rng, &a, &wire).unwrap(), text.as_bytes());
        let text = format!("bob {i}");
        let wire = bob.send(rng, text.as_bytes());
        assert_eq!(alice.receive(rng, &b, &wire).unwrap(), text.as_bytes());
    }
}

/// What an attacker takes out of one full state of a stolen record to make
/// the owner's state take a DH step on a message of its own (as in
/// `core/tests/pcs.rs`): root key, next header keys, ratchet public key, AD.
pub fn impersonators(rng: &mut ChaCha20Rng, record: &[u8]) -> Vec<DoubleRatchet> {
    let record = storage::SessionRecord::decode(record).unwrap();
    record
        .current
        .iter()
        .chain(record.archived.iter())
        .filter_map(|state| {
            let ratchet = state.ratchet.as_ref()?;
            let sending = ratchet.sending.as_ref()?;
            let init = RatchetInit::new(
                ratchet.root_key.as_slice().try_into().ok()?,
                ratchet.next_receiving_header_key.as_slice().try_into().ok()?,
                sending.next_header_key.as_slice().try_into().ok()?,
                &ratchet.associated_data,
            )
            .ok()?;
            let public = X25519PublicKey::from_bytes(sending.ratchet_public.as_slice().try_into().ok()?);
            DoubleRatchet::new_initiator(rng, init, &public).ok()
        })
        .collect()
}
