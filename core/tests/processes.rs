//! Several processes on one store (issue 16): two processes open Bob's SQLite
//! store at once and both decrypt and encrypt on it, thousands of calls,
//! while the parent kills one of them with SIGKILL at random points and
//! starts it again. SQLite serializes them (WAL, every write one
//! `BEGIN IMMEDIATE` transaction conditional on the rows it read, a 5 s busy
//! timeout). Checked: no call surfaces `store_busy` to the app, every message
//! is committed exactly once and none is lost, no key is used twice, and the
//! store passes SQLite's integrity check. The lock waits of the calls (from
//! `SqliteBackend::lock_wait`, sampled around each call) are printed, p99
//! and maximum, never asserted.
//!
//! The children are this test binary itself, re-executed on the test
//! [`process_child`] (a no-op in a normal run) with an environment variable
//! naming the work directory. `--nocapture` prints the numbers.
//!
//! - The parent makes Alice (in memory) and Bob (`bob.db`), a session both
//!   ways, then encrypts `SAMIZDAT_PROCESS_MESSAGES` messages (1,000 by
//!   default) from Alice into `inbox/`, a file each: the server's queue.
//! - Two children loop: claim a message (rename it from `inbox/` into their
//!   own `claimed-<slot>/`), decrypt it, store the plaintext as an app does
//!   (a line in their log, synced), commit, record the commit (synced),
//!   delete the claimed file, then encrypt a reply to Alice into `outbox/`
//!   (written, synced, renamed into place). A stale pending (the other
//!   process wrote the session between the decryption and the commit) is
//!   decrypted again; a duplicate (a kill after the commit, before its
//!   record) is logged as such.
//! - The parent kills a child (`SAMIZDAT_PROCESS_KILLS` times, 24 by
//!   default) each time the inbox falls below a random mark, after a random
//!   delay, and some right after their start (in the store's opening, its
//!   recovery of the log and its scrub); moves its claimed messages back to
//!   the inbox (the server delivers them again); and starts it again. The
//!   seed (`SAMIZDAT_PROCESS_SEED`) is printed. The work directory, with
//!   the children's logs (`W` lines: each call's lock wait), is kept when a
//!   run fails, or with `SAMIZDAT_PROCESS_KEEP` set.
//!
//! At the end, from the children's logs: a message is committed at most once,
//! never decrypted after its commit, and one without a commit record was
//! found a duplicate only after a process was killed between decrypting it
//! and recording a commit (the commit landed, its record did not);
//! reopened, Bob's store finds every message a duplicate (no commit was lost,
//! nor overwritten by a stale one). Alice reads every reply, once each, and
//! the conversation goes on both ways. A run whose inbox stops moving for a
//! minute fails (a wedged store), and so does a child that exits by itself.
//!
//! Key reuse is checked on the ciphertexts: a body is
//! `ChaCha20-Poly1305(padded plaintext)`, so `body XOR padded(plaintext)` is
//! the keystream of its message key and nonce, and no two of Bob's may be
//! equal. Two processes encrypting from one state of Bob's session (a lost
//! update) would give two replies one counter: their keys are salted by
//! their header nonces, so their keystreams differ, but Alice refuses the
//! second (`Rollback`). Both checks are first shown to catch what they look
//! for: a ciphertext sent twice, and a second device on a copy of Bob's
//! store.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic,
    clippy::cast_possible_truncation
)]

mod support;

use samizdat::store::StorageKey;
use std::{
    collections::{BTreeMap, HashMap, HashSet},
    fs::{self, File, OpenOptions},
    io::{ErrorKind as IoErrorKind, Write as _},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use samizdat::{
    DecryptError, ErrorKind, SessionError,
    address::Address,
    device::{Device, DeviceError},
    store::{Backend, MemoryBackend, SqliteBackend},
    wire::Message,
};

/// Set in a child process: the work directory.
const DIR_ENV: &str = "SAMIZDAT_PROCESS_DIR";
/// The child's slot (which `claimed-<slot>/` is its own), in a child.
const SLOT_ENV: &str = "SAMIZDAT_PROCESS_SLOT";
/// The child's number, unique in a run (its log's name), in a child.
const INCARNATION_ENV: &str = "SAMIZDAT_PROCESS_INCARNATION";
const MESSAGES_ENV: &str = "SAMIZDAT_PROCESS_MESSAGES";
const KILLS_ENV: &str = "SAMIZDAT_PROCESS_KILLS";
const SEED_ENV: &str = "SAMIZDAT_PROCESS_SEED";
/// Set: the work directory is kept after a run that passed (a failed one
/// always keeps it), for its logs.
const KEEP_ENV: &str = "SAMIZDAT_PROCESS_KEEP";
const DEFAULT_MESSAGES: usize = 1_000;
const DEFAULT_KILLS: usize = 24;
/// Processes on Bob's store at once.
const CHILDREN: usize = 2;
const ALICE_KEY: StorageKey = StorageKey::from_bytes([0xa1; 32]);
const BOB_KEY: StorageKey = StorageKey::from_bytes([0xb0; 32]);
/// The longest delay of a kill past its mark, and of one right after a start.
const MAX_KILL_DELAY_MS: u64 = 30;
const MAX_EARLY_KILL_DELAY_MS: u64 = 15;
/// One kill in this many comes right after the previous one's restart.
const EARLY_KILL_ONE_IN: u64 = 4;
/// The test fails if the inbox does not move for this long.
const STALL_TIMEOUT: Duration = Duration::from_secs(60);
/// How often the parent looks at the inbox and the children.
const POLL: Duration = Duration::from_millis(5);

fn addr(name: &str) -> Address {
    Address::new(name, 1).unwrap()
}

fn env_number<T: std::str::FromStr>(name: &str) -> Option<T> {
    let value = std::env::var(name).ok()?;
    Some(value.parse().unwrap_or_else(|_| panic!("{name}={value} is not a number")))
}

/// Nanoseconds since the epoch: orders the records of all processes.
fn now_ns() -> u128 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_nanos()
}

fn message_name(id: usize) -> String {
    format!("{id:06}")
}

fn message_text(id: usize) -> Vec<u8> {
    format!("alice {id:06}").into_bytes()
}

fn reply_text(id: usize, incarnation: u32) -> Vec<u8> {
    format!("bob {id:06} {incarnation:04}").into_bytes()
}

/// A plaintext and the ciphertext it was sent as.
type Sent = (Vec<u8>, Vec<u8>);

// ---------------------------------------------------------------- checkers

/// The keystream of a message: its body XOR the padded plaintext (64 bytes:
/// the smallest bucket).
fn keystream(wire: &[u8], plaintext: &[u8]) -> Vec<u8> {
    let body = match Message::from_bytes(wire).unwrap() {
        Message::Ratchet(m) => m.body().to_vec(),
        Message::PreKey(p) => p.message().body().to_vec(),
    };
    let mut padded = plaintext.to_vec();
    padded.push(0x80);
    padded.resize(64, 0);
    assert!(body.len() >= 64 + 16, "a body is at least one bucket and a tag");
    body.iter().zip(&padded).map(|(b, p)| b ^ p).collect()
}

/// No two messages share a key and nonce.
fn keystreams_distinct(sent: &[Sent]) -> Result<(), String> {
    let mut seen = HashMap::new();
    for (n, (text, wire)) in sent.iter().enumerate() {
        if let Some(first) = seen.insert(keystream(wire, text), n) {
            return Err(format!("messages {first} and {n} ({:?}) share a keystream", String::from_utf8_lossy(text)));
        }
    }
    Ok(())
}

/// The receiver decrypts and commits every message, in the order given, to
/// what was sent.
fn reads_all<B: Backend>(receiver: &Device<B>, from: &Address, sent: &[Sent]) -> Result<(), String> {
    for (n, (text, wire)) in sent.iter().enumerate() {
        let what = || format!("message {n} ({:?})", String::from_utf8_lossy(text));
        let pending = receiver.decrypt(from, wire).map_err(|e| format!("{}: {e:?}", what()))?;
        if pending.plaintext() != text.as_slice() {
            return Err(format!("{} decrypted to {:?}", what(), String::from_utf8_lossy(pending.plaintext())));
        }
        receiver.commit(pending).map_err(|e| format!("{}: commit: {e:?}", what()))?;
    }
    Ok(())
}

/// Alice starts a session with Bob, and each reads a message of the other.
/// Returns Bob's message.
fn handshake<A: Backend, B: Backend>(alice: &Device<A>, bob: &Device<B>) -> Sent {
    alice.start_session(&bob.prekey_bundle().unwrap()).unwrap();
    let hello = alice.encrypt(bob.address(), b"hello").unwrap();
    reads_all(bob, alice.address(), &[(b"hello".to_vec(), hello)]).unwrap();
    let hi = (b"hi".to_vec(), bob.encrypt(alice.address(), b"hi").unwrap());
    reads_all(alice, bob.address(), std::slice::from_ref(&hi)).unwrap();
    hi
}

/// The checks of the run catch a ciphertext sent twice (one key and nonce
/// used twice) and two devices encrypting from one state of Bob's session.
fn checkers_catch_what_they_look_for() {
    let alice = Device::create_in(MemoryBackend::new(), &ALICE_KEY, addr("alice"), UNIX_EPOCH).unwrap();
    let bob = Device::create_in(MemoryBackend::new(), &BOB_KEY, addr("bob"), UNIX_EPOCH).unwrap();
    let hi = handshake(&alice, &bob);

    let twice = [hi.clone(), hi];
    assert!(keystreams_distinct(&twice).is_err(), "a ciphertext sent twice was not caught");
    let result = reads_all(&alice, bob.address(), &twice);
    assert!(result.as_ref().is_err_and(|e| e.contains("Duplicate")), "{result:?}");

    let copy = Device::open_in(support::copy_of(bob.backend()), &BOB_KEY).unwrap();
    let one_state = [
        (b"first".to_vec(), bob.encrypt(alice.address(), b"first").unwrap()),
        (b"second".to_vec(), copy.encrypt(alice.address(), b"second").unwrap()),
    ];
    // Salted by their header nonces: distinct keystreams, one counter.
    keystreams_distinct(&one_state).unwrap();
    let result = reads_all(&alice, bob.address(), &one_state);
    assert!(result.as_ref().is_err_and(|e| e.contains("Rollback")), "{result:?}");
}

// ---------------------------------------------------------------- the child

/// A child's log: one line per record, `<ns> <record>`, appended (a kill
/// leaves every line written, and at most the last one cut short).
struct Log(File);

impl Log {
    fn record(&mut self, record: &str) {
        self.0.write_all(format!("{} {record}\n", now_ns()).as_bytes()).unwrap();
    }

    /// A record that must be on disk before the next step, as an app's.
    fn durable(&mut self, record: &str) {
        self.record(record);
        self.0.sync_data().unwrap();
    }
}

fn is_busy(e: &DeviceError) -> bool {
    e.kind() == ErrorKind::StoreBusy
}

fn is_duplicate(e: &DeviceError) -> bool {
    matches!(e, DeviceError::Session(SessionError::Decrypt(DecryptError::Duplicate { .. })))
}

/// Runs one call of `bob`'s, recording the time it waited for the write lock
/// (`W <call> <ns>`) and a `store_busy` it surfaced (`B <call> <id> <error>`).
fn timed<T>(
    bob: &Device<SqliteBackend>,
    log: &mut Log,
    call: &str,
    id: usize,
    f: impl FnOnce() -> Result<T, DeviceError>,
) -> Result<T, DeviceError> {
    let before = bob.backend().lock_wait().unwrap();
    let result = f();
    let waited = bob.backend().lock_wait().unwrap().saturating_sub(before);
    log.record(&format!("W {call} {}", waited.as_nanos()));
    if let Err(e) = &result
        && is_busy(e)
    {
        log.durable(&format!("B {call} {id} {e:?}"));
    }
    result
}

/// Claims the next message: ids from `cursor` on, then (past the last) any
/// left in the inbox (delivered again after a kill).
fn claim(inbox: &Path, claimed: &Path, cursor: &mut usize, messages: usize) -> Option<usize> {
    let try_claim = |id: usize| match fs::rename(inbox.join(message_name(id)), claimed.join(message_name(id))) {
        Ok(()) => true,
        // The other child took it.
        Err(e) if e.kind() == IoErrorKind::NotFound => false,
        Err(e) => panic!("claiming {id}: {e}"),
    };
    while *cursor < messages {
        let id = *cursor;
        *cursor += 1;
        if try_claim(id) {
            return Some(id);
        }
    }
    let mut left: Vec<usize> =
        fs::read_dir(inbox).unwrap().map(|e| e.unwrap().file_name().to_str().unwrap().parse().unwrap()).collect();
    left.sort_unstable();
    left.into_iter().find(|&id| try_claim(id))
}

/// The child's entry point: a no-op in a normal test run.
#[test]
fn process_child() {
    let Some(dir) = std::env::var_os(DIR_ENV) else { return };
    let dir = PathBuf::from(dir);
    let slot: usize = env_number(SLOT_ENV).expect("the slot");
    let incarnation: u32 = env_number(INCARNATION_ENV).expect("the incarnation");
    let messages: usize = env_number(MESSAGES_ENV).expect("the number of messages");
    let log_path = dir.join("log").join(format!("{incarnation:04}"));
    let mut log = Log(OpenOptions::new().create(true).append(true).open(log_path).unwrap());
    let (inbox, claimed, outbox) = (dir.join("inbox"), dir.join(format!("claimed-{slot}")), dir.join("outbox"));
    let alice = addr("alice");

    let bob = loop {
        match Device::open(dir.join("bob.db"), &BOB_KEY) {
            Ok(bob) => break bob,
            Err(e) if is_busy(&e) => log.durable(&format!("B open 0 {e:?}")),
            Err(e) => panic!("child {incarnation}: open: {e:?}"),
        }
    };
    log.record("O");

    let mut cursor = 0;
    loop {
        // Checked before the inbox: once told to stop, nothing more comes.
        let stopping = dir.join("stop").exists();
        let Some(id) = claim(&inbox, &claimed, &mut cursor, messages) else {
            if stopping {
                return;
            }
            std::thread::sleep(Duration::from_millis(2));
            continue;
        };
        let file = claimed.join(message_name(id));
        let wire = fs::read(&file).unwrap();
        let committed = loop {
            let pending = match timed(&bob, &mut log, "decrypt", id, || bob.decrypt(&alice, &wire)) {
                Ok(pending) => pending,
                Err(e) if is_duplicate(&e) => {
                    log.durable(&format!("U {id}"));
                    break false;
                }
                Err(e) if is_busy(&e) => continue,
                Err(e) => panic!("child {incarnation}: decrypt {id}: {e:?}"),
            };
            assert_eq!(pending.plaintext(), message_text(id), "child {incarnation}: message {id}");
            // The app stores the plaintext before it commits.
            log.durable(&format!("D {id} {}", String::from_utf8_lossy(pending.plaintext()).replace(' ', "_")));
            match timed(&bob, &mut log, "commit", id, || bob.commit(pending)) {
                Ok(outgoing) => {
                    assert!(outgoing.is_empty(), "child {incarnation}: commit {id} returned {outgoing:?}");
                    log.durable(&format!("C {id}"));
                    break true;
                }
                Err(DeviceError::Session(SessionError::StalePending)) => log.record(&format!("S {id}")),
                Err(e) if is_busy(&e) => {}
                Err(e) => panic!("child {incarnation}: commit {id}: {e:?}"),
            }
        };
        fs::remove_file(&file).unwrap();
        if committed {
            let text = reply_text(id, incarnation);
            let wire = loop {
                match timed(&bob, &mut log, "encrypt", id, || bob.encrypt(&alice, &text)) {
                    Ok(wire) => break wire,
                    Err(e) if is_busy(&e) => {}
                    Err(e) => panic!("child {incarnation}: encrypt a reply to {id}: {e:?}"),
                }
            };
            // Named by the time it was made: Alice reads them about in order.
            let name = format!("{:020}-{id:06}-{incarnation:04}", now_ns());
            let temporary = outbox.join(format!("tmp-{name}"));
            let mut out = File::create(&temporary).unwrap();
            out.write_all(&wire).unwrap();
            out.sync_data().unwrap();
            fs::rename(&temporary, outbox.join(name)).unwrap();
        }
    }
}

// --------------------------------------------------------------- the parent

/// A small deterministic generator (splitmix64).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// A number in `0..bound` (`bound` > 0).
    fn below(&mut self, bound: u64) -> u64 {
        self.next() % bound
    }
}

/// The children, one per slot, started again after each kill.
struct Fleet {
    dir: PathBuf,
    messages: usize,
    /// The running child of each slot, with its incarnation.
    children: Vec<Option<(u32, Child)>>,
    incarnations: u32,
    killed: HashSet<u32>,
}

impl Fleet {
    fn start(dir: &Path, messages: usize) -> Self {
        let mut fleet =
            Self { dir: dir.to_path_buf(), messages, children: Vec::new(), incarnations: 0, killed: HashSet::new() };
        for slot in 0..CHILDREN {
            let child = fleet.spawn(slot);
            fleet.children.push(Some(child));
        }
        fleet
    }

    fn spawn(&mut self, slot: usize) -> (u32, Child) {
        let incarnation = self.incarnations;
        self.incarnations += 1;
        let child = Command::new(std::env::current_exe().unwrap())
            .args(["process_child", "--exact", "--nocapture", "--test-threads=1"])
            .env(DIR_ENV, &self.dir)
            .env(SLOT_ENV, slot.to_string())
            .env(INCARNATION_ENV, incarnation.to_string())
            .env(MESSAGES_ENV, self.messages.to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        (incarnation, child)
    }

    /// Fails if a child exited before it was told to stop (a panic: its
    /// message is on stderr).
    fn check_running(&mut self) {
        for (incarnation, child) in self.children.iter_mut().flatten() {
            if let Some(status) = child.try_wait().unwrap() {
                panic!("child {incarnation} exited before it was told to stop: {status}");
            }
        }
    }

    /// Waits until at most `mark` messages are left in the inbox.
    fn wait_for_inbox(&mut self, mark: usize) {
        let mut last = (usize::MAX, Instant::now());
        loop {
            self.check_running();
            let left = inbox_len(&self.dir);
            if left <= mark {
                return;
            }
            if left != last.0 {
                last = (left, Instant::now());
            }
            assert!(
                last.1.elapsed() < STALL_TIMEOUT,
                "{left} messages left in the inbox, for {STALL_TIMEOUT:?} (the children's logs: {})",
                self.dir.join("log").display()
            );
            std::thread::sleep(POLL);
        }
    }

    /// Kills the child of `slot` (SIGKILL), delivers its claimed messages
    /// again, and starts it again.
    fn kill_and_restart(&mut self, slot: usize) {
        let (incarnation, mut child) = self.children[slot].take().unwrap();
        child.kill().unwrap();
        let status = child.wait().unwrap();
        // A signal leaves no exit code; a child that exited by itself does.
        assert!(status.code().is_none(), "child {incarnation} exited before it was killed: {status}");
        self.killed.insert(incarnation);
        let claimed = self.dir.join(format!("claimed-{slot}"));
        for entry in fs::read_dir(&claimed).unwrap() {
            let name = entry.unwrap().file_name();
            fs::rename(claimed.join(&name), self.dir.join("inbox").join(&name)).unwrap();
        }
        let child = self.spawn(slot);
        self.children[slot] = Some(child);
    }

    /// Tells the children to stop once the inbox is empty, and waits for them.
    fn finish(&mut self) {
        File::create(self.dir.join("stop")).unwrap();
        let mut last = (usize::MAX, Instant::now());
        for slot in 0..CHILDREN {
            while let Some((incarnation, child)) = &mut self.children[slot] {
                if let Some(status) = child.try_wait().unwrap() {
                    assert!(status.success(), "child {incarnation} failed: {status}");
                    self.children[slot] = None;
                    break;
                }
                let left = inbox_len(&self.dir);
                if left != last.0 {
                    last = (left, Instant::now());
                }
                assert!(last.1.elapsed() < STALL_TIMEOUT, "the children did not finish ({left} messages left)");
                std::thread::sleep(POLL);
            }
        }
    }
}

impl Drop for Fleet {
    /// A failed parent leaves no child running.
    fn drop(&mut self) {
        for (_, mut child) in self.children.iter_mut().filter_map(Option::take) {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn inbox_len(dir: &Path) -> usize {
    fs::read_dir(dir.join("inbox")).unwrap().count()
}

/// One line of a child's log.
struct Record {
    at: u128,
    incarnation: u32,
    kind: String,
    fields: Vec<String>,
}

fn read_logs(dir: &Path) -> Vec<Record> {
    let mut records = Vec::new();
    for entry in fs::read_dir(dir.join("log")).unwrap() {
        let entry = entry.unwrap();
        let incarnation: u32 = entry.file_name().to_str().unwrap().parse().unwrap();
        let text = fs::read_to_string(entry.path()).unwrap();
        // A line cut short by a kill has no newline: left out.
        let complete = text.rfind('\n').map_or("", |end| &text[..end]);
        for line in complete.lines() {
            let mut fields = line.split(' ').map(str::to_owned);
            let at = fields.next().unwrap().parse().unwrap();
            let kind = fields.next().unwrap();
            records.push(Record { at, incarnation, kind, fields: fields.collect() });
        }
    }
    records.sort_by_key(|r| r.at);
    records
}

/// The value at quantile `q` of sorted `values`.
fn quantile(sorted: &[Duration], q: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = (q * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1_000.0
}

fn integrity_ok(path: &Path) {
    let check = rusqlite::Connection::open(path).unwrap();
    let result: String = check.query_row("PRAGMA integrity_check", [], |r| r.get(0)).unwrap();
    assert_eq!(result, "ok");
}

#[test]
fn several_processes_on_one_store() {
    let started = Instant::now();
    let messages: usize = env_number(MESSAGES_ENV).unwrap_or(DEFAULT_MESSAGES);
    let kills: usize = env_number(KILLS_ENV).unwrap_or(DEFAULT_KILLS);
    let seed: u64 = env_number(SEED_ENV).unwrap_or_else(|| now_ns() as u64);
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("processes-{}", std::process::id()));
    println!(
        "processes: seed {seed} (again: {SEED_ENV}={seed}), {messages} messages, {kills} kills, in {}",
        dir.display()
    );
    checkers_catch_what_they_look_for();

    let _ = fs::remove_dir_all(&dir);
    for sub in
        ["inbox", "outbox", "log"].into_iter().map(str::to_owned).chain((0..CHILDREN).map(|s| format!("claimed-{s}")))
    {
        fs::create_dir_all(dir.join(sub)).unwrap();
    }
    let bob_path = dir.join("bob.db");
    let alice = Device::create_in(MemoryBackend::new(), &ALICE_KEY, addr("alice"), UNIX_EPOCH).unwrap();
    let bob = Device::create(&bob_path, &BOB_KEY, addr("bob"), UNIX_EPOCH).unwrap();
    let hi = handshake(&alice, &bob);
    drop(bob);
    let sent: Vec<Sent> = (0..messages)
        .map(|id| {
            let text = message_text(id);
            let wire = alice.encrypt(&addr("bob"), &text).unwrap();
            fs::write(dir.join("inbox").join(message_name(id)), &wire).unwrap();
            (text, wire)
        })
        .collect();

    // The run: a kill when the inbox falls below each mark (from the top),
    // or right after the last restart.
    let mut rng = Rng(seed);
    let low = (messages / 50) as u64;
    let span = (messages as u64 * 96 / 100).max(1);
    let mut marks: Vec<usize> = (0..kills).map(|_| (low + rng.below(span)) as usize).collect();
    marks.sort_unstable_by(|a, b| b.cmp(a));
    let mut fleet = Fleet::start(&dir, messages);
    let mut early_kills = 0;
    let mut last_slot = 0;
    for (n, mark) in marks.into_iter().enumerate() {
        let slot = if n > 0 && rng.below(EARLY_KILL_ONE_IN) == 0 {
            early_kills += 1;
            std::thread::sleep(Duration::from_millis(rng.below(MAX_EARLY_KILL_DELAY_MS)));
            last_slot
        } else {
            fleet.wait_for_inbox(mark);
            std::thread::sleep(Duration::from_millis(rng.below(MAX_KILL_DELAY_MS)));
            rng.below(CHILDREN as u64) as usize
        };
        fleet.check_running();
        fleet.kill_and_restart(slot);
        last_slot = slot;
    }
    fleet.finish();
    let killed = fleet.killed.clone();
    let incarnations = fleet.incarnations;
    drop(fleet);
    assert_eq!(inbox_len(&dir), 0, "messages left in the inbox");
    for slot in 0..CHILDREN {
        assert_eq!(fs::read_dir(dir.join(format!("claimed-{slot}"))).unwrap().count(), 0, "claimed, never done");
    }

    // The logs: no store_busy; each message committed exactly once.
    let records = read_logs(&dir);
    let busy: Vec<String> = records
        .iter()
        .filter(|r| r.kind == "B")
        .map(|r| format!("child {}: {}", r.incarnation, r.fields.join(" ")))
        .collect();
    assert!(
        busy.is_empty(),
        "store_busy reached the app {} times:\n{}",
        busy.len(),
        busy[..busy.len().min(20)].join("\n")
    );
    let mut by_id: BTreeMap<usize, Vec<&Record>> = BTreeMap::new();
    for record in records.iter().filter(|r| ["D", "C", "U", "S"].contains(&r.kind.as_str())) {
        by_id.entry(record.fields[0].parse().unwrap()).or_default().push(record);
    }
    let mut duplicates = 0;
    let mut committed_by: HashMap<usize, u32> = HashMap::new();
    for id in 0..messages {
        let events = by_id.get(&id).map_or(&[][..], Vec::as_slice);
        let history =
            || events.iter().map(|r| format!("{} by {}", r.kind, r.incarnation)).collect::<Vec<_>>().join(", ");
        let commits: Vec<&&Record> = events.iter().filter(|r| r.kind == "C").collect();
        assert!(commits.len() <= 1, "message {id} committed {} times: {}", commits.len(), history());
        let mut done = false;
        // Each process's last record of the message so far: a process killed
        // after a decryption (`D`) may have committed it, its record lost.
        let mut last: HashMap<u32, &str> = HashMap::new();
        for record in events {
            match record.kind.as_str() {
                "D" => assert!(!done, "message {id} decrypted after its commit: {}", history()),
                "C" => done = true,
                "U" => {
                    let maybe_committed =
                        last.iter().any(|(incarnation, kind)| *kind == "D" && killed.contains(incarnation));
                    assert!(done || maybe_committed, "message {id} a duplicate, never committed: {}", history());
                    duplicates += 1;
                    done = true;
                }
                _ => {}
            }
            last.insert(record.incarnation, record.kind.as_str());
        }
        assert!(done, "message {id} never committed: {}", history());
        if let Some(commit) = commits.first() {
            committed_by.insert(id, commit.incarnation);
        }
    }

    // Bob's replies: one per commit at most (a kill may lose one), each
    // after its commit, all read by Alice, no keystream twice.
    let mut names: Vec<String> = fs::read_dir(dir.join("outbox"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|name| !name.starts_with("tmp-"))
        .collect();
    names.sort();
    let mut replied = HashSet::new();
    let mut replies = Vec::new();
    for name in &names {
        let mut parts = name.split('-').skip(1).map(|p| p.parse::<u32>().unwrap());
        let (id, incarnation) = (parts.next().unwrap() as usize, parts.next().unwrap());
        assert!(replied.insert(id), "two replies to message {id}");
        assert_eq!(committed_by.get(&id), Some(&incarnation), "reply {name} by a process that did not commit it");
        replies.push((reply_text(id, incarnation), fs::read(dir.join("outbox").join(name)).unwrap()));
    }
    assert!(replies.len() + kills >= messages, "{} replies to {messages} messages, with {kills} kills", replies.len());
    let mut bob_sent = vec![hi];
    bob_sent.extend(replies.iter().cloned());
    keystreams_distinct(&bob_sent).unwrap();
    reads_all(&alice, &addr("bob"), &replies).unwrap();

    // Bob's store, reopened: every message a duplicate, and the
    // conversation goes on.
    let bob = Device::open(&bob_path, &BOB_KEY).unwrap();
    for (id, (_, wire)) in sent.iter().enumerate() {
        let result = bob.decrypt(alice.address(), wire);
        assert!(result.as_ref().is_err_and(is_duplicate), "message {id} again: {result:?}");
    }
    let after = (b"after".to_vec(), bob.encrypt(alice.address(), b"after").unwrap());
    reads_all(&alice, bob.address(), &[after]).unwrap();
    let still = (b"still here".to_vec(), alice.encrypt(bob.address(), b"still here").unwrap());
    reads_all(&bob, alice.address(), &[still]).unwrap();
    drop(bob);
    integrity_ok(&bob_path);

    // The numbers.
    let mut waits = Vec::new();
    let mut calls: BTreeMap<&str, usize> = BTreeMap::new();
    for record in records.iter().filter(|r| r.kind == "W") {
        *calls.entry(record.fields[0].as_str()).or_default() += 1;
        waits.push(Duration::from_nanos(record.fields[1].parse().unwrap()));
    }
    waits.sort_unstable();
    let stale = records.iter().filter(|r| r.kind == "S").count();
    let opened = records.iter().filter(|r| r.kind == "O").count();
    println!(
        "processes: {} calls ({}) by {incarnations} processes ({opened} opened the store), {kills} kills \
         ({early_kills} right after a start); {stale} stale pendings decrypted again, {duplicates} duplicates \
         after a kill, {} replies ({} lost to kills); lock wait per call: p99 {:.3} ms, max {:.3} ms ({} calls \
         waited over 1 ms); {:.1} s",
        waits.len(),
        calls.iter().map(|(call, n)| format!("{n} {call}")).collect::<Vec<_>>().join(", "),
        replies.len(),
        messages - replies.len(),
        ms(quantile(&waits, 0.99)),
        ms(waits.last().copied().unwrap_or_default()),
        waits.iter().filter(|w| **w > Duration::from_millis(1)).count(),
        started.elapsed().as_secs_f64(),
    );
    if std::env::var_os(KEEP_ENV).is_none() {
        fs::remove_dir_all(&dir).unwrap();
    }
}
