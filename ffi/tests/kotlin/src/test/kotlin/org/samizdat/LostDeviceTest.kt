// Removing a lost device for good through the Kotlin bindings (issue 17): Alice has a phone, a laptop
// and a tablet, Bob one device, each in its own SQLite store. The tablet is lost: the laptop replaces
// Alice's user identity without it; the phone reads the handover (kind USER_IDENTITY: the new key, the
// removed tablet, the new list), keeps the key and commits, and holds the new list. The tablet, which
// keeps the old key, is refused by the phone; Bob refuses the new list until he trusts it, and then the
// safety number changed and the tablet is refused by him too. The call's refusals (the old key, our own
// device as lost, an id out of range) write nothing, and the call made again with the same key makes the
// handover again without a new list. The same scenario as ffi/tests/python/test_lost_device.py;
// core/tests/lost_device.rs has the full set.
package org.samizdat

import java.nio.file.Path
import org.junit.jupiter.api.Assertions.assertArrayEquals
import org.junit.jupiter.api.Assertions.assertEquals
import org.junit.jupiter.api.Assertions.assertFalse
import org.junit.jupiter.api.Assertions.assertNotEquals
import org.junit.jupiter.api.Assertions.assertNull
import org.junit.jupiter.api.Assertions.assertThrows
import org.junit.jupiter.api.Assertions.assertTrue
import org.junit.jupiter.api.Test
import org.junit.jupiter.api.function.Executable
import org.junit.jupiter.api.io.TempDir

private const val NOW = 86_400L

private fun listed(device: Device): ListedDevice = ListedDevice(device.address().deviceId, device.identity())

// Devices as (id, identity key) pairs, compared by value.
private fun ids(devices: List<ListedDevice>): List<Pair<Long, IdentityKey>> = devices.map { it.deviceId to it.identityKey }

private fun ids(vararg devices: Device): List<Pair<Long, IdentityKey>> = ids(devices.map(::listed))

// The failure `call` throws, checked to be `T`, to report `code` and `recovery`, and to say something.
private inline fun <reified T : SamizdatException> refused(code: String, recovery: Recovery, call: Executable): T {
    val error = assertThrows(T::class.java, call)
    assertEquals(code, error.code())
    assertEquals(recovery, error.recovery())
    assertTrue(error.message!!.isNotBlank())
    return error
}

/**
 * Alice's phone (1), laptop (2) and tablet (3) hold her list (version 1) and a session with each other,
 * used both ways; Bob pinned Alice from her bundles and has a session with each of her devices, used
 * both ways. Closed together.
 */
private class AliceAndBob(val dir: Path) : AutoCloseable {
    val alice = UserIdentity.generate()
    val phone = open("alice", 1, 1)
    val laptop = open("alice", 2, 2)
    val tablet = open("alice", 3, 3)
    val bob = open("bob", 1, 4)
    val aliceList: ByteArray

    init {
        aliceList = alice.signDeviceList("alice", 1L, listOf(listed(phone), listed(laptop), listed(tablet)))
        listOf(phone, laptop, tablet).forEach { it.setDeviceList(aliceList) }
        val bobList = UserIdentity.generate().signDeviceList("bob", 1L, listOf(listed(bob)))
        bob.setDeviceList(bobList)
        listOf(phone, laptop, tablet).forEach { it.updateDeviceList(bobList) }
        for ((from, to) in listOf(laptop to phone, laptop to tablet, phone to tablet, bob to phone, bob to laptop, bob to tablet)) {
            from.startSession(to.prekeyBundle())
            exchange(from, to)
        }
    }

    fun path(device: Device): Path = dir.resolve("${device.address().userId}-${device.address().deviceId}.db")

    private fun open(name: String, deviceId: Long, key: Byte): Device =
        Device.openOrCreate(dir.resolve("$name-$deviceId.db").toString(), ByteArray(32) { key }, name, deviceId, NOW)

    /** One direct message each way, read and committed. */
    private fun exchange(a: Device, b: Device) {
        for ((from, to) in listOf(a to b, b to a)) {
            to.decrypt(from.address(), from.encrypt(to.address(), "hello".encodeToByteArray())).use { pending ->
                assertEquals(MessageKind.DIRECT, pending.kind())
                assertNull(pending.newUserIdentity(), "a direct message hands over no user identity")
                to.commit(pending)
            }
        }
    }

    override fun close() = listOf(bob, tablet, laptop, phone).forEach { it.close() }
}

class LostDeviceTest {
    @Test
    fun aLostTabletIsRemovedForGood(@TempDir dir: Path) {
        AliceAndBob(dir).use { w ->
            val numberBefore = w.bob.userSafetyNumber("alice").digits

            // The laptop replaces Alice's user identity without the tablet (the app keeps `fresh` first).
            val fresh = UserIdentity.generate()
            val replaced = w.laptop.replaceUserIdentity(fresh, listOf(1L))
            assertTrue(replaced.listChanged)
            assertEquals(ids(w.tablet), ids(replaced.removed))
            assertTrue(replaced.missing.isEmpty(), "${replaced.missing}")
            assertEquals(listOf(w.phone.address()), replaced.handovers.map { it.to })
            val newList = verifyDeviceList(replaced.deviceList.toByteArray())
            assertEquals(2L, newList.version)
            assertEquals(UserIdentityKey(fresh.publicKey()), newList.userIdentityKey)
            assertEquals(ids(w.phone, w.laptop), ids(newList.devices))
            assertArrayEquals(replaced.deviceList.toByteArray(), w.laptop.deviceList())

            // The phone reads the handover: the new key, the removed tablet, the new list.
            val phoneRows = rows(w.path(w.phone))
            w.phone.decrypt(w.laptop.address(), replaced.handovers.single().message.toByteArray()).use { pending ->
                assertEquals(MessageKind.USER_IDENTITY, pending.kind())
                assertEquals(w.laptop.address(), pending.sender())
                assertEquals(0, pending.plaintext().size)
                assertNull(pending.syncRecipient())
                val handed = checkNotNull(pending.newUserIdentity()) { "a handover gives the new user identity" }
                assertArrayEquals(fresh.publicKey(), handed.userIdentity.publicKey())
                assertEquals(ids(w.tablet), ids(handed.removed))
                // Nothing added, and the key it replaces is Alice's old one.
                assertTrue(handed.added.isEmpty())
                assertEquals(UserIdentityKey(w.alice.publicKey()), handed.replaced)
                assertArrayEquals(replaced.deviceList.toByteArray(), handed.deviceList.toByteArray())
                // No secret in what Kotlin prints.
                assertFalse(handed.toString().contains(fresh.seed().joinToString("") { "%02x".format(it) }), handed.toString())
                // Nothing written before the commit.
                assertEquals(phoneRows, rows(w.path(w.phone)))
                assertArrayEquals(w.aliceList, w.phone.deviceList())
                // The app keeps the key (its seed, sealed) before the commit.
                val kept = UserIdentity.fromSeed(handed.userIdentity.seed())
                assertArrayEquals(fresh.publicKey(), kept.publicKey())
                // The commit returns the acknowledgment, for the laptop.
                assertEquals(listOf(w.laptop.address()), w.phone.commit(pending).map { it.to })
            }
            assertArrayEquals(replaced.deviceList.toByteArray(), w.phone.deviceList())
            assertArrayEquals(fresh.publicKey(), w.phone.userTrust("alice")!!.userIdentityKey())

            // The tablet, holding the old key, cannot speak to the phone: no list names it. Nothing changes.
            val fromTablet = w.tablet.encrypt(w.phone.address(), "it's me".encodeToByteArray())
            val phoneBefore = rows(w.path(w.phone))
            val unlisted = refused<SamizdatException.UntrustedIdentity>("untrusted_identity", Recovery.VERIFY_IDENTITY) {
                w.phone.decrypt(w.tablet.address(), fromTablet)
            }
            assertNull(unlisted.identityKey(), "an unlisted device: no key to trust")
            assertEquals(phoneBefore, rows(w.path(w.phone)))
            // Nor can it sign its way back in with the old key.
            val readded = w.alice.signDeviceList("alice", 7L, listOf(listed(w.phone), listed(w.laptop), listed(w.tablet)))
            val oldKey = refused<SamizdatException.UntrustedIdentity>("untrusted_identity", Recovery.VERIFY_IDENTITY) {
                w.phone.updateDeviceList(readded)
            }
            assertArrayEquals(w.alice.publicKey(), oldKey.identityKey())

            // Bob: the new list is a new user identity, refused until he trusts it; nothing changes meanwhile.
            val bobBefore = rows(w.path(w.bob))
            val untrusted = refused<SamizdatException.UntrustedIdentity>("untrusted_identity", Recovery.VERIFY_IDENTITY) {
                w.bob.updateDeviceList(replaced.deviceList.toByteArray())
            }
            assertArrayEquals(fresh.publicKey(), untrusted.identityKey())
            assertEquals(bobBefore, rows(w.path(w.bob)))
            // The users compare the new safety number; Bob trusts it.
            val change = w.bob.trustNewUserIdentity(replaced.deviceList.toByteArray())
            assertEquals(ids(w.tablet), ids(change.removed))
            val numberAfter = w.bob.userSafetyNumber("alice").digits
            assertNotEquals(numberBefore, numberAfter)
            assertEquals(numberAfter, w.phone.userSafetyNumber("bob").digits)
            // Now Bob refuses the tablet, and the old key's list whatever its version.
            val toBob = w.tablet.encrypt(w.bob.address(), "send me your files".encodeToByteArray())
            val trustedRows = rows(w.path(w.bob))
            refused<SamizdatException.UntrustedIdentity>("untrusted_identity", Recovery.VERIFY_IDENTITY) {
                w.bob.decrypt(w.tablet.address(), toBob)
            }
            refused<SamizdatException.UntrustedIdentity>("untrusted_identity", Recovery.VERIFY_IDENTITY) {
                w.bob.updateDeviceList(readded)
            }
            assertEquals(trustedRows, rows(w.path(w.bob)))
            // The remaining devices go on: Bob's fan-out reaches the phone and the laptop only.
            val fan = w.bob.encryptToUser("alice", "to both".encodeToByteArray())
            assertEquals(listOf(1L, 2L), fan.messages.map { it.to.deviceId })
            w.phone.decrypt(w.bob.address(), fan.messages[0].message.toByteArray()).use { pending ->
                assertEquals("to both", pending.plaintext().decodeToString())
                w.phone.commit(pending)
            }
        }
    }

    @Test
    fun theCallsRefusalsChangeNothingAndACallAgainChangesNoList(@TempDir dir: Path) {
        AliceAndBob(dir).use { w ->
            val laptopRows = rows(w.path(w.laptop))
            // The key the list is already signed by, keeping the phone only (the tablet would go): invalid_argument.
            val same = refused<SamizdatException.InvalidArgument>("invalid_argument", Recovery.FIX_CALL) {
                w.laptop.replaceUserIdentity(w.alice, listOf(1L))
            }
            assertTrue(same.reason.contains("already signed"), same.reason)
            // An id that is not a device id.
            refused<SamizdatException.InvalidArgument>("invalid_argument", Recovery.FIX_CALL) {
                w.laptop.replaceUserIdentity(UserIdentity.generate(), listOf(-1L))
            }
            assertEquals(laptopRows, rows(w.path(w.laptop)))
            assertArrayEquals(w.aliceList, w.laptop.deviceList())

            // The replacement, taken by the phone.
            val fresh = UserIdentity.generate()
            val first = w.laptop.replaceUserIdentity(fresh, listOf(1L))
            assertEquals(listOf(w.phone.address()), w.laptop.awaitingHandovers())
            val acks = w.phone.decrypt(w.laptop.address(), first.handovers.single().message.toByteArray()).use { w.phone.commit(it) }
            // The commit returns the acknowledgment, for the laptop's library.
            assertEquals(listOf(w.laptop.address()), acks.map { it.to })
            w.laptop.decrypt(w.phone.address(), acks.single().message.toByteArray()).use { pending ->
                assertEquals(MessageKind.CONTROL, pending.kind())
                assertTrue(w.laptop.commit(pending).isEmpty())
            }
            assertTrue(w.laptop.awaitingHandovers().isEmpty())

            // Called again with the same key (a handover was lost): the handover again, no new list.
            val again = w.laptop.replaceUserIdentity(fresh, listOf(1L))
            assertFalse(again.listChanged)
            assertTrue(again.removed.isEmpty() && again.missing.isEmpty())
            assertArrayEquals(first.deviceList.toByteArray(), again.deviceList.toByteArray())
            assertEquals(listOf(w.phone.address()), again.handovers.map { it.to })
            // The phone, which has the list already, reads it as no change.
            w.phone.decrypt(w.laptop.address(), again.handovers.single().message.toByteArray()).use { pending ->
                assertEquals(MessageKind.USER_IDENTITY, pending.kind())
                val handed = pending.newUserIdentity()!!
                assertArrayEquals(fresh.publicKey(), handed.userIdentity.publicKey())
                assertTrue(handed.removed.isEmpty())
                w.phone.commit(pending)
            }
            assertArrayEquals(first.deviceList.toByteArray(), w.phone.deviceList())
        }
    }
}
