"""Healing through the Python bindings (PROTOCOL.md 20): the sealed outbox, message ids, and the
reset that brings a lost message again. The same scenarios as ffi/tests/kotlin (HealingTest.kt);
core/tests/healing.rs has the full set.
"""

import pytest

import samizdat
from samizdat import Device, HealPolicy, HealResult, MessageKind, SamizdatError

# core/src/device/healing.rs: HealPolicy::default() (an hour between resets, 30 days, 256 messages, no resend
# to a new identity).
RESET_INTERVAL = 3600
OUTBOX_MAX_AGE = 30 * 24 * 3600
MAX_OUTBOX_MESSAGES = 256


def pair(tmp_path):
    """Alice and Bob, each in a SQLite store, with a session Alice started; returns Bob's address too."""
    alice = Device.open_or_create(str(tmp_path / "alice.db"), bytes([1] * 32), "alice", 1, 0)
    bob = Device.open_or_create(str(tmp_path / "bob.db"), bytes([2] * 32), "bob", 1, 0)
    return alice, bob, alice.start_session(bob.prekey_bundle())


def receive(to, sender, wire):
    """Decrypt, "store", commit: returns (kind, plaintext, message id, what the commit returned)."""
    pending = to.decrypt(sender.address(), wire)
    got = (pending.kind(), pending.plaintext(), pending.message_id())
    return got + (to.commit(pending),)


def lost_and_healed(tmp_path):
    """Alice keeps "first" (delivered) and "lost"; Bob, who could not read "lost", heals at 10.

    Returns the devices, `lost` as first sent, and the resends Alice's commit of the reset returned.
    """
    alice, bob, bob_address = pair(tmp_path)
    first = alice.encrypt_kept(bob_address, b"first", 0)
    assert receive(bob, alice, first)[:2] == (MessageKind.DIRECT, b"first")
    lost = alice.encrypt_kept(bob_address, b"lost", 0)
    healed = bob.heal(alice.prekey_bundle(), [lost], 10)
    assert isinstance(healed, HealResult.SENT), healed
    assert healed.reset.to == alice.address()
    assert bob.awaiting_resends(alice.address()) == 1
    kind, plaintext, _, resends = receive(alice, bob, healed.reset.message)
    assert (kind, plaintext) == (MessageKind.CONTROL, b"")  # the reset: nothing for the app
    assert len(resends) == 1, "the one message of the reset that Alice's outbox holds"
    assert resends[0].to == bob_address
    return alice, bob, bob_address, lost, resends[0].message


def test_the_outbox_keeps_a_message_until_it_is_acknowledged(tmp_path):
    alice, bob, bob_address = pair(tmp_path)
    assert alice.heal_policy() == HealPolicy(
        reset_interval=RESET_INTERVAL,
        outbox_max_age=OUTBOX_MAX_AGE,
        outbox_max_messages=MAX_OUTBOX_MESSAGES,
        resend_to_new_identity=False,
    )
    wire = alice.encrypt_kept(bob_address, b"kept until acknowledged", 1000)
    assert alice.outbox_len(bob_address) == 1
    alice.encrypt(bob_address, b"not kept")  # a plain encrypt keeps nothing
    assert alice.outbox_len(bob_address) == 1
    # Both sides name the message by the same id: of its wire bytes.
    pending = bob.decrypt(alice.address(), wire)
    message_id = pending.message_id()
    assert len(message_id) == 16
    assert message_id == samizdat.message_id(wire)
    assert message_id != samizdat.message_id(wire + b"x")
    assert bob.commit(pending) == []
    # Bob's receipt carries the id; Alice's acknowledgement removes the plaintext.
    with pytest.raises(SamizdatError.InvalidArgument) as wrong:
        alice.acknowledge(bob_address, [message_id, message_id[:15]])
    assert wrong.value.message == "message id 1 has 15 bytes, expected 16"
    assert wrong.value.code() == "invalid_argument"
    del wrong
    assert alice.outbox_len(bob_address) == 1, "a refused call removes nothing"
    assert alice.acknowledge(bob_address, [message_id, bytes(16)]) == 1  # ids it does not hold are ignored
    assert alice.outbox_len(bob_address) == 0
    assert alice.acknowledge(bob_address, [message_id]) == 0
    # What no receipt acknowledged goes when it is past the policy's age.
    alice.encrypt_kept(bob_address, b"never acknowledged", 2000)
    assert alice.expire_outbox(2000 + OUTBOX_MAX_AGE - 1) == 0
    assert alice.expire_outbox(2000 + OUTBOX_MAX_AGE) == 1
    assert alice.outbox_len(bob_address) == 0


def test_a_lost_message_is_sent_again_after_a_reset(tmp_path):
    alice, bob, bob_address, lost, resend = lost_and_healed(tmp_path)
    # The resend reaches Bob as a direct message, under the id it was first sent with.
    kind, plaintext, message_id, answers = receive(bob, alice, resend)
    assert (kind, plaintext) == (MessageKind.DIRECT, b"lost")
    assert message_id == samizdat.message_id(lost)
    assert answers == []
    assert bob.awaiting_resends(alice.address()) == 0
    # The outbox still holds both until Bob's receipts come.
    assert alice.outbox_len(bob_address) == 2
    assert alice.acknowledge(bob_address, [message_id]) == 1
    # One reset per interval: a second one now is refused, and says when it may go.
    again = bob.heal(alice.prekey_bundle(), [lost], 20)
    assert again == HealResult.TOO_SOON(retry_at=10 + RESET_INTERVAL)
    assert again.retry_at == 3610
    # The new session carries the conversation on, both ways.
    assert receive(bob, alice, alice.encrypt(bob_address, b"after"))[:2] == (MessageKind.DIRECT, b"after")
    assert receive(alice, bob, bob.encrypt(alice.address(), b"back"))[:2] == (MessageKind.DIRECT, b"back")


def test_a_message_reaches_the_app_once_whichever_copy_comes_first(tmp_path):
    # The resend first: the original, delivered late, is a duplicate; so is a replay of the resend.
    (tmp_path / "resend_first").mkdir()
    alice, bob, _, lost, resend = lost_and_healed(tmp_path / "resend_first")
    assert receive(bob, alice, resend)[:2] == (MessageKind.DIRECT, b"lost")
    for copy in (lost, resend):
        with pytest.raises(SamizdatError.Duplicate) as duplicate:
            bob.decrypt(alice.address(), copy)
        assert duplicate.value.code() == "duplicate"
        del duplicate
    # The original first: the resend is a control message, nothing for the app.
    (tmp_path / "original_first").mkdir()
    alice, bob, _, lost, resend = lost_and_healed(tmp_path / "original_first")
    assert receive(bob, alice, lost)[:2] == (MessageKind.DIRECT, b"lost")
    assert bob.awaiting_resends(alice.address()) == 0, "read as first sent: its resend is awaited no more"
    kind, plaintext, message_id, answers = receive(bob, alice, resend)
    assert (kind, plaintext, answers) == (MessageKind.CONTROL, b"", [])
    assert message_id is not None


def test_the_heal_policy(tmp_path):
    alice, bob, bob_address = pair(tmp_path)
    too_many = HealPolicy(
        reset_interval=0, outbox_max_age=60, outbox_max_messages=MAX_OUTBOX_MESSAGES + 1, resend_to_new_identity=False
    )
    with pytest.raises(SamizdatError.InvalidArgument) as error:
        bob.set_heal_policy(too_many)
    assert error.value.code() == "invalid_argument"
    del error
    assert bob.heal_policy().reset_interval == RESET_INTERVAL, "a refused policy changes nothing"
    # Without an interval, a second reset goes at once.
    policy = HealPolicy(
        reset_interval=0, outbox_max_age=60, outbox_max_messages=MAX_OUTBOX_MESSAGES, resend_to_new_identity=True
    )
    bob.set_heal_policy(policy)
    assert bob.heal_policy() == policy
    receive(bob, alice, alice.encrypt(bob_address, b"hello"))
    for now in (10, 10):
        healed = bob.heal(alice.prekey_bundle(), [], now)
        assert isinstance(healed, HealResult.SENT), healed
        assert receive(alice, bob, healed.reset.message)[:2] == (MessageKind.CONTROL, b"")
