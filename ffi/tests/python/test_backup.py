"""Encrypted backup and restore through the Python bindings (PROTOCOL.md 21): a device's identity and
trust decisions under a passphrase, restored on a new installation whose session then heals. The same
scenarios as ffi/tests/kotlin (BackupTest.kt); core/tests/backup.rs has the full set.
"""

import os

import pytest

import samizdat
from samizdat import BackupParams, Device, HealResult, MessageKind, SamizdatError

PASSPHRASE = b"correct horse battery staple"


def receive(to, sender, wire):
    """Decrypt, "store", commit: returns (kind, plaintext, message id, what the commit returned)."""
    pending = to.decrypt(sender.address(), wire)
    got = (pending.kind(), pending.plaintext(), pending.message_id())
    return got + (to.commit(pending),)


def converse(alice, bob, tag, now):
    """Each side sends one kept message the other reads."""
    to_bob = alice.encrypt_kept(bob.address(), b"a " + tag, now)
    assert receive(bob, alice, to_bob)[:2] == (MessageKind.DIRECT, b"a " + tag)
    to_alice = bob.encrypt_kept(alice.address(), b"b " + tag, now)
    assert receive(alice, bob, to_alice)[:2] == (MessageKind.DIRECT, b"b " + tag)


def pair(tmp_path):
    alice = Device.open_or_create(str(tmp_path / "alice.db"), bytes([1] * 32), "alice", 1, 0)
    bob = Device.open_or_create(str(tmp_path / "bob.db"), bytes([2] * 32), "bob", 1, 0)
    alice.start_session(bob.prekey_bundle())
    converse(alice, bob, b"hello", 0)
    return alice, bob


def test_the_parameters():
    assert samizdat.backup_params_recommended() == BackupParams(memory_kib=65536, iterations=3, parallelism=1)
    assert samizdat.backup_params_minimum() == BackupParams(memory_kib=19456, iterations=2, parallelism=1)


def test_backup_converse_restore_converse(tmp_path):
    alice, bob = pair(tmp_path)
    backup = bob.export_backup(PASSPHRASE, samizdat.backup_params_minimum(), 10)
    assert backup[:4] == b"SZBK"
    assert samizdat.backup_params_of(backup) == samizdat.backup_params_minimum()
    converse(alice, bob, b"after the backup", 20)
    in_flight = alice.encrypt_kept(bob.address(), b"in flight", 30)
    bob_identity = bob.identity_key()
    del bob
    os.remove(tmp_path / "bob.db")  # the phone is lost

    # A new installation: another file, another storage key.
    bob = Device.restore(str(tmp_path / "new-bob.db"), bytes([9] * 32), backup, PASSPHRASE, 1000)
    assert bob.identity_key() == bob_identity
    assert bob.peer_identity(alice.address()) == alice.identity_key()
    assert not bob.has_session(alice.address())
    with pytest.raises(SamizdatError.OutOfStep) as out_of_step:
        bob.decrypt(alice.address(), in_flight)
    assert out_of_step.value.recovery() == samizdat.Recovery.HEAL
    del out_of_step
    healed = bob.heal(alice.prekey_bundle(), [in_flight], 1000)
    assert isinstance(healed, HealResult.SENT), healed
    kind, _, _, resends = receive(alice, bob, healed.reset.message)
    assert kind == MessageKind.CONTROL and len(resends) == 1
    kind, plaintext, message_id, _ = receive(bob, alice, resends[0].message)
    assert (kind, plaintext, message_id) == (MessageKind.DIRECT, b"in flight", samizdat.message_id(in_flight))
    converse(alice, bob, b"healed", 1001)
    del alice, bob


def test_what_a_restore_refuses(tmp_path):
    alice, _ = pair(tmp_path)
    backup = alice.export_backup(PASSPHRASE, samizdat.backup_params_minimum(), 10)
    path = str(tmp_path / "restored.db")
    with pytest.raises(SamizdatError.WrongStorageKey) as wrong:
        Device.restore(path, bytes([8] * 32), backup, b"not the passphrase", 1000)
    assert wrong.value.code() == "wrong_storage_key"
    del wrong
    assert not os.path.exists(path), "a wrong passphrase creates no file"
    altered = bytearray(backup)
    altered[-1] ^= 1
    with pytest.raises(SamizdatError.WrongStorageKey):
        Device.restore(path, bytes([8] * 32), bytes(altered), PASSPHRASE, 1000)
    with pytest.raises(SamizdatError.InvalidArgument):
        Device.restore(path, bytes([8] * 32), backup[:100], PASSPHRASE, 1000)
    hostile = bytearray(backup)
    hostile[5:9] = (2**32 - 1).to_bytes(4, "big")  # 4 TiB: refused before any key is derived
    with pytest.raises(SamizdatError.LimitExceeded):
        Device.restore(path, bytes([8] * 32), bytes(hostile), PASSPHRASE, 1000)
    with pytest.raises(SamizdatError.LimitExceeded):
        alice.export_backup(PASSPHRASE, BackupParams(memory_kib=1024, iterations=1, parallelism=1), 10)
    # The existing store of Alice holds a device: refused, like a create.
    with pytest.raises(SamizdatError.InvalidArgument):
        Device.restore(str(tmp_path / "alice.db"), bytes([1] * 32), backup, PASSPHRASE, 1000)
    restored = Device.restore(path, bytes([8] * 32), backup, PASSPHRASE, 1000)
    assert restored.identity_key() == alice.identity_key()
    del alice, restored
