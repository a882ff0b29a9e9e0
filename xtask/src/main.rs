//! Project chores, run as `cargo xtask <command>`.
//!
//! - `test`: the full test run (format check, clippy with warnings denied,
//!   every test of the workspace, doc tests included). `.ci/run` calls this.
//! - `bindings`: build the FFI library and generate the Kotlin and Swift sources.
//! - `bindings-test`: the bindings' step of `test` alone (Kotlin, Python, Swift
//!   sources checked), after a change to `ffi/` or its tests.
//! - `fuzz [--seconds N] [target...]`: the fuzz targets of `fuzz/`, N
//!   seconds each (see `fuzz.rs`).
//! - `fuzz-test`: the fuzz step of `test` alone (build, every corpus
//!   replayed, every target for a few seconds).
//! - `package [--allow-dirty]`: the release artifacts into `target/dist`
//!   (crates, stripped library, wheel, jar), checked and smoke-tested (see
//!   `package.rs`). Not part of `test`.

mod bench;
mod bindings;
mod fuzz;
mod instructions;
mod package;
mod vectors;

use std::{
    env,
    path::PathBuf,
    process::{Command, ExitCode},
    time::Instant,
};

fn main() -> ExitCode {
    let args: Vec<String> = env::args().skip(1).collect();
    let result = match args.first().map(String::as_str) {
        Some("test") => test(),
        Some("bindings") => bindings::generate(),
        Some("bindings-test") => bindings::test(),
        Some("bench") => bench::bench(),
        Some("vectors") => vectors::generate(),
        Some("fuzz") => fuzz::fuzz(args.get(1..).unwrap_or_default()),
        Some("fuzz-test") => fuzz::test(),
        Some("package") => package::package(args.get(1..).unwrap_or_default()),
        _ => {
            eprintln!("usage: cargo xtask test | cargo xtask fuzz [--seconds N] [target...]");
            return ExitCode::from(2);
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(step) => {
            eprintln!("xtask: step failed: {step}");
            ExitCode::FAILURE
        }
    }
}

/// The workspace root (the parent of this crate's directory).
fn root() -> PathBuf {
    let manifest = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    manifest.parent().map(PathBuf::from).unwrap_or(manifest)
}

/// Runs `program args` in the workspace root, failing with the step's name.
fn run(step: &str, program: &str, args: &[&str]) -> Result<(), String> {
    eprintln!("==> {step}: {program} {}", args.join(" "));
    let started = Instant::now();
    let status = Command::new(program).args(args).current_dir(root()).status().map_err(|e| format!("{step}: {e}"))?;
    eprintln!("<== {step}: {:.1} s", started.elapsed().as_secs_f64());
    if status.success() { Ok(()) } else { Err(step.to_owned()) }
}

fn test() -> Result<(), String> {
    let started = Instant::now();
    let cargo = env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
    run("format", &cargo, &["fmt", "--all", "--", "--check"])?;
    // The fuzz crate is a workspace of its own: `--all` does not reach it.
    run("format (fuzz)", &cargo, &["fmt", "--manifest-path", "fuzz/Cargo.toml", "--", "--check"])?;
    run("clippy", &cargo, &["clippy", "--workspace", "--all-targets", "--all-features", "--", "-D", "warnings"])?;
    // Every crate's documentation builds without a warning (broken or
    // private intra-doc links included).
    let rustdoc_deny = "build.rustdocflags=[\"-D\", \"warnings\"]";
    run("docs", &cargo, &["doc", "--workspace", "--no-deps", "--all-features", "--config", rustdoc_deny])?;
    run("tests", &cargo, &["test", "--workspace", "--all-targets"])?;
    run("doc tests", &cargo, &["test", "--workspace", "--doc"])?;
    // The README's main command, run twice in a fresh directory (the second
    // run continues the conversation from disk): an example that compiles
    // but fails at run time fails the test command.
    let quickstart = root().join("target").join("xtask-quickstart");
    let _ = std::fs::remove_dir_all(&quickstart);
    let dir = quickstart.to_string_lossy().into_owned();
    for run_name in ["quickstart (first run)", "quickstart (second run)"] {
        run(run_name, &cargo, &["run", "--quiet", "--example", "quickstart", "--", &dir])?;
    }
    bindings::test()?;
    fuzz::test()?;
    eprintln!("xtask test: all steps passed in {:.0} s", started.elapsed().as_secs_f64());
    Ok(())
}
