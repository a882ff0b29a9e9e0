"""What Python users asked of the bindings (issue 19 item 2), one test per request: any bytes-like
object where bytes are taken, os.PathLike paths, value records, close() and `with`, exceptions
with one base class and a message, typed (mypy-clean) and versioned. Each of these failed on the
generated module alone, which is now private (`samizdat._native`) under the facade package.
"""

import array
import dataclasses
import os
import re
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import pytest

import samizdat
from samizdat import (
    Address,
    BackupParams,
    Device,
    DeviceClosedError,
    ErrorKind,
    GroupSend,
    HealPolicy,
    IncomingMessage,
    InvalidArgumentError,
    Outgoing,
    PrekeyCounts,
    Recovery,
    Rotated,
    SamizdatError,
)

ROOT = Path(__file__).resolve().parents[3]
ALICE_KEY = bytes([1] * 32)
BOB_KEY = bytes([2] * 32)


def pair(tmp_path):
    alice = Device.open_or_create(tmp_path / "alice.db", ALICE_KEY, "alice", 1, 0)
    bob = Device.open_or_create(tmp_path / "bob.db", BOB_KEY, "bob", 1, 0)
    return alice, bob


# Bytes-like arguments.

BYTES_LIKE = [
    pytest.param(bytearray, id="bytearray"),
    pytest.param(lambda b: memoryview(bytearray(b)), id="memoryview"),
    pytest.param(lambda b: array.array("B", b), id="array"),
    pytest.param(lambda b: memoryview(b"xx" + b + b"yy")[2:-2], id="memoryview-slice"),
]


@pytest.mark.parametrize("wrap", BYTES_LIKE)
def test_every_bytes_argument_takes_any_bytes_like_object(tmp_path, wrap):
    alice = Device.open_or_create(tmp_path / "alice.db", wrap(ALICE_KEY), "alice", 1, 0)
    bob = Device.open_or_create(tmp_path / "bob.db", wrap(BOB_KEY), "bob", 1, 0)
    bob_address = alice.start_session(wrap(bob.prekey_bundle()))
    wire = alice.encrypt(bob_address, wrap(b"hello"))
    assert type(wire) is bytes
    pending = bob.decrypt(alice.address(), wrap(wire))
    assert pending.plaintext() == b"hello"
    bob.commit(pending)
    kept = alice.encrypt_kept(bob_address, wrap(b"kept"), 1)
    assert alice.acknowledge(bob_address, [wrap(samizdat.message_id(wrap(kept)))]) == 1
    alice.safety_number(bob_address).compare_scanned(wrap(bob.safety_number(alice.address()).scannable))
    alice.trust_identity(bob_address, wrap(bob.identity_key()))
    alice.create_group(wrap(b"group"), [bob_address])
    assert alice.group_members(wrap(b"group")) == [bob_address]
    sent = alice.group_encrypt(wrap(b"group"), wrap(b"to the group"))
    assert sent.distributions[0].to == bob_address
    batch = bob.decrypt_batch([IncomingMessage(alice.address(), wrap(alice.encrypt(bob_address, b"queued")))])
    assert batch.results()[0].plaintext == b"queued"
    bob.commit_batch(batch)
    # Attachments, pieces at a time.
    encryptor = samizdat.AttachmentEncryptor()
    blob = encryptor.update(wrap(b"a photo")) + (tail := encryptor.finish()).ciphertext
    description = samizdat.Attachment.from_bytes(wrap(tail.attachment.to_bytes()))
    assert description == tail.attachment and hash(description) == hash(tail.attachment)
    assert tail == dataclasses.replace(tail) and repr(tail).startswith("SealedTail(ciphertext=b")
    decryptor = samizdat.AttachmentDecryptor(description)
    assert decryptor.update(wrap(blob)) == b"a photo"
    decryptor.finish()


@pytest.mark.parametrize("wrong", [42, "text", None, [1, 2], 3.5])
def test_a_wrong_type_is_a_type_error_and_leaks_nothing(tmp_path, wrong):
    path = tmp_path / "alice.db"
    alice = Device.open_or_create(path, ALICE_KEY, "alice", 1, 0)
    peer = Address("bob", 1)
    calls = [
        lambda: alice.encrypt(peer, wrong),
        lambda: alice.start_session(wrong),
        lambda: alice.decrypt(peer, wrong),
        lambda: alice.trust_identity(peer, wrong),
        lambda: alice.create_group(wrong, []),
        lambda: alice.acknowledge(peer, [wrong]),
        lambda: alice.has_session(wrong),
        lambda: alice.prekey_bundles(str(wrong)),
        lambda: Device.open(path, wrong),
        lambda: Device.open(b"alice.db", ALICE_KEY),
        lambda: samizdat.message_id(wrong),
    ]
    for call in calls:
        with pytest.raises(TypeError) as error:
            call()
        assert str(error.value), "a TypeError with no message"
    del error
    # Nothing kept the store: closed, it opens again at once in this process.
    alice.close()
    again = Device.open(path, ALICE_KEY)
    assert again.address() == Address("alice", 1)
    again.close()


# Paths.


def test_paths_take_os_pathlike(tmp_path):
    class Custom(os.PathLike):
        def __init__(self, path):
            self.path = path

        def __fspath__(self):
            return str(self.path)

    alice = Device.create(tmp_path / "alice.db", ALICE_KEY, "alice", 1, 0)
    alice.close()
    with Device.open(Custom(tmp_path / "alice.db"), ALICE_KEY) as reopened:
        assert reopened.address() == Address("alice", 1)
    assert samizdat.rotate_storage_key(tmp_path / "alice.db", ALICE_KEY, BOB_KEY) == samizdat.ScrubResult.DONE
    with Device.open(str(tmp_path / "alice.db"), BOB_KEY) as rotated:
        assert rotated.address() == Address("alice", 1)
    (tmp_path / "photo").write_bytes(b"pixels" * 1000)
    attachment = samizdat.encrypt_attachment_file(tmp_path / "photo", tmp_path / "blob")
    samizdat.decrypt_attachment_file(attachment, tmp_path / "blob", Custom(tmp_path / "back"))
    assert (tmp_path / "back").read_bytes() == b"pixels" * 1000
    assert samizdat.read_attachment_range(attachment, tmp_path / "blob", 6, 6) == b"pixels"
    backup = Device.open_or_create(tmp_path / "b.db", ALICE_KEY, "b", 1, 0).export_backup(
        b"pass", samizdat.backup_params_minimum(), 0
    )
    with Device.restore(tmp_path / "restored.db", ALICE_KEY, backup, bytearray(b"pass"), 1) as restored:
        assert restored.address() == Address("b", 1)


# Value records.


def test_address_is_a_frozen_hashable_value():
    alice = Address("alice", 1)
    assert alice == Address(user_id="alice", device_id=1)
    assert repr(alice) == "Address(user_id='alice', device_id=1)"
    assert str(alice) == "alice.1"
    assert dataclasses.asdict(alice) == {"user_id": "alice", "device_id": 1}
    assert len({alice, Address("alice", 1), Address("alice", 2)}) == 2
    assert {alice: "ok"}[Address("alice", 1)] == "ok"
    assert (alice == None) is False  # noqa: E711 (the comparison itself is under test)
    assert alice != "alice.1" and alice != ("alice", 1)
    with pytest.raises(dataclasses.FrozenInstanceError):
        alice.device_id = 2  # type: ignore[misc]
    with pytest.raises(TypeError):
        Address(1, 1)  # type: ignore[arg-type]
    with pytest.raises(InvalidArgumentError):
        Address("alice", -1)
    with pytest.raises(ValueError):  # InvalidArgumentError is a ValueError too
        Address("alice", 1 << 32)


def test_every_record_is_a_value(tmp_path):
    alice, bob = pair(tmp_path)
    bob_address = alice.start_session(bob.prekey_bundle())
    alice.create_group(b"g", [bob_address])
    sent = alice.group_encrypt(b"g", b"hi")
    assert isinstance(sent, GroupSend) and isinstance(sent.distributions[0], Outgoing)
    assert sent == dataclasses.replace(sent) and hash(sent) == hash(dataclasses.replace(sent))
    assert repr(sent.distributions[0]).startswith("Outgoing(to=Address(user_id='bob', device_id=1), message=b")
    values = [
        alice.prekey_counts(),
        alice.rotate_prekeys(0, 1),
        alice.heal_policy(),
        samizdat.backup_params_recommended(),
        IncomingMessage(bob_address, bytearray(b"x")),
    ]
    for value in values:
        assert dataclasses.is_dataclass(value)
        assert value == dataclasses.replace(value) and value != None  # noqa: E711
        assert hash(value) == hash(dataclasses.replace(value))
        assert repr(value).startswith(type(value).__name__ + "(")
    assert PrekeyCounts(1, 2) == PrekeyCounts(one_time=1, pq_one_time=2)
    assert Rotated(True, False).signed_prekey
    assert BackupParams(19456, 2, 1) == samizdat.backup_params_minimum()
    policy = HealPolicy(0, 60, 10, False)
    alice.set_heal_policy(policy)
    assert alice.heal_policy() == policy
    assert IncomingMessage(bob_address, bytearray(b"x")).ciphertext == b"x"


# close() and `with`.


def test_close_releases_the_store_at_once(tmp_path):
    path = tmp_path / "alice.db"
    alice = Device.open_or_create(path, ALICE_KEY, "alice", 1, 0)
    # A failed call whose exception (and its frames) the app keeps.
    with pytest.raises(SamizdatError.NoSession) as kept:
        alice.encrypt(Address("bob", 1), b"x")
    alice.close()
    assert alice.closed
    alice.close()  # a second close does nothing
    # Another device opens the store right away, in this process, without a collection.
    second = Device.open(path, ALICE_KEY)
    assert second.address() == Address("alice", 1)
    second.close()
    assert kept.value.code() == "no_session"


def test_a_closed_device_raises_a_typed_error(tmp_path):
    alice = Device.open_or_create(tmp_path / "alice.db", ALICE_KEY, "alice", 1, 0)
    alice.close()
    for call in (alice.address, alice.prekey_bundle, lambda: alice.encrypt(Address("bob", 1), b"x")):
        with pytest.raises(DeviceClosedError) as error:
            call()
        assert isinstance(error.value, SamizdatError) and isinstance(error.value, InvalidArgumentError)
        assert "closed" in str(error.value)
        assert error.value.kind() == ErrorKind.INVALID_ARGUMENT and error.value.recovery() == Recovery.FIX_CALL
    assert repr(alice) == "<samizdat.Device (closed)>"


def test_with_closes_the_device(tmp_path):
    path = tmp_path / "alice.db"
    with Device.open_or_create(path, ALICE_KEY, "alice", 1, 0) as alice:
        bundle = alice.prekey_bundle()
    assert alice.closed
    with pytest.raises(RuntimeError):
        with Device.open(path, ALICE_KEY) as again:
            assert again.identity_key()
            raise RuntimeError("the block failed")
    assert again.closed
    with Device.open(path, ALICE_KEY) as third, Device.open_or_create(tmp_path / "b.db", BOB_KEY, "bob", 1, 0) as bob:
        bob.start_session(bundle)
        assert third.address() == Address("alice", 1)


def test_close_waits_for_calls_in_other_threads(tmp_path):
    path = tmp_path / "alice.db"
    alice, bob = pair(tmp_path)
    bob_address = alice.start_session(bob.prekey_bundle())
    outcomes = []
    started = threading.Event()

    def send():
        try:
            while True:
                alice.encrypt(bob_address, b"x" * 1000)
                started.set()
        except DeviceClosedError:
            outcomes.append("closed")

    threads = [threading.Thread(target=send) for _ in range(3)]
    for thread in threads:
        thread.start()
    started.wait(10)
    alice.close()
    # As soon as close() returned, the store is free.
    Device.open(path, ALICE_KEY).close()
    for thread in threads:
        thread.join(10)
    assert outcomes == ["closed"] * 3


# Exceptions.


def test_every_exception_has_one_base_and_a_message(tmp_path):
    classes = [getattr(samizdat, name) for name in samizdat.__all__ if name.endswith("Error")]
    assert len(classes) == 17  # the fifteen codes, the base, and DeviceClosedError
    for cls in classes:
        assert issubclass(cls, SamizdatError)
    for kind in ErrorKind:
        variant = "".join(word.capitalize() for word in kind.name.split("_"))
        assert getattr(SamizdatError, variant).KIND is kind
    alice, bob = pair(tmp_path)
    failures = [
        lambda: alice.encrypt(Address("nobody", 1), b"x"),
        lambda: alice.start_session(b"not a bundle"),
        lambda: Device.open(tmp_path / "alice.db", BOB_KEY),
        lambda: Device.create(tmp_path / "x.db", bytes(31), "x", 1, 0),
        lambda: alice.refill_prekeys(-1, 1, 0),
        lambda: alice.encrypt(Address("nobody", 1), bytes(300 * 1024)),
    ]
    for failure in failures:
        with pytest.raises(SamizdatError) as error:
            failure()
        assert str(error.value) and str(error.value) == error.value.message
        assert repr(error.value) == f"{type(error.value).__name__}({error.value.message!r})"
        assert not re.search(r"message=|\bb'", str(error.value))
    del error


def test_out_of_range_integers_are_invalid_arguments(tmp_path):
    with Device.open_or_create(tmp_path / "alice.db", ALICE_KEY, "alice", 1, 0) as alice:
        # Counts cross the boundary as signed 32-bit integers, times as
        # signed 64-bit ones: one past the largest is refused here, cleanly.
        calls = (
            lambda: alice.prekey_bundles(1 << 31),
            lambda: alice.refill_prekeys(1, 1 << 31, 0),
            lambda: alice.expire_outbox(-1),
            lambda: alice.expire_outbox(1 << 63),
            lambda: alice.rotate_prekeys(0, 1 << 63),
        )
        for call in calls:
            with pytest.raises(InvalidArgumentError, match="unsigned"):
                call()
        assert alice.expire_outbox((1 << 63) - 1) == 0
        with pytest.raises(TypeError):
            alice.expire_outbox(True)
        assert alice.prekey_bundles(2)


# Version and types.


def test_version_is_the_crate_version():
    manifest = (ROOT / "Cargo.toml").read_text()
    workspace = manifest.split("[workspace.package]", 1)[1]
    crate_version = re.search(r'^version = "([^"]+)"', workspace, re.MULTILINE).group(1)
    assert samizdat.__version__ == crate_version


def readme_python_example():
    """The Python block of the README's Bindings section, as a typed function for mypy."""
    readme = (ROOT / "README.md").read_text()
    section = readme.split("\n## Bindings\n", 1)[1].split("\n## ", 1)[0]
    body = section.split("```python\n", 1)[1].split("\n```", 1)[0]
    header = "import pathlib\n\nimport pytest\n\nimport samizdat\nfrom samizdat import Device\n\n\n"
    return header + "def example(tmp_path: pathlib.Path) -> None:\n" + textwrap.indent(body, "    ") + "\n"


def mypy(tmp_path, *targets):
    """Runs mypy --strict against the installed package; returns (exit code, output)."""
    command = [sys.executable, "-m", "mypy", "--strict", "--no-incremental", "--cache-dir", os.devnull, *targets]
    done = subprocess.run(command, capture_output=True, text=True, cwd=tmp_path, timeout=300)
    return done.returncode, done.stdout + done.stderr


def mypy_on(tmp_path, source):
    """mypy --strict on `source`, a module of its own."""
    (tmp_path / "example.py").write_text(source)
    return mypy(tmp_path, "example.py")


def test_package_is_typed():
    assert (Path(samizdat.__file__).parent / "py.typed").is_file()


def test_mypy_is_clean_on_the_readme_example_and_catches_misuse(tmp_path):
    code, output = mypy_on(tmp_path, readme_python_example())
    assert code == 0, output
    wrong = textwrap.dedent(
        """
        from samizdat import Address, Device

        def misuse(device: Device) -> None:
            wire: str = device.encrypt(Address("bob", 1), b"x")
            device.encrypt("bob", b"x")
            device.decrypt(Address("bob", 1), b"x").plaintext().upper(1)
        """
    )
    code, output = mypy_on(tmp_path, wrong)
    assert code == 1, output
    # The three lines are found: the types are the facade's, not Any.
    assert len(re.findall(r"example\.py:\d+: error", output)) == 3, output


def test_mypy_is_clean_on_the_package_itself(tmp_path):
    # Strict on the facade; the generated module (samizdat._native) is not ours to annotate.
    config = "[mypy]\nstrict = True\n[mypy-samizdat._native,samizdat._native.*]\nfollow_imports = skip\nignore_errors = True\n"
    (tmp_path / "mypy.ini").write_text(config)
    code, output = mypy(tmp_path, "--config-file", "mypy.ini", "-p", "samizdat")
    assert code == 0, output
