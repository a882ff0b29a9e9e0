//! Attachment decryption (PROTOCOL.md 22) of a genuine file after hostile
//! edits to its blob and its description: no panic, and
//!
//! - `decrypt` succeeds exactly when neither was changed, and then gives the
//!   file back; any change is a typed error (a changed length of the same
//!   size class is caught by the padding, a changed key by the first chunk,
//!   a changed digest at the end);
//! - the piece-at-a-time `Decryptor`, fed the same blob in pieces cut where
//!   the input says, agrees: same success, same bytes;
//! - `decrypt_range`, which checks each chunk it reads but not the digest
//!   or the padding (PROTOCOL.md 22.2, 22.3), gives back the genuine file's
//!   bytes for any range within the genuine file: edits of this one blob
//!   cannot make it serve other bytes there. (Past the genuine length, under
//!   a description whose length was raised, it serves padding: the limit
//!   22.2 states, not checked here.)
//!
//! Input: two bytes give the file's length (a multiple of 3, up to 196,605
//! bytes, so up to four chunks), two the range, then edits of 6 bytes each
//! (what, where, a byte), then the rest cuts the pieces. The file is
//! encrypted each time under a fixed key (`hazmat`), its bytes `i * 7 mod
//! 256`.
#![no_main]

use std::io::Cursor;

use libfuzzer_sys::fuzz_target;
use samizdat::{
    attachment::{self, Attachment, Decryptor},
    hazmat,
};

/// How many edits an input makes at most.
const MAX_EDITS: usize = 8;

/// One edit of the blob or the description; `at` is reduced to fit.
fn edit(blob: &mut Vec<u8>, description: &mut Vec<u8>, what: u8, at: u32, byte: u8) {
    let at = at as usize;
    let bit = 1u8 << (byte % 8);
    match what % 7 {
        0 if !blob.is_empty() => {
            let i = at % blob.len();
            blob[i] ^= bit;
        }
        1 => blob.truncate(at % (blob.len() + 1)),
        2 => blob.push(byte),
        3 if !blob.is_empty() => {
            // A run of the blob repeated elsewhere (a chunk or tag copied).
            let from = at % blob.len();
            let len = (usize::from(byte) * 257).min(blob.len() - from);
            let to = (at / 7) % (blob.len() + 1);
            let run = blob[from..from + len].to_vec();
            blob.splice(to..to, run);
        }
        4 if !blob.is_empty() => {
            let i = at % blob.len();
            blob.remove(i);
        }
        5 if !description.is_empty() => {
            let i = at % description.len();
            description[i] ^= bit;
        }
        6 => description.truncate(at % (description.len() + 1)),
        _ => {}
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((head, rest)) = data.split_first_chunk::<4>() else { return };
    let len = usize::from(u16::from_le_bytes([head[0], head[1]])) * 3;
    let file: Vec<u8> = (0..len).map(|i| (i * 7) as u8).collect();
    let (genuine_description, genuine_blob) =
        hazmat::attachment_encrypt_with_key(&[0x42; 32], &file).expect("encrypting a file in memory");
    let (mut description, mut blob) = (genuine_description.clone(), genuine_blob.clone());
    let mut edits = rest.chunks_exact(6);
    for e in edits.by_ref().take(MAX_EDITS) {
        let what = e[0];
        if what >= 0xf0 {
            break;
        }
        edit(&mut blob, &mut description, what, u32::from_le_bytes([e[1], e[2], e[3], e[4]]), e[5]);
    }
    let cuts = edits.remainder();
    let untouched = blob == genuine_blob && description == genuine_description;

    let attachment = match Attachment::from_bytes(&description) {
        Ok(attachment) => attachment,
        Err(_) => {
            assert!(!untouched, "the genuine description was refused");
            return;
        }
    };

    // The whole file.
    let mut out = Vec::new();
    let whole = attachment::decrypt(&attachment, &blob[..], &mut out);
    assert_eq!(whole.is_ok(), untouched, "decrypt: {whole:?}, changed: {}", !untouched);
    if whole.is_ok() {
        assert!(out == file, "decrypt gave other bytes");
    }

    // A piece at a time, cut where the input says (pieces of 1 to 70,000 bytes).
    let mut decryptor = Decryptor::new(&attachment);
    let mut pieced = Vec::new();
    let mut at = 0;
    let mut sizes = cuts.chunks(2).map(|c| usize::from(c[0]) * 271 + usize::from(*c.get(1).unwrap_or(&0)) + 1);
    let mut streamed = Ok(());
    while at < blob.len() {
        let size = sizes.next().unwrap_or(blob.len()).min(blob.len() - at);
        if let Err(error) = decryptor.update(&blob[at..at + size], &mut pieced) {
            streamed = Err(error);
            break;
        }
        at += size;
    }
    let streamed = streamed.and_then(|()| decryptor.finish());
    assert_eq!(streamed.is_ok(), whole.is_ok(), "Decryptor: {streamed:?}, decrypt: {whole:?}");
    if streamed.is_ok() {
        assert!(pieced == file, "the Decryptor gave other bytes");
    }

    // A range: never bytes that are not the file's.
    let plaintext_len = usize::try_from(attachment.plaintext_len()).unwrap_or(usize::MAX);
    if plaintext_len > 0 {
        let offset = usize::from(head[2]) * 1031 % plaintext_len;
        let range_len = (usize::from(head[3]) * 517).min(plaintext_len - offset);
        let mut range = Vec::new();
        let read =
            attachment::decrypt_range(&attachment, Cursor::new(&blob), offset as u64, range_len as u64, &mut range);
        if untouched {
            assert!(read.is_ok(), "a range of the genuine file: {read:?}");
        }
        if read.is_ok() && offset + range_len <= file.len() {
            assert!(range == file[offset..offset + range_len], "decrypt_range gave bytes that are not the file's");
        }
    }
});
