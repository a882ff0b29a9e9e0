//! The fuzz targets of `fuzz/` (cargo-fuzz, libFuzzer), on the stable
//! toolchain: built with `cargo fuzz build -s none` (no sanitizer: the
//! crates are `forbid(unsafe_code)`, and ASan needs a nightly), then each
//! target binary run directly.
//!
//! - `cargo xtask fuzz [--seconds N] [target...]`: every target (or the
//!   named ones) for N seconds each (60 by default), starting from its
//!   saved corpus `fuzz/corpus/<target>/`; new inputs go to
//!   `fuzz/target/corpus/<target>/` (the saved corpus is left alone: merge
//!   into it with `cargo fuzz cmin`), findings to `fuzz/artifacts/<target>/`.
//!   Prints the executions of each target (libFuzzer's final
//!   `stat::number_of_executed_units`).
//! - `cargo xtask test` (through [`test()`]): every saved corpus replayed
//!   (`-runs=0`: each input once, so a saved crash input is a regression
//!   test), then every target run for [`TEST_SECONDS`] seconds from its
//!   scratch corpus only (the saved one was just replayed: loading it again
//!   would take `interaction` half a minute).
//!
//! cargo-fuzz 0.13.2 is installed into `target/tools/` the first time
//! (`cargo install --locked`). Before each build the cached rustc probe
//! `fuzz/target/.rustc_info.json` is removed: one from an earlier build
//! without `-s none` (or with another toolchain setting) makes cargo reuse a
//! failed probe and refuse to build.

use std::{
    env, fs,
    path::{Path, PathBuf},
    process::Command,
    time::Instant,
};

use super::{root, run};

/// The cargo-fuzz release this was checked with (TOOLCHAIN.md 7).
const CARGO_FUZZ_VERSION: &str = "0.13.2";
/// Seconds each target runs in `cargo xtask test`.
const TEST_SECONDS: u32 = 5;
/// Seconds each target runs in `cargo xtask fuzz` unless `--seconds` says.
const DEFAULT_SECONDS: u32 = 60;
/// Build options of every fuzz build. Sixteen codegen units (cargo-fuzz's
/// default is one) make a clean build much shorter for a small loss of speed.
const BUILD_OPTIONS: [&str; 4] = ["-s", "none", "--codegen-units", "16"];

/// What one run of a target gave.
struct Outcome {
    target: String,
    executions: Option<u64>,
    seconds: f64,
    passed: bool,
}

fn fuzz_dir() -> PathBuf {
    root().join("fuzz")
}

/// `cargo xtask fuzz [--seconds N] [target...]`.
pub(crate) fn fuzz(args: &[String]) -> Result<(), String> {
    let mut seconds = DEFAULT_SECONDS;
    let mut named = Vec::new();
    let mut args = args.iter();
    while let Some(arg) = args.next() {
        if arg == "--seconds" {
            let value = args.next().ok_or("--seconds needs a number")?;
            seconds = value.parse().map_err(|_| format!("--seconds: not a number: {value}"))?;
        } else {
            named.push(arg.clone());
        }
    }
    let all = targets()?;
    if let Some(unknown) = named.iter().find(|t| !all.contains(t)) {
        return Err(format!("no fuzz target {unknown} (targets: {})", all.join(", ")));
    }
    let chosen = if named.is_empty() { all } else { named };
    let binaries = build()?;
    let outcomes: Vec<Outcome> = chosen.iter().map(|t| run_target(&binaries, t, Mode::Fuzz(seconds, true))).collect();
    report("fuzz", &outcomes)
}

/// The fuzz step of `cargo xtask test`: build, replay every saved corpus,
/// then run every target briefly.
pub(crate) fn test() -> Result<(), String> {
    let started = Instant::now();
    let all = targets()?;
    let binaries = build()?;
    let replayed: Vec<Outcome> = all.iter().map(|t| run_target(&binaries, t, Mode::Replay)).collect();
    report("fuzz corpus replay", &replayed)?;
    let fuzzed: Vec<Outcome> = all.iter().map(|t| run_target(&binaries, t, Mode::Fuzz(TEST_SECONDS, false))).collect();
    report("fuzz", &fuzzed)?;
    eprintln!("fuzz: build, replay and runs in {:.0} s", started.elapsed().as_secs_f64());
    Ok(())
}

/// The targets: the files of `fuzz/fuzz_targets/`, sorted.
fn targets() -> Result<Vec<String>, String> {
    let dir = fuzz_dir().join("fuzz_targets");
    let mut targets: Vec<String> = fs::read_dir(&dir)
        .map_err(|e| format!("{}: {e}", dir.display()))?
        .filter_map(|entry| entry.ok()?.file_name().to_str()?.strip_suffix(".rs").map(str::to_owned))
        .collect();
    targets.sort();
    Ok(targets)
}

/// cargo-fuzz, installed into `target/tools/` if it is not there yet.
fn cargo_fuzz() -> Result<PathBuf, String> {
    let tools = root().join("target").join("tools");
    let binary = tools.join("bin").join("cargo-fuzz");
    let installed = Command::new(&binary)
        .arg("--version")
        .output()
        .is_ok_and(|out| String::from_utf8_lossy(&out.stdout).split_whitespace().any(|w| w == CARGO_FUZZ_VERSION));
    if !installed {
        let cargo = env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
        let tools = tools.to_str().ok_or("a target directory that is not UTF-8")?;
        run(
            "install cargo-fuzz",
            &cargo,
            &["install", "cargo-fuzz", "--version", CARGO_FUZZ_VERSION, "--locked", "--root", tools],
        )?;
    }
    Ok(binary)
}

/// The host's target triple (where cargo-fuzz puts the binaries).
fn host() -> Result<String, String> {
    let rustc = env::var("RUSTC").unwrap_or_else(|_| "rustc".to_owned());
    let out = Command::new(rustc).arg("-vV").output().map_err(|e| format!("rustc -vV: {e}"))?;
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .find_map(|line| line.strip_prefix("host: ").map(str::to_owned))
        .ok_or_else(|| "rustc -vV printed no host".to_owned())
}

/// Builds every target; returns the directory of the binaries.
fn build() -> Result<PathBuf, String> {
    let cargo_fuzz = cargo_fuzz()?;
    let target_dir = fuzz_dir().join("target");
    // A probe cached by an earlier build with other settings fails the build.
    let _ = fs::remove_file(target_dir.join(".rustc_info.json"));
    let started = Instant::now();
    eprintln!("==> fuzz build: cargo fuzz build {}", BUILD_OPTIONS.join(" "));
    let status = Command::new(&cargo_fuzz)
        .args(["fuzz", "build"])
        .args(BUILD_OPTIONS)
        .current_dir(fuzz_dir())
        .status()
        .map_err(|e| format!("fuzz build: {e}"))?;
    eprintln!("<== fuzz build: {:.1} s", started.elapsed().as_secs_f64());
    if !status.success() {
        return Err("fuzz build".to_owned());
    }
    Ok(target_dir.join(host()?).join("release"))
}

#[derive(Clone, Copy)]
enum Mode {
    /// Every input of the saved corpus once.
    Replay,
    /// Fuzzing for this many seconds, starting from the saved corpus too (or not).
    Fuzz(u32, bool),
}

/// `stat::number_of_executed_units` from libFuzzer's final statistics.
fn executions(log: &str) -> Option<u64> {
    log.lines().rev().find_map(|line| line.strip_prefix("stat::number_of_executed_units:")?.trim().parse().ok())
}

fn run_target(binaries: &Path, target: &str, mode: Mode) -> Outcome {
    let fuzz = fuzz_dir();
    let saved = fuzz.join("corpus").join(target);
    let scratch = fuzz.join("target").join("corpus").join(target);
    let artifacts = fuzz.join("artifacts").join(target);
    for dir in [&saved, &scratch, &artifacts] {
        let _ = fs::create_dir_all(dir);
    }
    let mut command = Command::new(binaries.join(target));
    command.current_dir(&fuzz).arg("-print_final_stats=1").arg("-timeout=25").arg("-rss_limit_mb=2048");
    command.arg(format!("-artifact_prefix={}/", artifacts.display()));
    match mode {
        Mode::Replay => command.arg("-runs=0").arg(&saved),
        // New inputs go to the scratch corpus, the first directory.
        Mode::Fuzz(seconds, from_saved) => {
            command.arg(format!("-max_total_time={seconds}")).arg(&scratch);
            if from_saved { command.arg(&saved) } else { &mut command }
        }
    };
    let started = Instant::now();
    let output = command.output();
    let seconds = started.elapsed().as_secs_f64();
    let (log, passed) = match output {
        Ok(out) => (String::from_utf8_lossy(&out.stderr).into_owned(), out.status.success()),
        Err(e) => (format!("could not run {target}: {e}"), false),
    };
    let log_path = fuzz.join("target").join(format!("{target}.log"));
    let _ = fs::write(&log_path, &log);
    if !passed {
        let tail: Vec<&str> = log.lines().rev().take(40).collect();
        eprintln!("fuzz: {target} FAILED (log {}):", log_path.display());
        for line in tail.into_iter().rev() {
            eprintln!("  {line}");
        }
    }
    Outcome { target: target.to_owned(), executions: executions(&log), seconds, passed }
}

fn report(what: &str, outcomes: &[Outcome]) -> Result<(), String> {
    eprintln!("{what}: {:<24} {:>12} {:>8}", "target", "executions", "seconds");
    for o in outcomes {
        let executions = o.executions.map_or_else(|| "?".to_owned(), |n| n.to_string());
        let status = if o.passed { "" } else { "  FAILED" };
        eprintln!("{what}: {:<24} {executions:>12} {:>8.1}{status}", o.target, o.seconds);
    }
    let failed: Vec<&str> = outcomes.iter().filter(|o| !o.passed).map(|o| o.target.as_str()).collect();
    if failed.is_empty() { Ok(()) } else { Err(format!("{what}: {} failed", failed.join(", "))) }
}
