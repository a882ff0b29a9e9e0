#!/usr/bin/env bash
# Windows natives of samizdat: samizdat_ffi.dll for x86_64 (MSVC), placed under JNA's resource prefix
# for the multi-platform jar, and a win_amd64 Python wheel.
#
# NOT RUN on the project's machines (they are Linux only); .github/workflows/release.yml runs it with
# Git Bash on a GitHub-hosted Windows runner. Needs: rustup with the MSVC toolchain, python3.
# Output: target/dist/native/win32-x86-64/samizdat_ffi.dll and
# target/dist/python/samizdat-<version>-py3-none-win_amd64.whl.
set -euo pipefail
cd "$(dirname "$0")/../.."
# shellcheck source=packaging/desktop/common.sh
source packaging/desktop/common.sh

rustup target add x86_64-pc-windows-msvc
# The MSVC linker keeps debug info in a separate .pdb (debug = false in the dist profile writes none
# worth shipping): the .dll itself carries no symbols to strip.
build_native x86_64-pc-windows-msvc samizdat_ffi.dll win32-x86-64
build_wheel --target x86_64-pc-windows-msvc
ls -l target/dist/native/*/ target/dist/python/
