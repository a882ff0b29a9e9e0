"""Sending to a user through the Python bindings (PROTOCOL.md 23.4, 23.6, 23.7): a fan-out reaches
the contact's listed devices that have a session and our other device as a sent sync, reports the
devices without one, is finished for them with encrypt_to_user_devices, refuses a user that is not
pinned and a plaintext past the limit with every row of the store as it was; per-user safety numbers
on a device are the same on both sides, stable when a device is added, changed by a new user
identity. A fan-out kept for healing (PROTOCOL.md 23.6, "Kept, or not") keeps each message to a
contact's device in that device's outbox (not the sent sync), sends it again to the device that heals
naming it, and is acknowledged per device. The same scenarios as ffi/tests/kotlin (FanOutTest.kt);
core/tests/fan_out.rs and core/tests/fan_out_kept.rs have the full set.
"""

import sqlite3

import pytest

from samizdat import (
    Address,
    Device,
    ErrorKind,
    HealResult,
    InvalidArgumentError,
    ListedDevice,
    MessageKind,
    SamizdatError,
    UntrustedIdentityError,
    UserIdentity,
    message_id,
    user_safety_number,
)

# MAX_FAN_OUT_PLAINTEXT_LEN (PROTOCOL.md 11, 23.6): MAX_PLAINTEXT_LEN (245,760) - 512.
MAX_FAN_OUT_PLAINTEXT_LEN = 245_760 - 512
# core/src/device/healing.rs: HealPolicy::default().outbox_max_age (30 days).
OUTBOX_MAX_AGE = 30 * 24 * 3600


def device(tmp_path, name, device_id, key):
    return Device.open_or_create(str(tmp_path / f"{name}-{device_id}.db"), bytes([key] * 32), name, device_id, 0)


def listed(d):
    return ListedDevice(d.address().device_id, d.identity_key())


def rows(path):
    """Every row of every table of a store, read with Python's own SQLite (a second connection)."""
    connection = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        tables = [t for (t,) in connection.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
        return {t: sorted(connection.execute(f"SELECT * FROM {t}")) for t in tables}
    finally:
        connection.close()


def test_a_fan_out_reaches_the_listed_devices_and_our_other_device(tmp_path):
    alice, bob = UserIdentity.generate(), UserIdentity.generate()
    phone_path = tmp_path / "alice-1.db"
    with device(tmp_path, "alice", 1, 1) as phone, device(tmp_path, "alice", 2, 2) as laptop, device(
        tmp_path, "bob", 1, 3
    ) as bob1, device(tmp_path, "bob", 2, 4) as bob2:
        alice_list = alice.sign_device_list("alice", 1, [listed(phone), listed(laptop)])
        bob_list = bob.sign_device_list("bob", 1, [listed(bob1), listed(bob2)])
        for d in (phone, laptop):
            d.set_device_list(alice_list)
        for d in (bob1, bob2):
            d.set_device_list(bob_list)

        # Bob is not pinned yet: no fan-out, and nothing written.
        before = rows(phone_path)
        with pytest.raises(SamizdatError.NoSession) as not_pinned:
            phone.encrypt_to_user("bob", b"hi")
        assert not_pinned.value.kind() == ErrorKind.NO_SESSION
        assert "no device list of user" in str(not_pinned.value)
        assert rows(phone_path) == before

        # Sessions with Bob's first device (its bundle pins Bob) and with the laptop.
        phone.start_session(bob1.prekey_bundle())
        phone.start_session(laptop.prekey_bundle())
        sent = phone.encrypt_to_user("bob", b"hello Bob")
        assert [m.to for m in sent.messages] == [Address("bob", 1)]
        assert [m.to for m in sent.syncs] == [laptop.address()]
        assert sent.missing == (Address("bob", 2),)
        pending = bob1.decrypt(phone.address(), sent.messages[0].message)
        assert (pending.kind(), pending.plaintext(), pending.sync_recipient()) == (MessageKind.DIRECT, b"hello Bob", None)
        bob1.commit(pending)
        pending = laptop.decrypt(phone.address(), sent.syncs[0].message)
        assert (pending.kind(), pending.plaintext(), pending.sync_recipient()) == (
            MessageKind.SENT_SYNC,
            b"hello Bob",
            "bob",
        )
        assert pending.sender_identity() == phone.identity_key()
        laptop.commit(pending)

        # The missing device: a session from its bundle, then the fan-out to it alone.
        phone.start_session(bob2.prekey_bundle())
        rest = phone.encrypt_to_user_devices("bob", b"hello Bob", sent.missing)
        assert ([m.to for m in rest.messages], rest.syncs, rest.missing) == ([Address("bob", 2)], (), ())
        pending = bob2.decrypt(phone.address(), rest.messages[0].message)
        assert pending.plaintext() == b"hello Bob"
        bob2.commit(pending)

        # Refusals write nothing: a device no list names, another user's device, our own user, and
        # a plaintext one byte past the limit.
        before = rows(phone_path)
        with pytest.raises(UntrustedIdentityError) as unlisted:
            phone.encrypt_to_user_devices("bob", b"x", [Address("bob", 9)])
        assert unlisted.value.identity_key() is None
        with pytest.raises(InvalidArgumentError):
            phone.encrypt_to_user_devices("bob", b"x", [Address("carol", 1)])
        with pytest.raises(InvalidArgumentError):
            phone.encrypt_to_user("alice", b"x")
        with pytest.raises(SamizdatError.LimitExceeded):
            phone.encrypt_to_user("bob", bytes(MAX_FAN_OUT_PLAINTEXT_LEN + 1))
        assert rows(phone_path) == before
        # At the limit it goes through.
        largest = bytes([7]) * MAX_FAN_OUT_PLAINTEXT_LEN
        sent = phone.encrypt_to_user("bob", largest)
        assert len(sent.messages) == 2
        pending = laptop.decrypt(phone.address(), sent.syncs[0].message)
        assert (pending.kind(), pending.plaintext()) == (MessageKind.SENT_SYNC, largest)


def test_user_safety_numbers_on_devices(tmp_path):
    alice, bob = UserIdentity.generate(), UserIdentity.generate()
    with device(tmp_path, "alice", 1, 1) as phone, device(tmp_path, "bob", 1, 3) as bob1, device(
        tmp_path, "bob", 2, 4
    ) as bob2, device(tmp_path, "erin", 1, 5) as erin:
        alice_list = alice.sign_device_list("alice", 1, [listed(phone)])
        bob_list = bob.sign_device_list("bob", 1, [listed(bob1)])
        phone.set_device_list(alice_list)
        bob1.set_device_list(bob_list)
        phone.update_device_list(bob_list)
        bob1.update_device_list(alice_list)

        on_alice, on_bob = phone.user_safety_number("bob"), bob1.user_safety_number("alice")
        assert on_alice.digits == on_bob.digits
        on_alice.compare_scanned(on_bob.scannable)
        # From the two user identities alone.
        assert on_alice.digits == user_safety_number("alice", alice.public_key(), "bob", bob.public_key()).digits

        # Bob links a second device: the same number.
        newer = bob.sign_device_list("bob", 2, [listed(bob1), listed(bob2)])
        phone.update_device_list(newer)
        assert phone.user_safety_number("bob").digits == on_alice.digits

        # Bob's new user identity: only the app's decision moves the pin, and the number changes.
        bob_new = UserIdentity.generate()
        renewed = bob_new.sign_device_list("bob", 1, [listed(bob1)])
        with pytest.raises(UntrustedIdentityError):
            phone.update_device_list(renewed)
        assert phone.user_safety_number("bob").digits == on_alice.digits
        phone.trust_new_user_identity(renewed)
        bob1.set_device_list(renewed)
        changed = phone.user_safety_number("bob")
        assert changed.digits != on_alice.digits
        assert changed.digits == bob1.user_safety_number("alice").digits

        # Without our own list: InvalidArgument; a user not pinned: NoSession.
        erin.update_device_list(renewed)
        with pytest.raises(InvalidArgumentError, match="no device list of its own user"):
            erin.user_safety_number("bob")
        with pytest.raises(SamizdatError.NoSession):
            phone.user_safety_number("carol")


@pytest.fixture
def kept_world(tmp_path):
    """Alice's phone and laptop, Bob's two devices, each list set on its user's devices; the phone starts
    a session with every other device (whose bundle pins its user) and each reads its hello. Yields
    (phone, laptop, bob1, bob2)."""
    alice, bob = UserIdentity.generate(), UserIdentity.generate()
    with device(tmp_path, "alice", 1, 1) as phone, device(tmp_path, "alice", 2, 2) as laptop, device(
        tmp_path, "bob", 1, 3
    ) as bob1, device(tmp_path, "bob", 2, 4) as bob2:
        alice_list = alice.sign_device_list("alice", 1, [listed(phone), listed(laptop)])
        bob_list = bob.sign_device_list("bob", 1, [listed(bob1), listed(bob2)])
        for d in (phone, laptop):
            d.set_device_list(alice_list)
        for d in (bob1, bob2):
            d.set_device_list(bob_list)
        for other in (laptop, bob1, bob2):
            phone.start_session(other.prekey_bundle())
            other.commit(other.decrypt(phone.address(), phone.encrypt(other.address(), b"hello")))
        yield phone, laptop, bob1, bob2


def take(to, sender, wire):
    """Decrypt, "store", commit: ((kind, plaintext), message id, what the commit returned)."""
    pending = to.decrypt(sender.address(), wire)
    got = (pending.kind(), pending.plaintext())
    return got, pending.message_id(), to.commit(pending)


def test_a_kept_fan_out_is_sent_again_to_the_device_that_heals_and_acknowledged_per_device(kept_world):
    phone, laptop, bob1, bob2 = kept_world
    sent = phone.encrypt_to_user_kept("bob", b"meet at the station", 1_000)
    assert [m.to for m in sent.messages] == [bob1.address(), bob2.address()]
    assert [m.to for m in sent.syncs] == [laptop.address()]
    assert sent.missing == ()
    # One entry in each contact device's outbox; the sent sync is not kept.
    assert phone.outbox_len(bob1.address()) == 1
    assert phone.outbox_len(bob2.address()) == 1
    assert phone.outbox_len(laptop.address()) == 0, "a sent sync is not kept"
    # The plain fan-out keeps nothing.
    phone.encrypt_to_user("bob", b"not kept")
    assert (phone.outbox_len(bob1.address()), phone.outbox_len(bob2.address())) == (1, 1)

    # bob1 reads its copy; bob2's is lost, and bob2 heals naming it.
    to_bob1, to_bob2 = sent.messages[0].message, sent.messages[1].message
    got1, id1, _ = take(bob1, phone, to_bob1)
    assert got1 == (MessageKind.DIRECT, b"meet at the station")
    healed = bob2.heal(phone.prekey_bundle(), [to_bob2], 200)
    assert isinstance(healed, HealResult.SENT), healed
    assert healed.reset.to == phone.address()
    reset, _, resent = take(phone, bob2, healed.reset.message)
    assert reset == (MessageKind.CONTROL, b"")
    assert [o.to for o in resent] == [bob2.address()], "the message kept for bob2, to bob2 only"
    got2, id2, _ = take(bob2, phone, resent[0].message)
    assert got2 == (MessageKind.DIRECT, b"meet at the station")
    assert id2 == message_id(to_bob2), "the id of the message as first sent"
    assert bob2.awaiting_resends(phone.address()) == 0

    # The laptop's sync was not kept: a reset naming it brings nothing.
    sync_heal = laptop.heal(phone.prekey_bundle(), [sent.syncs[0].message], 300)
    assert isinstance(sync_heal, HealResult.SENT), sync_heal
    assert take(phone, laptop, sync_heal.reset.message)[2] == []

    # Each device's copy is acknowledged on its own: bob2's id is not in bob1's outbox.
    assert phone.acknowledge(bob1.address(), [message_id(to_bob2)]) == 0
    assert phone.acknowledge(bob1.address(), [id1]) == 1
    assert (phone.outbox_len(bob1.address()), phone.outbox_len(bob2.address())) == (0, 1)
    assert phone.acknowledge(bob2.address(), [id2]) == 1
    assert phone.outbox_len(bob2.address()) == 0


def test_a_kept_fan_out_to_some_devices_keeps_only_theirs_at_the_time_given(kept_world):
    phone, laptop, bob1, bob2 = kept_world
    start = 5_000
    sent = phone.encrypt_to_user_devices_kept("bob", bytearray(b"only bob2"), [bob2.address()], start)
    assert [m.to for m in sent.messages] == [bob2.address()]
    assert (sent.syncs, sent.missing) == ((), ())
    assert [phone.outbox_len(d.address()) for d in (bob1, bob2, laptop)] == [0, 1, 0]
    assert take(bob2, phone, sent.messages[0].message)[0] == (MessageKind.DIRECT, b"only bob2")
    # The entry is dated `start`: it expires at start + outbox_max_age, not before.
    assert phone.expire_outbox(start + OUTBOX_MAX_AGE - 1) == 0
    assert phone.expire_outbox(start + OUTBOX_MAX_AGE) == 1
    assert phone.outbox_len(bob2.address()) == 0

    # Refusals keep nothing: a time before the epoch, a device the list does not name, a user not
    # pinned, arguments of the wrong type.
    with pytest.raises(InvalidArgumentError, match="now"):
        phone.encrypt_to_user_kept("bob", b"x", -1)
    with pytest.raises(UntrustedIdentityError):
        phone.encrypt_to_user_devices_kept("bob", b"x", [Address("bob", 9)], 6_000)
    with pytest.raises(SamizdatError.NoSession):
        phone.encrypt_to_user_kept("carol", b"x", 6_000)
    with pytest.raises(TypeError):
        phone.encrypt_to_user_kept("bob", "text", 6_000)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        phone.encrypt_to_user_devices_kept("bob", b"x", bob2.address(), 6_000)  # type: ignore[arg-type]
    assert [phone.outbox_len(d.address()) for d in (bob1, bob2)] == [0, 0]
