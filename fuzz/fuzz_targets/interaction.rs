//! Three devices on memory stores, driven by the input's events over a
//! hostile network: send, deliver, drop, duplicate, reorder, tamper, a
//! decryption not committed, snapshots and restores of a store, restarts,
//! new sessions (also from stale bundles), prekey refills and rotations,
//! batches, stale commits; sends kept in the outbox, heals, resends,
//! acknowledgements and a clock. What is asserted, and why only that, is in
//! `samizdat_fuzz::world`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    samizdat_fuzz::world::World::run(data);
});
