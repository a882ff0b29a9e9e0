// User identities and signed device lists through the Kotlin bindings (PROTOCOL.md 23): a contact's
// user identity pinned on first use, a device the server slips in refused, a newer list accepted, an
// older one refused, another key's list refused until the app decides, and per-user safety numbers
// that do not move when devices do. Then the same on a Device (PROTOCOL.md 23.5): a ghost device's
// bundle and messages refused with every row of the store as it was, a second device accepted once a
// newer list names it, a rolled-back list refused. The same scenarios as
// ffi/tests/python/test_users.py; core/tests/device_lists.rs and core/tests/ghost_devices.rs have the
// full set.
package org.samizdat

import java.nio.file.Path
import java.sql.DriverManager
import org.junit.jupiter.api.Assertions.assertArrayEquals
import org.junit.jupiter.api.Assertions.assertEquals
import org.junit.jupiter.api.Assertions.assertFalse
import org.junit.jupiter.api.Assertions.assertNotEquals
import org.junit.jupiter.api.Assertions.assertNull
import org.junit.jupiter.api.Assertions.assertThrows
import org.junit.jupiter.api.Assertions.assertTrue
import org.junit.jupiter.api.Test
import org.junit.jupiter.api.io.TempDir

private fun device(dir: Path, name: String, deviceId: Long, key: Byte): Device =
    Device.openOrCreate(dir.resolve("$name-$deviceId.db").toString(), ByteArray(32) { key }, name, deviceId, 0L)

private fun listed(device: Device): ListedDevice = ListedDevice(device.address().deviceId, device.identity())

// Devices as (id, identity key) pairs, compared by value.
private fun ids(devices: List<ListedDevice>): List<Pair<Long, IdentityKey>> = devices.map { it.deviceId to it.identityKey }

private fun ids(vararg devices: Device): List<Pair<Long, IdentityKey>> = ids(devices.map(::listed))

// Every row of every table of a store, read over JDBC (a second connection); FanOutTest uses it too.
internal fun rows(path: Path): Map<String, List<String>> =
    DriverManager.getConnection("jdbc:sqlite:$path").use { connection ->
        val tables = connection.createStatement().executeQuery("SELECT name FROM sqlite_master WHERE type = 'table'")
            .use { result -> generateSequence { if (result.next()) result.getString(1) else null }.toList() }
        tables.associateWith { table ->
            connection.createStatement().executeQuery("SELECT * FROM $table").use { result ->
                val columns = result.metaData.columnCount
                generateSequence {
                    if (result.next()) (1..columns).joinToString("|") { i -> result.getObject(i).let { if (it is ByteArray) it.toList().toString() else it.toString() } } else null
                }.toList().sorted()
            }
        }
    }

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
                    assertEquals(laptop.identity(), change.added.single().identityKey)
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
            val forged = mallory.signDeviceList("alice", 99L, listOf(listed(phone), ListedDevice(66L, IdentityKey(UserIdentity.generate().publicKey()))))
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
            alice.signDeviceList("alice", -1L, listOf(ListedDevice(1L, IdentityKey(alice.publicKey()))))
        }
        assertThrows(SamizdatException.InvalidArgument::class.java) {
            alice.signDeviceList("alice", 1L, listOf(ListedDevice(-1L, IdentityKey(alice.publicKey()))))
        }
        assertThrows(SamizdatException.InvalidArgument::class.java) { UserIdentity.fromSeed(ByteArray(31)) }
        // A list for another user is refused by the pin.
        val bobs = alice.signDeviceList("bob", 1L, listOf(ListedDevice(1L, IdentityKey(UserIdentity.generate().publicKey()))))
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
        assertEquals(onAlice.digits, onBob.digits)
        onAlice.compareScanned(onBob.scannable.toByteArray())
        val other = userSafetyNumber("alice", alice.publicKey(), "bob", UserIdentity.generate().publicKey())
        assertNotEquals(onAlice.digits, other.digits)
        assertThrows(SamizdatException.IdentityMismatch::class.java) { onBob.compareScanned(other.scannable.toByteArray()) }
    }

    @Test
    fun aDeviceRefusesAGhostAndAcceptsANewlyListedDevice(@TempDir dir: Path) {
        val alice = UserIdentity.generate()
        val bobPath = dir.resolve("bob-1.db")
        device(dir, "alice", 1, 1).use { phone ->
            device(dir, "alice", 2, 2).use { laptop ->
                device(dir, "bob", 1, 4).use { bob ->
                    Device.openOrCreate(dir.resolve("ghost.db").toString(), ByteArray(32) { 3 }, "alice", 2L, 0L).use { ghost ->
                        val first = alice.signDeviceList("alice", 1L, listOf(listed(phone)))
                        assertEquals(ids(phone), ids(phone.setDeviceList(first).added))
                        assertArrayEquals(first, phone.deviceList())
                        assertNull(laptop.deviceList())
                        // A list that does not name the device is not its own.
                        assertThrows(SamizdatException.InvalidArgument::class.java) { laptop.setDeviceList(first) }
                        assertNull(laptop.deviceList())

                        // Bob pins Alice's user from the list her phone's bundle carries.
                        assertNull(bob.userTrust("alice"))
                        val phoneAddress = bob.startSession(phone.prekeyBundle())
                        val pinned = bob.userTrust("alice")!!
                        assertArrayEquals(alice.publicKey(), pinned.userIdentityKey())
                        assertEquals(ids(phone), ids(pinned.list().devices))

                        // The server's own device under Alice's next device id, and the laptop before any
                        // list names it: refused, with no identity key to trust, and no row changes.
                        var before = rows(bobPath)
                        for (bundle in listOf(ghost.prekeyBundle(), laptop.prekeyBundle())) {
                            val refused = assertThrows(SamizdatException.UntrustedIdentity::class.java) { bob.startSession(bundle) }
                            assertTrue(refused.message!!.contains("not in the user's verified device list"))
                            assertNull(refused.identityKey())
                            assertEquals("untrusted_identity", refused.code())
                        }
                        assertEquals(before, rows(bobPath))
                        assertFalse(bob.hasSession(Address("alice", 2L)))
                        // The ghost's first message is refused the same way, alone and in a batch.
                        ghost.startSession(bob.prekeyBundle())
                        before = rows(bobPath)
                        val wire = ghost.encrypt(bob.address(), "let me in".encodeToByteArray())
                        assertThrows(SamizdatException.UntrustedIdentity::class.java) { bob.decrypt(ghost.address(), wire) }
                        val result = bob.decryptBatch(listOf(IncomingMessage(ghost.address(), Bytes(wire)))).use { it.results().single() }
                        assertNull(result.plaintext)
                        assertTrue(result.error is SamizdatException.UntrustedIdentity)
                        assertEquals(before, rows(bobPath))

                        // Alice links her laptop: a newer list. Bob takes it; the laptop is accepted, the
                        // ghost (same device id, another key) is still refused.
                        val second = alice.signDeviceList("alice", 2L, listOf(listed(phone), listed(laptop)))
                        assertEquals(ids(phone, laptop), ids(laptop.setDeviceList(second).added))
                        assertEquals(ids(laptop), ids(phone.setDeviceList(second).added))
                        val change = bob.updateDeviceList(second)
                        assertEquals(ids(laptop), ids(change.added))
                        assertTrue(change.removed.isEmpty())
                        val laptopAddress = bob.startSession(laptop.prekeyBundle())
                        assertEquals(laptop.address(), laptopAddress)
                        val pending = laptop.decrypt(bob.address(), bob.encrypt(laptopAddress, "hello laptop".encodeToByteArray()))
                        assertEquals("hello laptop", pending.plaintext().decodeToString())
                        laptop.commit(pending)
                        assertThrows(SamizdatException.UntrustedIdentity::class.java) { bob.startSession(ghost.prekeyBundle()) }

                        // The server replays the first list: a rollback, refused; nothing changes.
                        before = rows(bobPath)
                        val rollback = assertThrows(SamizdatException.InvalidBundle::class.java) { bob.updateDeviceList(first) }
                        assertTrue(rollback.message!!.contains("older than version 2"))
                        assertEquals(before, rows(bobPath))
                        assertEquals(2L, bob.userTrust("alice")!!.list().version)
                        assertTrue(bob.encrypt(phoneAddress, "still here".encodeToByteArray()).isNotEmpty())
                    }
                }
            }
        }
    }

    @Test
    fun aDeviceNeedsTheAppsDecisionForAnotherUserKey(@TempDir dir: Path) {
        val (alice, mallory) = UserIdentity.generate() to UserIdentity.generate()
        device(dir, "alice", 1, 1).use { phone ->
            device(dir, "bob", 1, 4).use { bob ->
                bob.updateDeviceList(alice.signDeviceList("alice", 1L, listOf(listed(phone))))
                val forged = mallory.signDeviceList("alice", 9L, listOf(listed(phone)))
                val before = rows(dir.resolve("bob-1.db"))
                val error = assertThrows(SamizdatException.UntrustedIdentity::class.java) { bob.updateDeviceList(forged) }
                assertArrayEquals(mallory.publicKey(), error.identityKey())
                assertEquals(before, rows(dir.resolve("bob-1.db")))
                assertArrayEquals(alice.publicKey(), bob.userTrust("alice")!!.userIdentityKey())
                // Only the app, after the users compared safety numbers, moves the pin.
                val change = bob.trustNewUserIdentity(forged)
                assertTrue(change.added.isEmpty() && change.removed.isEmpty())
                assertArrayEquals(mallory.publicKey(), bob.userTrust("alice")!!.userIdentityKey())
                assertThrows(SamizdatException.InvalidBundle::class.java) { bob.updateDeviceList(byteArrayOf(1, 2, 3)) }
            }
        }
    }
}
