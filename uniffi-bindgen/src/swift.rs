//! `uniffi-bindgen-swift`: Swift sources, C headers and modulemaps laid out
//! for a Swift package or an XCFramework.

fn main() {
    uniffi::uniffi_bindgen_swift()
}
