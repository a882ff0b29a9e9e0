package org.samizdat;

import static org.junit.jupiter.api.Assertions.assertArrayEquals;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertNotEquals;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.time.Instant;
import java.util.Arrays;
import java.util.HashMap;
import java.util.Map;

import org.junit.jupiter.api.Test;

/**
 * The basic flow from Java source, as a Java app writes it: every call by its name (no mangled
 * names: the boundary's integers are {@code int} and {@code long}), records as immutable values
 * usable as map keys (bytes in them too), and exceptions with messages.
 */
class JavaApiTest {
    private static byte[] key(int fill) {
        byte[] key = new byte[32];
        Arrays.fill(key, (byte) fill);
        return key;
    }

    @Test
    void twoDevicesConverseFromJava() throws Exception {
        Path dir = Files.createTempDirectory("samizdat-java");
        long now = Instant.now().getEpochSecond();
        // The generated factory (through Companion, seconds) and the facade's (static, an Instant).
        try (Device alice = Device.Companion.create(dir.resolve("alice.db").toString(), key(1), "alice", 1, now);
                Device bob = Samizdat.openOrCreate(dir.resolve("bob.db").toString(), key(2), "bob", 1, Instant.now())) {
            assertEquals(20, Times.refillPrekeys(bob, 5, 10, Instant.now()));
            assertEquals(Samizdat.identityKey(bob.identityKey()), Times.identity(bob));
            Address bobAddress = alice.startSession(bob.prekeyBundle());
            assertEquals(new Address("bob", 1L), bobAddress);

            byte[] wire = alice.encrypt(bobAddress, "hello from Java".getBytes(StandardCharsets.UTF_8));
            try (PendingMessage pending = bob.decrypt(alice.address(), wire)) {
                assertArrayEquals("hello from Java".getBytes(StandardCharsets.UTF_8), pending.plaintext());
                bob.commit(pending);
            }
            byte[] reply = bob.encrypt(alice.address(), "hi".getBytes(StandardCharsets.UTF_8));
            try (PendingMessage pending = alice.decrypt(bobAddress, reply)) {
                alice.commit(pending);
            }
            // A safety number is a plain value (nothing to close): digits, display, code.
            SafetyNumber ours = alice.safetyNumber(bobAddress);
            SafetyNumber theirs = bob.safetyNumber(alice.address());
            assertEquals(ours.getDigits(), theirs.getDigits());
            assertEquals(ours, alice.safetyNumber(bobAddress));
            ours.compareScanned(theirs.getScannable().toByteArray());

            // Records are values: equal when their fields are, usable as map keys.
            Map<Address, String> names = new HashMap<>();
            names.put(new Address("bob", 1L), "Bob");
            assertEquals("Bob", names.get(bobAddress));
            // Also those with bytes in them: the bytes are a Bytes value, compared by content.
            byte[] queued = alice.encrypt(bobAddress, "queued".getBytes(StandardCharsets.UTF_8));
            Map<IncomingMessage, String> seen = new HashMap<>();
            seen.put(new IncomingMessage(alice.address(), new Bytes(queued)), "first");
            assertEquals("first", seen.get(new IncomingMessage(alice.address(), new Bytes(queued.clone()))));
            assertArrayEquals(queued, new Bytes(queued).toByteArray());
            assertEquals(Times.identity(bob), new ListedDevice(1L, new IdentityKey(bob.identityKey())).getIdentityKey());

            // A negative count or time is refused with a typed error and a message.
            SamizdatException.InvalidArgument refused =
                    assertThrows(SamizdatException.InvalidArgument.class, () -> bob.refillPrekeys(-1, 10, now));
            assertTrue(refused.getMessage().contains("threshold is negative"), refused.getMessage());
            assertThrows(SamizdatException.InvalidArgument.class, () -> bob.expireOutbox(-5L));
            SamizdatException.InvalidArgument badId = assertThrows(
                    SamizdatException.InvalidArgument.class, () -> alice.hasSession(new Address("bob", 1L << 32)));
            assertNotEquals("", badId.getMessage());
        }
    }
}
