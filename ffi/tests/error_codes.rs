//! The stable error codes, provoked through the Rust API: every scenario of
//! `error_codes.json` must report the code (and recovery) the file names.
//! The Kotlin (`ErrorCodesTest`) and Python (`test_error_codes.py`) tests run
//! the same scenarios through the bindings against the same file, so the
//! three languages agree code for code.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing, clippy::panic)]

use samizdat::store::StorageKey;
use std::time::UNIX_EPOCH;
use std::{
    collections::BTreeMap,
    io::{BufRead, BufReader},
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use samizdat::{
    ErrorKind,
    address::Address,
    device::{Device, DeviceError},
    limits::{MAX_GROUP_ID_LEN, MAX_PLAINTEXT_LEN, MAX_SKIP},
    store::SqliteBackend,
};

/// The cases of `error_codes.json`: scenario -> (code, recovery). The file
/// is flat and machine-written; a line holds one case.
fn cases() -> BTreeMap<String, (String, String)> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/error_codes.json");
    let text = std::fs::read_to_string(path).unwrap();
    let field = |line: &str, name: &str| -> String {
        let key = format!("\"{name}\": \"");
        let start = line.find(&key).unwrap_or_else(|| panic!("no {name} in {line}")) + key.len();
        line[start..].split('"').next().unwrap().to_owned()
    };
    text.lines()
        .filter(|line| line.contains("\"scenario\""))
        .map(|line| (field(line, "scenario"), (field(line, "code"), field(line, "recovery"))))
        .collect()
}

struct Dir(PathBuf);

impl Dir {
    fn new() -> Self {
        let path = std::env::temp_dir().join(format!("samizdat-error-codes-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).unwrap();
        Self(path)
    }
}

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn address(name: &str) -> Address {
    Address::new(name, 1).unwrap()
}

fn device(dir: &Dir, name: &str, key: u8) -> Device<SqliteBackend> {
    Device::create(
        dir.0.join(format!("{name}-{key}.db")),
        &StorageKey::from_bytes([key; 32]),
        address(name),
        UNIX_EPOCH,
    )
    .unwrap()
}

fn receive(to: &Device<SqliteBackend>, from: &str, wire: &[u8]) {
    to.commit(to.decrypt(&address(from), wire).unwrap()).unwrap();
}

/// Runs `scenario` and returns the error it ends with (with its text).
fn provoke(dir: &Dir, scenario: &str) -> (ErrorKind, String) {
    let failure = |result: Result<(), DeviceError>| {
        let error = result.expect_err(scenario);
        (error.kind(), error.to_string())
    };
    let alice = device(dir, "alice", 1);
    let bob = device(dir, "bob", 2);
    let carol = device(dir, "carol", 3);
    match scenario {
        "message_delivered_twice" => {
            alice.start_session(&bob.prekey_bundle().unwrap()).unwrap();
            let wire = alice.encrypt(&address("bob"), b"hello").unwrap();
            receive(&bob, "alice", &wire);
            failure(bob.decrypt(&address("alice"), &wire).map(drop))
        }
        "message_body_altered" => {
            alice.start_session(&bob.prekey_bundle().unwrap()).unwrap();
            let mut wire = alice.encrypt(&address("bob"), b"hello").unwrap();
            *wire.last_mut().unwrap() ^= 1;
            failure(bob.decrypt(&address("alice"), &wire).map(drop))
        }
        "message_past_the_skip_limit" => {
            alice.start_session(&bob.prekey_bundle().unwrap()).unwrap();
            let wire: Vec<Vec<u8>> =
                (0..=MAX_SKIP + 1).map(|i| alice.encrypt(&address("bob"), &i.to_be_bytes()).unwrap()).collect();
            // Only the last arrives: 2,001 earlier messages missing.
            let outcome = failure(bob.decrypt(&address("alice"), &wire[wire.len() - 1]).map(drop));
            // Nothing was consumed: once an earlier one arrives, it is within reach.
            receive(&bob, "alice", &wire[1]);
            receive(&bob, "alice", &wire[wire.len() - 1]);
            outcome
        }
        "encrypt_without_session" => failure(alice.encrypt(&address("bob"), b"hello").map(drop)),
        "peer_reinstalled" => {
            alice.start_session(&bob.prekey_bundle().unwrap()).unwrap();
            let reinstalled = device(dir, "bob", 4);
            let error = alice.start_session(&reinstalled.prekey_bundle().unwrap()).unwrap_err();
            let outcome = (error.kind(), error.to_string());
            // The app's decision, after the user verified the new key.
            let DeviceError::Session(samizdat::SessionError::UntrustedIdentity { identity }) = error else {
                panic!("not UntrustedIdentity: {error:?}")
            };
            alice.trust_identity(&address("bob"), identity).unwrap();
            alice.start_session(&reinstalled.prekey_bundle().unwrap()).unwrap();
            outcome
        }
        "safety_number_of_another_peer" => {
            alice.start_session(&bob.prekey_bundle().unwrap()).unwrap();
            alice.start_session(&carol.prekey_bundle().unwrap()).unwrap();
            let with_bob = alice.safety_number(&address("bob")).unwrap();
            let with_carol = alice.safety_number(&address("carol")).unwrap();
            let error = with_bob.compare_scanned(&with_carol.scannable()).unwrap_err();
            (error.kind(), error.to_string())
        }
        "bundle_signature_altered" => {
            let mut bundle = bob.prekey_bundle().unwrap();
            *bundle.last_mut().unwrap() ^= 1;
            failure(alice.start_session(&bundle).map(drop))
        }
        "group_message_before_its_chain" | "group_message_of_unknown_group" => {
            alice.start_session(&bob.prekey_bundle().unwrap()).unwrap();
            receive(&bob, "alice", &alice.encrypt(&address("bob"), b"hello").unwrap());
            alice.create_group(b"group", &[address("bob")]).unwrap();
            bob.create_group(b"group", &[address("alice")]).unwrap();
            let sent = alice.group_encrypt(b"group", b"to the group").unwrap();
            let to = if scenario == "group_message_before_its_chain" { &bob } else { &carol };
            failure(to.decrypt(&address("alice"), &sent.message).map(drop))
        }
        "commit_after_session_changed" => {
            alice.start_session(&bob.prekey_bundle().unwrap()).unwrap();
            let first = alice.encrypt(&address("bob"), b"one").unwrap();
            let second = alice.encrypt(&address("bob"), b"two").unwrap();
            let pending_first = bob.decrypt(&address("alice"), &first).unwrap();
            receive(&bob, "alice", &second);
            failure(bob.commit(pending_first).map(drop))
        }
        "store_locked_by_another_connection" => {
            alice.start_session(&bob.prekey_bundle().unwrap()).unwrap();
            let path = dir.0.join("alice-1.db");
            let outcome = with_write_lock(&path, || failure(alice.encrypt(&address("bob"), b"later").map(drop)));
            // The lock released, the same call goes through.
            alice.encrypt(&address("bob"), b"later").unwrap();
            outcome
        }
        "open_with_wrong_key" => {
            drop(alice);
            failure(Device::open(dir.0.join("alice-1.db"), &StorageKey::from_bytes([9; 32])).map(drop))
        }
        "open_a_file_that_is_not_a_store" => {
            let path = dir.0.join("junk.db");
            std::fs::write(&path, (0..4096u32).map(|i| (i * 7 % 251) as u8).collect::<Vec<_>>()).unwrap();
            failure(Device::open(&path, &StorageKey::from_bytes([1; 32])).map(drop))
        }
        "plaintext_too_large" => {
            alice.start_session(&bob.prekey_bundle().unwrap()).unwrap();
            failure(alice.encrypt(&address("bob"), &vec![0; MAX_PLAINTEXT_LEN + 1]).map(drop))
        }
        "group_id_too_long" => failure(alice.create_group(&[7; MAX_GROUP_ID_LEN + 1], &[address("bob")])),
        other => panic!("a scenario this test does not know: {other}"),
    }
}

/// Runs `during` while another connection (a Python process: `python3` is
/// on the path of the test command) holds the write lock of the SQLite
/// database at `path`.
fn with_write_lock<T>(path: &Path, during: impl FnOnce() -> T) -> T {
    let script = "import sqlite3, sys\n\
                  c = sqlite3.connect(sys.argv[1], isolation_level=None)\n\
                  c.execute('BEGIN EXCLUSIVE')\n\
                  print('locked', flush=True)\n\
                  sys.stdin.readline()\n\
                  c.execute('ROLLBACK')\n";
    let mut child = Command::new("python3")
        .args(["-c", script, path.to_str().unwrap()])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("python3");
    let mut line = String::new();
    BufReader::new(child.stdout.as_mut().unwrap()).read_line(&mut line).unwrap();
    assert_eq!(line.trim(), "locked");
    let result = during();
    drop(child.stdin.take());
    assert!(child.wait().unwrap().success());
    result
}

#[test]
fn every_scenario_reports_its_code() {
    let cases = cases();
    assert_eq!(cases.len(), ErrorKind::ALL.len(), "one scenario per code");
    let mut seen = Vec::new();
    for (scenario, (code, recovery)) in &cases {
        let dir = Dir::new();
        let (kind, message) = provoke(&dir, scenario);
        assert_eq!(kind.code(), code, "{scenario}: {message}");
        assert_eq!(kind.recovery().code(), recovery, "{scenario}");
        assert!(!message.is_empty(), "{scenario}: an empty message");
        seen.push(kind);
    }
    seen.sort();
    assert_eq!(seen, ErrorKind::ALL.to_vec(), "every code is provoked once");
}
