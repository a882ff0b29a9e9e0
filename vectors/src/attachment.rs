//! Attachments (PROTOCOL.md 22): files encrypted under a given key, and
//! descriptions and ciphertexts that must be refused.
//!
//! Every ciphertext is computed twice: by the library
//! (`hazmat::attachment_encrypt_with_key`) and here from the construction
//! (the padding laid out by hand, each chunk sealed with the
//! `chacha20poly1305` crate under its nonce); the vector is not written if the
//! two disagree. A plaintext is given by its length: byte `i` is `i mod 251`.

use chacha20::ChaCha20Rng;
use samizdat::{
    attachment::{self, Attachment, AttachmentError, CHUNK_LEN},
    hazmat,
};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::{
    format::{Meta, VectorSet},
    util::{R, VErr, agree, array, bytes, chacha20poly1305_seal, err, h, random},
};

/// `attachment.json`.
pub(crate) struct Attachments;

/// The plaintext of `len` bytes: byte `i` is `i mod 251`.
fn plaintext(len: u64) -> Vec<u8> {
    (0..len).map(|i| u8::try_from(i % 251).unwrap_or(0)).collect()
}

/// BLAKE3 with a 32-byte output (the `blake3` crate, not the library).
fn blake3_256(bytes: &[u8]) -> [u8; 32] {
    *blake3::hash(bytes).as_bytes()
}

/// Ciphertexts up to this length are given whole; longer ones by digest.
const WHOLE_UP_TO: usize = 4096;

#[derive(Serialize, Deserialize)]
#[serde(tag = "operation", rename_all = "snake_case")]
pub(crate) enum AttachmentCase {
    /// A file of `plaintext_len` bytes (byte `i` = `i mod 251`) under `key`.
    Encrypt {
        name: String,
        key: String,
        plaintext_len: u64,
        #[serde(default)]
        padded_len: u64,
        #[serde(default)]
        chunks: u64,
        #[serde(default)]
        ciphertext_len: u64,
        /// BLAKE3 of the ciphertext (32 bytes).
        #[serde(default)]
        digest: String,
        /// The 81-byte description.
        #[serde(default)]
        description: String,
        /// The whole ciphertext, when at most 4,096 bytes; else empty.
        #[serde(default)]
        ciphertext: String,
    },
    /// `Decrypt(description, ciphertext)`: `result` is `{"plaintext_len": n}`
    /// (the plaintext is the pattern) or `{"error": ...}`.
    Decrypt {
        name: String,
        description: String,
        ciphertext: String,
        #[serde(default)]
        result: Value,
    },
    /// `Attachment::from_bytes(bytes)`: `{"plaintext_len": n}` or
    /// `{"error": "malformed"}`.
    Describe {
        name: String,
        bytes: String,
        #[serde(default)]
        result: Value,
    },
}

impl VectorSet for Attachments {
    type Case = AttachmentCase;
    const META: Meta = Meta {
        file: "attachment.json",
        section: "22 Attachments",
        description: "`encrypt`: a file of `plaintext_len` bytes, byte i = i mod 251, under `key` (PROTOCOL.md \
            22.1): `padded_len` = PaddedLen(n) = max(1024, Padme(n + 1)); `chunks` = ceil(padded_len / 65536); the \
            padded stream is the plaintext, 0x80, then zeros to padded_len; chunk i (65,536 bytes, the last one \
            fewer) is sealed with ChaCha20-Poly1305 under `key`, nonce 0x000000 || u64be(i) || (0x01 for the last \
            chunk, else 0x00), no associated data; the ciphertext is the sealed chunks in order (`ciphertext`, \
            given whole up to 4,096 bytes), `ciphertext_len` its length, `digest` its BLAKE3 (32 bytes), and \
            `description` = 0x02 || key || digest || u64be(plaintext_len) || u64be(ciphertext_len) (22.2). `decrypt`: \
            Decrypt(description, ciphertext) of 22.3: `{\"plaintext_len\": n}` (the pattern above) or \
            `{\"error\": \"unauthenticated\", \"chunk\": i}`, `{\"error\": \"wrong_length\"}` or \
            `{\"error\": \"mismatch\"}`: a flipped byte, a file cut short or extended, a digest altered, a \
            padding that is not 0x80 then zeros. `describe`: Attachment::from_bytes (22.2): `{\"plaintext_len\": \
            n}` or `{\"error\": \"malformed\"}`.",
        seed: 22,
        inputs: &["operation", "name", "key", "plaintext_len", "description", "ciphertext", "bytes"],
    };

    fn inputs(rng: &mut ChaCha20Rng) -> Result<Vec<AttachmentCase>, VErr> {
        let encrypt = |name: &str, key: [u8; 32], len: u64| AttachmentCase::Encrypt {
            name: name.to_owned(),
            key: h(key),
            plaintext_len: len,
            padded_len: 0,
            chunks: 0,
            ciphertext_len: 0,
            digest: String::new(),
            description: String::new(),
            ciphertext: String::new(),
        };
        let chunk = CHUNK_LEN as u64;
        let mut cases = vec![
            encrypt("empty", [7; 32], 0),
            encrypt("one_byte", [7; 32], 1),
            encrypt("largest_of_the_first_class", random::<32>(rng), 1023),
            encrypt("first_of_the_second_class", random::<32>(rng), 1024),
            encrypt("one_chunk_less_one", random::<32>(rng), chunk - 1),
            encrypt("one_chunk", random::<32>(rng), chunk),
            encrypt("three_chunks_and_a_bit", random::<32>(rng), 3 * chunk + 5),
        ];
        // Refusals, on a small file (one chunk) and on a two-chunk file.
        let key = random::<32>(rng);
        let (description, ciphertext) = sealed(&key, 5)?;
        let decrypt = |name: &str, description: &[u8], ciphertext: &[u8]| AttachmentCase::Decrypt {
            name: name.to_owned(),
            description: h(description),
            ciphertext: h(ciphertext),
            result: Value::Null,
        };
        let flipped = |at: usize| {
            let mut c = ciphertext.clone();
            if let Some(b) = c.get_mut(at) {
                *b ^= 1;
            }
            c
        };
        let mut digest_altered = description.clone();
        if let Some(b) = digest_altered.get_mut(40) {
            *b ^= 1;
        }
        // A chunk that opens, with a wrong padding: sealed by hand.
        let mut bad_padding = [plaintext(5), vec![0x80], vec![0; 1017], vec![1]].concat();
        let tag_sealed = chacha20poly1305_seal(&key, &nonce(0, true), &[], &bad_padding)?;
        bad_padding = tag_sealed;
        let mut bad_padding_description = description.clone();
        if let Some(d) = bad_padding_description.get_mut(33..65) {
            d.copy_from_slice(&blake3_256(&bad_padding));
        }
        cases.extend([
            decrypt("genuine", &description, &ciphertext),
            decrypt("byte_flipped_in_the_body", &description, &flipped(3)),
            decrypt("byte_flipped_in_the_tag", &description, &flipped(ciphertext.len() - 1)),
            decrypt("cut_short", &description, ciphertext.get(..ciphertext.len() - 1).unwrap_or_default()),
            decrypt("extended", &description, &[&ciphertext[..], &[0]].concat()),
            decrypt("digest_altered", &digest_altered, &ciphertext),
            decrypt("padding_not_zeros", &bad_padding_description, &bad_padding),
        ]);
        let (two_description, two) = sealed(&key, chunk + 10)?;
        let sealed_chunk = CHUNK_LEN + 16;
        let (first, second) = two.split_at(sealed_chunk);
        cases.extend([
            decrypt("two_chunks_genuine", &two_description, &two),
            decrypt("two_chunks_swapped", &two_description, &[second, first].concat()),
            decrypt("two_chunks_last_dropped", &two_description, first),
            decrypt("two_chunks_first_repeated", &two_description, &[first, first].concat()),
        ]);
        // Descriptions.
        let describe = |name: &str, bytes: Vec<u8>| AttachmentCase::Describe {
            name: name.to_owned(),
            bytes: h(bytes),
            result: Value::Null,
        };
        // Version 1 (SHA-256 digests, never released) and an unknown 3.
        let with_version = |v: u8| {
            let mut other = description.clone();
            if let Some(b) = other.first_mut() {
                *b = v;
            }
            other
        };
        let mut lengths_disagree = description.clone();
        if let Some(b) = lengths_disagree.last_mut() {
            *b ^= 1;
        }
        let too_large = (1u64 << 48) + 1;
        let too_large_description = [
            description.get(..65).unwrap_or_default(),
            &too_large.to_be_bytes(),
            &attachment::ciphertext_len(too_large).to_be_bytes(),
        ]
        .concat();
        cases.extend([
            describe("describe_genuine", description.clone()),
            describe("describe_80_bytes", description.get(..80).unwrap_or_default().to_vec()),
            describe("describe_82_bytes", [&description[..], &[0]].concat()),
            describe("describe_version_1", with_version(1)),
            describe("describe_version_3", with_version(3)),
            describe("describe_lengths_disagree", lengths_disagree),
            describe("describe_over_2_48_bytes", too_large_description),
        ]);
        Ok(cases)
    }

    fn compute(case: &AttachmentCase) -> R<AttachmentCase> {
        Ok(match case {
            AttachmentCase::Encrypt { name, key, plaintext_len, .. } => {
                let key_bytes = array::<32>("key", key)?;
                let (description, ciphertext) = sealed(&key_bytes, *plaintext_len)?;
                let padded = attachment::padded_len(*plaintext_len);
                AttachmentCase::Encrypt {
                    name: name.clone(),
                    key: key.clone(),
                    plaintext_len: *plaintext_len,
                    padded_len: padded,
                    chunks: padded.div_ceil(CHUNK_LEN as u64),
                    ciphertext_len: ciphertext.len() as u64,
                    digest: h(blake3_256(&ciphertext)),
                    description: h(&description),
                    ciphertext: if ciphertext.len() <= WHOLE_UP_TO { h(&ciphertext) } else { String::new() },
                }
            }
            AttachmentCase::Decrypt { name, description, ciphertext, .. } => {
                let described = Attachment::from_bytes(&bytes("description", description)?)
                    .map_err(|e| err("description", e.to_string()))?;
                let mut out = Vec::new();
                let result = match attachment::decrypt(&described, &bytes("ciphertext", ciphertext)?[..], &mut out) {
                    Ok(()) => {
                        agree("plaintext", &out, &plaintext(described.plaintext_len()))?;
                        json!({ "plaintext_len": described.plaintext_len() })
                    }
                    Err(e) => error(&e),
                };
                AttachmentCase::Decrypt {
                    name: name.clone(),
                    description: description.clone(),
                    ciphertext: ciphertext.clone(),
                    result,
                }
            }
            AttachmentCase::Describe { name, bytes: text, .. } => {
                let result = match Attachment::from_bytes(&bytes("bytes", text)?) {
                    Ok(described) => json!({ "plaintext_len": described.plaintext_len() }),
                    Err(e) => error(&e),
                };
                AttachmentCase::Describe { name: name.clone(), bytes: text.clone(), result }
            }
        })
    }
}

/// An error as the vectors name it.
fn error(e: &AttachmentError) -> Value {
    match e {
        AttachmentError::Unauthenticated { chunk } => json!({"error": "unauthenticated", "chunk": chunk}),
        AttachmentError::WrongLength => json!({"error": "wrong_length"}),
        AttachmentError::Mismatch => json!({"error": "mismatch"}),
        AttachmentError::Malformed => json!({"error": "malformed"}),
        other => json!({"error": format!("{other:?}")}),
    }
}

/// The nonce of chunk `index` (22.1).
fn nonce(index: u64, last: bool) -> [u8; 12] {
    let mut n = [0u8; 12];
    if let Some(counter) = n.get_mut(3..11) {
        counter.copy_from_slice(&index.to_be_bytes());
    }
    if let Some(flag) = n.get_mut(11) {
        *flag = u8::from(last);
    }
    n
}

/// The description and the ciphertext of the pattern file of `len` bytes
/// under `key`: the library's, checked against the construction by hand.
fn sealed(key: &[u8; 32], len: u64) -> R<(Vec<u8>, Vec<u8>)> {
    let plaintext = plaintext(len);
    let (description, ciphertext) =
        hazmat::attachment_encrypt_with_key(key, &plaintext).map_err(|e| err("ciphertext", e.to_string()))?;
    // By hand: the padded stream, cut into chunks, each sealed.
    let padded = usize::try_from(attachment::padded_len(len)).map_err(|_| err("plaintext_len", "too large"))?;
    let mut stream = plaintext;
    stream.push(0x80);
    stream.resize(padded, 0);
    let pieces: Vec<&[u8]> = stream.chunks(CHUNK_LEN).collect();
    let mut again = Vec::new();
    for (i, piece) in pieces.iter().enumerate() {
        let index = u64::try_from(i).map_err(|_| err("chunks", "too many"))?;
        again.extend(chacha20poly1305_seal(key, &nonce(index, i + 1 == pieces.len()), &[], piece)?);
    }
    agree("ciphertext", &ciphertext, &again)?;
    let by_hand = [
        &[2u8][..],
        key,
        &blake3_256(&again),
        &len.to_be_bytes(),
        &u64::try_from(again.len()).unwrap_or(u64::MAX).to_be_bytes(),
    ]
    .concat();
    agree("description", &description, &by_hand)?;
    Ok((description, ciphertext))
}
