// Groups that address users through the Kotlin bindings (PROTOCOL.md 18.8): a member user's member
// devices are the devices of its newest verified list; a device a newer list drops stops being a member
// before the next groupEncrypt (a new chain it never gets) though the app never removed it, and a device
// a newer list adds gets the chain; removeGroupUsers removes a user's devices; a user with no verified
// list, and a member user's device named to removeGroupMembers, are refused with their codes and write
// nothing. The same scenarios as ffi/tests/python/test_group_users.py; core/tests/group_users.rs has the
// full set.
package org.samizdat

import java.nio.file.Path
import org.junit.jupiter.api.Assertions.assertEquals
import org.junit.jupiter.api.Assertions.assertThrows
import org.junit.jupiter.api.Assertions.assertTrue
import org.junit.jupiter.api.Test
import org.junit.jupiter.api.function.Executable
import org.junit.jupiter.api.io.TempDir

private val TEAM = "team".encodeToByteArray()

private fun device(dir: Path, name: String, deviceId: Long, key: Byte): Device =
    Device.openOrCreate(dir.resolve("$name-$deviceId.db").toString(), ByteArray(32) { key }, name, deviceId, 0L)

private fun listed(device: Device): ListedDevice = ListedDevice(device.address().deviceId, device.identity())

/** Sessions both ways between every two of `devices`: one starts it from a bundle, the other reads a hello. */
private fun connect(devices: List<Device>) {
    for (a in devices) {
        for (b in devices) {
            if (a.address() != b.address() && !a.hasSession(b.address())) {
                a.startSession(b.prekeyBundle())
                b.decrypt(a.address(), a.encrypt(b.address(), "hello".encodeToByteArray())).use { b.commit(it) }
            }
        }
    }
}

/** `from`'s group message of `text`, its distributions delivered among `devices`: the message, and who got a chain. */
private fun send(from: Device, devices: List<Device>, text: String): Pair<ByteArray, List<Address>> {
    val sent = from.groupEncrypt(TEAM, text.encodeToByteArray())
    for (outgoing in sent.distributions) {
        val to = devices.single { it.address() == outgoing.to }
        to.decrypt(from.address(), outgoing.message.toByteArray()).use { pending ->
            assertEquals(MessageKind.CONTROL, pending.kind(), "a distribution: nothing for the app")
            assertEquals(emptyList<Outgoing>(), to.commit(pending))
        }
    }
    return sent.message.toByteArray() to sent.distributions.map { it.to }
}

/** What `to` reads of the group message `message` from `from` (committed). */
private fun read(to: Device, from: Device, message: ByteArray): String =
    to.decrypt(from.address(), message).use { pending ->
        assertEquals(MessageKind.GROUP, pending.kind())
        pending.plaintext().decodeToString().also { to.commit(pending) }
    }

// The failure `call` throws, checked to be `T` with `code` and `recovery`, and a readable message.
private inline fun <reified T : SamizdatException> refused(code: String, recovery: Recovery, call: Executable): T {
    val error = assertThrows(T::class.java, call)
    assertEquals(code, error.code())
    assertEquals(code, error.kind().code())
    assertEquals(recovery, error.recovery())
    // Kotlin builds the message from the fields: "reason=<the core error's text>".
    val message = checkNotNull(error.message) { "no message" }
    assertTrue(Regex("^reason=[^,\\s]").containsMatchIn(message), message)
    return error
}

class GroupUsersTest {
    @Test
    fun memberDevicesFollowTheUsersNewestList(@TempDir dir: Path) {
        val bob = UserIdentity.generate()
        device(dir, "alice", 1, 1).use { a1 ->
            device(dir, "bob", 1, 2).use { b1 ->
                device(dir, "bob", 2, 3).use { b2 ->
                    device(dir, "bob", 3, 4).use { b3 ->
                        val all = listOf(a1, b1, b2, b3)
                        connect(all)
                        for (b in listOf(b1, b2, b3)) b.createGroup(TEAM, listOf(a1.address()))
                        // Alice's device holds Bob's list naming b1 and b2; her app adds the user Bob.
                        a1.updateDeviceList(bob.signDeviceList("bob", 1L, listOf(listed(b1), listed(b2))))
                        a1.createGroup(TEAM, emptyList())
                        a1.addGroupUsers(TEAM, listOf("bob"))
                        assertEquals(listOf("bob"), a1.groupUsers(TEAM))
                        assertEquals(listOf(b1.address(), b2.address()), a1.groupMembers(TEAM))
                        val (one, given) = send(a1, all, "one")
                        assertEquals(listOf(b1.address(), b2.address()), given)
                        assertEquals("one", read(b1, a1, one))
                        assertEquals("one", read(b2, a1, one))

                        // Bob's next list drops b1 (lost) and adds b3; Alice's app makes no group call.
                        a1.updateDeviceList(bob.signDeviceList("bob", 2L, listOf(listed(b2), listed(b3))))
                        assertEquals(listOf("bob"), a1.groupUsers(TEAM))
                        assertEquals(listOf(b2.address(), b3.address()), a1.groupMembers(TEAM))
                        val (two, rotated) = send(a1, all, "two")
                        assertEquals(listOf(b2.address(), b3.address()), rotated, "a new chain, for the listed devices only")
                        assertEquals("two", read(b2, a1, two))
                        assertEquals("two", read(b3, a1, two), "the device the newer list added got the chain")
                        // The dropped device lacks the new chain; its request for it is refused, as it is no listed device.
                        val missing = assertThrows(SamizdatException.MissingGroupKey::class.java) { b1.decrypt(a1.address(), two) }
                        val request = checkNotNull(missing.request()) { "b1 has a session with Alice: it asks" }
                        assertThrows(SamizdatException.UntrustedIdentity::class.java) { a1.decrypt(b1.address(), request) }

                        // The next message goes on the new chain: no distribution, and still nothing for b1.
                        val (three, none) = send(a1, all, "three")
                        assertTrue(none.isEmpty(), "$none")
                        assertEquals("three", read(b2, a1, three))
                        assertEquals("three", read(b3, a1, three))
                        assertThrows(SamizdatException.MissingGroupKey::class.java) { b1.decrypt(a1.address(), three) }
                    }
                }
            }
        }
    }

    @Test
    fun removeGroupUsersAndTheRefusals(@TempDir dir: Path) {
        val bob = UserIdentity.generate()
        val alicePath = dir.resolve("alice-1.db")
        device(dir, "alice", 1, 1).use { a1 ->
            device(dir, "bob", 1, 2).use { b1 ->
                device(dir, "bob", 2, 3).use { b2 ->
                    device(dir, "carol", 1, 4).use { c1 ->
                        val all = listOf(a1, b1, b2, c1)
                        connect(all)
                        for (d in listOf(b1, b2, c1)) d.createGroup(TEAM, listOf(a1.address()))
                        a1.updateDeviceList(bob.signDeviceList("bob", 1L, listOf(listed(b1), listed(b2))))
                        // Carol is not pinned: her device is a member per device.
                        a1.createGroup(TEAM, listOf(c1.address()))

                        // A user with no verified list on this device: no_session, and nothing written (not even Bob).
                        val before = rows(alicePath)
                        val unpinned = refused<SamizdatException.NoSession>("no_session", Recovery.FETCH_BUNDLE) {
                            a1.addGroupUsers(TEAM, listOf("bob", "dave"))
                        }
                        assertEquals("the user has no verified device list on this device", unpinned.reason)
                        assertEquals(before, rows(alicePath))
                        assertEquals(emptyList<String>(), a1.groupUsers(TEAM))

                        a1.addGroupUsers(TEAM, listOf("bob"))
                        assertEquals(listOf(c1.address(), b1.address(), b2.address()), a1.groupMembers(TEAM))
                        // A member user's device: its list decides; invalid_argument, nothing written.
                        val followed = rows(alicePath)
                        val refusedDevice = refused<SamizdatException.InvalidArgument>("invalid_argument", Recovery.FIX_CALL) {
                            a1.removeGroupMembers(TEAM, listOf(b1.address()))
                        }
                        assertEquals("the device's user is a member: its list decides its devices", refusedDevice.reason)
                        // A device of a pinned user that its list does not name: untrusted_identity.
                        refused<SamizdatException.UntrustedIdentity>("untrusted_identity", Recovery.VERIFY_IDENTITY) {
                            a1.addGroupMembers(TEAM, listOf(Address("bob", 9L)))
                        }
                        assertEquals(followed, rows(alicePath))

                        val (everyone, given) = send(a1, all, "all of us")
                        assertEquals(listOf(c1.address(), b1.address(), b2.address()), given)
                        for (d in listOf(b1, b2, c1)) assertEquals("all of us", read(d, a1, everyone))

                        // Removing the user removes its devices: a new chain, for Carol only. Unknown names are ignored.
                        a1.removeGroupUsers(TEAM, listOf("bob", "nobody"))
                        assertEquals(emptyList<String>(), a1.groupUsers(TEAM))
                        assertEquals(listOf(c1.address()), a1.groupMembers(TEAM))
                        val (carolOnly, rotated) = send(a1, all, "carol only")
                        assertEquals(listOf(c1.address()), rotated)
                        assertEquals("carol only", read(c1, a1, carolOnly))
                        for (b in listOf(b1, b2)) {
                            assertThrows(SamizdatException.MissingGroupKey::class.java) { b.decrypt(a1.address(), carolOnly) }
                        }
                        // An unknown group.
                        refused<SamizdatException.NotInGroup>("not_in_group", Recovery.DROP) { a1.groupUsers("nope".encodeToByteArray()) }
                        refused<SamizdatException.NotInGroup>("not_in_group", Recovery.DROP) {
                            a1.addGroupUsers("nope".encodeToByteArray(), listOf("bob"))
                        }
                    }
                }
            }
        }
    }
}
