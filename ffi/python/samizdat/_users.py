"""User identities and signed device lists (PROTOCOL.md 23): what an app
checks before it talks to a contact's device, so that a server cannot add a
"ghost" device.

    from samizdat import ListedDevice, UserIdentity, UserTrust

    me = UserIdentity.generate()                 # every device of the user holds it
    signed = me.sign_device_list("alice", 1, [ListedDevice(1, phone.identity_key())])
    trust = UserTrust.first_use("alice", signed)  # on the contact's side, first use
    trust.check_device(1, key)                   # UntrustedIdentityError for a ghost

On a ``Device`` (PROTOCOL.md 23.5): ``Device.set_device_list(signed)`` gives the device its
user's list, which its bundles then carry; a contact's bundle with a list pins its user on first
use, and from then on ``start_session``, ``encrypt`` and ``decrypt`` refuse every device of that
user the newest verified list does not name (``UntrustedIdentityError`` with no
``identity_key()``), changing nothing. ``Device.update_device_list``,
``Device.trust_new_user_identity`` and ``Device.user_trust`` move and read the pins.

Linking a new device (PROTOCOL.md 23.8): the new device's ``Device.link_offer(now)`` makes a
``LinkOffer`` whose ``code()`` it shows; an existing device of the user scans it and calls
``Device.link_device(code, user_identity, now)``, which returns ``Linked`` (the new signed list to
publish and the ``message`` to send); the new device's ``Device.finish_link(offer, message, now)``
returns ``Provisioned`` (the ``UserIdentity`` to keep, its list, the pins it was given).

Removing a lost device for good (issue 17): the device holds the user identity, so a remaining
device replaces it. ``Device.replace_user_identity(UserIdentity.generate(), lost)`` (keep the new
identity first) returns ``Replaced`` (the new signed list to publish and the ``handovers`` to send);
each other remaining device decrypts its handover as ``MessageKind.USER_IDENTITY``, whose
``PendingMessage.new_user_identity()`` gives a ``NewUserIdentity`` (the ``UserIdentity`` to keep
before the commit, the list, the devices removed); contacts take the list with
``Device.trust_new_user_identity`` once the users compared the new safety number.
"""

from __future__ import annotations

import dataclasses
import threading
from typing import Any, Iterable, List, Optional, Tuple

from . import _native
from ._device import SafetyNumber, safety_number_of
from ._errors import call
from ._values import Address, BytesLike, Outgoing, address_of, as_bytes, outgoing_of, text, u32, u63


@dataclasses.dataclass(frozen=True)
class ListedDevice:
    """A device in a list: its id (32 bits) and its identity key (32 bytes)."""

    device_id: int
    identity_key: bytes

    def __post_init__(self) -> None:
        object.__setattr__(self, "device_id", u32("device_id", self.device_id))
        object.__setattr__(self, "identity_key", as_bytes("identity_key", self.identity_key))


@dataclasses.dataclass(frozen=True)
class DeviceListInfo:
    """A verified device list: user id, version, the user identity key that signed it, and the
    devices in increasing id order."""

    user_id: str
    version: int
    user_identity_key: bytes
    devices: Tuple[ListedDevice, ...]


@dataclasses.dataclass(frozen=True)
class DeviceListChange:
    """The devices a newer list added and removed (a reinstalled device, with a new key, is in both)."""

    added: Tuple[ListedDevice, ...]
    removed: Tuple[ListedDevice, ...]


def _devices(native: Iterable[Any]) -> Tuple[ListedDevice, ...]:
    return tuple(ListedDevice(int(d.device_id), bytes(d.identity_key)) for d in native)


def _info(native: Any) -> DeviceListInfo:
    return DeviceListInfo(
        str(native.user_id), int(native.version), bytes(native.user_identity_key), _devices(native.devices)
    )


def _change(native: Any) -> DeviceListChange:
    return DeviceListChange(_devices(native.added), _devices(native.removed))


def _listed(name: str, devices: object) -> List[Any]:
    if isinstance(devices, (str, bytes, bytearray, memoryview)):
        raise TypeError(f"{name} must be an iterable of ListedDevice")
    try:
        items = list(devices)  # type: ignore[call-overload]
    except TypeError:
        raise TypeError(f"{name} must be an iterable of ListedDevice, not {type(devices).__name__}") from None
    out: List[Any] = []
    for i, item in enumerate(items):
        if not isinstance(item, ListedDevice):
            raise TypeError(f"{name}[{i}] must be a ListedDevice, not {type(item).__name__}")
        out.append(_native.ListedDevice(device_id=item.device_id, identity_key=item.identity_key))
    return out


class UserIdentity:
    """A user identity key pair (Ed25519): signs the user's device lists. Every device of the user
    holds it; store ``seed()`` sealed (the app's keystore). Its ``repr`` shows no secret."""

    __slots__ = ("_native",)

    def __init__(self, native: Any) -> None:
        """Made by ``generate`` and ``from_seed`` only."""
        if not isinstance(native, _native.UserIdentity):
            raise TypeError("use UserIdentity.generate or UserIdentity.from_seed")
        self._native = native

    @classmethod
    def generate(cls) -> "UserIdentity":
        """A new user identity, from the operating system's generator."""
        return cls(call(_native.UserIdentity.generate))

    @classmethod
    def from_seed(cls, seed: BytesLike) -> "UserIdentity":
        """The user identity of a stored 32-byte seed."""
        return cls(call(_native.UserIdentity.from_seed, as_bytes("seed", seed)))

    def seed(self) -> bytes:
        """The 32-byte seed, to store sealed."""
        return bytes(self._native.seed())

    def public_key(self) -> bytes:
        """The public user identity key (32 bytes)."""
        return bytes(self._native.public_key())

    def sign_device_list(self, user_id: str, version: int, devices: Iterable[ListedDevice]) -> bytes:
        """Signs the list of ``devices`` (any order) of ``user_id`` at ``version``: the bytes to publish."""
        return bytes(
            call(
                self._native.sign_device_list,
                text("user_id", user_id),
                u63("version", version),
                _listed("devices", devices),
            )
        )

    def __repr__(self) -> str:
        return f"UserIdentity(public_key={self.public_key().hex()})"

    def __reduce__(self) -> Any:
        raise TypeError("a UserIdentity holds a secret: store its seed() sealed instead of pickling it")


class LinkOffer:
    """A new device's offer to be linked (``Device.link_offer``): ``code()`` to show, and the keys
    that open the message the scanning device sends back. Kept in memory only, valid for ten
    minutes, links at most once. Its ``repr`` shows no secret (the code holds one)."""

    __slots__ = ("_native",)

    def __init__(self, native: Any) -> None:
        """Made by ``Device.link_offer`` only."""
        if not isinstance(native, _native.LinkOffer):
            raise TypeError("use Device.link_offer")
        self._native = native

    def code(self) -> bytes:
        """The code to show for an existing device of the same user to scan. It holds a secret:
        show it on this device's screen only, never send it through the server."""
        return bytes(self._native.code())

    def address(self) -> Address:
        """The device the offer links."""
        return address_of(self._native.address())

    def __repr__(self) -> str:
        return f"<samizdat.LinkOffer for {self.address()}>"

    def __reduce__(self) -> Any:
        raise TypeError("a LinkOffer holds a secret and lives in memory only: make a new one instead of pickling it")


@dataclasses.dataclass(frozen=True)
class Linked:
    """What ``Device.link_device`` made: send ``message`` to the new ``device`` through the server,
    publish ``device_list`` (this device already holds it); ``list_changed`` is ``False`` when the
    list already named the device (the same code scanned again)."""

    message: bytes
    device_list: bytes
    device: Address
    list_changed: bool


@dataclasses.dataclass(frozen=True)
class Provisioned:
    """What ``Device.finish_link`` gave the new device: the ``user_identity`` to keep (store its seed
    sealed), the ``device_list`` now its own, how many contact users the linking device had pinned
    (``pinned_users``) and how many were pinned now (``newly_pinned``), and the device that linked it
    (``linked_by``). Its ``repr`` shows the user identity's public key only."""

    user_identity: "UserIdentity"
    device_list: bytes
    pinned_users: int
    newly_pinned: int
    linked_by: Address


def _linked(native: Any) -> Linked:
    return Linked(bytes(native.message), bytes(native.device_list), address_of(native.device), bool(native.list_changed))


def _provisioned(native: Any) -> Provisioned:
    return Provisioned(
        UserIdentity(native.user_identity),
        bytes(native.device_list),
        int(native.pinned_users),
        int(native.newly_pinned),
        address_of(native.linked_by),
    )


@dataclasses.dataclass(frozen=True)
class Replaced:
    """What ``Device.replace_user_identity`` made (this device already holds the new list): publish
    ``device_list``, send each of ``handovers`` to its ``to``; ``missing`` are the devices of the new
    list with no session (start one, then call again with the same user identity: the handovers are
    made again, without a new list); ``removed`` the devices this call removed; ``list_changed`` is
    ``False`` when the call was made again with the user identity the list is already signed by."""

    device_list: bytes
    handovers: Tuple[Outgoing, ...]
    missing: Tuple[Address, ...]
    removed: Tuple[ListedDevice, ...]
    list_changed: bool


@dataclasses.dataclass(frozen=True)
class NewUserIdentity:
    """A new user identity another device of our own user handed over
    (``PendingMessage.new_user_identity()``): keep ``user_identity`` (store its seed sealed) before
    the commit, which makes ``device_list`` this device's own; ``removed`` are the devices of our list
    the new one no longer names (tell the user, and which device removed them: the pending
    message's ``sender()``); ``added`` the devices of the new list ours does not name (linked by the
    sender, not seen here yet); ``replaced`` the user identity key the handover replaces (``None`` if
    the sender no longer knew it). Its ``repr`` shows the user identity's public key only."""

    user_identity: "UserIdentity"
    device_list: bytes
    removed: Tuple[ListedDevice, ...]
    added: Tuple[ListedDevice, ...]
    replaced: Optional[bytes]


def _replaced(native: Any) -> Replaced:
    return Replaced(
        bytes(native.device_list),
        tuple(outgoing_of(o) for o in native.handovers),
        tuple(address_of(a) for a in native.missing),
        _devices(native.removed),
        bool(native.list_changed),
    )


def _new_user_identity(native: Any) -> NewUserIdentity:
    replaced = None if native.replaced is None else bytes(native.replaced)
    return NewUserIdentity(
        UserIdentity(native.user_identity),
        bytes(native.device_list),
        _devices(native.removed),
        _devices(native.added),
        replaced,
    )


def _user_identity(name: str, value: object) -> Any:
    if not isinstance(value, UserIdentity):
        raise TypeError(f"{name} must be a samizdat.UserIdentity, not {type(value).__name__}")
    return value._native


def _link_offer(name: str, value: object) -> Any:
    if not isinstance(value, LinkOffer):
        raise TypeError(f"{name} must be a samizdat.LinkOffer, not {type(value).__name__}")
    return value._native


class UserTrust:
    """What the app keeps of a contact: the user identity pinned on first use and the newest
    device list verified under it. Store ``to_bytes()``; a refused list changes nothing."""

    __slots__ = ("_native", "_lock")

    def __init__(self, native: Any) -> None:
        """Made by ``first_use`` and ``from_bytes`` only."""
        if not isinstance(native, _native.UserTrust):
            raise TypeError("use UserTrust.first_use or UserTrust.from_bytes")
        self._native = native
        self._lock = threading.Lock()

    @classmethod
    def first_use(cls, user_id: str, signed_list: BytesLike) -> "UserTrust":
        """Trust on first use of ``user_id``'s signed list (``InvalidBundleError`` if it is not one)."""
        return cls(call(_native.UserTrust.first_use, text("user_id", user_id), as_bytes("signed_list", signed_list)))

    @classmethod
    def from_bytes(cls, user_id: str, data: BytesLike) -> "UserTrust":
        """A trust stored with ``to_bytes`` (verified again)."""
        return cls(call(_native.UserTrust.from_bytes, text("user_id", user_id), as_bytes("data", data)))

    def update(self, signed_list: BytesLike) -> DeviceListChange:
        """A newer list of the pinned user. Refused: an older one (``InvalidBundleError``), another
        list with the same version, another user's, one signed by another user key
        (``UntrustedIdentityError``, with that key as ``identity_key()``)."""
        return _change(call(self._native.update, as_bytes("signed_list", signed_list)))

    def trust_new_identity(self, signed_list: BytesLike) -> DeviceListChange:
        """The app's decision to trust a new user identity, once the users compared safety numbers."""
        return _change(call(self._native.trust_new_identity, as_bytes("signed_list", signed_list)))

    def check_device(self, device_id: int, identity_key: BytesLike) -> None:
        """``UntrustedIdentityError`` unless the newest verified list names this device with this key."""
        call(self._native.check_device, u32("device_id", device_id), as_bytes("identity_key", identity_key))

    def list(self) -> DeviceListInfo:
        """The newest verified list."""
        return _info(self._native.list())

    def user_identity_key(self) -> bytes:
        """The pinned user identity key (32 bytes)."""
        return bytes(self._native.user_identity_key())

    def to_bytes(self) -> bytes:
        """The bytes to store."""
        return bytes(self._native.to_bytes())


def verify_device_list(signed_list: BytesLike) -> DeviceListInfo:
    """Reads and verifies a signed device list without a pin (``InvalidBundleError`` if it fails)."""
    return _info(call(_native.verify_device_list, as_bytes("signed_list", signed_list)))


def user_safety_number(
    local_user_id: str, local_user_identity_key: BytesLike, remote_user_id: str, remote_user_identity_key: BytesLike
) -> SafetyNumber:
    """The safety number of two users, from their user identity keys: the same whatever devices
    they link or remove."""
    return safety_number_of(
        call(
            _native.user_safety_number,
            text("local_user_id", local_user_id),
            as_bytes("local_user_identity_key", local_user_identity_key),
            text("remote_user_id", remote_user_id),
            as_bytes("remote_user_identity_key", remote_user_identity_key),
        )
    )
