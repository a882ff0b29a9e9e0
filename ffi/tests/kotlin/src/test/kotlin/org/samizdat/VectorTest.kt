// The published ratchet transcript (vectors/ratchet_transcript.json), replayed through the bindings:
// the same scenario as ffi/tests/python/test_vectors.py. Needs the library built with the `hazmat`
// feature (`cargo xtask test` does that for the test builds).
package org.samizdat

import java.io.File
import org.json.JSONObject
import org.junit.jupiter.api.Assertions.assertArrayEquals
import org.junit.jupiter.api.Assertions.assertEquals
import org.junit.jupiter.api.Assertions.assertFalse
import org.junit.jupiter.api.Assertions.assertThrows
import org.junit.jupiter.api.Assertions.assertTrue
import org.junit.jupiter.api.Test

class VectorTest {
    private val transcript: JSONObject by lazy {
        val dir = System.getProperty("samizdat.vectors") ?: error("samizdat.vectors is not set (see pom.xml)")
        JSONObject(File(dir, "ratchet_transcript.json").readText())
    }

    private val case: JSONObject by lazy { transcript.getJSONArray("cases").getJSONObject(0) }

    private fun hex(text: String): ByteArray {
        require(text.length % 2 == 0) { "odd hex length" }
        return ByteArray(text.length / 2) { i -> text.substring(2 * i, 2 * i + 2).toInt(16).toByte() }
    }

    private fun JSONObject.bytes(name: String): ByteArray = hex(getString(name))

    private fun JSONObject.optBytes(name: String): ByteArray? = if (isNull(name)) null else bytes(name)

    private fun alice(): VectorRatchet =
        VectorRatchet.initiator(
            case.bytes("root_key"),
            case.bytes("hka"),
            case.bytes("nhkb"),
            case.bytes("associated_data"),
            case.bytes("bob_ratchet_public"),
            case.bytes("alice_ratchet_secret"),
        )

    private fun bob(): VectorRatchet =
        VectorRatchet.responder(
            case.bytes("root_key"),
            case.bytes("hka"),
            case.bytes("nhkb"),
            case.bytes("associated_data"),
            case.bytes("bob_ratchet_secret"),
        )

    /** Replaces a ratchet by one loaded from its stored encoding (the encoding must survive the trip). */
    private fun reload(ratchet: VectorRatchet): VectorRatchet {
        val state = ratchet.state()
        ratchet.close()
        return VectorRatchet.fromState(state).also { assertArrayEquals(state, it.state()) }
    }

    @Test
    fun transcriptReplaysByteForByte() {
        val parties = mutableMapOf("alice" to alice(), "bob" to bob())
        assertArrayEquals(case.bytes("alice_ratchet_public"), parties.getValue("alice").ratchetPublicKey())
        assertArrayEquals(case.bytes("bob_ratchet_public"), parties.getValue("bob").ratchetPublicKey())
        val sent = mutableMapOf<Int, ByteArray>()
        val counts = mutableMapOf<String, Int>().withDefault { 0 }
        val events = case.getJSONArray("events")
        for (i in 0 until events.length()) {
            val event = events.getJSONObject(i)
            val where = "event $i (${event.getString("event")} of message ${event.opt("message")})"
            when (event.getString("event")) {
                "send" -> {
                    val sender = event.getString("sender")
                    val wire = parties.getValue(sender).encrypt(event.bytes("plaintext"), event.bytes("random"))
                    assertArrayEquals(event.bytes("wire"), wire, where)
                    sent[event.getInt("message")] = wire
                    counts["sent_by_$sender"] = counts.getValue("sent_by_$sender") + 1
                }
                "deliver" -> {
                    val party = parties.getValue(event.getString("to"))
                    val wire = event.optBytes("altered_wire") ?: sent[event.getInt("message")] ?: error("$where: not sent")
                    val keyBefore = party.ratchetPublicKey()
                    val stateBefore = party.state()
                    counts["deliveries"] = counts.getValue("deliveries") + 1
                    if (event.isNull("error")) {
                        val plaintext = party.decrypt(wire, event.bytes("random"))
                        assertArrayEquals(event.bytes("decrypted"), plaintext, where)
                        val newKey = event.optBytes("new_ratchet_key")
                        if (newKey != null) {
                            assertEquals("dh_step", event.getString("key"), where)
                            assertArrayEquals(newKey, party.ratchetPublicKey(), where)
                            assertFalse(newKey.contentEquals(keyBefore), where)
                        } else {
                            assertArrayEquals(keyBefore, party.ratchetPublicKey(), where)
                        }
                        when (event.getString("key")) {
                            "dh_step" -> counts["dh_steps"] = counts.getValue("dh_steps") + 1
                            "skipped" -> counts["from_skipped_keys"] = counts.getValue("from_skipped_keys") + 1
                        }
                    } else {
                        val error = event.getJSONObject("error")
                        when (error.getString("error")) {
                            "duplicate" -> {
                                val thrown = assertThrows(VectorRatchetException.Duplicate::class.java) {
                                    party.decrypt(wire, event.bytes("random"))
                                }
                                assertEquals(error.getInt("counter").toUInt(), thrown.counter, where)
                                counts["duplicates"] = counts.getValue("duplicates") + 1
                            }
                            "rollback" -> {
                                val thrown = assertThrows(VectorRatchetException.Rollback::class.java) {
                                    party.decrypt(wire, event.bytes("random"))
                                }
                                assertEquals(error.getInt("counter").toUInt(), thrown.counter, where)
                                counts["rollbacks"] = counts.getValue("rollbacks") + 1
                            }
                            "unauthenticated" -> {
                                assertThrows(VectorRatchetException.Unauthenticated::class.java) {
                                    party.decrypt(wire, event.bytes("random"))
                                }
                                counts["unauthenticated"] = counts.getValue("unauthenticated") + 1
                            }
                            "no_matching_state" -> {
                                assertThrows(VectorRatchetException.NoMatchingState::class.java) {
                                    party.decrypt(wire, event.bytes("random"))
                                }
                                counts["no_matching_state"] = counts.getValue("no_matching_state") + 1
                            }
                            else -> error("$where: unknown error ${error.getString("error")}")
                        }
                        // A rejected message changes nothing.
                        assertArrayEquals(stateBefore, party.state(), where)
                    }
                    assertEquals(event.getInt("skipped_keys").toUInt(), party.storedSkippedKeys(), where)
                    assertEquals(event.getInt("receiving_chains").toUInt(), party.receivingChains(), where)
                }
                "restore" -> {
                    // A restored backup: the party's state as it was after an earlier event.
                    parties.getValue(event.getString("party")).close()
                    parties[event.getString("party")] = VectorRatchet.fromState(event.bytes("state"))
                }
                else -> error("$where: unknown event")
            }
            if (i % 25 == 24) {
                parties.replaceAll { _, ratchet -> reload(ratchet) }
            }
        }
        val summary = case.getJSONObject("summary")
        for (name in summary.keySet()) {
            assertEquals(summary.getInt(name), counts.getValue(name), "summary.$name")
        }
        assertArrayEquals(case.bytes("alice_final_state"), parties.getValue("alice").state())
        assertArrayEquals(case.bytes("bob_final_state"), parties.getValue("bob").state())
        parties.values.forEach { it.close() }
    }

    @Test
    fun alteredVectorIsRefused() {
        // The replay above would notice a vector changed by one byte: here, the first message's wire.
        val first = case.getJSONArray("events").getJSONObject(0)
        alice().use { alice ->
            val wire = alice.encrypt(first.bytes("plaintext"), first.bytes("random"))
            val altered = first.bytes("wire").also { it[it.size - 1] = (it[it.size - 1].toInt() xor 1).toByte() }
            assertFalse(altered.contentEquals(wire))
            bob().use { bob ->
                val before = bob.state()
                assertThrows(VectorRatchetException.Unauthenticated::class.java) { bob.decrypt(altered, ByteArray(0)) }
                assertArrayEquals(before, bob.state())
            }
        }
    }

    @Test
    fun scriptedRandomnessMustBeExact() {
        val first = case.getJSONArray("events").getJSONObject(0)
        alice().use { alice ->
            val before = alice.state()
            val short = first.bytes("random").copyOf(23)
            val thrown = assertThrows(VectorRatchetException.InvalidArgument::class.java) {
                alice.encrypt(first.bytes("plaintext"), short)
            }
            assertTrue(thrown.reason.contains("23 bytes given"), thrown.reason)
            assertArrayEquals(before, alice.state())
            // Still the state of the vector: the proper call gives the published bytes.
            assertArrayEquals(first.bytes("wire"), alice.encrypt(first.bytes("plaintext"), first.bytes("random")))
        }
        assertThrows(VectorRatchetException.InvalidArgument::class.java) {
            VectorRatchet.responder(ByteArray(31), ByteArray(32), ByteArray(32), ByteArray(0), ByteArray(32))
        }
        assertThrows(VectorRatchetException.Malformed::class.java) { VectorRatchet.fromState(ByteArray(3) { 7 }) }
    }
}
