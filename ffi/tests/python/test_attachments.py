"""Attachments through the Python bindings (PROTOCOL.md 22): by file path, a piece at a time, by byte
range, the description sent inside a message, and every tampered blob refused. The same scenarios as
ffi/tests/kotlin (AttachmentTest.kt); core/tests/attachments.rs has the full set.
"""

import os

import pytest
from blake3 import blake3

import samizdat
from samizdat import (
    Attachment,
    AttachmentDecryptor,
    AttachmentEncryptor,
    Device,
    SamizdatError,
    decrypt_attachment_file,
    encrypt_attachment_file,
    read_attachment_range,
)

CHUNK = 64 * 1024
SEALED_CHUNK = CHUNK + 16


def receive(to, sender, wire):
    pending = to.decrypt(sender.address(), wire)
    plaintext = pending.plaintext()
    to.commit(pending)
    return plaintext


def test_a_photo_sent_in_a_message_by_file_path(tmp_path):
    alice = Device.open_or_create(str(tmp_path / "alice.db"), bytes([1] * 32), "alice", 1, 0)
    bob = Device.open_or_create(str(tmp_path / "bob.db"), bytes([2] * 32), "bob", 1, 0)
    alice.start_session(bob.prekey_bundle())
    photo = os.urandom(3 * CHUNK + 12345)
    (tmp_path / "photo.jpg").write_bytes(photo)

    sent = encrypt_attachment_file(str(tmp_path / "photo.jpg"), str(tmp_path / "blob"))
    blob = (tmp_path / "blob").read_bytes()
    assert sent.plaintext_len() == len(photo)
    assert sent.ciphertext_len() == len(blob) > len(photo)
    assert sent.digest() == blake3(blob).digest()  # an independent BLAKE3 (PyPI)

    # The description travels inside an encrypted message; the blob through the server.
    description = receive(bob, alice, alice.encrypt(bob.address(), sent.to_bytes()))
    assert len(description) == 81
    received = Attachment.from_bytes(description)
    decrypt_attachment_file(received, str(tmp_path / "blob"), str(tmp_path / "received.jpg"))
    assert (tmp_path / "received.jpg").read_bytes() == photo

    # A seek: only the chunks of the range are read.
    assert read_attachment_range(received, str(tmp_path / "blob"), 2 * CHUNK - 5, 10) == photo[2 * CHUNK - 5 : 2 * CHUNK + 5]
    with pytest.raises(SamizdatError.InvalidArgument):
        read_attachment_range(received, str(tmp_path / "blob"), len(photo) - 1, 2)
    with pytest.raises(SamizdatError.LimitExceeded):
        read_attachment_range(received, str(tmp_path / "blob"), 0, (16 << 20) + 1)


def test_a_tampered_blob_leaves_no_output_file(tmp_path):
    (tmp_path / "doc.pdf").write_bytes(b"%PDF" * 50_000)
    sent = encrypt_attachment_file(str(tmp_path / "doc.pdf"), str(tmp_path / "blob"))
    blob = bytearray((tmp_path / "blob").read_bytes())
    for name, bad in [
        ("a flipped bit", blob[:100] + bytes([blob[100] ^ 1]) + blob[101:]),
        ("cut short", blob[:-1]),
        ("extended", blob + b"\x00"),
        ("two chunks swapped", blob[SEALED_CHUNK : 2 * SEALED_CHUNK] + blob[:SEALED_CHUNK] + blob[2 * SEALED_CHUNK :]),
    ]:
        (tmp_path / "bad").write_bytes(bytes(bad))
        with pytest.raises(SamizdatError.InvalidMessage):
            decrypt_attachment_file(sent, str(tmp_path / "bad"), str(tmp_path / "out.pdf"))
        assert not (tmp_path / "out.pdf").exists(), name
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad", "blob", "doc.pdf"], "no partial file left"

    # Another file's description (same length, another key) does not open this blob.
    other = encrypt_attachment_file(str(tmp_path / "doc.pdf"), str(tmp_path / "other"))
    with pytest.raises(SamizdatError.InvalidMessage):
        decrypt_attachment_file(other, str(tmp_path / "blob"), str(tmp_path / "out.pdf"))
    # A malformed description.
    with pytest.raises(SamizdatError.InvalidMessage):
        Attachment.from_bytes(sent.to_bytes()[:80])


def test_a_piece_at_a_time_agrees_with_the_file_calls(tmp_path):
    data = os.urandom(5 * CHUNK + 777)
    encryptor = AttachmentEncryptor()
    blob = bytearray()
    for start in range(0, len(data), 10_000):
        blob += encryptor.update(data[start : start + 10_000])
    tail = encryptor.finish()
    blob += tail.ciphertext
    sent = tail.attachment
    assert sent.ciphertext_len() == len(blob)
    with pytest.raises(SamizdatError.InvalidArgument):
        encryptor.finish()  # spent

    # The file call reads what the pieces made.
    (tmp_path / "blob").write_bytes(bytes(blob))
    decrypt_attachment_file(sent, str(tmp_path / "blob"), str(tmp_path / "out"))
    assert (tmp_path / "out").read_bytes() == data

    # And the pieces read what the file call made.
    (tmp_path / "in").write_bytes(data)
    made = encrypt_attachment_file(str(tmp_path / "in"), str(tmp_path / "blob2"))
    decryptor = AttachmentDecryptor(made)
    out = bytearray()
    blob2 = (tmp_path / "blob2").read_bytes()
    for start in range(0, len(blob2), 4096):
        out += decryptor.update(blob2[start : start + 4096])
    decryptor.finish()
    assert bytes(out) == data


def test_a_piece_at_a_time_refuses_what_does_not_check():
    encryptor = AttachmentEncryptor()
    blob = encryptor.update(b"x" * 100_000)
    tail = encryptor.finish()
    blob += tail.ciphertext

    # Cut short: every chunk that came opens, finish refuses.
    decryptor = AttachmentDecryptor(tail.attachment)
    decryptor.update(blob[:-10])
    with pytest.raises(SamizdatError.InvalidMessage):
        decryptor.finish()

    # A flipped bit: refused at its chunk, and the decryptor is spent.
    bad = bytearray(blob)
    bad[5] ^= 0x80
    decryptor = AttachmentDecryptor(tail.attachment)
    with pytest.raises(SamizdatError.InvalidMessage):
        decryptor.update(bytes(bad))
    with pytest.raises(SamizdatError.InvalidArgument):
        decryptor.update(blob)

    # Bytes past the end.
    decryptor = AttachmentDecryptor(tail.attachment)
    with pytest.raises(SamizdatError.InvalidMessage):
        decryptor.update(blob + b"\x00")


def test_an_empty_file_is_padded_like_any_small_one(tmp_path):
    (tmp_path / "empty").write_bytes(b"")
    sent = encrypt_attachment_file(str(tmp_path / "empty"), str(tmp_path / "blob"))
    assert sent.plaintext_len() == 0
    assert sent.ciphertext_len() == 1024 + 16  # the least padded length, one chunk
    decrypt_attachment_file(sent, str(tmp_path / "blob"), str(tmp_path / "out"))
    assert (tmp_path / "out").read_bytes() == b""
    assert samizdat.Attachment.from_bytes(sent.to_bytes()).digest() == sent.digest()
