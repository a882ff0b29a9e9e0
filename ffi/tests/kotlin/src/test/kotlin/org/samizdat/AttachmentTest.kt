// Attachments through the Kotlin bindings (PROTOCOL.md 22): by file path, a piece at a time (as an app
// wraps its own streams around it), by byte range, the description sent inside a message, and tampered
// blobs refused with no output left. The same scenarios as ffi/tests/python/test_attachments.py;
// core/tests/attachments.rs has the full set.
package org.samizdat

import java.io.ByteArrayOutputStream
import java.nio.file.Files
import java.nio.file.Path
import kotlin.random.Random
import org.bouncycastle.crypto.digests.Blake3Digest
import org.junit.jupiter.api.Assertions.assertArrayEquals
import org.junit.jupiter.api.Assertions.assertEquals
import org.junit.jupiter.api.Assertions.assertFalse
import org.junit.jupiter.api.Assertions.assertThrows
import org.junit.jupiter.api.Assertions.assertTrue
import org.junit.jupiter.api.Test
import org.junit.jupiter.api.io.TempDir

private const val CHUNK = 64 * 1024
private const val SEALED_CHUNK = CHUNK + 16

class AttachmentTest {
    @Test
    fun aPhotoSentInAMessageByFilePath(@TempDir dir: Path) {
        val alice = Device.openOrCreate(dir.resolve("alice.db").toString(), ByteArray(32) { 1 }, "alice", 1, 0L)
        val bob = Device.openOrCreate(dir.resolve("bob.db").toString(), ByteArray(32) { 2 }, "bob", 1, 0L)
        alice.startSession(bob.prekeyBundle())
        val photo = Random.nextBytes(3 * CHUNK + 12345)
        Files.write(dir.resolve("photo.jpg"), photo)

        val sent = encryptAttachmentFile(dir.resolve("photo.jpg").toString(), dir.resolve("blob").toString())
        val blob = Files.readAllBytes(dir.resolve("blob"))
        assertEquals(photo.size.toLong(), sent.plaintextLen())
        assertEquals(blob.size.toLong(), sent.ciphertextLen())
        assertArrayEquals(blake3(blob), sent.digest())

        // The description travels inside an encrypted message; the blob through the server.
        val description = bob.decrypt(alice.address(), alice.encrypt(bob.address(), sent.toBytes())).use { pending ->
            val bytes = pending.plaintext()
            bob.commit(pending)
            bytes
        }
        assertEquals(81, description.size)
        val received = Attachment.fromBytes(description)
        decryptAttachmentFile(received, dir.resolve("blob").toString(), dir.resolve("received.jpg").toString())
        assertArrayEquals(photo, Files.readAllBytes(dir.resolve("received.jpg")))

        // A seek: only the chunks of the range are read.
        val range = readAttachmentRange(received, dir.resolve("blob").toString(), (2 * CHUNK - 5).toLong(), 10L)
        assertArrayEquals(photo.copyOfRange(2 * CHUNK - 5, 2 * CHUNK + 5), range)
        assertThrows(SamizdatException.InvalidArgument::class.java) {
            readAttachmentRange(received, dir.resolve("blob").toString(), (photo.size - 1).toLong(), 2L)
        }
        assertThrows(SamizdatException.LimitExceeded::class.java) {
            readAttachmentRange(received, dir.resolve("blob").toString(), 0L, (16L shl 20) + 1L)
        }
        alice.close()
        bob.close()
    }

    @Test
    fun aTamperedBlobLeavesNoOutputFile(@TempDir dir: Path) {
        Files.write(dir.resolve("doc.pdf"), ByteArray(200_000) { (it % 7).toByte() })
        val sent = encryptAttachmentFile(dir.resolve("doc.pdf").toString(), dir.resolve("blob").toString())
        val blob = Files.readAllBytes(dir.resolve("blob"))
        val tampered = mapOf(
            "a flipped bit" to blob.copyOf().also { it[100] = (it[100].toInt() xor 1).toByte() },
            "cut short" to blob.copyOf(blob.size - 1),
            "extended" to blob + byteArrayOf(0),
            "two chunks swapped" to blob.copyOfRange(SEALED_CHUNK, 2 * SEALED_CHUNK) +
                blob.copyOfRange(0, SEALED_CHUNK) + blob.copyOfRange(2 * SEALED_CHUNK, blob.size),
        )
        for ((name, bad) in tampered) {
            Files.write(dir.resolve("bad"), bad)
            assertThrows(SamizdatException.InvalidMessage::class.java, {
                decryptAttachmentFile(sent, dir.resolve("bad").toString(), dir.resolve("out.pdf").toString())
            }, name)
            assertFalse(Files.exists(dir.resolve("out.pdf")), name)
        }
        val left = Files.list(dir).use { files -> files.map { it.fileName.toString() }.sorted().toList() }
        assertEquals(listOf("bad", "blob", "doc.pdf"), left, "no partial file left")
        assertThrows(SamizdatException.InvalidMessage::class.java) { Attachment.fromBytes(sent.toBytes().copyOf(80)) }
    }

    @Test
    fun aPieceAtATimeAgreesWithTheFileCalls(@TempDir dir: Path) {
        val data = Random.nextBytes(5 * CHUNK + 777)
        val blob = ByteArrayOutputStream()
        val sent = AttachmentEncryptor().use { encryptor ->
            var start = 0
            while (start < data.size) {
                val end = minOf(start + 10_000, data.size)
                blob.write(encryptor.update(data.copyOfRange(start, end)))
                start = end
            }
            val tail = encryptor.finish()
            blob.write(tail.ciphertext.toByteArray())
            assertThrows(SamizdatException.InvalidArgument::class.java) { encryptor.finish() }
            tail.attachment
        }
        assertEquals(blob.size().toLong(), sent.ciphertextLen())
        Files.write(dir.resolve("blob"), blob.toByteArray())
        decryptAttachmentFile(sent, dir.resolve("blob").toString(), dir.resolve("out").toString())
        assertArrayEquals(data, Files.readAllBytes(dir.resolve("out")))

        Files.write(dir.resolve("in"), data)
        val made = encryptAttachmentFile(dir.resolve("in").toString(), dir.resolve("blob2").toString())
        val blob2 = Files.readAllBytes(dir.resolve("blob2"))
        val out = ByteArrayOutputStream()
        AttachmentDecryptor(made).use { decryptor ->
            for (start in blob2.indices step 4096) {
                out.write(decryptor.update(blob2.copyOfRange(start, minOf(start + 4096, blob2.size))))
            }
            decryptor.finish()
        }
        assertArrayEquals(data, out.toByteArray())
    }

    @Test
    fun aPieceAtATimeRefusesWhatDoesNotCheck() {
        val encryptor = AttachmentEncryptor()
        val head = encryptor.update(ByteArray(100_000) { 'x'.code.toByte() })
        val tail = encryptor.finish()
        val blob = head + tail.ciphertext.toByteArray()

        AttachmentDecryptor(tail.attachment).use { decryptor ->
            decryptor.update(blob.copyOf(blob.size - 10))
            assertThrows(SamizdatException.InvalidMessage::class.java) { decryptor.finish() }
        }
        AttachmentDecryptor(tail.attachment).use { decryptor ->
            val bad = blob.copyOf().also { it[5] = (it[5].toInt() xor 0x80).toByte() }
            assertThrows(SamizdatException.InvalidMessage::class.java) { decryptor.update(bad) }
            assertThrows(SamizdatException.InvalidArgument::class.java) { decryptor.update(blob) }
        }
        AttachmentDecryptor(tail.attachment).use { decryptor ->
            assertThrows(SamizdatException.InvalidMessage::class.java) { decryptor.update(blob + byteArrayOf(0)) }
        }
        assertTrue(blob.size > 100_000)
    }
}

/** BLAKE3 with a 32-byte output, from Bouncy Castle: the digest of PROTOCOL.md 22.2, computed independently. */
private fun blake3(bytes: ByteArray): ByteArray {
    val digest = Blake3Digest(256)
    digest.update(bytes, 0, bytes.size)
    return ByteArray(32).also { digest.doFinal(it, 0) }
}
