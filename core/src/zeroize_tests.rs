//! Secrets are wiped when they are dropped: compile-time checks that every
//! type holding key material implements [`zeroize::ZeroizeOnDrop`], the
//! crates' own states included (their `zeroize` features are on in the
//! workspace manifest). PROTOCOL.md 16.8 lists each secret-bearing type and
//! how it is wiped; a type there that is not checked here is wiped by a
//! field of a checked type or by an explicit `zeroize` call, as that table
//! says.

use zeroize::{ZeroizeOnDrop, Zeroizing};

fn wiped_on_drop<T: ZeroizeOnDrop + ?Sized>() {}

#[test]
fn the_crates_states_are_wiped_on_drop() {
    // ChaCha20-Poly1305 and XChaCha20-Poly1305 keyed with message, header and
    // store keys (`chacha20poly1305/zeroize`).
    wiped_on_drop::<chacha20poly1305::ChaCha20Poly1305>();
    wiped_on_drop::<chacha20poly1305::XChaCha20Poly1305>();
    // SHA-256 and SHA-512 states (`sha2/zeroize`). HMAC-SHA256 (and HKDF,
    // which runs on it) keeps its keyed state in two SHA-256 block cores
    // (`hmac::block_api::HmacCore`: the inner and outer digests), which are
    // these, wiped on drop.
    wiped_on_drop::<sha2::Sha256>();
    wiped_on_drop::<sha2::Sha512>();
    wiped_on_drop::<<sha2::Sha256 as hmac::EagerHash>::Core>();
    // X25519 and Ed25519 secrets (`x25519-dalek/zeroize`, `ed25519-dalek/zeroize`).
    wiped_on_drop::<x25519_dalek::StaticSecret>();
    wiped_on_drop::<ed25519_dalek::SigningKey>();
}

#[test]
fn our_secret_types_are_wiped_on_drop() {
    wiped_on_drop::<crate::keys::Secret32>();
    wiped_on_drop::<crate::store::StorageKey>();
    wiped_on_drop::<Zeroizing<Vec<u8>>>();
    wiped_on_drop::<Zeroizing<[u8; 32]>>();
}
