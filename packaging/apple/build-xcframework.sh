#!/usr/bin/env bash
# The Apple packaging of samizdat: samizdatFFI.xcframework (static libraries for iOS devices, the iOS
# simulator and macOS, each with the generated C header and module map), zipped, and a Swift package
# that uses it as a SwiftPM binary target beside the generated Swift sources.
#
# NOT RUN on the project's machines (no Xcode or Swift toolchain there); .github/workflows/release.yml
# runs it on a GitHub-hosted macOS runner. Needs: rustup, Xcode 15+ (xcodebuild, lipo, swift).
# Output: target/dist/apple/samizdatFFI.xcframework.zip and target/dist/apple/Samizdat/ (Package.swift
# with the zip's URL and checksum, and Sources/Samizdat/Samizdat.swift).
set -euo pipefail
cd "$(dirname "$0")/../.."

version=$(cargo metadata --no-deps --format-version 1 | python3 -c \
  'import json,sys; print(next(p["version"] for p in json.load(sys.stdin)["packages"] if p["name"] == "samizdat-ffi"))')
# Where the release workflow uploads the zip (to be confirmed with the repository's address).
url="${SAMIZDAT_XCFRAMEWORK_URL:-https://github.com/samizdat-im/samizdat/releases/download/v$version/samizdatFFI.xcframework.zip}"

targets=(aarch64-apple-ios aarch64-apple-ios-sim x86_64-apple-ios aarch64-apple-darwin x86_64-apple-darwin)
rustup target add "${targets[@]}"

build=target/dist-build/apple
rm -rf "$build" && mkdir -p "$build"
for target in "${targets[@]}"; do
  # Static libraries: an app links them into its own binary (no dylib to embed and sign).
  cargo rustc -p samizdat-ffi --profile dist --target "$target" --crate-type staticlib
done
lib() { echo "target/$1/dist/libsamizdat_ffi.a"; }

# One library per platform: the simulator's and macOS's two architectures are merged by lipo.
mkdir -p "$build/ios-simulator" "$build/macos"
lipo -create "$(lib aarch64-apple-ios-sim)" "$(lib x86_64-apple-ios)" -output "$build/ios-simulator/libsamizdat_ffi.a"
lipo -create "$(lib aarch64-apple-darwin)" "$(lib x86_64-apple-darwin)" -output "$build/macos/libsamizdat_ffi.a"

# The headers: the generated samizdatFFI.h and module.modulemap that ffi/swift ships (checked against
# the library by `cargo xtask test`).
headers="$build/headers"
mkdir -p "$headers"
cp ffi/swift/Sources/samizdatFFI/samizdatFFI.h ffi/swift/Sources/samizdatFFI/module.modulemap "$headers/"
if grep -q -i vectorratchet "$headers/samizdatFFI.h"; then
  echo "build-xcframework: the header declares hazmat functions: refusing to package" >&2
  exit 1
fi
for archive in "$(lib aarch64-apple-ios)" "$build/ios-simulator/libsamizdat_ffi.a" "$build/macos/libsamizdat_ffi.a"; do
  if nm -g "$archive" 2>/dev/null | grep -q -i vectorratchet; then
    echo "build-xcframework: $archive defines hazmat symbols" >&2
    exit 1
  fi
  # Local symbols and debug info out; the exported C functions stay.
  strip -S -x "$archive"
done

out=target/dist/apple
rm -rf "$out" && mkdir -p "$out"
xcodebuild -create-xcframework \
  -library "$(lib aarch64-apple-ios)" -headers "$headers" \
  -library "$build/ios-simulator/libsamizdat_ffi.a" -headers "$headers" \
  -library "$build/macos/libsamizdat_ffi.a" -headers "$headers" \
  -output "$out/samizdatFFI.xcframework"
(cd "$out" && zip -q -r -y samizdatFFI.xcframework.zip samizdatFFI.xcframework)
checksum=$(swift package compute-checksum "$out/samizdatFFI.xcframework.zip")

# The released Swift package: the generated Swift sources over the binary target.
package="$out/Samizdat"
mkdir -p "$package/Sources/Samizdat"
cp ffi/swift/Sources/Samizdat/Samizdat.swift "$package/Sources/Samizdat/"
sed -e "s|@URL@|$url|" -e "s|@CHECKSUM@|$checksum|" packaging/apple/Package.swift.in > "$package/Package.swift"
# The package must resolve and build for macOS from the zip alone (the URL is not live yet: a local
# copy of the manifest points at the framework on disk).
check="$build/check"
mkdir -p "$check/Sources/Samizdat"
cp "$package/Sources/Samizdat/Samizdat.swift" "$check/Sources/Samizdat/"
cp -R "$out/samizdatFFI.xcframework" "$check/"
sed -e 's|url: "@URL@",|path: "samizdatFFI.xcframework"|' -e '/@CHECKSUM@/d' packaging/apple/Package.swift.in > "$check/Package.swift"
(cd "$check" && swift build -c release)
ls -l "$out"
