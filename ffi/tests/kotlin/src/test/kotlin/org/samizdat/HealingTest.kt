// Healing through the Kotlin bindings (PROTOCOL.md 20): the sealed outbox, message ids, and the
// reset that brings a lost message again. The same scenarios as ffi/tests/python/test_healing.py;
// core/tests/healing.rs has the full set.
package org.samizdat

import java.nio.file.Files
import java.nio.file.Path
import org.junit.jupiter.api.Assertions.assertArrayEquals
import org.junit.jupiter.api.Assertions.assertEquals
import org.junit.jupiter.api.Assertions.assertFalse
import org.junit.jupiter.api.Assertions.assertInstanceOf
import org.junit.jupiter.api.Assertions.assertNotNull
import org.junit.jupiter.api.Assertions.assertThrows
import org.junit.jupiter.api.Test
import org.junit.jupiter.api.io.TempDir

// core/src/device/healing.rs: HealPolicy::default() (an hour between resets, 30 days, 256 messages, no resend
// to a new identity).
private val RESET_INTERVAL = 3600L
private val OUTBOX_MAX_AGE = 30L * 24L * 3600L
private val MAX_OUTBOX_MESSAGES = 256

/** What an app got from one message: the kind, the text, the id, and what the commit returned (to send). */
private data class Got(val kind: MessageKind, val text: String, val id: ByteArray?, val sent: List<Outgoing>)

/** Decrypt, "store", commit: what an app does with each message. */
private fun receive(to: Device, from: Device, wire: ByteArray): Got =
    to.decrypt(from.address(), wire).use { pending ->
        val (kind, text, id) = Triple(pending.kind(), pending.plaintext().decodeToString(), pending.messageId())
        Got(kind, text, id, to.commit(pending))
    }

/** Alice and Bob, each in a SQLite store under `dir`, with a session Alice started. */
private class Peers(dir: Path) : AutoCloseable {
    val alice = Device.openOrCreate(dir.resolve("alice.db").toString(), ByteArray(32) { 1 }, "alice", 1, 0L)
    val bob = Device.openOrCreate(dir.resolve("bob.db").toString(), ByteArray(32) { 2 }, "bob", 1, 0L)
    val bobAddress = alice.startSession(bob.prekeyBundle())

    override fun close() = listOf(bob, alice).forEach { it.close() }
}

/** A pair after a loss: `lost` as first sent, and its resend from Alice's commit of Bob's reset. */
private class Healed(val pair: Peers, val lost: ByteArray, val resend: ByteArray)

/**
 * Alice keeps "first" (delivered) and "lost"; Bob, who could not read "lost", heals at 10, and
 * Alice's commit of the reset sends "lost" again.
 */
private fun lostAndHealed(dir: Path): Healed {
    val pair = Peers(Files.createDirectories(dir))
    val (alice, bob) = pair.alice to pair.bob
    val first = alice.encryptKept(pair.bobAddress, "first".encodeToByteArray(), 0L)
    assertEquals(MessageKind.DIRECT to "first", receive(bob, alice, first).let { it.kind to it.text })
    val lost = alice.encryptKept(pair.bobAddress, "lost".encodeToByteArray(), 0L)
    val healed = assertInstanceOf(HealResult.Sent::class.java, bob.heal(alice.prekeyBundle(), listOf(lost), 10L))
    assertEquals(alice.address(), healed.reset.to)
    assertEquals(1, bob.awaitingResends(alice.address()))
    val reset = receive(alice, bob, healed.reset.message.toByteArray())
    assertEquals(MessageKind.CONTROL to "", reset.kind to reset.text, "the reset: nothing for the app")
    assertEquals(1, reset.sent.size, "the one message of the reset that Alice's outbox holds")
    assertEquals(pair.bobAddress, reset.sent[0].to)
    return Healed(pair, lost, reset.sent[0].message.toByteArray())
}

class HealingTest {
    @Test
    fun theOutboxKeepsAMessageUntilItIsAcknowledged(@TempDir dir: Path) {
        Peers(dir).use { pair ->
            val (alice, bob, bobAddress) = Triple(pair.alice, pair.bob, pair.bobAddress)
            assertEquals(HealPolicy(RESET_INTERVAL, OUTBOX_MAX_AGE, MAX_OUTBOX_MESSAGES, false), alice.healPolicy())
            val wire = alice.encryptKept(bobAddress, "kept until acknowledged".encodeToByteArray(), 1000L)
            assertEquals(1, alice.outboxLen(bobAddress))
            alice.encrypt(bobAddress, "not kept".encodeToByteArray()) // a plain encrypt keeps nothing
            assertEquals(1, alice.outboxLen(bobAddress))
            // Both sides name the message by the same id: of its wire bytes.
            val id = bob.decrypt(alice.address(), wire).use { pending ->
                val id = checkNotNull(pending.messageId()) { "a one-to-one message has an id" }
                assertEquals(16, id.size)
                assertArrayEquals(messageId(wire), id)
                assertFalse(messageId(wire + byteArrayOf(1)).contentEquals(id))
                assertEquals(emptyList<Outgoing>(), bob.commit(pending))
                id
            }
            // Bob's receipt carries the id; Alice's acknowledgement removes the plaintext.
            val wrong = assertThrows(SamizdatException.InvalidArgument::class.java) {
                alice.acknowledge(bobAddress, listOf(id, id.copyOf(15)))
            }
            assertEquals("message id 1 has 15 bytes, expected 16", wrong.reason)
            assertEquals("invalid_argument", wrong.code())
            assertEquals(1, alice.outboxLen(bobAddress), "a refused call removes nothing")
            assertEquals(1, alice.acknowledge(bobAddress, listOf(id, ByteArray(16))), "ids it does not hold are ignored")
            assertEquals(0, alice.outboxLen(bobAddress))
            assertEquals(0, alice.acknowledge(bobAddress, listOf(id)))
            // What no receipt acknowledged goes when it is past the policy's age.
            alice.encryptKept(bobAddress, "never acknowledged".encodeToByteArray(), 2000L)
            assertEquals(0, alice.expireOutbox(2000L + OUTBOX_MAX_AGE - 1L))
            assertEquals(1, alice.expireOutbox(2000L + OUTBOX_MAX_AGE))
            assertEquals(0, alice.outboxLen(bobAddress))
        }
    }

    @Test
    fun aLostMessageIsSentAgainAfterAReset(@TempDir dir: Path) {
        val healed = lostAndHealed(dir)
        healed.pair.use { pair ->
            val (alice, bob, bobAddress) = Triple(pair.alice, pair.bob, pair.bobAddress)
            // The resend reaches Bob as a direct message, under the id it was first sent with.
            val resent = receive(bob, alice, healed.resend)
            assertEquals(MessageKind.DIRECT to "lost", resent.kind to resent.text)
            assertArrayEquals(messageId(healed.lost), resent.id)
            assertEquals(emptyList<Outgoing>(), resent.sent)
            assertEquals(0, bob.awaitingResends(alice.address()))
            // The outbox still holds both until Bob's receipts come.
            assertEquals(2, alice.outboxLen(bobAddress))
            assertEquals(1, alice.acknowledge(bobAddress, listOf(resent.id!!)))
            // One reset per interval: a second one now is refused, and says when it may go.
            val again = bob.heal(alice.prekeyBundle(), listOf(healed.lost), 20L)
            assertEquals(HealResult.TooSoon(10L + RESET_INTERVAL), again)
            assertEquals(3610L, assertInstanceOf(HealResult.TooSoon::class.java, again).retryAt)
            // The new session carries the conversation on, both ways.
            assertEquals("after", receive(bob, alice, alice.encrypt(bobAddress, "after".encodeToByteArray())).text)
            assertEquals("back", receive(alice, bob, bob.encrypt(alice.address(), "back".encodeToByteArray())).text)
        }
    }

    @Test
    fun aMessageReachesTheAppOnceWhicheverCopyComesFirst(@TempDir dir: Path) {
        // The resend first: the original, delivered late, is a duplicate; so is a replay of the resend.
        val resendFirst = lostAndHealed(dir.resolve("resend_first"))
        resendFirst.pair.use { pair ->
            assertEquals("lost", receive(pair.bob, pair.alice, resendFirst.resend).text)
            for (copy in listOf(resendFirst.lost, resendFirst.resend)) {
                val duplicate = assertThrows(SamizdatException.Duplicate::class.java) {
                    pair.bob.decrypt(pair.alice.address(), copy)
                }
                assertEquals("duplicate", duplicate.code())
            }
        }
        // The original first: the resend is a control message, nothing for the app.
        val originalFirst = lostAndHealed(dir.resolve("original_first"))
        originalFirst.pair.use { pair ->
            assertEquals(MessageKind.DIRECT to "lost", receive(pair.bob, pair.alice, originalFirst.lost).let { it.kind to it.text })
            assertEquals(0, pair.bob.awaitingResends(pair.alice.address()), "read as first sent: its resend is awaited no more")
            val resent = receive(pair.bob, pair.alice, originalFirst.resend)
            assertEquals(Triple(MessageKind.CONTROL, "", emptyList<Outgoing>()), Triple(resent.kind, resent.text, resent.sent))
            assertNotNull(resent.id)
        }
    }

    @Test
    fun theHealPolicy(@TempDir dir: Path) {
        Peers(dir).use { pair ->
            val (alice, bob) = pair.alice to pair.bob
            val tooMany = HealPolicy(0L, 60L, MAX_OUTBOX_MESSAGES + 1, false)
            val error = assertThrows(SamizdatException.InvalidArgument::class.java) { bob.setHealPolicy(tooMany) }
            assertEquals("invalid_argument", error.code())
            assertEquals(RESET_INTERVAL, bob.healPolicy().resetInterval, "a refused policy changes nothing")
            // Without an interval, a second reset goes at once.
            val policy = HealPolicy(0L, 60L, MAX_OUTBOX_MESSAGES, true)
            bob.setHealPolicy(policy)
            assertEquals(policy, bob.healPolicy())
            receive(bob, alice, alice.encrypt(pair.bobAddress, "hello".encodeToByteArray()))
            repeat(2) {
                val healed = assertInstanceOf(HealResult.Sent::class.java, bob.heal(alice.prekeyBundle(), emptyList(), 10L))
                assertEquals(MessageKind.CONTROL, receive(alice, bob, healed.reset.message.toByteArray()).kind)
            }
        }
    }
}
