//! A slow, variable-time model of the arithmetic behind the key checks,
//! written from the formulas of RFC 8032 (Edwards25519, section 5.1) and
//! RFC 7748 (the Montgomery u-coordinate, section 4.1), and from FIPS 203's
//! `ByteDecode12`. It shares no code with the `samizdat` crate or with the
//! dalek crates under it: the key-check vectors use it to confirm, apart from
//! the code they test, which encodings decode, to which point, whether that
//! point has small order, its X25519 form, and whether an ML-KEM key passes
//! the modulus check.
//!
//! Numbers are little-endian arrays of 64-bit limbs; field elements are kept
//! fully reduced modulo `p = 2^255 - 19`. Speed is irrelevant here.

/// `p = 2^255 - 19`.
const P: [u64; 4] = [0xffff_ffff_ffff_ffed, u64::MAX, u64::MAX, 0x7fff_ffff_ffff_ffff];

/// The group order `L = 2^252 + 27742317777372353535851937790883648493`.
pub(crate) const L: [u64; 4] = [0x5812_631a_5cf5_d3ed, 0x14de_f9de_a2f7_9cd6, 0, 0x1000_0000_0000_0000];

/// The low 64 bits.
#[expect(clippy::cast_possible_truncation, reason = "keeping the low limb is the point")]
const fn low(x: u128) -> u64 {
    x as u64
}

/// `a + b` and the carry out.
fn add(a: &[u64; 4], b: &[u64; 4]) -> ([u64; 4], bool) {
    let mut out = [0u64; 4];
    let mut carry = false;
    for ((o, &x), &y) in out.iter_mut().zip(a).zip(b) {
        let (s, c1) = x.overflowing_add(y);
        let (s, c2) = s.overflowing_add(u64::from(carry));
        *o = s;
        carry = c1 || c2;
    }
    (out, carry)
}

/// `a - b` and the borrow out (set when `a < b`).
fn sub(a: &[u64; 4], b: &[u64; 4]) -> ([u64; 4], bool) {
    let mut out = [0u64; 4];
    let mut borrow = false;
    for ((o, &x), &y) in out.iter_mut().zip(a).zip(b) {
        let (d, b1) = x.overflowing_sub(y);
        let (d, b2) = d.overflowing_sub(u64::from(borrow));
        *o = d;
        borrow = b1 || b2;
    }
    (out, borrow)
}

/// `a < b`.
fn less(a: &[u64; 4], b: &[u64; 4]) -> bool {
    sub(a, b).1
}

/// The full 512-bit product.
fn mul_wide(a: &[u64; 4], b: &[u64; 4]) -> [u64; 8] {
    let mut out = [0u64; 8];
    for (i, &x) in a.iter().enumerate() {
        let mut carry = 0u128;
        for (o, &y) in out.iter_mut().skip(i).zip(b) {
            let t = u128::from(x) * u128::from(y) + u128::from(*o) + carry;
            *o = low(t);
            carry = t >> 64;
        }
        if let Some(o) = out.get_mut(i + 4) {
            *o = low(carry);
        }
    }
    out
}

/// A 512-bit number modulo `p`, using `2^256 = 38` and `2^255 = 19` (mod p).
fn reduce(x: [u64; 8]) -> [u64; 4] {
    let [l0, l1, l2, l3, h0, h1, h2, h3] = x;
    let mut r = [0u64; 4];
    let mut carry = 0u128;
    for ((o, l), h) in r.iter_mut().zip([l0, l1, l2, l3]).zip([h0, h1, h2, h3]) {
        let t = u128::from(l) + 38 * u128::from(h) + carry;
        *o = low(t);
        carry = t >> 64;
    }
    let [r0, r1, r2, r3] = r;
    // Everything from bit 255 up: the final carry limb and the top bit of r3.
    let top = (low(carry) << 1) | (r3 >> 63);
    let (mut s, _) = add(&[r0, r1, r2, r3 & (u64::MAX >> 1)], &[19 * top, 0, 0, 0]);
    while !less(&s, &P) {
        s = sub(&s, &P).0;
    }
    s
}

/// 32 little-endian bytes as limbs.
fn limbs(bytes: &[u8; 32]) -> [u64; 4] {
    let mut out = [0u64; 4];
    for (o, chunk) in out.iter_mut().zip(bytes.chunks_exact(8)) {
        *o = chunk.iter().rev().fold(0u64, |acc, &b| (acc << 8) | u64::from(b));
    }
    out
}

/// Limbs as 32 little-endian bytes.
fn to_bytes(x: &[u64; 4]) -> [u8; 32] {
    let mut out = [0u8; 32];
    for (chunk, limb) in out.chunks_exact_mut(8).zip(x) {
        chunk.copy_from_slice(&limb.to_le_bytes());
    }
    out
}

/// `x >> 1`.
fn half(x: &[u64; 4]) -> [u64; 4] {
    let [a, b, c, d] = *x;
    [(a >> 1) | (b << 63), (b >> 1) | (c << 63), (c >> 1) | (d << 63), d >> 1]
}

/// An element of GF(p).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) struct Fe([u64; 4]);

impl Fe {
    const ZERO: Self = Self([0; 4]);
    const ONE: Self = Self([1, 0, 0, 0]);

    fn small(n: u64) -> Self {
        Self([n, 0, 0, 0])
    }

    /// 32 bytes as an integer below `2^256`, reduced modulo `p`.
    fn from_bytes(bytes: &[u8; 32]) -> Self {
        let [a, b, c, d] = limbs(bytes);
        Self(reduce([a, b, c, d, 0, 0, 0, 0]))
    }

    pub(crate) fn to_bytes(self) -> [u8; 32] {
        to_bytes(&self.0)
    }

    fn add(self, other: Self) -> Self {
        let (s, _) = add(&self.0, &other.0);
        Self(if less(&s, &P) { s } else { sub(&s, &P).0 })
    }

    fn sub(self, other: Self) -> Self {
        let (d, borrow) = sub(&self.0, &other.0);
        Self(if borrow { add(&d, &P).0 } else { d })
    }

    fn neg(self) -> Self {
        Self::ZERO.sub(self)
    }

    fn mul(self, other: Self) -> Self {
        Self(reduce(mul_wide(&self.0, &other.0)))
    }

    /// `self^e`, square and multiply from the top bit.
    fn pow(self, e: &[u64; 4]) -> Self {
        let mut acc = Self::ONE;
        for limb in e.iter().rev() {
            for bit in (0..64).rev() {
                acc = acc.mul(acc);
                if (limb >> bit) & 1 == 1 {
                    acc = acc.mul(self);
                }
            }
        }
        acc
    }

    /// `1 / self` (`0` for `0`), by Fermat: `self^(p - 2)`.
    fn invert(self) -> Self {
        self.pow(&sub(&P, &[2, 0, 0, 0]).0)
    }

    /// Whether `self` is a square (`0` is), by Euler's criterion.
    fn is_square(self) -> bool {
        let e = half(&sub(&P, &[1, 0, 0, 0]).0);
        let r = self.pow(&e);
        r == Self::ONE || r == Self::ZERO
    }

    /// A square root of a square (RFC 8032, section 5.1.3, step 3).
    fn sqrt(self) -> Self {
        let e = half(&half(&half(&add(&P, &[3, 0, 0, 0]).0)));
        let x = self.pow(&e);
        if x.mul(x) == self {
            x
        } else {
            // sqrt(-1) = 2^((p - 1) / 4).
            x.mul(Self::small(2).pow(&half(&half(&sub(&P, &[1, 0, 0, 0]).0))))
        }
    }

    /// "Negative" in RFC 8032's sense: odd.
    fn is_odd(self) -> bool {
        self.0[0] & 1 == 1
    }
}

/// The curve constant `d = -121665 / 121666`.
fn edwards_d() -> Fe {
    Fe::small(121_665).neg().mul(Fe::small(121_666).invert())
}

/// An affine point of Edwards25519, `-x^2 + y^2 = 1 + d x^2 y^2`.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) struct Point {
    x: Fe,
    y: Fe,
}

impl Point {
    const IDENTITY: Self = Self { x: Fe::ZERO, y: Fe::ONE };

    /// RFC 8032, section 5.1.3, with PROTOCOL.md 6.1's two relaxations: the
    /// y-coordinate is reduced modulo `p` (an encoding of `y >= p` is not
    /// rejected), and `x = 0` with the sign bit set gives `x = 0` (not a
    /// failure). `None` when `(y^2 - 1) / (d y^2 + 1)` is not a square.
    pub(crate) fn decode(bytes: &[u8; 32]) -> Option<Self> {
        let mut y_bytes = *bytes;
        let sign = y_bytes.last().is_some_and(|b| b >> 7 == 1);
        if let Some(last) = y_bytes.last_mut() {
            *last &= 0x7f;
        }
        let y = Fe::from_bytes(&y_bytes);
        let y2 = y.mul(y);
        let x2 = y2.sub(Fe::ONE).mul(edwards_d().mul(y2).add(Fe::ONE).invert());
        if !x2.is_square() {
            return None;
        }
        let x = x2.sqrt();
        let x = if x.is_odd() != sign && x != Fe::ZERO { x.neg() } else { x };
        Some(Self { x, y })
    }

    /// Whether `bytes` is the RFC 8032 encoding of this point with nothing
    /// relaxed: `y < p`, and the sign bit is that of `x` (clear when `x = 0`).
    pub(crate) fn is_canonical_encoding(&self, bytes: &[u8; 32]) -> bool {
        self.encode() == *bytes
    }

    /// The canonical encoding: `y` little-endian, the sign of `x` in bit 255.
    pub(crate) fn encode(&self) -> [u8; 32] {
        let mut out = self.y.to_bytes();
        if let Some(last) = out.last_mut() {
            *last |= u8::from(self.x.is_odd()) << 7;
        }
        out
    }

    /// The group law (complete on Edwards25519).
    fn add(&self, other: &Self) -> Self {
        let t = edwards_d().mul(self.x).mul(other.x).mul(self.y).mul(other.y);
        Self {
            x: self.x.mul(other.y).add(self.y.mul(other.x)).mul(Fe::ONE.add(t).invert()),
            y: self.y.mul(other.y).add(self.x.mul(other.x)).mul(Fe::ONE.sub(t).invert()),
        }
    }

    /// `[n]P` for `n` given as limbs.
    fn mul(&self, n: &[u64; 4]) -> Self {
        let mut acc = Self::IDENTITY;
        for limb in n.iter().rev() {
            for bit in (0..64).rev() {
                acc = acc.add(&acc);
                if (limb >> bit) & 1 == 1 {
                    acc = acc.add(self);
                }
            }
        }
        acc
    }

    /// PROTOCOL.md 6.1: the order divides 8, that is `[8]P` is the identity.
    pub(crate) fn has_small_order(&self) -> bool {
        let twice = self.add(self);
        let four = twice.add(&twice);
        four.add(&four) == Self::IDENTITY
    }

    /// `[L]P` is the identity: no small-order component.
    pub(crate) fn is_torsion_free(&self) -> bool {
        self.mul(&L) == Self::IDENTITY
    }

    /// The X25519 form (PROTOCOL.md 6.2): `u = (1 + y) / (1 - y)`, with
    /// `1 / 0 = 0`.
    pub(crate) fn montgomery_u(&self) -> [u8; 32] {
        Fe::ONE.add(self.y).mul(Fe::ONE.sub(self.y).invert()).to_bytes()
    }
}

/// `p + n` as 32 bytes (a non-canonical encoding of `n`, for `n < 19`).
pub(crate) fn p_plus(n: u64) -> [u8; 32] {
    to_bytes(&add(&P, &[n, 0, 0, 0]).0)
}

/// `p - n` as 32 bytes.
pub(crate) fn p_minus(n: u64) -> [u8; 32] {
    to_bytes(&sub(&P, &[n, 0, 0, 0]).0)
}

/// Whether the little-endian integer `s` is below `L`.
pub(crate) fn below_l(s: &[u8; 32]) -> bool {
    less(&limbs(s), &L)
}

/// `s + L` as 32 bytes (`s < 2^256 - L`).
pub(crate) fn plus_l(s: &[u8; 32]) -> Option<[u8; 32]> {
    let (sum, carry) = add(&limbs(s), &L);
    (!carry).then(|| to_bytes(&sum))
}

/// ML-KEM's modulus `q`.
pub(crate) const MLKEM_Q: u16 = 3329;

/// FIPS 203 `ByteDecode12`: every 3 bytes hold two 12-bit coefficients, the
/// first in the low bits.
pub(crate) fn byte_decode_12(bytes: &[u8]) -> Vec<u16> {
    bytes
        .chunks_exact(3)
        .flat_map(|c| {
            let word = c.iter().rev().fold(0u32, |acc, &b| (acc << 8) | u32::from(b));
            [word & 0xfff, word >> 12].map(|v| u16::try_from(v).unwrap_or(u16::MAX))
        })
        .collect()
}

/// Sets the 12-bit coefficient `index` of a `ByteEncode12` encoding to `value`.
pub(crate) fn set_coefficient(bytes: &mut [u8], index: usize, value: u16) {
    let at = index / 2 * 3;
    let Some(chunk) = bytes.get_mut(at..at + 3) else { return };
    let mut word = chunk.iter().rev().fold(0u32, |acc, &b| (acc << 8) | u32::from(b));
    let shift = if index.is_multiple_of(2) { 0 } else { 12 };
    word = (word & !(0xfff << shift)) | (u32::from(value & 0xfff) << shift);
    for (i, b) in chunk.iter_mut().enumerate() {
        *b = word.to_le_bytes().get(i).copied().unwrap_or(0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn field_constants() {
        // d, from RFC 8032 section 5.1, and sqrt(-1)^2 = -1.
        assert_eq!(
            hex::encode(edwards_d().to_bytes()),
            "a3785913ca4deb75abd841414d0a700098e879777940c78c73fe6f2bee6c0352"
        );
        let i = Fe::ONE.neg().sqrt();
        assert_eq!(i.mul(i), Fe::ONE.neg());
        assert_eq!(Fe::small(7).mul(Fe::small(7).invert()), Fe::ONE);
    }

    #[test]
    fn base_point_round_trip_and_order() {
        // RFC 8032's B: y = 4/5.
        let encoded: [u8; 32] = hex::decode("5866666666666666666666666666666666666666666666666666666666666666")
            .unwrap()
            .try_into()
            .unwrap();
        let b = Point::decode(&encoded).unwrap();
        assert!(b.is_canonical_encoding(&encoded));
        assert!(!b.has_small_order());
        assert!(b.is_torsion_free());
        // X25519's base point u = 9.
        assert_eq!(b.montgomery_u(), {
            let mut nine = [0u8; 32];
            nine[0] = 9;
            nine
        });
    }

    #[test]
    fn coefficients_round_trip() {
        let mut bytes = vec![0u8; 6];
        set_coefficient(&mut bytes, 1, 3329);
        set_coefficient(&mut bytes, 2, 4095);
        assert_eq!(byte_decode_12(&bytes), [0, 3329, 4095, 0]);
    }
}
