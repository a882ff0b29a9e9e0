// Issue 17's multi-device scenario through the Kotlin bindings: three users, Alice with a phone and a
// laptop linked by a code, Bob with two devices, Carol with one, each in its own SQLite store. They
// converse one to one (a fan-out reaches every listed device of the contact, and our other device as a
// sent sync) and in a group whose every device named the three users (addGroupUsers). Bob drops a lost
// device from his list; no app removes it from the group, yet it gets no fan-out, nothing it sends is
// taken, and it reads nothing of the group sent after. The same scenario as
// ffi/tests/python/test_multi_device.py; core/tests/multi_device.rs has the full one.
package org.samizdat

import java.nio.file.Path
import org.junit.jupiter.api.Assertions.assertArrayEquals
import org.junit.jupiter.api.Assertions.assertEquals
import org.junit.jupiter.api.Assertions.assertFalse
import org.junit.jupiter.api.Assertions.assertThrows
import org.junit.jupiter.api.Assertions.assertTrue
import org.junit.jupiter.api.Test
import org.junit.jupiter.api.io.TempDir

// One day after the epoch: a link code lives ten minutes from its offer.
private const val NOW = 86_400L
private val FAMILY = "family".encodeToByteArray()

/** What a device got from one message: its kind, its text, and a sent sync's recipient. */
private data class Delivered(val kind: MessageKind, val text: String, val syncRecipient: String? = null)

/** Every device of the scenario, each in its own SQLite store under `dir`; closed together. */
private class Household(private val dir: Path) : AutoCloseable {
    val devices = mutableListOf<Device>()

    fun device(name: String, deviceId: Long): Device {
        val key = ByteArray(32) { (devices.size + 1).toByte() }
        return Device.openOrCreate(dir.resolve("$name-$deviceId.db").toString(), key, name, deviceId, NOW).also { devices += it }
    }

    fun of(address: Address): Device = devices.single { it.address() == address }

    /** Sessions both ways between every two devices: one starts it from a bundle, the other reads a hello. */
    fun connectAll() {
        for (a in devices) {
            for (b in devices) {
                if (a.address() != b.address() && !a.hasSession(b.address())) {
                    a.startSession(b.prekeyBundle())
                    b.decrypt(a.address(), a.encrypt(b.address(), "hello".encodeToByteArray())).use { b.commit(it) }
                }
            }
        }
    }

    /** Delivers each message from `from` to its recipient: what each got, by address. */
    fun deliver(from: Device, sent: List<Outgoing>): Map<Address, Delivered> = sent.associate { outgoing ->
        val to = of(outgoing.to)
        outgoing.to to to.decrypt(from.address(), outgoing.message.toByteArray()).use { pending ->
            Delivered(pending.kind(), pending.plaintext().decodeToString(), pending.syncRecipient()).also {
                assertEquals(emptyList<Outgoing>(), to.commit(pending))
            }
        }
    }

    /**
     * `from`'s group message of `text`, its distributions delivered first: who got a chain, and who of the
     * other devices read the message. A device that does not read it must lack the chain (MissingGroupKey).
     */
    fun groupSend(from: Device, text: String): Pair<List<Address>, Set<Address>> {
        val sent = from.groupEncrypt(FAMILY, text.encodeToByteArray())
        val chains = deliver(from, sent.distributions)
        assertTrue(chains.values.all { it == Delivered(MessageKind.CONTROL, "") }, "$chains")
        val readers = devices.filter { it.address() != from.address() }.filter { member ->
            try {
                assertEquals(Delivered(MessageKind.GROUP, text), deliver(from, listOf(Outgoing(member.address(), sent.message))).values.single())
                true
            } catch (missing: SamizdatException.MissingGroupKey) {
                false
            }
        }
        return sent.distributions.map { it.to } to readers.map { it.address() }.toSet()
    }

    override fun close() = devices.asReversed().forEach { it.close() }
}

private fun listed(device: Device): ListedDevice = ListedDevice(device.address().deviceId, device.identity())

class MultiDeviceTest {
    @Test
    fun threeUsersLinkConverseAndDropALostDevice(@TempDir dir: Path) {
        val (aliceUser, bobUser, carolUser) = Triple(UserIdentity.generate(), UserIdentity.generate(), UserIdentity.generate())
        Household(dir).use { home ->
            val (a1, a2) = home.device("alice", 1) to home.device("alice", 2)
            val (b1, b2) = home.device("bob", 1) to home.device("bob", 2)
            val c1 = home.device("carol", 1)

            // Alice's phone holds her first list; her laptop shows a code, the phone scans it and links it.
            a1.setDeviceList(aliceUser.signDeviceList("alice", 1L, listOf(listed(a1))))
            val offer = a2.linkOffer(NOW)
            val linked = a1.linkDevice(offer.code(), aliceUser, NOW)
            val provisioned = a2.finishLink(offer, linked.message.toByteArray(), NOW)
            assertArrayEquals(aliceUser.publicKey(), provisioned.userIdentity.publicKey())
            val alices = linked.deviceList.toByteArray()
            assertEquals(listOf(1L, 2L), verifyDeviceList(alices).devices.map { it.deviceId })
            assertArrayEquals(alices, a2.deviceList())
            // Bob's and Carol's lists, set on their devices.
            val bobs = bobUser.signDeviceList("bob", 1L, listOf(listed(b1), listed(b2)))
            listOf(b1, b2).forEach { it.setDeviceList(bobs) }
            val carols = carolUser.signDeviceList("carol", 1L, listOf(listed(c1)))
            c1.setDeviceList(carols)
            // Every device takes the other users' lists (from the directory), then meets every other device.
            val lists = mapOf("alice" to alices, "bob" to bobs, "carol" to carols)
            for (d in home.devices) for ((user, list) in lists) if (d.address().userId != user) d.updateDeviceList(list)
            home.connectAll()

            // One to one: Alice's phone writes to Bob; both his devices get it, her laptop a sent sync.
            val out = a1.encryptToUser("bob", "dinner at 8?".encodeToByteArray())
            assertTrue(out.missing.isEmpty(), "${out.missing}")
            val dinner = Delivered(MessageKind.DIRECT, "dinner at 8?")
            assertEquals(mapOf(b1.address() to dinner, b2.address() to dinner), home.deliver(a1, out.messages))
            assertEquals(mapOf(a2.address() to Delivered(MessageKind.SENT_SYNC, "dinner at 8?", "bob")), home.deliver(a1, out.syncs))
            // Bob answers from his second device: Alice's phone and laptop, and his first device as a sync.
            val reply = b2.encryptToUser("alice", "yes".encodeToByteArray())
            val yes = Delivered(MessageKind.DIRECT, "yes")
            assertEquals(mapOf(a1.address() to yes, a2.address() to yes), home.deliver(b2, reply.messages))
            assertEquals(mapOf(b1.address() to Delivered(MessageKind.SENT_SYNC, "yes", "alice")), home.deliver(b2, reply.syncs))

            // A group of the three users: every device names the users, their lists give the devices.
            val users = listOf("alice", "bob", "carol")
            for (d in home.devices) {
                d.createGroup(FAMILY, emptyList())
                d.addGroupUsers(FAMILY, users)
            }
            assertEquals(users, a1.groupUsers(FAMILY))
            assertEquals(listOf(a2, b1, b2, c1).map { it.address() }, a1.groupMembers(FAMILY))
            assertEquals(listOf(a1, a2, b1, c1).map { it.address() }, b2.groupMembers(FAMILY))
            for (from in listOf(a1, b2, c1)) {
                val others = home.devices.filter { it != from }.map { it.address() }
                val (given, readers) = home.groupSend(from, "hello from ${from.address().userId}")
                assertEquals(others.toSet(), given.toSet())
                assertEquals(others.toSet(), readers)
            }

            // Bob's second device is lost: he signs a list without it, which every other device takes.
            // No app removes it from the group.
            val without = bobUser.signDeviceList("bob", 2L, listOf(listed(b1)))
            b1.setDeviceList(without)
            for (d in listOf(a1, a2, c1)) assertEquals(listOf(2L), d.updateDeviceList(without).removed.map { it.deviceId })
            assertEquals(listOf(a2, b1, c1).map { it.address() }, a1.groupMembers(FAMILY))

            // One to one: no message is made for the lost device any more, and what it sends is refused.
            val after = c1.encryptToUser("bob", "is the lost phone gone?".encodeToByteArray())
            assertEquals(listOf(b1.address()), after.messages.map { it.to })
            assertTrue(after.missing.isEmpty())
            assertEquals(mapOf(b1.address() to Delivered(MessageKind.DIRECT, "is the lost phone gone?")), home.deliver(c1, after.messages))
            assertThrows(SamizdatException.UntrustedIdentity::class.java) {
                c1.encryptToUserDevices("bob", "psst".encodeToByteArray(), listOf(b2.address()))
            }
            val fromLost = b2.encrypt(a1.address(), "it's me, Bob's phone".encodeToByteArray())
            assertThrows(SamizdatException.UntrustedIdentity::class.java) { a1.decrypt(b2.address(), fromLost) }

            // The group: each sender's next message is on a new chain that the lost device never gets.
            val remaining = listOf(a1, a2, b1, c1)
            for (from in remaining) {
                val others = remaining.filter { it != from }.map { it.address() }.toSet()
                val (given, readers) = home.groupSend(from, "after the loss, from ${from.address()}")
                assertFalse(b2.address() in given, "a chain for the lost device from ${from.address()}")
                assertEquals(others, given.toSet(), "a new chain for every remaining device")
                assertEquals(others, readers, "the lost device read the group, or a remaining one did not")
            }
            // Its request for Alice's chain is refused: no list names it.
            val last = a1.groupEncrypt(FAMILY, "still there?".encodeToByteArray())
            assertTrue(last.distributions.isEmpty())
            val missing = assertThrows(SamizdatException.MissingGroupKey::class.java) { b2.decrypt(a1.address(), last.message.toByteArray()) }
            val request = checkNotNull(missing.request()) { "the lost device has a session with Alice: it asks" }
            assertThrows(SamizdatException.UntrustedIdentity::class.java) { a1.decrypt(b2.address(), request) }
        }
    }
}
