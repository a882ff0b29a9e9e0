// The hand-written part of the JVM API: what UniFFI's generated Kotlin
// (org/samizdat/samizdat.kt, generated from the Rust crate) cannot express.
// Static factories for Java (`Samizdat.create(...)`, where the generated
// ones are reached through `Device.Companion`), and java.time at the
// surface: the generated calls take whole seconds since the Unix epoch as a
// `Long`. Everything here only converts and calls the generated code.

package org.samizdat

import java.time.Duration
import java.time.Instant

/**
 * Entry points for Java and Kotlin apps, with times as [Instant]s.
 *
 * ```java
 * try (Device alice = Samizdat.create(path, storageKey, "alice", 1, Instant.now())) { ... }
 * ```
 */
object Samizdat {
    /** [Device.create], at [now]. */
    @JvmStatic
    @Throws(SamizdatException::class)
    fun create(path: String, storageKey: ByteArray, userId: String, deviceId: Long, now: Instant): Device =
        Device.create(path, storageKey, userId, deviceId, seconds(now))

    /** [Device.open]. */
    @JvmStatic
    @Throws(SamizdatException::class)
    fun open(path: String, storageKey: ByteArray): Device = Device.open(path, storageKey)

    /** [Device.openOrCreate], at [now] (used if the device is created). */
    @JvmStatic
    @Throws(SamizdatException::class)
    fun openOrCreate(path: String, storageKey: ByteArray, userId: String, deviceId: Long, now: Instant): Device =
        Device.openOrCreate(path, storageKey, userId, deviceId, seconds(now))

    /** [Device.restore], at [now] (the new prekeys' creation time). */
    @JvmStatic
    @Throws(SamizdatException::class)
    fun restore(path: String, storageKey: ByteArray, backup: ByteArray, passphrase: ByteArray, now: Instant): Device =
        Device.restore(path, storageKey, backup, passphrase, seconds(now))

    /**
     * A [HealPolicy] with [java.time.Duration]s (whole seconds are kept; a
     * negative one is refused with [SamizdatException.InvalidArgument] when the
     * policy is set).
     */
    @JvmStatic
    fun healPolicy(
        resetInterval: Duration,
        outboxMaxAge: Duration,
        outboxMaxMessages: Int,
        resendToNewIdentity: Boolean,
    ): HealPolicy = HealPolicy(resetInterval.seconds, outboxMaxAge.seconds, outboxMaxMessages, resendToNewIdentity)

    /** The bytes of an identity key as an [IdentityKey] value (see Values.kt). */
    @JvmStatic
    fun identityKey(bytes: ByteArray): IdentityKey = IdentityKey(bytes)
}

