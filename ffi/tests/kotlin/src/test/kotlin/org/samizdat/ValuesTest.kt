// Records whose fields hold bytes are values in Kotlin and Java (ffi/src/values.rs, Values.kt): the
// bytes are Bytes, IdentityKey and UserIdentityKey, compared and hashed by content, so that two
// records with the same content from two calls are equal, hash alike and find each other in a map;
// they print readably (no `[B@...`). A safety number is such a record too, with nothing to close.
// ffi/tests/python/test_values.py checks the same in Python, where bytes are values already.
package org.samizdat

import java.nio.file.Path
import org.junit.jupiter.api.Assertions.assertArrayEquals
import org.junit.jupiter.api.Assertions.assertEquals
import org.junit.jupiter.api.Assertions.assertFalse
import org.junit.jupiter.api.Assertions.assertNotEquals
import org.junit.jupiter.api.Assertions.assertThrows
import org.junit.jupiter.api.Assertions.assertTrue
import org.junit.jupiter.api.Test
import org.junit.jupiter.api.io.TempDir

private fun device(dir: Path, name: String, key: Byte): Device =
    Device.openOrCreate(dir.resolve("$name.db").toString(), ByteArray(32) { key }, name, 1L, 0L)

class ValuesTest {
    @Test
    fun batchResultsOfTwoDecryptionsAreEqualAndHashAlike(@TempDir dir: Path) {
        device(dir, "alice", 1).use { alice ->
            device(dir, "bob", 2).use { bob ->
                val bobAddress = alice.startSession(bob.prekeyBundle())
                val wire = alice.encrypt(bobAddress, "hello".encodeToByteArray())
                // The same message decrypted twice (nothing committed), from two fresh arrays.
                val queue = { listOf(IncomingMessage(alice.address(), Bytes(wire.copyOf()))) }
                val first = bob.decryptBatch(queue()).use { it.results().single() }
                val second = bob.decryptBatch(queue()).use { it.results().single() }
                assertEquals(first, second)
                assertEquals(first.hashCode(), second.hashCode())
                assertEquals(Bytes("hello".encodeToByteArray()), first.plaintext)
                assertEquals(queue(), queue())
                assertEquals(mapOf(first to "seen")[second], "seen")
            }
        }
    }

    @Test
    fun aFreshCopyOfAnOutgoingMessageFindsItsEntry(@TempDir dir: Path) {
        device(dir, "alice", 1).use { alice ->
            device(dir, "bob", 2).use { bob ->
                alice.startSession(bob.prekeyBundle())
                alice.createGroup(byteArrayOf(7), listOf(bob.address()))
                val sent = alice.groupEncrypt(byteArrayOf(7), "to the group".encodeToByteArray())
                val distribution = sent.distributions.single()
                val pending = hashMapOf(distribution to "not sent yet")
                // What the app rebuilt from its outbox table: the same bytes, another array.
                val rebuilt = Outgoing(Address(distribution.to.userId, distribution.to.deviceId), Bytes(distribution.message.toByteArray()))
                assertEquals(distribution, rebuilt)
                assertEquals(distribution.hashCode(), rebuilt.hashCode())
                assertEquals("not sent yet", pending.remove(rebuilt))
                assertTrue(pending.isEmpty())
                assertEquals(sent, sent.copy(message = Bytes(sent.message.toByteArray())))
                assertNotEquals(distribution, distribution.copy(message = Bytes(sent.message.toByteArray())))
            }
        }
    }

    @Test
    fun deviceListsReadTwiceAreEqual(@TempDir dir: Path) {
        device(dir, "phone", 1).use { phone ->
            val user = UserIdentity.generate()
            val signed = user.signDeviceList("phone", 1L, listOf(ListedDevice(1L, phone.identity())))
            val once = verifyDeviceList(signed)
            val again = verifyDeviceList(signed.copyOf())
            assertEquals(once, again)
            assertEquals(once.hashCode(), again.hashCode())
            assertEquals(UserIdentityKey(user.publicKey()), once.userIdentityKey)
            assertEquals(setOf(ListedDevice(1L, IdentityKey(phone.identityKey()))), once.devices.toSet())
            // The same 32 bytes as a device key and as a user key are two different things.
            val asDeviceKey: ByteValue = IdentityKey(user.publicKey())
            assertNotEquals(asDeviceKey, UserIdentityKey(user.publicKey()) as ByteValue)
        }
    }

    @Test
    fun valuesAreImmutableAndReadable() {
        val source = ByteArray(40) { it.toByte() }
        val bytes = Bytes(source)
        source[0] = 99
        bytes.toByteArray()[1] = 99
        assertArrayEquals(ByteArray(40) { it.toByte() }, bytes.toByteArray())
        assertEquals(40, bytes.size)
        // Long bytes print their first 32 in hex and their size; short ones and keys print in full.
        assertEquals((0 until 32).joinToString("") { "%02x".format(it) } + "…(40 bytes)", bytes.toString())
        assertEquals("00ff", Bytes(byteArrayOf(0, -1)).toString())
        assertEquals("ab".repeat(32), IdentityKey(ByteArray(32) { 0xab.toByte() }).toString())
        val outgoing = Outgoing(Address("bob", 1L), Bytes(byteArrayOf(1, 2, 3)))
        assertEquals("Outgoing(to=Address(userId=bob, deviceId=1), message=010203)", outgoing.toString())
        val listed = ListedDevice(2L, IdentityKey(ByteArray(32)))
        assertFalse(listed.toString().contains("[B@"), listed.toString())
    }

    @Test
    fun aSafetyNumberIsAPlainValue(@TempDir dir: Path) {
        device(dir, "alice", 1).use { alice ->
            device(dir, "bob", 2).use { bob ->
                val bobAddress = alice.startSession(bob.prekeyBundle())
                bob.decrypt(alice.address(), alice.encrypt(bobAddress, "hi".encodeToByteArray())).use { bob.commit(it) }
                val onAlice = alice.safetyNumber(bobAddress)
                val onBob = bob.safetyNumber(alice.address())
                // Two calls, one value: equal, same hash, a map key; nothing to close.
                assertEquals(onAlice, alice.safetyNumber(bobAddress))
                assertEquals(onAlice.hashCode(), alice.safetyNumber(bobAddress).hashCode())
                assertEquals(mapOf(onAlice to "verified")[alice.safetyNumber(bobAddress)], "verified")
                // Both sides read the same digits; each code is the other's mirror image.
                assertEquals(onAlice.digits, onBob.digits)
                assertEquals(onAlice.digits, onAlice.display.replace(" ", ""))
                assertNotEquals(onAlice, onBob)
                onAlice.compareScanned(onBob.scannable.toByteArray())
                onBob.compareScanned(onAlice.scannable.toByteArray())
                assertTrue(onAlice.toString().contains(onAlice.digits), onAlice.toString())
                assertFalse(onAlice.toString().contains("[B@"), onAlice.toString())

                // A value rebuilt from what the app stored compares scans just as well.
                val stored = SafetyNumber(onAlice.digits, onAlice.display, Bytes(onAlice.scannable.toByteArray()))
                assertEquals(onAlice, stored)
                stored.compareScanned(onBob.scannable.toByteArray())
                val mismatch = assertThrows(SamizdatException.IdentityMismatch::class.java) {
                    stored.compareScanned(onAlice.scannable.toByteArray())
                }
                assertEquals(MismatchedSide.BOTH, mismatch.side)
                // A value that no safety number made is a caller's mistake.
                val made = onAlice.copy(scannable = Bytes(ByteArray(3)))
                assertThrows(SamizdatException.InvalidArgument::class.java) { made.compareScanned(onBob.scannable.toByteArray()) }
            }
        }
    }
}
