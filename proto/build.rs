//! Compiles `proto/*.proto` with the pure-Rust `protox` compiler, so no system
//! `protoc` is needed.

#![deny(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    clippy::arithmetic_side_effects
)]

fn main() -> Result<(), Box<dyn std::error::Error>> {
    const FILES: [&str; 2] = ["proto/wire.proto", "proto/storage.proto"];
    for file in FILES {
        println!("cargo:rerun-if-changed={file}");
    }
    let descriptors = protox::compile(FILES, ["proto"])?;
    prost_build::Config::new()
        .type_attribute(".samizdat.storage", "#[derive(zeroize::Zeroize)]")
        // Control content carries chain keys: wiped on drop like stored records.
        .type_attribute(".samizdat.wire.v1.Control", "#[derive(zeroize::Zeroize)]")
        .type_attribute(".samizdat.wire.v1.SenderKeyDistribution", "#[derive(zeroize::Zeroize)]")
        .type_attribute(".samizdat.wire.v1.SenderKeyRequest", "#[derive(zeroize::Zeroize)]")
        .type_attribute(".samizdat.wire.v1.Reset", "#[derive(zeroize::Zeroize)]")
        .type_attribute(".samizdat.wire.v1.Resend", "#[derive(zeroize::Zeroize)]")
        .type_attribute(".samizdat.wire.v1.LinkCode", "#[derive(zeroize::Zeroize)]")
        .type_attribute(".samizdat.wire.v1.LinkProvisioning", "#[derive(zeroize::Zeroize)]")
        .type_attribute(".samizdat.wire.v1.SentSync", "#[derive(zeroize::Zeroize)]")
        .type_attribute(".samizdat.wire.v1.UserIdentityHandover", "#[derive(zeroize::Zeroize)]")
        .type_attribute(".samizdat.wire.v1.HandoverAck", "#[derive(zeroize::Zeroize)]")
        // A message body is up to 256 KiB: as `Bytes`, decoding it from a
        // slice copies it once (into a `Vec<u8>` field prost copies it twice)
        // and a `Vec` moves in and out without a copy.
        .bytes([".samizdat.wire.v1.RatchetMessage.body"])
        .compile_fds(descriptors)?;
    Ok(())
}
