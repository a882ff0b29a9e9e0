// The store as an app administers it, through the Kotlin bindings (PROTOCOL.md 14.9, 14.12): listing
// peers, deleting one, counting its skipped keys, and rotating the storage key. The same scenarios as
// ffi/tests/python/test_store.py; core/tests/peers.rs and core/tests/storage_key.rs have the full set.
package org.samizdat

import java.nio.file.Path
import org.junit.jupiter.api.Assertions.assertEquals
import org.junit.jupiter.api.Assertions.assertFalse
import org.junit.jupiter.api.Assertions.assertThrows
import org.junit.jupiter.api.Assertions.assertTrue
import org.junit.jupiter.api.Test
import org.junit.jupiter.api.io.TempDir

private val OLD_KEY = ByteArray(32) { 2 }
private val NEW_KEY = ByteArray(32) { 9 }

/** Decrypt, "store", commit: the plaintext. */
private fun receive(to: Device, from: Device, wire: ByteArray): String =
    to.decrypt(from.address(), wire).use { pending ->
        val text = pending.plaintext().decodeToString()
        to.commit(pending)
        text
    }

class StoreTest {
    @Test
    fun peersDeleteSessionAndSkippedKeys(@TempDir dir: Path) {
        val bob = Device.openOrCreate(dir.resolve("bob.db").toString(), OLD_KEY, "bob", 1, 0L)
        val alice = Device.openOrCreate(dir.resolve("alice.db").toString(), ByteArray(32) { 1 }, "alice", 1, 0L)
        val carol = Device.openOrCreate(dir.resolve("carol.db").toString(), ByteArray(32) { 3 }, "carol", 1, 0L)
        assertEquals(emptyList<Address>(), bob.peers())
        for (peer in listOf(alice, carol)) {
            peer.startSession(bob.prekeyBundle())
            assertEquals("hello", receive(bob, peer, peer.encrypt(bob.address(), "hello".encodeToByteArray())))
        }
        assertEquals(setOf(alice.address(), carol.address()), bob.peers().toSet())

        // Two of Alice's messages overtaken by a third: two skipped keys kept for them.
        val first = alice.encrypt(bob.address(), "first".encodeToByteArray())
        val second = alice.encrypt(bob.address(), "second".encodeToByteArray())
        assertEquals("third", receive(bob, alice, alice.encrypt(bob.address(), "third".encodeToByteArray())))
        assertEquals(2, bob.skippedKeyCount(alice.address()))
        assertEquals("second", receive(bob, alice, second))
        assertEquals(1, bob.skippedKeyCount(alice.address()))

        assertTrue(bob.deleteSession(alice.address()))
        assertFalse(bob.deleteSession(alice.address()))
        assertEquals(listOf(carol.address()), bob.peers())
        assertEquals(0, bob.skippedKeyCount(alice.address()))
        assertFalse(bob.hasSession(alice.address()))
        // The message whose key was deleted with the session reads under no state: out of step.
        val error = assertThrows(SamizdatException.OutOfStep::class.java) { bob.decrypt(alice.address(), first) }
        assertEquals(Recovery.HEAL, error.recovery())
        assertEquals(ScrubResult.DONE, bob.scrub())
        bob.checkIntegrity() // the whole store checked: no damage, no exception
        assertEquals("on", receive(bob, carol, carol.encrypt(bob.address(), "on".encodeToByteArray())))
        listOf(alice, bob, carol).forEach { it.close() }
    }

    @Test
    fun rotatingTheStorageKey(@TempDir dir: Path) {
        val path = dir.resolve("bob.db").toString()
        var bob = Device.openOrCreate(path, OLD_KEY, "bob", 1, 0L)
        val alice = Device.openOrCreate(dir.resolve("alice.db").toString(), ByteArray(32) { 1 }, "alice", 1, 0L)
        alice.startSession(bob.prekeyBundle())
        assertEquals("before", receive(bob, alice, alice.encrypt(bob.address(), "before".encodeToByteArray())))
        val inFlight = alice.encrypt(bob.address(), "in flight".encodeToByteArray())
        val stale = Device.open(path, OLD_KEY) // another handle, left open on the old key
        bob.close()

        assertEquals(ScrubResult.DONE, rotateStorageKey(path, OLD_KEY, NEW_KEY))

        assertThrows(SamizdatException.WrongStorageKey::class.java) { Device.open(path, OLD_KEY) }
        val error = assertThrows(SamizdatException.WrongStorageKey::class.java) {
            stale.encrypt(alice.address(), "from the stale handle".encodeToByteArray())
        }
        assertTrue(error.reason.isNotEmpty(), "a message, never empty")
        stale.close()
        bob = Device.open(path, NEW_KEY)
        assertEquals("in flight", receive(bob, alice, inFlight))
        assertEquals("after", receive(alice, bob, bob.encrypt(alice.address(), "after".encodeToByteArray())))
        // A key of the wrong length is refused before anything is touched.
        assertThrows(SamizdatException.InvalidArgument::class.java) { rotateStorageKey(path, NEW_KEY, ByteArray(31)) }
        bob.close()
        assertThrows(SamizdatException.WrongStorageKey::class.java) {
            rotateStorageKey(path, OLD_KEY, ByteArray(32) { 7 })
        }
        Device.open(path, NEW_KEY).use { assertEquals(Address("bob", 1), it.address()) }
        alice.close()
    }
}
