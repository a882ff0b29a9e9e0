//! `PreKeySet::from_bytes` (a stored prekey set, PROTOCOL.md 13.5; also the
//! previous format's single prekey row): no panic, a loaded set round-trips
//! (exactly, but for the entry order 13.5 documents: `samizdat_fuzz::normal`)
//! and keeps within the limits, and a bundle made from it parses or is
//! refused with a typed error.
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use samizdat::{
    address::Address,
    keys::IdentityKeyPair,
    limits::MAX_ONE_TIME_PREKEYS,
    prekeys::{PreKeyBundle, PreKeySet},
};
use samizdat_fuzz::{assert_round_trip_normal, normal};

fn identity() -> &'static (IdentityKeyPair, Address) {
    static IDENTITY: OnceLock<(IdentityKeyPair, Address)> = OnceLock::new();
    IDENTITY.get_or_init(|| (IdentityKeyPair::from_seed(&[0xb0; 32]), Address::new("bob", 1).expect("valid")))
}

fuzz_target!(|data: &[u8]| {
    let Ok(set) = PreKeySet::from_bytes(data) else { return };
    assert_round_trip_normal(
        "PreKeySet",
        data,
        &set,
        |s| s.to_bytes().to_vec(),
        PreKeySet::from_bytes,
        normal::prekey_set,
    );
    let (one_time, pq_one_time) = set.one_time_counts();
    assert!(one_time <= MAX_ONE_TIME_PREKEYS && pq_one_time <= MAX_ONE_TIME_PREKEYS, "too many one-time prekeys");
    let (signed, last_resort) = set.current_created_at();
    assert!(signed.is_some() && last_resort.is_some(), "a loaded set without a current signed or last-resort key");
    let (identity, address) = identity();
    let bundle = set.bundle(identity, address).expect("a loaded set has a signed prekey");
    let _ = PreKeyBundle::from_bytes(&bundle.to_bytes());
});
