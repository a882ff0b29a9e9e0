// swift-tools-version:5.9
// The Swift package of samizdat. Sources/ holds the UniFFI-generated bindings (regenerate them with
// `cargo xtask bindings`; `cargo xtask test` fails if they drift). The native library is built by cargo
// and linked from the linker's search path: see "Bindings" in the repository's README.md. Times are `Date`,
// durations `TimeInterval` and paths file `URL`s (ffi/uniffi.toml). Not compiled on the project's machines.
import PackageDescription

let package = Package(
    name: "Samizdat",
    platforms: [.macOS(.v12), .iOS(.v15)],
    products: [
        .library(name: "Samizdat", targets: ["Samizdat"]),
    ],
    targets: [
        // The C interface of libsamizdat_ffi: the generated header and module map.
        .systemLibrary(name: "samizdatFFI", path: "Sources/samizdatFFI"),
        .target(
            name: "Samizdat",
            dependencies: ["samizdatFFI"],
            path: "Sources/Samizdat",
            linkerSettings: [.linkedLibrary("samizdat_ffi")]
        ),
        .testTarget(name: "SamizdatTests", dependencies: ["Samizdat"], path: "Tests/SamizdatTests"),
    ]
)
