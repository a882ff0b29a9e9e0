//! The bindings: build `libsamizdat_ffi` (debug: the dependencies are
//! already optimised by the workspace profile, and a release build of SQLite
//! alone takes about a minute), generate the Kotlin and Swift sources with
//! the workspace's own `uniffi-bindgen`, then test them.
//!
//! - `cargo xtask bindings`: build and generate only. Writes the Kotlin
//!   sources to `target/bindings/kotlin` and refreshes the Swift package
//!   sources shipped in `ffi/swift/Sources`. Fails if a generated Kotlin
//!   `data class` holds a `ByteArray` (equal only to itself: bytes in
//!   records are value classes, `ffi/src/values.rs`), or if a time, a
//!   duration or a file path in the generated Swift is not a `Date`, a
//!   `TimeInterval` or a `URL` ([`check_swift_surface`]).
//! - `cargo xtask test` (through [`test()`]): the above (the Swift sources are
//!   checked against the shipped ones instead of written), then
//!   - Swift: the header declares every symbol the library exports, and the
//!     Swift file calls each one and declares every method and type (there is
//!     no Swift toolchain here to compile it);
//!   - the library is built again with the `hazmat` feature (which adds
//!     `VectorRatchet`, for replaying `vectors/ratchet_transcript.json`) and
//!     the Kotlin sources generated from it: the test builds below use it,
//!     the shipped Swift sources never do;
//!   - Kotlin: `mvn -B -q package` in `ffi/tests/kotlin` (JUnit 5 on the JVM,
//!     JNA; Maven fetches its own dependencies), then checks that the jar
//!     carries the native library under JNA's resource prefix;
//!   - Python: a venv in `target/py-venv` with pinned maturin, pytest and
//!     mypy, a wheel built by maturin (with `hazmat`; the package
//!     `ffi/python/samizdat` with the generated module under it), installed,
//!     and pytest on `ffi/tests/python` (whose `test_ergonomics.py` also runs
//!     `mypy --strict` on the README's Python example against the wheel);
//!   - the cost of one encrypt + decrypt + commit round in Rust, Kotlin and
//!     Python, printed side by side (measured, not asserted).
//!
//! Needs `python3` (with `venv`), a JDK 17+ and Maven 3 on the `PATH`.

use std::{
    collections::BTreeSet,
    env, fs,
    path::{Path, PathBuf},
    process::Command,
    time::Instant,
};

use super::{root, run};

/// Pinned Python tools (PyPI).
const MATURIN: &str = "maturin==1.16.0";
const PYTEST: &str = "pytest==9.2.0";
/// Type-checks the README's Python example against the installed wheel's types.
const MYPY: &str = "mypy==2.4.1";
/// An independent BLAKE3, to check attachment digests in the tests.
const BLAKE3: &str = "blake3==1.0.11";

/// The cdylib, as cargo names it on this platform.
const LIBRARY: &str = "libsamizdat_ffi.so";
/// JNA's resource prefix for this platform (`com.sun.jna.Platform.RESOURCE_PREFIX`).
const JNA_PREFIX: &str = "linux-x86-64";
/// The one source of `ffi/src` that only the test builds compile (its types
/// are not in the shipped Swift sources).
const HAZMAT_SOURCE: &str = "hazmat.rs";
/// The C symbols' prefixes: scaffolding functions, and the runtime's helpers.
const SYMBOL_PREFIXES: [&str; 2] = ["uniffi_samizdat_ffi_", "ffi_samizdat_ffi_"];

/// `cargo xtask bindings`: builds the library and generates the sources.
pub(crate) fn generate() -> Result<(), String> {
    let started = Instant::now();
    build_and_generate(Features::Shipped)?;
    copy_dir(&target().join("bindings/swift"), &swift_sources())?;
    check_swift_surface(&read_text(&swift_sources().join("Samizdat/Samizdat.swift"))?)?;
    eprintln!(
        "xtask bindings: Kotlin in target/bindings/kotlin, Swift in ffi/swift/Sources ({:.0} s)",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// The bindings' part of `cargo xtask test`.
pub(crate) fn test() -> Result<(), String> {
    let started = Instant::now();
    build_and_generate(Features::Shipped)?;
    let swift = check_swift()?;
    let rust = rust_round_cost()?;
    build_and_generate(Features::Hazmat)?;
    let kotlin = test_kotlin()?;
    let python = test_python()?;
    eprintln!("bindings: one encrypt+decrypt+commit round on SQLite (debug library; not asserted):");
    for line in [&rust, &kotlin.cost, &python.cost] {
        eprintln!("bindings:   {line}");
    }
    eprintln!(
        "bindings: kotlin {} passed, {} failed; python {} passed, {} failed; swift {swift}; {:.0} s",
        kotlin.passed,
        kotlin.failed,
        python.passed,
        python.failed,
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

fn target() -> PathBuf {
    root().join("target")
}

fn swift_sources() -> PathBuf {
    root().join("ffi/swift/Sources")
}

fn cargo() -> String {
    env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned())
}

fn path_str(path: &Path) -> Result<&str, String> {
    path.to_str().ok_or_else(|| format!("not UTF-8: {}", path.display()))
}

/// Which build of the library: the one apps get, or the test build.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Features {
    /// Default features: what the shipped sources and packages are made from.
    Shipped,
    /// With `hazmat` (`VectorRatchet`): for the Kotlin and Python tests only.
    Hazmat,
}

impl Features {
    fn cargo_args(self) -> &'static [&'static str] {
        match self {
            Self::Shipped => &[],
            Self::Hazmat => &["--features", "hazmat"],
        }
    }
}

/// Builds the cdylib and the generator, and generates Kotlin and Swift into `target/bindings`.
///
/// The generator runs as `cargo run --bin …` without `-p`, exactly as maturin
/// runs it, so that both use one build of it (with `-p` cargo would resolve
/// its dependencies' features differently and build them a second time).
fn build_and_generate(features: Features) -> Result<(), String> {
    let cargo = cargo();
    let build = [&["build", "-p", "samizdat-ffi"][..], features.cargo_args()].concat();
    run("bindings: build", &cargo, &build)?;
    let library = target().join("debug").join(LIBRARY);
    let library = path_str(&library)?;
    let out = target().join("bindings");
    let kotlin = out.join("kotlin");
    let _ = fs::remove_dir_all(&kotlin);
    let bindgen = ["run", "-q", "--bin", "uniffi-bindgen", "--", "generate", "--no-format", "--language", "kotlin"];
    let args = [&bindgen[..], &["--out-dir", path_str(&kotlin)?, "--library", library]].concat();
    run("bindings: kotlin sources", &cargo, &args)?;
    check_kotlin_records(&read_text(&kotlin.join("org/samizdat/samizdat.kt"))?)?;
    if features == Features::Hazmat {
        // The Swift sources are only ever the shipped ones.
        return Ok(());
    }
    let _ = fs::remove_dir_all(out.join("swift"));
    let swift_args = ["run", "-q", "--bin", "uniffi-bindgen-swift", "--"];
    let sources = out.join("swift/Samizdat");
    let args = [&swift_args[..], &["--swift-sources", library, path_str(&sources)?]].concat();
    run("bindings: swift sources", &cargo, &args)?;
    let ffi = out.join("swift/samizdatFFI");
    let c_args =
        ["--headers", "--modulemap", "--module-name", "samizdatFFI", "--modulemap-filename", "module.modulemap"];
    let args = [&swift_args[..], &c_args[..], &[library, path_str(&ffi)?]].concat();
    run("bindings: swift header and modulemap", &cargo, &args)
}

/// Refuses generated Kotlin in which a `data class` (a record, or an enum
/// variant with fields) holds a `ByteArray`: such a record equals only itself
/// and hashes by identity. Bytes in records are custom types mapped to value
/// classes (`ffi/src/values.rs`, `ffi/uniffi.toml`); a new `Vec<u8>` field
/// in a record would undo that silently.
fn check_kotlin_records(kotlin: &str) -> Result<(), String> {
    let offenders = records_with_byte_arrays(kotlin);
    if offenders.is_empty() {
        return Ok(());
    }
    Err(format!(
        "kotlin: data classes with a ByteArray field (compared by reference): {}; use Bytes, IdentityKey or \
         UserIdentityKey (ffi/src/values.rs) for bytes in a record",
        offenders.join(", ")
    ))
}

/// The names of the `data class`es whose constructor (up to its closing
/// parenthesis) mentions `ByteArray`.
fn records_with_byte_arrays(kotlin: &str) -> Vec<String> {
    let mut offenders = Vec::new();
    for (at, _) in kotlin.match_indices("data class ") {
        let Some(rest) = kotlin.get(at + "data class ".len()..) else { continue };
        let name: String = rest.chars().take_while(|c| c.is_alphanumeric() || *c == '_').collect();
        let Some(open) = rest.find('(') else { continue };
        let mut depth = 0usize;
        let mut end = rest.len();
        for (i, c) in rest.char_indices().skip_while(|&(i, _)| i < open) {
            match c {
                '(' => depth += 1,
                ')' => {
                    depth = depth.saturating_sub(1);
                    if depth == 0 {
                        end = i;
                        break;
                    }
                }
                _ => {}
            }
        }
        if rest.get(open..end).is_some_and(|params| params.contains("ByteArray")) {
            offenders.push(name);
        }
    }
    offenders
}

/// Copies the files of `from` (one level of directories) into `to`.
fn copy_dir(from: &Path, to: &Path) -> Result<(), String> {
    for (relative, bytes) in read_tree(from)? {
        let path = to.join(&relative);
        if let Some(parent) = path.parent() {
            fs::create_dir_all(parent).map_err(|e| format!("{}: {e}", parent.display()))?;
        }
        fs::write(&path, bytes).map_err(|e| format!("{}: {e}", path.display()))?;
    }
    Ok(())
}

/// Every file under `dir` (two levels), as (relative path, contents).
fn read_tree(dir: &Path) -> Result<Vec<(PathBuf, Vec<u8>)>, String> {
    let mut files = Vec::new();
    let list = |dir: &Path| -> Result<Vec<PathBuf>, String> {
        let mut entries: Vec<PathBuf> = fs::read_dir(dir)
            .map_err(|e| format!("{}: {e}", dir.display()))?
            .filter_map(|entry| entry.ok().map(|entry| entry.path()))
            .collect();
        entries.sort();
        Ok(entries)
    };
    for sub in list(dir)? {
        for file in list(&sub)? {
            let relative = file.strip_prefix(dir).map_err(|e| e.to_string())?.to_path_buf();
            files.push((relative, fs::read(&file).map_err(|e| format!("{}: {e}", file.display()))?));
        }
    }
    Ok(files)
}

fn read_text(path: &Path) -> Result<String, String> {
    fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))
}

/// Checks the generated Swift as far as this machine can, and that the
/// shipped sources are the generated ones.
fn check_swift() -> Result<String, String> {
    let generated = target().join("bindings/swift");
    if read_tree(&generated)? != read_tree(&swift_sources())? {
        return Err("swift: ffi/swift/Sources differ from the generated sources: run `cargo xtask bindings`".into());
    }
    let header = read_text(&generated.join("samizdatFFI/samizdatFFI.h"))?;
    let swift = read_text(&generated.join("Samizdat/Samizdat.swift"))?;
    let symbols = exported_symbols(&target().join("debug").join(LIBRARY))?;
    let sources = ffi_sources()?;
    // UniFFI 0.32 exports a checksum for each method of an enum, error or
    // record (`SamizdatError.code()`, `SafetyNumber.compare_scanned()`) but
    // no binding declares or checks it: only functions, objects' methods and
    // constructors have their checksums checked. Such a checksum is not
    // missing when its method is there.
    let enums: Vec<String> = exported_enums(&sources)
        .into_iter()
        .chain(exported_records(&sources))
        .map(|name| name.to_lowercase())
        .collect();
    let unchecked = |symbol: &str| {
        symbol.strip_prefix("uniffi_samizdat_ffi_checksum_method_").is_some_and(|method| {
            enums.iter().any(|name| method.starts_with(&format!("{name}_")))
                && header.contains(&format!("uniffi_samizdat_ffi_fn_method_{method}("))
        })
    };
    let mut missing: Vec<String> =
        symbols.iter().filter(|s| !header.contains(s.as_str()) && !unchecked(s)).cloned().collect();
    for symbol in symbols.iter().filter(|s| s.starts_with("uniffi_samizdat_ffi_fn_")) {
        if !swift.contains(symbol.as_str()) {
            missing.push(format!("{symbol} (not called in Samizdat.swift)"));
        }
        // A constructor named `new` is the object's `init` in Swift.
        let is_init = symbol.starts_with("uniffi_samizdat_ffi_fn_constructor_") && symbol.ends_with("_new");
        if let Some(name) = method_name(symbol)
            && !(is_init && swift.contains("public convenience init("))
            && !swift.contains(&format!("func {name}("))
            && !swift.contains(&format!("func `{name}`("))
        {
            missing.push(format!("func {name} (for {symbol})"));
        }
    }
    for name in exported_types(&sources) {
        // A custom type (ffi/src/values.rs) is a `typealias` of its builtin.
        let declared =
            ["struct", "class", "enum", "typealias"].iter().any(|kind| swift.contains(&format!("{kind} {name}")));
        if !declared {
            missing.push(format!("type {name}"));
        }
    }
    if !missing.is_empty() {
        return Err(format!("swift: the generated sources lack: {}", missing.join(", ")));
    }
    check_swift_surface(&swift)?;
    Ok(format!("generated and checked ({} symbols; not compiled: no Swift toolchain on this machine)", symbols.len()))
}

/// What a Swift parameter or field of a given name must be, by the name:
/// `now` and `…At` are points in time, `…Age` and `…Interval` durations,
/// `path` and `…Path` files. Each is a custom type (`ffi/src/platform.rs`)
/// that `ffi/uniffi.toml` maps to Foundation's type for Swift only.
const SWIFT_SURFACE: [(&str, &str); 3] = [("Timestamp", "Date"), ("Seconds", "TimeInterval"), ("FilePath", "URL")];

/// The custom type a Swift parameter or field named `name` must have, if any.
fn swift_surface_type(name: &str) -> Option<&'static str> {
    if name == "now" || (name.ends_with("At") && name.len() > 2) {
        Some("Timestamp")
    } else if name.ends_with("Age") || name.ends_with("Interval") {
        Some("Seconds")
    } else if name == "path" || name.ends_with("Path") {
        Some("FilePath")
    } else {
        None
    }
}

/// Refuses generated Swift in which a time, a duration or a path is not a
/// `Date`, a `TimeInterval` or a file `URL`: every parameter, record field
/// and enum or error field (`name: Type`) whose name says what it is (see
/// [`swift_surface_type`]) must have the custom type that is that
/// Foundation type, and each such type must be declared as an alias of it.
/// A new `now: i64` in `ffi/src` would otherwise reach Swift as an `Int64`.
fn check_swift_surface(swift: &str) -> Result<(), String> {
    let mut wrong = BTreeSet::new();
    for (alias, foundation) in SWIFT_SURFACE {
        if !swift.contains(&format!("public typealias {alias} = {foundation}\n")) {
            wrong.insert(format!("typealias {alias} = {foundation} missing"));
        }
    }
    let mut checked = 0usize;
    for (name, ty) in swift_declarations(swift) {
        if let Some(expected) = swift_surface_type(&name) {
            checked += 1;
            if ty != expected {
                wrong.insert(format!("{name}: {ty} (not {expected})"));
            }
        }
    }
    if checked == 0 {
        // The declarations were not found: the generated text changed shape.
        wrong.insert("no time, duration or path declaration found to check".to_owned());
    }
    if wrong.is_empty() {
        return Ok(());
    }
    Err(format!(
        "swift: times, durations and paths must be Date, TimeInterval and URL (ffi/src/platform.rs): {}",
        wrong.into_iter().collect::<Vec<_>>().join(", ")
    ))
}

/// Every `name: Type` of the generated Swift's declarations: parameters
/// (`func f(now: Timestamp)`), stored properties (`public let retryAt:
/// Timestamp`) and associated values (`case tooSoon(retryAt: Timestamp)`).
/// The type is its first word (`Timestamp?` is `Timestamp`).
fn swift_declarations(swift: &str) -> Vec<(String, String)> {
    let is_ident = |c: char| c.is_alphanumeric() || c == '_';
    let mut found = Vec::new();
    for (at, _) in swift.match_indices(": ") {
        let before = swift.get(..at).unwrap_or_default();
        let start = before.char_indices().rev().find(|&(_, c)| !is_ident(c)).map_or(0, |(i, c)| i + c.len_utf8());
        let (ahead, name) = (before.get(..start).unwrap_or_default(), before.get(start..).unwrap_or_default());
        // A declaration: the name follows `(`, `, `, `let `, `var ` or a
        // comment's end, not a call's label after an expression.
        let declares = ahead.ends_with('(')
            || ahead.ends_with(", ")
            || ahead.ends_with("let ")
            || ahead.ends_with("var ")
            || ahead.ends_with("*/");
        if !declares || !name.starts_with(|c: char| c.is_ascii_lowercase()) {
            continue;
        }
        let ty: String = swift.get(at + 2..).unwrap_or_default().chars().take_while(|&c| is_ident(c)).collect();
        if ty.starts_with(|c: char| c.is_ascii_uppercase()) {
            found.push((name.to_owned(), ty));
        }
    }
    found
}

/// The UniFFI symbols a shared library exports: every identifier in its
/// bytes that starts with one of [`SYMBOL_PREFIXES`] (the dynamic string table
/// holds them all).
fn exported_symbols(library: &Path) -> Result<BTreeSet<String>, String> {
    let bytes = fs::read(library).map_err(|e| format!("{}: {e}", library.display()))?;
    let is_ident = |b: u8| b.is_ascii_alphanumeric() || b == b'_';
    let mut symbols = BTreeSet::new();
    for start in 0..bytes.len() {
        if start > 0 && bytes.get(start - 1).copied().is_some_and(is_ident) {
            continue;
        }
        let Some(rest) = bytes.get(start..) else { continue };
        if SYMBOL_PREFIXES.iter().any(|p| rest.starts_with(p.as_bytes())) {
            let len = rest.iter().take_while(|&&b| is_ident(b)).count();
            symbols.insert(String::from_utf8_lossy(rest.get(..len).unwrap_or_default()).into_owned());
        }
    }
    if symbols.is_empty() {
        return Err(format!("{}: no UniFFI symbols found", library.display()));
    }
    Ok(symbols)
}

/// `uniffi_samizdat_ffi_fn_method_device_open_or_create` → `openOrCreate`
/// (the Swift name of a method or constructor; objects here have one-word names).
fn method_name(symbol: &str) -> Option<String> {
    let rest = symbol
        .strip_prefix("uniffi_samizdat_ffi_fn_method_")
        .or_else(|| symbol.strip_prefix("uniffi_samizdat_ffi_fn_constructor_"))?;
    let (_object, name) = rest.split_once('_')?;
    let mut camel = String::new();
    for (i, word) in name.split('_').enumerate() {
        let mut chars = word.chars();
        if i > 0
            && let Some(first) = chars.next()
        {
            camel.extend(first.to_uppercase());
            camel.push_str(chars.as_str());
        } else {
            camel.push_str(word);
        }
    }
    Some(camel)
}

/// The `pub struct` and `pub enum` names in the FFI crate's sources.
/// The sources of `ffi/src` but the test-only hazmat module, concatenated.
fn ffi_sources() -> Result<String, String> {
    let mut sources = String::new();
    let dir = root().join("ffi/src");
    let mut files: Vec<PathBuf> = fs::read_dir(&dir)
        .map_err(|e| format!("{}: {e}", dir.display()))?
        .filter_map(|entry| entry.ok().map(|entry| entry.path()))
        .filter(|path| path.extension().is_some_and(|ext| ext == "rs") && !path.ends_with(HAZMAT_SOURCE))
        .collect();
    files.sort();
    for file in files {
        sources.push_str(&read_text(&file)?);
    }
    Ok(sources)
}

/// The names of the `pub enum`s of `lib`.
fn exported_enums(lib: &str) -> Vec<String> {
    lib.lines()
        .filter_map(|line| line.strip_prefix("pub enum "))
        .filter_map(|rest| rest.split(|c: char| !c.is_alphanumeric() && c != '_').next())
        .map(str::to_owned)
        .collect()
}

/// The names of the records of `lib`: each `pub struct` after a derive that
/// names `uniffi::Record`.
fn exported_records(lib: &str) -> Vec<String> {
    let mut records = Vec::new();
    let mut derived = false;
    for line in lib.lines() {
        if line.starts_with("#[derive(") {
            derived = line.contains("uniffi::Record");
        } else if let Some(rest) = line.strip_prefix("pub struct ") {
            if derived {
                records.extend(rest.split(|c: char| !c.is_alphanumeric() && c != '_').next().map(str::to_owned));
            }
            derived = false;
        }
    }
    records
}

fn exported_types(lib: &str) -> Vec<String> {
    lib.lines()
        .filter_map(|line| line.strip_prefix("pub struct ").or_else(|| line.strip_prefix("pub enum ")))
        .filter_map(|rest| rest.split(|c: char| !c.is_alphanumeric() && c != '_').next())
        .map(str::to_owned)
        .collect()
}

/// Counts from a JUnit XML report, and the timing line the tests printed.
struct Outcome {
    passed: u64,
    failed: u64,
    cost: String,
}

/// Reads `name="N"` from the first element that has it.
fn xml_count(xml: &str, name: &str) -> u64 {
    let key = format!(" {name}=\"");
    xml.find(&key)
        .and_then(|at| xml.get(at + key.len()..))
        .and_then(|rest| rest.split('"').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

fn outcome(reports: &[String], cost_prefix: &str) -> Outcome {
    let sum = |name: &str| reports.iter().map(|xml| xml_count(xml, name)).sum::<u64>();
    let (tests, failed) = (sum("tests"), sum("failures") + sum("errors"));
    let cost = reports
        .iter()
        .find_map(|text| text.find(cost_prefix).and_then(|at| text.get(at..)))
        .and_then(|line| line.lines().next())
        .map_or_else(|| format!("{cost_prefix} (no timing printed)"), |line| line.trim().to_owned());
    Outcome { passed: tests.saturating_sub(failed + sum("skipped")), failed, cost }
}

fn test_kotlin() -> Result<Outcome, String> {
    let maven = target().join("maven");
    let reports = maven.join("surefire-reports");
    let _ = fs::remove_dir_all(&reports);
    let pom = root().join("ffi/tests/kotlin/pom.xml");
    run("bindings: kotlin (maven)", "mvn", &["-B", "-q", "-f", path_str(&pom)?, "package"])?;
    let jar = maven.join("samizdat-kotlin-0.1.0.jar");
    let entry = format!("{JNA_PREFIX}/{LIBRARY}");
    let bytes = fs::read(&jar).map_err(|e| format!("{}: {e}", jar.display()))?;
    if !bytes.windows(entry.len()).any(|w| w == entry.as_bytes()) {
        return Err(format!("kotlin: {} does not carry {entry}", jar.display()));
    }
    let mut texts = Vec::new();
    for entry in fs::read_dir(&reports).map_err(|e| format!("{}: {e}", reports.display()))?.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.ends_with(".xml") || name.ends_with("-output.txt") {
            texts.push(read_text(&entry.path())?);
        }
    }
    // The output file has no counts; the XML reports have no " tests=" in the output text.
    Ok(outcome(&texts, "kotlin: one "))
}

fn test_python() -> Result<Outcome, String> {
    let venv = target().join("py-venv");
    let python = venv.join("bin/python");
    if !python.exists() {
        run("bindings: python venv", "python3", &["-m", "venv", path_str(&venv)?])?;
    }
    let python = path_str(&python)?;
    let quiet = ["-m", "pip", "install", "-q", "--disable-pip-version-check"];
    run("bindings: python tools", python, &[&quiet[..], &[MATURIN, PYTEST, MYPY, BLAKE3]].concat())?;
    let wheels = target().join("wheels");
    let _ = fs::remove_dir_all(&wheels);
    let maturin = venv.join("bin/maturin");
    let manifest = root().join("ffi/Cargo.toml");
    let args = [&["build", "-m", path_str(&manifest)?, "--out", path_str(&wheels)?][..], Features::Hazmat.cargo_args()]
        .concat();
    run("bindings: python wheel (maturin)", path_str(&maturin)?, &args)?;
    let wheel = fs::read_dir(&wheels)
        .map_err(|e| format!("{}: {e}", wheels.display()))?
        .flatten()
        .map(|entry| entry.path())
        .find(|path| path.extension().is_some_and(|ext| ext == "whl"))
        .ok_or("maturin built no wheel")?;
    let install = ["--force-reinstall", "--no-deps", path_str(&wheel)?];
    run("bindings: python install", python, &[&quiet[..], &install[..]].concat())?;
    let report = target().join("pytest-report.xml");
    let junit = format!("--junitxml={}", path_str(&report)?);
    let tests = root().join("ffi/tests/python");
    let pytest = ["-m", "pytest", "-q", "-p", "no:cacheprovider", "-o", "junit_logging=system-out", &junit];
    run("bindings: python (pytest)", python, &[&pytest[..], &[path_str(&tests)?]].concat())?;
    Ok(outcome(&[read_text(&report)?], "python: one "))
}

fn rust_round_cost() -> Result<String, String> {
    eprintln!("==> bindings: rust round cost: cargo run -p samizdat-ffi --example round_cost");
    let output = Command::new(cargo())
        .args(["run", "-q", "-p", "samizdat-ffi", "--example", "round_cost"])
        .current_dir(root())
        .output()
        .map_err(|e| format!("round_cost: {e}"))?;
    if !output.status.success() {
        eprintln!("{}", String::from_utf8_lossy(&output.stderr));
        return Err("bindings: rust round cost".into());
    }
    Ok(String::from_utf8_lossy(&output.stdout).trim().to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn method_names_are_camel_case() {
        assert_eq!(method_name("uniffi_samizdat_ffi_fn_method_device_open_or_create").as_deref(), Some("openOrCreate"));
        assert_eq!(method_name("uniffi_samizdat_ffi_fn_constructor_device_open").as_deref(), Some("open"));
        assert_eq!(method_name("uniffi_samizdat_ffi_fn_free_device"), None);
    }

    #[test]
    fn byte_arrays_in_data_classes_are_found() {
        let kotlin = "data class Outgoing (\n    val `to`: Address\n    , \n    val `message`: kotlin.ByteArray\n){\n}\n\
                      data class Kept (\n    val `message`: Bytes\n){ fun `bytes`(): kotlin.ByteArray }\n\
                      data class Sent(\n        val `reset`: kotlin.ByteArray) : HealResult()\n";
        assert_eq!(records_with_byte_arrays(kotlin), vec!["Outgoing".to_owned(), "Sent".to_owned()]);
        assert!(check_kotlin_records("data class Address (\n val `deviceId`: kotlin.Long\n)").is_ok());
    }

    #[test]
    fn records_are_the_structs_derived_as_records() {
        let lib = "#[derive(Debug, uniffi::Record)]\n/// Doc.\npub struct SafetyNumber {\n}\n\
                   #[derive(uniffi::Object)]\npub struct Device {\n}\npub struct Bytes(Vec<u8>);\n";
        assert_eq!(exported_records(lib), vec!["SafetyNumber".to_owned()]);
    }

    #[test]
    fn swift_times_durations_and_paths_are_foundation_types() {
        let aliases = "public typealias Timestamp = Date\npublic typealias Seconds = TimeInterval\n\
                       public typealias FilePath = URL\n";
        let good = format!(
            "{aliases}public static func create(path: FilePath, now: Timestamp)throws -> Device\n\
             public let outboxMaxAge: Seconds\ncase tooSoon(retryAt: Timestamp\n)\n\
             open func heal(bundle: Data, now: Timestamp)\nlet x = f(now: now, path: value.path)\n"
        );
        assert_eq!(check_swift_surface(&good), Ok(()));
        let bad = format!(
            "{aliases}open func expireOutbox(now: Int64)\ncase tooSoon(\n        /**\n         * When.\n         */retryAt: Int64\n)\n\
             public func rotateStorageKey(path: String, oldKey: Data)\npublic var resetInterval: Int64\n"
        );
        let error = check_swift_surface(&bad).unwrap_err();
        for wrong in ["now: Int64", "retryAt: Int64", "path: String", "resetInterval: Int64"] {
            assert!(error.contains(wrong), "{error}");
        }
        assert!(
            check_swift_surface("func f(now: Timestamp)").unwrap_err().contains("typealias Timestamp = Date missing")
        );
    }

    #[test]
    fn junit_counts() {
        let xml = r#"<testsuite name="pytest" errors="0" failures="1" skipped="0" tests="8">"#;
        let outcome = outcome(&[xml.to_owned(), "x\npython: 12 us\n".to_owned()], "python: ");
        assert_eq!((outcome.passed, outcome.failed, outcome.cost.as_str()), (7, 1, "python: 12 us"));
    }
}
