# shellcheck shell=bash
# Shared by build-macos.sh and build-windows.sh (sourced, not run). NOT RUN on the project's machines.

# The pinned Python tools, as `cargo xtask package` pins them on Linux.
maturin_version=1.16.0

# build_native TRIPLE FILE JNA_PREFIX: the FFI library with the dist profile (no hazmat), checked for
# hazmat symbols, copied to target/dist/native/JNA_PREFIX/FILE.
build_native() {
  local triple=$1 file=$2 prefix=$3
  cargo build -p samizdat-ffi --profile dist --target "$triple"
  local built="target/$triple/dist/$file"
  # The exported C functions of a hazmat build would name VectorRatchet.
  if grep -a -q -i vectorratchet "$built"; then
    echo "$triple: the library carries hazmat symbols: refusing to package" >&2
    exit 1
  fi
  mkdir -p "target/dist/native/$prefix"
  cp "$built" "target/dist/native/$prefix/$file"
  case "$file" in
    # Local symbols out (uniffi-bindgen has already read the metadata on Linux; nothing reads them here).
    *.dylib) strip -x "target/dist/native/$prefix/$file" ;;
  esac
}

# build_wheel ARGS...: a wheel of the bindings for this platform (maturin, the dist profile).
build_wheel() {
  python3 -m venv target/dist-tools
  # A venv keeps its programs in Scripts/ on Windows, bin/ elsewhere.
  local bin=target/dist-tools/bin
  if [ -d target/dist-tools/Scripts ]; then bin=target/dist-tools/Scripts; fi
  "$bin/python" -m pip install -q "maturin==$maturin_version"
  "$bin/maturin" build --profile dist -m ffi/Cargo.toml --out target/dist/python "$@"
  if python3 - target/dist/python/*.whl <<'PY'
import sys, zipfile
for path in sys.argv[1:]:
    with zipfile.ZipFile(path) as wheel:
        for name in wheel.namelist():
            if name.endswith(".py") and b"VectorRatchet" in wheel.read(name):
                sys.exit(0)
sys.exit(1)
PY
  then
    echo "a wheel carries the hazmat VectorRatchet: refusing to package" >&2
    exit 1
  fi
}
