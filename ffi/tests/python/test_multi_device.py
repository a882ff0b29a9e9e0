"""Issue 17's multi-device scenario through the Python bindings: three users, Alice with a phone and a
laptop linked by a code, Bob with two devices, Carol with one, each in its own SQLite store. They
converse one to one (a fan-out reaches every listed device of the contact, and our other device as a
sent sync) and in a group whose every device named the three users (add_group_users). Bob drops a lost
device from his list; no app removes it from the group, yet it gets no fan-out, nothing it sends is
taken, and it reads nothing of the group sent after. The same scenario as ffi/tests/kotlin
(MultiDeviceTest.kt); core/tests/multi_device.rs has the full one.
"""

import contextlib

import pytest

from samizdat import Device, ListedDevice, MessageKind, Outgoing, SamizdatError, UserIdentity, verify_device_list

# One day after the epoch: a link code lives ten minutes from its offer.
NOW = 86_400
FAMILY = b"family"


def listed(d):
    return ListedDevice(d.address().device_id, d.identity_key())


class Household:
    """Every device of the scenario, each in its own SQLite store under `tmp_path`."""

    def __init__(self, tmp_path, stack):
        self.tmp_path, self.stack, self.devices = tmp_path, stack, []

    def device(self, name, device_id):
        key = bytes([len(self.devices) + 1] * 32)
        d = Device.open_or_create(str(self.tmp_path / f"{name}-{device_id}.db"), key, name, device_id, NOW)
        self.devices.append(self.stack.enter_context(d))
        return d

    def of(self, address):
        (d,) = [d for d in self.devices if d.address() == address]
        return d

    def connect_all(self):
        """Sessions both ways between every two devices: one starts it from a bundle, the other reads a hello."""
        for a in self.devices:
            for b in self.devices:
                if a.address() != b.address() and not a.has_session(b.address()):
                    a.start_session(b.prekey_bundle())
                    b.commit(b.decrypt(a.address(), a.encrypt(b.address(), b"hello")))

    def deliver(self, sender, sent):
        """Delivers each message from `sender` to its recipient: (kind, plaintext, sync recipient) by address."""
        got = {}
        for outgoing in sent:
            to = self.of(outgoing.to)
            pending = to.decrypt(sender.address(), outgoing.message)
            got[outgoing.to] = (pending.kind(), pending.plaintext(), pending.sync_recipient())
            assert to.commit(pending) == []
        return got

    def group_send(self, sender, text):
        """`sender`'s group message of `text`, its distributions delivered first: who got a chain, and
        who of the other devices read the message. A device that does not read it must lack the chain
        (MissingGroupKey)."""
        sent = sender.group_encrypt(FAMILY, text)
        chains = self.deliver(sender, sent.distributions)
        assert all(got == (MessageKind.CONTROL, b"", None) for got in chains.values()), chains
        readers = set()
        for member in self.devices:
            if member is sender:
                continue
            try:
                got = self.deliver(sender, [Outgoing(member.address(), sent.message)])
            except SamizdatError.MissingGroupKey:
                continue
            assert got == {member.address(): (MessageKind.GROUP, text, None)}
            readers.add(member.address())
        return [o.to for o in sent.distributions], readers


def test_three_users_link_converse_and_drop_a_lost_device(tmp_path):
    alice_user, bob_user, carol_user = UserIdentity.generate(), UserIdentity.generate(), UserIdentity.generate()
    with contextlib.ExitStack() as stack:
        home = Household(tmp_path, stack)
        a1, a2 = home.device("alice", 1), home.device("alice", 2)
        b1, b2 = home.device("bob", 1), home.device("bob", 2)
        c1 = home.device("carol", 1)

        # Alice's phone holds her first list; her laptop shows a code, the phone scans it and links it.
        a1.set_device_list(alice_user.sign_device_list("alice", 1, [listed(a1)]))
        offer = a2.link_offer(NOW)
        linked = a1.link_device(offer.code(), alice_user, NOW)
        provisioned = a2.finish_link(offer, linked.message, NOW)
        assert provisioned.user_identity.public_key() == alice_user.public_key()
        alices = linked.device_list
        assert [d.device_id for d in verify_device_list(alices).devices] == [1, 2]
        assert a2.device_list() == alices
        # Bob's and Carol's lists, set on their devices.
        bobs = bob_user.sign_device_list("bob", 1, [listed(b1), listed(b2)])
        for d in (b1, b2):
            d.set_device_list(bobs)
        carols = carol_user.sign_device_list("carol", 1, [listed(c1)])
        c1.set_device_list(carols)
        # Every device takes the other users' lists (from the directory), then meets every other device.
        lists = {"alice": alices, "bob": bobs, "carol": carols}
        for d in home.devices:
            for user, signed in lists.items():
                if d.address().user_id != user:
                    d.update_device_list(signed)
        home.connect_all()

        # One to one: Alice's phone writes to Bob; both his devices get it, her laptop a sent sync.
        out = a1.encrypt_to_user("bob", b"dinner at 8?")
        assert out.missing == ()
        dinner = (MessageKind.DIRECT, b"dinner at 8?", None)
        assert home.deliver(a1, out.messages) == {b1.address(): dinner, b2.address(): dinner}
        assert home.deliver(a1, out.syncs) == {a2.address(): (MessageKind.SENT_SYNC, b"dinner at 8?", "bob")}
        # Bob answers from his second device: Alice's phone and laptop, and his first device as a sync.
        reply = b2.encrypt_to_user("alice", b"yes")
        yes = (MessageKind.DIRECT, b"yes", None)
        assert home.deliver(b2, reply.messages) == {a1.address(): yes, a2.address(): yes}
        assert home.deliver(b2, reply.syncs) == {b1.address(): (MessageKind.SENT_SYNC, b"yes", "alice")}

        # A group of the three users: every device names the users, their lists give the devices.
        users = ["alice", "bob", "carol"]
        for d in home.devices:
            d.create_group(FAMILY, [])
            d.add_group_users(FAMILY, users)
        assert a1.group_users(FAMILY) == users
        assert a1.group_members(FAMILY) == [d.address() for d in (a2, b1, b2, c1)]
        assert b2.group_members(FAMILY) == [d.address() for d in (a1, a2, b1, c1)]
        for sender in (a1, b2, c1):
            others = {d.address() for d in home.devices if d is not sender}
            given, readers = home.group_send(sender, b"hello from " + sender.address().user_id.encode())
            assert set(given) == others
            assert readers == others

        # Bob's second device is lost: he signs a list without it, which every other device takes.
        # No app removes it from the group.
        without = bob_user.sign_device_list("bob", 2, [listed(b1)])
        b1.set_device_list(without)
        for d in (a1, a2, c1):
            assert [r.device_id for r in d.update_device_list(without).removed] == [2]
        assert a1.group_members(FAMILY) == [d.address() for d in (a2, b1, c1)]

        # One to one: no message is made for the lost device any more, and what it sends is refused.
        after = c1.encrypt_to_user("bob", b"is the lost phone gone?")
        assert [m.to for m in after.messages] == [b1.address()]
        assert after.missing == ()
        assert home.deliver(c1, after.messages) == {b1.address(): (MessageKind.DIRECT, b"is the lost phone gone?", None)}
        with pytest.raises(SamizdatError.UntrustedIdentity):
            c1.encrypt_to_user_devices("bob", b"psst", [b2.address()])
        from_lost = b2.encrypt(a1.address(), b"it's me, Bob's phone")
        with pytest.raises(SamizdatError.UntrustedIdentity):
            a1.decrypt(b2.address(), from_lost)

        # The group: each sender's next message is on a new chain that the lost device never gets.
        remaining = (a1, a2, b1, c1)
        for sender in remaining:
            others = {d.address() for d in remaining if d is not sender}
            given, readers = home.group_send(sender, b"after the loss, from " + str(sender.address()).encode())
            assert b2.address() not in given, f"a chain for the lost device from {sender.address()}"
            assert set(given) == others, "a new chain for every remaining device"
            assert readers == others, "the lost device read the group, or a remaining one did not"
        # Its request for Alice's chain is refused: no list names it.
        last = a1.group_encrypt(FAMILY, b"still there?")
        assert last.distributions == ()
        with pytest.raises(SamizdatError.MissingGroupKey) as missing:
            b2.decrypt(a1.address(), last.message)
        request = missing.value.request()
        assert request is not None, "the lost device has a session with Alice: it asks"
        with pytest.raises(SamizdatError.UntrustedIdentity):
            a1.decrypt(b2.address(), request)
