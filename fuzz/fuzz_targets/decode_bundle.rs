//! `PreKeyBundle::from_bytes`: no panic, and a bundle is accepted only in
//! its one canonical encoding (re-encoding gives the input).
//!
//! Random bytes almost never carry valid signatures, so half the inputs are
//! re-signed first: the input's first byte is odd, then a `u16`-prefixed
//! protobuf `PreKeyBundle` (parsed leniently here), then a tail. Its
//! identity key is replaced by a fixed one whose seed signs the prekeys and
//! the bundle (over what the fields say), it is encoded canonically, and
//! the tail is appended: the decoder must then accept the bundle only when
//! the tail leaves the bytes canonical, and never refuse a signature made here.
#![no_main]

use libfuzzer_sys::fuzz_target;
use prost::Message as _;
use samizdat::{
    hazmat::{self, SignedKind},
    prekeys::{BundleError, PreKeyBundle},
};
use samizdat_fuzz::input::Reader;
use samizdat_proto::wire as pb;

const SEED: [u8; 32] = [0xb5; 32];

/// Signs what `bundle` says with the identity of [`SEED`]; `false` if a key
/// has a length the signature inputs cannot take.
fn sign(bundle: &mut pb::PreKeyBundle) -> bool {
    let identity = hazmat::identity_forms(&SEED).0;
    bundle.identity_key = identity.to_vec();
    let Some(spk) = bundle.signed_prekey.as_mut() else { return false };
    let Ok(spk_key) = <[u8; 32]>::try_from(spk.public_key.as_slice()) else { return false };
    spk.signature = hazmat::sign(&SEED, &hazmat::prekey_signature_input(SignedKind::X25519, spk.id, &spk_key)).to_vec();
    let Some(pq) = bundle.pq_prekey.as_mut() else { return false };
    let kind = if pq.last_resort { SignedKind::MlKemLastResort } else { SignedKind::MlKemOneTime };
    pq.signature = hazmat::sign(&SEED, &hazmat::prekey_signature_input(kind, pq.id, &pq.public_key)).to_vec();
    let opk = match &bundle.one_time_prekey {
        Some(opk) => match <[u8; 32]>::try_from(opk.public_key.as_slice()) {
            Ok(key) => Some((opk.id, key)),
            Err(_) => return false,
        },
        None => None,
    };
    let input = hazmat::bundle_signature_input(
        &identity,
        &bundle.user_id,
        bundle.device_id,
        (spk.id, &spk_key),
        opk.as_ref().map(|(id, key)| (*id, key)),
        (pq.last_resort, pq.id, &pq.public_key),
    );
    bundle.signature = hazmat::sign(&SEED, &input).to_vec();
    true
}

fn check(bytes: &[u8]) -> Result<PreKeyBundle, BundleError> {
    let result = PreKeyBundle::from_bytes(bytes);
    if let Ok(bundle) = &result {
        assert!(bundle.to_bytes() == bytes, "a bundle was accepted in a non-canonical encoding");
    }
    result
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else { return };
    if mode % 2 == 0 {
        let _ = check(rest);
        return;
    }
    let mut reader = Reader::new(rest);
    let body = reader.chunk();
    let tail = reader.rest();
    let Ok(mut bundle) = pb::PreKeyBundle::decode(body) else { return };
    if !sign(&mut bundle) {
        return;
    }
    let mut bytes = vec![samizdat::wire::WIRE_VERSION];
    bytes.extend_from_slice(&bundle.encode_to_vec());
    let canonical = bytes.len();
    bytes.extend_from_slice(tail);
    let result = check(&bytes);
    if bytes.len() == canonical {
        assert!(
            !matches!(
                result,
                Err(BundleError::Signature | BundleError::SignedPreKeySignature | BundleError::PqPreKeySignature)
            ),
            "a correct signature was refused: {result:?}"
        );
        assert!(
            !matches!(result, Err(BundleError::Decode(samizdat::DecodeError::Protobuf))),
            "a canonical encoding was refused as malformed protobuf"
        );
    }
});
