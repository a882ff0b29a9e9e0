"""Records with bytes in them are values: equal when their content is, hashable, usable as dict
keys, readable in ``repr``; a safety number is such a value too (a frozen dataclass, nothing to
close). Python's ``bytes`` compare by value already; these tests keep it so through the facade,
beside ffi/tests/kotlin (ValuesTest.kt), where the same records needed value classes.
"""

import dataclasses

import pytest

from samizdat import (
    Address,
    Device,
    IdentityMismatchError,
    IncomingMessage,
    InvalidArgumentError,
    ListedDevice,
    MismatchedSide,
    Outgoing,
    SafetyNumber,
    UserIdentity,
    verify_device_list,
)


def device(tmp_path, name, fill):
    return Device.open_or_create(tmp_path / f"{name}.db", bytes([fill] * 32), name, 1, 0)


def test_batch_results_of_two_decryptions_are_equal(tmp_path):
    with device(tmp_path, "alice", 1) as alice, device(tmp_path, "bob", 2) as bob:
        wire = alice.encrypt(alice.start_session(bob.prekey_bundle()), b"hello")
        # The same message decrypted twice (nothing committed), from two fresh buffers.
        first = bob.decrypt_batch([IncomingMessage(alice.address(), bytearray(wire))]).results()[0]
        second = bob.decrypt_batch([IncomingMessage(alice.address(), memoryview(wire))]).results()[0]
        assert first == second and first.plaintext == b"hello"
        assert IncomingMessage(alice.address(), wire) == IncomingMessage(alice.address(), bytearray(wire))


def test_a_fresh_copy_of_an_outgoing_message_finds_its_entry(tmp_path):
    with device(tmp_path, "alice", 1) as alice, device(tmp_path, "bob", 2) as bob:
        alice.start_session(bob.prekey_bundle())
        alice.create_group(b"g", [bob.address()])
        (distribution,) = alice.group_encrypt(b"g", b"to the group").distributions
        pending = {distribution: "not sent yet"}
        rebuilt = Outgoing(Address(distribution.to.user_id, distribution.to.device_id), bytes(distribution.message))
        assert pending.pop(rebuilt) == "not sent yet"
        assert "b'" in repr(rebuilt)


def test_device_lists_read_twice_are_equal(tmp_path):
    with device(tmp_path, "phone", 1) as phone:
        user = UserIdentity.generate()
        signed = user.sign_device_list("phone", 1, [ListedDevice(1, phone.identity_key())])
        once, again = verify_device_list(signed), verify_device_list(bytearray(signed))
        assert once == again and hash(once) == hash(again)
        assert once.user_identity_key == user.public_key()


def test_a_safety_number_is_a_plain_value(tmp_path):
    with device(tmp_path, "alice", 1) as alice, device(tmp_path, "bob", 2) as bob:
        bob_address = alice.start_session(bob.prekey_bundle())
        pending = bob.decrypt(alice.address(), alice.encrypt(bob_address, b"hi"))
        bob.commit(pending)
        on_alice, on_bob = alice.safety_number(bob_address), bob.safety_number(alice.address())
        # Two calls, one value: equal, same hash, a dict key; the peer's has the same digits.
        assert on_alice == alice.safety_number(bob_address)
        assert {on_alice: "verified"}[alice.safety_number(bob_address)] == "verified"
        assert on_alice.digits == on_bob.digits and on_alice != on_bob
        assert str(on_alice) == on_alice.display and on_alice.display.replace(" ", "") == on_alice.digits
        assert on_alice.digits in repr(on_alice)
        with pytest.raises(dataclasses.FrozenInstanceError):
            on_alice.digits = "0" * 60  # type: ignore[misc]
        on_alice.compare_scanned(on_bob.scannable)
        # A value rebuilt from what the app stored compares scans just as well.
        stored = SafetyNumber(on_alice.digits, on_alice.display, bytearray(on_alice.scannable))
        assert stored == on_alice
        stored.compare_scanned(memoryview(on_bob.scannable))
        with pytest.raises(IdentityMismatchError) as mismatch:
            stored.compare_scanned(on_alice.scannable)
        assert mismatch.value.side == MismatchedSide.BOTH
        with pytest.raises(InvalidArgumentError):
            dataclasses.replace(on_alice, scannable=bytes(3)).compare_scanned(on_bob.scannable)
