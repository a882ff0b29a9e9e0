//! Plaintext padding: the bucket table, padding and checked unpadding.

use chacha20::ChaCha20Rng;
use samizdat::hazmat;
use serde::{Deserialize, Serialize};

use crate::{
    format::{Meta, VectorSet},
    util::{R, VErr, bytes, h, random_vec},
};

/// `padding.json`.
pub(crate) struct Padding;

#[derive(Serialize, Deserialize)]
#[serde(tag = "operation", rename_all = "snake_case")]
pub(crate) enum PaddingCase {
    /// Padded sizes by plaintext length.
    Buckets { name: String, entries: Vec<Bucket> },
    /// PAD(plaintext).
    Pad {
        name: String,
        plaintext: String,
        #[serde(default)]
        padded: Option<String>,
    },
    /// UNPAD(data).
    Unpad {
        name: String,
        data: String,
        #[serde(default)]
        unpadded: Option<String>,
    },
}

#[derive(Serialize, Deserialize)]
pub(crate) struct Bucket {
    plaintext_len: usize,
    #[serde(default)]
    padded_len: Option<usize>,
}

/// Lengths on both sides of every bucket boundary, and the limit.
const LENGTHS: &[usize] = &[
    0, 1, 62, 63, 64, 65, 126, 127, 128, 255, 256, 511, 512, 1023, 1024, 2047, 2048, 4094, 4095, 4096, 4097, 8191,
    8192, 12287, 12288, 245_759, 245_760, 245_761,
];

impl VectorSet for Padding {
    type Case = PaddingCase;
    const META: Meta = Meta {
        file: "padding.json",
        section: "5 Padding",
        description: "`buckets`: the padded size of a plaintext of each length (null above MAX_PLAINTEXT_LEN = 245760, \
            which PAD refuses). `pad`: PAD(plaintext) = plaintext || 0x80 || zeros up to the bucket size. `unpad`: \
            UNPAD(data), or null when the padding does not verify (a decryptor reports that as Unauthenticated).",
        seed: 8,
        inputs: &["operation", "name", "entries[].plaintext_len", "plaintext", "data"],
    };

    fn inputs(rng: &mut ChaCha20Rng) -> Result<Vec<PaddingCase>, VErr> {
        let pad = |name: &str, plaintext: &[u8]| PaddingCase::Pad {
            name: name.to_owned(),
            plaintext: h(plaintext),
            padded: None,
        };
        let unpad =
            |name: &str, data: &[u8]| PaddingCase::Unpad { name: name.to_owned(), data: h(data), unpadded: None };
        let padded = |p: &[u8]| hazmat::pad(p).unwrap_or_default();
        let hi = padded(b"hi");
        let with = |mut data: Vec<u8>, offset: usize, value: u8| {
            if let Some(b) = data.get_mut(offset) {
                *b = value;
            }
            data
        };
        let mut too_long = hi.clone();
        too_long.extend_from_slice(&[0; 64]);
        let mut marker_then_byte = hi.clone();
        if let Some(b) = marker_then_byte.last_mut() {
            *b = 0x01;
        }
        Ok(vec![
            PaddingCase::Buckets {
                name: "bucket_table".to_owned(),
                entries: LENGTHS.iter().map(|&plaintext_len| Bucket { plaintext_len, padded_len: None }).collect(),
            },
            pad("empty", b""),
            pad("hi", b"hi"),
            pad("63_bytes", &random_vec(rng, 63)),
            pad("64_bytes", &random_vec(rng, 64)),
            pad("100_bytes", &random_vec(rng, 100)),
            pad("trailing_zeros", &[0x61, 0x62, 0x00, 0x00]),
            pad("trailing_marker_byte", &[0x61, 0x80]),
            pad("all_zero_plaintext", &[0u8; 10]),
            unpad("valid_hi", &hi),
            unpad("valid_empty", &padded(b"")),
            unpad("valid_trailing_zeros", &padded(&[0x61, 0x62, 0x00, 0x00])),
            unpad("valid_127_bytes", &padded(&random_vec(rng, 127))),
            unpad("reject_empty_input", b""),
            unpad("reject_all_zero", &[0u8; 64]),
            unpad("reject_wrong_marker", &with(hi.clone(), 2, 0x81)),
            unpad("reject_nonzero_after_marker", &marker_then_byte),
            unpad("reject_short_bucket", hi.get(..63).unwrap_or_default()),
            unpad("reject_too_much_padding", &too_long),
            unpad("reject_marker_only_in_128", &with(vec![0u8; 128], 0, 0x80)),
            unpad("reject_65_bytes", &with(vec![0u8; 65], 2, 0x80)),
        ])
    }

    fn compute(case: &PaddingCase) -> R<PaddingCase> {
        Ok(match case {
            PaddingCase::Buckets { name, entries } => PaddingCase::Buckets {
                name: name.clone(),
                entries: entries
                    .iter()
                    .map(|e| Bucket {
                        plaintext_len: e.plaintext_len,
                        padded_len: hazmat::pad(&vec![0u8; e.plaintext_len]).map(|p| p.len()),
                    })
                    .collect(),
            },
            PaddingCase::Pad { name, plaintext, .. } => PaddingCase::Pad {
                name: name.clone(),
                plaintext: plaintext.clone(),
                padded: hazmat::pad(&bytes("plaintext", plaintext)?).map(h),
            },
            PaddingCase::Unpad { name, data, .. } => PaddingCase::Unpad {
                name: name.clone(),
                data: data.clone(),
                unpadded: hazmat::unpad(&bytes("data", data)?).map(h),
            },
        })
    }
}
