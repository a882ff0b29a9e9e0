//! Quickstart: two parties exchange messages over the Double Ratchet, some of
//! them out of order, one duplicated and one tampered with.
//!
//! Run with `cargo run --example quickstart`.

use samizdat::{
    DecryptError,
    keys::X25519Secret,
    ratchet::{DoubleRatchet, RatchetInit},
    wire::RatchetMessage,
};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut rng = samizdat::os_rng();

    // Until the handshake lands, the two parties start from shared secrets
    // chosen here; PQXDH will produce them.
    let mut secrets = [[0u8; 32]; 3];
    for s in &mut secrets {
        rand_core::Rng::fill_bytes(&mut rng, s);
    }
    let [root, alice_header, bob_header] = secrets;
    let ad = b"quickstart: alice <-> bob";
    let bob_ratchet = X25519Secret::generate(&mut rng);
    let bob_public = bob_ratchet.public_key();
    let mut alice =
        DoubleRatchet::new_initiator(&mut rng, RatchetInit::new(root, alice_header, bob_header, ad)?, &bob_public)?;
    let mut bob = DoubleRatchet::new_responder(RatchetInit::new(root, alice_header, bob_header, ad)?, bob_ratchet);

    // Alice sends three messages; the network delivers them 3, 1, 2.
    let first = alice.encrypt(&mut rng, b"Hi Bob!")?.to_bytes();
    let second = alice.encrypt(&mut rng, b"Are you there?")?.to_bytes();
    let third = alice.encrypt(&mut rng, b"Meet at noon.")?.to_bytes();
    for (n, wire) in [(3, &third), (1, &first), (2, &second)] {
        let plaintext = bob.decrypt(&mut rng, &RatchetMessage::from_bytes(wire)?)?;
        println!("bob   <- alice #{n} ({} bytes on the wire): {}", wire.len(), String::from_utf8_lossy(&plaintext));
    }

    // A redelivery is reported as a duplicate, not decrypted twice.
    match bob.decrypt(&mut rng, &RatchetMessage::from_bytes(&first)?) {
        Err(DecryptError::Duplicate { counter }) => {
            println!("bob   :  message #1 redelivered: duplicate (counter {counter})")
        }
        other => return Err(format!("expected a duplicate, got {other:?}").into()),
    }

    // Bob replies (a DH ratchet step); a tampered copy is rejected and changes nothing.
    let reply = bob.encrypt(&mut rng, b"Noon works.")?.to_bytes();
    let mut tampered = reply.clone();
    if let Some(last) = tampered.last_mut() {
        *last ^= 0x01;
    }
    match alice.decrypt(&mut rng, &RatchetMessage::from_bytes(&tampered)?) {
        Err(DecryptError::Unauthenticated) => println!("alice :  tampered reply rejected"),
        other => return Err(format!("expected a rejection, got {other:?}").into()),
    }
    let plaintext = alice.decrypt(&mut rng, &RatchetMessage::from_bytes(&reply)?)?;
    println!("alice <- bob   ({} bytes on the wire): {}", reply.len(), String::from_utf8_lossy(&plaintext));

    // The state survives serialization (a store would seal these bytes).
    let saved = alice.to_bytes();
    let mut alice = DoubleRatchet::from_bytes(&saved)?;
    let next = alice.encrypt(&mut rng, b"See you.")?;
    println!(
        "bob   <- alice (after alice reloaded a {}-byte state): {}",
        saved.len(),
        String::from_utf8_lossy(&bob.decrypt(&mut rng, &next)?)
    );
    Ok(())
}
