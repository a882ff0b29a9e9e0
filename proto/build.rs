//! Compiles `proto/*.proto` with the pure-Rust `protox` compiler, so no system
//! `protoc` is needed.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    const FILES: [&str; 2] = ["proto/wire.proto", "proto/storage.proto"];
    for file in FILES {
        println!("cargo:rerun-if-changed={file}");
    }
    let descriptors = protox::compile(FILES, ["proto"])?;
    prost_build::Config::new()
        .type_attribute(".samizdat.storage", "#[derive(zeroize::Zeroize)]")
        .compile_fds(descriptors)?;
    Ok(())
}
