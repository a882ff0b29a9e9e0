// Groups (Sender Keys) through the Kotlin bindings: the same scenarios as
// ffi/tests/python/test_groups.py and core/tests/groups.rs.
package org.samizdat

import java.nio.file.Path
import org.junit.jupiter.api.Assertions.assertArrayEquals
import org.junit.jupiter.api.Assertions.assertEquals
import org.junit.jupiter.api.Assertions.assertNull
import org.junit.jupiter.api.Assertions.assertThrows
import org.junit.jupiter.api.Assertions.assertTrue
import org.junit.jupiter.api.Test
import org.junit.jupiter.api.io.TempDir

private val GROUP = "book club".encodeToByteArray()

/** What an app got from one delivery: the kind, the text, and what its commit returned (to send, in order). */
private data class Received(val kind: MessageKind, val text: String, val answers: List<Outgoing> = emptyList())

/**
 * `n` devices (`m0`, `m1`, ...) on SQLite stores, with a session between every two; messages are
 * delivered by hand, in whatever order a test wants, as a server would.
 */
private class World(private val dir: Path, n: Int) : AutoCloseable {
    val devices: MutableList<Device> = (0 until n).map { open(it, create = true) }.toMutableList()

    init {
        for (i in 0 until n) for (j in i + 1 until n) connect(i, j)
    }

    fun open(i: Int, create: Boolean = false): Device {
        val path = dir.resolve("m$i.db").toString()
        val key = ByteArray(32) { (i + 1).toByte() }
        return if (create) Device.openOrCreate(path, key, "m$i", 1, 0L) else Device.open(path, key)
    }

    private fun connect(i: Int, j: Int) {
        val (a, b) = devices[i] to devices[j]
        a.startSession(b.prekeyBundle())
        b.decrypt(a.address(), a.encrypt(b.address(), "hello".encodeToByteArray())).use { b.commit(it) }
        a.decrypt(b.address(), b.encrypt(a.address(), "hello back".encodeToByteArray())).use { a.commit(it) }
    }

    operator fun get(i: Int): Device = devices[i]

    fun address(i: Int): Address = devices[i].address()

    fun index(address: Address): Int = devices.indexOfFirst { it.address() == address }

    /** Every member creates the group with the others (the app tells each of its devices). */
    fun create(group: ByteArray, members: List<Int>) {
        for (i in members) devices[i].createGroup(group, members.filter { it != i }.map(::address))
    }

    /** Decrypt, "store", commit: what an app does with each message. */
    fun receive(from: Int, to: Int, wire: ByteArray): Received =
        devices[to].decrypt(address(from), wire).use { pending ->
            val kind = pending.kind()
            val text = pending.plaintext().decodeToString()
            Received(kind, text, devices[to].commit(pending))
        }

    /** Delivers a send's distributions: control messages, answered by nothing. */
    fun distribute(from: Int, sent: GroupSend) {
        for (outgoing in sent.distributions) {
            assertEquals(Received(MessageKind.CONTROL, ""), receive(from, index(outgoing.to), outgoing.message.toByteArray()))
        }
    }

    fun send(from: Int, group: ByteArray, text: String): GroupSend =
        devices[from].groupEncrypt(group, text.encodeToByteArray()).also { distribute(from, it) }

    override fun close() = devices.forEach { it.close() }
}

class GroupTest {
    @Test
    fun threeMembersOutOfOrder(@TempDir dir: Path) {
        World(dir, 3).use { world ->
            world.create(GROUP, listOf(0, 1, 2))
            assertEquals(listOf(world.address(1), world.address(2)), world[0].groupMembers(GROUP))
            val sent = (0 until 3).map { from ->
                val first = world.send(from, GROUP, "$from:0")
                assertEquals((0 until 3).filter { it != from }.map(world::address), first.distributions.map { it.to }.sortedBy { it.userId })
                assertTrue(first.withoutSession.isEmpty())
                listOf(first.message.toByteArray()) + (1..2).map { world.send(from, GROUP, "$from:$it").message.toByteArray() }
            }
            for ((from, messages) in sent.withIndex()) {
                for (to in (0 until 3).filter { it != from }) {
                    for (k in listOf(2, 0, 1)) { // delivered third, first, second
                        world[to].decrypt(world.address(from), messages[k]).use { pending ->
                            assertEquals(MessageKind.GROUP, pending.kind())
                            assertArrayEquals(GROUP, pending.groupId())
                            assertEquals("$from:$k", pending.plaintext().decodeToString())
                            assertEquals(world.address(from), pending.sender())
                            assertArrayEquals(world[from].identityKey(), pending.senderIdentity(), "the identity the sender's chain came under")
                            assertEquals(emptyList<Outgoing>(), world[to].commit(pending))
                        }
                    }
                    assertThrows(SamizdatException.Duplicate::class.java) { world[to].decrypt(world.address(from), messages[0]) }
                }
            }
        }
    }

    @Test
    fun distributionsAreNeverSentTwice(@TempDir dir: Path) {
        World(dir, 3).use { world ->
            world.create(GROUP, listOf(0, 1))
            assertEquals(listOf(world.address(1)), world.send(0, GROUP, "one").distributions.map { it.to })
            // Members that have the chain never get it again, not even after a restart.
            assertTrue(world.send(0, GROUP, "two").distributions.isEmpty())
            world[0].close()
            world.devices[0] = world.open(0)
            assertTrue(world.send(0, GROUP, "three").distributions.isEmpty())
            // An added member gets the chain once, from now on; the others get nothing.
            for (i in 0..1) world[i].addGroupMembers(GROUP, listOf(world.address(2)))
            world[2].createGroup(GROUP, listOf(world.address(0), world.address(1)))
            val welcome = world.send(0, GROUP, "welcome")
            assertEquals(listOf(world.address(2)), welcome.distributions.map { it.to })
            assertEquals(Received(MessageKind.GROUP, "welcome"), world.receive(0, 2, welcome.message.toByteArray()))
            assertEquals(Received(MessageKind.GROUP, "welcome"), world.receive(0, 1, welcome.message.toByteArray()))
            assertTrue(world.send(0, GROUP, "after").distributions.isEmpty())
        }
    }

    @Test
    fun aRemovedMemberCannotReadNewMessages(@TempDir dir: Path) {
        World(dir, 3).use { world ->
            world.create(GROUP, listOf(0, 1, 2))
            val before = world.send(0, GROUP, "before")
            for (to in 1..2) assertEquals("before", world.receive(0, to, before.message.toByteArray()).text)
            for (i in 0..1) world[i].removeGroupMembers(GROUP, listOf(world.address(2)))
            assertEquals(listOf(world.address(1)), world[0].groupMembers(GROUP))
            val after = world.send(0, GROUP, "after")
            assertEquals(listOf(world.address(1)), after.distributions.map { it.to }, "a new chain, for member 1 only")
            assertEquals(Received(MessageKind.GROUP, "after"), world.receive(0, 1, after.message.toByteArray()))
            // The removed device lacks the new chain; its request goes unanswered.
            val missing = assertThrows(SamizdatException.MissingGroupKey::class.java) {
                world[2].decrypt(world.address(0), after.message.toByteArray())
            }
            assertEquals(Recovery.RETRY_LATER, missing.recovery())
            val request = checkNotNull(missing.request()) { "member 2 still has a session with member 0: it asks" }
            assertEquals(Received(MessageKind.CONTROL, ""), world.receive(2, 0, request))
            assertThrows(SamizdatException.MissingGroupKey::class.java) { world[2].decrypt(world.address(0), after.message.toByteArray()) }
            // Its own messages are refused by the remaining members.
            val fromRemoved = world[2].groupEncrypt(GROUP, "still here?".encodeToByteArray())
            val notMember = assertThrows(SamizdatException.NotInGroup::class.java) {
                world[0].decrypt(world.address(2), fromRemoved.message.toByteArray())
            }
            assertEquals("the sender is not a member of the group", notMember.reason)
            // The remaining members go on.
            val reply = world.send(1, GROUP, "reply")
            assertEquals(listOf(world.address(0)), reply.distributions.map { it.to })
            assertEquals("reply", world.receive(1, 0, reply.message.toByteArray()).text)
        }
    }

    @Test
    fun aLostDistributionIsRecoveredByARequest(@TempDir dir: Path) {
        World(dir, 3).use { world ->
            world.create(GROUP, listOf(0, 1, 2))
            val first = world[0].groupEncrypt(GROUP, "first".encodeToByteArray())
            // The distribution to member 1 is lost; member 2 gets its own.
            first.distributions.filter { it.to == world.address(2) }.forEach { world.receive(0, 2, it.message.toByteArray()) }
            val second = world.send(0, GROUP, "second")
            val missing = assertThrows(SamizdatException.MissingGroupKey::class.java) {
                world[1].decrypt(world.address(0), second.message.toByteArray())
            }
            // The same chain for the first message (asking once more is allowed, and bounded).
            val again = assertThrows(SamizdatException.MissingGroupKey::class.java) {
                world[1].decrypt(world.address(0), first.message.toByteArray())
            }
            assertEquals(missing.chainId, again.chainId)
            // The sender's commit of the request returns the answer, for member 1.
            assertEquals(missing.request()!!.joinToString("") { "%02x".format(it) }, missing.requestHex)
            val (kind, text, answered) = world.receive(1, 0, checkNotNull(missing.request()))
            assertEquals(MessageKind.CONTROL to "", kind to text)
            assertEquals(1, answered.size, "member 1 is a member: its request is answered, once")
            val answer = answered.single()
            assertEquals(world.address(1), answer.to)
            world[1].decrypt(world.address(0), answer.message.toByteArray()).use { pending ->
                assertEquals(MessageKind.CONTROL, pending.kind())
                assertArrayEquals(GROUP, pending.groupId())
                assertEquals(0, pending.plaintext().size)
                assertArrayEquals(world[0].identityKey(), pending.senderIdentity())
                assertEquals(emptyList<Outgoing>(), world[1].commit(pending))
            }
            // The held message decrypts now, and so do the next ones, with no distribution.
            assertEquals(Received(MessageKind.GROUP, "second"), world.receive(0, 1, second.message.toByteArray()))
            val third = world.send(0, GROUP, "third")
            assertTrue(third.distributions.isEmpty())
            assertEquals("third", world.receive(0, 1, third.message.toByteArray()).text)
        }
    }

    @Test
    fun aForgedGroupMessageIsRefused(@TempDir dir: Path) {
        World(dir, 3).use { world ->
            world.create(GROUP, listOf(0, 1, 2))
            val sent = world.send(0, GROUP, "genuine")
            for (at in listOf(sent.message.size - 1, sent.message.size / 2)) { // the signature; the body
                val forged = sent.message.toByteArray().also { it[at] = (it[at].toInt() xor 1).toByte() }
                assertThrows(SamizdatException.InvalidMessage::class.java) { world[1].decrypt(world.address(0), forged) }
            }
            // Attributed to another member: not a chain of that member's.
            assertThrows(SamizdatException.MissingGroupKey::class.java) { world[1].decrypt(world.address(2), sent.message.toByteArray()) }
            // Nothing changed: the genuine message decrypts, once.
            assertEquals(Received(MessageKind.GROUP, "genuine"), world.receive(0, 1, sent.message.toByteArray()))
            assertThrows(SamizdatException.Duplicate::class.java) { world[1].decrypt(world.address(0), sent.message.toByteArray()) }
        }
    }

    @Test
    fun groupErrors(@TempDir dir: Path) {
        World(dir, 3).use { world ->
            world.create(GROUP, listOf(0, 1))
            val m0 = world[0]
            val sent = world.send(0, GROUP, "hi")
            // Unknown group, then a sender that is not a member: both not in the group, told apart by the text.
            val unknown = assertThrows(SamizdatException.NotInGroup::class.java) { world[2].decrypt(world.address(0), sent.message.toByteArray()) }
            assertEquals("unknown group", unknown.reason)
            world[2].createGroup(GROUP, listOf(world.address(1)))
            val notMember = assertThrows(SamizdatException.NotInGroup::class.java) { world[2].decrypt(world.address(0), sent.message.toByteArray()) }
            assertEquals("the sender is not a member of the group", notMember.reason)
            val self = assertThrows(SamizdatException.InvalidArgument::class.java) {
                m0.createGroup("g9".encodeToByteArray(), listOf(m0.address()))
            }
            assertEquals("this device cannot be its own group member", self.reason)
            val exists = assertThrows(SamizdatException.InvalidArgument::class.java) { m0.createGroup(GROUP, listOf(world.address(1))) }
            assertEquals("the group already exists", exists.reason)
            assertThrows(SamizdatException.InvalidArgument::class.java) { m0.createGroup(ByteArray(65), emptyList()) }
            assertThrows(SamizdatException.InvalidArgument::class.java) { m0.createGroup("g9".encodeToByteArray(), listOf(Address("", 1))) }
            val tooMany = assertThrows(SamizdatException.LimitExceeded::class.java) {
                m0.createGroup("big".encodeToByteArray(), (0..5000).map { Address("u$it", 1) })
            }
            assertEquals("a group holds at most 5000 member devices", tooMany.reason)
            assertThrows(SamizdatException.NotInGroup::class.java) { m0.groupEncrypt("nope".encodeToByteArray(), ByteArray(1)) }
            assertThrows(SamizdatException.LimitExceeded::class.java) { m0.groupEncrypt(GROUP, ByteArray(300 * 1024)) }
            // A member without a session is reported; it gets the chain once there is one.
            val stranger = Address("stranger", 1)
            m0.addGroupMembers(GROUP, listOf(stranger))
            assertEquals(listOf(stranger), world.send(0, GROUP, "x").withoutSession)
            // Leaving: the group is gone from this device.
            m0.deleteGroup(GROUP)
            assertThrows(SamizdatException.NotInGroup::class.java) { m0.groupMembers(GROUP) }
            assertThrows(SamizdatException.NotInGroup::class.java) { m0.deleteGroup(GROUP) }
        }
    }

    @Test
    fun aBatchLeavesControlMessagesForDecrypt(@TempDir dir: Path) {
        World(dir, 2).use { world ->
            world.create(GROUP, listOf(0, 1))
            val sent = world[0].groupEncrypt(GROUP, "x".encodeToByteArray())
            val direct = world[0].encrypt(world.address(1), "direct".encodeToByteArray())
            val sender = world.address(0)
            val batch = listOf(IncomingMessage(sender, sent.distributions[0].message), IncomingMessage(sender, Bytes(direct)))
            world[1].decryptBatch(batch).use { pending ->
                val results = pending.results()
                // Left for decrypt: not consumed, decrypt it again (alone).
                assertTrue(results[0].error is SamizdatException.StalePending)
                assertEquals(Recovery.DECRYPT_AGAIN, results[0].error!!.recovery())
                assertEquals("direct", results[1].plaintext?.toByteArray()?.decodeToString())
                world[1].commitBatch(pending)
            }
            // Not consumed: it decrypts alone, then the group message does.
            assertEquals(Received(MessageKind.CONTROL, ""), world.receive(0, 1, sent.distributions[0].message.toByteArray()))
            assertEquals(Received(MessageKind.GROUP, "x"), world.receive(0, 1, sent.message.toByteArray()))
            // A direct message says so.
            world[1].decrypt(sender, world[0].encrypt(world.address(1), "d".encodeToByteArray())).use { pending ->
                assertEquals(MessageKind.DIRECT, pending.kind())
                assertNull(pending.groupId())
                assertArrayEquals(world[0].identityKey(), pending.senderIdentity())
            }
        }
    }
}
