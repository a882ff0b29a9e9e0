//! What an attacker does by hand with the chain keys of a stolen record
//! (`samizdat::hazmat`): continue a chain, read a chain (`audit2.rs`,
//! `audit_crossing.rs`).
use chacha20::ChaCha20Rng;
use chacha20poly1305::{
    ChaCha20Poly1305, KeyInit, Nonce,
    aead::{Aead, Payload},
};
use prost::Message as _;
use rand_core::Rng;
use samizdat::{hazmat, wire::RatchetMessage};
use samizdat_proto::{storage, wire as pb};

/// One chain of a stolen state: its header key, its ratchet public key,
/// its chain key and the counter that chain key is for.
#[derive(Clone)]
pub(crate) struct Chain {
    pub(crate) ad: Vec<u8>,
    pub(crate) header_key: [u8; 32],
    pub(crate) ratchet_key: [u8; 32],
    pub(crate) chain_key: [u8; 32],
    pub(crate) counter: u32,
}

fn state<'a>(record: &'a storage::SessionRecord, base_key: &[u8; 32]) -> &'a storage::RatchetState {
    record
        .current
        .iter()
        .chain(record.archived.iter())
        .find(|s| s.base_key.as_slice() == base_key && s.ratchet.is_some())
        .and_then(|s| s.ratchet.as_ref())
        .expect("a full state with that base key in the copy")
}

/// The peer's current chain as the copied state receives it.
pub(crate) fn receiving(copy: &[u8], base_key: &[u8; 32]) -> Chain {
    try_receiving(copy, base_key).expect("a full state with a current receiving chain")
}

/// As [`receiving`]; `None` if the copy has no such state or chain.
pub(crate) fn try_receiving(copy: &[u8], base_key: &[u8; 32]) -> Option<Chain> {
    let record = storage::SessionRecord::decode(copy).unwrap();
    let ratchet = record
        .current
        .iter()
        .chain(record.archived.iter())
        .find(|s| s.base_key.as_slice() == base_key && s.ratchet.is_some())
        .and_then(|s| s.ratchet.as_ref())?;
    let chain = ratchet.receiving.last()?;
    Some(Chain {
        ad: ratchet.associated_data.clone(),
        header_key: chain.header_key.as_slice().try_into().ok()?,
        ratchet_key: chain.ratchet_key.as_slice().try_into().ok()?,
        chain_key: chain.chain_key.as_slice().try_into().ok()?,
        counter: chain.counter,
    })
}

/// The copied state's own sending chain (what the victim sends next on it).
pub(crate) fn sending(copy: &[u8], base_key: &[u8; 32]) -> Chain {
    let record = storage::SessionRecord::decode(copy).unwrap();
    let ratchet = state(&record, base_key);
    let chain = ratchet.sending.as_ref().unwrap();
    Chain {
        ad: ratchet.associated_data.clone(),
        header_key: chain.header_key.as_slice().try_into().expect("a sending chain"),
        ratchet_key: chain.ratchet_public.as_slice().try_into().unwrap(),
        chain_key: chain.chain_key.as_slice().try_into().unwrap(),
        counter: chain.counter,
    }
}

/// A message on `chain` at `counter`, sealed by the attacker.
pub(crate) fn forge(rng: &mut ChaCha20Rng, chain: &Chain, counter: u32, plaintext: &[u8]) -> RatchetMessage {
    let mut ck = chain.chain_key;
    for _ in chain.counter..counter {
        ck = hazmat::chain_step(&ck).1;
    }
    let seed = hazmat::chain_step(&ck).0;
    seal(rng, &chain.ad, &chain.header_key, &chain.ratchet_key, 0, &seed, counter, plaintext)
}

/// A ratchet message sealed by hand from a message key seed: the header
/// under `header_key` (4.4), the padded body under the seed's key (4.5).
#[allow(clippy::too_many_arguments)]
pub(crate) fn seal(
    rng: &mut ChaCha20Rng,
    ad: &[u8],
    header_key: &[u8; 32],
    ratchet_key: &[u8; 32],
    previous_counter: u32,
    seed: &[u8; 32],
    counter: u32,
    plaintext: &[u8],
) -> RatchetMessage {
    let padded = hazmat::pad(plaintext).unwrap();
    seal_padded(rng, ad, header_key, (ratchet_key, previous_counter), seed, counter, &padded)
}

/// As [`seal`], of a body already padded (to choose its content type,
/// PROTOCOL.md 5.2).
pub(crate) fn seal_padded(
    rng: &mut ChaCha20Rng,
    ad: &[u8],
    header_key: &[u8; 32],
    (ratchet_key, previous_counter): (&[u8; 32], u32),
    seed: &[u8; 32],
    counter: u32,
    padded: &[u8],
) -> RatchetMessage {
    let mut nonce = [0u8; 24];
    rng.fill_bytes(&mut nonce);
    let header = hazmat::seal_header(header_key, nonce, (ratchet_key, previous_counter, counter), false, ad);
    let (key, body_nonce) = hazmat::message_key(seed, &nonce);
    let mut aad = ad.to_vec();
    aad.extend_from_slice(&header);
    let body = ChaCha20Poly1305::new_from_slice(&key)
        .unwrap()
        .encrypt(&Nonce::from(body_nonce), Payload { msg: padded, aad: &aad })
        .unwrap();
    hazmat::ratchet_message(header, body)
}

/// Control content (marker `0x81`, PROTOCOL.md 5.2) padded as the library
/// pads it: the app marker of [`hazmat::pad`] replaced (the buckets are the
/// same for both types).
pub(crate) fn pad_control(content: &[u8]) -> Vec<u8> {
    let mut padded = hazmat::pad(content).unwrap();
    assert_eq!(padded[content.len()], 0x80);
    padded[content.len()] = 0x81;
    padded
}

/// Reads a message sent on `chain` (any counter from the copy's on).
pub(crate) fn read(chain: &Chain, message: &RatchetMessage) -> Option<Vec<u8>> {
    let header = message.header();
    let (_, _, counter, _) = hazmat::open_header(&chain.header_key, header, &chain.ad)?;
    if counter < chain.counter {
        return None;
    }
    let mut ck = chain.chain_key;
    for _ in chain.counter..counter {
        ck = hazmat::chain_step(&ck).1;
    }
    let seed = hazmat::chain_step(&ck).0;
    let (key, body_nonce) = hazmat::message_key(&seed, header[..24].try_into().unwrap());
    let mut aad = chain.ad.clone();
    aad.extend_from_slice(header);
    let padded = ChaCha20Poly1305::new_from_slice(&key)
        .unwrap()
        .decrypt(&Nonce::from(body_nonce), Payload { msg: message.body(), aad: &aad })
        .ok()?;
    hazmat::unpad(&padded)
}

/// A prekey message with the (public) header of `genuine` around `inner`.
pub(crate) fn with_prekey_header(genuine: &[u8], inner: &RatchetMessage) -> Vec<u8> {
    let mut envelope = pb::Envelope::decode(&genuine[1..]).unwrap();
    let inner = match pb::Envelope::decode(&inner.to_bytes()[1..]).unwrap().body {
        Some(pb::envelope::Body::Ratchet(r)) => r,
        _ => unreachable!(),
    };
    match envelope.body.as_mut() {
        Some(pb::envelope::Body::Prekey(p)) => p.message = Some(inner),
        _ => panic!("not a prekey message"),
    }
    let mut out = vec![genuine[0]];
    envelope.encode(&mut out).unwrap();
    out
}
