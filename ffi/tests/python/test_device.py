"""The samizdat bindings in Python: the same scenarios as ffi/tests/kotlin (DeviceTest.kt).

Run by `cargo xtask test`, against the wheel that maturin built and pip installed.
A device releases its store on `close()` (or at the end of a `with` block); one never closed
releases it when its last reference goes (`del device`), which several tests below still rely on.
"""

import gc
import os
import shutil
import sqlite3
import time

import pytest

import samizdat
from samizdat import (
    Address,
    Device,
    IncomingMessage,
    MismatchedSide,
    PrekeyCounts,
    Recovery,
    Rotated,
    SamizdatError,
    ScrubResult,
)

ALICE_KEY = bytes([1] * 32)
BOB_KEY = bytes([2] * 32)
CAROL_KEY = bytes([3] * 32)


def device(tmp_path, name, key):
    return Device.open_or_create(str(tmp_path / f"{name}.db"), key, name, 1, 0)


def receive(to, sender, wire):
    """Decrypt, "store", commit: what an app does with each message."""
    pending = to.decrypt(sender, wire)
    text = pending.plaintext().decode()
    to.commit(pending)
    return text


def release():
    """Free what the caller deleted: CPython frees at once; collect cycles to be sure."""
    gc.collect()


def test_readme_conversation(tmp_path):
    # README-BEGIN
    alice_key = bytes([1] * 32)  # from the platform keystore in a real app
    bob_key = bytes([2] * 32)
    with Device.open_or_create(tmp_path / "alice.db", alice_key, "alice", 1, 0) as alice:
        with Device.open_or_create(tmp_path / "bob.db", bob_key, "bob", 1, 0) as bob:
            # Bob's bundle travels through a server; Alice verifies it and opens a session.
            bob_address = alice.start_session(bob.prekey_bundle())
            wire = alice.encrypt(bob_address, b"hello")

            # Two-phase decrypt: store the plaintext, then commit, then ack to the server.
            pending = bob.decrypt(alice.address(), wire)
            assert pending.plaintext() == b"hello"
            bob.commit(pending)
            with pytest.raises(samizdat.DuplicateError):  # a redelivery: drop it, ack it
                bob.decrypt(alice.address(), wire)
            assert alice.safety_number(bob_address).digits == bob.safety_number(alice.address()).digits
    # Both stores are closed here: another Device may open them.
    # README-END
    assert alice.closed and bob.closed


def test_conversation_with_out_of_order_delivery(tmp_path):
    alice, bob = device(tmp_path, "alice", ALICE_KEY), device(tmp_path, "bob", BOB_KEY)
    bob_address = alice.start_session(bob.prekey_bundle())
    assert bob_address == Address(user_id="bob", device_id=1)
    assert alice.has_session(bob_address)
    wires = [alice.encrypt(bob_address, f"m{i}".encode()) for i in range(1, 5)]
    for i in [2, 0, 3, 1]:  # delivered 3, 1, 4, 2
        assert receive(bob, alice.address(), wires[i]) == f"m{i + 1}"
    replies = [bob.encrypt(alice.address(), f"r{i}".encode()) for i in (1, 2)]
    assert receive(alice, bob_address, replies[1]) == "r2"
    assert receive(alice, bob_address, replies[0]) == "r1"
    on_alice, on_bob = alice.safety_number(bob_address), bob.safety_number(alice.address())
    assert on_alice.digits == on_bob.digits
    assert len(on_alice.display) == 71
    on_alice.compare_scanned(on_bob.scannable)
    assert alice.peer_identity(bob_address) == bob.identity_key()


def test_two_phase_decrypt_survives_a_restart(tmp_path):
    alice, bob = device(tmp_path, "alice", ALICE_KEY), device(tmp_path, "bob", BOB_KEY)
    alice.start_session(bob.prekey_bundle())
    first = alice.encrypt(bob.address(), b"one")

    # Decrypted but not committed, then the app "restarts".
    assert bob.decrypt(alice.address(), first).plaintext() == b"one"
    del bob
    release()
    bob = device(tmp_path, "bob", BOB_KEY)
    assert not bob.has_session(alice.address())
    # Redelivered: decrypts again; committed, then a redelivery after a restart is a duplicate.
    assert receive(bob, alice.address(), first) == "one"
    del bob
    release()
    bob = device(tmp_path, "bob", BOB_KEY)
    with pytest.raises(SamizdatError.Duplicate):
        bob.decrypt(alice.address(), first)

    # Two pendings from the same state: the second commit is stale; committing twice is refused.
    third, fourth = alice.encrypt(bob.address(), b"three"), alice.encrypt(bob.address(), b"four")
    p3, p4 = bob.decrypt(alice.address(), third), bob.decrypt(alice.address(), fourth)
    bob.commit(p3)
    with pytest.raises(SamizdatError.InvalidArgument) as twice:
        bob.commit(p3)
    assert "already committed" in twice.value.message
    del twice
    with pytest.raises(SamizdatError.StalePending):
        bob.commit(p4)
    assert receive(bob, alice.address(), fourth) == "four"


def test_every_exception_class(tmp_path):
    alice_path = str(tmp_path / "alice.db")
    alice, bob = device(tmp_path, "alice", ALICE_KEY), device(tmp_path, "bob", BOB_KEY)
    # The store: a second handle shares it; a second name (hard link) is refused; no device.
    second = Device.open(alice_path, ALICE_KEY)
    assert second.identity_key() == alice.identity_key()
    del second
    os.link(alice_path, str(tmp_path / "alice-link.db"))
    with pytest.raises(SamizdatError.StoreFailure) as error:
        Device.open(str(tmp_path / "alice-link.db"), ALICE_KEY)
    assert "name" in error.value.message or "link" in error.value.message
    os.unlink(str(tmp_path / "alice-link.db"))
    with pytest.raises(SamizdatError.InvalidArgument) as error:
        Device.open(str(tmp_path / "empty.db"), ALICE_KEY)
    assert error.value.message == "no device in this store"
    # Arguments.
    with pytest.raises(SamizdatError.InvalidArgument) as error:
        Device.create(str(tmp_path / "x.db"), bytes(31), "x", 1, 0)
    assert "32" in error.value.message
    assert error.value.recovery() == Recovery.FIX_CALL
    with pytest.raises(SamizdatError.InvalidArgument):
        alice.has_session(Address(user_id="", device_id=1))
    with pytest.raises(SamizdatError.InvalidBundle):
        alice.start_session(bytes(10))

    # No session yet.
    with pytest.raises(SamizdatError.NoSession):
        alice.encrypt(bob.address(), b"x")
    with pytest.raises(SamizdatError.NoSession):
        alice.safety_number(bob.address())
    alice.start_session(bob.prekey_bundle())
    wire = alice.encrypt(bob.address(), b"hi")
    # Forged (one bit flipped) and malformed messages.
    forged = wire[:-1] + bytes([wire[-1] ^ 1])
    with pytest.raises(SamizdatError.InvalidMessage):
        bob.decrypt(alice.address(), forged)
    with pytest.raises(SamizdatError.InvalidMessage):
        bob.decrypt(alice.address(), bytes(5))
    with pytest.raises(SamizdatError.LimitExceeded):
        alice.encrypt(bob.address(), bytes(300 * 1024))
    assert receive(bob, alice.address(), wire) == "hi"
    with pytest.raises(SamizdatError.Duplicate):
        bob.decrypt(alice.address(), wire)
    # A message more than 2,000 ahead: authentic, but out of step.
    # Bob has received counter 0 (Nr = 1); counter 2002 leaves 2,001 missing.
    for _ in range(2002):
        far = alice.encrypt(bob.address(), b"far")
    with pytest.raises(SamizdatError.OutOfStep) as ahead:
        bob.decrypt(alice.address(), far)
    assert ahead.value.message == "message is 2001 messages ahead, more than the limit of 2000"
    assert ahead.value.recovery() == Recovery.HEAL
    del ahead

    # A scan from another conversation does not match.
    carol = device(tmp_path, "carol", CAROL_KEY)
    carol.start_session(bob.prekey_bundle())
    with pytest.raises(SamizdatError.IdentityMismatch) as mismatch:
        alice.safety_number(bob.address()).compare_scanned(carol.safety_number(bob.address()).scannable)
    assert mismatch.value.side == MismatchedSide.BOTH

    # Bob reinstalls under the same address: his new identity is not trusted until Alice decides.
    new_bob = Device.create(str(tmp_path / "bob2.db"), BOB_KEY, "bob", 1, 0)
    with pytest.raises(SamizdatError.UntrustedIdentity) as untrusted:
        alice.start_session(new_bob.prekey_bundle())
    identity = untrusted.value.identity_key()
    assert identity == new_bob.identity_key()
    assert untrusted.value.identity == identity.hex()
    assert "b'" not in str(untrusted.value)
    del untrusted  # its traceback holds a reference to alice
    alice.trust_identity(bob.address(), identity)
    alice.start_session(new_bob.prekey_bundle())
    assert receive(new_bob, alice.address(), alice.encrypt(bob.address(), b"again")) == "again"

    # Once released, the store opens again; with the wrong key it is refused.
    del alice, error, mismatch
    release()
    with pytest.raises(SamizdatError.WrongStorageKey):
        Device.open(alice_path, BOB_KEY)
    with pytest.raises(SamizdatError.InvalidArgument) as exists:
        Device.create(alice_path, ALICE_KEY, "alice", 1, 0)
    assert exists.value.message == "a device already exists in this store"
    del exists
    assert Device.open(alice_path, ALICE_KEY).address() == Address(user_id="alice", device_id=1)


def test_a_one_time_prekey_is_used_once(tmp_path):
    bob = device(tmp_path, "bob", BOB_KEY)
    assert bob.prekey_counts() == PrekeyCounts(one_time=0, pq_one_time=0)
    assert bob.refill_prekeys(2, 4, 0) == 8  # 4 of each kind
    first = bob.prekey_bundle()
    bundles = bob.prekey_bundles(10)
    assert len(bundles) == 3, "every call offers prekeys no earlier one offered: 3 are left"
    alice, carol = device(tmp_path, "alice", ALICE_KEY), device(tmp_path, "carol", CAROL_KEY)
    dave = device(tmp_path, "dave", bytes([4] * 32))
    # Two calls, two contacts: both first messages read.
    alice.start_session(first)
    carol.start_session(bundles[0])
    assert receive(bob, alice.address(), alice.encrypt(bob.address(), b"a")) == "a"
    assert receive(bob, carol.address(), carol.encrypt(bob.address(), b"c")) == "c"
    assert bob.prekey_counts() == PrekeyCounts(one_time=2, pq_one_time=2)
    # A server that hands one bundle to two contacts: the first one consumes its one-time prekey.
    dave.start_session(bundles[1])
    eve = device(tmp_path, "eve", bytes([5] * 32))
    eve.start_session(bundles[1])
    assert receive(bob, dave.address(), dave.encrypt(bob.address(), b"d")) == "d"
    from_eve = eve.encrypt(bob.address(), b"e")
    # Eve's session is built on a prekey Bob no longer has: out of step, a heal brings the
    # message (anyone can make such a message, which is why resets are rate-limited).
    with pytest.raises(SamizdatError.OutOfStep) as unknown:
        bob.decrypt(eve.address(), from_eve)
    assert "prekey" in unknown.value.message
    assert unknown.value.recovery() == Recovery.HEAL
    del unknown
    assert bob.rotate_prekeys(10, 1000) == Rotated(signed_prekey=False, last_resort_prekey=False)
    assert bob.rotate_prekeys(5000, 1000) == Rotated(signed_prekey=True, last_resort_prekey=True)


def test_a_batch_decrypts_in_one_transaction(tmp_path):
    alice, bob = device(tmp_path, "alice", ALICE_KEY), device(tmp_path, "bob", BOB_KEY)
    alice.start_session(bob.prekey_bundle())
    queue = [
        IncomingMessage(sender=alice.address(), ciphertext=alice.encrypt(bob.address(), f"q{i}".encode()))
        for i in range(1, 6)
    ]
    batch = bob.decrypt_batch(queue + [IncomingMessage(sender=alice.address(), ciphertext=bytes(40))])
    results = batch.results()
    assert [r.plaintext for r in results[:5]] == [f"q{i}".encode() for i in range(1, 6)]
    assert results[5].plaintext is None
    assert isinstance(results[5].error, SamizdatError.InvalidMessage)
    bob.commit_batch(batch)
    with pytest.raises(SamizdatError.InvalidArgument):
        bob.commit_batch(batch)
    again = bob.decrypt_batch(queue[:1]).results()
    assert isinstance(again[0].error, SamizdatError.Duplicate)


def test_dropping_a_device_releases_its_store(tmp_path):
    path = str(tmp_path / "alice.db")
    alice = Device.create(path, ALICE_KEY, "alice", 1, 0)
    del alice
    release()
    for _ in range(3):
        assert Device.open(path, ALICE_KEY).address().user_id == "alice"


def test_a_restored_sender_never_reuses_a_key_and_is_reported(tmp_path):
    """Issue 11, attack 3: Alice's store is restored from a backup; her next message reuses a counter."""
    alice, bob = device(tmp_path, "alice", ALICE_KEY), device(tmp_path, "bob", BOB_KEY)
    bob_address = alice.start_session(bob.prekey_bundle())
    assert receive(bob, alice.address(), alice.encrypt(bob_address, b"hello")) == "hello"
    assert receive(alice, bob_address, bob.encrypt(alice.address(), b"hi")) == "hi"
    alice_path = str(tmp_path / "alice.db")
    del alice
    release()
    shutil.copyfile(alice_path, str(tmp_path / "backup.db"))  # the backup, taken while closed
    alice = Device.open(alice_path, ALICE_KEY)
    original = alice.encrypt(bob_address, b"sent before the restore")
    assert receive(bob, alice.address(), original) == "sent before the restore"
    del alice
    release()
    shutil.copyfile(str(tmp_path / "backup.db"), alice_path)  # restored
    alice = Device.open(alice_path, ALICE_KEY)
    again = alice.encrypt(bob_address, b"sent after the restore")
    with pytest.raises(SamizdatError.OutOfStep) as rolled_back:
        bob.decrypt(alice.address(), again)
    assert "went backwards" in rolled_back.value.message
    del rolled_back
    with pytest.raises(SamizdatError.Duplicate):
        bob.decrypt(alice.address(), original)
    # The restored sender goes on: its next message decrypts.
    assert receive(bob, alice.address(), alice.encrypt(bob_address, b"next")) == "next"


def test_a_pending_message_commits_only_on_its_own_device(tmp_path):
    """Issue 11, attack 5: Carol's device must refuse Bob's pending decryption."""
    alice, bob, carol = (device(tmp_path, n, k) for n, k in [("alice", ALICE_KEY), ("bob", BOB_KEY), ("carol", CAROL_KEY)])
    alice.start_session(bob.prekey_bundle())
    alice.start_session(carol.prekey_bundle())
    assert receive(carol, alice.address(), alice.encrypt(carol.address(), b"to carol")) == "to carol"
    to_bob = alice.encrypt(bob.address(), b"to bob")
    pending = bob.decrypt(alice.address(), to_bob)
    with pytest.raises(SamizdatError.InvalidArgument) as foreign:
        carol.commit(pending)
    assert "another device" in foreign.value.message
    del foreign
    # Nothing was written: Bob decrypts it again and commits (a commit attempt uses up its pending).
    assert receive(bob, alice.address(), to_bob) == "to bob"


def test_a_second_handle_shares_the_store_without_reusing_keys(tmp_path):
    """Issue 11, attack 4: two handles on one database never encrypt twice from one state."""
    alice, bob = device(tmp_path, "alice", ALICE_KEY), device(tmp_path, "bob", BOB_KEY)
    bob_address = alice.start_session(bob.prekey_bundle())
    second = Device.open(str(tmp_path / "alice.db"), ALICE_KEY)
    wires = []
    for i in range(10):
        handle = alice if i % 2 == 0 else second
        wires.append(handle.encrypt(bob_address, f"m{i}".encode()))
    assert len(set(wires)) == 10
    assert [receive(bob, alice.address(), w) for w in wires] == [f"m{i}" for i in range(10)]


def test_a_forked_child_is_refused(tmp_path):
    """Issue 11, attack 4: a device inherited through fork() (multiprocessing's default on Linux)."""
    alice, bob = device(tmp_path, "alice", ALICE_KEY), device(tmp_path, "bob", BOB_KEY)
    bob_address = alice.start_session(bob.prekey_bundle())
    pid = os.fork()
    if pid == 0:  # the child: every call that touches the store is refused
        try:
            alice.encrypt(bob_address, b"from the child")
            status = 1
        except SamizdatError.StoreFailure as error:
            status = 0 if "forked child" in error.message else 3
        except BaseException:
            status = 2
        os._exit(status)
    _, status = os.waitpid(pid, 0)
    assert os.WEXITSTATUS(status) == 0
    # The parent goes on.
    assert receive(bob, alice.address(), alice.encrypt(bob_address, b"from the parent")) == "from the parent"


def sealed_rows(path):
    """Every sealed value in a store, read with Python's own SQLite (a second connection)."""
    connection = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        return {v for t in ("meta", "identity", "prekeys", "sessions")
                for (v,) in connection.execute(f"SELECT value FROM {t}")}
    finally:
        connection.close()


def test_scrub_leaves_no_overwritten_row_in_the_files(tmp_path):
    """Issue 11, item 2: after scrub(), no file of the store holds a row that was overwritten."""
    alice, bob = device(tmp_path, "alice", ALICE_KEY), device(tmp_path, "bob", BOB_KEY)
    bob.refill_prekeys(5, 10, 0)
    bob_address = alice.start_session(bob.prekey_bundle())
    seen = set()
    for i in range(30):
        assert receive(bob, alice.address(), alice.encrypt(bob_address, f"a{i}".encode())) == f"a{i}"
        assert receive(alice, bob_address, bob.encrypt(alice.address(), f"b{i}".encode())) == f"b{i}"
        seen |= sealed_rows(tmp_path / "alice.db")
    assert alice.scrub() == ScrubResult.DONE
    superseded = seen - sealed_rows(tmp_path / "alice.db")
    assert len(superseded) >= 29  # every round rewrote the session row: all but the last are gone
    files = [tmp_path / f"alice.db{suffix}" for suffix in ("", "-wal", "-shm", "-journal")]
    data = b"".join(f.read_bytes() for f in files if f.exists())
    # A 64-byte piece of each old row: a prefix opens under the storage key (no tag needed).
    found = [row for row in superseded if row[:64] in data or row[-64:] in data]
    assert found == []
    # The device goes on as before.
    assert receive(bob, alice.address(), alice.encrypt(bob_address, b"after")) == "after"


def test_cost_of_one_round(tmp_path):
    alice, bob = device(tmp_path, "alice", ALICE_KEY), device(tmp_path, "bob", BOB_KEY)
    alice.start_session(bob.prekey_bundle())
    message = bytes(100)

    def one_round():
        receive(bob, alice.address(), alice.encrypt(bob.address(), message))

    for _ in range(20):
        one_round()
    rounds = 200
    started = time.perf_counter()
    for _ in range(rounds):
        one_round()
    per_round = (time.perf_counter() - started) / rounds * 1e6
    print(f"python: one encrypt+decrypt+commit round (SQLite, 100 bytes): {per_round:.0f} us")
