"""Removing a lost device for good through the Python bindings (issue 17): Alice has a phone, a laptop
and a tablet, Bob one device, each in its own SQLite store. The tablet is lost: the laptop replaces
Alice's user identity without it; the phone reads the handover (kind USER_IDENTITY: the new key, the
removed tablet, the new list), keeps the key and commits, and holds the new list. The tablet, which
keeps the old key, is refused by the phone; Bob refuses the new list until he trusts it, and then the
safety number changed and the tablet is refused by him too. The call's refusals (the old key, our own
device as lost, an id out of range) write nothing, and the call made again with the same key makes the
handover again without a new list. The same scenario as ffi/tests/kotlin (LostDeviceTest.kt);
core/tests/lost_device.rs has the full set.
"""

import contextlib
import sqlite3

import pytest

from samizdat import (
    Device,
    InvalidArgumentError,
    ListedDevice,
    MessageKind,
    NewUserIdentity,
    Recovery,
    Replaced,
    SamizdatError,
    UntrustedIdentityError,
    UserIdentity,
    verify_device_list,
)

NOW = 86_400


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


def refused(error_class, code, recovery, call):
    """The failure `call` raises: of `error_class`, with `code` and `recovery`, and a message."""
    with pytest.raises(error_class) as raised:
        call()
    error = raised.value
    assert isinstance(error, SamizdatError)
    assert (error.code(), error.recovery(), error.kind().code()) == (code, recovery, code)
    assert str(error).strip(), "an empty message"
    return error


def untrusted(call):
    """The `untrusted_identity` refusal `call` raises."""
    return refused(UntrustedIdentityError, "untrusted_identity", Recovery.VERIFY_IDENTITY, call)


class World:
    """Alice's phone (1), laptop (2) and tablet (3) hold her list (version 1) and a session with each
    other, used both ways; Bob pinned Alice from her bundles and has a session with each of her
    devices, used both ways."""

    def __init__(self, tmp_path, stack):
        self.tmp_path = tmp_path

        def open_device(name, device_id, key):
            path = str(tmp_path / f"{name}-{device_id}.db")
            return stack.enter_context(Device.open_or_create(path, bytes([key] * 32), name, device_id, NOW))

        self.phone, self.laptop, self.tablet = (open_device("alice", i, i) for i in (1, 2, 3))
        self.bob = open_device("bob", 1, 4)
        self.alice = UserIdentity.generate()
        devices = [listed(self.phone), listed(self.laptop), listed(self.tablet)]
        self.alice_list = self.alice.sign_device_list("alice", 1, devices)
        for d in (self.phone, self.laptop, self.tablet):
            d.set_device_list(self.alice_list)
        bob_list = UserIdentity.generate().sign_device_list("bob", 1, [listed(self.bob)])
        self.bob.set_device_list(bob_list)
        for d in (self.phone, self.laptop, self.tablet):
            d.update_device_list(bob_list)
        pairs = [
            (self.laptop, self.phone),
            (self.laptop, self.tablet),
            (self.phone, self.tablet),
            (self.bob, self.phone),
            (self.bob, self.laptop),
            (self.bob, self.tablet),
        ]
        for a, b in pairs:
            a.start_session(b.prekey_bundle())
            for sender, to in ((a, b), (b, a)):
                pending = to.decrypt(sender.address(), sender.encrypt(to.address(), b"hello"))
                assert pending.kind() == MessageKind.DIRECT
                assert pending.new_user_identity() is None, "a direct message hands over no user identity"
                to.commit(pending)

    def path(self, d):
        address = d.address()
        return self.tmp_path / f"{address.user_id}-{address.device_id}.db"


@pytest.fixture
def world(tmp_path):
    with contextlib.ExitStack() as stack:
        yield World(tmp_path, stack)


def test_a_lost_tablet_is_removed_for_good(world):
    w = world
    number_before = w.bob.user_safety_number("alice").digits

    # The laptop replaces Alice's user identity without the tablet (the app keeps `fresh` first).
    fresh = UserIdentity.generate()
    replaced = w.laptop.replace_user_identity(fresh, [1])
    assert isinstance(replaced, Replaced)
    assert replaced.list_changed
    assert replaced.removed == (listed(w.tablet),)
    assert replaced.missing == ()
    assert [h.to for h in replaced.handovers] == [w.phone.address()]
    new_list = verify_device_list(replaced.device_list)
    assert (new_list.version, new_list.user_identity_key) == (2, fresh.public_key())
    assert new_list.devices == (listed(w.phone), listed(w.laptop))
    assert w.laptop.device_list() == replaced.device_list

    # The phone reads the handover: the new key, the removed tablet, the new list.
    phone_rows = rows(w.path(w.phone))
    pending = w.phone.decrypt(w.laptop.address(), replaced.handovers[0].message)
    assert pending.kind() == MessageKind.USER_IDENTITY
    assert pending.sender() == w.laptop.address()
    assert (pending.plaintext(), pending.sync_recipient()) == (b"", None)
    handed = pending.new_user_identity()
    assert isinstance(handed, NewUserIdentity) and isinstance(handed.user_identity, UserIdentity)
    assert handed.user_identity.public_key() == fresh.public_key()
    assert handed.removed == (listed(w.tablet),)
    # Nothing added, and the key it replaces is Alice's old one.
    assert handed.added == () and handed.replaced == w.alice.public_key()
    assert handed.device_list == replaced.device_list
    # No secret in what Python prints.
    assert fresh.seed().hex() not in repr(handed) and fresh.public_key().hex() in repr(handed)
    # Nothing written before the commit.
    assert rows(w.path(w.phone)) == phone_rows
    assert w.phone.device_list() == w.alice_list
    # The app keeps the key (its seed, sealed) before the commit.
    kept = UserIdentity.from_seed(handed.user_identity.seed())
    assert kept.public_key() == fresh.public_key()
    # The commit returns the acknowledgment, for the laptop.
    assert [a.to for a in w.phone.commit(pending)] == [w.laptop.address()]
    assert w.phone.device_list() == replaced.device_list
    assert w.phone.user_trust("alice").user_identity_key() == fresh.public_key()

    # The tablet, holding the old key, cannot speak to the phone: no list names it. Nothing changes.
    from_tablet = w.tablet.encrypt(w.phone.address(), b"it's me")
    phone_before = rows(w.path(w.phone))
    unlisted = untrusted(lambda: w.phone.decrypt(w.tablet.address(), from_tablet))
    assert unlisted.identity_key() is None, "an unlisted device: no key to trust"
    assert rows(w.path(w.phone)) == phone_before
    # Nor can it sign its way back in with the old key.
    readded = w.alice.sign_device_list("alice", 7, [listed(w.phone), listed(w.laptop), listed(w.tablet)])
    old_key = untrusted(lambda: w.phone.update_device_list(readded))
    assert old_key.identity_key() == w.alice.public_key()

    # Bob: the new list is a new user identity, refused until he trusts it; nothing changes meanwhile.
    bob_before = rows(w.path(w.bob))
    new_key = untrusted(lambda: w.bob.update_device_list(replaced.device_list))
    assert new_key.identity_key() == fresh.public_key()
    assert rows(w.path(w.bob)) == bob_before
    # The users compare the new safety number; Bob trusts it.
    change = w.bob.trust_new_user_identity(replaced.device_list)
    assert change.removed == (listed(w.tablet),)
    number_after = w.bob.user_safety_number("alice").digits
    assert number_after != number_before
    assert w.phone.user_safety_number("bob").digits == number_after
    # Now Bob refuses the tablet, and the old key's list whatever its version.
    to_bob = w.tablet.encrypt(w.bob.address(), b"send me your files")
    trusted_rows = rows(w.path(w.bob))
    untrusted(lambda: w.bob.decrypt(w.tablet.address(), to_bob))
    untrusted(lambda: w.bob.update_device_list(readded))
    assert rows(w.path(w.bob)) == trusted_rows
    # The remaining devices go on: Bob's fan-out reaches the phone and the laptop only.
    fan = w.bob.encrypt_to_user("alice", b"to both")
    assert [m.to.device_id for m in fan.messages] == [1, 2]
    pending = w.phone.decrypt(w.bob.address(), fan.messages[0].message)
    assert pending.plaintext() == b"to both"
    w.phone.commit(pending)


def test_the_calls_refusals_change_nothing_and_a_call_again_changes_no_list(world):
    w = world
    laptop_rows = rows(w.path(w.laptop))
    # The key the list is already signed by, keeping the phone only (the tablet would go): invalid_argument.
    same = refused(
        InvalidArgumentError,
        "invalid_argument",
        Recovery.FIX_CALL,
        lambda: w.laptop.replace_user_identity(w.alice, [1]),
    )
    assert "already signed" in str(same)
    # An id that is not a device id (the facade's refusal).
    refused(
        InvalidArgumentError,
        "invalid_argument",
        Recovery.FIX_CALL,
        lambda: w.laptop.replace_user_identity(UserIdentity.generate(), [-1]),
    )
    # Wrong types are TypeErrors, before the call.
    with pytest.raises(TypeError):
        w.laptop.replace_user_identity(UserIdentity.generate(), b"\x03")
    with pytest.raises(TypeError):
        w.laptop.replace_user_identity(UserIdentity.generate().seed(), [3])
    assert rows(w.path(w.laptop)) == laptop_rows
    assert w.laptop.device_list() == w.alice_list

    # The replacement, taken by the phone.
    fresh = UserIdentity.generate()
    first = w.laptop.replace_user_identity(fresh, (d for d in [1]))
    assert w.laptop.awaiting_handovers() == [w.phone.address()]
    acks = w.phone.commit(w.phone.decrypt(w.laptop.address(), first.handovers[0].message))
    # The commit returns the acknowledgment, for the laptop's library.
    assert [a.to for a in acks] == [w.laptop.address()]
    pending = w.laptop.decrypt(w.phone.address(), acks[0].message)
    assert pending.kind() == MessageKind.CONTROL
    assert not w.laptop.commit(pending)
    assert w.laptop.awaiting_handovers() == []

    # Called again with the same key (a handover was lost): the handover again, no new list.
    again = w.laptop.replace_user_identity(fresh, [1])
    assert not again.list_changed
    assert (again.removed, again.missing) == ((), ())
    assert again.device_list == first.device_list
    assert [h.to for h in again.handovers] == [w.phone.address()]
    # The phone, which has the list already, reads it as no change.
    pending = w.phone.decrypt(w.laptop.address(), again.handovers[0].message)
    assert pending.kind() == MessageKind.USER_IDENTITY
    handed = pending.new_user_identity()
    assert handed is not None
    assert handed.user_identity.public_key() == fresh.public_key() and handed.removed == ()
    w.phone.commit(pending)
    assert w.phone.device_list() == first.device_list
