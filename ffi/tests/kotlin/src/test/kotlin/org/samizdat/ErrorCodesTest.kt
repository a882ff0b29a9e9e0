// The stable error codes through the Kotlin bindings: every scenario of ffi/tests/error_codes.json,
// the same ones as ffi/tests/python/test_error_codes.py. Each scenario provokes one failure through
// the public API and returns the exception; the test checks that it is the variant named by the
// file's code, reports that code and the file's recovery, and has a readable message.
package org.samizdat

import java.io.File
import java.nio.file.Files
import java.nio.file.Path
import java.sql.DriverManager
import java.util.concurrent.TimeUnit
import org.json.JSONObject
import org.junit.jupiter.api.Assertions.assertArrayEquals
import org.junit.jupiter.api.Assertions.assertEquals
import org.junit.jupiter.api.Assertions.assertFalse
import org.junit.jupiter.api.Assertions.assertNotNull
import org.junit.jupiter.api.Assertions.assertThrows
import org.junit.jupiter.api.Assertions.assertTrue
import org.junit.jupiter.api.DynamicTest
import org.junit.jupiter.api.Test
import org.junit.jupiter.api.TestFactory

private val GROUP = "reading group".encodeToByteArray()

// core/src/limits.rs: MAX_PLAINTEXT_LEN (240 KiB) and the longest group id (MAX_GROUP_ID_LEN).
private const val MAX_PLAINTEXT_LEN = 240 * 1024
private const val MAX_GROUP_ID_LEN = 64

// core/src/limits.rs: MAX_SKIP, the most message keys one gap may skip.
private const val MAX_SKIP = 2000

private data class Case(val scenario: String, val code: String, val recovery: String)

/** The devices of one scenario, in one directory; closed when it ends. */
private class Scenario(private val dir: Path) : AutoCloseable {
    private val opened = mutableListOf<AutoCloseable>()

    fun path(file: String): String = dir.resolve("$file.db").toString()

    fun file(name: String): File = dir.resolve(name).toFile()

    /** A new device `name`/1 in its own store (`file`.db, by default `name`.db). */
    fun device(name: String, file: String = name): Device =
        Device.create(path(file), key(name), name, 1, 0L).also { opened += it }

    fun open(file: String, key: ByteArray): Device = Device.open(path(file), key).also { opened += it }

    override fun close() = opened.asReversed().forEach { it.close() }

    companion object {
        private val keyBytes = mapOf("alice" to 1, "bob" to 2, "carol" to 3)

        fun key(name: String): ByteArray = ByteArray(32) { keyBytes.getValue(name).toByte() }
    }
}

/** Decrypt, "store", commit: what an app does with each message. */
private fun receive(to: Device, from: Address, wire: ByteArray): String =
    to.decrypt(from, wire).use { pending ->
        val text = pending.plaintext().decodeToString()
        to.commit(pending)
        text
    }

/** The exception `call` threw; the test fails if it threw none, or another kind. */
private fun raised(call: () -> Unit): SamizdatException = assertThrows(SamizdatException::class.java) { call() }

private fun ByteArray.withLastBitFlipped(): ByteArray = copyOf().also { it[it.size - 1] = (it[it.size - 1].toInt() xor 1).toByte() }

private fun camelCase(code: String): String = code.split('_').joinToString("") { it.replaceFirstChar(Char::uppercaseChar) }

class ErrorCodesTest {
    private val cases: List<Case> = run {
        val file = System.getProperty("samizdat.error.codes") ?: error("samizdat.error.codes is not set (see pom.xml)")
        val array = JSONObject(File(file).readText()).getJSONArray("cases")
        (0 until array.length()).map { i ->
            val case = array.getJSONObject(i)
            Case(case.getString("scenario"), case.getString("code"), case.getString("recovery"))
        }
    }

    private val scenarios: Map<String, Scenario.() -> SamizdatException> = mapOf(
        "message_delivered_twice" to { messageDeliveredTwice() },
        "message_body_altered" to { messageBodyAltered() },
        "message_past_the_skip_limit" to { messagePastTheSkipLimit() },
        "encrypt_without_session" to { encryptWithoutSession() },
        "peer_reinstalled" to { peerReinstalled() },
        "safety_number_of_another_peer" to { safetyNumberOfAnotherPeer() },
        "bundle_signature_altered" to { bundleSignatureAltered() },
        "group_message_before_its_chain" to { groupMessageBeforeItsChain() },
        "group_message_of_unknown_group" to { groupMessageOfUnknownGroup() },
        "commit_after_session_changed" to { commitAfterSessionChanged() },
        "store_locked_by_another_connection" to { storeLockedByAnotherConnection() },
        "open_with_wrong_key" to { openWithWrongKey() },
        "open_a_file_that_is_not_a_store" to { openAFileThatIsNotAStore() },
        "plaintext_too_large" to { plaintextTooLarge() },
        "group_id_too_long" to { groupIdTooLong() },
    )

    @TestFactory
    fun everyScenarioReportsItsCode(): List<DynamicTest> = cases.map { case ->
        DynamicTest.dynamicTest(case.scenario) {
            val scenario = scenarios[case.scenario]
                ?: error("scenario ${case.scenario} of error_codes.json is not implemented here")
            val dir = Files.createTempDirectory("samizdat-${case.scenario}")
            try {
                checkReported(case, Scenario(dir).use { it.scenario() })
            } finally {
                dir.toFile().deleteRecursively()
            }
        }
    }

    @Test
    fun theFileAndTheScenariosAgree() {
        val listed = cases.map { it.scenario }
        assertEquals(listed.size, listed.toSet().size, "a scenario is listed twice")
        assertEquals(scenarios.keys, listed.toSet())
        // Every code has a scenario, and only the codes there are.
        assertEquals(ErrorKind.entries.map { it.code() }.sorted(), cases.map { it.code }.sorted())
        for (case in cases) {
            assertEquals(case.recovery, ErrorKind.valueOf(case.code.uppercase()).recovery().code(), case.scenario)
        }
    }

    private fun checkReported(case: Case, thrown: SamizdatException) {
        assertEquals(camelCase(case.code), thrown::class.simpleName, thrown.message)
        assertEquals(case.code, thrown.code())
        assertEquals(ErrorKind.valueOf(case.code.uppercase()), thrown.kind())
        assertEquals(case.code, thrown.kind().code())
        assertEquals(case.recovery, thrown.recovery().code())
        assertEquals(thrown.kind().recovery(), thrown.recovery())
        // Kotlin builds the message from the fields: "reason=<the core error's text>[, <field>=...]".
        val message = checkNotNull(thrown.message) { "no message" }
        assertTrue(Regex("^reason=[^,\\s]").containsMatchIn(message), message)
        assertFalse(message.contains("[B@"), message)
        assertFalse(thrown.toString().contains("[B@"), thrown.toString())
    }

    private fun Scenario.messageDeliveredTwice(): SamizdatException {
        val (alice, bob) = device("alice") to device("bob")
        alice.startSession(bob.prekeyBundle())
        val wire = alice.encrypt(bob.address(), "once".encodeToByteArray())
        assertEquals("once", receive(bob, alice.address(), wire))
        return raised { bob.decrypt(alice.address(), wire) }
    }

    private fun Scenario.messageBodyAltered(): SamizdatException {
        val (alice, bob) = device("alice") to device("bob")
        alice.startSession(bob.prekeyBundle())
        val wire = alice.encrypt(bob.address(), "genuine".encodeToByteArray())
        // The last byte is the body's tag: the header still opens, the body does not.
        val thrown = raised { bob.decrypt(alice.address(), wire.withLastBitFlipped()) }
        // Nothing was consumed: the genuine message decrypts.
        assertEquals("genuine", receive(bob, alice.address(), wire))
        return thrown
    }

    private fun Scenario.messagePastTheSkipLimit(): SamizdatException {
        val (alice, bob) = device("alice") to device("bob")
        alice.startSession(bob.prekeyBundle())
        val wire = (0..MAX_SKIP + 1).map { alice.encrypt(bob.address(), "m$it".encodeToByteArray()) }
        // Only the last arrives: 2,001 earlier messages are missing.
        val thrown = raised { bob.decrypt(alice.address(), wire.last()) }
        // Nothing was consumed: once an earlier one arrives, it is within reach.
        assertEquals("m1", receive(bob, alice.address(), wire[1]))
        assertEquals("m${MAX_SKIP + 1}", receive(bob, alice.address(), wire.last()))
        return thrown
    }

    private fun Scenario.encryptWithoutSession(): SamizdatException {
        val alice = device("alice")
        val thrown = raised { alice.encrypt(Address("bob", 1), "hello?".encodeToByteArray()) }
        assertFalse(alice.hasSession(Address("bob", 1)))
        return thrown
    }

    private fun Scenario.peerReinstalled(): SamizdatException {
        val (alice, bob) = device("alice") to device("bob")
        val bobAddress = alice.startSession(bob.prekeyBundle())
        assertEquals("before", receive(bob, alice.address(), alice.encrypt(bobAddress, "before".encodeToByteArray())))
        // Bob's device is created anew: a new store, the same address.
        val newBob = device("bob", file = "bob-reinstalled")
        assertEquals(bobAddress, newBob.address())
        val thrown = raised { alice.startSession(newBob.prekeyBundle()) }
        val identity = checkNotNull(thrown.identityKey()) { "no identity key in $thrown" }
        assertArrayEquals(newBob.identityKey(), identity)
        // Once the user verified it, the app trusts it, and the session starts.
        alice.trustIdentity(bobAddress, identity)
        assertEquals(bobAddress, alice.startSession(newBob.prekeyBundle()))
        assertEquals("after", receive(newBob, alice.address(), alice.encrypt(bobAddress, "after".encodeToByteArray())))
        return thrown
    }

    private fun Scenario.safetyNumberOfAnotherPeer(): SamizdatException {
        val (alice, bob, carol) = Triple(device("alice"), device("bob"), device("carol"))
        alice.startSession(bob.prekeyBundle())
        alice.startSession(carol.prekeyBundle())
        assertEquals("hi", receive(bob, alice.address(), alice.encrypt(bob.address(), "hi".encodeToByteArray())))
        return alice.safetyNumber(bob.address()).let { withBob ->
            alice.safetyNumber(carol.address()).let { withCarol ->
                // Bob's own screen matches; the code of Alice's conversation with Carol does not.
                bob.safetyNumber(alice.address()).let { withBob.compareScanned(it.scannable.toByteArray()) }
                raised { withBob.compareScanned(withCarol.scannable.toByteArray()) }
            }
        }
    }

    private fun Scenario.bundleSignatureAltered(): SamizdatException {
        val (alice, bob) = device("alice") to device("bob")
        val bundle = bob.prekeyBundle()
        // The last byte is in the bundle's signature.
        val thrown = raised { alice.startSession(bundle.withLastBitFlipped()) }
        assertFalse(alice.hasSession(bob.address()))
        assertEquals(bob.address(), alice.startSession(bundle))
        return thrown
    }

    /** Alice and Bob, each with a session with the other, in GROUP; Alice's first group message. */
    private fun Scenario.aliceAndBobInAGroup(): Triple<Device, Device, GroupSend> {
        val (alice, bob) = device("alice") to device("bob")
        alice.startSession(bob.prekeyBundle())
        assertEquals("hello", receive(bob, alice.address(), alice.encrypt(bob.address(), "hello".encodeToByteArray())))
        alice.createGroup(GROUP, listOf(bob.address()))
        bob.createGroup(GROUP, listOf(alice.address()))
        val sent = alice.groupEncrypt(GROUP, "to the group".encodeToByteArray())
        assertEquals(listOf(bob.address()), sent.distributions.map { it.to })
        return Triple(alice, bob, sent)
    }

    private fun Scenario.groupMessageBeforeItsChain(): SamizdatException {
        val (alice, bob, sent) = aliceAndBobInAGroup()
        val thrown = raised { bob.decrypt(alice.address(), sent.message.toByteArray()) }
        // Bob has a session with Alice: the error carries his request for her chain.
        assertNotNull(thrown.request(), "a request, since Bob has a session with Alice")
        // Once the distribution arrives, the kept message decrypts.
        assertEquals("", receive(bob, alice.address(), sent.distributions[0].message.toByteArray()))
        assertEquals("to the group", receive(bob, alice.address(), sent.message.toByteArray()))
        return thrown
    }

    private fun Scenario.groupMessageOfUnknownGroup(): SamizdatException {
        val (alice, _, sent) = aliceAndBobInAGroup()
        val carol = device("carol")
        return raised { carol.decrypt(alice.address(), sent.message.toByteArray()) }
    }

    private fun Scenario.commitAfterSessionChanged(): SamizdatException {
        val (alice, bob) = device("alice") to device("bob")
        alice.startSession(bob.prekeyBundle())
        val first = alice.encrypt(bob.address(), "first".encodeToByteArray())
        val second = alice.encrypt(bob.address(), "second".encodeToByteArray())
        val thrown = bob.decrypt(alice.address(), first).use { pendingFirst ->
            bob.decrypt(alice.address(), second).use { bob.commit(it) }
            raised { bob.commit(pendingFirst) }
        }
        // Nothing was consumed: the first message decrypts again.
        assertEquals("first", receive(bob, alice.address(), first))
        return thrown
    }

    private fun Scenario.storeLockedByAnotherConnection(): SamizdatException {
        val (alice, bob) = device("alice") to device("bob")
        alice.startSession(bob.prekeyBundle())
        // The other connection, in a JVM of its own: sqlite-jdbc carries another copy of SQLite than
        // the library's, and the POSIX locks of two copies in one process do not exclude each other
        // (nor survive either closing the file), so a lock held from this JVM would not be seen at all.
        val java = Path.of(System.getProperty("java.home"), "bin", "java").toString()
        val log = file("lock-holder.log")
        val holder = ProcessBuilder(java, "-cp", System.getProperty("java.class.path"), SqliteLockHolder::class.java.name, path("alice"))
            .redirectError(log)
            .start()
        val (thrown, waited) = try {
            val lines = holder.inputStream.bufferedReader().lineSequence()
            assertEquals("locked", lines.firstOrNull { it == "locked" }, "the lock holder did not lock: ${log.readText()}")
            val started = System.nanoTime()
            raised { alice.encrypt(bob.address(), "waits".encodeToByteArray()) } to (System.nanoTime() - started) / 1e9
        } finally {
            holder.outputStream.use { it.write("release\n".encodeToByteArray()) }
            assertTrue(holder.waitFor(30, TimeUnit.SECONDS), "the lock holder did not exit")
        }
        assertEquals(0, holder.exitValue(), log.readText())
        assertTrue(waited >= 4.0, "gave up after %.1f s, before the store's 5 s busy timeout".format(waited))
        // The lock is gone: the same call succeeds.
        assertEquals("now", receive(bob, alice.address(), alice.encrypt(bob.address(), "now".encodeToByteArray())))
        return thrown
    }

    private fun Scenario.openWithWrongKey(): SamizdatException {
        device("alice").close()
        val thrown = raised { open("alice", ByteArray(32) { 9 }) }
        assertEquals(Address("alice", 1), open("alice", Scenario.key("alice")).address())
        return thrown
    }

    private fun Scenario.openAFileThatIsNotAStore(): SamizdatException {
        file("junk.db").writeBytes(ByteArray(4096) { i -> ((i * 167 + 13) % 251).toByte() })
        return raised { open("junk", Scenario.key("alice")) }
    }

    private fun Scenario.plaintextTooLarge(): SamizdatException {
        val (alice, bob) = device("alice") to device("bob")
        alice.startSession(bob.prekeyBundle())
        val thrown = raised { alice.encrypt(bob.address(), ByteArray(MAX_PLAINTEXT_LEN + 1)) }
        // The limit itself is allowed.
        val largest = alice.encrypt(bob.address(), ByteArray(MAX_PLAINTEXT_LEN))
        assertEquals(MAX_PLAINTEXT_LEN, receive(bob, alice.address(), largest).length)
        return thrown
    }

    private fun Scenario.groupIdTooLong(): SamizdatException {
        val alice = device("alice")
        val thrown = raised { alice.createGroup(ByteArray(MAX_GROUP_ID_LEN + 1), emptyList()) }
        alice.createGroup(ByteArray(MAX_GROUP_ID_LEN), emptyList())
        return thrown
    }
}

/**
 * ErrorCodesTest's other connection to a store: started in a JVM of its own with the path of a
 * SQLite database, it holds the database's write lock (`BEGIN EXCLUSIVE`), says "locked", and
 * lets go when a line arrives on its input.
 */
object SqliteLockHolder {
    @JvmStatic
    fun main(args: Array<String>) {
        DriverManager.getConnection("jdbc:sqlite:${args[0]}").use { connection ->
            connection.createStatement().use { it.execute("BEGIN EXCLUSIVE") }
            println("locked")
            System.out.flush()
            readlnOrNull()
            connection.createStatement().use { it.execute("ROLLBACK") }
        }
    }
}
