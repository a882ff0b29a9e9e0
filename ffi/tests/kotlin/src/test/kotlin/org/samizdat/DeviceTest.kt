// The samizdat bindings on the JVM: the same scenarios as ffi/tests/python/test_device.py.
package org.samizdat

import com.sun.jna.Native
import java.io.File
import java.nio.file.Path
import org.junit.jupiter.api.Assertions.assertArrayEquals
import org.junit.jupiter.api.Assertions.assertEquals
import org.junit.jupiter.api.Assertions.assertFalse
import org.junit.jupiter.api.Assertions.assertNotNull
import org.junit.jupiter.api.Assertions.assertNull
import org.junit.jupiter.api.Assertions.assertThrows
import org.junit.jupiter.api.Assertions.assertTrue
import org.junit.jupiter.api.Test
import org.junit.jupiter.api.io.TempDir

class DeviceTest {
    private val aliceKey = ByteArray(32) { 1 }
    private val bobKey = ByteArray(32) { 2 }

    private fun device(dir: Path, name: String, key: ByteArray): Device =
        Device.openOrCreate(dir.resolve("$name.db").toString(), key, name, 1, 0L)

    /** Decrypt, "store", commit: what an app does with each message. */
    private fun receive(to: Device, from: Address, wire: ByteArray): String {
        to.decrypt(from, wire).use { pending ->
            val text = pending.plaintext().decodeToString()
            to.commit(pending)
            return text
        }
    }

    @Test
    fun readmeConversation(@TempDir dir: Path) {
        // README-BEGIN
        val aliceKey = ByteArray(32) { 1 } // from the platform keystore in a real app
        val bobKey = ByteArray(32) { 2 }
        Device.openOrCreate("$dir/alice.db", aliceKey, "alice", 1, 0L).use { alice ->
            Device.openOrCreate("$dir/bob.db", bobKey, "bob", 1, 0L).use { bob ->
                // Bob's bundle travels through a server; Alice verifies it and opens a session.
                val bobAddress = alice.startSession(bob.prekeyBundle())
                val wire = alice.encrypt(bobAddress, "hello".encodeToByteArray())

                // Two-phase decrypt: store the plaintext, then commit, then ack to the server.
                bob.decrypt(alice.address(), wire).use { pending ->
                    assertEquals("hello", pending.plaintext().decodeToString())
                    bob.commit(pending)
                }
                assertThrows(SamizdatException.Duplicate::class.java) { bob.decrypt(alice.address(), wire) }
                assertEquals(
                    alice.safetyNumber(bobAddress).digits,
                    bob.safetyNumber(alice.address()).digits,
                )
            }
        }
        // README-END
    }

    @Test
    fun conversationWithOutOfOrderDelivery(@TempDir dir: Path) {
        device(dir, "alice", aliceKey).use { alice ->
            device(dir, "bob", bobKey).use { bob ->
                val bobAddress = alice.startSession(bob.prekeyBundle())
                assertEquals(Address("bob", 1), bobAddress)
                assertTrue(alice.hasSession(bobAddress))
                val wires = (1..4).map { alice.encrypt(bobAddress, "m$it".encodeToByteArray()) }
                // Delivered 3, 1, 4, 2.
                for (i in listOf(2, 0, 3, 1)) assertEquals("m${i + 1}", receive(bob, alice.address(), wires[i]))
                // Bob answers twice; Alice receives the answers in reverse order.
                val replies = (1..2).map { bob.encrypt(alice.address(), "r$it".encodeToByteArray()) }
                assertEquals("r2", receive(alice, bobAddress, replies[1]))
                assertEquals("r1", receive(alice, bobAddress, replies[0]))
                // Both sides see the same safety number; a scan of the other screen matches.
                alice.safetyNumber(bobAddress).let { onAlice ->
                    bob.safetyNumber(alice.address()).let { onBob ->
                        assertEquals(onAlice.digits, onBob.digits)
                        assertEquals(71, onAlice.display.length)
                        onAlice.compareScanned(onBob.scannable.toByteArray())
                        assertArrayEquals(bob.identityKey(), alice.peerIdentity(bobAddress))
                    }
                }
            }
        }
    }

    @Test
    fun twoPhaseDecryptSurvivesARestart(@TempDir dir: Path) {
        val alice = device(dir, "alice", aliceKey)
        var bob = device(dir, "bob", bobKey)
        alice.startSession(bob.prekeyBundle())
        val first = alice.encrypt(bob.address(), "one".encodeToByteArray())

        // Decrypted but not committed, then the app "restarts".
        bob.decrypt(alice.address(), first).use { assertEquals("one", it.plaintext().decodeToString()) }
        bob.close()
        bob = device(dir, "bob", bobKey)
        assertFalse(bob.hasSession(alice.address()))
        // Redelivered: decrypts again; committed, then a redelivery after a restart is a duplicate.
        assertEquals("one", receive(bob, alice.address(), first))
        bob.close()
        bob = device(dir, "bob", bobKey)
        assertThrows(SamizdatException.Duplicate::class.java) { bob.decrypt(alice.address(), first) }

        // Two pendings from the same state: the second commit is stale; committing twice is refused.
        val third = alice.encrypt(bob.address(), "three".encodeToByteArray())
        val fourth = alice.encrypt(bob.address(), "four".encodeToByteArray())
        val p3 = bob.decrypt(alice.address(), third)
        val p4 = bob.decrypt(alice.address(), fourth)
        bob.commit(p3)
        val twice = assertThrows(SamizdatException.InvalidArgument::class.java) { bob.commit(p3) }
        assertTrue(twice.reason.contains("already committed"), twice.reason)
        assertThrows(SamizdatException.StalePending::class.java) { bob.commit(p4) }
        assertEquals("four", receive(bob, alice.address(), fourth))
        listOf(p3, p4, bob, alice).forEach { it.close() }
    }

    @Test
    fun everyExceptionClass(@TempDir dir: Path) {
        val alicePath = dir.resolve("alice.db").toString()
        device(dir, "alice", aliceKey).use { alice ->
            device(dir, "bob", bobKey).use { bob ->
                // The store: a second handle shares it, a second name (hard link) is refused, no device.
                Device.open(alicePath, aliceKey).use { second ->
                    assertArrayEquals(alice.identityKey(), second.identityKey())
                }
                val link = dir.resolve("alice-link.db")
                java.nio.file.Files.createLink(link, dir.resolve("alice.db"))
                assertThrows(SamizdatException.StoreFailure::class.java) { Device.open(link.toString(), aliceKey) }
                java.nio.file.Files.delete(link)
                val noDevice = assertThrows(SamizdatException.InvalidArgument::class.java) {
                    Device.open(dir.resolve("empty.db").toString(), aliceKey)
                }
                assertEquals("no device in this store", noDevice.reason)
                // Arguments.
                val e = assertThrows(SamizdatException.InvalidArgument::class.java) {
                    Device.create(dir.resolve("x.db").toString(), ByteArray(31), "x", 1, 0L)
                }
                assertTrue(e.reason.contains("32"), e.reason)
                assertEquals(Recovery.FIX_CALL, e.recovery())
                assertThrows(SamizdatException.InvalidArgument::class.java) { alice.hasSession(Address("", 1)) }
                assertThrows(SamizdatException.InvalidBundle::class.java) { alice.startSession(ByteArray(10)) }

                // No session yet.
                assertThrows(SamizdatException.NoSession::class.java) {
                    alice.encrypt(bob.address(), "x".encodeToByteArray())
                }
                assertThrows(SamizdatException.NoSession::class.java) { alice.safetyNumber(bob.address()) }
                alice.startSession(bob.prekeyBundle())
                val wire = alice.encrypt(bob.address(), "hi".encodeToByteArray())
                // Forged (one bit flipped) and malformed messages.
                val forged = wire.copyOf().also { it[it.size - 1] = (it[it.size - 1].toInt() xor 1).toByte() }
                assertThrows(SamizdatException.InvalidMessage::class.java) { bob.decrypt(alice.address(), forged) }
                assertThrows(SamizdatException.InvalidMessage::class.java) {
                    bob.decrypt(alice.address(), ByteArray(5))
                }
                assertThrows(SamizdatException.LimitExceeded::class.java) {
                    alice.encrypt(bob.address(), ByteArray(300 * 1024))
                }
                assertEquals("hi", receive(bob, alice.address(), wire))
                assertThrows(SamizdatException.Duplicate::class.java) { bob.decrypt(alice.address(), wire) }
                // A message more than 2,000 ahead: authentic, but out of step. Bob has received
                // counter 0 (Nr = 1); counter 2002 leaves 2,001 missing.
                var far = ByteArray(0)
                repeat(2002) { far = alice.encrypt(bob.address(), "far".encodeToByteArray()) }
                val ahead = assertThrows(SamizdatException.OutOfStep::class.java) { bob.decrypt(alice.address(), far) }
                assertEquals("message is 2001 messages ahead, more than the limit of 2000", ahead.reason)
                assertEquals(Recovery.HEAL, ahead.recovery())

                // A scan from another conversation does not match.
                device(dir, "carol", ByteArray(32) { 3 }).use { carol ->
                    carol.startSession(bob.prekeyBundle())
                    val mismatch = assertThrows(SamizdatException.IdentityMismatch::class.java) {
                        alice.safetyNumber(bob.address()).let { a ->
                            carol.safetyNumber(bob.address()).let { c -> a.compareScanned(c.scannable.toByteArray()) }
                        }
                    }
                    assertEquals(MismatchedSide.BOTH, mismatch.side)
                }

                // Bob reinstalls under the same address: his new identity is not trusted until Alice decides.
                val newBob = Device.create(dir.resolve("bob2.db").toString(), bobKey, "bob", 1, 0L)
                newBob.use {
                    val untrusted = assertThrows(SamizdatException.UntrustedIdentity::class.java) {
                        alice.startSession(newBob.prekeyBundle())
                    }
                    assertArrayEquals(newBob.identityKey(), untrusted.identityKey())
                    assertEquals(untrusted.identityKey()!!.joinToString("") { "%02x".format(it) }, untrusted.identity)
                    assertFalse(untrusted.message!!.contains("[B@"), untrusted.message)
                    alice.trustIdentity(bob.address(), untrusted.identityKey()!!)
                    alice.startSession(newBob.prekeyBundle())
                    assertEquals("again", receive(newBob, alice.address(), alice.encrypt(bob.address(), "again".encodeToByteArray())))
                }
            }
        }
        // The store was released by close(): it opens again; with the wrong key it is refused.
        assertThrows(SamizdatException.WrongStorageKey::class.java) { Device.open(alicePath, bobKey) }
        val exists = assertThrows(SamizdatException.InvalidArgument::class.java) {
            Device.create(alicePath, aliceKey, "alice", 1, 0L)
        }
        assertEquals("a device already exists in this store", exists.reason)
        Device.open(alicePath, aliceKey).use { assertEquals(Address("alice", 1), it.address()) }
    }

    @Test
    fun aOneTimePrekeyIsUsedOnce(@TempDir dir: Path) {
        device(dir, "bob", bobKey).use { bob ->
            assertEquals(PrekeyCounts(0, 0), bob.prekeyCounts())
            assertEquals(8, bob.refillPrekeys(2, 4, 0L)) // 4 of each kind
            val first = bob.prekeyBundle()
            val bundles = bob.prekeyBundles(10)
            assertEquals(3, bundles.size, "every call offers prekeys no earlier one offered: 3 are left")
            device(dir, "alice", aliceKey).use { alice ->
                device(dir, "carol", ByteArray(32) { 3 }).use { carol ->
                    // Two calls, two contacts: both first messages read.
                    alice.startSession(first)
                    carol.startSession(bundles[0])
                    assertEquals("a", receive(bob, alice.address(), alice.encrypt(bob.address(), "a".encodeToByteArray())))
                    assertEquals("c", receive(bob, carol.address(), carol.encrypt(bob.address(), "c".encodeToByteArray())))
                    assertEquals(PrekeyCounts(2, 2), bob.prekeyCounts())
                }
            }
            device(dir, "dave", ByteArray(32) { 4 }).use { dave ->
                device(dir, "eve", ByteArray(32) { 5 }).use { eve ->
                    // A server that hands one bundle to two contacts: the first one consumes its one-time prekey.
                    dave.startSession(bundles[1])
                    eve.startSession(bundles[1])
                    assertEquals("d", receive(bob, dave.address(), dave.encrypt(bob.address(), "d".encodeToByteArray())))
                    val fromEve = eve.encrypt(bob.address(), "e".encodeToByteArray())
                    // Eve's session is built on a prekey Bob no longer has: out of step, a heal brings the
                    // message (anyone can make such a message, which is why resets are rate-limited).
                    val unknown = assertThrows(SamizdatException.OutOfStep::class.java) { bob.decrypt(eve.address(), fromEve) }
                    assertTrue(unknown.reason.contains("prekey"), unknown.reason)
                    assertEquals(Recovery.HEAL, unknown.recovery())
                }
            }
            assertEquals(Rotated(false, false), bob.rotatePrekeys(10L, 1000L))
            assertEquals(Rotated(true, true), bob.rotatePrekeys(5000L, 1000L))
        }
    }

    @Test
    fun aBatchDecryptsInOneTransaction(@TempDir dir: Path) {
        device(dir, "alice", aliceKey).use { alice ->
            device(dir, "bob", bobKey).use { bob ->
                alice.startSession(bob.prekeyBundle())
                val queue = (1..5).map { IncomingMessage(alice.address(), Bytes(alice.encrypt(bob.address(), "q$it".encodeToByteArray()))) }
                val withForgery = queue + IncomingMessage(alice.address(), Bytes(ByteArray(40)))
                bob.decryptBatch(withForgery).use { batch ->
                    val results = batch.results()
                    assertEquals((1..5).map { "q$it" }, results.take(5).map { it.plaintext!!.toByteArray().decodeToString() })
                    assertNull(results[5].plaintext)
                    assertTrue(results[5].error is SamizdatException.InvalidMessage)
                    bob.commitBatch(batch)
                    assertThrows(SamizdatException.InvalidArgument::class.java) { bob.commitBatch(batch) }
                }
                val again = bob.decryptBatch(queue.take(1)).use { it.results() }
                assertTrue(again[0].error is SamizdatException.Duplicate)
            }
        }
    }

    @Test
    fun closeReleasesTheNativeObjects(@TempDir dir: Path) {
        val path = dir.resolve("alice.db").toString()
        val alice = Device.create(path, aliceKey, "alice", 1, 0L)
        alice.close()
        alice.close() // idempotent
        assertThrows(IllegalStateException::class.java) { alice.address() }
        // The store lock went with the native object: the same path opens again, repeatedly.
        repeat(3) { Device.open(path, aliceKey).use { assertEquals("alice", it.address().userId) } }
    }

    @Test
    fun theJarCarriesTheNativeLibraryWhereJnaFindsIt() {
        val resource = "${com.sun.jna.Platform.RESOURCE_PREFIX}/libsamizdat_ffi.so"
        assertNotNull(javaClass.classLoader.getResource(resource), "missing classpath resource $resource")
        // JNA's own lookup on the classpath (what a consumer of the jar gets without jna.library.path).
        val extracted = Native.extractFromResourcePath("samizdat_ffi")
        val built = File(System.getProperty("samizdat.native.library"))
        assertEquals(built.length(), extracted.length())
    }

    /** Issue 11, attack 3: Alice's store is restored from a backup; her next message reuses a counter. */
    @Test
    fun aRestoredSenderNeverReusesAKeyAndIsReported(@TempDir dir: Path) {
        val alicePath = dir.resolve("alice.db")
        val backup = dir.resolve("backup.db")
        device(dir, "bob", bobKey).use { bob ->
            val bobAddress = device(dir, "alice", aliceKey).use { alice ->
                val bobAddress = alice.startSession(bob.prekeyBundle())
                assertEquals("hello", receive(bob, alice.address(), alice.encrypt(bobAddress, "hello".encodeToByteArray())))
                assertEquals("hi", receive(alice, bobAddress, bob.encrypt(alice.address(), "hi".encodeToByteArray())))
                bobAddress
            }
            java.nio.file.Files.copy(alicePath, backup) // the backup, taken while closed
            val original = Device.open(alicePath.toString(), aliceKey).use { alice ->
                alice.encrypt(bobAddress, "sent before the restore".encodeToByteArray()).also {
                    assertEquals("sent before the restore", receive(bob, alice.address(), it))
                }
            }
            java.nio.file.Files.copy(backup, alicePath, java.nio.file.StandardCopyOption.REPLACE_EXISTING)
            Device.open(alicePath.toString(), aliceKey).use { alice ->
                val again = alice.encrypt(bobAddress, "sent after the restore".encodeToByteArray())
                val rolledBack = assertThrows(SamizdatException.OutOfStep::class.java) { bob.decrypt(alice.address(), again) }
                assertTrue(rolledBack.reason.contains("went backwards"), rolledBack.reason)
                assertThrows(SamizdatException.Duplicate::class.java) { bob.decrypt(alice.address(), original) }
                assertEquals("next", receive(bob, alice.address(), alice.encrypt(bobAddress, "next".encodeToByteArray())))
            }
        }
    }

    /** Issue 11, item 2: scrub() rewrites the store, empties its log, and the device goes on. */
    @Test
    fun scrubEmptiesTheLogAndTheDeviceGoesOn(@TempDir dir: Path) {
        device(dir, "alice", aliceKey).use { alice ->
            device(dir, "bob", bobKey).use { bob ->
                val bobAddress = alice.startSession(bob.prekeyBundle())
                for (i in 0 until 20) {
                    assertEquals("a$i", receive(bob, alice.address(), alice.encrypt(bobAddress, "a$i".encodeToByteArray())))
                    assertEquals("b$i", receive(alice, bobAddress, bob.encrypt(alice.address(), "b$i".encodeToByteArray())))
                }
                val database = dir.resolve("alice.db").toFile()
                val before = database.length()
                assertEquals(ScrubResult.DONE, alice.scrub())
                val log = File("$database-wal")
                assertTrue(!log.exists() || log.length() == 0L, "the log is empty after a scrub")
                assertTrue(database.length() <= before, "a scrub never grows the database")
                assertEquals(ScrubResult.DONE, alice.scrub())
                assertEquals("after", receive(bob, alice.address(), alice.encrypt(bobAddress, "after".encodeToByteArray())))
            }
        }
    }

    /** Issue 11, attacks 4 and 5: a second handle shares the store; a pending commits only on its own device. */
    @Test
    fun handlesShareTheStoreAndPendingsStayOnTheirDevice(@TempDir dir: Path) {
        device(dir, "alice", aliceKey).use { alice ->
            device(dir, "bob", bobKey).use { bob ->
                device(dir, "carol", ByteArray(32) { 3 }).use { carol ->
                    val bobAddress = alice.startSession(bob.prekeyBundle())
                    alice.startSession(carol.prekeyBundle())
                    Device.open(dir.resolve("alice.db").toString(), aliceKey).use { second ->
                        val wires = (0 until 10).map { i ->
                            (if (i % 2 == 0) alice else second).encrypt(bobAddress, "m$i".encodeToByteArray())
                        }
                        assertEquals((0 until 10).map { "m$it" }, wires.map { receive(bob, alice.address(), it) })
                    }
                    assertEquals("c", receive(carol, alice.address(), alice.encrypt(carol.address(), "c".encodeToByteArray())))
                    val toBob = alice.encrypt(bobAddress, "to bob".encodeToByteArray())
                    bob.decrypt(alice.address(), toBob).use { pending ->
                        assertThrows(SamizdatException.InvalidArgument::class.java) { carol.commit(pending) }
                    }
                    // Nothing was written: Bob decrypts it again and commits (a commit attempt uses up its pending).
                    assertEquals("to bob", receive(bob, alice.address(), toBob))
                }
            }
        }
    }

    @Test
    fun costOfOneRound(@TempDir dir: Path) {
        device(dir, "alice", aliceKey).use { alice ->
            device(dir, "bob", bobKey).use { bob ->
                alice.startSession(bob.prekeyBundle())
                val message = ByteArray(100)
                fun round() = receive(bob, alice.address(), alice.encrypt(bob.address(), message))
                repeat(20) { round() } // warm-up (JIT, page cache)
                val rounds = 200
                val started = System.nanoTime()
                repeat(rounds) { round() }
                val perRound = (System.nanoTime() - started) / 1000.0 / rounds
                println("kotlin: one encrypt+decrypt+commit round (SQLite, 100 bytes): %.0f us".format(perRound))
            }
        }
    }
}
