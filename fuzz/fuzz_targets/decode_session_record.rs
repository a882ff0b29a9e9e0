//! `SessionRecord::from_bytes` (a stored session record with its seeds in
//! it, PROTOCOL.md 13.4): no panic, a loaded record round-trips (exactly,
//! but for the difference 13.3 documents: `samizdat_fuzz::normal`) and keeps
//! within the limits, and an encryption with it fails only with a typed
//! error and changes nothing when it fails. (The device's form, seeds apart
//! in their own row, is reached through the store: `decode_store`.)
#![no_main]

use chacha20::ChaCha20Rng;
use libfuzzer_sys::fuzz_target;
use samizdat::{limits::MAX_ARCHIVED_STATES, rand_core::SeedableRng, session::SessionRecord};
use samizdat_fuzz::{assert_round_trip_normal, normal};

fuzz_target!(|data: &[u8]| {
    let Ok(mut record) = SessionRecord::from_bytes(data) else { return };
    assert_round_trip_normal(
        "SessionRecord",
        data,
        &record,
        |r| r.to_bytes().to_vec(),
        SessionRecord::from_bytes,
        normal::session_record,
    );
    assert!(record.archived_states() <= MAX_ARCHIVED_STATES, "too many archived states loaded");
    assert!(record.kept_states() <= record.archived_states(), "more kept states than archived ones");
    assert_eq!(record.has_session(), record.current_base_key().is_some());
    let _ = record.trusted_identity();
    let before = record.to_bytes();
    if record.encrypt(&mut ChaCha20Rng::from_seed([3; 32]), b"fuzz").is_err() {
        assert!(record.to_bytes() == before, "a failed encryption changed the record");
    }
});
