"""User identities and signed device lists through the Python bindings (PROTOCOL.md 23): a contact's
user identity pinned on first use, a device the server slips in refused, a newer list accepted, an
older one refused, another key's list refused until the app decides, and per-user safety numbers that
do not move when devices do. Then the same on a Device (PROTOCOL.md 23.5): a ghost device's bundle
and messages refused with every row of the store as it was, a second device accepted once a newer
list names it, a rolled-back list refused. The same scenarios as ffi/tests/kotlin (UserTest.kt);
core/tests/device_lists.rs and core/tests/ghost_devices.rs have the full set.
"""

import pickle
import sqlite3

import pytest

from samizdat import (
    Address,
    Device,
    IncomingMessage,
    DeviceListChange,
    ErrorKind,
    IdentityMismatchError,
    InvalidArgumentError,
    InvalidBundleError,
    ListedDevice,
    SamizdatError,
    UntrustedIdentityError,
    UserIdentity,
    UserTrust,
    user_safety_number,
    verify_device_list,
)


def device(tmp_path, name, device_id, key):
    return Device.open_or_create(str(tmp_path / f"{name}-{device_id}.db"), bytes([key] * 32), name, device_id, 0)


def listed(d):
    return ListedDevice(d.address().device_id, d.identity_key())


def test_a_ghost_device_is_refused_and_a_newer_list_accepted(tmp_path):
    alice = UserIdentity.generate()
    with device(tmp_path, "alice", 1, 1) as phone, device(tmp_path, "alice", 2, 2) as laptop, device(
        tmp_path, "server", 2, 3
    ) as ghost:
        first = alice.sign_device_list("alice", 1, [listed(phone)])
        trust = UserTrust.first_use("alice", first)
        assert trust.user_identity_key() == alice.public_key()
        trust.check_device(1, phone.identity_key())
        # The server's own device under Alice's next device id: no list names it.
        with pytest.raises(UntrustedIdentityError) as ghost_error:
            trust.check_device(2, ghost.identity_key())
        assert ghost_error.value.kind() == ErrorKind.UNTRUSTED_IDENTITY
        assert "not in the user's verified device list" in str(ghost_error.value)

        # Alice links her laptop: a newer list, by the same user key (devices in any order).
        second = alice.sign_device_list("alice", 2, [listed(laptop), listed(phone)])
        change = trust.update(second)
        assert change == DeviceListChange(added=(listed(laptop),), removed=())
        trust.check_device(2, laptop.identity_key())
        info = trust.list()
        assert (info.user_id, info.version) == ("alice", 2)
        assert info.devices == (listed(phone), listed(laptop))

        # The server replays the first list: refused, nothing changes.
        before = trust.to_bytes()
        with pytest.raises(InvalidBundleError, match="older than version 2"):
            trust.update(first)
        assert trust.to_bytes() == before

        # What the app stored loads again.
        UserTrust.from_bytes("alice", bytearray(trust.to_bytes())).check_device(2, laptop.identity_key())


def test_another_user_key_needs_the_apps_decision(tmp_path):
    alice, mallory = UserIdentity.generate(), UserIdentity.generate()
    with device(tmp_path, "alice", 1, 1) as phone:
        trust = UserTrust.first_use("alice", alice.sign_device_list("alice", 1, [listed(phone)]))
        ghost = ListedDevice(66, UserIdentity.generate().public_key())
        forged = mallory.sign_device_list("alice", 99, [listed(phone), ghost])
        with pytest.raises(UntrustedIdentityError) as error:
            trust.update(forged)
        assert error.value.identity_key() == mallory.public_key()
        assert trust.list().version == 1
        # Only the app, after the users compared safety numbers, moves the pin.
        trust.trust_new_identity(forged)
        assert trust.user_identity_key() == mallory.public_key()


def test_malformed_lists_and_arguments_are_typed_errors():
    alice = UserIdentity.generate()
    key = alice.public_key()
    with pytest.raises(InvalidBundleError):
        verify_device_list(b"\x01\x02\x03")
    with pytest.raises(InvalidBundleError):
        UserTrust.first_use("alice", b"")
    with pytest.raises(InvalidArgumentError):
        alice.sign_device_list("alice", -1, [ListedDevice(1, key)])
    with pytest.raises(InvalidArgumentError):
        ListedDevice(-1, key)
    with pytest.raises(TypeError):
        alice.sign_device_list("alice", 1, [(1, key)])
    with pytest.raises(InvalidArgumentError):
        UserIdentity.from_seed(bytes(31))
    # A list for another user is refused by the pin.
    bobs = alice.sign_device_list("bob", 1, [ListedDevice(1, UserIdentity.generate().public_key())])
    assert verify_device_list(bobs).user_id == "bob"
    with pytest.raises(InvalidBundleError):
        UserTrust.first_use("alice", bobs)
    # The seed gives back the same identity; neither repr nor pickle shows it.
    assert UserIdentity.from_seed(alice.seed()).public_key() == key
    assert alice.seed().hex() not in repr(alice)
    with pytest.raises(TypeError):
        pickle.dumps(alice)


def test_user_safety_numbers_are_the_same_on_both_sides():
    alice, bob = UserIdentity.generate(), UserIdentity.generate()
    on_alice = user_safety_number("alice", alice.public_key(), "bob", bob.public_key())
    on_bob = user_safety_number("bob", bob.public_key(), "alice", alice.public_key())
    assert on_alice.digits == on_bob.digits
    on_alice.compare_scanned(on_bob.scannable)
    other = user_safety_number("alice", alice.public_key(), "bob", UserIdentity.generate().public_key())
    assert other.digits != on_alice.digits
    with pytest.raises(IdentityMismatchError):
        on_bob.compare_scanned(other.scannable)


def rows(path):
    """Every row of every table of a store, read with Python's own SQLite (a second connection)."""
    connection = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        tables = [t for (t,) in connection.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
        return {t: sorted(connection.execute(f"SELECT * FROM {t}")) for t in tables}
    finally:
        connection.close()


def test_a_device_refuses_a_ghost_and_accepts_a_newly_listed_device(tmp_path):
    alice = UserIdentity.generate()
    bob_path = tmp_path / "bob-1.db"
    with device(tmp_path, "alice", 1, 1) as phone, device(tmp_path, "alice", 2, 2) as laptop, device(
        tmp_path, "bob", 1, 4
    ) as bob, Device.open_or_create(str(tmp_path / "ghost.db"), bytes([3] * 32), "alice", 2, 0) as ghost:
        first = alice.sign_device_list("alice", 1, [listed(phone)])
        assert phone.set_device_list(first) == DeviceListChange(added=(listed(phone),), removed=())
        assert phone.device_list() == first
        assert laptop.device_list() is None
        # A list that does not name the device is not its own.
        with pytest.raises(InvalidArgumentError):
            laptop.set_device_list(first)
        assert laptop.device_list() is None

        # Bob pins Alice's user from the list her phone's bundle carries.
        assert bob.user_trust("alice") is None
        phone_address = bob.start_session(phone.prekey_bundle())
        pinned = bob.user_trust("alice")
        assert pinned.user_identity_key() == alice.public_key()
        assert pinned.list().devices == (listed(phone),)

        # The server's own device under Alice's next device id, and the laptop before any list
        # names it: refused, with no identity key to trust, and not a row of Bob's store changes.
        before = rows(bob_path)
        for bundle in (ghost.prekey_bundle(), laptop.prekey_bundle()):
            with pytest.raises(UntrustedIdentityError, match="not in the user's verified device list") as refused:
                bob.start_session(bundle)
            assert refused.value.identity_key() is None
            assert refused.value.code() == "untrusted_identity"
        assert rows(bob_path) == before
        assert not bob.has_session(Address("alice", 2))
        # The ghost's first message is refused the same way, alone and in a batch.
        ghost.start_session(bob.prekey_bundle())
        before = rows(bob_path)
        wire = ghost.encrypt(bob.address(), b"let me in")
        with pytest.raises(UntrustedIdentityError):
            bob.decrypt(ghost.address(), wire)
        [result] = bob.decrypt_batch([IncomingMessage(sender=ghost.address(), ciphertext=wire)]).results()
        assert result.plaintext is None
        assert isinstance(result.error, SamizdatError.UntrustedIdentity)
        assert rows(bob_path) == before

        # Alice links her laptop: a newer list. Bob takes it; the laptop is accepted, the ghost
        # (same device id, another key) is still refused.
        second = alice.sign_device_list("alice", 2, [listed(phone), listed(laptop)])
        assert laptop.set_device_list(second) == DeviceListChange(added=(listed(phone), listed(laptop)), removed=())
        assert phone.set_device_list(second) == DeviceListChange(added=(listed(laptop),), removed=())
        assert bob.update_device_list(second) == DeviceListChange(added=(listed(laptop),), removed=())
        laptop_address = bob.start_session(laptop.prekey_bundle())
        assert laptop_address == laptop.address()
        pending = laptop.decrypt(bob.address(), bob.encrypt(laptop_address, b"hello laptop"))
        assert pending.plaintext() == b"hello laptop"
        laptop.commit(pending)
        with pytest.raises(UntrustedIdentityError):
            bob.start_session(ghost.prekey_bundle())

        # The server replays the first list: a rollback, refused; nothing changes.
        before = rows(bob_path)
        with pytest.raises(InvalidBundleError, match="older than version 2"):
            bob.update_device_list(first)
        assert rows(bob_path) == before
        assert bob.user_trust("alice").list().version == 2
        assert bob.encrypt(phone_address, b"still here")


def test_a_device_needs_the_apps_decision_for_another_user_key(tmp_path):
    alice, mallory = UserIdentity.generate(), UserIdentity.generate()
    with device(tmp_path, "alice", 1, 1) as phone, device(tmp_path, "bob", 1, 4) as bob:
        first = alice.sign_device_list("alice", 1, [listed(phone)])
        bob.update_device_list(first)
        forged = mallory.sign_device_list("alice", 9, [listed(phone)])
        before = rows(tmp_path / "bob-1.db")
        with pytest.raises(UntrustedIdentityError) as error:
            bob.update_device_list(forged)
        assert error.value.identity_key() == mallory.public_key()
        assert rows(tmp_path / "bob-1.db") == before
        assert bob.user_trust("alice").user_identity_key() == alice.public_key()
        # Only the app, after the users compared safety numbers, moves the pin.
        assert bob.trust_new_user_identity(forged) == DeviceListChange(added=(), removed=())
        assert bob.user_trust("alice").user_identity_key() == mallory.public_key()
        with pytest.raises(InvalidBundleError):
            bob.update_device_list(b"not a list")
