//! Linking (PROTOCOL.md 23.8), the sent sync (23.7) and the user identity
//! handover (23.9): no panic, whatever the bytes.
//!
//! The first byte picks the mode:
//! - 0: the bytes are a scanned code (`LinkCode::from_bytes`), and also
//!   control content read as a sent sync (`parse_sent_sync`) and as a
//!   handover (`parse_handover`: whatever passes carries a list that
//!   verifies under the seed's key);
//! - 1: the bytes are a link message given to a fixed offer: random bytes
//!   never open (only a device that saw the code's secret seals one);
//! - 2: the bytes are a plaintext, sealed here to that offer by hand (the
//!   formula of 23.8), so the checks after the AEAD (K8 to K10) see fuzzed
//!   provisionings: whatever opens names the offer's device in its list.
#![no_main]

use chacha20poly1305::{
    ChaCha20Poly1305, KeyInit, Nonce,
    aead::{Aead, Payload},
};
use hkdf::Hkdf;
use libfuzzer_sys::fuzz_target;
use samizdat::{
    hazmat,
    user::{LinkCode, SignedDeviceList},
};
use sha2::Sha256;

const LABEL: &[u8] = b"samizdat/v1/link";
const OFFER_SECRET: [u8; 32] = [0x21; 32];
const SECRET: [u8; 32] = [0x43; 32];
const LINKER_SECRET: [u8; 32] = [0x65; 32];
const DEVICE_SEED: [u8; 32] = [0x87; 32];

/// `pad_row` (14.4): the value, 0x80, zeros to max(512, its bucket).
fn pad_row(value: &[u8]) -> Vec<u8> {
    let needed = value.len() + 1;
    let bucket = if needed <= 64 {
        64
    } else if needed <= 4096 {
        needed.next_power_of_two()
    } else {
        needed.div_ceil(4096) * 4096
    };
    let mut out = value.to_vec();
    out.push(0x80);
    out.resize(bucket.max(512), 0);
    out
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else { return };
    let identity = hazmat::identity_forms(&DEVICE_SEED).0;
    let Ok(offer) = hazmat::link_offer("alice", 2, &identity, OFFER_SECRET, SECRET, 1_000) else { return };
    match mode % 3 {
        0 => {
            if let Ok(code) = LinkCode::from_bytes(rest) {
                assert!(!code.address().user_id().is_empty());
            }
            let _ = hazmat::parse_sent_sync(rest);
            if let Some(Ok((key, list, _))) = hazmat::parse_handover(rest) {
                let list = SignedDeviceList::from_bytes(&list).expect("a handover's list reads");
                let verified = list.verify().expect("a handover's list verifies");
                assert_eq!(verified.user_identity_key().as_bytes(), &key);
            }
        }
        1 => {
            assert!(hazmat::link_open(&offer, rest).is_err(), "bytes made without the secret opened");
        }
        _ => {
            let linker = hazmat::x25519_public(&LINKER_SECRET);
            let offer_public = hazmat::x25519_public(&OFFER_SECRET);
            let Some(shared) = hazmat::x25519(&LINKER_SECRET, &offer_public) else { return };
            let mut okm = [0u8; 44];
            let info = [LABEL, offer.code(), &linker].concat();
            if Hkdf::<Sha256>::new(Some(&SECRET), &shared).expand(&info, &mut okm).is_err() {
                return;
            }
            let cipher = ChaCha20Poly1305::new_from_slice(&okm[..32]).expect("a 32-byte key");
            let nonce = Nonce::try_from(&okm[32..]).expect("a 12-byte nonce");
            let aad = [LABEL, &linker].concat();
            let Ok(sealed) = cipher.encrypt(&nonce, Payload { msg: &pad_row(rest), aad: &aad }) else { return };
            let message = [&[1u8][..], &linker, &sealed].concat();
            if let Ok(opened) = hazmat::link_open(&offer, &message) {
                // K9: a list that names this device with its key.
                let list = samizdat::user::SignedDeviceList::from_bytes(&opened.device_list)
                    .and_then(|signed| signed.verify())
                    .expect("an opened list verifies");
                assert_eq!(list.user_id(), "alice");
                assert_eq!(list.device(2).map(|k| *k.as_bytes()), Some(identity));
            }
        }
    }
});
