"""Linking a new device through the Python bindings (PROTOCOL.md 23.8): Alice's laptop shows a code,
her phone links it, the laptop finishes with her user identity, her list and the contact it was given;
a message for another offer, a second finish and an expired code are refused with their codes and
write nothing; Bob takes the new list and talks to the laptop. Then every other refusal a binding can
provoke, each with its code, recovery and message. The same scenarios as ffi/tests/kotlin
(LinkingTest.kt); core/tests/linking.rs has the full set.
"""

import copy
import pickle
import sqlite3

import pytest

from samizdat import (
    Device,
    DuplicateError,
    ErrorKind,
    InvalidArgumentError,
    InvalidMessageError,
    LimitExceededError,
    Linked,
    LinkOffer,
    ListedDevice,
    Provisioned,
    Recovery,
    SamizdatError,
    UntrustedIdentityError,
    UserIdentity,
    verify_device_list,
)

# One day after the epoch; a code lives ten minutes (LINK_CODE_LIFETIME_SECS).
NOW = 86_400
ELEVEN_MINUTES = 11 * 60
# MAX_DEVICES_PER_USER (PROTOCOL.md 23.2).
MAX_DEVICES_PER_USER = 32


def device(tmp_path, name, device_id, key):
    return Device.open_or_create(str(tmp_path / f"{name}-{device_id}.db"), bytes([key] * 32), name, device_id, NOW)


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


def test_a_phone_links_a_laptop_and_bob_talks_to_it(tmp_path):
    alice, bob_user = UserIdentity.generate(), UserIdentity.generate()
    phone_path, laptop_path = tmp_path / "alice-1.db", tmp_path / "alice-2.db"
    with device(tmp_path, "alice", 1, 1) as phone, device(tmp_path, "alice", 2, 2) as laptop, device(
        tmp_path, "bob", 1, 3
    ) as bob:
        phone.set_device_list(alice.sign_device_list("alice", 1, [listed(phone)]))
        bob.set_device_list(bob_user.sign_device_list("bob", 1, [listed(bob)]))
        # Bob pins Alice from her phone's bundle, the phone pins Bob from his; they talk.
        bob.start_session(phone.prekey_bundle())
        phone.start_session(bob.prekey_bundle())
        phone.commit(phone.decrypt(bob.address(), bob.encrypt(phone.address(), b"hello Alice")))

        # The laptop shows a code; the phone scans it and links the laptop.
        offer = laptop.link_offer(NOW)
        assert isinstance(offer, LinkOffer) and offer.address() == laptop.address()
        assert len(offer.code()) > 0
        linked = phone.link_device(offer.code(), alice, NOW)
        assert isinstance(linked, Linked)
        assert linked.list_changed and linked.device == laptop.address()
        listed_now = verify_device_list(linked.device_list)
        assert listed_now.version == 2
        assert listed_now.devices == (listed(phone), listed(laptop))
        assert phone.device_list() == linked.device_list

        # Before the laptop finishes, Bob (with Alice's old list) refuses it: no ghost.
        with pytest.raises(UntrustedIdentityError):
            bob.start_session(laptop.prekey_bundle())

        # The message of another offer does not open: invalid_message, nothing written.
        before = rows(laptop_path)
        other = laptop.link_offer(NOW)
        wrong = refused(
            SamizdatError.InvalidMessage, "invalid_message", Recovery.DROP, lambda: laptop.finish_link(other, linked.message, NOW)
        )
        assert "not for this offer" in str(wrong)
        assert rows(laptop_path) == before

        # The laptop finishes: Alice's user identity, her list, and Bob pinned as the phone had him.
        provisioned = laptop.finish_link(offer, linked.message, NOW)
        assert isinstance(provisioned, Provisioned) and isinstance(provisioned.user_identity, UserIdentity)
        assert provisioned.user_identity.public_key() == alice.public_key()
        assert provisioned.user_identity.seed() == alice.seed()
        assert provisioned.device_list == linked.device_list
        assert laptop.device_list() == phone.device_list()
        assert (provisioned.pinned_users, provisioned.newly_pinned, provisioned.linked_by) == (1, 1, phone.address())
        bob_on_laptop = laptop.user_trust("bob")
        assert bob_on_laptop is not None
        assert bob_on_laptop.user_identity_key() == bob_user.public_key()
        assert bob_on_laptop.list() == phone.user_trust("bob").list()
        # No secret in what Python prints, and none that pickles.
        assert alice.seed().hex() not in repr(provisioned)
        assert alice.public_key().hex() in repr(provisioned)
        assert offer.code().hex() not in repr(offer) and repr(offer) == "<samizdat.LinkOffer for alice.2>"
        with pytest.raises(TypeError):
            pickle.dumps(offer)
        with pytest.raises(TypeError):
            copy.deepcopy(offer)

        # Finishing twice: duplicate, nothing written.
        provisioned_rows = rows(laptop_path)
        refused(DuplicateError, "duplicate", Recovery.DROP, lambda: laptop.finish_link(offer, linked.message, NOW))
        assert rows(laptop_path) == provisioned_rows

        # A code scanned eleven minutes after it was made: expired, invalid_argument, nothing written.
        late = laptop.link_offer(NOW)
        phone_rows = rows(phone_path)
        expired = refused(
            InvalidArgumentError,
            "invalid_argument",
            Recovery.FIX_CALL,
            lambda: phone.link_device(late.code(), alice, NOW + ELEVEN_MINUTES),
        )
        assert "expired" in str(expired)
        assert rows(phone_path) == phone_rows
        # Scanned in time, it links again without a new list; finished eleven minutes late, it is refused.
        again = phone.link_device(late.code(), alice, NOW)
        assert not again.list_changed and again.device_list == linked.device_list
        refused(
            InvalidArgumentError,
            "invalid_argument",
            Recovery.FIX_CALL,
            lambda: laptop.finish_link(late, again.message, NOW + ELEVEN_MINUTES),
        )

        # Bob takes the published list, starts a session from the laptop's bundle, and they talk.
        change = bob.update_device_list(linked.device_list)
        assert change.added == (listed(laptop),) and change.removed == ()
        assert bob.start_session(laptop.prekey_bundle()) == laptop.address()
        pending = laptop.decrypt(bob.address(), bob.encrypt(laptop.address(), b"hi laptop"))
        assert (pending.plaintext(), pending.sender_identity()) == (b"hi laptop", bob.identity_key())
        laptop.commit(pending)
        pending = bob.decrypt(laptop.address(), laptop.encrypt(bob.address(), b"hi Bob"))
        assert pending.plaintext() == b"hi Bob"
        bob.commit(pending)


def test_every_refusal_has_its_code_recovery_and_message(tmp_path):
    alice = UserIdentity.generate()
    with device(tmp_path, "alice", 1, 1) as phone, device(tmp_path, "alice", 2, 2) as laptop, device(
        tmp_path, "alice", 3, 4
    ) as tablet, device(tmp_path, "carol", 1, 5) as carol:
        phone.set_device_list(alice.sign_device_list("alice", 1, [listed(phone)]))
        offer = laptop.link_offer(NOW)
        cases = [
            ("invalid_argument", lambda: phone.link_device(b"\x01\x02\x03", alice, NOW), "not a link code"),
            ("invalid_argument", lambda: phone.link_device(carol.link_offer(NOW).code(), alice, NOW), "carol"),
            ("invalid_argument", lambda: phone.link_device(phone.link_offer(NOW).code(), alice, NOW), "itself"),
            # A device with no list of its own has nothing to add the laptop to.
            ("invalid_argument", lambda: tablet.link_device(offer.code(), alice, NOW), "no device list"),
            # Another user identity than the one of the phone's list.
            ("invalid_argument", lambda: phone.link_device(offer.code(), UserIdentity.generate(), NOW), "user identity"),
            # The laptop's offer finished on another device.
            ("invalid_argument", lambda: tablet.finish_link(offer, bytes(64), NOW), "link code is of user"),
            ("invalid_message", lambda: laptop.finish_link(offer, b"\x01\x02\x03", NOW), "not a link message"),
        ]
        for code, call, text in cases:
            kind = ErrorKind[code.upper()]
            error_class = InvalidMessageError if code == "invalid_message" else InvalidArgumentError
            error = refused(error_class, code, kind.recovery(), call)
            assert text in str(error), f"{error} should say {text}"

        # Wrong types are refused before the library sees them.
        with pytest.raises(TypeError):
            phone.link_device(offer.code(), alice.seed(), NOW)  # type: ignore[arg-type]
        with pytest.raises(TypeError):
            laptop.finish_link(offer.code(), b"x", NOW)  # type: ignore[arg-type]
        with pytest.raises(TypeError):
            LinkOffer(object())

        # An altered message: invalid_message; the unaltered one still links (bytes-like arguments).
        linked = phone.link_device(bytearray(offer.code()), alice, NOW)
        altered = linked.message[:-1] + bytes([linked.message[-1] ^ 1])
        refused(InvalidMessageError, "invalid_message", Recovery.DROP, lambda: laptop.finish_link(offer, altered, NOW))
        provisioned = laptop.finish_link(offer, memoryview(linked.message), NOW)
        assert provisioned.pinned_users == 0

        # A full list: limit_exceeded (32 devices: the phone and 31 others).
        others = [ListedDevice(i + 10, UserIdentity.generate().public_key()) for i in range(2, MAX_DEVICES_PER_USER + 1)]
        phone.set_device_list(alice.sign_device_list("alice", 3, [listed(phone)] + others))
        full = refused(
            LimitExceededError,
            "limit_exceeded",
            Recovery.FIX_CALL,
            lambda: phone.link_device(tablet.link_offer(NOW).code(), alice, NOW),
        )
        assert "full" in str(full)
