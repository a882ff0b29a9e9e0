// java.time overloads of the generated calls that take a time or an age in
// whole seconds (see Samizdat.kt). From Java they are static methods of
// `Times`: `Times.refillPrekeys(device, 5, 20, Instant.now())`.
@file:JvmName("Times")

package org.samizdat

import java.time.Duration
import java.time.Instant

/** [Device.refillPrekeys] at [now]. */
@Throws(SamizdatException::class)
fun Device.refillPrekeys(threshold: Int, target: Int, now: Instant): Int = refillPrekeys(threshold, target, seconds(now))

/** [Device.rotatePrekeys]: the keys older than [maxAge] at [now]. */
@Throws(SamizdatException::class)
fun Device.rotatePrekeys(now: Instant, maxAge: Duration): Rotated = rotatePrekeys(seconds(now), maxAge.seconds)

/** [Device.encryptKept] at [now]. */
@Throws(SamizdatException::class)
fun Device.encryptKept(peer: Address, plaintext: ByteArray, now: Instant): ByteArray =
    encryptKept(peer, plaintext, seconds(now))

/** [Device.encryptToUserKept] at [now]. */
@Throws(SamizdatException::class)
fun Device.encryptToUserKept(userId: String, plaintext: ByteArray, now: Instant): FanOut =
    encryptToUserKept(userId, plaintext, seconds(now))

/** [Device.encryptToUserDevicesKept] at [now]. */
@Throws(SamizdatException::class)
fun Device.encryptToUserDevicesKept(userId: String, plaintext: ByteArray, devices: List<Address>, now: Instant): FanOut =
    encryptToUserDevicesKept(userId, plaintext, devices, seconds(now))

/** [Device.expireOutbox] at [now]. */
@Throws(SamizdatException::class)
fun Device.expireOutbox(now: Instant): Int = expireOutbox(seconds(now))

/** [Device.heal] at [now]. */
@Throws(SamizdatException::class)
fun Device.heal(bundle: ByteArray, unreadable: List<ByteArray>, now: Instant): HealResult =
    heal(bundle, unreadable, seconds(now))

/** [Device.exportBackup] at [now]. */
@Throws(SamizdatException::class)
fun Device.exportBackup(passphrase: ByteArray, params: BackupParams, now: Instant): ByteArray =
    exportBackup(passphrase, params, seconds(now))

/** [Device.linkOffer] at [now] (the offer is valid for ten minutes from it). */
@Throws(SamizdatException::class)
fun Device.linkOffer(now: Instant): LinkOffer = linkOffer(seconds(now))

/** [Device.linkDevice] at [now]. */
@Throws(SamizdatException::class)
fun Device.linkDevice(code: ByteArray, userIdentity: UserIdentity, now: Instant): Linked =
    linkDevice(code, userIdentity, seconds(now))

/** [Device.finishLink] at [now]. */
@Throws(SamizdatException::class)
fun Device.finishLink(offer: LinkOffer, message: ByteArray, now: Instant): Provisioned =
    finishLink(offer, message, seconds(now))

/** This device's identity key as a value. */
fun Device.identity(): IdentityKey = IdentityKey(identityKey())

/** When a reset may be sent again. */
val HealResult.TooSoon.retryInstant: Instant get() = Instant.ofEpochSecond(retryAt)

/** [HealPolicy.resetInterval] as a [Duration]. */
val HealPolicy.resetIntervalDuration: Duration get() = Duration.ofSeconds(resetInterval)

/** [HealPolicy.outboxMaxAge] as a [Duration]. */
val HealPolicy.outboxMaxAgeDuration: Duration get() = Duration.ofSeconds(outboxMaxAge)

/** Whole seconds since the Unix epoch, as the generated calls take them. */
internal fun seconds(time: Instant): Long = time.epochSecond
