#!/usr/bin/env bash
# macOS natives of samizdat: libsamizdat_ffi.dylib for Apple silicon and Intel (and a universal copy),
# placed under JNA's resource prefixes for the multi-platform jar, and a universal2 Python wheel.
#
# NOT RUN on the project's machines (they are Linux only); .github/workflows/release.yml runs it on a
# GitHub-hosted macOS runner. Needs: rustup, Xcode command line tools (lipo, strip), python3.
# Output: target/dist/native/{darwin-aarch64,darwin-x86-64,macos-universal}/libsamizdat_ffi.dylib and
# target/dist/python/samizdat-<version>-py3-none-macosx_*_universal2.whl.
set -euo pipefail
cd "$(dirname "$0")/../.."
# shellcheck source=packaging/desktop/common.sh
source packaging/desktop/common.sh

rustup target add aarch64-apple-darwin x86_64-apple-darwin
export MACOSX_DEPLOYMENT_TARGET=11.0

build_native aarch64-apple-darwin libsamizdat_ffi.dylib darwin-aarch64
build_native x86_64-apple-darwin libsamizdat_ffi.dylib darwin-x86-64
mkdir -p target/dist/native/macos-universal
lipo -create target/dist/native/darwin-aarch64/libsamizdat_ffi.dylib \
  target/dist/native/darwin-x86-64/libsamizdat_ffi.dylib \
  -output target/dist/native/macos-universal/libsamizdat_ffi.dylib

build_wheel --target universal2-apple-darwin
ls -l target/dist/native/*/ target/dist/python/
