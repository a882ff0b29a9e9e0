// User identities and signed device lists through the Kotlin bindings (PROTOCOL.md 23): a contact's
// user identity pinned on first use, a device the server slips in refused, a newer list accepted, an
// older one refused, another key's list refused until the app decides, and per-user safety numbers
// that do not move when devices do. The same scenarios as ffi/tests/python/test_users.py;
// core/tests/device_lists.rs has the full set.
package org.samizdat

import java.nio.file.Path
import org.junit.jupiter.api.Assertions.assertArrayEquals
import org.junit.jupiter.api.Assertions.assertEquals
import org.junit.jupiter.api.Assertions.assertNotEquals
import org.junit.jupiter.api.Assertions.assertThrows
import org.junit.jupiter.api.Assertions.assertTrue
import org.junit.jupiter.api.Test
import org.junit.jupiter.api.io.TempDir

private fun device(dir: Path, name: String, deviceId: Long, key: Byte): Device =
    Device.openOrCreate(dir.resolve("$name-$deviceId.db").toString(), ByteArray(32) { key }, name, deviceId, 0L)

private fun listed(device: Device): ListedDevice = ListedDevice(device.address().deviceId, device.identityKey())

class UserTest {
    @Test
    fun aGhostDeviceIsRefusedAndANewerListAccepted(@TempDir dir: Path) {
        val alice = UserIdentity.generate()
        device(dir, "alice", 1, 1).use { phone ->
            device(dir, "alice", 2, 2).use { laptop ->
                device(dir, "server", 2, 3).use { ghost ->
                    val first = alice.signDeviceList("alice", 1L, listOf(listed(phone)))
                    val trust = UserTrust.firstUse("alice", first)
                    assertArrayEquals(alice.publicKey(), trust.userIdentityKey())
                    trust.checkDevice(1L, phone.identityKey())
                    // The server's own device under Alice's next device id: no list names it.
                    val ghostError = assertThrows(SamizdatException.UntrustedIdentity::class.java) {
                        trust.checkDevice(2L, ghost.identityKey())
                    }
                    assertEquals(ErrorKind.UNTRUSTED_IDENTITY, ghostError.kind())
                    assertTrue(ghostError.message!!.contains("not in the user's verified device list"))

                    // Alice links her laptop: a newer list, by the same user key.
                    val second = alice.signDeviceList("alice", 2L, listOf(listed(laptop), listed(phone)))
                    val change = trust.update(second)
                    assertEquals(listOf(2L), change.added.map { it.deviceId })
                    assertArrayEquals(laptop.identityKey(), change.added.single().identityKey)
                    assertTrue(change.removed.isEmpty())
                    trust.checkDevice(2L, laptop.identityKey())
                    assertEquals(2L, trust.list().version)
                    assertEquals(listOf(1L, 2L), trust.list().devices.map { it.deviceId })

                    // The server replays the first list: refused, nothing changes.
                    val before = trust.toBytes()
                    val rollback = assertThrows(SamizdatException.InvalidBundle::class.java) { trust.update(first) }
                    assertTrue(rollback.message!!.contains("older than version 2"))
                    assertArrayEquals(before, trust.toBytes())

                    // What the app stored loads again.
                    val stored = UserTrust.fromBytes("alice", trust.toBytes())
                    stored.checkDevice(2L, laptop.identityKey())
                }
            }
        }
    }

    @Test
    fun anotherUserKeyNeedsTheAppsDecision(@TempDir dir: Path) {
        val (alice, mallory) = UserIdentity.generate() to UserIdentity.generate()
        device(dir, "alice", 1, 1).use { phone ->
            val trust = UserTrust.firstUse("alice", alice.signDeviceList("alice", 1L, listOf(listed(phone))))
            val forged = mallory.signDeviceList("alice", 99L, listOf(listed(phone), ListedDevice(66L, UserIdentity.generate().publicKey())))
            val error = assertThrows(SamizdatException.UntrustedIdentity::class.java) { trust.update(forged) }
            assertArrayEquals(mallory.publicKey(), error.identityKey())
            assertEquals(1L, trust.list().version)
            // Only the app, after the users compared safety numbers, moves the pin.
            trust.trustNewIdentity(forged)
            assertArrayEquals(mallory.publicKey(), trust.userIdentityKey())
        }
    }

    @Test
    fun malformedListsAndArgumentsAreTypedErrors() {
        val alice = UserIdentity.generate()
        assertThrows(SamizdatException.InvalidBundle::class.java) { verifyDeviceList(byteArrayOf(1, 2, 3)) }
        assertThrows(SamizdatException.InvalidBundle::class.java) { UserTrust.firstUse("alice", ByteArray(0)) }
        assertThrows(SamizdatException.InvalidArgument::class.java) {
            alice.signDeviceList("alice", -1L, listOf(ListedDevice(1L, alice.publicKey())))
        }
        assertThrows(SamizdatException.InvalidArgument::class.java) {
            alice.signDeviceList("alice", 1L, listOf(ListedDevice(-1L, alice.publicKey())))
        }
        assertThrows(SamizdatException.InvalidArgument::class.java) { UserIdentity.fromSeed(ByteArray(31)) }
        // A list for another user is refused by the pin.
        val bobs = alice.signDeviceList("bob", 1L, listOf(ListedDevice(1L, UserIdentity.generate().publicKey())))
        assertEquals("bob", verifyDeviceList(bobs).userId)
        assertThrows(SamizdatException.InvalidBundle::class.java) { UserTrust.firstUse("alice", bobs) }
        // The seed gives back the same identity.
        assertArrayEquals(alice.publicKey(), UserIdentity.fromSeed(alice.seed()).publicKey())
    }

    @Test
    fun userSafetyNumbersAreTheSameOnBothSides() {
        val (alice, bob) = UserIdentity.generate() to UserIdentity.generate()
        val onAlice = userSafetyNumber("alice", alice.publicKey(), "bob", bob.publicKey())
        val onBob = userSafetyNumber("bob", bob.publicKey(), "alice", alice.publicKey())
        assertEquals(onAlice.digits(), onBob.digits())
        onAlice.compareScanned(onBob.scannable())
        val other = userSafetyNumber("alice", alice.publicKey(), "bob", UserIdentity.generate().publicKey())
        assertNotEquals(onAlice.digits(), other.digits())
        assertThrows(SamizdatException.IdentityMismatch::class.java) { onBob.compareScanned(other.scannable()) }
    }
}
