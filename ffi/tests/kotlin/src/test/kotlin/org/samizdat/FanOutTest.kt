// Sending to a user through the Kotlin bindings (PROTOCOL.md 23.4, 23.6, 23.7): a fan-out reaches the
// contact's listed devices that have a session and our other device as a sent sync, reports the devices
// without one, is finished for them with encryptToUserDevices, refuses a user that is not pinned and a
// plaintext past the limit with every row of the store as it was; per-user safety numbers on a device are
// the same on both sides, stable when a device is added, changed by a new user identity. A fan-out kept
// for healing (PROTOCOL.md 23.6, "Kept, or not") keeps each message to a contact's device in that
// device's outbox (not the sent sync), sends it again to the device that heals naming it, and is
// acknowledged per device. The same scenarios as ffi/tests/python/test_fan_out.py;
// core/tests/fan_out.rs and core/tests/fan_out_kept.rs have the full set.
package org.samizdat

import java.nio.file.Path
import java.time.Duration
import java.time.Instant
import org.junit.jupiter.api.Assertions.assertArrayEquals
import org.junit.jupiter.api.Assertions.assertEquals
import org.junit.jupiter.api.Assertions.assertInstanceOf
import org.junit.jupiter.api.Assertions.assertNotEquals
import org.junit.jupiter.api.Assertions.assertNull
import org.junit.jupiter.api.Assertions.assertThrows
import org.junit.jupiter.api.Assertions.assertTrue
import org.junit.jupiter.api.Test
import org.junit.jupiter.api.io.TempDir

// MAX_FAN_OUT_PLAINTEXT_LEN (PROTOCOL.md 11, 23.6): MAX_PLAINTEXT_LEN (245,760) - 512.
private const val MAX_FAN_OUT_PLAINTEXT_LEN = 245_760 - 512

private fun member(dir: Path, name: String, deviceId: Long, key: Byte): Device =
    Device.openOrCreate(dir.resolve("$name-$deviceId.db").toString(), ByteArray(32) { key }, name, deviceId, 0L)

private fun entry(device: Device): ListedDevice = ListedDevice(device.address().deviceId, device.identity())

// core/src/device/healing.rs: HealPolicy::default().outbox_max_age (30 days).
private val OUTBOX_MAX_AGE: Duration = Duration.ofDays(30)

/**
 * Alice's phone and laptop, Bob's two devices, each list set on its user's devices; the phone starts a
 * session with every other device (whose bundle pins its user) and each reads its hello. Runs `test`
 * with (phone, laptop, bob1, bob2), then closes them.
 */
private fun keptWorld(dir: Path, test: (Device, Device, Device, Device) -> Unit) {
    val (alice, bob) = UserIdentity.generate() to UserIdentity.generate()
    member(dir, "alice", 1, 1).use { phone ->
        member(dir, "alice", 2, 2).use { laptop ->
            member(dir, "bob", 1, 3).use { bob1 ->
                member(dir, "bob", 2, 4).use { bob2 ->
                    val aliceList = alice.signDeviceList("alice", 1L, listOf(entry(phone), entry(laptop)))
                    val bobList = bob.signDeviceList("bob", 1L, listOf(entry(bob1), entry(bob2)))
                    listOf(phone, laptop).forEach { it.setDeviceList(aliceList) }
                    listOf(bob1, bob2).forEach { it.setDeviceList(bobList) }
                    for (other in listOf(laptop, bob1, bob2)) {
                        phone.startSession(other.prekeyBundle())
                        other.decrypt(phone.address(), phone.encrypt(other.address(), "hello".toByteArray())).use { other.commit(it) }
                    }
                    test(phone, laptop, bob1, bob2)
                }
            }
        }
    }
}

/** Decrypt, "store", commit: the kind, the text, the message id, and what the commit returned (to send). */
private fun take(to: Device, from: Device, wire: ByteArray): Triple<Pair<MessageKind, String>, ByteArray?, List<Outgoing>> =
    to.decrypt(from.address(), wire).use { pending ->
        val got = pending.kind() to pending.plaintext().decodeToString()
        val id = pending.messageId()
        Triple(got, id, to.commit(pending))
    }

class FanOutTest {
    @Test
    fun aFanOutReachesTheListedDevicesAndOurOtherDevice(@TempDir dir: Path) {
        val (alice, bob) = UserIdentity.generate() to UserIdentity.generate()
        val phonePath = dir.resolve("alice-1.db")
        member(dir, "alice", 1, 1).use { phone ->
            member(dir, "alice", 2, 2).use { laptop ->
                member(dir, "bob", 1, 3).use { bob1 ->
                    member(dir, "bob", 2, 4).use { bob2 ->
                        val aliceList = alice.signDeviceList("alice", 1L, listOf(entry(phone), entry(laptop)))
                        val bobList = bob.signDeviceList("bob", 1L, listOf(entry(bob1), entry(bob2)))
                        listOf(phone, laptop).forEach { it.setDeviceList(aliceList) }
                        listOf(bob1, bob2).forEach { it.setDeviceList(bobList) }

                        // Bob is not pinned yet: no fan-out, and nothing written.
                        val before = rows(phonePath)
                        val notPinned = assertThrows(SamizdatException.NoSession::class.java) { phone.encryptToUser("bob", "hi".toByteArray()) }
                        assertEquals(ErrorKind.NO_SESSION, notPinned.kind())
                        assertTrue(notPinned.reason.contains("no device list of user"))
                        assertEquals(before, rows(phonePath))

                        // Sessions with Bob's first device (its bundle pins Bob) and with the laptop.
                        phone.startSession(bob1.prekeyBundle())
                        phone.startSession(laptop.prekeyBundle())
                        val sent = phone.encryptToUser("bob", "hello Bob".toByteArray())
                        assertEquals(listOf(Address("bob", 1L)), sent.messages.map { it.to })
                        assertEquals(listOf(laptop.address()), sent.syncs.map { it.to })
                        assertEquals(listOf(Address("bob", 2L)), sent.missing)
                        val direct = bob1.decrypt(phone.address(), sent.messages[0].message.toByteArray())
                        assertEquals(MessageKind.DIRECT, direct.kind())
                        assertEquals("hello Bob", String(direct.plaintext()))
                        assertNull(direct.syncRecipient())
                        bob1.commit(direct)
                        val sync = laptop.decrypt(phone.address(), sent.syncs[0].message.toByteArray())
                        assertEquals(MessageKind.SENT_SYNC, sync.kind())
                        assertEquals("bob", sync.syncRecipient())
                        assertEquals("hello Bob", String(sync.plaintext()))
                        assertArrayEquals(phone.identityKey(), sync.senderIdentity())
                        laptop.commit(sync)

                        // The missing device: a session from its bundle, then the fan-out to it alone.
                        phone.startSession(bob2.prekeyBundle())
                        val rest = phone.encryptToUserDevices("bob", "hello Bob".toByteArray(), sent.missing)
                        assertEquals(listOf(Address("bob", 2L)), rest.messages.map { it.to })
                        assertTrue(rest.syncs.isEmpty() && rest.missing.isEmpty())
                        val late = bob2.decrypt(phone.address(), rest.messages[0].message.toByteArray())
                        assertEquals("hello Bob", String(late.plaintext()))
                        bob2.commit(late)

                        // Refusals write nothing: a device no list names, another user's device, our
                        // own user, and a plaintext one byte past the limit.
                        val unchanged = rows(phonePath)
                        val unlisted = assertThrows(SamizdatException.UntrustedIdentity::class.java) {
                            phone.encryptToUserDevices("bob", "x".toByteArray(), listOf(Address("bob", 9L)))
                        }
                        assertNull(unlisted.identityKey())
                        assertThrows(SamizdatException.InvalidArgument::class.java) {
                            phone.encryptToUserDevices("bob", "x".toByteArray(), listOf(Address("carol", 1L)))
                        }
                        assertThrows(SamizdatException.InvalidArgument::class.java) { phone.encryptToUser("alice", "x".toByteArray()) }
                        assertThrows(SamizdatException.LimitExceeded::class.java) {
                            phone.encryptToUser("bob", ByteArray(MAX_FAN_OUT_PLAINTEXT_LEN + 1))
                        }
                        assertEquals(unchanged, rows(phonePath))
                        // At the limit it goes through.
                        val largest = ByteArray(MAX_FAN_OUT_PLAINTEXT_LEN) { 7 }
                        val big = phone.encryptToUser("bob", largest)
                        assertEquals(2, big.messages.size)
                        val bigSync = laptop.decrypt(phone.address(), big.syncs[0].message.toByteArray())
                        assertEquals(MessageKind.SENT_SYNC, bigSync.kind())
                        assertArrayEquals(largest, bigSync.plaintext())
                    }
                }
            }
        }
    }

    @Test
    fun userSafetyNumbersOnDevices(@TempDir dir: Path) {
        val (alice, bob) = UserIdentity.generate() to UserIdentity.generate()
        member(dir, "alice", 1, 1).use { phone ->
            member(dir, "bob", 1, 3).use { bob1 ->
                member(dir, "bob", 2, 4).use { bob2 ->
                    member(dir, "erin", 1, 5).use { erin ->
                        val aliceList = alice.signDeviceList("alice", 1L, listOf(entry(phone)))
                        val bobList = bob.signDeviceList("bob", 1L, listOf(entry(bob1)))
                        phone.setDeviceList(aliceList)
                        bob1.setDeviceList(bobList)
                        phone.updateDeviceList(bobList)
                        bob1.updateDeviceList(aliceList)

                        val onAlice = phone.userSafetyNumber("bob")
                        val onBob = bob1.userSafetyNumber("alice")
                        assertEquals(onAlice.digits, onBob.digits)
                        onAlice.compareScanned(onBob.scannable.toByteArray())
                        // From the two user identities alone.
                        assertEquals(userSafetyNumber("alice", alice.publicKey(), "bob", bob.publicKey()).digits, onAlice.digits)

                        // Bob links a second device: the same number.
                        phone.updateDeviceList(bob.signDeviceList("bob", 2L, listOf(entry(bob1), entry(bob2))))
                        assertEquals(onAlice.digits, phone.userSafetyNumber("bob").digits)

                        // Bob's new user identity: only the app's decision moves the pin, and the number changes.
                        val bobNew = UserIdentity.generate()
                        val renewed = bobNew.signDeviceList("bob", 1L, listOf(entry(bob1)))
                        assertThrows(SamizdatException.UntrustedIdentity::class.java) { phone.updateDeviceList(renewed) }
                        assertEquals(onAlice.digits, phone.userSafetyNumber("bob").digits)
                        phone.trustNewUserIdentity(renewed)
                        bob1.setDeviceList(renewed)
                        val changed = phone.userSafetyNumber("bob")
                        assertNotEquals(onAlice.digits, changed.digits)
                        assertEquals(bob1.userSafetyNumber("alice").digits, changed.digits)

                        // Without our own list: InvalidArgument; a user not pinned: NoSession.
                        erin.updateDeviceList(renewed)
                        val noList = assertThrows(SamizdatException.InvalidArgument::class.java) { erin.userSafetyNumber("bob") }
                        assertTrue(noList.reason.contains("no device list of its own user"))
                        assertThrows(SamizdatException.NoSession::class.java) { phone.userSafetyNumber("carol") }
                    }
                }
            }
        }
    }

    @Test
    fun aKeptFanOutIsSentAgainToTheDeviceThatHealsAndAcknowledgedPerDevice(@TempDir dir: Path) {
        keptWorld(dir) { phone, laptop, bob1, bob2 ->
            val start = Instant.ofEpochSecond(1_000)
            val sent = phone.encryptToUserKept("bob", "meet at the station".toByteArray(), start)
            assertEquals(listOf(bob1.address(), bob2.address()), sent.messages.map { it.to })
            assertEquals(listOf(laptop.address()), sent.syncs.map { it.to })
            assertTrue(sent.missing.isEmpty())
            // One entry in each contact device's outbox; the sent sync is not kept.
            assertEquals(1, phone.outboxLen(bob1.address()))
            assertEquals(1, phone.outboxLen(bob2.address()))
            assertEquals(0, phone.outboxLen(laptop.address()), "a sent sync is not kept")
            // The plain fan-out keeps nothing.
            phone.encryptToUser("bob", "not kept".toByteArray())
            assertEquals(1, phone.outboxLen(bob1.address()))
            assertEquals(1, phone.outboxLen(bob2.address()))

            // bob1 reads its copy; bob2's is lost, and bob2 heals naming it.
            val (toBob1, toBob2) = sent.messages[0].message.toByteArray() to sent.messages[1].message.toByteArray()
            val (got1, id1, _) = take(bob1, phone, toBob1)
            assertEquals(MessageKind.DIRECT to "meet at the station", got1)
            val healed = assertInstanceOf(HealResult.Sent::class.java, bob2.heal(phone.prekeyBundle(), listOf(toBob2), 200L))
            assertEquals(phone.address(), healed.reset.to)
            val (reset, _, resent) = take(phone, bob2, healed.reset.message.toByteArray())
            assertEquals(MessageKind.CONTROL to "", reset)
            assertEquals(listOf(bob2.address()), resent.map { it.to }, "the message kept for bob2, to bob2 only")
            val (got2, id2, _) = take(bob2, phone, resent[0].message.toByteArray())
            assertEquals(MessageKind.DIRECT to "meet at the station", got2)
            assertArrayEquals(messageId(toBob2), id2, "the id of the message as first sent")
            assertEquals(0, bob2.awaitingResends(phone.address()))

            // The laptop's sync was not kept: a reset naming it brings nothing.
            val syncHeal = assertInstanceOf(HealResult.Sent::class.java, laptop.heal(phone.prekeyBundle(), listOf(sent.syncs[0].message.toByteArray()), 300L))
            assertEquals(emptyList<Outgoing>(), take(phone, laptop, syncHeal.reset.message.toByteArray()).third)

            // Each device's copy is acknowledged on its own: bob2's id is not in bob1's outbox.
            assertEquals(0, phone.acknowledge(bob1.address(), listOf(messageId(toBob2))))
            assertEquals(1, phone.acknowledge(bob1.address(), listOf(id1!!)))
            assertEquals(0, phone.outboxLen(bob1.address()))
            assertEquals(1, phone.outboxLen(bob2.address()))
            assertEquals(1, phone.acknowledge(bob2.address(), listOf(id2!!)))
            assertEquals(0, phone.outboxLen(bob2.address()))
        }
    }

    @Test
    fun aKeptFanOutToSomeDevicesKeepsOnlyTheirsAtTheTimeGiven(@TempDir dir: Path) {
        keptWorld(dir) { phone, laptop, bob1, bob2 ->
            val start = Instant.ofEpochSecond(5_000)
            val sent = phone.encryptToUserDevicesKept("bob", "only bob2".toByteArray(), listOf(bob2.address()), start)
            assertEquals(listOf(bob2.address()), sent.messages.map { it.to })
            assertTrue(sent.syncs.isEmpty() && sent.missing.isEmpty())
            assertEquals(listOf(0, 1, 0), listOf(bob1, bob2, laptop).map { phone.outboxLen(it.address()) })
            assertEquals(MessageKind.DIRECT to "only bob2", take(bob2, phone, sent.messages[0].message.toByteArray()).first)
            // The entry is dated `start`: it expires at start + outbox_max_age, not before.
            assertEquals(0, phone.expireOutbox(start.plus(OUTBOX_MAX_AGE).minusSeconds(1)))
            assertEquals(1, phone.expireOutbox(start.plus(OUTBOX_MAX_AGE)))
            assertEquals(0, phone.outboxLen(bob2.address()))

            // Refusals keep nothing: a time before the epoch, a device the list does not name, a user not pinned.
            val negative = assertThrows(SamizdatException.InvalidArgument::class.java) {
                phone.encryptToUserKept("bob", "x".toByteArray(), -1L)
            }
            assertTrue(negative.reason.contains("now is negative"), negative.reason)
            assertThrows(SamizdatException.UntrustedIdentity::class.java) {
                phone.encryptToUserDevicesKept("bob", "x".toByteArray(), listOf(Address("bob", 9L)), 6_000L)
            }
            assertThrows(SamizdatException.NoSession::class.java) { phone.encryptToUserKept("carol", "x".toByteArray(), 6_000L) }
            assertEquals(listOf(0, 0), listOf(bob1, bob2).map { phone.outboxLen(it.address()) })
        }
    }
}
