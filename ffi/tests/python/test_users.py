"""User identities and signed device lists through the Python bindings (PROTOCOL.md 23): a contact's
user identity pinned on first use, a device the server slips in refused, a newer list accepted, an
older one refused, another key's list refused until the app decides, and per-user safety numbers that
do not move when devices do. The same scenarios as ffi/tests/kotlin (UserTest.kt);
core/tests/device_lists.rs has the full set.
"""

import pickle

import pytest

from samizdat import (
    Device,
    DeviceListChange,
    ErrorKind,
    IdentityMismatchError,
    InvalidArgumentError,
    InvalidBundleError,
    ListedDevice,
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
    assert on_alice.digits() == on_bob.digits()
    on_alice.compare_scanned(on_bob.scannable())
    other = user_safety_number("alice", alice.public_key(), "bob", UserIdentity.generate().public_key())
    assert other.digits() != on_alice.digits()
    with pytest.raises(IdentityMismatchError):
        on_bob.compare_scanned(other.scannable())
