//! `uniffi-bindgen`: generates Kotlin, Swift and Python bindings from the
//! built `samizdat-ffi` library, with the same uniffi version as its runtime.
//!
//! ```sh
//! cargo run -p uniffi-bindgen --bin uniffi-bindgen -- generate --library target/debug/libsamizdat_ffi.so --language kotlin --out-dir target/bindings/kotlin
//! ```

fn main() {
    uniffi::uniffi_bindgen_main()
}
