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

/// One profiled operation: the target it counts for, its row label in the report, the profile
/// operation and payload size, its floor key (`benches/src/lib.rs`) and how many to run.
struct Case {
    target: &'static str,
    label: &'static str,
    op: &'static str,
    size: &'static str,
    floor: &'static str,
    count: u32,
}

const fn case(
    target: &'static str,
    label: &'static str,
    op: &'static str,
    size: &'static str,
    floor: &'static str,
    count: u32,
) -> Case {
    Case { target, label, op, size, floor, count }
}

/// Every operation a ratio target covers, at each payload size of the criterion run. Counts are
/// kept small (callgrind runs some fifty times slower than the machine); the count per operation
/// does not depend on them, since setup runs outside `run` and every iteration does the same work.
const CASES: [Case; 15] = [
    case("chain", "chain send, 64 B", "chain-send", "64", "chain_send/64", 40),
    case("chain", "chain receive, 64 B", "chain-recv", "64", "chain_recv/64", 40),
    case("chain", "chain send, 1 KiB", "chain-send", "1024", "chain_send/1024", 40),
    case("chain", "chain receive, 1 KiB", "chain-recv", "1024", "chain_recv/1024", 40),
    case("chain", "chain send, 16 KiB", "chain-send", "16384", "chain_send/16384", 20),
    case("chain", "chain receive, 16 KiB", "chain-recv", "16384", "chain_recv/16384", 20),
    case("chain", "chain send + receive, 64 B", "chain-both", "64", "chain_both/64", 40),
    case("chain", "chain send + receive, 1 KiB", "chain-both", "1024", "chain_both/1024", 40),
    case("chain", "chain send + receive, 16 KiB", "chain-both", "16384", "chain_both/16384", 20),
    case("pingpong", "ping-pong message, 64 B", "pingpong", "64", "pingpong/64", 10),
    case("pingpong", "ping-pong message, 1 KiB", "pingpong", "1024", "pingpong/1024", 10),
    case("pingpong", "ping-pong message, 16 KiB", "pingpong", "16384", "pingpong/16384", 10),
    case("handshake", "handshake + first message, 64 B", "handshake", "64", "handshake/64", 2),
    case("handshake", "handshake + first message, 1 KiB", "handshake", "1024", "handshake/1024", 2),
    case("handshake", "handshake + first message, 16 KiB", "handshake", "16384", "handshake/16384", 2),
];

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

/// Builds the profiler and counts every case; `Ok(None)` without valgrind.
pub(crate) fn measure(root: &Path, out: &Path) -> Result<Option<Vec<Count>>, String> {
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
    for case in &CASES {
        let count = case.count.to_string();
        let ours = collected(profile, &[case.op, &count, case.size])?;
        let floor = collected(profile, &["floor", case.floor, &count])?;
        let n = f64::from(case.count);
        counts.push(Count {
            target: case.target.to_owned(),
            label: case.label.to_owned(),
            ours: ours / n,
            floor: floor / n,
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
