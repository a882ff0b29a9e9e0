//! `SafetyNumber::compare_scanned` on any scanned bytes, against a model of
//! PROTOCOL.md 10.3: the version byte first, then the length, then both
//! fingerprints compared, the mismatching side named.
//!
//! The first input byte picks one of four safety numbers (Alice's and Bob's
//! views of the vectors' known answer, and of a pair where Bob holds another
//! key for Alice); the rest is the scanned code.
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use samizdat::{
    fingerprint::{
        MismatchedSide, SCANNABLE_FINGERPRINT_LEN, SCANNABLE_LEN, SCANNABLE_VERSION, SafetyNumber, ScanError,
    },
    hazmat,
};

fn numbers() -> &'static [SafetyNumber; 4] {
    static NUMBERS: OnceLock<[SafetyNumber; 4]> = OnceLock::new();
    NUMBERS.get_or_init(|| {
        let (alice, bob, other) = ([1u8; 32], [2u8; 32], [9u8; 32]);
        let numbers = [
            hazmat::safety_number("alice", &alice, "bob", &bob),
            hazmat::safety_number("bob", &bob, "alice", &alice),
            hazmat::safety_number("alice", &alice, "bob", &other),
            hazmat::safety_number("bob", &other, "alice", &alice),
        ];
        assert_eq!(numbers[0].compare_scanned(&numbers[1].scannable()), Ok(()));
        assert_eq!(numbers[0].digits(), numbers[1].digits());
        numbers
    })
}

/// What `compare_scanned` must say, from the code the number shows.
fn model(own: &[u8], scanned: &[u8]) -> Result<(), ScanError> {
    let Some((&version, rest)) = scanned.split_first() else {
        return Err(ScanError::Malformed { len: 0 });
    };
    if version != SCANNABLE_VERSION {
        return Err(ScanError::UnsupportedVersion(version));
    }
    if scanned.len() != SCANNABLE_LEN {
        return Err(ScanError::Malformed { len: scanned.len() });
    }
    let (their_local, their_remote) = rest.split_at(SCANNABLE_FINGERPRINT_LEN);
    let (our_local, our_remote) = own[1..].split_at(SCANNABLE_FINGERPRINT_LEN);
    match (their_remote == our_local, their_local == our_remote) {
        (true, true) => Ok(()),
        (false, true) => Err(ScanError::Mismatch(MismatchedSide::Local)),
        (true, false) => Err(ScanError::Mismatch(MismatchedSide::Remote)),
        (false, false) => Err(ScanError::Mismatch(MismatchedSide::Both)),
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&which, scanned)) = data.split_first() else { return };
    let number = &numbers()[usize::from(which) % 4];
    assert_eq!(number.compare_scanned(scanned), model(&number.scannable(), scanned));
});
