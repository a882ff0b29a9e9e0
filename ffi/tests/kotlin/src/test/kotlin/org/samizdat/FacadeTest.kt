// The hand-written JVM facade (ffi/jvm/src/main/kotlin): static factories and java.time overloads
// over the generated calls, and IdentityKey as a value. JavaApiTest calls the same from Java.
package org.samizdat

import java.nio.file.Path
import java.time.Duration
import java.time.Instant
import org.junit.jupiter.api.Assertions.assertEquals
import org.junit.jupiter.api.Assertions.assertInstanceOf
import org.junit.jupiter.api.Assertions.assertNotEquals
import org.junit.jupiter.api.Assertions.assertThrows
import org.junit.jupiter.api.Assertions.assertTrue
import org.junit.jupiter.api.Test
import org.junit.jupiter.api.io.TempDir

class FacadeTest {
    @Test
    fun timesAreInstantsAndDurations(@TempDir dir: Path) {
        val start = Instant.parse("2026-12-07T00:00:00Z")
        Samizdat.create(dir.resolve("alice.db").toString(), ByteArray(32) { 1 }, "alice", 1, start).use { alice ->
            Samizdat.openOrCreate(dir.resolve("bob.db").toString(), ByteArray(32) { 2 }, "bob", 1, start).use { bob ->
                assertEquals(10, bob.refillPrekeys(5, 5, start)) // 5 of each kind
                val bobAddress = alice.startSession(bob.prekeyBundle())
                // Nothing is due an hour in; everything 31 days in.
                assertEquals(Rotated(false, false), bob.rotatePrekeys(start.plusSeconds(3_600), Duration.ofDays(30)))
                assertEquals(Rotated(true, true), bob.rotatePrekeys(start.plus(Duration.ofDays(31)), Duration.ofDays(30)))

                // The outbox's age is a Duration; a reset's retry time an Instant.
                alice.setHealPolicy(Samizdat.healPolicy(Duration.ofMinutes(10), Duration.ofHours(1), 16, false))
                assertEquals(Duration.ofMinutes(10), alice.healPolicy().resetIntervalDuration)
                assertEquals(Duration.ofHours(1), alice.healPolicy().outboxMaxAgeDuration)
                alice.encryptKept(bobAddress, "kept".encodeToByteArray(), start)
                assertEquals(0, alice.expireOutbox(start.plusSeconds(3_599)))
                assertEquals(1, alice.expireOutbox(start.plusSeconds(3_600)))

                val sent = alice.heal(bob.prekeyBundle(), listOf(), start.plusSeconds(100))
                assertInstanceOf(HealResult.Sent::class.java, sent)
                val again = alice.heal(bob.prekeyBundle(), listOf(), start.plusSeconds(200))
                assertEquals(start.plusSeconds(100 + 600), (again as HealResult.TooSoon).retryInstant)

                // A time before the epoch is refused at the boundary, with a message.
                val refused = assertThrows(SamizdatException.InvalidArgument::class.java) {
                    alice.expireOutbox(Instant.parse("1969-12-31T23:59:59Z"))
                }
                assertTrue(refused.message!!.contains("now is negative"), refused.message)
            }
        }
    }

    @Test
    fun identityKeysAreValues(@TempDir dir: Path) {
        Samizdat.create(dir.resolve("alice.db").toString(), ByteArray(32) { 1 }, "alice", 1, Instant.now()).use { alice ->
            val key = alice.identity()
            assertEquals(key, Samizdat.identityKey(alice.identityKey()))
            assertEquals(key.hashCode(), IdentityKey(alice.identityKey()).hashCode())
            assertEquals(mapOf(key to "alice")[IdentityKey(alice.identityKey())], "alice")
            assertEquals(64, key.toString().length)
            // The value keeps its own copy: changing the array it came from changes nothing.
            val bytes = alice.identityKey()
            val copy = IdentityKey(bytes)
            bytes[0] = (bytes[0] + 1).toByte()
            assertEquals(key, copy)
            assertNotEquals(key, IdentityKey(bytes))
        }
    }
}
