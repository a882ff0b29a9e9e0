"""The objects of the facade: ``Device`` (with ``close()`` and ``with``), the
pending decryptions, the safety number, attachments, and the module-level
functions.

Each method checks and converts its arguments first (see ``_values``), then
makes one call into the generated module through ``_errors.call``.
"""

from __future__ import annotations

import dataclasses
import hmac
import threading
from types import TracebackType
from typing import TYPE_CHECKING, Any, Iterable, List, Optional, Type

from . import _native
from ._errors import DeviceClosedError, SamizdatError, call, from_native
from ._values import (
    Address,
    BackupParams,
    BytesLike,
    FanOut,
    GroupSend,
    HealPolicy,
    HealResult,
    IncomingMessage,
    MessageKind,
    Outgoing,
    PrekeyCounts,
    Rotated,
    ScrubResult,
    StrPath,
    address,
    address_of,
    addresses,
    as_bytes,
    backup_params,
    backup_params_from,
    bytes_list,
    group_send_of,
    heal_policy,
    heal_policy_of,
    heal_result_of,
    incoming,
    optional_bytes,
    outgoing_of,
    as_path,
    text,
    texts,
    u32,
    count32,
    fan_out_of,
    u63,
    u32_list,
)

if TYPE_CHECKING:  # _users imports this module: only the names, for the type checker
    from ._users import (
        DeviceListChange,
        LinkOffer,
        Linked,
        NewUserIdentity,
        Provisioned,
        Replaced,
        UserIdentity,
        UserTrust,
    )


def _release(native: Any) -> None:
    """Frees the generated object's handle now, rather than when Python collects it.

    UniFFI's Python objects (0.32) keep their handle in ``_handle`` and free it
    in ``__del__`` unless it is ``None``: freeing it here and clearing it makes
    that later ``__del__`` a no-op. Other references to the generated object
    (a traceback's frames, say) then no longer keep the store open. The
    workspace pins UniFFI; if a new version keeps its handle elsewhere, this
    frees nothing and the descriptor probes of ``test_audit_boundary.py`` fail
    (a reopen would not: a store accepts several handles).
    """
    if getattr(native, "_handle", None) is not None:
        native.__del__()
        native._handle = None


class Device:
    """One installation: an identity, its prekeys and its sessions, in an encrypted SQLite store.

    Open one with ``Device.create``, ``Device.open``, ``Device.open_or_create`` or
    ``Device.restore``. ``close()`` (or leaving a ``with`` block) releases the store at
    once, so that another ``Device`` can open it; every later call raises
    ``DeviceClosedError``. A device that is never closed releases its store when it is
    garbage-collected.

    Every ``now`` is the app's clock in whole seconds since the Unix epoch. Every call
    is one SQLite transaction: call it off the UI thread. A device may be shared
    between threads.
    """

    __slots__ = ("_native", "_state", "_calls", "__weakref__")

    def __copy__(self) -> "Device":
        """The device itself: a copy would share the native handle but not the
        count of running calls, and closing it could free the handle under
        them."""
        return self

    def __deepcopy__(self, memo: Any) -> "Device":
        """The device itself (see ``__copy__``): a store has one handle per open."""
        return self

    def __reduce__(self) -> Any:
        raise TypeError("a Device cannot be pickled: open it again from its path and storage key")

    def __init__(self, native: Any) -> None:
        """Wraps a generated device: use the class methods to open one."""
        if not isinstance(native, _native.Device):
            raise TypeError("use Device.create, Device.open, Device.open_or_create or Device.restore")
        self._native: Optional[Any] = native
        self._state = threading.Condition()
        self._calls = 0

    # Construction.

    @classmethod
    def create(cls, path: StrPath, storage_key: BytesLike, user_id: str, device_id: int, now: int) -> "Device":
        """Creates a new device ``user_id``/``device_id`` in a new database at ``path``.

        ``storage_key`` is 32 bytes from the platform keystore (any bytes-like).
        """
        args = (as_path("path", path), as_bytes("storage_key", storage_key))
        rest = (text("user_id", user_id), u32("device_id", device_id), u63("now", now))
        return cls(call(_native.Device.create, *args, *rest))

    @classmethod
    def open(cls, path: StrPath, storage_key: BytesLike) -> "Device":
        """Opens the device in the database at ``path`` (``WrongStorageKeyError`` for another key)."""
        return cls(call(_native.Device.open, as_path("path", path), as_bytes("storage_key", storage_key)))

    @classmethod
    def open_or_create(cls, path: StrPath, storage_key: BytesLike, user_id: str, device_id: int, now: int) -> "Device":
        """Opens the device at ``path``, creating it first if there is none."""
        args = (as_path("path", path), as_bytes("storage_key", storage_key))
        rest = (text("user_id", user_id), u32("device_id", device_id), u63("now", now))
        return cls(call(_native.Device.open_or_create, *args, *rest))

    @classmethod
    def restore(cls, path: StrPath, storage_key: BytesLike, backup: BytesLike, passphrase: BytesLike, now: int) -> "Device":
        """Restores ``backup`` into a new database at ``path``: the identity, the address, fresh
        prekeys and the trust decisions (no session: they heal). A wrong passphrase creates no file."""
        args = (as_path("path", path), as_bytes("storage_key", storage_key), as_bytes("backup", backup))
        return cls(call(_native.Device.restore, *args, as_bytes("passphrase", passphrase), u63("now", now)))

    # Life cycle.

    def close(self) -> None:
        """Releases the store: another ``Device`` can open it as soon as this returns.

        Waits for the calls other threads are making on this device to return. Calling it
        again does nothing; any other call afterwards raises ``DeviceClosedError``.
        """
        with self._state:
            native, self._native = self._native, None
            while self._calls:
                self._state.wait()
        if native is not None:
            _release(native)

    @property
    def closed(self) -> bool:
        """Whether ``close()`` was called."""
        return self._native is None

    def __enter__(self) -> "Device":
        return self

    def __exit__(
        self,
        exc_type: Optional[Type[BaseException]],
        exc: Optional[BaseException],
        traceback: Optional[TracebackType],
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        if self._native is None:
            return "<samizdat.Device (closed)>"
        return f"<samizdat.Device {self.address()}>"

    def _call(self, method: str, *args: Any) -> Any:
        """Calls ``method`` of the generated device, unless closed; ``close()`` waits for it."""
        with self._state:
            native = self._native
            if native is None:
                raise DeviceClosedError("this Device was closed: open the store again to use it")
            self._calls += 1
        try:
            return call(getattr(native, method), *args)
        finally:
            with self._state:
                self._calls -= 1
                if not self._calls:
                    self._state.notify_all()

    # Identity and prekeys.

    def address(self) -> Address:
        """This device's address."""
        return address_of(self._call("address"))

    def identity_key(self) -> bytes:
        """This device's identity key (32 bytes)."""
        return bytes(self._call("identity_key"))

    def prekey_bundle(self) -> bytes:
        """A prekey bundle for one contact, with one-time prekeys no earlier bundle offered
        (this writes to the store): the server gives each bundle to one requester."""
        return bytes(self._call("prekey_bundle"))

    def prekey_bundles(self, count: int) -> List[bytes]:
        """Up to ``count`` bundles with distinct one-time prekeys, to upload."""
        return [bytes(b) for b in self._call("prekey_bundles", count32("count", count))]

    def prekey_counts(self) -> PrekeyCounts:
        """How many one-time prekeys are held (not consumed yet)."""
        counts = self._call("prekey_counts")
        return PrekeyCounts(int(counts.one_time), int(counts.pq_one_time))

    def refill_prekeys(self, threshold: int, target: int, now: int) -> int:
        """Below ``threshold`` one-time prekeys of either kind left to hand out, tops each kind
        up to ``target``; returns how many were added. Then upload new bundles."""
        args = (count32("threshold", threshold), count32("target", target), u63("now", now))
        return int(self._call("refill_prekeys", *args))

    def rotate_prekeys(self, now: int, max_age: int) -> Rotated:
        """Rotates the signed and last-resort prekeys older than ``max_age`` seconds."""
        rotated = self._call("rotate_prekeys", u63("now", now), u63("max_age", max_age))
        return Rotated(bool(rotated.signed_prekey), bool(rotated.last_resort_prekey))

    # Sessions and trust.

    def start_session(self, bundle: BytesLike) -> Address:
        """Starts a session from a peer's bundle (any bytes-like); returns the peer's address."""
        return address_of(self._call("start_session", as_bytes("bundle", bundle)))

    def has_session(self, peer: Address) -> bool:
        """Whether there is a session with ``peer``."""
        return bool(self._call("has_session", address("peer", peer)))

    def peer_identity(self, peer: Address) -> Optional[bytes]:
        """The identity key trusted for ``peer``, if any."""
        return optional_bytes(self._call("peer_identity", address("peer", peer)))

    def safety_number(self, peer: Address) -> "SafetyNumber":
        """The safety number of the conversation with ``peer``."""
        return safety_number_of(self._call("safety_number", address("peer", peer)))

    def trust_identity(self, peer: Address, identity: BytesLike) -> None:
        """Trusts ``identity`` for ``peer`` (after an ``UntrustedIdentityError``, once the user
        verified it)."""
        self._call("trust_identity", address("peer", peer), as_bytes("identity", identity))

    # Users (PROTOCOL.md 23.5).

    def set_device_list(self, signed_list: BytesLike) -> "DeviceListChange":
        """Gives this device its user's signed device list (``UserIdentity.sign_device_list``):
        its bundles then carry it, and it pins our own user. It must name this device with its
        identity key (``InvalidArgumentError``); a list under the user identity already held must
        be newer (``InvalidBundleError``). Returns the devices added and removed; a refused list
        changes nothing."""
        from ._users import _change

        return _change(self._call("set_device_list", as_bytes("signed_list", signed_list)))

    def device_list(self) -> Optional[bytes]:
        """This device's own signed device list, if one was set."""
        return optional_bytes(self._call("device_list"))

    def update_device_list(self, signed_list: BytesLike) -> "DeviceListChange":
        """A newer signed list of a user (a contact's, or our own): pins the user on first use,
        else must be newer (``InvalidBundleError`` for a rollback) and signed by the pinned user
        identity (``UntrustedIdentityError``, with that key as ``identity_key()``). A device the
        new list drops is refused from then on; a refused list changes nothing."""
        from ._users import _change

        return _change(self._call("update_device_list", as_bytes("signed_list", signed_list)))

    def trust_new_user_identity(self, signed_list: BytesLike) -> "DeviceListChange":
        """The app's decision to trust a new user identity for a user (after an
        ``UntrustedIdentityError`` with a user identity key, once the users compared safety
        numbers): pins the key that signed ``signed_list`` and its list."""
        from ._users import _change

        return _change(self._call("trust_new_user_identity", as_bytes("signed_list", signed_list)))

    def user_trust(self, user_id: str) -> Optional["UserTrust"]:
        """What this device trusts of ``user_id`` (our own list for our own user id), or ``None``
        if the user is not pinned. A copy: changing it changes nothing on the device."""
        from ._users import UserTrust

        native = self._call("user_trust", text("user_id", user_id))
        return None if native is None else UserTrust(native)

    def user_safety_number(self, user_id: str) -> "SafetyNumber":
        """The safety number of our user with ``user_id``, from the user identity of our own list
        and the one pinned for ``user_id``: stable while devices change, changed by a new user
        identity. ``InvalidArgumentError`` while our own list is not set; ``NoSessionError`` for a
        user that is not pinned."""
        return safety_number_of(self._call("user_safety_number", text("user_id", user_id)))

    def encrypt_to_user(self, user_id: str, plaintext: BytesLike) -> FanOut:
        """Encrypts ``plaintext`` for a contact user: one message per device of its pinned list
        that has a session, and a sent sync per other device of our own list that has one, written
        in one transaction before they are returned (PROTOCOL.md 23.6). ``NoSessionError`` for a
        user that is not pinned; a failure wrote nothing."""
        return fan_out_of(self._call("encrypt_to_user", text("user_id", user_id), as_bytes("plaintext", plaintext)))

    def encrypt_to_user_devices(self, user_id: str, plaintext: BytesLike, devices: Iterable[Address]) -> FanOut:
        """``encrypt_to_user`` for only these devices of the fan-out (typically its ``missing``,
        once sessions with them are started)."""
        return fan_out_of(
            self._call(
                "encrypt_to_user_devices",
                text("user_id", user_id),
                as_bytes("plaintext", plaintext),
                addresses("devices", devices),
            )
        )

    def encrypt_to_user_kept(self, user_id: str, plaintext: BytesLike, now: int) -> FanOut:
        """``encrypt_to_user``, keeping each message to the contact's devices in that device's
        outbox as ``encrypt_kept`` does (PROTOCOL.md 23.6): a reset from one of them brings the
        message again without the app, until ``acknowledge`` for that device (or the heal policy
        drops it). Sent syncs are not kept. ``now`` dates the entries for ``outbox_max_age``."""
        args = (text("user_id", user_id), as_bytes("plaintext", plaintext), u63("now", now))
        return fan_out_of(self._call("encrypt_to_user_kept", *args))

    def encrypt_to_user_devices_kept(
        self, user_id: str, plaintext: BytesLike, devices: Iterable[Address], now: int
    ) -> FanOut:
        """``encrypt_to_user_devices``, keeping each message to the contact's devices as
        ``encrypt_to_user_kept`` does."""
        return fan_out_of(
            self._call(
                "encrypt_to_user_devices_kept",
                text("user_id", user_id),
                as_bytes("plaintext", plaintext),
                addresses("devices", devices),
                u63("now", now),
            )
        )

    # Linking a new device (PROTOCOL.md 23.8).

    def link_offer(self, now: int) -> "LinkOffer":
        """Makes an offer to link this (new) device to its user: show its ``code()``, then give the
        message the scanning device sends back to ``finish_link`` with this offer. Valid for ten
        minutes from ``now``; kept in memory only."""
        from ._users import LinkOffer

        return LinkOffer(self._call("link_offer", u63("now", now)))

    def link_device(self, code: BytesLike, user_identity: "UserIdentity", now: int) -> "Linked":
        """Links the device whose ``code`` was scanned: adds it to this user's list (a new version
        signed with ``user_identity``, the key of this device's list), writes that list as this
        device's own, and seals for the new device the user identity, the list and the lists of the
        contact users this device pinned. ``InvalidArgumentError`` for a code that is not one, expired,
        of another user or of this device, no list of our own, or another user identity;
        ``LimitExceededError`` for a full list. A refusal writes nothing."""
        from ._users import _linked, _user_identity

        args = (as_bytes("code", code), _user_identity("user_identity", user_identity), u63("now", now))
        return _linked(self._call("link_device", *args))

    def finish_link(self, offer: "LinkOffer", message: BytesLike, now: int) -> "Provisioned":
        """Finishes linking this device with the ``message`` the scanning device sent for ``offer``:
        the list it carries becomes this device's own and the contact users it carries are pinned, in
        one transaction; keep the returned user identity. ``InvalidMessageError`` for a message not for
        this offer or not well formed, ``DuplicateError`` once the offer was used,
        ``InvalidArgumentError`` for an expired offer or another device's. A refusal writes nothing."""
        from ._users import _link_offer, _provisioned

        args = (_link_offer("offer", offer), as_bytes("message", message), u63("now", now))
        return _provisioned(self._call("finish_link", *args))

    # Replacing the user identity when a device was lost (issue 17).

    def replace_user_identity(self, user_identity: "UserIdentity", keep: Iterable[int]) -> "Replaced":
        """Replaces our user's identity because a device may be in someone else's hands: signs with
        ``user_identity``, a fresh one the app generated and keeps (``UserIdentity.generate()``), our
        own list reduced to this device and the devices ``keep`` (device ids the user confirms they
        still hold; an id the list does not name is ignored), takes it as this device's own, and
        encrypts a handover of the user identity and the list to each other device of the new list
        with a session, in one transaction. Keep ``user_identity`` before the call, then publish
        ``device_list`` and send the ``handovers``. Called again with the same user identity and
        devices, it makes the handovers again and changes no list. ``InvalidArgumentError`` with no
        list of our own, or for the user identity the list is already signed by while it names a
        device not kept (generate a new one). A refusal writes nothing."""
        from ._users import _replaced, _user_identity

        args = (_user_identity("user_identity", user_identity), u32_list("keep", keep))
        return _replaced(self._call("replace_user_identity", *args))

    def awaiting_handovers(self) -> List[Address]:
        """The devices of our own list that have not acknowledged the handover of our user identity
        yet (each handover's commit returns an acknowledgment: send it). A device still here after a
        while missed its handover: call ``replace_user_identity`` again with the same user identity
        and devices. Empty when no replacement is pending. Writes nothing."""
        return [address_of(a) for a in self._call("awaiting_handovers")]

    def peers(self) -> List[Address]:
        """Every peer device this device keeps a record of, in no particular order (reads every
        session row: for a settings screen, not per message)."""
        return [address_of(a) for a in self._call("peers")]

    def delete_session(self, peer: Address) -> bool:
        """Deletes everything kept of ``peer`` in one transaction; returns whether there was anything."""
        return bool(self._call("delete_session", address("peer", peer)))

    def skipped_key_count(self, peer: Address) -> int:
        """How many skipped message keys (of ``peer``'s messages not arrived yet) the store holds."""
        return int(self._call("skipped_key_count", address("peer", peer)))

    # Messages.

    def encrypt(self, peer: Address, plaintext: BytesLike) -> bytes:
        """Encrypts ``plaintext`` (any bytes-like) for ``peer``; committed before this returns."""
        return bytes(self._call("encrypt", address("peer", peer), as_bytes("plaintext", plaintext)))

    def decrypt(self, sender: Address, ciphertext: BytesLike) -> "PendingMessage":
        """Decrypts a message from ``sender`` (direct, group or control) without changing anything:
        store the plaintext, then ``commit`` the pending message."""
        native = self._call("decrypt", address("sender", sender), as_bytes("ciphertext", ciphertext))
        return PendingMessage(native)

    def commit(self, pending: "PendingMessage") -> List[Outgoing]:
        """Commits a decryption (after the app stored the plaintext); uses up ``pending``.

        Returns what to send, in order (usually nothing): the answer to a member's request
        for our chain, the messages sent again after a peer's reset.
        """
        if not isinstance(pending, PendingMessage):
            raise TypeError(f"pending must be a samizdat.PendingMessage, not {type(pending).__name__}")
        return [outgoing_of(o) for o in self._call("commit", pending._native)]

    def decrypt_batch(self, messages: Iterable[IncomingMessage]) -> "PendingBatch":
        """Decrypts queued messages in order; nothing is written until ``commit_batch``."""
        return PendingBatch(self._call("decrypt_batch", incoming("messages", messages)))

    def commit_batch(self, batch: "PendingBatch") -> None:
        """Commits a batch in one transaction."""
        if not isinstance(batch, PendingBatch):
            raise TypeError(f"batch must be a samizdat.PendingBatch, not {type(batch).__name__}")
        self._call("commit_batch", batch._native)

    # Groups.

    def create_group(self, group_id: BytesLike, members: Iterable[Address]) -> None:
        """Creates the group ``group_id`` (1 to 64 bytes) with ``members``, the other devices."""
        self._call("create_group", as_bytes("group_id", group_id), addresses("members", members))

    def add_group_members(self, group_id: BytesLike, members: Iterable[Address]) -> None:
        """Adds member devices: the next message gives them our chain from then on."""
        self._call("add_group_members", as_bytes("group_id", group_id), addresses("members", members))

    def remove_group_members(self, group_id: BytesLike, members: Iterable[Address]) -> None:
        """Removes member devices: our next message starts a chain only the others get. A device
        of a member user is refused (``InvalidArgumentError``): its user's list decides."""
        self._call("remove_group_members", as_bytes("group_id", group_id), addresses("members", members))

    def group_members(self, group_id: BytesLike) -> List[Address]:
        """The member devices of a group (besides this one), in the order they were added, as the
        newest verified device lists make them now."""
        return [address_of(a) for a in self._call("group_members", as_bytes("group_id", group_id))]

    def add_group_users(self, group_id: BytesLike, users: Iterable[str]) -> None:
        """Adds member users (PROTOCOL.md 18.8): each user's member devices are from now on those
        of its newest verified device list. A device a newer list drops stops being a member (our
        chain rotates) before our next message, even if the app never removed it; a device a newer
        list adds becomes one. ``NoSessionError`` for a user with no verified list on this device;
        a refusal writes nothing."""
        self._call("add_group_users", as_bytes("group_id", group_id), texts("users", users))

    def remove_group_users(self, group_id: BytesLike, users: Iterable[str]) -> None:
        """Removes member users and every member device of theirs: our next message starts a chain
        none of them gets. Names that are not members are ignored."""
        self._call("remove_group_users", as_bytes("group_id", group_id), texts("users", users))

    def group_users(self, group_id: BytesLike) -> List[str]:
        """The member users of a group, in the order they were added."""
        return [str(u) for u in self._call("group_users", as_bytes("group_id", group_id))]

    def delete_group(self, group_id: BytesLike) -> None:
        """Deletes a group from this device (leaving it): its messages are refused from then on."""
        self._call("delete_group", as_bytes("group_id", group_id))

    def group_encrypt(self, group_id: BytesLike, plaintext: BytesLike) -> GroupSend:
        """Encrypts ``plaintext`` for the group and gives our chain to the members that lack it."""
        sent = self._call("group_encrypt", as_bytes("group_id", group_id), as_bytes("plaintext", plaintext))
        return group_send_of(sent)

    # Healing.

    def encrypt_kept(self, peer: Address, plaintext: BytesLike, now: int) -> bytes:
        """Encrypts like ``encrypt`` and keeps the plaintext, sealed, in the outbox for ``peer``
        until ``acknowledge``, so that a reset from the peer brings it again."""
        args = (address("peer", peer), as_bytes("plaintext", plaintext), u63("now", now))
        return bytes(self._call("encrypt_kept", *args))

    def acknowledge(self, peer: Address, ids: Iterable[BytesLike]) -> int:
        """Removes from ``peer``'s outbox the messages of these ids (``message_id`` of each);
        returns how many it held."""
        return int(self._call("acknowledge", address("peer", peer), bytes_list("ids", ids)))

    def outbox_len(self, peer: Address) -> int:
        """How many plaintexts the outbox holds for ``peer``."""
        return int(self._call("outbox_len", address("peer", peer)))

    def expire_outbox(self, now: int) -> int:
        """Deletes the outbox's plaintexts past the policy's ``outbox_max_age``; returns how many."""
        return int(self._call("expire_outbox", u63("now", now)))

    def heal(self, bundle: BytesLike, unreadable: Iterable[BytesLike], now: int) -> HealResult:
        """Heals the session with the peer of this fresh ``bundle`` after an ``OutOfStepError``:
        a ``HealResult.SENT`` reset to send, or ``HealResult.TOO_SOON``."""
        args = (as_bytes("bundle", bundle), bytes_list("unreadable", unreadable), u63("now", now))
        return heal_result_of(self._call("heal", *args))

    def awaiting_resends(self, peer: Address) -> int:
        """How many messages from ``peer`` this device still waits for since its resets named them."""
        return int(self._call("awaiting_resends", address("peer", peer)))

    def set_heal_policy(self, policy: HealPolicy) -> None:
        """Sets how this handle heals (every handle of a store keeps its own policy)."""
        self._call("set_heal_policy", heal_policy("policy", policy))

    def heal_policy(self) -> HealPolicy:
        """This handle's healing policy."""
        return heal_policy_of(self._call("heal_policy"))

    # Backup and store upkeep.

    def export_backup(self, passphrase: BytesLike, params: BackupParams, now: int) -> bytes:
        """An encrypted backup of the identity and trust decisions under ``passphrase``."""
        args = (as_bytes("passphrase", passphrase), backup_params("params", params), u63("now", now))
        return bytes(self._call("export_backup", *args))

    def scrub(self) -> ScrubResult:
        """Rewrites the store's files so that no copy of an overwritten or deleted row is left:
        call it when the app goes to the background."""
        return ScrubResult[self._call("scrub").name]

    def check_integrity(self) -> None:
        """Checks the whole store for damage, changing nothing (damage: ``StoreFailureError``)."""
        self._call("check_integrity")


class PendingMessage:
    """A decrypted message waiting for ``Device.commit``: store the plaintext (keyed by
    ``message_id()`` for a direct message), commit, send what the commit returned, then
    acknowledge the message to the server."""

    __slots__ = ("_native",)

    def __init__(self, native: Any) -> None:
        """Made by ``Device.decrypt`` only."""
        self._native = native

    def plaintext(self) -> bytes:
        """The plaintext (empty for a control or user identity message; for a sent sync, what our
        other device sent)."""
        return bytes(self._native.plaintext())

    def kind(self) -> MessageKind:
        """What the message is."""
        return MessageKind[self._native.kind().name]

    def group_id(self) -> Optional[bytes]:
        """The group of a group or control message (``None`` for a direct one)."""
        return optional_bytes(self._native.group_id())

    def sender(self) -> Address:
        """The sender, as the app named it."""
        return address_of(self._native.sender())

    def sender_identity(self) -> Optional[bytes]:
        """The identity key (32 bytes) the sender's session authenticated."""
        return optional_bytes(self._native.sender_identity())

    def message_id(self) -> Optional[bytes]:
        """The id of a one-to-one message (16 bytes), ``None`` for a group message."""
        return optional_bytes(self._native.message_id())

    def sync_recipient(self) -> Optional[str]:
        """For a ``MessageKind.SENT_SYNC``, the user id the message was sent to; else ``None``."""
        recipient = self._native.sync_recipient()
        return None if recipient is None else str(recipient)

    def new_user_identity(self) -> Optional["NewUserIdentity"]:
        """For a ``MessageKind.USER_IDENTITY`` (another device of our own user replaced the user
        identity), the new user identity to keep before the commit, the new list and the devices
        removed; else ``None``."""
        from ._users import _new_user_identity

        native = self._native.new_user_identity()
        return None if native is None else _new_user_identity(native)

    def __repr__(self) -> str:
        return f"<samizdat.PendingMessage {self.kind().name} from {self.sender()}>"


class BatchResult:
    """One message's outcome in a ``PendingBatch``: a ``plaintext`` or an ``error``."""

    __slots__ = ("plaintext", "error")

    def __init__(self, plaintext: Optional[bytes], error: Optional[SamizdatError]) -> None:
        """A result: exactly one of ``plaintext`` and ``error`` is set."""
        self.plaintext = plaintext
        self.error = error

    def __eq__(self, other: object) -> bool:
        """Equal plaintexts, and errors of one class with one message (or both ``None``)."""
        if not isinstance(other, BatchResult):
            return False
        return self.plaintext == other.plaintext and _error_key(self.error) == _error_key(other.error)

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"BatchResult(plaintext={self.plaintext!r}, error={self.error!r})"


def _error_key(error: Optional[SamizdatError]) -> object:
    return None if error is None else (type(error), error.message)


class PendingBatch:
    """Decrypted queued messages waiting for ``Device.commit_batch``."""

    __slots__ = ("_native",)

    def __init__(self, native: Any) -> None:
        """Made by ``Device.decrypt_batch`` only."""
        self._native = native

    def results(self) -> List[BatchResult]:
        """One result per message, in the order given (empty once committed)."""
        results = []
        for result in self._native.results():
            error = None if result.error is None else from_native(result.error)
            results.append(BatchResult(optional_bytes(result.plaintext), error))
        return results


@dataclasses.dataclass(frozen=True)
class SafetyNumber:
    """The safety number of a conversation, as a plain value (nothing to close): ``digits``, the
    60 digits to read aloud; ``display``, the same in 12 groups of 5; ``scannable``, the bytes of
    the QR code on this screen.

    Two are equal (and hash alike) when they were computed for the same two identities on the
    same side: the peer's screen shows the same digits and the mirror image of the code. Nothing
    in it is secret."""

    digits: str
    display: str
    scannable: bytes

    def __post_init__(self) -> None:
        object.__setattr__(self, "digits", text("digits", self.digits))
        object.__setattr__(self, "display", text("display", self.display))
        object.__setattr__(self, "scannable", as_bytes("scannable", self.scannable))

    def compare_scanned(self, scanned: BytesLike) -> None:
        """Checks a code scanned from the peer's screen, both sides compared in constant time
        (``IdentityMismatchError`` says which differs; ``InvalidArgumentError`` if this value's
        own ``scannable`` is not a safety number's code)."""
        native = _native.SafetyNumber(digits=self.digits, display=self.display, scannable=self.scannable)
        call(native.compare_scanned, as_bytes("scanned", scanned))

    def __str__(self) -> str:
        """The digits in groups, as users read them (``display``)."""
        return self.display


def safety_number_of(native: Any) -> SafetyNumber:
    """The facade's value of a safety number the generated module returned."""
    return SafetyNumber(str(native.digits), str(native.display), bytes(native.scannable))


class Attachment:
    """The description of an encrypted attachment (its key, size and digest): it travels inside
    a message (``to_bytes``/``from_bytes``). Its ``repr`` shows no key."""

    __slots__ = ("_native",)

    def __init__(self, native: Any) -> None:
        """Made by the attachment functions and ``Attachment.from_bytes`` only."""
        if not isinstance(native, _native.Attachment):
            raise TypeError("use Attachment.from_bytes")
        self._native = native

    @classmethod
    def from_bytes(cls, data: BytesLike) -> "Attachment":
        """Reads a description made by ``to_bytes`` (``InvalidMessageError`` if malformed)."""
        return cls(call(_native.Attachment.from_bytes, as_bytes("data", data)))

    def to_bytes(self) -> bytes:
        """The description as bytes, to send inside a message (it holds the key)."""
        return bytes(self._native.to_bytes())

    def plaintext_len(self) -> int:
        """The plaintext's length in bytes."""
        return int(self._native.plaintext_len())

    def ciphertext_len(self) -> int:
        """The encrypted blob's length in bytes."""
        return int(self._native.ciphertext_len())

    def digest(self) -> bytes:
        """The digest of the encrypted blob."""
        return bytes(self._native.digest())

    def __eq__(self, other: object) -> bool:
        """Two descriptions of one blob under one key (compared in constant time)."""
        if not isinstance(other, Attachment):
            return False
        return hmac.compare_digest(self.to_bytes(), other.to_bytes())

    def __hash__(self) -> int:
        return hash(self.digest())

    def __repr__(self) -> str:
        return f"<samizdat.Attachment {self.plaintext_len()} bytes, digest {self.digest().hex()[:16]}...>"


@dataclasses.dataclass(frozen=True)
class SealedTail:
    """What ``AttachmentEncryptor.finish`` returns: the last ``ciphertext`` and the ``attachment``."""

    ciphertext: bytes
    attachment: Attachment


def _attachment(name: str, value: object) -> Any:
    if not isinstance(value, Attachment):
        raise TypeError(f"{name} must be a samizdat.Attachment, not {type(value).__name__}")
    return value._native


class AttachmentEncryptor:
    """Encrypts an attachment a piece at a time: ``update`` each piece, then ``finish``."""

    __slots__ = ("_native",)

    def __init__(self) -> None:
        """A new encryption, under a fresh key."""
        self._native = call(_native.AttachmentEncryptor)

    def update(self, plaintext: BytesLike) -> bytes:
        """Encrypts the next piece (any bytes-like); returns the ciphertext ready so far."""
        return bytes(call(self._native.update, as_bytes("plaintext", plaintext)))

    def finish(self) -> SealedTail:
        """Ends the encryption: the last ciphertext and the attachment's description."""
        tail = call(self._native.finish)
        return SealedTail(bytes(tail.ciphertext), Attachment(tail.attachment))


class AttachmentDecryptor:
    """Decrypts an attachment a piece at a time: ``update`` each piece, then ``finish``, which
    checks the digest (use no plaintext before it returns)."""

    __slots__ = ("_native",)

    def __init__(self, attachment: Attachment) -> None:
        """A decryption of the blob ``attachment`` describes."""
        self._native = _native.AttachmentDecryptor(_attachment("attachment", attachment))

    def update(self, ciphertext: BytesLike) -> bytes:
        """Decrypts the next piece (any bytes-like); returns the plaintext ready so far."""
        return bytes(call(self._native.update, as_bytes("ciphertext", ciphertext)))

    def finish(self) -> None:
        """Ends the decryption: raises if the blob was not the one described."""
        call(self._native.finish)


def encrypt_attachment_file(input_path: StrPath, output_path: StrPath) -> Attachment:
    """Encrypts the file at ``input_path`` into ``output_path``; returns its description."""
    paths = (as_path("input_path", input_path), as_path("output_path", output_path))
    return Attachment(call(_native.encrypt_attachment_file, *paths))


def decrypt_attachment_file(attachment: Attachment, input_path: StrPath, output_path: StrPath) -> None:
    """Decrypts the blob at ``input_path`` into ``output_path``, checking it is the one described."""
    paths = (as_path("input_path", input_path), as_path("output_path", output_path))
    call(_native.decrypt_attachment_file, _attachment("attachment", attachment), *paths)


def read_attachment_range(attachment: Attachment, input_path: StrPath, offset: int, length: int) -> bytes:
    """The plaintext bytes ``offset .. offset + length`` of the blob at ``input_path``, decrypting
    only the chunks they fall in."""
    args = (_attachment("attachment", attachment), as_path("input_path", input_path))
    return bytes(call(_native.read_attachment_range, *args, u63("offset", offset), u63("length", length)))


def message_id(wire: BytesLike) -> bytes:
    """The id (16 bytes) of the message whose wire bytes are ``wire``: the same on both sides."""
    return bytes(call(_native.message_id, as_bytes("wire", wire)))


def backup_params_recommended() -> BackupParams:
    """The default backup parameters: 64 MiB, 3 passes, 1 lane."""
    return backup_params_from(_native.backup_params_recommended())


def backup_params_minimum() -> BackupParams:
    """The weakest parameters an export takes: 19 MiB, 2 passes, 1 lane."""
    return backup_params_from(_native.backup_params_minimum())


def backup_params_of(backup: BytesLike) -> BackupParams:
    """The parameters a backup states, read without the passphrase."""
    return backup_params_from(call(_native.backup_params_of, as_bytes("backup", backup)))


def rotate_storage_key(path: StrPath, old_key: BytesLike, new_key: BytesLike) -> ScrubResult:
    """Re-seals every row of the store at ``path`` under ``new_key`` and scrubs its files.
    Close every ``Device`` of the store first."""
    keys = (as_bytes("old_key", old_key), as_bytes("new_key", new_key))
    return ScrubResult[call(_native.rotate_storage_key, as_path("path", path), *keys).name]
