//! The store at scale (issue 16): a device with 100,000 sessions in one
//! SQLite store, beside one with 10.
//!
//! `cargo bench -p samizdat-benches --bench scale` (or `cargo xtask scale`)
//! builds Bob's store once (`target/samizdat-scale/`, reused by later runs:
//! building 100,000 sessions takes minutes), then measures, on that store and
//! on one of 10 sessions:
//!
//! - `Device::open`: the median and the worst of several opens;
//! - `encrypt` (which commits before it returns) to a peer, and `decrypt` +
//!   `commit` of a peer's message: p50 and p99 of many calls;
//! - the database's size per session;
//! - `peers` (per peer), `delete_session`.
//!
//! `SAMIZDAT_SCALE_SESSIONS` sets the number of sessions (default 100,000).
//! Run as a test (`cargo test --all-targets`, no `--bench` argument), it builds
//! a store of 200 sessions in a scratch directory and checks that every call
//! works, so the harness cannot rot; its timings are printed, never asserted.
#![allow(clippy::expect_used, clippy::unwrap_used, clippy::panic, clippy::indexing_slicing)]

use samizdat::store::StorageKey;
use std::time::UNIX_EPOCH;
use std::{
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use chacha20::ChaCha20Rng;
use rand_core::SeedableRng;
use samizdat::{
    address::Address,
    device::Device,
    keys::IdentityKeyPair,
    prekeys::{PreKeyBundle, PreKeySet},
    session::SessionRecord,
};

const KEY: StorageKey = StorageKey::from_bytes([0x5c; 32]);
/// Sessions made per `decrypt_batch` + `commit_batch` while building.
const BUILD_BATCH: usize = 1000;

fn bob() -> Address {
    Address::new("bob", 1).unwrap()
}

/// Percentile `p` (0 to 100) of `samples`, sorted in place.
fn percentile(samples: &mut [Duration], p: usize) -> Duration {
    samples.sort();
    let index = (samples.len().saturating_sub(1) * p) / 100;
    samples[index]
}

fn ms(d: Duration) -> String {
    format!("{:.3} ms", d.as_secs_f64() * 1e3)
}

/// Bob's store with `sessions` sessions at `path`: each peer (a session
/// layer record, not kept) starts a session with Bob's bundle and sends one
/// message, which Bob decrypts and commits in batches.
fn build(path: &Path, sessions: usize, rng: &mut ChaCha20Rng) {
    let started = Instant::now();
    let device = Device::create(path, &KEY, bob(), UNIX_EPOCH).unwrap();
    let bundle = PreKeyBundle::from_bytes(&device.prekey_bundle().unwrap()).unwrap();
    let mut made = 0;
    while made < sessions {
        let count = BUILD_BATCH.min(sessions - made);
        let messages: Vec<(Address, Vec<u8>)> = (made..made + count)
            .map(|i| {
                let address = Address::new(format!("peer-{i:06}"), 1).unwrap();
                let identity = IdentityKeyPair::generate(rng);
                let mut record = SessionRecord::new();
                record.initiate(rng, &identity, &address, &bundle).unwrap();
                (address, record.encrypt(rng, b"hello").unwrap())
            })
            .collect();
        let batch = device.decrypt_batch(&messages).unwrap();
        assert!(batch.results().iter().all(Result::is_ok), "every first message decrypts");
        device.commit_batch(batch).unwrap();
        made += count;
        if made % 10_000 == 0 {
            eprintln!("  {made} sessions, {:.0} s", started.elapsed().as_secs_f64());
        }
    }
}

/// A peer of Bob's kept in memory for the measurements.
struct Probe {
    address: Address,
    identity: IdentityKeyPair,
    prekeys: PreKeySet,
    record: SessionRecord,
}

struct Measured {
    open: Vec<Duration>,
    peers: (usize, Duration),
    delete: Duration,
    encrypt: Vec<Duration>,
    decrypt_commit: Vec<Duration>,
    bytes: u64,
}

/// One store under measurement: its device and its probes.
struct Subject {
    path: PathBuf,
    device: Device,
    probes: Vec<Probe>,
    measured: Measured,
}

impl Subject {
    /// Opens the store, and has four new peers (the probes) start sessions
    /// with Bob.
    fn new(path: &Path, rng: &mut ChaCha20Rng) -> Self {
        let device = Device::open(path, &KEY).unwrap();
        let bundle = PreKeyBundle::from_bytes(&device.prekey_bundle().unwrap()).unwrap();
        let probes = (0..4)
            .map(|i| {
                let address = Address::new(format!("probe-{i}-{}", std::process::id()), 1).unwrap();
                let identity = IdentityKeyPair::generate(rng);
                let mut record = SessionRecord::new();
                record.initiate(rng, &identity, &address, &bundle).unwrap();
                let wire = record.encrypt(rng, b"hello").unwrap();
                device.commit(device.decrypt(&address, &wire).unwrap()).unwrap();
                let prekeys = PreKeySet::new(rng, &identity, UNIX_EPOCH);
                Probe { address, identity, prekeys, record }
            })
            .collect();
        let measured = Measured {
            open: Vec::new(),
            peers: (0, Duration::ZERO),
            delete: Duration::ZERO,
            encrypt: Vec::new(),
            decrypt_commit: Vec::new(),
            bytes: 0,
        };
        Self { path: path.to_path_buf(), device, probes, measured }
    }

    /// One open of the store (by a second handle, dropped at once).
    fn open(&mut self) {
        let started = Instant::now();
        let device = Device::open(&self.path, &KEY).unwrap();
        self.measured.open.push(started.elapsed());
        drop(device);
    }

    /// One encryption to a probe, and one decryption + commit of its reply.
    fn exchange(&mut self, i: usize, rng: &mut ChaCha20Rng) {
        let probe = &mut self.probes[i % 4];
        let started = Instant::now();
        let wire =
            self.device.encrypt(&probe.address, b"a message of some sixty-four bytes, give or take a few..").unwrap();
        self.measured.encrypt.push(started.elapsed());
        // The probe reads Bob's message (so that its next one takes a DH
        // step now and then, as a conversation does).
        let pending =
            probe.record.decrypt(rng, &probe.identity, &probe.address, &bob(), &probe.prekeys, &wire).unwrap();
        probe.record.commit(pending).unwrap();
        let wire = probe.record.encrypt(rng, b"a message of some sixty-four bytes, give or take a few..").unwrap();
        let started = Instant::now();
        let pending = self.device.decrypt(&probe.address, &wire).unwrap();
        self.device.commit(pending).unwrap();
        self.measured.decrypt_commit.push(started.elapsed());
    }

    /// `peers`, `skipped_key_count` and `delete_session`, then the size.
    fn finish(mut self) -> Measured {
        let started = Instant::now();
        let listed = self.device.peers().unwrap().len();
        self.measured.peers = (listed, started.elapsed());
        assert_eq!(self.device.skipped_key_count(&self.probes[0].address).unwrap(), 0);
        let started = Instant::now();
        assert!(self.device.delete_session(&self.probes[0].address).unwrap());
        self.measured.delete = started.elapsed();
        drop(self.device);
        self.measured.bytes = std::fs::metadata(&self.path).unwrap().len();
        self.measured
    }
}

/// Measures both stores in alternation, call by call, so that the disk's
/// moods (its fsyncs dominate every call, and they vary by the minute on a
/// shared machine) fall on both alike: `opens` opens of each, then `calls`
/// exchanges with each.
fn measure(small: &Path, large: &Path, opens: usize, calls: usize, rng: &mut ChaCha20Rng) -> (Measured, Measured) {
    let mut small = Subject::new(small, rng);
    let mut large = Subject::new(large, rng);
    for _ in 0..opens {
        small.open();
        large.open();
    }
    for i in 0..calls {
        small.exchange(i, rng);
        large.exchange(i, rng);
    }
    (small.finish(), large.finish())
}

fn report(name: &str, sessions: usize, mut m: Measured) {
    let open_median = percentile(&mut m.open, 50);
    let open_max = percentile(&mut m.open, 100);
    println!(
        "{name}: {sessions} sessions, {} B on disk ({} B per session)",
        m.bytes,
        m.bytes / u64::try_from(sessions).unwrap().max(1)
    );
    println!("  open            median {}  max {}", ms(open_median), ms(open_max));
    println!(
        "  encrypt         p50 {}  p99 {}",
        ms(percentile(&mut m.encrypt, 50)),
        ms(percentile(&mut m.encrypt, 99))
    );
    println!(
        "  decrypt+commit  p50 {}  p99 {}",
        ms(percentile(&mut m.decrypt_commit, 50)),
        ms(percentile(&mut m.decrypt_commit, 99))
    );
    let (listed, took) = m.peers;
    println!(
        "  peers           {} for {listed} peers ({:.2} µs per peer)",
        ms(took),
        took.as_secs_f64() * 1e6 / f64::from(u32::try_from(listed.max(1)).unwrap())
    );
    println!("  delete_session  {}", ms(m.delete));
}

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("samizdat-scale-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn main() {
    let benching = std::env::args().any(|a| a == "--bench");
    let mut rng = ChaCha20Rng::from_seed([7; 32]);
    let sessions: usize = if benching {
        std::env::var("SAMIZDAT_SCALE_SESSIONS").ok().and_then(|s| s.parse().ok()).unwrap_or(100_000)
    } else {
        200
    };
    let (opens, calls) = if benching { (9, 3_000) } else { (2, 50) };

    // The large store: kept between runs when benching.
    let large_dir = if benching {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/samizdat-scale");
        std::fs::create_dir_all(&dir).unwrap();
        dir
    } else {
        scratch("large")
    };
    let large = large_dir.join(format!("bob-{sessions}.db"));
    if !large.exists() {
        eprintln!("building a store of {sessions} sessions at {}", large.display());
        let partial = large_dir.join(format!("bob-{sessions}.building.db"));
        let _ = std::fs::remove_file(&partial);
        build(&partial, sessions, &mut rng);
        std::fs::rename(&partial, &large).unwrap();
    }
    let small_dir = scratch("small");
    let small = small_dir.join("bob-10.db");
    build(&small, 10, &mut rng);

    // The measurements add sessions (the probes) to a copy, never to the
    // kept store. The copy is flushed to the disk first: its writeback
    // would otherwise slow the measured calls' fsyncs.
    let copy = small_dir.join("large-copy.db");
    std::fs::copy(&large, &copy).unwrap();
    std::fs::File::open(&copy).unwrap().sync_all().unwrap();
    let (small_measured, large_measured) = measure(&small, &copy, opens, calls, &mut rng);
    report("small", 10, small_measured);
    report("large", sessions, large_measured);
    std::fs::remove_dir_all(&small_dir).unwrap();
    if !benching {
        std::fs::remove_dir_all(&large_dir).unwrap();
    }
}
