"""Groups that address users through the Python bindings (PROTOCOL.md 18.8): a member user's member
devices are the devices of its newest verified list; a device a newer list drops stops being a member
before the next group_encrypt (a new chain it never gets) though the app never removed it, and a device a
newer list adds gets the chain; remove_group_users removes a user's devices; a user with no verified
list, and a member user's device named to remove_group_members, are refused with their codes and write
nothing. The same scenarios as ffi/tests/kotlin (GroupUsersTest.kt); core/tests/group_users.rs has the
full set.
"""

import sqlite3

import pytest

from samizdat import (
    Address,
    Device,
    ErrorKind,
    ListedDevice,
    MessageKind,
    Recovery,
    SamizdatError,
    UserIdentity,
)

TEAM = b"team"


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


def connect(devices):
    """Sessions both ways between every two of `devices`: one starts it from a bundle, the other reads a hello."""
    for a in devices:
        for b in devices:
            if a.address() != b.address() and not a.has_session(b.address()):
                a.start_session(b.prekey_bundle())
                b.commit(b.decrypt(a.address(), a.encrypt(b.address(), b"hello")))


def send(sender, devices, text):
    """`sender`'s group message of `text`, its distributions delivered among `devices`: the message, and
    who got a chain."""
    sent = sender.group_encrypt(TEAM, text)
    for outgoing in sent.distributions:
        to = next(d for d in devices if d.address() == outgoing.to)
        pending = to.decrypt(sender.address(), outgoing.message)
        assert pending.kind() == MessageKind.CONTROL, "a distribution: nothing for the app"
        assert to.commit(pending) == []
    return sent.message, [o.to for o in sent.distributions]


def read(to, sender, message):
    """What `to` reads of the group message `message` from `sender` (committed)."""
    pending = to.decrypt(sender.address(), message)
    assert pending.kind() == MessageKind.GROUP
    to.commit(pending)
    return pending.plaintext()


def refused(error_class, code, recovery, call):
    """The failure `call` raises: of `error_class`, with `code` and `recovery`, and a message."""
    with pytest.raises(error_class) as raised:
        call()
    error = raised.value
    assert type(error) is error_class
    assert (error.code(), error.kind(), error.recovery()) == (code, ErrorKind[code.upper()], recovery)
    assert isinstance(error.message, str) and error.message.strip(), repr(error)
    assert str(error) == error.message
    return error


def test_member_devices_follow_the_users_newest_list(tmp_path):
    bob = UserIdentity.generate()
    with device(tmp_path, "alice", 1, 1) as a1, device(tmp_path, "bob", 1, 2) as b1, device(
        tmp_path, "bob", 2, 3
    ) as b2, device(tmp_path, "bob", 3, 4) as b3:
        everyone = [a1, b1, b2, b3]
        connect(everyone)
        for b in (b1, b2, b3):
            b.create_group(TEAM, [a1.address()])
        # Alice's device holds Bob's list naming b1 and b2; her app adds the user Bob.
        a1.update_device_list(bob.sign_device_list("bob", 1, [listed(b1), listed(b2)]))
        a1.create_group(TEAM, [])
        a1.add_group_users(TEAM, ["bob"])
        assert a1.group_users(TEAM) == ["bob"]
        assert a1.group_members(TEAM) == [b1.address(), b2.address()]
        one, given = send(a1, everyone, b"one")
        assert given == [b1.address(), b2.address()]
        assert read(b1, a1, one) == b"one" and read(b2, a1, one) == b"one"

        # Bob's next list drops b1 (lost) and adds b3; Alice's app makes no group call.
        a1.update_device_list(bob.sign_device_list("bob", 2, [listed(b2), listed(b3)]))
        assert a1.group_users(TEAM) == ["bob"]
        assert a1.group_members(TEAM) == [b2.address(), b3.address()]
        two, rotated = send(a1, everyone, b"two")
        assert rotated == [b2.address(), b3.address()], "a new chain, for the listed devices only"
        assert read(b2, a1, two) == b"two"
        assert read(b3, a1, two) == b"two", "the device the newer list added got the chain"
        # The dropped device lacks the new chain; its request for it is refused, as it is no listed device.
        with pytest.raises(SamizdatError.MissingGroupKey) as missing:
            b1.decrypt(a1.address(), two)
        request = missing.value.request()
        assert request is not None, "b1 has a session with Alice: it asks"
        with pytest.raises(SamizdatError.UntrustedIdentity):
            a1.decrypt(b1.address(), request)

        # The next message goes on the new chain: no distribution, and still nothing for b1.
        three, none = send(a1, everyone, b"three")
        assert none == []
        assert read(b2, a1, three) == b"three" and read(b3, a1, three) == b"three"
        with pytest.raises(SamizdatError.MissingGroupKey):
            b1.decrypt(a1.address(), three)


def test_remove_group_users_and_the_refusals(tmp_path):
    bob = UserIdentity.generate()
    alice_path = tmp_path / "alice-1.db"
    with device(tmp_path, "alice", 1, 1) as a1, device(tmp_path, "bob", 1, 2) as b1, device(
        tmp_path, "bob", 2, 3
    ) as b2, device(tmp_path, "carol", 1, 4) as c1:
        everyone = [a1, b1, b2, c1]
        connect(everyone)
        for d in (b1, b2, c1):
            d.create_group(TEAM, [a1.address()])
        a1.update_device_list(bob.sign_device_list("bob", 1, [listed(b1), listed(b2)]))
        # Carol is not pinned: her device is a member per device.
        a1.create_group(TEAM, [c1.address()])

        # A user with no verified list on this device: no_session, and nothing written (not even Bob).
        before = rows(alice_path)
        unpinned = refused(
            SamizdatError.NoSession, "no_session", Recovery.FETCH_BUNDLE, lambda: a1.add_group_users(TEAM, ["bob", "dave"])
        )
        assert unpinned.message == "the user has no verified device list on this device"
        assert rows(alice_path) == before
        assert a1.group_users(TEAM) == []

        a1.add_group_users(TEAM, ("bob",))
        assert a1.group_members(TEAM) == [c1.address(), b1.address(), b2.address()]
        # A member user's device: its list decides; invalid_argument, nothing written.
        followed = rows(alice_path)
        refused_device = refused(
            SamizdatError.InvalidArgument,
            "invalid_argument",
            Recovery.FIX_CALL,
            lambda: a1.remove_group_members(TEAM, [b1.address()]),
        )
        assert refused_device.message == "the device's user is a member: its list decides its devices"
        # A device of a pinned user that its list does not name: untrusted_identity.
        refused(
            SamizdatError.UntrustedIdentity,
            "untrusted_identity",
            Recovery.VERIFY_IDENTITY,
            lambda: a1.add_group_members(TEAM, [Address("bob", 9)]),
        )
        assert rows(alice_path) == followed

        message, given = send(a1, everyone, b"all of us")
        assert given == [c1.address(), b1.address(), b2.address()]
        assert all(read(d, a1, message) == b"all of us" for d in (b1, b2, c1))

        # Removing the user removes its devices: a new chain, for Carol only. Unknown names are ignored.
        a1.remove_group_users(TEAM, ["bob", "nobody"])
        assert a1.group_users(TEAM) == []
        assert a1.group_members(TEAM) == [c1.address()]
        carol_only, rotated = send(a1, everyone, b"carol only")
        assert rotated == [c1.address()]
        assert read(c1, a1, carol_only) == b"carol only"
        for b in (b1, b2):
            with pytest.raises(SamizdatError.MissingGroupKey):
                b.decrypt(a1.address(), carol_only)
        # An unknown group.
        refused(SamizdatError.NotInGroup, "not_in_group", Recovery.DROP, lambda: a1.group_users(b"nope"))
        refused(SamizdatError.NotInGroup, "not_in_group", Recovery.DROP, lambda: a1.add_group_users(b"nope", ["bob"]))


def test_user_ids_are_checked_before_the_call(tmp_path):
    with device(tmp_path, "alice", 1, 1) as a1:
        a1.create_group(TEAM, [])
        # One str is not a list of users (it would be its characters); every item must be a str.
        for wrong in ("bob", b"bob", 42, ["bob", 7], [None]):
            with pytest.raises(TypeError) as error:
                a1.add_group_users(TEAM, wrong)  # type: ignore[arg-type]
            assert str(error.value)
            with pytest.raises(TypeError):
                a1.remove_group_users(TEAM, wrong)  # type: ignore[arg-type]
        with pytest.raises(TypeError):
            a1.group_users("team")  # type: ignore[arg-type]
        # Any iterable of str.
        a1.remove_group_users(bytearray(TEAM), iter(["bob"]))
        assert a1.group_users(memoryview(TEAM)) == []
