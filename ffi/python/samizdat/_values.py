"""Plain values of the facade: enums, records, and the checks that turn a
caller's arguments into what the generated module takes.

Every record is a frozen dataclass: positional or keyword construction, a
real ``repr``, ``==`` by value (``False`` against any other type), hashable
when its fields are, and ``dataclasses.asdict`` works. Sequences inside a
record are tuples, so that a frozen record is immutable all the way down.

The ``to_native``/``from_native`` helpers are private: the generated module
(``samizdat._native``) is never handed a value that it could refuse half-way
through a call (it clones a device's handle before converting the
arguments, and a conversion error leaked that clone).
"""

from __future__ import annotations

import dataclasses
import enum
import operator
import os
from typing import Any, Iterable, List, Optional, Tuple, Union

from . import _native

#: Anything ``os.fspath`` takes: ``str``, ``pathlib.Path`` or another ``os.PathLike``.
StrPath = Union[str, "os.PathLike[str]"]

#: Any object with the buffer protocol: ``bytes``, ``bytearray``, ``memoryview``, ``array.array``...
BytesLike = Union[bytes, bytearray, memoryview]

_U32_MAX = (1 << 32) - 1
# Times, ages and sizes cross the boundary as signed 64-bit integers (Long
# in Kotlin and Java), counts as signed 32-bit ones: a larger value is
# refused here, before the generated code sees it.
_I63_MAX = (1 << 63) - 1
_I31_MAX = (1 << 31) - 1


class MessageKind(enum.Enum):
    """What a decrypted message is (``PendingMessage.kind()``)."""

    DIRECT = 0
    """A one-to-one message."""
    GROUP = 1
    """A group message (``PendingMessage.group_id()`` names the group)."""
    CONTROL = 2
    """A control message (a chain, a request for one, a reset): no plaintext to show."""
    SENT_SYNC = 3
    """A copy of a message our own user sent from another of its devices (a fan-out's sent
    sync, PROTOCOL.md 23.7): its plaintext went to the user ``PendingMessage.sync_recipient()``."""
    USER_IDENTITY = 4
    """A new user identity another device of our own user handed over after it removed a lost
    device: ``PendingMessage.new_user_identity()`` gives it. Keep its user identity (its seed,
    sealed) before the commit, which makes the new list this device's own. No plaintext."""


class ScrubResult(enum.Enum):
    """What ``Device.scrub`` and ``rotate_storage_key`` did to the store's files."""

    DONE = 0
    """No byte of an overwritten or deleted row is left in the store's files."""
    DEFERRED = 1
    """Another connection kept the scrub from finishing: nothing is lost; call again later."""


class MismatchedSide(enum.Enum):
    """Which identity differs between a scanned code and our safety number."""

    LOCAL = 0
    """The peer holds a different identity for us."""
    REMOTE = 1
    """We hold a different identity for the peer."""
    BOTH = 2
    """Both differ, or the scan is not a safety number this release reads."""


class Recovery(enum.Enum):
    """What an app does about an error (``SamizdatError.recovery()``)."""

    DROP = 0
    """Drop the message and acknowledge it to the server: it will never decrypt."""
    RETRY_LATER = 1
    """Keep what was being done and try again later."""
    DECRYPT_AGAIN = 2
    """Decrypt the message again now (nothing was consumed)."""
    HEAL = 3
    """Fetch the peer's bundle, call ``Device.heal`` with the messages that failed, send the reset."""
    FETCH_BUNDLE = 4
    """Fetch the peer's prekey bundle from the server and start a session."""
    VERIFY_IDENTITY = 5
    """Ask the user to verify the peer's identity (compare safety numbers)."""
    REOPEN_STORE = 6
    """Open the store again (with the right key; in this process)."""
    FIX_CALL = 7
    """The call itself is wrong: fix the code that made it."""

    def code(self) -> str:
        """The stable code in ``snake_case`` (``"retry_later"``), as every binding spells it."""
        return str(_native.Recovery[self.name].code())


class ErrorKind(enum.Enum):
    """The stable error code of a ``SamizdatError`` (the fifteen codes of PROTOCOL.md 19)."""

    DUPLICATE = 0
    """The message was already decrypted (``DuplicateError``)."""
    INVALID_MESSAGE = 1
    """Malformed, forged or altered (``InvalidMessageError``)."""
    OUT_OF_STEP = 2
    """The peer's, but no state of the session can read it (``OutOfStepError``)."""
    NO_SESSION = 3
    """No session with the peer (``NoSessionError``)."""
    UNTRUSTED_IDENTITY = 4
    """The peer's identity key changed (``UntrustedIdentityError``)."""
    IDENTITY_MISMATCH = 5
    """A scanned safety number does not match (``IdentityMismatchError``)."""
    INVALID_BUNDLE = 6
    """A prekey bundle that does not verify (``InvalidBundleError``)."""
    MISSING_GROUP_KEY = 7
    """A group message on a chain not (yet) received (``MissingGroupKeyError``)."""
    NOT_IN_GROUP = 8
    """Unknown group, or a sender not in it (``NotInGroupError``)."""
    STALE_PENDING = 9
    """The session changed since the decryption (``StalePendingError``)."""
    STORE_BUSY = 10
    """Other handles kept the store busy (``StoreBusyError``)."""
    WRONG_STORAGE_KEY = 11
    """The storage key does not open the store (``WrongStorageKeyError``)."""
    STORE_FAILURE = 12
    """I/O, corruption, a newer schema, a forked process (``StoreFailureError``)."""
    LIMIT_EXCEEDED = 13
    """A documented limit was reached (``LimitExceededError``)."""
    INVALID_ARGUMENT = 14
    """The call itself is wrong (``InvalidArgumentError``, ``DeviceClosedError``)."""

    def code(self) -> str:
        """The stable code in ``snake_case`` (``"out_of_step"``), as every binding spells it."""
        return str(_native.ErrorKind[self.name].code())

    def recovery(self) -> Recovery:
        """What the app does about an error of this kind (the library's own table)."""
        return Recovery[_native.ErrorKind[self.name].recovery().name]


@dataclasses.dataclass(frozen=True)
class Address:
    """A device of a user: ``Address("alice", 1)``.

    ``user_id`` is the app's stable user id (1 to 256 bytes of UTF-8, checked
    when the address is used); ``device_id`` a 32-bit unsigned device number.
    """

    user_id: str
    device_id: int

    def __post_init__(self) -> None:
        object.__setattr__(self, "user_id", text("user_id", self.user_id))
        object.__setattr__(self, "device_id", u32("device_id", self.device_id))

    def __str__(self) -> str:
        """``alice.1``, as the library writes an address."""
        return f"{self.user_id}.{self.device_id}"


@dataclasses.dataclass(frozen=True)
class PrekeyCounts:
    """How many one-time prekeys are held (``Device.prekey_counts``)."""

    one_time: int
    """One-time X25519 prekeys."""
    pq_one_time: int
    """One-time ML-KEM prekeys."""


@dataclasses.dataclass(frozen=True)
class Rotated:
    """What ``Device.rotate_prekeys`` replaced."""

    signed_prekey: bool
    """Whether the signed prekey was rotated."""
    last_resort_prekey: bool
    """Whether the last-resort ML-KEM prekey was rotated."""


@dataclasses.dataclass(frozen=True)
class IncomingMessage:
    """A queued message for ``Device.decrypt_batch``: its sender and its bytes (any bytes-like)."""

    sender: Address
    ciphertext: bytes

    def __post_init__(self) -> None:
        address("sender", self.sender)
        object.__setattr__(self, "ciphertext", as_bytes("ciphertext", self.ciphertext))


@dataclasses.dataclass(frozen=True)
class Outgoing:
    """A one-to-one message the library made (a group's chain, an answer, a reset, a message
    sent again): send ``message`` to ``to`` like any other message."""

    to: Address
    message: bytes


@dataclasses.dataclass(frozen=True)
class GroupSend:
    """What ``Device.group_encrypt`` made: send ``distributions`` first, then ``message``
    to every member; ``without_session`` are the members with no session (nothing was
    made for them: start sessions and send again)."""

    message: bytes
    distributions: Tuple[Outgoing, ...]
    without_session: Tuple[Address, ...]


@dataclasses.dataclass(frozen=True)
class FanOut:
    """What ``Device.encrypt_to_user`` (or ``encrypt_to_user_kept``) made: send each of ``messages``
    (to the contact's listed devices) and ``syncs`` (to our own other devices) to its ``to``;
    ``missing`` are the listed devices with no session (start sessions, then
    ``Device.encrypt_to_user_devices``)."""

    messages: Tuple[Outgoing, ...]
    syncs: Tuple[Outgoing, ...]
    missing: Tuple[Address, ...]


@dataclasses.dataclass(frozen=True)
class HealPolicy:
    """How ``Device.heal`` and the sealed outbox behave (``Device.set_heal_policy``).

    ``reset_interval``: the fewest seconds between two resets to one peer;
    ``outbox_max_age``: how long (seconds) a kept plaintext stays in the outbox;
    ``outbox_max_messages``: the most kept plaintexts per peer;
    ``resend_to_new_identity``: whether a reset from a peer's new identity gets the kept
    messages sent again.
    """

    reset_interval: int
    outbox_max_age: int
    outbox_max_messages: int
    resend_to_new_identity: bool


@dataclasses.dataclass(frozen=True)
class BackupParams:
    """The Argon2id cost of a backup: memory in KiB, iterations, parallelism."""

    memory_kib: int
    iterations: int
    parallelism: int


class HealResult:
    """What ``Device.heal`` did: a ``HealResult.SENT`` or a ``HealResult.TOO_SOON``."""

    SENT: "type[HealSent]"
    TOO_SOON: "type[HealTooSoon]"


@dataclasses.dataclass(frozen=True)
class HealSent(HealResult):
    """A new session was started: send ``reset`` (its first message) to the peer."""

    reset: Outgoing


@dataclasses.dataclass(frozen=True)
class HealTooSoon(HealResult):
    """A reset went to this peer less than the policy's ``reset_interval`` ago: nothing was
    done; heal again at ``retry_at`` (seconds since the Unix epoch) if still out of step."""

    retry_at: int


HealResult.SENT = HealSent
HealResult.TOO_SOON = HealTooSoon


# The checks: each returns what the generated module takes, or raises
# TypeError (a wrong type) or InvalidArgumentError (out of range).


def as_bytes(name: str, value: object) -> bytes:
    """``value`` (any object with the buffer protocol) as ``bytes``; ``TypeError`` otherwise."""
    if type(value) is bytes:
        return value
    if isinstance(value, str):
        raise TypeError(f"{name} must be a bytes-like object, not str (encode it first)")
    try:
        view = memoryview(value)  # type: ignore[arg-type]
    except TypeError:
        raise TypeError(
            f"{name} must be a bytes-like object (bytes, bytearray, memoryview...), not {type(value).__name__}"
        ) from None
    with view:
        data = view.tobytes()
    if len(data) > _I31_MAX:
        # The generated code writes a length as a signed 32-bit integer, after
        # it took its own reference to the device: refuse it here.
        from ._errors import InvalidArgumentError

        raise InvalidArgumentError(f"{name} is {len(data)} bytes, more than {_I31_MAX}")
    return data


def _items(name: str, values: object, what: str) -> List[object]:
    """An iterable's items, as a list; one bytes-like object or ``str`` is refused (iterating it
    would give numbers or characters, never what the caller meant)."""
    if isinstance(values, (bytes, bytearray, memoryview, str)):
        raise TypeError(f"{name} must be an iterable of {what}, not one {type(values).__name__}")
    try:
        items: List[object] = list(values)  # type: ignore[call-overload]
    except TypeError:
        raise TypeError(f"{name} must be an iterable of {what}, not {type(values).__name__}") from None
    return items


def bytes_list(name: str, values: object) -> List[bytes]:
    """An iterable of bytes-like objects as a list of ``bytes``."""
    items = _items(name, values, "bytes-like objects")
    return [as_bytes(f"{name}[{i}]", item) for i, item in enumerate(items)]


def as_path(name: str, value: object) -> str:
    """A ``str`` or ``os.PathLike`` as the ``str`` path the library opens (UTF-8)."""
    if isinstance(value, str):
        return text(name, value)
    if isinstance(value, os.PathLike):
        result = os.fspath(value)
        return text(name, result if isinstance(result, str) else os.fsdecode(result))
    raise TypeError(f"{name} must be a str or an os.PathLike (pathlib.Path), not {type(value).__name__}")


def text(name: str, value: object) -> str:
    """``value`` as a plain ``str`` that encodes to UTF-8.

    A ``str`` subclass is copied to a plain ``str`` (its own ``encode`` is never
    called), and a string that is not valid Unicode (a lone surrogate, as
    ``surrogateescape`` makes) is an ``InvalidArgumentError``: the generated
    code would fail on it only after taking its own reference to the device.
    """
    if not isinstance(value, str):
        raise TypeError(f"{name} must be a str, not {type(value).__name__}")
    plain = str.__str__(value)
    try:
        plain.encode("utf-8")
    except UnicodeEncodeError as error:
        from ._errors import InvalidArgumentError

        raise InvalidArgumentError(f"{name} is not valid UTF-8 text: {error.reason} at {error.start}") from None
    return plain


def texts(name: str, values: object) -> List[str]:
    """An iterable of ``str`` as a list of plain ``str`` (each checked as ``text`` checks it).

    One ``str`` is refused: iterating it would give its characters.
    """
    if isinstance(values, (str, bytes, bytearray, memoryview)):
        raise TypeError(f"{name} must be an iterable of str, not one {type(values).__name__}")
    try:
        items = list(values)  # type: ignore[call-overload]
    except TypeError:
        raise TypeError(f"{name} must be an iterable of str, not {type(values).__name__}") from None
    return [text(f"{name}[{i}]", item) for i, item in enumerate(items)]


def _uint(name: str, value: object, maximum: int, bits: int) -> int:
    if isinstance(value, bool):
        raise TypeError(f"{name} must be an int, not bool")
    try:
        number = operator.index(value)  # type: ignore[arg-type]
    except TypeError:
        raise TypeError(f"{name} must be an int, not {type(value).__name__}") from None
    if not 0 <= number <= maximum:
        from ._errors import InvalidArgumentError

        raise InvalidArgumentError(f"{name} must be an integer from 0 to {maximum} (unsigned, {bits} bits), not {number}")
    return number


def u32(name: str, value: object) -> int:
    """``value`` as an int in 0..2^32-1."""
    return _uint(name, value, _U32_MAX, 32)


def u32_list(name: str, values: object) -> List[int]:
    """An iterable of ints (device ids) as a list of ints in 0..2^32-1.

    A bytes-like object or a ``str`` is refused: iterating one would give numbers or characters.
    """
    items = _items(name, values, "int")
    return [u32(f"{name}[{i}]", item) for i, item in enumerate(items)]


def u63(name: str, value: object) -> int:
    """``value`` as an int in 0..2^63-1 (a time in seconds, an age, a size)."""
    return _uint(name, value, _I63_MAX, 63)


def count32(name: str, value: object) -> int:
    """``value`` as an int in 0..2^31-1 (a count)."""
    return _uint(name, value, _I31_MAX, 31)


def flag(name: str, value: object) -> bool:
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be a bool, not {type(value).__name__}")
    return value


def address(name: str, value: object) -> Any:
    """A facade ``Address`` as the generated record."""
    if not isinstance(value, Address):
        raise TypeError(f"{name} must be a samizdat.Address, not {type(value).__name__}")
    return _native.Address(user_id=value.user_id, device_id=value.device_id)


def addresses(name: str, values: object) -> List[Any]:
    if isinstance(values, (Address, str, bytes)):
        raise TypeError(f"{name} must be an iterable of samizdat.Address, not one {type(values).__name__}")
    try:
        items = list(values)  # type: ignore[call-overload]
    except TypeError:
        raise TypeError(f"{name} must be an iterable of samizdat.Address, not {type(values).__name__}") from None
    return [address(f"{name}[{i}]", item) for i, item in enumerate(items)]


def incoming(name: str, values: Iterable[object]) -> List[Any]:
    if isinstance(values, IncomingMessage):
        raise TypeError(f"{name} must be an iterable of samizdat.IncomingMessage, not one")
    try:
        items = list(values)
    except TypeError:
        raise TypeError(f"{name} must be an iterable of IncomingMessage, not {type(values).__name__}") from None
    result = []
    for i, item in enumerate(items):
        if not isinstance(item, IncomingMessage):
            raise TypeError(f"{name}[{i}] must be a samizdat.IncomingMessage, not {type(item).__name__}")
        result.append(
            _native.IncomingMessage(sender=address(f"{name}[{i}].sender", item.sender), ciphertext=item.ciphertext)
        )
    return result


def heal_policy(name: str, value: object) -> Any:
    if not isinstance(value, HealPolicy):
        raise TypeError(f"{name} must be a samizdat.HealPolicy, not {type(value).__name__}")
    return _native.HealPolicy(
        reset_interval=u63(f"{name}.reset_interval", value.reset_interval),
        outbox_max_age=u63(f"{name}.outbox_max_age", value.outbox_max_age),
        outbox_max_messages=count32(f"{name}.outbox_max_messages", value.outbox_max_messages),
        resend_to_new_identity=flag(f"{name}.resend_to_new_identity", value.resend_to_new_identity),
    )


def backup_params(name: str, value: object) -> Any:
    if not isinstance(value, BackupParams):
        raise TypeError(f"{name} must be a samizdat.BackupParams, not {type(value).__name__}")
    return _native.BackupParams(
        memory_kib=u32(f"{name}.memory_kib", value.memory_kib),
        iterations=u32(f"{name}.iterations", value.iterations),
        parallelism=u32(f"{name}.parallelism", value.parallelism),
    )


# From the generated module's values to the facade's.


def address_of(native: Any) -> Address:
    return Address(native.user_id, native.device_id)


def outgoing_of(native: Any) -> Outgoing:
    return Outgoing(address_of(native.to), bytes(native.message))


def group_send_of(native: Any) -> GroupSend:
    return GroupSend(
        bytes(native.message),
        tuple(outgoing_of(o) for o in native.distributions),
        tuple(address_of(a) for a in native.without_session),
    )


def fan_out_of(native: Any) -> FanOut:
    return FanOut(
        tuple(outgoing_of(o) for o in native.messages),
        tuple(outgoing_of(o) for o in native.syncs),
        tuple(address_of(a) for a in native.missing),
    )


def heal_result_of(native: Any) -> HealResult:
    if native.is_SENT():
        return HealSent(outgoing_of(native.reset))
    return HealTooSoon(int(native.retry_at))


def heal_policy_of(native: Any) -> HealPolicy:
    return HealPolicy(
        int(native.reset_interval),
        int(native.outbox_max_age),
        int(native.outbox_max_messages),
        bool(native.resend_to_new_identity),
    )


def backup_params_from(native: Any) -> BackupParams:
    return BackupParams(int(native.memory_kib), int(native.iterations), int(native.parallelism))


def optional_bytes(value: Optional[bytes]) -> Optional[bytes]:
    return None if value is None else bytes(value)
