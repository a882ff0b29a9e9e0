//! Quickstart: Alice fetches Bob's prekey bundle, opens a post-quantum
//! (PQXDH) session, and they converse over the Double Ratchet: some messages
//! arrive out of order, one twice, one tampered with. Both print the same
//! safety number.
//!
//! Run with `cargo run --example quickstart`.

use samizdat::{
    DecryptError, SessionError,
    address::Address,
    fingerprint::SafetyNumber,
    keys::IdentityKeyPair,
    prekeys::{PreKeyBundle, PreKeySet},
    session::SessionRecord,
};

/// One device: an identity, its prekeys, and a session record for its peer.
struct Device {
    name: &'static str,
    identity: IdentityKeyPair,
    prekeys: PreKeySet,
    peer: SessionRecord,
}

impl Device {
    fn new(name: &'static str, rng: &mut samizdat::OsRng) -> Result<Self, Box<dyn std::error::Error>> {
        let identity = IdentityKeyPair::generate(rng);
        let mut prekeys = PreKeySet::new(rng, &identity, now());
        prekeys.add_one_time_prekeys(rng, &identity, 5, now())?;
        Ok(Self { name, identity, prekeys, peer: SessionRecord::new() })
    }

    /// Decrypts, then (after the app would have stored the plaintext) commits
    /// and deletes the prekeys the message consumed.
    fn receive(&mut self, rng: &mut samizdat::OsRng, wire: &[u8]) -> Result<String, SessionError> {
        let pending = self.peer.decrypt(rng, &self.identity, &self.prekeys, wire)?;
        let text = String::from_utf8_lossy(pending.plaintext()).into_owned();
        self.prekeys.consume(&pending.consumed_prekeys());
        self.peer.commit(pending)?;
        Ok(text)
    }
}

fn now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut rng = samizdat::os_rng();
    let mut alice = Device::new("alice", &mut rng)?;
    let mut bob = Device::new("bob", &mut rng)?;

    // Bob's server hands Alice a bundle; she verifies it completely and opens a session.
    let served = bob.prekeys.bundle(&bob.identity, &Address::new(bob.name, 1)?).ok_or("no signed prekey")?.to_bytes();
    let bundle = PreKeyBundle::from_bytes(&served)?;
    println!("alice :  fetched bob's bundle ({} bytes), signatures verified", served.len());
    alice.peer.initiate(&mut rng, &alice.identity, &bundle)?;

    // Alice sends three messages; the network delivers them 3, 1, 2.
    let first = alice.peer.encrypt(&mut rng, b"Hi Bob!")?;
    let second = alice.peer.encrypt(&mut rng, b"Are you there?")?;
    let third = alice.peer.encrypt(&mut rng, b"Meet at noon.")?;
    for (n, wire) in [(3, &third), (1, &first), (2, &second)] {
        let text = bob.receive(&mut rng, wire)?;
        println!("bob   <- alice #{n} ({} bytes on the wire, with the PQXDH header): {text}", wire.len());
    }
    let (x25519_left, mlkem_left) = bob.prekeys.one_time_counts();
    println!("bob   :  one-time prekeys left: {x25519_left} X25519, {mlkem_left} ML-KEM");

    // A redelivery is reported as a duplicate, never decrypted twice.
    match bob.receive(&mut rng, &first) {
        Err(SessionError::Decrypt(DecryptError::Duplicate { counter })) => {
            println!("bob   :  message #1 redelivered: duplicate (counter {counter})")
        }
        other => return Err(format!("expected a duplicate, got {other:?}").into()),
    }

    // Bob replies; a tampered copy is rejected and changes nothing.
    let reply = bob.peer.encrypt(&mut rng, b"Noon works.")?;
    let mut tampered = reply.clone();
    if let Some(last) = tampered.last_mut() {
        *last ^= 0x01;
    }
    match alice.receive(&mut rng, &tampered) {
        Err(SessionError::Decrypt(DecryptError::Unauthenticated)) => println!("alice :  tampered reply rejected"),
        other => return Err(format!("expected a rejection, got {other:?}").into()),
    }
    println!("alice <- bob   ({} bytes on the wire): {}", reply.len(), alice.receive(&mut rng, &reply)?);

    // Now that Alice heard back, her messages no longer carry the prekey header.
    let next = alice.peer.encrypt(&mut rng, b"See you.")?;
    println!("bob   <- alice ({} bytes on the wire): {}", next.len(), bob.receive(&mut rng, &next)?);

    // Both compare safety numbers, read aloud or scanned.
    let on_alice = SafetyNumber::new(alice.name, &alice.identity.public_key(), bob.name, &bundle.identity_key());
    let on_bob = SafetyNumber::new(bob.name, &bob.identity.public_key(), alice.name, &alice.identity.public_key());
    println!("alice :  safety number {}", on_alice.display());
    println!("bob   :  safety number {}", on_bob.display());
    on_alice.compare_scanned(&on_bob.scannable())?;
    println!("alice :  scanned bob's code: match");
    Ok(())
}
