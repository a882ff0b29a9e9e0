//! `cargo xtask package [--allow-dirty]`: the release artifacts this machine
//! can build, from a clean checkout, into `target/dist/`:
//!
//! - `crates/`: `cargo package` of every crate not marked `publish = false`
//!   (each verified by cargo, which builds the packaged sources), after
//!   checking their metadata and that no dependency needs a newer Rust than
//!   the workspace's `rust-version`;
//! - `native/linux-x86-64/libsamizdat_ffi.so`: the FFI library built with the
//!   `dist` profile, without `hazmat`, for glibc 2.17 (zig as the linker),
//!   stripped;
//! - `python/`: the wheel (maturin, `--compatibility manylinux2014`) with that
//!   stripped library in it;
//! - `jvm/`: the jar of `ffi/jvm/pom.xml` (the Kotlin sources generated from
//!   the same library, and the library under JNA's resource prefix), its
//!   sources jar and its pom.
//!
//! The packaging fails if the library exports a symbol of the `hazmat`
//! bindings, if the wheel or the jar mention one of their types, if the
//! library needs a glibc newer than 2.17 or is not stripped, or if
//! `auditwheel` finds the wheel inconsistent with manylinux2014. Then the smoke
//! tests: the wheel installed in a fresh venv runs the README's Python
//! example (taken from the README itself), and a Java program
//! (`ffi/jvm/smoke/Smoke.java`) runs against the packaged jar with only the
//! pom's dependencies beside it. Last, each artifact's size.
//!
//! Intermediate files go to `target/dist-build/`; pinned Python tools to a
//! venv in `target/dist-tools/`. Needs `python3` (with `venv`), a JDK 17+,
//! Maven 3, and binutils (`strip`, `nm`, `objdump`, `readelf`), plus `tar`.

use std::{
    env,
    ffi::OsStr,
    fs,
    path::{Path, PathBuf},
    process::Command,
    time::Instant,
};

use serde_json::Value;

use super::root;

/// Pinned Python tools (PyPI). `ziglang` is the linker that lets a Debian 12
/// machine produce a library needing nothing newer than glibc 2.17.
const MATURIN: &str = "maturin==1.16.0";
const ZIGLANG: &str = "ziglang==0.17.0";
const WHEEL: &str = "wheel==0.48.0";
/// Judges the finished wheel against the manylinux policies (libraries and
/// symbol versions), independently of maturin.
const AUDITWHEEL: &str = "auditwheel==6.8.2";
/// The README example is a pytest snippet (`pytest.raises`).
const PYTEST: &str = "pytest==9.2.0";
/// Resolves the jar's runtime classpath from its pom, for the smoke test.
const DEPENDENCY_PLUGIN: &str = "org.apache.maven.plugins:maven-dependency-plugin:3.9.0";

/// The cargo profile of the shipped library (root `Cargo.toml`).
const PROFILE: &str = "dist";
/// The target triple: spelled out, so that maturin and zig link for it.
const TRIPLE: &str = "x86_64-unknown-linux-gnu";
const LIBRARY: &str = "libsamizdat_ffi.so";
/// JNA's resource prefix for this platform (`com.sun.jna.Platform.RESOURCE_PREFIX`).
const JNA_PREFIX: &str = "linux-x86-64";
/// manylinux2014 is glibc 2.17: no versioned symbol may be newer.
const MAX_GLIBC: (u32, u32) = (2, 17);
const MANYLINUX: &str = "manylinux2014";
/// The FFI module that only test builds compile: its types must ship nowhere.
const HAZMAT_SOURCE: &str = "ffi/src/hazmat.rs";
/// The hand-written Kotlin facade, packaged with the generated sources.
const JVM_FACADE: &str = "ffi/jvm/src/main/kotlin/org/samizdat";
/// The Java smoke test, and the README whose Python example is run.
const JAVA_SMOKE: &str = "ffi/jvm/smoke/Smoke.java";
const JVM_POM: &str = "ffi/jvm/pom.xml";

/// `cargo xtask package`.
pub(crate) fn package(args: &[String]) -> Result<(), String> {
    let allow_dirty = match args {
        [] => false,
        [flag] if flag == "--allow-dirty" => true,
        _ => return Err(format!("package: unknown arguments {args:?} (usage: cargo xtask package [--allow-dirty])")),
    };
    let started = Instant::now();
    check_tools()?;
    let dist = root().join("target/dist");
    let build = root().join("target/dist-build");
    for dir in [&dist, &build] {
        if dir.exists() {
            fs::remove_dir_all(dir).map_err(|e| format!("package: cannot empty {}: {e}", dir.display()))?;
        }
        create_dir(dir)?;
    }
    let hazmat = hazmat_names()?;

    let crates = package_crates(&dist, allow_dirty)?;
    let python = python_tools()?;
    let (raw_wheel, unstripped) = build_wheel(&python, &build)?;
    let library = Built { stripped: strip_library(&unstripped, &dist)?, unstripped };
    let glibc = check_library(&library.stripped, &hazmat)?;
    let wheel = repack_wheel(&python, &raw_wheel, &library, &dist, &build)?;
    check_archive(&python, &wheel, &hazmat, &format!("samizdat/_native/{LIBRARY}"))?;
    audit_wheel(&python, &wheel)?;
    let kotlin = kotlin_sources(&library.unstripped, &build, &hazmat)?;
    let jvm = build_jar(&kotlin, &dist, &build)?;
    check_archive(&python, &jvm.jar, &hazmat, &format!("{JNA_PREFIX}/{LIBRARY}"))?;

    smoke_python(&wheel, &build)?;
    smoke_jvm(&jvm, &build)?;

    eprintln!("package: artifacts in target/dist (library needs glibc {glibc}; no hazmat symbol or type):");
    let mut artifacts = crates;
    artifacts.extend([library.stripped, wheel, jvm.jar, jvm.sources, jvm.pom]);
    for artifact in &artifacts {
        let bytes = fs::metadata(artifact).map_err(|e| format!("{}: {e}", artifact.display()))?.len();
        let shown = artifact.strip_prefix(&dist).unwrap_or(artifact);
        eprintln!("package:   {:>10} bytes  {:>8}  {}", bytes, human(bytes), shown.display());
    }
    eprintln!("xtask package: done in {:.0} s", started.elapsed().as_secs_f64());
    Ok(())
}

/// `1_671_985` → `1.59 MiB`.
fn human(bytes: u64) -> String {
    let bytes = bytes as f64;
    if bytes >= 1024.0 * 1024.0 {
        format!("{:.2} MiB", bytes / (1024.0 * 1024.0))
    } else {
        format!("{:.1} KiB", bytes / 1024.0)
    }
}

fn cargo() -> String {
    env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned())
}

fn path_str(path: &Path) -> Result<&str, String> {
    path.to_str().ok_or_else(|| format!("not UTF-8: {}", path.display()))
}

fn create_dir(dir: &Path) -> Result<(), String> {
    fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))
}

fn copy(from: &Path, to: &Path) -> Result<(), String> {
    fs::copy(from, to).map(|_| ()).map_err(|e| format!("copy {} to {}: {e}", from.display(), to.display()))
}

/// Runs `command` in the workspace root, failing with the step's name.
fn exec(step: &str, command: &mut Command) -> Result<(), String> {
    eprintln!("==> {step}: {}", describe(command));
    let started = Instant::now();
    let status = command.current_dir(root()).status().map_err(|e| format!("{step}: {e}"))?;
    eprintln!("<== {step}: {:.1} s", started.elapsed().as_secs_f64());
    if status.success() { Ok(()) } else { Err(format!("{step} ({status})")) }
}

/// Runs `command` and returns its standard output (its errors pass through).
fn output(step: &str, command: &mut Command) -> Result<String, String> {
    let out = command.current_dir(root()).output().map_err(|e| format!("{step}: {}: {e}", describe(command)))?;
    if !out.status.success() {
        eprintln!("{}", String::from_utf8_lossy(&out.stderr));
        return Err(format!("{step}: {} failed ({})", describe(command), out.status));
    }
    String::from_utf8(out.stdout).map_err(|e| format!("{step}: output not UTF-8: {e}"))
}

fn describe(command: &Command) -> String {
    let args: Vec<_> = command.get_args().map(OsStr::to_string_lossy).collect();
    format!("{} {}", command.get_program().to_string_lossy(), args.join(" "))
}

/// Fails early, with the list, if a tool the packaging runs is missing.
fn check_tools() -> Result<(), String> {
    let tools: [(&str, &[&str]); 9] = [
        ("python3", &["--version"]),
        ("mvn", &["-v"]),
        ("java", &["-version"]),
        ("javac", &["-version"]),
        ("strip", &["--version"]),
        ("nm", &["--version"]),
        ("objdump", &["--version"]),
        ("readelf", &["--version"]),
        ("tar", &["--version"]),
    ];
    let missing: Vec<&str> = tools
        .iter()
        .filter(|(tool, args)| !Command::new(tool).args(*args).output().is_ok_and(|out| out.status.success()))
        .map(|(tool, _)| *tool)
        .collect();
    if missing.is_empty() {
        Ok(())
    } else {
        Err(format!("package: not on the PATH: {} (see xtask/src/package.rs)", missing.join(", ")))
    }
}

/// The names of the types the `hazmat` bindings add (`pub struct` and
/// `pub enum` of [`HAZMAT_SOURCE`]), in the case the bindings spell them.
fn hazmat_names() -> Result<Vec<String>, String> {
    let path = root().join(HAZMAT_SOURCE);
    let source = fs::read_to_string(&path).map_err(|e| format!("package: {}: {e}", path.display()))?;
    let names: Vec<String> = source
        .lines()
        .filter_map(|line| line.strip_prefix("pub struct ").or_else(|| line.strip_prefix("pub enum ")))
        .filter_map(|rest| rest.split(|c: char| !c.is_alphanumeric() && c != '_').next())
        .filter(|name| !name.is_empty())
        .map(str::to_owned)
        .collect();
    if names.is_empty() {
        return Err(format!(
            "package: no `pub struct` or `pub enum` in {HAZMAT_SOURCE}: the hazmat check has nothing to look for"
        ));
    }
    Ok(names)
}

// ---------------------------------------------------------------------------
// Crates

/// The workspace's `cargo metadata`.
fn metadata(no_deps: bool) -> Result<Value, String> {
    let mut command = Command::new(cargo());
    command.args(["metadata", "--format-version", "1", "--locked"]);
    if no_deps {
        command.arg("--no-deps");
    }
    let text = output("package: cargo metadata", &mut command)?;
    serde_json::from_str(&text).map_err(|e| format!("package: cargo metadata: {e}"))
}

/// A string field of a package in `cargo metadata`, if set and not empty.
fn field<'a>(package: &'a Value, name: &str) -> Option<&'a str> {
    package.get(name).and_then(Value::as_str).filter(|value| !value.is_empty())
}

/// Packages the published crates into `dist/crates`.
fn package_crates(dist: &Path, allow_dirty: bool) -> Result<Vec<PathBuf>, String> {
    let workspace = metadata(true)?;
    let members = workspace.get("packages").and_then(Value::as_array).ok_or("package: cargo metadata: no packages")?;
    // `publish = false` is an empty list of registries; absent is `null`.
    let published: Vec<&Value> = members
        .iter()
        .filter(|package| package.get("publish").and_then(Value::as_array).is_none_or(|list| !list.is_empty()))
        .collect();
    if published.is_empty() {
        return Err("package: no crate of the workspace is published".into());
    }
    let mut names = Vec::new();
    for package in &published {
        let name = field(package, "name").ok_or("package: a package without a name")?;
        let wanted = ["version", "description", "license", "repository", "homepage", "documentation", "readme"];
        let mut missing: Vec<&str> = wanted.iter().copied().filter(|key| field(package, key).is_none()).collect();
        if field(package, "rust_version").is_none() {
            missing.push("rust-version");
        }
        for key in ["keywords", "categories"] {
            if package.get(key).and_then(Value::as_array).is_none_or(Vec::is_empty) {
                missing.push(key);
            }
        }
        if !missing.is_empty() {
            return Err(format!("package: crate {name} lacks {} in its manifest", missing.join(", ")));
        }
        let placeholder = ["repository", "homepage", "documentation"]
            .iter()
            .find(|key| field(package, key).is_some_and(|url| url.contains(".invalid") || url.contains("example.")));
        if let Some(key) = placeholder {
            return Err(format!("package: crate {name} has a placeholder {key}"));
        }
        let version = field(package, "version").unwrap_or_default();
        names.push((name.to_owned(), version.to_owned()));
    }
    check_msrv(&published)?;

    let mut command = Command::new(cargo());
    command.arg("package");
    for (name, _) in &names {
        command.args(["-p", name]);
    }
    if allow_dirty {
        command.arg("--allow-dirty");
    }
    exec("package: crates (cargo package, verified)", &mut command)?;

    let out = dist.join("crates");
    create_dir(&out)?;
    let mut files = Vec::new();
    for (name, version) in &names {
        let file = format!("{name}-{version}.crate");
        let packaged = root().join("target/package").join(&file);
        let listing = output("package: crate contents", Command::new("tar").arg("-tzf").arg(&packaged))?;
        for required in ["LICENSE-APACHE", "LICENSE-MIT", "README.md", "Cargo.toml"] {
            let entry = format!("{name}-{version}/{required}");
            if !listing.lines().any(|line| line == entry) {
                return Err(format!("package: {file} lacks {required}"));
            }
        }
        let shipped = out.join(&file);
        copy(&packaged, &shipped)?;
        files.push(shipped);
    }
    Ok(files)
}

/// `1.89` or `1.85.0` → `(1, 89, 0)`.
fn rust_version(text: &str) -> Option<(u32, u32, u32)> {
    let mut parts = text.split('.').map(|part| part.parse::<u32>().ok());
    let major = parts.next()??;
    let minor = parts.next().unwrap_or(Some(0))?;
    let patch = parts.next().unwrap_or(Some(0))?;
    Some((major, minor, patch))
}

/// Checks that nothing a published crate builds with (normal and build
/// dependencies, all platforms, transitively) declares a `rust-version`
/// newer than the crate's: the MSRV is then the crate's own unless a
/// dependency understates its own. There is one toolchain here, so this is
/// the check that can run.
fn check_msrv(published: &[&Value]) -> Result<(), String> {
    let full = metadata(false)?;
    let packages = full.get("packages").and_then(Value::as_array).ok_or("package: cargo metadata: no packages")?;
    let nodes = full
        .get("resolve")
        .and_then(|resolve| resolve.get("nodes"))
        .and_then(Value::as_array)
        .ok_or("package: cargo metadata: no resolve graph")?;
    let by_id = |id: &str| packages.iter().find(|package| field(package, "id") == Some(id));
    for crate_ in published {
        let name = field(crate_, "name").unwrap_or_default();
        let declared = field(crate_, "rust_version").and_then(rust_version).ok_or("package: no rust-version")?;
        let mut seen: Vec<String> = Vec::new();
        let mut todo: Vec<String> = field(crate_, "id").map(str::to_owned).into_iter().collect();
        let mut highest: Option<((u32, u32, u32), String)> = None;
        while let Some(id) = todo.pop() {
            if seen.contains(&id) {
                continue;
            }
            seen.push(id.clone());
            let node = nodes.iter().find(|node| field(node, "id") == Some(id.as_str()));
            let deps = node.and_then(|node| node.get("deps")).and_then(Value::as_array).cloned().unwrap_or_default();
            for dep in deps {
                // Dev-dependencies are not needed to build the crate.
                let kinds = dep.get("dep_kinds").and_then(Value::as_array).cloned().unwrap_or_default();
                let needed = kinds.iter().any(|kind| kind.get("kind").is_none_or(|kind| kind.as_str() != Some("dev")));
                if let Some(dep_id) = field(&dep, "pkg").filter(|_| needed) {
                    todo.push(dep_id.to_owned());
                }
            }
            if Some(id.as_str()) == field(crate_, "id") {
                continue;
            }
            let Some(package) = by_id(&id) else { continue };
            if let Some(version) = field(package, "rust_version").and_then(rust_version)
                && highest.as_ref().is_none_or(|(top, _)| version > *top)
            {
                highest = Some((version, field(package, "name").unwrap_or_default().to_owned()));
            }
        }
        if let Some((version, holder)) = highest {
            if version > declared {
                return Err(format!(
                    "package: {name} declares rust-version {declared:?} but its dependency {holder} needs {version:?}"
                ));
            }
            eprintln!(
                "package: {name}: rust-version {}.{} covers its {} dependencies (highest: {holder} {}.{})",
                declared.0,
                declared.1,
                seen.len().saturating_sub(1),
                version.0,
                version.1
            );
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// Library and wheel

/// A venv with the pinned maturin, ziglang and wheel; returns its `bin/`.
fn python_tools() -> Result<PathBuf, String> {
    let venv = root().join("target/dist-tools");
    let bin = venv.join("bin");
    if !bin.join("python").exists() {
        exec("package: python venv", Command::new("python3").args(["-m", "venv"]).arg(&venv))?;
    }
    let quiet = ["-m", "pip", "install", "-q", "--disable-pip-version-check"];
    exec(
        "package: python tools",
        Command::new(bin.join("python")).args(quiet).args([MATURIN, ZIGLANG, WHEEL, AUDITWHEEL]),
    )?;
    Ok(bin)
}

/// The `PATH` with the venv's `bin/` first (maturin finds zig through it).
fn venv_path(bin: &Path) -> Result<std::ffi::OsString, String> {
    let mut paths = vec![bin.to_path_buf()];
    paths.extend(env::split_paths(&env::var_os("PATH").unwrap_or_default()));
    env::join_paths(paths).map_err(|e| format!("package: PATH: {e}"))
}

/// The one file in `dir` whose name ends with `suffix`.
fn only_file(dir: &Path, suffix: &str) -> Result<PathBuf, String> {
    let found: Vec<PathBuf> = fs::read_dir(dir)
        .map_err(|e| format!("{}: {e}", dir.display()))?
        .flatten()
        .map(|entry| entry.path())
        .filter(|path| path.to_string_lossy().ends_with(suffix))
        .collect();
    match found.as_slice() {
        [one] => Ok(one.clone()),
        _ => Err(format!("package: expected one *{suffix} in {}, found {}", dir.display(), found.len())),
    }
}

/// maturin: the release library for glibc 2.17 (zig links it), the Python
/// sources generated from it, the wheel. Returns the wheel and the library
/// as built (unstripped: uniffi-bindgen reads its symbol table).
fn build_wheel(python: &Path, build: &Path) -> Result<(PathBuf, PathBuf), String> {
    let out = build.join("wheel");
    let manifest = root().join("ffi/Cargo.toml");
    let mut command = Command::new(python.join("maturin"));
    command
        .args(["build", "--profile", PROFILE, "--target", TRIPLE, "--zig", "--compatibility", MANYLINUX])
        .arg("-m")
        .arg(&manifest)
        .arg("--out")
        .arg(&out)
        .env("PATH", venv_path(python)?)
        .env("VIRTUAL_ENV", python.parent().unwrap_or(python));
    exec("package: python wheel (maturin, zig, manylinux2014)", &mut command)?;
    let wheel = only_file(&out, ".whl")?;
    check_wheel_tags(&wheel)?;
    let library = root().join("target").join(TRIPLE).join(PROFILE).join(LIBRARY);
    if !library.exists() {
        return Err(format!("package: maturin left no {}", library.display()));
    }
    Ok((wheel, library))
}

/// The shipped library: as built (its symbol table is where uniffi-bindgen
/// reads the bindings' metadata) and the stripped copy that ships.
struct Built {
    unstripped: PathBuf,
    stripped: PathBuf,
}

/// Strips a copy of the library into `dist/native/<JNA prefix>/`.
fn strip_library(unstripped: &Path, dist: &Path) -> Result<PathBuf, String> {
    let dir = dist.join("native").join(JNA_PREFIX);
    create_dir(&dir)?;
    let stripped = dir.join(LIBRARY);
    exec("package: strip", Command::new("strip").arg("--strip-all").arg("-o").arg(&stripped).arg(unstripped))?;
    Ok(stripped)
}

/// `GLIBC_2.14` → `(2, 14)`.
fn glibc_version(text: &str) -> Option<(u32, u32)> {
    let rest = text.strip_prefix("GLIBC_")?;
    let mut parts = rest.split('.').map(|part| part.parse::<u32>().ok());
    Some((parts.next()??, parts.next().unwrap_or(Some(0))?))
}

/// The shipped library: stripped, no hazmat symbol, nothing newer than
/// glibc 2.17. Returns the newest glibc version it needs.
fn check_library(library: &Path, hazmat: &[String]) -> Result<String, String> {
    let symbols = output("package: exported symbols", Command::new("nm").args(["-D", "--defined-only"]).arg(library))?;
    let exported: Vec<&str> = symbols.lines().filter_map(|line| line.split_whitespace().last()).collect();
    if !exported.iter().any(|symbol| symbol.starts_with("uniffi_samizdat_ffi_fn_")) {
        return Err(format!("package: {} exports no UniFFI function", library.display()));
    }
    let leaked = hazmat_symbols(&exported, hazmat);
    if !leaked.is_empty() {
        return Err(format!("package: the library exports hazmat symbols: {}", leaked.join(", ")));
    }
    let sections = output("package: sections", Command::new("readelf").args(["-S", "-W"]).arg(library))?;
    if let Some(section) = [".symtab", ".debug_info", ".debug_line"].iter().find(|name| sections.contains(*name)) {
        return Err(format!("package: {} is not stripped (it has {section})", library.display()));
    }
    let dynamic = output("package: glibc versions", Command::new("objdump").arg("-T").arg(library))?;
    let newest =
        dynamic.split(|c: char| c.is_whitespace() || c == '(' || c == ')').filter_map(glibc_version).max().ok_or_else(
            || format!("package: {} needs no versioned glibc symbol: not a glibc build?", library.display()),
        )?;
    if newest > MAX_GLIBC {
        return Err(format!(
            "package: {} needs glibc {}.{}, newer than {}.{} ({MANYLINUX})",
            library.display(),
            newest.0,
            newest.1,
            MAX_GLIBC.0,
            MAX_GLIBC.1
        ));
    }
    Ok(format!("{}.{}", newest.0, newest.1))
}

/// The symbols that belong to the hazmat bindings: they name one of its
/// types (`uniffi_samizdat_ffi_fn_method_vectorratchet_encrypt`), or hazmat.
fn hazmat_symbols<'a>(symbols: &[&'a str], hazmat: &[String]) -> Vec<&'a str> {
    let lowered: Vec<String> =
        hazmat.iter().map(|name| name.to_lowercase()).chain(std::iter::once("hazmat".to_owned())).collect();
    symbols
        .iter()
        .copied()
        .filter(|symbol| lowered.iter().any(|name| symbol.to_lowercase().contains(name.as_str())))
        .collect()
}

/// maturin's wheel with the stripped library in place of the one it
/// packed (maturin's own `--strip` strips before the bindings are
/// generated, which then find no metadata). `wheel pack` writes the RECORD
/// again.
fn repack_wheel(python: &Path, raw: &Path, built: &Built, dist: &Path, build: &Path) -> Result<PathBuf, String> {
    let unpacked = build.join("wheel-unpacked");
    let interpreter = python.join("python");
    exec(
        "package: wheel unpack",
        Command::new(&interpreter).args(["-m", "wheel", "unpack", "-d"]).arg(&unpacked).arg(raw),
    )?;
    let tree = fs::read_dir(&unpacked)
        .map_err(|e| format!("{}: {e}", unpacked.display()))?
        .flatten()
        .map(|entry| entry.path())
        .find(|path| path.is_dir())
        .ok_or("package: wheel unpack made no directory")?;
    let mut replaced = 0;
    for candidate in files_named(&tree, LIBRARY)? {
        {
            // The library the wheel's Python was generated from must be the
            // one the jar's Kotlin is generated from and that ships stripped.
            let packed = fs::read(&candidate).map_err(|e| format!("{}: {e}", candidate.display()))?;
            let unstripped = fs::read(&built.unstripped).map_err(|e| format!("{}: {e}", built.unstripped.display()))?;
            if packed != unstripped {
                return Err(format!(
                    "package: the wheel's {LIBRARY} is not {}: maturin built another library",
                    built.unstripped.display()
                ));
            }
            copy(&built.stripped, &candidate)?;
            replaced += 1;
        }
    }
    if replaced != 1 {
        return Err(format!("package: expected one {LIBRARY} in the wheel, found {replaced}"));
    }
    add_wheel_licences(&tree)?;
    let out = dist.join("python");
    create_dir(&out)?;
    exec("package: wheel pack", Command::new(&interpreter).args(["-m", "wheel", "pack", "-d"]).arg(&out).arg(&tree))?;
    let wheel = only_file(&out, ".whl")?;
    check_wheel_tags(&wheel)?;
    Ok(wheel)
}

/// Every file called `name` under `dir`, at any depth (the wheel keeps the
/// library beside the generated module: `samizdat/_native/`).
fn files_named(dir: &Path, name: &str) -> Result<Vec<PathBuf>, String> {
    let mut found = Vec::new();
    for entry in fs::read_dir(dir).map_err(|e| format!("{}: {e}", dir.display()))?.flatten() {
        let path = entry.path();
        if path.is_dir() {
            found.extend(files_named(&path, name)?);
        } else if path.file_name().is_some_and(|file| file == name) {
            found.push(path);
        }
    }
    Ok(found)
}

/// The licence texts in the wheel's `.dist-info/licenses/` (PEP 639), named
/// by `License-File` in its metadata, unless maturin put them there already.
fn add_wheel_licences(tree: &Path) -> Result<(), String> {
    let info = fs::read_dir(tree)
        .map_err(|e| format!("{}: {e}", tree.display()))?
        .flatten()
        .map(|entry| entry.path())
        .find(|path| path.extension().is_some_and(|ext| ext == "dist-info"))
        .ok_or("package: the wheel has no .dist-info")?;
    let metadata_path = info.join("METADATA");
    let metadata = fs::read_to_string(&metadata_path).map_err(|e| format!("{}: {e}", metadata_path.display()))?;
    if metadata.contains("\nLicense-File: ") {
        return Ok(());
    }
    let licenses = info.join("licenses");
    create_dir(&licenses)?;
    let mut lines = String::new();
    for name in ["LICENSE-APACHE", "LICENSE-MIT"] {
        copy(&root().join(name), &licenses.join(name))?;
        lines.push_str(&format!("License-File: {name}\n"));
    }
    // The headers end at the first empty line (the description follows).
    let (headers, body) = metadata.split_once("\n\n").map_or((metadata.as_str(), None), |(h, b)| (h, Some(b)));
    let mut updated = format!("{}\n{lines}", headers.trim_end_matches('\n'));
    if let Some(body) = body {
        updated.push('\n');
        updated.push_str(body);
    }
    fs::write(&metadata_path, updated).map_err(|e| format!("{}: {e}", metadata_path.display()))
}

/// The wheel's file name carries its tags: `py3-none` (the generated Python
/// loads the library with ctypes and uses no CPython ABI, so one wheel per
/// platform serves every Python 3) and manylinux2014, alias glibc 2.17.
fn check_wheel_tags(wheel: &Path) -> Result<(), String> {
    let name = wheel.file_name().map(|name| name.to_string_lossy().into_owned()).unwrap_or_default();
    let tags = name.strip_suffix(".whl").unwrap_or(&name).splitn(3, '-').nth(2).unwrap_or_default();
    let (python, platforms) = tags.split_once("-none-").unwrap_or_default();
    let mut platforms: Vec<&str> = platforms.split('.').collect();
    platforms.sort_unstable();
    if python != "py3" || platforms != ["manylinux2014_x86_64", "manylinux_2_17_x86_64"] {
        return Err(format!("package: the wheel {name} is not tagged py3-none-manylinux2014_x86_64"));
    }
    Ok(())
}

/// `auditwheel show`: the wheel, as packed, must be consistent with
/// manylinux_2_17 (manylinux2014) and nothing older or newer.
fn audit_wheel(python: &Path, wheel: &Path) -> Result<(), String> {
    let report = output("package: auditwheel", Command::new(python.join("auditwheel")).arg("show").arg(wheel))?;
    // auditwheel wraps its sentences: compare with the lines joined.
    let flat = report.split_whitespace().collect::<Vec<_>>().join(" ");
    let verdict = flat
        .split_once("is consistent with the following platform tag: ")
        .and_then(|(_, rest)| rest.split_whitespace().next())
        .map(|tag| tag.trim_matches(|c| c == '"' || c == '.'));
    if verdict == Some("manylinux_2_17_x86_64") {
        eprintln!("package: auditwheel: the wheel is consistent with manylinux_2_17_x86_64 (manylinux2014)");
        Ok(())
    } else {
        Err(format!("package: auditwheel does not find the wheel consistent with manylinux_2_17_x86_64:\n{report}"))
    }
}

/// Lists a zip archive (wheel, jar) with Python's `zipfile`, and fails if an
/// entry's name or content mentions a hazmat type, or if `required` is absent.
fn check_archive(python: &Path, archive: &Path, hazmat: &[String], required: &str) -> Result<(), String> {
    const SCRIPT: &str = "import sys, zipfile\n\
        needles = [n.lower().encode() for n in sys.argv[2:]]\n\
        with zipfile.ZipFile(sys.argv[1]) as z:\n\
        \x20   for info in z.infolist():\n\
        \x20       data = z.read(info).lower() + b'\\0' + info.filename.lower().encode()\n\
        \x20       hits = [n.decode() for n in needles if n in data]\n\
        \x20       print(info.filename + '\\t' + ','.join(hits))\n";
    let mut command = Command::new(python.join("python"));
    command.args(["-c", SCRIPT]).arg(archive).args(hazmat);
    let listing = output("package: archive contents", &mut command)?;
    let mut found = false;
    for line in listing.lines() {
        let (name, hits) = line.split_once('\t').unwrap_or((line, ""));
        if !hits.is_empty() {
            return Err(format!("package: {} mentions hazmat types ({hits}) in {name}", archive.display()));
        }
        found |= name == required;
    }
    if !found {
        return Err(format!("package: {} lacks {required}", archive.display()));
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// JVM

/// The Kotlin sources, generated from the shipped library (as built, with
/// its symbol table) by the workspace's own uniffi-bindgen.
fn kotlin_sources(library: &Path, build: &Path, hazmat: &[String]) -> Result<PathBuf, String> {
    let out = build.join("kotlin");
    let mut command = Command::new(cargo());
    command
        .args(["run", "-q", "--bin", "uniffi-bindgen", "--", "generate", "--no-format", "--language", "kotlin"])
        .arg("--out-dir")
        .arg(&out)
        .arg("--library")
        .arg(library);
    exec("package: kotlin sources", &mut command)?;
    let source = out.join("org/samizdat/samizdat.kt");
    let text = fs::read_to_string(&source).map_err(|e| format!("package: {}: {e}", source.display()))?;
    if let Some(name) = hazmat.iter().find(|name| text.contains(name.as_str())) {
        return Err(format!("package: the Kotlin sources declare the hazmat type {name}"));
    }
    // The hand-written facade (static factories, java.time, IdentityKey)
    // beside the generated file: compiled with it, and in the sources jar.
    let facade = root().join(JVM_FACADE);
    for entry in fs::read_dir(&facade).map_err(|e| format!("package: {}: {e}", facade.display()))?.flatten() {
        let path = entry.path();
        if path.extension().is_some_and(|extension| extension == "kt") {
            let name = path.file_name().ok_or_else(|| format!("package: {}: no file name", path.display()))?;
            copy(&path, &out.join("org/samizdat").join(name))?;
        }
    }
    Ok(out)
}

struct Jvm {
    jar: PathBuf,
    sources: PathBuf,
    pom: PathBuf,
}

/// The `<version>` of the pom's own coordinates (after its `<artifactId>`).
fn pom_version(pom: &str) -> Option<&str> {
    let after = pom.split_once("<artifactId>samizdat</artifactId>")?.1;
    let start = after.split_once("<version>")?.1;
    Some(start.split_once("</version>")?.0.trim())
}

fn build_jar(kotlin: &Path, dist: &Path, build: &Path) -> Result<Jvm, String> {
    let pom = root().join(JVM_POM);
    let text = fs::read_to_string(&pom).map_err(|e| format!("package: {}: {e}", pom.display()))?;
    let version = pom_version(&text).ok_or_else(|| format!("package: no version in {JVM_POM}"))?;
    let crate_version = env!("CARGO_PKG_VERSION");
    if version != crate_version {
        return Err(format!("package: {JVM_POM} has version {version}, the crates {crate_version}"));
    }
    let mut command = Command::new("mvn");
    command
        .args(["-B", "-q", "-f", path_str(&pom)?, "package"])
        .arg(format!("-Dsamizdat.build.dir={}", path_str(build)?))
        .arg(format!("-Dsamizdat.kotlin.sources={}", path_str(kotlin)?))
        .arg(format!("-Dsamizdat.native.dir={}", path_str(&dist.join("native"))?));
    exec("package: jar (maven)", &mut command)?;
    let out = dist.join("jvm");
    create_dir(&out)?;
    let maven = build.join("maven");
    let jvm = Jvm {
        jar: out.join(format!("samizdat-{version}.jar")),
        sources: out.join(format!("samizdat-{version}-sources.jar")),
        pom: out.join(format!("samizdat-{version}.pom")),
    };
    copy(&maven.join(format!("samizdat-{version}.jar")), &jvm.jar)?;
    copy(&maven.join(format!("samizdat-{version}-sources.jar")), &jvm.sources)?;
    copy(&pom, &jvm.pom)?;
    Ok(jvm)
}

// ---------------------------------------------------------------------------
// Smoke tests

/// The first ```` ```python ```` block of the README's "Bindings" section
/// (the one `ffi/tests/readme_snippets.rs` keeps equal to the tested code).
fn readme_python_example() -> Result<String, String> {
    let path = root().join("README.md");
    let readme = fs::read_to_string(&path).map_err(|e| format!("package: {}: {e}", path.display()))?;
    let section = readme
        .split_once("\n## Bindings\n")
        .map(|(_, rest)| rest.split_once("\n## ").map_or(rest, |(section, _)| section))
        .ok_or("package: README.md has no \"## Bindings\" section")?;
    let block = section
        .split_once("\n```python\n")
        .and_then(|(_, rest)| rest.split_once("\n```"))
        .map(|(block, _)| block.to_owned())
        .ok_or("package: the Bindings section of README.md has no ```python block to run")?;
    Ok(block)
}

/// Installs the wheel in a fresh venv and runs the README's Python example
/// there, from outside the source tree.
fn smoke_python(wheel: &Path, build: &Path) -> Result<(), String> {
    let venv = build.join("smoke-venv");
    exec("package: smoke venv", Command::new("python3").args(["-m", "venv"]).arg(&venv))?;
    let python = venv.join("bin/python");
    let quiet = ["-m", "pip", "install", "-q", "--disable-pip-version-check"];
    exec("package: smoke install", Command::new(&python).args(quiet).arg(wheel).arg(PYTEST))?;
    // The README's snippets are test code: `tmp_path` is pytest's fixture,
    // `samizdat` and its names are imported by the test module.
    let prelude = "import pathlib, tempfile\n\
        import pytest\n\
        import samizdat\n\
        from samizdat import *\n\
        assert 'site-packages' in samizdat.__file__, samizdat.__file__\n\
        tmp_path = pathlib.Path(tempfile.mkdtemp())\n";
    let script = build.join("readme_example.py");
    let example = readme_python_example()?;
    let epilogue = "\nprint('python smoke: the README example ran against the installed wheel')\n";
    fs::write(&script, format!("{prelude}\n{example}\n{epilogue}"))
        .map_err(|e| format!("{}: {e}", script.display()))?;
    let run = Command::new(&python).arg("-I").arg(&script).current_dir(build).status();
    let status = run.map_err(|e| format!("package: python smoke: {e}"))?;
    if status.success() {
        Ok(())
    } else {
        Err(format!(
            "package: the README's Python example failed against the wheel ({status}); script: {}",
            script.display()
        ))
    }
}

/// Compiles `ffi/jvm/smoke/Smoke.java` against the packaged jar and the
/// runtime dependencies its pom declares, and runs it with nothing else.
fn smoke_jvm(jvm: &Jvm, build: &Path) -> Result<(), String> {
    let classpath_file = build.join("jvm-classpath.txt");
    let mut command = Command::new("mvn");
    command
        .args(["-B", "-q", "-f", path_str(&jvm.pom)?, &format!("{DEPENDENCY_PLUGIN}:build-classpath")])
        .arg(format!("-Dmdep.outputFile={}", path_str(&classpath_file)?))
        .arg("-Dmdep.includeScope=runtime");
    exec("package: jvm smoke classpath (the pom's dependencies)", &mut command)?;
    let dependencies = fs::read_to_string(&classpath_file).map_err(|e| format!("{}: {e}", classpath_file.display()))?;
    let classes = build.join("smoke-classes");
    create_dir(&classes)?;
    let compile_path = format!("{}:{}", path_str(&jvm.jar)?, dependencies.trim());
    let source = root().join(JAVA_SMOKE);
    exec(
        "package: jvm smoke compile (javac)",
        Command::new("javac").arg("-cp").arg(&compile_path).arg("-d").arg(&classes).arg(&source),
    )?;
    let run_path = format!("{compile_path}:{}", path_str(&classes)?);
    exec("package: jvm smoke run", Command::new("java").arg("-cp").arg(&run_path).arg("Smoke").current_dir(build))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_parse() {
        assert_eq!(rust_version("1.89"), Some((1, 89, 0)));
        assert_eq!(rust_version("1.85.1"), Some((1, 85, 1)));
        assert_eq!(rust_version("x"), None);
        assert_eq!(glibc_version("GLIBC_2.14"), Some((2, 14)));
        assert_eq!(glibc_version("GLIBC_2.2.5"), Some((2, 2)));
        assert_eq!(glibc_version("GLIBC_PRIVATE"), None);
    }

    #[test]
    fn hazmat_symbols_are_found() {
        let hazmat = ["VectorRatchet".to_owned(), "VectorRatchetError".to_owned()];
        let symbols = [
            "uniffi_samizdat_ffi_fn_method_device_encrypt",
            "uniffi_samizdat_ffi_fn_constructor_vectorratchet_initiator",
            "uniffi_samizdat_ffi_checksum_method_vectorratchet_state",
            "ffi_samizdat_ffi_rustbuffer_alloc",
        ];
        assert_eq!(
            hazmat_symbols(&symbols, &hazmat),
            [
                "uniffi_samizdat_ffi_fn_constructor_vectorratchet_initiator",
                "uniffi_samizdat_ffi_checksum_method_vectorratchet_state"
            ]
        );
        assert!(hazmat_symbols(&symbols[..1], &hazmat).is_empty());
    }

    #[test]
    fn wheel_tags() {
        let ok = "samizdat-0.1.0-py3-none-manylinux_2_17_x86_64.manylinux2014_x86_64.whl";
        assert!(check_wheel_tags(Path::new(ok)).is_ok());
        assert!(check_wheel_tags(Path::new("samizdat-0.1.0-py3-none-manylinux_2_34_x86_64.whl")).is_err());
        assert!(check_wheel_tags(Path::new("samizdat-0.1.0-cp39-abi3-manylinux2014_x86_64.whl")).is_err());
    }

    #[test]
    fn pom_version_is_the_projects() {
        let pom = "<parent><artifactId>x</artifactId><version>9</version></parent>\
                   <artifactId>samizdat</artifactId>\n  <version> 0.1.0 </version>";
        assert_eq!(pom_version(pom), Some("0.1.0"));
    }

    #[test]
    fn readme_has_a_python_example() {
        assert!(readme_python_example().is_ok_and(|example| example.contains("import") || example.contains("Device")));
    }
}
