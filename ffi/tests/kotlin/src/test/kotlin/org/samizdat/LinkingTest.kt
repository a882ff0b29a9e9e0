// Linking a new device through the Kotlin bindings (PROTOCOL.md 23.8): Alice's laptop shows a code,
// her phone links it, the laptop finishes with her user identity, her list and the contact it was given;
// a message for another offer, a second finish and an expired code are refused with their codes and
// write nothing; Bob takes the new list and talks to the laptop. Then every other refusal a binding can
// provoke, each with its code, recovery and message. The same scenarios as
// ffi/tests/python/test_linking.py; core/tests/linking.rs has the full set.
package org.samizdat

import java.nio.file.Path
import java.time.Instant
import org.junit.jupiter.api.Assertions.assertArrayEquals
import org.junit.jupiter.api.Assertions.assertEquals
import org.junit.jupiter.api.Assertions.assertFalse
import org.junit.jupiter.api.Assertions.assertThrows
import org.junit.jupiter.api.Assertions.assertTrue
import org.junit.jupiter.api.Test
import org.junit.jupiter.api.io.TempDir
import org.junit.jupiter.api.function.Executable

// One day after the epoch; a code lives ten minutes (LINK_CODE_LIFETIME_SECS).
private const val NOW = 86_400L
private const val ELEVEN_MINUTES = 11 * 60L

// MAX_DEVICES_PER_USER (PROTOCOL.md 23.2).
private const val MAX_DEVICES_PER_USER = 32

private fun member(dir: Path, name: String, deviceId: Long, key: Byte): Device =
    Device.openOrCreate(dir.resolve("$name-$deviceId.db").toString(), ByteArray(32) { key }, name, deviceId, NOW)

private fun entry(device: Device): ListedDevice = ListedDevice(device.address().deviceId, device.identity())

// A device list as a list of its fields (the keys are values, compared by content).
private fun info(list: DeviceListInfo): List<Any> =
    listOf(list.userId, list.version, list.userIdentityKey) + list.devices.map { it.deviceId to it.identityKey }

private fun info(signedList: ByteArray): List<Any> = info(verifyDeviceList(signedList))

// The failure `call` throws, checked to be `T`, to report `code` and `recovery`, and to say something.
private inline fun <reified T : SamizdatException> refused(code: String, recovery: Recovery, call: Executable): T {
    val error = assertThrows(T::class.java, call)
    assertEquals(code, error.code())
    assertEquals(recovery, error.recovery())
    assertEquals(code, error.kind().code())
    assertTrue(error.message!!.isNotBlank())
    return error
}

private fun reasonOf(error: SamizdatException): String = when (error) {
    is SamizdatException.InvalidArgument -> error.reason
    is SamizdatException.InvalidMessage -> error.reason
    is SamizdatException.Duplicate -> error.reason
    is SamizdatException.LimitExceeded -> error.reason
    else -> error.message!!
}

class LinkingTest {
    @Test
    fun aPhoneLinksALaptopAndBobTalksToIt(@TempDir dir: Path) {
        val (alice, bobUser) = UserIdentity.generate() to UserIdentity.generate()
        val laptopPath = dir.resolve("alice-2.db")
        member(dir, "alice", 1, 1).use { phone ->
            member(dir, "alice", 2, 2).use { laptop ->
                member(dir, "bob", 1, 3).use { bob ->
                    phone.setDeviceList(alice.signDeviceList("alice", 1L, listOf(entry(phone))))
                    bob.setDeviceList(bobUser.signDeviceList("bob", 1L, listOf(entry(bob))))
                    // Bob pins Alice from her phone's bundle, the phone pins Bob from his; they talk.
                    bob.startSession(phone.prekeyBundle())
                    phone.startSession(bob.prekeyBundle())
                    phone.decrypt(bob.address(), bob.encrypt(phone.address(), "hello Alice".toByteArray())).use { phone.commit(it) }

                    // The laptop shows a code; the phone scans it and links the laptop.
                    val offer = laptop.linkOffer(NOW)
                    assertEquals(laptop.address(), offer.address())
                    assertTrue(offer.code().isNotEmpty())
                    val linked = phone.linkDevice(offer.code(), alice, NOW)
                    assertTrue(linked.listChanged)
                    assertEquals(laptop.address(), linked.device)
                    val list = verifyDeviceList(linked.deviceList.toByteArray())
                    assertEquals(2L, list.version)
                    assertEquals(listOf(1L, 2L), list.devices.map { it.deviceId })
                    assertEquals(laptop.identity(), list.devices[1].identityKey)
                    assertArrayEquals(linked.deviceList.toByteArray(), phone.deviceList())

                    // Before the laptop finishes, Bob (with Alice's old list) refuses it: no ghost.
                    assertThrows(SamizdatException.UntrustedIdentity::class.java) { bob.startSession(laptop.prekeyBundle()) }

                    // The message of another offer does not open: invalid_message, nothing written.
                    val before = rows(laptopPath)
                    val other = laptop.linkOffer(NOW)
                    val wrong = refused<SamizdatException.InvalidMessage>("invalid_message", Recovery.DROP) {
                        laptop.finishLink(other, linked.message.toByteArray(), NOW)
                    }
                    assertTrue(wrong.reason.contains("not for this offer"), wrong.reason)
                    assertEquals(before, rows(laptopPath))

                    // The laptop finishes: Alice's user identity, her list, and Bob pinned as the phone had him.
                    val provisioned = laptop.finishLink(offer, linked.message.toByteArray(), NOW)
                    assertArrayEquals(alice.publicKey(), provisioned.userIdentity.publicKey())
                    assertArrayEquals(alice.seed(), provisioned.userIdentity.seed())
                    assertArrayEquals(linked.deviceList.toByteArray(), provisioned.deviceList.toByteArray())
                    assertEquals(info(phone.deviceList()!!), info(laptop.deviceList()!!))
                    assertEquals(1, provisioned.pinnedUsers)
                    assertEquals(1, provisioned.newlyPinned)
                    assertEquals(phone.address(), provisioned.linkedBy)
                    val bobOnLaptop = laptop.userTrust("bob")!!
                    assertArrayEquals(bobUser.publicKey(), bobOnLaptop.userIdentityKey())
                    assertEquals(info(phone.userTrust("bob")!!.list()), info(bobOnLaptop.list()))
                    // No secret in what Kotlin prints.
                    val hex = alice.seed().joinToString("") { "%02x".format(it) }
                    assertFalse(provisioned.toString().contains(hex), provisioned.toString())
                    assertFalse(offer.toString().contains(offer.code().joinToString("") { "%02x".format(it) }))

                    // Finishing twice: duplicate, nothing written.
                    val provisionedRows = rows(laptopPath)
                    refused<SamizdatException.Duplicate>("duplicate", Recovery.DROP) { laptop.finishLink(offer, linked.message.toByteArray(), NOW) }
                    assertEquals(provisionedRows, rows(laptopPath))

                    // A code scanned eleven minutes after it was made: expired, invalid_argument.
                    val late = laptop.linkOffer(NOW)
                    val phoneRows = rows(dir.resolve("alice-1.db"))
                    val expired = refused<SamizdatException.InvalidArgument>("invalid_argument", Recovery.FIX_CALL) {
                        phone.linkDevice(late.code(), alice, NOW + ELEVEN_MINUTES)
                    }
                    assertTrue(expired.reason.contains("expired"), expired.reason)
                    assertEquals(phoneRows, rows(dir.resolve("alice-1.db")))
                    // Scanned in time, it links again without a new list; finished eleven minutes late, it is refused.
                    val again = phone.linkDevice(late.code(), alice, NOW)
                    assertFalse(again.listChanged)
                    assertArrayEquals(linked.deviceList.toByteArray(), again.deviceList.toByteArray())
                    refused<SamizdatException.InvalidArgument>("invalid_argument", Recovery.FIX_CALL) {
                        laptop.finishLink(late, again.message.toByteArray(), NOW + ELEVEN_MINUTES)
                    }

                    // Bob takes the published list, starts a session from the laptop's bundle, and they talk.
                    val change = bob.updateDeviceList(linked.deviceList.toByteArray())
                    assertEquals(listOf(2L), change.added.map { it.deviceId })
                    assertEquals(laptop.address(), bob.startSession(laptop.prekeyBundle()))
                    laptop.decrypt(bob.address(), bob.encrypt(laptop.address(), "hi laptop".toByteArray())).use { pending ->
                        assertEquals("hi laptop", String(pending.plaintext()))
                        assertArrayEquals(bob.identityKey(), pending.senderIdentity())
                        laptop.commit(pending)
                    }
                    bob.decrypt(laptop.address(), laptop.encrypt(bob.address(), "hi Bob".toByteArray())).use { pending ->
                        assertEquals("hi Bob", String(pending.plaintext()))
                        bob.commit(pending)
                    }
                }
            }
        }
    }

    @Test
    fun everyRefusalHasItsCodeRecoveryAndMessage(@TempDir dir: Path) {
        val alice = UserIdentity.generate()
        member(dir, "alice", 1, 1).use { phone ->
            member(dir, "alice", 2, 2).use { laptop ->
                member(dir, "alice", 3, 4).use { tablet ->
                    member(dir, "carol", 1, 5).use { carol ->
                        phone.setDeviceList(alice.signDeviceList("alice", 1L, listOf(entry(phone))))
                        val offer = laptop.linkOffer(Instant.ofEpochSecond(NOW))
                        val cases: List<Triple<String, Executable, String>> = listOf(
                            Triple("invalid_argument", Executable { phone.linkDevice(byteArrayOf(1, 2, 3), alice, NOW) }, "not a link code"),
                            Triple("invalid_argument", Executable { phone.linkDevice(carol.linkOffer(NOW).code(), alice, NOW) }, "carol"),
                            Triple("invalid_argument", Executable { phone.linkDevice(phone.linkOffer(NOW).code(), alice, NOW) }, "itself"),
                            // A device with no list of its own has nothing to add the laptop to.
                            Triple("invalid_argument", Executable { tablet.linkDevice(offer.code(), alice, NOW) }, "no device list"),
                            // Another user identity than the one of the phone's list.
                            Triple("invalid_argument", Executable { phone.linkDevice(offer.code(), UserIdentity.generate(), NOW) }, "user identity"),
                            // The laptop's offer finished on another device.
                            Triple("invalid_argument", Executable { tablet.finishLink(offer, ByteArray(64), NOW) }, "link code is of user"),
                            Triple("invalid_message", Executable { laptop.finishLink(offer, byteArrayOf(1, 2, 3), NOW) }, "not a link message"),
                        )
                        for ((code, call, text) in cases) {
                            val recovery = if (code == "invalid_message") Recovery.DROP else Recovery.FIX_CALL
                            val error = when (code) {
                                "invalid_message" -> refused<SamizdatException.InvalidMessage>(code, recovery, call)
                                else -> refused<SamizdatException.InvalidArgument>(code, recovery, call)
                            }
                            assertTrue(reasonOf(error).contains(text), "${reasonOf(error)} should say $text")
                        }

                        // An altered message: invalid_message; the unaltered one still links.
                        val linked = phone.linkDevice(offer.code(), alice, Instant.ofEpochSecond(NOW))
                        val altered = linked.message.toByteArray().also { it[it.size - 1] = (it[it.size - 1].toInt() xor 1).toByte() }
                        refused<SamizdatException.InvalidMessage>("invalid_message", Recovery.DROP) { laptop.finishLink(offer, altered, NOW) }
                        val provisioned = laptop.finishLink(offer, linked.message.toByteArray(), Instant.ofEpochSecond(NOW))
                        assertEquals(0, provisioned.pinnedUsers)

                        // A full list: limit_exceeded (32 devices: the phone and 31 others).
                        val others = (2..MAX_DEVICES_PER_USER).map { ListedDevice(it.toLong() + 10, IdentityKey(UserIdentity.generate().publicKey())) }
                        phone.setDeviceList(alice.signDeviceList("alice", 3L, listOf(entry(phone)) + others))
                        val full = refused<SamizdatException.LimitExceeded>("limit_exceeded", Recovery.FIX_CALL) {
                            phone.linkDevice(tablet.linkOffer(NOW).code(), alice, NOW)
                        }
                        assertTrue(full.reason.contains("full"), full.reason)
                    }
                }
            }
        }
    }
}
