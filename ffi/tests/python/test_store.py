"""The store as an app administers it, through the Python bindings (PROTOCOL.md 14.9, 14.12): listing
peers, deleting one, counting its skipped keys, and rotating the storage key. The same scenarios as
ffi/tests/kotlin (StoreTest.kt); core/tests/peers.rs and core/tests/storage_key.rs have the full set.
"""

import pytest

import samizdat
from samizdat import Address, Device, MessageKind, SamizdatError, ScrubResult

OLD_KEY = bytes([2] * 32)
NEW_KEY = bytes([9] * 32)


def receive(to, sender, wire):
    pending = to.decrypt(sender.address(), wire)
    plaintext = pending.plaintext()
    to.commit(pending)
    return plaintext


def test_peers_delete_session_and_skipped_keys(tmp_path):
    bob = Device.open_or_create(str(tmp_path / "bob.db"), OLD_KEY, "bob", 1, 0)
    alice = Device.open_or_create(str(tmp_path / "alice.db"), bytes([1] * 32), "alice", 1, 0)
    carol = Device.open_or_create(str(tmp_path / "carol.db"), bytes([3] * 32), "carol", 1, 0)
    assert bob.peers() == []
    for peer in (alice, carol):
        peer.start_session(bob.prekey_bundle())
        assert receive(bob, peer, peer.encrypt(bob.address(), b"hello")) == b"hello"
    assert sorted(bob.peers(), key=lambda a: a.user_id) == [alice.address(), carol.address()]

    # Two of Alice's messages overtaken by a third: two skipped keys kept for them.
    first = alice.encrypt(bob.address(), b"first")
    second = alice.encrypt(bob.address(), b"second")
    assert receive(bob, alice, alice.encrypt(bob.address(), b"third")) == b"third"
    assert bob.skipped_key_count(alice.address()) == 2
    assert receive(bob, alice, second) == b"second"
    assert bob.skipped_key_count(alice.address()) == 1

    assert bob.delete_session(alice.address()) is True
    assert bob.delete_session(alice.address()) is False
    assert bob.peers() == [carol.address()]
    assert bob.skipped_key_count(alice.address()) == 0
    assert not bob.has_session(alice.address())
    # The message whose key was deleted with the session reads under no state: out of step.
    with pytest.raises(SamizdatError.OutOfStep) as error:
        bob.decrypt(alice.address(), first)
    assert error.value.recovery() == samizdat.Recovery.HEAL
    assert bob.scrub() == ScrubResult.DONE
    assert bob.check_integrity() is None  # the whole store checked: no damage
    assert receive(bob, carol, carol.encrypt(bob.address(), b"carol goes on")) == b"carol goes on"


def test_rotating_the_storage_key(tmp_path):
    path = str(tmp_path / "bob.db")
    bob = Device.open_or_create(path, OLD_KEY, "bob", 1, 0)
    alice = Device.open_or_create(str(tmp_path / "alice.db"), bytes([1] * 32), "alice", 1, 0)
    alice.start_session(bob.prekey_bundle())
    assert receive(bob, alice, alice.encrypt(bob.address(), b"before")) == b"before"
    in_flight = alice.encrypt(bob.address(), b"in flight")
    stale = Device.open(path, OLD_KEY)  # another handle, left open on the old key
    del bob

    assert samizdat.rotate_storage_key(path, OLD_KEY, NEW_KEY) == ScrubResult.DONE

    with pytest.raises(SamizdatError.WrongStorageKey):
        Device.open(path, OLD_KEY)
    with pytest.raises(SamizdatError.WrongStorageKey) as error:
        stale.encrypt(alice.address(), b"from the stale handle")
    assert str(error.value), "a message, never empty"
    del stale
    bob = Device.open(path, NEW_KEY)
    assert receive(bob, alice, in_flight) == b"in flight"
    assert receive(alice, bob, bob.encrypt(alice.address(), b"after")) == b"after"
    # A key of the wrong length is refused before anything is touched.
    with pytest.raises(SamizdatError.InvalidArgument):
        samizdat.rotate_storage_key(path, NEW_KEY, bytes(31))
    del bob
    with pytest.raises(SamizdatError.WrongStorageKey):
        samizdat.rotate_storage_key(path, OLD_KEY, bytes([7] * 32))
    assert Device.open(path, NEW_KEY).address() == Address(user_id="bob", device_id=1)
