// Encrypted backup and restore through the Kotlin bindings (PROTOCOL.md 21): a device's identity and
// trust decisions under a passphrase, restored on a new installation whose session then heals. The
// same scenarios as ffi/tests/python/test_backup.py; core/tests/backup.rs has the full set.
package org.samizdat

import java.nio.file.Files
import java.nio.file.Path
import org.junit.jupiter.api.Assertions.assertArrayEquals
import org.junit.jupiter.api.Assertions.assertEquals
import org.junit.jupiter.api.Assertions.assertFalse
import org.junit.jupiter.api.Assertions.assertInstanceOf
import org.junit.jupiter.api.Assertions.assertThrows
import org.junit.jupiter.api.Test
import org.junit.jupiter.api.io.TempDir

private val PASSPHRASE = "correct horse battery staple".encodeToByteArray()

/** Decrypt, "store", commit: the kind, the text, the id, and what the commit returned. */
private fun deliver(to: Device, from: Device, wire: ByteArray): Triple<MessageKind, String, List<Outgoing>> =
    to.decrypt(from.address(), wire).use { pending ->
        val (kind, text) = pending.kind() to pending.plaintext().decodeToString()
        Triple(kind, text, to.commit(pending))
    }

/** Each side sends one kept message the other reads. */
private fun converse(alice: Device, bob: Device, tag: String, now: Long) {
    val toBob = alice.encryptKept(bob.address(), "a $tag".encodeToByteArray(), now)
    assertEquals(MessageKind.DIRECT to "a $tag", deliver(bob, alice, toBob).let { it.first to it.second })
    val toAlice = bob.encryptKept(alice.address(), "b $tag".encodeToByteArray(), now)
    assertEquals(MessageKind.DIRECT to "b $tag", deliver(alice, bob, toAlice).let { it.first to it.second })
}

private fun device(dir: Path, name: String, key: Byte): Device =
    Device.openOrCreate(dir.resolve("$name.db").toString(), ByteArray(32) { key }, name, 1, 0L)

class BackupTest {
    @Test
    fun theParameters() {
        assertEquals(BackupParams(65536, 3, 1), backupParamsRecommended())
        assertEquals(BackupParams(19456, 2, 1), backupParamsMinimum())
    }

    @Test
    fun backupConverseRestoreConverse(@TempDir dir: Path) {
        device(dir, "alice", 1).use { alice ->
            // Bob exports a backup, they talk on, a message is in flight, and Bob's phone is lost.
            val (backup, inFlight, bobIdentity) = device(dir, "bob", 2).use { bob ->
                alice.startSession(bob.prekeyBundle())
                converse(alice, bob, "hello", 0L)
                val backup = bob.exportBackup(PASSPHRASE, backupParamsMinimum(), 10L)
                assertEquals(backupParamsMinimum(), backupParamsOf(backup))
                converse(alice, bob, "after the backup", 20L)
                Triple(backup, alice.encryptKept(bob.address(), "in flight".encodeToByteArray(), 30L), bob.identityKey())
            }
            Files.delete(dir.resolve("bob.db")) // the phone is lost
            // A new installation: another file, another storage key.
            Device.restore(dir.resolve("new-bob.db").toString(), ByteArray(32) { 9 }, backup, PASSPHRASE, 1000L)
                .use { bob ->
                    assertArrayEquals(bobIdentity, bob.identityKey())
                    assertArrayEquals(alice.identityKey(), bob.peerIdentity(alice.address()))
                    assertFalse(bob.hasSession(alice.address()))
                    val outOfStep =
                        assertThrows(SamizdatException.OutOfStep::class.java) { bob.decrypt(alice.address(), inFlight) }
                    assertEquals(Recovery.HEAL, outOfStep.recovery())
                    val healed = assertInstanceOf(
                        HealResult.Sent::class.java,
                        bob.heal(alice.prekeyBundle(), listOf(inFlight), 1000L),
                    )
                    val (kind, _, resends) = deliver(alice, bob, healed.reset.message.toByteArray())
                    assertEquals(MessageKind.CONTROL to 1, kind to resends.size)
                    bob.decrypt(alice.address(), resends[0].message.toByteArray()).use { pending ->
                        assertEquals("in flight", pending.plaintext().decodeToString())
                        assertArrayEquals(messageId(inFlight), pending.messageId())
                        bob.commit(pending)
                    }
                    converse(alice, bob, "healed", 1001L)
                }
        }
    }

    @Test
    fun whatARestoreRefuses(@TempDir dir: Path) {
        device(dir, "alice", 1).use { alice ->
            val backup = alice.exportBackup(PASSPHRASE, backupParamsMinimum(), 10L)
            val path = dir.resolve("restored.db").toString()
            val key = ByteArray(32) { 8 }
            val wrong = assertThrows(SamizdatException.WrongStorageKey::class.java) {
                Device.restore(path, key, backup, "not the passphrase".encodeToByteArray(), 1000L)
            }
            assertEquals("wrong_storage_key", wrong.code())
            assertFalse(Files.exists(dir.resolve("restored.db")), "a wrong passphrase creates no file")
            val altered = backup.copyOf().also { it[it.size - 1] = (it[it.size - 1].toInt() xor 1).toByte() }
            assertThrows(SamizdatException.WrongStorageKey::class.java) {
                Device.restore(path, key, altered, PASSPHRASE, 1000L)
            }
            assertThrows(SamizdatException.InvalidArgument::class.java) {
                Device.restore(path, key, backup.copyOf(100), PASSPHRASE, 1000L)
            }
            // 4 TiB: refused before any key is derived.
            val hostile = backup.copyOf().also { for (i in 5 until 9) it[i] = 0xff.toByte() }
            assertThrows(SamizdatException.LimitExceeded::class.java) {
                Device.restore(path, key, hostile, PASSPHRASE, 1000L)
            }
            assertThrows(SamizdatException.LimitExceeded::class.java) {
                alice.exportBackup(PASSPHRASE, BackupParams(1024, 1, 1), 10L)
            }
            // Alice's own store holds a device: refused, like a create.
            assertThrows(SamizdatException.InvalidArgument::class.java) {
                Device.restore(dir.resolve("alice.db").toString(), ByteArray(32) { 1 }, backup, PASSPHRASE, 1000L)
            }
            Device.restore(path, key, backup, PASSPHRASE, 1000L).use { restored ->
                assertArrayEquals(alice.identityKey(), restored.identityKey())
            }
        }
    }
}
