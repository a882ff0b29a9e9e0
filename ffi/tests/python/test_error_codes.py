"""The stable error codes through the Python bindings: every scenario of ffi/tests/error_codes.json.

Each scenario provokes one failure through the public API and returns the SamizdatError it raised;
the test checks that the error is the variant named by the file's code, reports that code and the
file's recovery, and has a readable message. The Kotlin test (ErrorCodesTest.kt) runs the same
scenarios: the two languages must agree with the file, code for code.
"""

import gc
import json
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

import samizdat
from samizdat import Address, Device, ErrorKind, SamizdatError

CASES = json.loads((Path(__file__).resolve().parent.parent / "error_codes.json").read_text())["cases"]

KEYS = {"alice": bytes([1] * 32), "bob": bytes([2] * 32), "carol": bytes([3] * 32)}
GROUP = b"reading group"
# core/src/limits.rs: MAX_PLAINTEXT_LEN (240 KiB) and the longest group id (MAX_GROUP_ID_LEN).
MAX_PLAINTEXT_LEN = 240 * 1024
MAX_GROUP_ID_LEN = 64
# core/src/limits.rs: MAX_SKIP, the most message keys one gap may skip.
MAX_SKIP = 2000


def device(tmp_path, name, file=None):
    """A new device `name`/1 in its own store (`file`.db, by default `name`.db)."""
    return Device.create(str(tmp_path / f"{file or name}.db"), KEYS[name], name, 1, 0)


def receive(to, sender, wire):
    """Decrypt, "store", commit: what an app does with each message."""
    pending = to.decrypt(sender, wire)
    plaintext = pending.plaintext()
    to.commit(pending)
    return plaintext


def raised(call):
    """The SamizdatError that `call` raised; the test fails if it raised nothing."""
    try:
        call()
    except SamizdatError as error:
        return error
    pytest.fail("the call did not fail")


def flip_last_bit(data):
    return data[:-1] + bytes([data[-1] ^ 0x01])


def message_delivered_twice(tmp_path):
    alice, bob = device(tmp_path, "alice"), device(tmp_path, "bob")
    alice.start_session(bob.prekey_bundle())
    wire = alice.encrypt(bob.address(), b"once")
    assert receive(bob, alice.address(), wire) == b"once"
    return raised(lambda: bob.decrypt(alice.address(), wire))


def message_body_altered(tmp_path):
    alice, bob = device(tmp_path, "alice"), device(tmp_path, "bob")
    alice.start_session(bob.prekey_bundle())
    wire = alice.encrypt(bob.address(), b"genuine")
    # The last byte is the body's tag: the header still opens, the body does not.
    error = raised(lambda: bob.decrypt(alice.address(), flip_last_bit(wire)))
    # Nothing was consumed: the genuine message decrypts.
    assert receive(bob, alice.address(), wire) == b"genuine"
    return error


def message_past_the_skip_limit(tmp_path):
    alice, bob = device(tmp_path, "alice"), device(tmp_path, "bob")
    alice.start_session(bob.prekey_bundle())
    wire = [alice.encrypt(bob.address(), i.to_bytes(4, "big")) for i in range(MAX_SKIP + 2)]
    # Only the last arrives: 2,001 earlier messages are missing.
    error = raised(lambda: bob.decrypt(alice.address(), wire[-1]))
    # Nothing was consumed: once an earlier one arrives, it is within reach.
    assert receive(bob, alice.address(), wire[1]) == (1).to_bytes(4, "big")
    assert receive(bob, alice.address(), wire[-1]) == (MAX_SKIP + 1).to_bytes(4, "big")
    return error


def encrypt_without_session(tmp_path):
    alice = device(tmp_path, "alice")
    error = raised(lambda: alice.encrypt(Address(user_id="bob", device_id=1), b"hello?"))
    assert not alice.has_session(Address(user_id="bob", device_id=1))
    return error


def peer_reinstalled(tmp_path):
    alice, bob = device(tmp_path, "alice"), device(tmp_path, "bob")
    bob_address = alice.start_session(bob.prekey_bundle())
    assert receive(bob, alice.address(), alice.encrypt(bob_address, b"before")) == b"before"
    # Bob's device is created anew: a new store, the same address.
    new_bob = device(tmp_path, "bob", file="bob-reinstalled")
    assert new_bob.address() == bob_address
    error = raised(lambda: alice.start_session(new_bob.prekey_bundle()))
    identity = error.identity_key()
    assert identity == new_bob.identity_key()
    # Once the user verified it, the app trusts it, and the session starts.
    alice.trust_identity(bob_address, identity)
    assert alice.start_session(new_bob.prekey_bundle()) == bob_address
    assert receive(new_bob, alice.address(), alice.encrypt(bob_address, b"after")) == b"after"
    return error


def safety_number_of_another_peer(tmp_path):
    alice, bob, carol = (device(tmp_path, name) for name in ("alice", "bob", "carol"))
    alice.start_session(bob.prekey_bundle())
    alice.start_session(carol.prekey_bundle())
    assert receive(bob, alice.address(), alice.encrypt(bob.address(), b"hi")) == b"hi"
    with_bob, with_carol = alice.safety_number(bob.address()), alice.safety_number(carol.address())
    # Bob's own screen matches; the code of Alice's conversation with Carol does not.
    with_bob.compare_scanned(bob.safety_number(alice.address()).scannable)
    return raised(lambda: with_bob.compare_scanned(with_carol.scannable))


def bundle_signature_altered(tmp_path):
    alice, bob = device(tmp_path, "alice"), device(tmp_path, "bob")
    bundle = bob.prekey_bundle()
    # The last byte is in the bundle's signature.
    error = raised(lambda: alice.start_session(flip_last_bit(bundle)))
    assert not alice.has_session(bob.address())
    assert alice.start_session(bundle) == bob.address()
    return error


def alice_and_bob_in_a_group(tmp_path):
    """Alice and Bob, each with a session with the other, in GROUP; Alice's first group message."""
    alice, bob = device(tmp_path, "alice"), device(tmp_path, "bob")
    alice.start_session(bob.prekey_bundle())
    assert receive(bob, alice.address(), alice.encrypt(bob.address(), b"hello")) == b"hello"
    alice.create_group(GROUP, [bob.address()])
    bob.create_group(GROUP, [alice.address()])
    sent = alice.group_encrypt(GROUP, b"to the group")
    assert [outgoing.to for outgoing in sent.distributions] == [bob.address()]
    return alice, bob, sent


def group_message_before_its_chain(tmp_path):
    alice, bob, sent = alice_and_bob_in_a_group(tmp_path)
    error = raised(lambda: bob.decrypt(alice.address(), sent.message))
    # Bob has a session with Alice: the error carries his request for her chain.
    assert error.request() is not None
    # Once the distribution arrives, the kept message decrypts.
    assert receive(bob, alice.address(), sent.distributions[0].message) == b""
    assert receive(bob, alice.address(), sent.message) == b"to the group"
    return error


def group_message_of_unknown_group(tmp_path):
    alice, _bob, sent = alice_and_bob_in_a_group(tmp_path)
    carol = device(tmp_path, "carol")
    return raised(lambda: carol.decrypt(alice.address(), sent.message))


def commit_after_session_changed(tmp_path):
    alice, bob = device(tmp_path, "alice"), device(tmp_path, "bob")
    alice.start_session(bob.prekey_bundle())
    first, second = alice.encrypt(bob.address(), b"first"), alice.encrypt(bob.address(), b"second")
    pending_first, pending_second = bob.decrypt(alice.address(), first), bob.decrypt(alice.address(), second)
    bob.commit(pending_second)
    error = raised(lambda: bob.commit(pending_first))
    # Nothing was consumed: the first message decrypts again.
    assert receive(bob, alice.address(), first) == b"first"
    return error


# The other connection, in a process of its own: Python's sqlite3 is another copy of SQLite than the
# library's, and the POSIX locks of two copies in one process do not exclude each other (nor survive
# either closing the file), so a lock held from this process would not be seen at all.
LOCK_HOLDER = """
import sqlite3, sys
connection = sqlite3.connect(sys.argv[1], isolation_level=None)
connection.execute("BEGIN EXCLUSIVE")
print("locked", flush=True)
sys.stdin.readline()
connection.execute("ROLLBACK")
connection.close()
"""


def store_locked_by_another_connection(tmp_path):
    alice, bob = device(tmp_path, "alice"), device(tmp_path, "bob")
    alice.start_session(bob.prekey_bundle())
    holder = subprocess.Popen(
        [sys.executable, "-c", LOCK_HOLDER, str(tmp_path / "alice.db")],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        started = time.monotonic()
        error = raised(lambda: alice.encrypt(bob.address(), b"waits"))
        waited = time.monotonic() - started
    finally:
        holder.communicate("release\n", timeout=30)
    assert holder.returncode == 0
    assert waited >= 4.0, f"gave up after {waited:.1f} s, before the store's 5 s busy timeout"
    # The lock is gone: the same call succeeds.
    assert receive(bob, alice.address(), alice.encrypt(bob.address(), b"now")) == b"now"
    return error


def open_with_wrong_key(tmp_path):
    path = str(tmp_path / "alice.db")
    alice = device(tmp_path, "alice")
    del alice
    gc.collect()
    error = raised(lambda: Device.open(path, bytes([9] * 32)))
    assert Device.open(path, KEYS["alice"]).address() == Address(user_id="alice", device_id=1)
    return error


def open_a_file_that_is_not_a_store(tmp_path):
    path = tmp_path / "junk.db"
    path.write_bytes(bytes((i * 167 + 13) % 251 for i in range(4096)))
    return raised(lambda: Device.open(str(path), KEYS["alice"]))


def plaintext_too_large(tmp_path):
    alice, bob = device(tmp_path, "alice"), device(tmp_path, "bob")
    alice.start_session(bob.prekey_bundle())
    error = raised(lambda: alice.encrypt(bob.address(), bytes(MAX_PLAINTEXT_LEN + 1)))
    # The limit itself is allowed.
    assert receive(bob, alice.address(), alice.encrypt(bob.address(), bytes(MAX_PLAINTEXT_LEN))) == bytes(
        MAX_PLAINTEXT_LEN
    )
    return error


def group_id_too_long(tmp_path):
    alice = device(tmp_path, "alice")
    error = raised(lambda: alice.create_group(bytes(MAX_GROUP_ID_LEN + 1), []))
    alice.create_group(bytes(MAX_GROUP_ID_LEN), [])
    return error


SCENARIOS = {
    scenario.__name__: scenario
    for scenario in (
        message_delivered_twice,
        message_body_altered,
        message_past_the_skip_limit,
        encrypt_without_session,
        peer_reinstalled,
        safety_number_of_another_peer,
        bundle_signature_altered,
        group_message_before_its_chain,
        group_message_of_unknown_group,
        commit_after_session_changed,
        store_locked_by_another_connection,
        open_with_wrong_key,
        open_a_file_that_is_not_a_store,
        plaintext_too_large,
        group_id_too_long,
    )
}


def camel_case(code):
    return "".join(word.capitalize() for word in code.split("_"))


@pytest.mark.parametrize("case", CASES, ids=[case["scenario"] for case in CASES])
def test_the_scenario_reports_its_code(case, tmp_path):
    scenario = SCENARIOS.get(case["scenario"])
    if scenario is None:
        pytest.fail(f"scenario {case['scenario']!r} of error_codes.json is not implemented here")
    error = scenario(tmp_path)
    code, variant = case["code"], camel_case(case["code"])
    # One class per code: `samizdat.DuplicateError`, also `SamizdatError.Duplicate` as in Kotlin and Swift.
    assert type(error).__name__ == f"{variant}Error", repr(error)
    assert type(error) is getattr(SamizdatError, variant) is getattr(samizdat, f"{variant}Error")
    assert error.code() == code
    assert error.kind() == ErrorKind[code.upper()]
    assert error.kind().code() == code
    assert error.recovery().code() == case["recovery"]
    assert error.kind().recovery() == error.recovery()
    assert isinstance(error.message, str) and error.message.strip(), repr(error)
    for text in (error.message, str(error), repr(error)):
        # No bytes repr (b'...'): a hex field that ends in "b" before its closing quote is not one.
        assert "[B@" not in text and not re.search(r"(?<![0-9A-Za-z_])b'", text), text


def test_the_file_and_the_scenarios_agree():
    scenarios = [case["scenario"] for case in CASES]
    assert len(scenarios) == len(set(scenarios)), "a scenario is listed twice"
    assert set(scenarios) == set(SCENARIOS)
    # Every code has a scenario, and only the codes there are.
    assert sorted(case["code"] for case in CASES) == sorted(kind.code() for kind in ErrorKind)
    for case in CASES:
        assert ErrorKind[case["code"].upper()].recovery().code() == case["recovery"], case
