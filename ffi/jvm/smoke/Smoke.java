// The smoke test of the packaged jar (`cargo xtask package`): plain Java, compiled and run with
// only the jar and the dependencies its pom declares on the classpath (no jna.library.path: JNA
// must find the native library inside the jar). Two devices on SQLite stores open a session and
// exchange a message; the two safety numbers match.

import java.lang.reflect.Method;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.Arrays;

import org.samizdat.Address;
import org.samizdat.Device;
import org.samizdat.PendingMessage;
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
            try (SafetyNumber ours = alice.safetyNumber(bobAddress);
                    SafetyNumber theirs = bob.safetyNumber(alice.address())) {
                check(ours.digits().equals(theirs.digits()), "the safety numbers differ");
            }
        }
        System.out.println("jvm smoke: two devices exchanged a message through the packaged jar");
    }

    /**
     * {@code Device.create(path, storageKey, userId, deviceId: UInt, now: ULong)}. Kotlin gives a
     * function with unsigned parameters a mangled JVM name ({@code create-<hash>}) that Java source
     * cannot spell, so Java finds it by reflection (UInt is an int on the JVM, ULong a long).
     */
    private static Device create(Path path, byte keyByte, String user) throws Exception {
        byte[] storageKey = new byte[32];
        Arrays.fill(storageKey, keyByte); // from the platform keystore in a real app
        for (Method method : Device.Companion.getClass().getMethods()) {
            if (method.getName().startsWith("create-") && method.getParameterCount() == 5) {
                return (Device) method.invoke(Device.Companion, path.toString(), storageKey, user, 1, 0L);
            }
        }
        throw new AssertionError("Device.Companion has no create method");
    }

    private static void check(boolean condition, String failure) {
        if (!condition) {
            throw new AssertionError(failure);
        }
    }
}
