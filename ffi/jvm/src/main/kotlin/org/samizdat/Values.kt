// Bytes as values. A `ByteArray` compares and hashes by reference and prints
// as `[B@1b6d3586`, so a record (a `data class`) with a `ByteArray` field is
// equal only to itself, and a fresh copy of it is no key of a map. The
// records' byte fields are these classes instead: ffi/uniffi.toml maps the
// Rust custom types of the same names (ffi/src/values.rs) to them, and the
// generated code makes and reads them. Each holds its own copy of the bytes;
// the calls of the API keep taking and returning `ByteArray`.

package org.samizdat

/**
 * Immutable bytes, equal to another value of the same class when the bytes
 * are, hashed by content, printed in hex. The base of [Bytes], [IdentityKey]
 * and [UserIdentityKey]; values of two of these classes are never equal.
 */
sealed class ByteValue(bytes: ByteArray, copy: Boolean) {
    /** The bytes, never handed out (the generated code reads them to send them). */
    internal val array: ByteArray = if (copy) bytes.copyOf() else bytes

    /** How many bytes. */
    val size: Int get() = array.size

    /** A copy of the bytes. */
    fun toByteArray(): ByteArray = array.copyOf()

    /** The bytes in lowercase hex. */
    fun toHex(): String = hex(array, array.size)

    override fun equals(other: Any?): Boolean =
        other is ByteValue && other.javaClass == javaClass && array.contentEquals(other.array)

    override fun hashCode(): Int = array.contentHashCode()

    /** The bytes in lowercase hex. */
    override fun toString(): String = toHex()
}

/**
 * Bytes in a record: a message ([Outgoing.message]), a signed device list,
 * a plaintext. `toString()` gives the hex of the first [SHOWN] bytes and
 * the size of longer ones.
 */
class Bytes private constructor(bytes: ByteArray, copy: Boolean) : ByteValue(bytes, copy) {
    /** The value of a copy of [bytes]. */
    constructor(bytes: ByteArray) : this(bytes, true)

    /** Hex, cut after [SHOWN] bytes: `0a1b…(1200 bytes)`. */
    override fun toString(): String =
        if (size <= SHOWN) toHex() else "${hex(array, SHOWN)}…($size bytes)"

    companion object {
        /** How many bytes `toString()` shows. */
        const val SHOWN: Int = 32

        /** The value of the generated code's own fresh array (no copy). */
        internal fun adopt(bytes: ByteArray): Bytes = Bytes(bytes, false)
    }
}

/**
 * A device's identity key (32 bytes) as a value: usable as a map key,
 * printed in hex (64 characters). The records' identity keys
 * ([ListedDevice.identityKey]) are of this type; [Device.identity] gives a
 * device's own.
 */
class IdentityKey private constructor(bytes: ByteArray, copy: Boolean) : ByteValue(bytes, copy) {
    /** The value of a copy of [bytes]. */
    constructor(bytes: ByteArray) : this(bytes, true)

    internal companion object {
        /** The value of the generated code's own fresh array (no copy). */
        fun adopt(bytes: ByteArray): IdentityKey = IdentityKey(bytes, false)
    }
}

/**
 * A user identity key (32 bytes; it signs a user's device lists) as a
 * value, printed in hex; never equal to an [IdentityKey] with the same
 * bytes. [DeviceListInfo.userIdentityKey] and [NewUserIdentity.replaced]
 * are of this type.
 */
class UserIdentityKey private constructor(bytes: ByteArray, copy: Boolean) : ByteValue(bytes, copy) {
    /** The value of a copy of [bytes]. */
    constructor(bytes: ByteArray) : this(bytes, true)

    internal companion object {
        /** The value of the generated code's own fresh array (no copy). */
        fun adopt(bytes: ByteArray): UserIdentityKey = UserIdentityKey(bytes, false)
    }
}

/** The first [count] bytes of [bytes] in lowercase hex. */
private fun hex(bytes: ByteArray, count: Int): String {
    val digits = "0123456789abcdef"
    val out = StringBuilder(2 * count)
    for (i in 0 until count) {
        val byte = bytes[i].toInt() and 0xff
        out.append(digits[byte shr 4]).append(digits[byte and 0x0f])
    }
    return out.toString()
}
