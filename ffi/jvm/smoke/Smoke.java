// The smoke test of the packaged jar (`cargo xtask package`): plain Java, compiled and run with
// only the jar and the dependencies its pom declares on the classpath (no jna.library.path: JNA
// must find the native library inside the jar). Two devices on SQLite stores open a session and
// exchange a message; the two safety numbers match.

import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.time.Instant;
import java.util.Arrays;

import org.samizdat.Address;
import org.samizdat.Device;
import org.samizdat.PendingMessage;
import org.samizdat.Samizdat;
import org.samizdat.SamizdatException;
import org.samizdat.SafetyNumber;

public final class Smoke {
    public static void main(String[] args) throws Exception {
        Path dir = Files.createTempDirectory("samizdat-jvm-smoke");
        try (Device alice = create(dir.resolve("alice.db"), (byte) 1, "alice");
                Device bob = create(dir.resolve("bob.db"), (byte) 2, "bob")) {
            Address bobAddress = alice.startSession(bob.prekeyBundle());
            byte[] wire = alice.encrypt(bobAddress, "hello".getBytes(StandardCharsets.UTF_8));
            try (PendingMessage pending = bob.decrypt(alice.address(), wire)) {
                String text = new String(pending.plaintext(), StandardCharsets.UTF_8);
                check(text.equals("hello"), "decrypted \"" + text + "\", not \"hello\"");
                bob.commit(pending);
            }
            SafetyNumber ours = alice.safetyNumber(bobAddress);
            SafetyNumber theirs = bob.safetyNumber(alice.address());
            check(ours.getDigits().equals(theirs.getDigits()), "the safety numbers differ");
            ours.compareScanned(theirs.getScannable().toByteArray());
        }
        System.out.println("jvm smoke: two devices exchanged a message through the packaged jar");
    }

    /**
     * A device on a new store, through the facade's static factory (an {@link Instant} for the
     * time; the generated {@code Device.Companion.create} takes seconds).
     */
    private static Device create(Path path, byte keyByte, String user) throws SamizdatException {
        byte[] storageKey = new byte[32];
        Arrays.fill(storageKey, keyByte); // from the platform keystore in a real app
        return Samizdat.create(path.toString(), storageKey, user, 1, Instant.now());
    }

    private static void check(boolean condition, String failure) {
        if (!condition) {
            throw new AssertionError(failure);
        }
    }
}
