//! Instruction counts for the ratio targets, part of `cargo xtask bench`.
//!
//! On a shared 2-core VM timings move by tens of per cent between runs, and a floor is a sum of
//! primitives timed at other moments, so a ratio bound of 1.05x cannot be judged on timings. This
//! step counts instructions instead, which do not move: `valgrind --tool=callgrind` runs
//! `benches/examples/profile.rs` on an operation and on the primitives of its floor composition
//! (the same crates, sizes and compositions as the criterion run), collecting only inside its
//! `run` function, so setup is left out. Each count is divided by the number of operations.
//!
//! Without `valgrind` on the `PATH` the step is skipped and the targets are judged on timings.
//! The counts are written to `target/criterion/samizdat-instructions.tsv`, from which
//! `cargo xtask bench --report` reads them back.

use std::{
    fmt::Write as _,
    fs,
    path::Path,
    process::{Command, Stdio},
    time::Instant,
};

/// How many operations to count: few, since callgrind runs some fifty times slower than the
/// machine. The count per operation does not depend on it: setup runs outside `run` and every
/// iteration does the same work.
fn iterations(operation: &str) -> u32 {
    match operation {
        "handshake" => 2,
        "pingpong" => 10,
        _ => 30,
    }
}

/// Instructions per operation, ours and the floor's.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Count {
    pub(crate) target: String,
    pub(crate) label: String,
    pub(crate) ours: f64,
    pub(crate) floor: f64,
}

impl Count {
    pub(crate) fn ratio(&self) -> f64 {
        self.ours / self.floor
    }
}

/// Builds the profiler and counts each `(target, row label, floor key)` of `rows`, the operation
/// being named by its floor key (`chain_recv/16384`: `profile chain-recv <n> 16384`); `Ok(None)`
/// without valgrind.
pub(crate) fn measure(
    root: &Path,
    out: &Path,
    rows: &[(String, String, String)],
) -> Result<Option<Vec<Count>>, String> {
    let has_valgrind = Command::new("valgrind")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !has_valgrind {
        eprintln!("bench: valgrind not found: the ratio targets are judged on this run's timings");
        let _ = fs::remove_file(out);
        return Ok(None);
    }
    let started = Instant::now();
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
    super::run(
        "bench: profiler",
        &cargo,
        &["build", "--release", "-q", "-p", "samizdat-benches", "--example", "profile"],
    )?;
    let profile = root.join("target/release/examples/profile");
    let profile = profile.to_str().ok_or("target path is not UTF-8")?;
    let mut counts = Vec::new();
    for (target, label, floor_key) in rows {
        let (operation, size) = floor_key.split_once('/').ok_or_else(|| format!("bench: floor key {floor_key}"))?;
        let operation = operation.replace('_', "-");
        let n = iterations(&operation);
        let count = n.to_string();
        let ours = collected(profile, &[&operation, &count, size])?;
        let floor = collected(profile, &["floor", floor_key, &count])?;
        counts.push(Count {
            target: target.clone(),
            label: label.clone(),
            ours: ours / f64::from(n),
            floor: floor / f64::from(n),
        });
    }
    fs::write(out, to_tsv(&counts)).map_err(|e| format!("bench: {}: {e}", out.display()))?;
    eprintln!("<== bench: instruction counts (callgrind): {:.1} s", started.elapsed().as_secs_f64());
    Ok(Some(counts))
}

/// The counts of an earlier run, if any.
pub(crate) fn read(path: &Path) -> Option<Vec<Count>> {
    let counts = from_tsv(&fs::read_to_string(path).ok()?);
    (!counts.is_empty()).then_some(counts)
}

/// Instructions callgrind collected inside `profile::run` for `profile args`.
fn collected(profile: &str, args: &[&str]) -> Result<f64, String> {
    let out_file = std::env::temp_dir().join(format!("samizdat-callgrind-{}.out", std::process::id()));
    let output = Command::new("valgrind")
        .arg("--tool=callgrind")
        .arg(format!("--callgrind-out-file={}", out_file.display()))
        .arg("--toggle-collect=*profile::run*")
        .arg(profile)
        .args(args)
        .stdout(Stdio::null())
        .output()
        .map_err(|e| format!("valgrind: {e}"))?;
    let _ = fs::remove_file(&out_file);
    let log = String::from_utf8_lossy(&output.stderr);
    if !output.status.success() {
        return Err(format!("valgrind profile {}: {}", args.join(" "), log.trim()));
    }
    parse_collected(&log).ok_or_else(|| format!("valgrind profile {}: no instruction count in: {log}", args.join(" ")))
}

/// Reads `Collected : N` from callgrind's summary.
fn parse_collected(log: &str) -> Option<f64> {
    let rest = log.split("Collected :").nth(1)?;
    rest.split_whitespace().next()?.parse().ok()
}

fn to_tsv(counts: &[Count]) -> String {
    let mut out = String::new();
    for c in counts {
        let _ = writeln!(out, "{}\t{}\t{:.0}\t{:.0}", c.target, c.label, c.ours, c.floor);
    }
    out
}

fn from_tsv(text: &str) -> Vec<Count> {
    text.lines()
        .filter_map(|line| {
            let mut f = line.split('\t');
            let (target, label) = (f.next()?, f.next()?);
            let ours = f.next()?.parse().ok()?;
            let floor: f64 = f.next()?.parse().ok()?;
            (floor > 0.0).then(|| Count { target: target.to_owned(), label: label.to_owned(), ours, floor })
        })
        .collect()
}

/// `83.5 k`, `10.23 M`.
pub(crate) fn fmt_count(n: f64) -> String {
    if n >= 1e6 { format!("{:.3} M", n / 1e6) } else { format!("{:.1} k", n / 1e3) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_callgrind_summaries() {
        let log = "==1== Events    : Ir\n==1== Collected : 16791220\n==1==\n==1== I   refs:      99";
        assert_eq!(parse_collected(log), Some(16_791_220.0));
        assert_eq!(parse_collected("==1== I   refs: 5"), None);
    }

    #[test]
    fn counts_survive_the_file() {
        let counts =
            vec![Count { target: "chain".into(), label: "chain send, 64 B".into(), ours: 84_200.0, floor: 81_000.0 }];
        assert_eq!(from_tsv(&to_tsv(&counts)), counts);
        assert!((counts[0].ratio() - 1.0395).abs() < 1e-3);
        assert_eq!(fmt_count(84_200.0), "84.2 k");
        assert_eq!(fmt_count(10_230_000.0), "10.230 M");
    }
}
