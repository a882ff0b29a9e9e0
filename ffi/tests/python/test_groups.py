"""Groups (Sender Keys) through the Python bindings: the same scenarios as
ffi/tests/kotlin (GroupTest.kt) and core/tests/groups.rs.

Every pair of devices in a World has a session both ways; messages are
delivered by hand, in whatever order a test wants, as a server would.
"""

import gc

import pytest

from samizdat import Address, Device, IncomingMessage, MessageKind, Outgoing, Recovery, SamizdatError

GROUP = b"book club"


class World:
    """`n` devices (`m0`, `m1`, ...) on SQLite stores, with sessions between every two."""

    def __init__(self, tmp_path, n):
        self.devices = [
            Device.open_or_create(str(tmp_path / f"m{i}.db"), bytes([i + 1] * 32), f"m{i}", 1, 0) for i in range(n)
        ]
        for i in range(n):
            for j in range(i + 1, n):
                self.connect(i, j)

    def connect(self, i, j):
        a, b = self.devices[i], self.devices[j]
        a.start_session(b.prekey_bundle())
        b.commit(b.decrypt(a.address(), a.encrypt(b.address(), b"hello")))
        a.commit(a.decrypt(b.address(), b.encrypt(a.address(), b"hello back")))

    def address(self, i):
        return self.devices[i].address()

    def index(self, address):
        return next(i for i, d in enumerate(self.devices) if d.address() == address)

    def create(self, group, members):
        """Every member creates `group` with the others (the app tells each of its devices)."""
        for i in members:
            self.devices[i].create_group(group, [self.address(j) for j in members if j != i])

    def receive(self, sender, to, wire):
        """Decrypt, "store", commit: what an app does; returns (kind, plaintext, what to send, in order)."""
        device = self.devices[to]
        pending = device.decrypt(self.address(sender), wire)
        kind, plaintext = pending.kind(), pending.plaintext()
        answers = device.commit(pending)
        return kind, plaintext, answers

    def distribute(self, sender, sent):
        """Delivers a send's distributions: control messages, answered by nothing."""
        for outgoing in sent.distributions:
            assert self.receive(sender, self.index(outgoing.to), outgoing.message) == (MessageKind.CONTROL, b"", [])

    def send(self, sender, group, text):
        sent = self.devices[sender].group_encrypt(group, text)
        self.distribute(sender, sent)
        return sent


def test_three_members_out_of_order(tmp_path):
    world = World(tmp_path, 3)
    world.create(GROUP, [0, 1, 2])
    assert world.devices[0].group_members(GROUP) == [world.address(1), world.address(2)]
    sent = []
    for sender in range(3):
        first = world.send(sender, GROUP, f"{sender}:0".encode())
        assert sorted(d.to.user_id for d in first.distributions) == [f"m{j}" for j in range(3) if j != sender]
        assert first.without_session == ()
        rest = [world.send(sender, GROUP, f"{sender}:{k}".encode()) for k in (1, 2)]
        sent.append([first.message] + [r.message for r in rest])
    for sender, messages in enumerate(sent):
        for to in (t for t in range(3) if t != sender):
            for k in (2, 0, 1):  # delivered third, first, second
                pending = world.devices[to].decrypt(world.address(sender), messages[k])
                assert pending.kind() == MessageKind.GROUP
                assert pending.group_id() == GROUP
                assert pending.plaintext() == f"{sender}:{k}".encode()
                assert pending.sender() == world.address(sender)
                assert pending.sender_identity() == world.devices[sender].identity_key()  # the chain came under it
                assert world.devices[to].commit(pending) == []
            with pytest.raises(SamizdatError.Duplicate):
                world.devices[to].decrypt(world.address(sender), messages[0])


def test_distributions_are_never_sent_twice(tmp_path):
    world = World(tmp_path, 3)
    world.create(GROUP, [0, 1])
    first = world.send(0, GROUP, b"one")
    assert [d.to for d in first.distributions] == [world.address(1)]
    # Members that have the chain never get it again, not even after a restart.
    assert world.send(0, GROUP, b"two").distributions == ()
    world.devices[0] = None  # the last reference: the store is released
    gc.collect()
    world.devices[0] = Device.open(str(tmp_path / "m0.db"), bytes([1] * 32))
    assert world.send(0, GROUP, b"three").distributions == ()
    # An added member gets the chain once, from now on; the others get nothing.
    for i, others in ((0, [2]), (1, [2])):
        world.devices[i].add_group_members(GROUP, [world.address(j) for j in others])
    world.devices[2].create_group(GROUP, [world.address(0), world.address(1)])
    welcome = world.send(0, GROUP, b"welcome")
    assert [d.to for d in welcome.distributions] == [world.address(2)]
    assert world.receive(0, 2, welcome.message) == (MessageKind.GROUP, b"welcome", [])
    assert world.receive(0, 1, welcome.message)[1] == b"welcome"
    assert world.send(0, GROUP, b"after").distributions == ()


def test_a_removed_member_cannot_read_new_messages(tmp_path):
    world = World(tmp_path, 3)
    world.create(GROUP, [0, 1, 2])
    before = world.send(0, GROUP, b"before")
    for to in (1, 2):
        assert world.receive(0, to, before.message)[1] == b"before"
    for i in (0, 1):
        world.devices[i].remove_group_members(GROUP, [world.address(2)])
    assert world.devices[0].group_members(GROUP) == [world.address(1)]
    after = world.send(0, GROUP, b"after")
    assert [d.to for d in after.distributions] == [world.address(1)]  # a new chain, for member 1 only
    assert world.receive(0, 1, after.message) == (MessageKind.GROUP, b"after", [])
    # The removed device lacks the new chain; its request goes unanswered.
    with pytest.raises(SamizdatError.MissingGroupKey) as missing:
        world.devices[2].decrypt(world.address(0), after.message)
    assert missing.value.recovery() == Recovery.RETRY_LATER
    request = missing.value.request()
    assert request is not None
    del missing
    assert world.receive(2, 0, request) == (MessageKind.CONTROL, b"", [])
    with pytest.raises(SamizdatError.MissingGroupKey):
        world.devices[2].decrypt(world.address(0), after.message)
    # Its own messages are refused by the remaining members.
    from_removed = world.devices[2].group_encrypt(GROUP, b"still here?")
    with pytest.raises(SamizdatError.NotInGroup) as not_member:
        world.devices[0].decrypt(world.address(2), from_removed.message)
    assert not_member.value.message == "the sender is not a member of the group"
    del not_member
    # The remaining members go on.
    reply = world.send(1, GROUP, b"reply")
    assert [d.to for d in reply.distributions] == [world.address(0)]
    assert world.receive(1, 0, reply.message)[1] == b"reply"


def test_a_lost_distribution_is_recovered_by_a_request(tmp_path):
    world = World(tmp_path, 3)
    world.create(GROUP, [0, 1, 2])
    first = world.devices[0].group_encrypt(GROUP, b"first")
    # The distribution to member 1 is lost; member 2 gets its own.
    for outgoing in first.distributions:
        if outgoing.to == world.address(2):
            world.receive(0, 2, outgoing.message)
    second = world.send(0, GROUP, b"second")
    with pytest.raises(SamizdatError.MissingGroupKey) as missing:
        world.devices[1].decrypt(world.address(0), second.message)
    chain_id, request = missing.value.chain_id, missing.value.request()
    assert missing.value.request_hex == request.hex()
    del missing
    # The same chain for the first message (asking once more is allowed, and bounded).
    with pytest.raises(SamizdatError.MissingGroupKey) as again:
        world.devices[1].decrypt(world.address(0), first.message)
    assert again.value.chain_id == chain_id
    del again
    # The sender's commit of the request returns the answer, for member 1.
    kind, plaintext, answers = world.receive(1, 0, request)
    assert (kind, plaintext) == (MessageKind.CONTROL, b"")
    assert len(answers) == 1  # member 1 is a member: its request is answered, once
    answer = answers[0]
    assert isinstance(answer, Outgoing) and answer.to == world.address(1)
    pending = world.devices[1].decrypt(world.address(0), answer.message)
    assert (pending.kind(), pending.group_id(), pending.plaintext()) == (MessageKind.CONTROL, GROUP, b"")
    assert pending.sender_identity() == world.devices[0].identity_key()
    assert world.devices[1].commit(pending) == []
    # The held message decrypts now, and so do the next ones, with no distribution.
    assert world.receive(0, 1, second.message) == (MessageKind.GROUP, b"second", [])
    third = world.send(0, GROUP, b"third")
    assert third.distributions == ()
    assert world.receive(0, 1, third.message)[1] == b"third"


def test_a_forged_group_message_is_refused(tmp_path):
    world = World(tmp_path, 3)
    world.create(GROUP, [0, 1, 2])
    sent = world.send(0, GROUP, b"genuine")
    for at in (len(sent.message) - 1, len(sent.message) // 2):  # the signature; the body
        forged = bytearray(sent.message)
        forged[at] ^= 0x01
        with pytest.raises(SamizdatError.InvalidMessage):
            world.devices[1].decrypt(world.address(0), bytes(forged))
    # Attributed to another member: not a chain of that member's.
    with pytest.raises(SamizdatError.MissingGroupKey):
        world.devices[1].decrypt(world.address(2), sent.message)
    # Nothing changed: the genuine message decrypts, once.
    assert world.receive(0, 1, sent.message) == (MessageKind.GROUP, b"genuine", [])
    with pytest.raises(SamizdatError.Duplicate):
        world.devices[1].decrypt(world.address(0), sent.message)


def test_group_errors(tmp_path):
    world = World(tmp_path, 3)
    world.create(GROUP, [0, 1])
    m0 = world.devices[0]
    sent = world.send(0, GROUP, b"hi")
    # Unknown group, then a sender that is not a member: both not in the group, told apart by the text.
    with pytest.raises(SamizdatError.NotInGroup) as error:
        world.devices[2].decrypt(world.address(0), sent.message)
    assert error.value.message == "unknown group"
    world.devices[2].create_group(GROUP, [world.address(1)])
    with pytest.raises(SamizdatError.NotInGroup) as error:
        world.devices[2].decrypt(world.address(0), sent.message)
    assert error.value.message == "the sender is not a member of the group"
    with pytest.raises(SamizdatError.InvalidArgument) as error:
        m0.create_group(b"g9", [m0.address()])
    assert error.value.message == "this device cannot be its own group member"
    with pytest.raises(SamizdatError.InvalidArgument) as error:
        m0.create_group(GROUP, [world.address(1)])
    assert error.value.message == "the group already exists"
    del error
    with pytest.raises(SamizdatError.InvalidArgument):
        m0.create_group(bytes(65), [])
    with pytest.raises(SamizdatError.InvalidArgument):
        m0.create_group(b"g9", [Address(user_id="", device_id=1)])
    with pytest.raises(SamizdatError.LimitExceeded) as too_many:
        m0.create_group(b"big", [Address(user_id=f"u{i}", device_id=1) for i in range(5001)])
    assert too_many.value.message == "a group holds at most 5000 member devices"
    del too_many
    with pytest.raises(SamizdatError.NotInGroup):
        m0.group_encrypt(b"nope", b"x")
    with pytest.raises(SamizdatError.LimitExceeded):
        m0.group_encrypt(GROUP, bytes(300 * 1024))
    # A member without a session is reported; it gets the chain once there is one.
    m0.add_group_members(GROUP, [Address(user_id="stranger", device_id=1)])
    assert world.send(0, GROUP, b"x").without_session == (Address("stranger", 1),)
    # Leaving: the group is gone from this device.
    m0.delete_group(GROUP)
    with pytest.raises(SamizdatError.NotInGroup):
        m0.group_members(GROUP)
    with pytest.raises(SamizdatError.NotInGroup):
        m0.delete_group(GROUP)


def test_a_batch_leaves_control_messages_for_decrypt(tmp_path):
    world = World(tmp_path, 2)
    world.create(GROUP, [0, 1])
    sent = world.devices[0].group_encrypt(GROUP, b"x")
    direct = world.devices[0].encrypt(world.address(1), b"direct")
    sender = world.address(0)
    batch = world.devices[1].decrypt_batch(
        [IncomingMessage(sender=sender, ciphertext=sent.distributions[0].message),
         IncomingMessage(sender=sender, ciphertext=direct)]
    )
    results = batch.results()
    # Left for decrypt: not consumed, decrypt it again (alone).
    assert isinstance(results[0].error, SamizdatError.StalePending)
    assert results[0].error.recovery() == Recovery.DECRYPT_AGAIN
    assert results[1].plaintext == b"direct"
    world.devices[1].commit_batch(batch)
    # Not consumed: it decrypts alone, then the group message does.
    assert world.receive(0, 1, sent.distributions[0].message) == (MessageKind.CONTROL, b"", [])
    assert world.receive(0, 1, sent.message) == (MessageKind.GROUP, b"x", [])
    # A direct message says so.
    pending = world.devices[1].decrypt(sender, world.devices[0].encrypt(world.address(1), b"d"))
    assert (pending.kind(), pending.group_id()) == (MessageKind.DIRECT, None)
    assert pending.sender_identity() == world.devices[0].identity_key()
