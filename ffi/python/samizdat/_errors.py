"""The exceptions of the facade: one ``SamizdatError`` base, one subclass per
stable error code (the fifteen of ``ErrorKind``), and ``DeviceClosedError``.

Each subclass is also reachable as ``SamizdatError.<Variant>``
(``SamizdatError.Duplicate is DuplicateError``), the names Kotlin and Swift use.
``str(error)`` is always the human-readable message (the library's own text).
"""

from __future__ import annotations

from typing import Any, Callable, ClassVar, Dict, Optional, Tuple, Type, TypeVar

from . import _native
from ._values import ErrorKind, MismatchedSide, Recovery

T = TypeVar("T")


class SamizdatError(Exception):
    """Every failure the library reports. Catch a subclass to act on one code.

    ``message`` (also ``str(error)``) says what happened; ``kind()``, ``code()``
    and ``recovery()`` are the stable code and what to do about it.
    """

    KIND: ClassVar[ErrorKind]
    """The stable code of this class of error."""

    Duplicate: ClassVar[Type["DuplicateError"]]
    InvalidMessage: ClassVar[Type["InvalidMessageError"]]
    OutOfStep: ClassVar[Type["OutOfStepError"]]
    NoSession: ClassVar[Type["NoSessionError"]]
    UntrustedIdentity: ClassVar[Type["UntrustedIdentityError"]]
    IdentityMismatch: ClassVar[Type["IdentityMismatchError"]]
    InvalidBundle: ClassVar[Type["InvalidBundleError"]]
    MissingGroupKey: ClassVar[Type["MissingGroupKeyError"]]
    NotInGroup: ClassVar[Type["NotInGroupError"]]
    StalePending: ClassVar[Type["StalePendingError"]]
    StoreBusy: ClassVar[Type["StoreBusyError"]]
    WrongStorageKey: ClassVar[Type["WrongStorageKeyError"]]
    StoreFailure: ClassVar[Type["StoreFailureError"]]
    LimitExceeded: ClassVar[Type["LimitExceededError"]]
    InvalidArgument: ClassVar[Type["InvalidArgumentError"]]

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message: str = message or type(self).__name__
        """What happened, for logs and developers (never empty)."""

    def __str__(self) -> str:
        return self.message

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.message!r})"

    def kind(self) -> ErrorKind:
        """The stable error code."""
        return self.KIND

    def code(self) -> str:
        """The stable error code in ``snake_case`` (``"out_of_step"``), as every binding spells it."""
        return self.KIND.code()

    def recovery(self) -> Recovery:
        """What the app does about it."""
        return self.KIND.recovery()

    def identity_key(self) -> Optional[bytes]:
        """The peer's new identity key of an ``UntrustedIdentityError``; ``None`` for the others."""
        return None

    def request(self) -> Optional[bytes]:
        """The request of a ``MissingGroupKeyError`` to send to the sender; ``None`` for the others."""
        return None


class DuplicateError(SamizdatError):
    """The message was already decrypted and committed: drop it and acknowledge it."""

    KIND = ErrorKind.DUPLICATE


class InvalidMessageError(SamizdatError):
    """The message is malformed, forged or altered: drop it and acknowledge it."""

    KIND = ErrorKind.INVALID_MESSAGE


class OutOfStepError(SamizdatError):
    """No state of the session can read the message, and healing can bring it: fetch the
    peer's bundle and call ``Device.heal`` with the messages that failed so."""

    KIND = ErrorKind.OUT_OF_STEP


class NoSessionError(SamizdatError):
    """There is no session with this peer: fetch its bundle and start one."""

    KIND = ErrorKind.NO_SESSION


class UntrustedIdentityError(SamizdatError):
    """The peer's identity key changed: once the user verified the new key, call
    ``Device.trust_identity`` with ``identity_key()``."""

    KIND = ErrorKind.UNTRUSTED_IDENTITY

    def __init__(self, message: str, identity: str) -> None:
        super().__init__(message)
        self.identity: str = identity
        """The new identity key (32 bytes) in lowercase hex."""

    def identity_key(self) -> Optional[bytes]:
        """The new identity key (32 bytes); for a device list signed by another user identity,
        that user identity key; ``None`` for a device no verified list names (PROTOCOL.md 23.5),
        which is not to be used."""
        return bytes.fromhex(self.identity) if self.identity else None


class IdentityMismatchError(SamizdatError):
    """A scanned safety number does not match: do not mark the peer as verified."""

    KIND = ErrorKind.IDENTITY_MISMATCH

    def __init__(self, message: str, side: MismatchedSide) -> None:
        super().__init__(message)
        self.side: MismatchedSide = side
        """Which identity differs."""


class InvalidBundleError(SamizdatError):
    """A prekey bundle is malformed or its signatures do not verify: fetch it again."""

    KIND = ErrorKind.INVALID_BUNDLE


class MissingGroupKeyError(SamizdatError):
    """A group message came on a chain this device lacks: keep the message, send
    ``request()`` (if any) to the sender, decrypt it again once the chain arrives."""

    KIND = ErrorKind.MISSING_GROUP_KEY

    def __init__(self, message: str, chain_id: int, request_hex: Optional[str]) -> None:
        super().__init__(message)
        self.chain_id: int = chain_id
        """The chain id of the message."""
        self.request_hex: Optional[str] = request_hex
        """The request in lowercase hex, if one may be sent."""

    def request(self) -> Optional[bytes]:
        """The one-to-one message asking the sender for the chain, if one may be sent."""
        return None if self.request_hex is None else bytes.fromhex(self.request_hex)


class NotInGroupError(SamizdatError):
    """A message of a group this device is not in, from a non-member, or an unknown group."""

    KIND = ErrorKind.NOT_IN_GROUP


class StalePendingError(SamizdatError):
    """The session changed since this decryption was made: decrypt the message again."""

    KIND = ErrorKind.STALE_PENDING


class StoreBusyError(SamizdatError):
    """The store stayed busy longer than the wait: nothing was written; call again later."""

    KIND = ErrorKind.STORE_BUSY


class WrongStorageKeyError(SamizdatError):
    """The storage key does not open this store: open it again with the right key."""

    KIND = ErrorKind.WRONG_STORAGE_KEY


class StoreFailureError(SamizdatError):
    """The store failed (I/O, damage, a newer schema, a device inherited through ``fork()``):
    open the store again. Also raised for an internal error of the library."""

    KIND = ErrorKind.STORE_FAILURE


class LimitExceededError(SamizdatError):
    """A documented limit was reached: send less, or start a new session or chain."""

    KIND = ErrorKind.LIMIT_EXCEEDED


class InvalidArgumentError(SamizdatError, ValueError):
    """The call is wrong: a value out of range or refused by the library, a store with no
    device, a pending value committed twice. Also a ``ValueError``."""

    KIND = ErrorKind.INVALID_ARGUMENT


class DeviceClosedError(InvalidArgumentError):
    """A call on a ``Device`` after its ``close()``: open the store again.

    Its code is ``invalid_argument`` (the call is wrong), so that the fifteen codes
    stay the contract across the bindings.
    """


SamizdatError.Duplicate = DuplicateError
SamizdatError.InvalidMessage = InvalidMessageError
SamizdatError.OutOfStep = OutOfStepError
SamizdatError.NoSession = NoSessionError
SamizdatError.UntrustedIdentity = UntrustedIdentityError
SamizdatError.IdentityMismatch = IdentityMismatchError
SamizdatError.InvalidBundle = InvalidBundleError
SamizdatError.MissingGroupKey = MissingGroupKeyError
SamizdatError.NotInGroup = NotInGroupError
SamizdatError.StalePending = StalePendingError
SamizdatError.StoreBusy = StoreBusyError
SamizdatError.WrongStorageKey = WrongStorageKeyError
SamizdatError.StoreFailure = StoreFailureError
SamizdatError.LimitExceeded = LimitExceededError
SamizdatError.InvalidArgument = InvalidArgumentError

_SIMPLE: Dict[str, Type[SamizdatError]] = {
    "Duplicate": DuplicateError,
    "InvalidMessage": InvalidMessageError,
    "OutOfStep": OutOfStepError,
    "NoSession": NoSessionError,
    "InvalidBundle": InvalidBundleError,
    "NotInGroup": NotInGroupError,
    "StalePending": StalePendingError,
    "StoreBusy": StoreBusyError,
    "WrongStorageKey": WrongStorageKeyError,
    "StoreFailure": StoreFailureError,
    "LimitExceeded": LimitExceededError,
    "InvalidArgument": InvalidArgumentError,
}
_VARIANTS = _SIMPLE.keys() | {"UntrustedIdentity", "IdentityMismatch", "MissingGroupKey"}
#: The generated module's exception classes, one per variant (their common base is private there).
_NATIVE: Tuple[Type[BaseException], ...] = tuple(getattr(_native.SamizdatError, name) for name in sorted(_VARIANTS))


def from_native(error: Any) -> SamizdatError:
    """The facade's exception for one of the generated module's errors."""
    name = type(error).__name__
    message = str(error.message)
    if name == "UntrustedIdentity":
        return UntrustedIdentityError(message, str(error.identity))
    if name == "IdentityMismatch":
        return IdentityMismatchError(message, MismatchedSide[error.side.name])
    if name == "MissingGroupKey":
        request = error.request_hex
        return MissingGroupKeyError(message, int(error.chain_id), None if request is None else str(request))
    return _SIMPLE[name](message)


def call(function: Callable[..., T], *args: Any) -> T:
    """Calls into the generated module, turning its errors into the facade's.

    The facade's exception is raised outside the ``except`` block, so that it
    does not chain (and keep alive) the generated one and its frames.
    """
    try:
        return function(*args)
    except _NATIVE as native_error:
        error = from_native(native_error)
    except _native.InternalError as internal:
        error = StoreFailureError(f"internal error in the samizdat library: {internal}")
    raise error
