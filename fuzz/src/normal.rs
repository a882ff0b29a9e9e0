//! The stored records whose loaders accept a value that the writer writes
//! back differently, as PROTOCOL.md documents, and nothing else:
//!
//! - 13.3: without a sending chain, `sending.counter` is ignored (written
//!   back as 0); a state without `ratchet_public` (written before it
//!   existed) is written back with it; both in a ratchet state and in every
//!   full state of a record;
//! - 13.5: the order of the `one_time` and `pq_one_time` entries of a prekey
//!   set is not checked (written back in increasing id order).
//!
//! Each function takes bytes a loader accepted and returns them with exactly
//! those differences undone (parsed leniently, normalised, encoded again):
//! what the writer must give back. (`vectors/records.json` pins these rules:
//! `ratchet_counter_of_absent_sending_chain_ignored`,
//! `ratchet_public_key_absent`, `prekey_set_one_time_not_in_id_order`.)

use prost::Message as _;
use samizdat_proto::storage;

fn ratchet(state: &mut storage::RatchetState) {
    let Some(sending) = state.sending.as_mut() else { return };
    if sending.chain_key.is_empty() && sending.header_key.is_empty() {
        sending.counter = 0;
    }
    if sending.ratchet_public.is_empty()
        && let Ok(secret) = <[u8; 32]>::try_from(sending.ratchet_secret.as_slice())
    {
        sending.ratchet_public = samizdat::hazmat::x25519_public(&secret).to_vec();
    }
}

/// A ratchet state as its writer gives it back.
pub fn ratchet_state(bytes: &[u8]) -> Vec<u8> {
    let mut state = storage::RatchetState::decode(bytes).expect("bytes a loader accepted parse");
    ratchet(&mut state);
    state.encode_to_vec()
}

/// A session record (seeds in or apart) as its writer gives it back.
pub fn session_record(bytes: &[u8]) -> Vec<u8> {
    let mut record = storage::SessionRecord::decode(bytes).expect("bytes a loader accepted parse");
    for state in record.current.iter_mut().chain(record.archived.iter_mut()) {
        if let Some(state) = state.ratchet.as_mut() {
            ratchet(state);
        }
    }
    record.encode_to_vec()
}

/// A prekey set as its writer gives it back.
pub fn prekey_set(bytes: &[u8]) -> Vec<u8> {
    let mut set = storage::PreKeySet::decode(bytes).expect("bytes a loader accepted parse");
    set.one_time.sort_by_key(|key| key.id);
    set.pq_one_time.sort_by_key(|key| key.id);
    set.encode_to_vec()
}

#[cfg(test)]
mod tests {
    /// The two rules as `vectors/records.json` pins them: the normal form of
    /// each input is the re-encoding the vector gives.
    #[test]
    fn the_normal_forms_are_the_vectors_reencodings() {
        let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../vectors/records.json")).unwrap();
        let vectors: serde_json::Value = serde_json::from_str(&text).unwrap();
        let cases = vectors["cases"].as_array().unwrap();
        let mut checked = 0;
        for case in cases {
            let (Some(input), Some(reencoded)) = (case["input"].as_str(), case["reencoded"].as_str()) else { continue };
            let (input, reencoded) = (hex::decode(input).unwrap(), hex::decode(reencoded).unwrap());
            let normal = match case["decoder"].as_str().unwrap() {
                "ratchet_state" => super::ratchet_state(&input),
                "session_record" => super::session_record(&input),
                "prekey_set" => super::prekey_set(&input),
                other => panic!("decoder {other}"),
            };
            assert_eq!(hex::encode(normal), hex::encode(reencoded), "{}", case["name"]);
            checked += 1;
        }
        assert!(checked > 10);
    }
}
