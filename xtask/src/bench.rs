//! `cargo xtask bench`: runs the criterion benchmarks of `benches/` (samizdat beside vodozemac, and
//! the primitives of each operation's floor) with short times, reads criterion's estimates
//! (`target/criterion/**/new/estimates.json`, mean point estimate), prints a table and writes
//! `BENCHMARKS.md` with `benches/chart.svg`.
//!
//! Arguments after `bench` go to criterion (for example a filter: `cargo xtask bench chain`);
//! rows not measured in this run show the value of an earlier run, marked, or nothing.
//! `cargo xtask bench --report` rewrites the report from the last run's results without running.
//!
//! The rows, the floor compositions, the targets and the computed sizes come from the benchmark
//! binary itself (`benches/src/lib.rs`, handed over in `target/criterion/samizdat-meta.tsv`), so
//! they are written down once. Hand-written analysis lives in `benches/NOTES.md`, which is
//! copied into `BENCHMARKS.md`.

use super::instructions::{self, Count, fmt_count};
use std::{
    collections::BTreeMap,
    env,
    fmt::Write as _,
    fs,
    path::{Path, PathBuf},
    process::Command,
    time::{Instant, SystemTime},
};

/// Criterion settings: short, so the whole run, release build included, stays under 10 minutes on
/// 2 cores. Each benchmark warms up for 0.5 s and is measured for 1.5 s (longer when one sample
/// needs it); 10,000 bootstrap resamples (criterion's default, 100,000, costs about a second of
/// analysis per benchmark) are plenty for the mean this report uses.
const CRITERION_ARGS: [&str; 7] =
    ["--warm-up-time", "0.5", "--measurement-time", "1.5", "--nresamples", "10000", "--noplot"];

pub(crate) fn bench() -> Result<(), String> {
    let root = super::root();
    let criterion_home = root.join("target").join("criterion");
    let meta_path = criterion_home.join("samizdat-meta.tsv");
    let counts_path = criterion_home.join("samizdat-instructions.tsv");
    let extra: Vec<String> = env::args().skip(2).collect();
    let started = Instant::now();
    // `--report` rewrites the report from the last run's results without running anything; a
    // filtered run keeps the instruction counts of the last full run.
    let full_run = extra.is_empty();
    let run_start = if extra.first().is_some_and(|a| a == "--report") {
        SystemTime::UNIX_EPOCH
    } else {
        run_benchmarks(&root, &criterion_home, &meta_path, extra)?
    };
    let meta =
        Meta::parse(&fs::read_to_string(&meta_path).map_err(|e| format!("bench: {}: {e}", meta_path.display()))?);
    let counts = if full_run {
        instructions::measure(&root, &counts_path, &meta.profiled())?
    } else {
        instructions::read(&counts_path)
    };
    let estimates = Estimates::index(&criterion_home, run_start);
    let report = Report::build(&meta, &estimates, counts.unwrap_or_default());
    println!("{}", report.text_table());
    let machine = Machine::detect();
    let notes = fs::read_to_string(root.join("benches").join("NOTES.md")).unwrap_or_default();
    let chart = report.svg();
    fs::write(root.join("benches").join("chart.svg"), chart).map_err(|e| format!("bench: chart.svg: {e}"))?;
    let markdown = report.markdown(&meta, &machine, &notes);
    fs::write(root.join("BENCHMARKS.md"), markdown).map_err(|e| format!("bench: BENCHMARKS.md: {e}"))?;
    eprintln!("xtask bench: wrote BENCHMARKS.md and benches/chart.svg in {:.0} s", started.elapsed().as_secs_f64());
    Ok(())
}

/// Runs the benchmarks; returns when they started (results older than that are stale).
fn run_benchmarks(
    root: &Path,
    criterion_home: &Path,
    meta_path: &Path,
    extra: Vec<String>,
) -> Result<SystemTime, String> {
    let _ = fs::remove_file(meta_path);
    let cargo = env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
    let mut args: Vec<String> =
        ["bench", "-p", "samizdat-benches", "--bench", "compare", "--"].iter().map(|s| (*s).to_owned()).collect();
    args.extend(CRITERION_ARGS.iter().map(|s| (*s).to_owned()));
    args.extend(extra);
    eprintln!("==> bench: {cargo} {}", args.join(" "));
    let started = Instant::now();
    let run_start = SystemTime::now();
    let status = Command::new(&cargo)
        .args(&args)
        .env("CRITERION_HOME", criterion_home)
        .env("SAMIZDAT_BENCH_META", meta_path)
        .current_dir(root)
        .status()
        .map_err(|e| format!("bench: {e}"))?;
    eprintln!("<== bench: {:.1} s", started.elapsed().as_secs_f64());
    if status.success() { Ok(run_start) } else { Err("bench".to_owned()) }
}

// ---------------------------------------------------------------- the hand-over file

#[derive(Debug, Default)]
struct Meta {
    /// Primitive id -> description, in order.
    prims: Vec<(String, String)>,
    /// Floor key -> terms `(count, primitive id)`, in the order of the file.
    floors: Vec<(String, Vec<(f64, String)>)>,
    /// Floor key -> how its terms come about.
    floor_descriptions: BTreeMap<String, String>,
    rows: Vec<MetaRow>,
    targets: Vec<Target>,
    sizes: Vec<(String, String, String)>,
    overhead: Vec<(String, String, String)>,
}

#[derive(Debug, Clone)]
struct MetaRow {
    section: String,
    label: String,
    ours: Option<String>,
    vodozemac: Option<String>,
    floor: Option<String>,
    per: f64,
    target: Option<String>,
}

#[derive(Debug, Clone)]
struct Target {
    name: String,
    what: String,
    judge: Judge,
}

#[derive(Debug, Clone)]
enum Judge {
    Floor(f64),
    Size(f64, String),
    Pairs(f64, Vec<(String, String)>),
    NotApplicable(String),
}

fn dash(field: Option<&&str>) -> Option<String> {
    field.filter(|f| **f != "-" && !f.is_empty()).map(|f| (*f).to_owned())
}

impl Meta {
    fn parse(text: &str) -> Self {
        let mut meta = Meta::default();
        for line in text.lines() {
            let f: Vec<&str> = line.split('\t').collect();
            let get = |i: usize| f.get(i).copied().unwrap_or("");
            let num = |i: usize| get(i).parse::<f64>().unwrap_or(f64::NAN);
            match get(0) {
                "prim" => meta.prims.push((get(1).to_owned(), get(2).to_owned())),
                "floordesc" => {
                    meta.floor_descriptions.insert(get(1).to_owned(), get(2).to_owned());
                }
                "floor" => {
                    let term = (num(2), get(3).to_owned());
                    match meta.floors.iter_mut().find(|(key, _)| key == get(1)) {
                        Some((_, terms)) => terms.push(term),
                        None => meta.floors.push((get(1).to_owned(), vec![term])),
                    }
                }
                "row" => meta.rows.push(MetaRow {
                    section: get(1).to_owned(),
                    label: get(2).to_owned(),
                    ours: dash(f.get(3)),
                    vodozemac: dash(f.get(4)),
                    floor: dash(f.get(5)),
                    per: num(6),
                    target: dash(f.get(7)),
                }),
                "target" => {
                    let judge = match get(3) {
                        "floor" => Judge::Floor(num(4)),
                        "size" => Judge::Size(num(4), get(5).to_owned()),
                        "pairs" => Judge::Pairs(
                            num(4),
                            f.get(5..)
                                .unwrap_or_default()
                                .chunks(2)
                                .filter_map(|p| Some(((*p.first()?).to_owned(), (*p.get(1)?).to_owned())))
                                .collect(),
                        ),
                        _ => Judge::NotApplicable(get(4).to_owned()),
                    };
                    meta.targets.push(Target { name: get(1).to_owned(), what: get(2).to_owned(), judge });
                }
                "size" => meta.sizes.push((get(1).to_owned(), get(2).to_owned(), get(3).to_owned())),
                "overhead" => meta.overhead.push((get(1).to_owned(), get(2).to_owned(), get(3).to_owned())),
                _ => {}
            }
        }
        meta
    }

    /// `(target, row label, floor key)` of every row a floor-ratio target covers: what the
    /// instruction counts measure.
    fn profiled(&self) -> Vec<(String, String, String)> {
        let floor_targets: Vec<&str> =
            self.targets.iter().filter(|t| matches!(t.judge, Judge::Floor(_))).map(|t| t.name.as_str()).collect();
        self.rows
            .iter()
            .filter_map(|row| {
                let target = row.target.as_deref().filter(|t| floor_targets.contains(t))?;
                Some((target.to_owned(), row.label.clone(), row.floor.clone()?))
            })
            .collect()
    }

    fn size(&self, label: &str) -> Option<f64> {
        self.sizes.iter().find(|(l, _, _)| l == label).and_then(|(_, ours, _)| ours.parse().ok())
    }

    fn prim_name(&self, id: &str) -> String {
        self.prims.iter().find(|(p, _)| p == id).map_or_else(|| id.to_owned(), |(_, what)| what.clone())
    }
}

// ---------------------------------------------------------------- criterion's estimates

/// Criterion's results by full id (`group/function[/parameter]`, as `new/benchmark.json` names
/// it: directory names are sanitized and cannot be rebuilt from the id).
struct Estimates {
    files: BTreeMap<String, PathBuf>,
    since: SystemTime,
}

/// A mean in nanoseconds, and whether it was measured in this run.
#[derive(Debug, Clone, Copy)]
struct Value {
    ns: f64,
    fresh: bool,
}

impl Estimates {
    fn index(home: &Path, since: SystemTime) -> Self {
        let mut files = BTreeMap::new();
        let mut stack = vec![home.to_path_buf()];
        while let Some(dir) = stack.pop() {
            let Ok(entries) = fs::read_dir(&dir) else { continue };
            for entry in entries.flatten() {
                let path = entry.path();
                if !path.is_dir() {
                    continue;
                }
                if path.file_name().is_some_and(|n| n == "new") {
                    let full_id =
                        fs::read_to_string(path.join("benchmark.json")).ok().and_then(|j| json_string(&j, "full_id"));
                    // An id renamed on disk (criterion sanitizes names) may have older twins: keep the newest.
                    let estimates = path.join("estimates.json");
                    let modified = |p: &Path| fs::metadata(p).and_then(|m| m.modified()).ok();
                    if let Some(full_id) = full_id
                        && files.get(&full_id).is_none_or(|old: &PathBuf| modified(old) < modified(&estimates))
                    {
                        files.insert(full_id, estimates);
                    }
                } else {
                    stack.push(path);
                }
            }
        }
        Estimates { files, since }
    }

    /// The mean point estimate of criterion id `id` (`group/function[/parameter]`).
    fn get(&self, id: &str) -> Option<Value> {
        let file = self.files.get(id)?;
        let text = fs::read_to_string(file).ok()?;
        let fresh = fs::metadata(file).and_then(|m| m.modified()).is_ok_and(|t| t >= self.since);
        Some(Value { ns: mean_point_estimate(&text)?, fresh })
    }
}

/// The string value of `"key":"value"` in criterion's flat JSON (no escapes in our ids).
fn json_string(json: &str, key: &str) -> Option<String> {
    let quoted = format!("\"{key}\"");
    let rest = json.get(json.find(&quoted)? + quoted.len()..)?.trim_start().strip_prefix(':')?.trim_start();
    let rest = rest.strip_prefix('"')?;
    Some(rest.get(..rest.find('"')?)?.to_owned())
}

/// `{"mean":{"confidence_interval":{...},"point_estimate":X,...},...}` -> X.
fn mean_point_estimate(json: &str) -> Option<f64> {
    let mean = json.get(json.find("\"mean\"")?..)?;
    let value = mean.get(mean.find("\"point_estimate\"")? + "\"point_estimate\"".len()..)?;
    let value = value.trim_start().strip_prefix(':')?.trim_start();
    let end = value.find([',', '}']).unwrap_or(value.len());
    value.get(..end)?.trim().parse().ok()
}

// ---------------------------------------------------------------- the report

struct Line {
    row: MetaRow,
    ours: Option<Value>,
    vodozemac: Option<Value>,
    floor: Option<f64>,
}

impl Line {
    /// Per-operation values (a batch row is divided by its size).
    fn ours_ns(&self) -> Option<f64> {
        self.ours.map(|v| v.ns / self.row.per)
    }
    fn vodozemac_ns(&self) -> Option<f64> {
        self.vodozemac.map(|v| v.ns / self.row.per)
    }
    fn floor_ns(&self) -> Option<f64> {
        self.floor.map(|f| f / self.row.per)
    }
    fn to_floor(&self) -> Option<f64> {
        Some(self.ours_ns()? / self.floor_ns()?)
    }
    fn to_vodozemac(&self) -> Option<f64> {
        Some(self.ours_ns()? / self.vodozemac_ns()?)
    }
}

struct Outcome {
    target: Target,
    met: Option<bool>,
    detail: String,
}

struct Report {
    lines: Vec<Line>,
    outcomes: Vec<Outcome>,
    /// Primitive id -> value.
    prims: Vec<(String, String, Option<Value>)>,
    /// Floor key -> (value, "2 x A + 1 x B" text), in the order of the hand-over file.
    floors: Vec<(String, Option<f64>, String)>,
    /// Instruction counts (callgrind) of the ratio targets' operations, if measured.
    counts: Vec<Count>,
    stale: bool,
}

impl Report {
    fn build(meta: &Meta, estimates: &Estimates, counts: Vec<Count>) -> Self {
        let prims: Vec<(String, String, Option<Value>)> =
            meta.prims.iter().map(|(id, what)| (id.clone(), what.clone(), estimates.get(id))).collect();
        let prim_ns = |id: &str| prims.iter().find(|(p, _, _)| p == id).and_then(|(_, _, v)| v.map(|v| v.ns));
        let mut floors = Vec::new();
        for (key, terms) in &meta.floors {
            let value = terms.iter().map(|(count, id)| prim_ns(id).map(|ns| count * ns)).sum::<Option<f64>>();
            // Like terms merged, in order of first appearance.
            let mut merged: Vec<(f64, &str)> = Vec::new();
            for (count, id) in terms {
                match merged.iter_mut().find(|(_, m)| m == id) {
                    Some((c, _)) => *c += count,
                    None => merged.push((*count, id)),
                }
            }
            let text = merged
                .iter()
                .map(|(count, id)| format!("{count} × {}", meta.prim_name(id)))
                .collect::<Vec<_>>()
                .join(" + ");
            floors.push((key.clone(), value, text));
        }
        let lines: Vec<Line> = meta
            .rows
            .iter()
            .map(|row| Line {
                row: row.clone(),
                ours: row.ours.as_deref().and_then(|id| estimates.get(id)),
                vodozemac: row.vodozemac.as_deref().and_then(|id| estimates.get(id)),
                floor: row
                    .floor
                    .as_ref()
                    .and_then(|key| floors.iter().find(|(k, _, _)| k == key))
                    .and_then(|(_, v, _)| *v),
            })
            .collect();
        let stale = lines.iter().flat_map(|l| [l.ours, l.vodozemac]).flatten().any(|v| !v.fresh)
            || prims.iter().filter_map(|(_, _, v)| *v).any(|v| !v.fresh);
        let outcomes = meta.targets.iter().map(|t| judge(t, &lines, meta, estimates, &counts)).collect();
        Report { lines, outcomes, prims, floors, counts, stale }
    }

    fn text_table(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "{:<62} {:>11} {:>11} {:>11} {:>8} {:>8}",
            "operation", "samizdat", "vodozemac", "floor", "/floor", "/vodoz."
        );
        let mut section = "";
        for line in &self.lines {
            if line.row.section != section {
                section = &line.row.section;
                let _ = writeln!(out, "-- {section}");
            }
            let _ = writeln!(
                out,
                "{:<62} {:>11} {:>11} {:>11} {:>8} {:>8}",
                line.row.label,
                time_or(line.ours_ns(), line.ours, "not impl."),
                time_or(line.vodozemac_ns(), line.vodozemac, "—"),
                line.floor_ns().map_or_else(|| "—".to_owned(), fmt_time),
                ratio(line.to_floor()),
                ratio(line.to_vodozemac()),
            );
        }
        if !self.counts.is_empty() {
            let _ = writeln!(
                out,
                "\n{:<62} {:>11} {:>11} {:>8}",
                "instructions (callgrind)", "samizdat", "floor", "/floor"
            );
            for c in &self.counts {
                let _ = writeln!(
                    out,
                    "{:<62} {:>11} {:>11} {:>8}",
                    c.label,
                    fmt_count(c.ours),
                    fmt_count(c.floor),
                    ratio(Some(c.ratio()))
                );
            }
        }
        let _ = writeln!(out, "\nTargets:");
        for o in &self.outcomes {
            let _ = writeln!(out, "  [{}] {}: {}", verdict(o.met), o.target.what, o.detail);
        }
        out
    }

    fn markdown(&self, meta: &Meta, machine: &Machine, notes: &str) -> String {
        let mut md = String::new();
        let _ = writeln!(md, "# Benchmarks: samizdat beside vodozemac, against the floor of the primitives\n");
        let _ = writeln!(
            md,
            "Generated by `cargo xtask bench` (issue 6). Do not edit by hand: the numbers, the floor \
             compositions and the targets come from `benches/` (`src/lib.rs` composes the floors, \
             `benches/compare.rs` measures); the analysis at the end is `benches/NOTES.md`.\n"
        );
        let _ = writeln!(md, "## Machine\n");
        let _ = writeln!(md, "- CPU: {}", machine.cpu);
        let _ = writeln!(md, "- cores: {}", machine.cores);
        let _ = writeln!(md, "- rustc: {}", machine.rustc);
        let _ = writeln!(md, "- date: {}", machine.date);
        let _ = writeln!(md, "- SQLite files in: {} ({})", machine.temp_dir, machine.temp_fs);
        let _ = writeln!(
            md,
            "- criterion 0.8, `{}`; each figure is the mean of criterion's samples, in the `bench` \
             profile (release: thin LTO, one codegen unit). Numbers taken on a shared machine are noisy; \
             compare ratios within one run.\n",
            CRITERION_ARGS.join(" ")
        );
        let _ = writeln!(md, "![samizdat, vodozemac and the floor per operation (log scale)](benches/chart.svg)\n");
        let _ = writeln!(md, "## Results\n");
        let _ = writeln!(
            md,
            "Per operation (a batch row: per message). *floor*: the sum of the primitives the operation \
             must perform, measured in the same run (compositions below). */floor* and */vodozemac*: \
             samizdat's time divided by the floor and by vodozemac's. samizdat's session-level rows use \
             `SessionRecord` with a seeded ChaCha20 generator; device rows use `Device` (OS randomness, \
             sealed rows). vodozemac rows include the encoding and decoding of its wire messages.\n"
        );
        let _ = writeln!(
            md,
            "What the two libraries do differs: vodozemac's Olm is Matrix's 3DH (three X25519, no \
             post-quantum KEM, no prekey signatures in the library: the benchmark adds one Ed25519 \
             verification of the signed one-time key, as a Matrix client does), AES-256-CBC with a \
             truncated HMAC-SHA-256, clear headers and no padding; samizdat runs PQXDH (four X25519, \
             ML-KEM-1024, two prekey signatures, the transcript hash) and a Double Ratchet with \
             encrypted headers and padded bodies. The floor is samizdat's own.\n"
        );
        let mut section = "";
        for line in &self.lines {
            if line.row.section != section {
                section = &line.row.section;
                let _ = writeln!(md, "\n### {section}\n");
                let _ = writeln!(md, "| operation | samizdat | vodozemac | floor | /floor | /vodozemac |");
                let _ = writeln!(md, "| --- | ---: | ---: | ---: | ---: | ---: |");
            }
            let _ = writeln!(
                md,
                "| {} | {} | {} | {} | {} | {} |",
                line.row.label,
                time_or(line.ours_ns(), line.ours, "not implemented"),
                time_or(line.vodozemac_ns(), line.vodozemac, "—"),
                line.floor_ns().map_or_else(|| "—".to_owned(), fmt_time),
                ratio(line.to_floor()),
                ratio(line.to_vodozemac()),
            );
        }
        if self.stale {
            let _ = writeln!(md, "\n† measured in an earlier run (this run was filtered).");
        }
        let _ = writeln!(md, "\n## Targets\n");
        let _ = writeln!(md, "| target | result | detail |");
        let _ = writeln!(md, "| --- | --- | --- |");
        for o in &self.outcomes {
            let _ = writeln!(md, "| {} | **{}** | {} |", o.target.what, verdict(o.met), o.detail);
        }
        let _ = writeln!(md, "\nTargets are judged here, never asserted in timed tests.\n");
        if !self.counts.is_empty() {
            let _ = writeln!(md, "### Instruction counts (callgrind)\n");
            let _ = writeln!(
                md,
                "The ratio targets are judged on these counts, measured by the same command: timings on \
                 a shared VM move by tens of per cent between runs, instruction counts do not. \
                 `valgrind --tool=callgrind` runs `benches/examples/profile.rs` on each operation and on \
                 the primitives of its floor (same crates, sizes and compositions), counting only inside \
                 its `run` function; per operation. Under valgrind SHA-256 takes its software path, \
                 which weighs on HMAC/HKDF in both columns alike.\n"
            );
            let _ = writeln!(md, "| operation | samizdat | floor | /floor |");
            let _ = writeln!(md, "| --- | ---: | ---: | ---: |");
            for c in &self.counts {
                let _ = writeln!(
                    md,
                    "| {} | {} | {} | {} |",
                    c.label,
                    fmt_count(c.ours),
                    fmt_count(c.floor),
                    ratio(Some(c.ratio()))
                );
            }
            let _ = writeln!(md);
        }
        let _ = writeln!(md, "## Sizes (computed, not timed)\n");
        let _ = writeln!(
            md,
            "samizdat: `SessionRecord::to_bytes` (protobuf, unsealed; a sealed store row adds 41 bytes). \
             vodozemac: `Session::pickle().encrypt(key)` (base64 text of the encrypted JSON pickle, the \
             form it documents for storage).\n"
        );
        let _ = writeln!(md, "| what | samizdat (bytes) | vodozemac (bytes) |");
        let _ = writeln!(md, "| --- | ---: | ---: |");
        for (label, ours, theirs) in &meta.sizes {
            let _ = writeln!(md, "| {label} | {} | {} |", dash_md(ours), dash_md(theirs));
        }
        let _ = writeln!(md, "\n## Wire overhead per message (computed)\n");
        let _ = writeln!(
            md,
            "Ciphertext length minus plaintext length, raw bytes (vodozemac: `OlmMessage::to_parts` and \
             `MegolmMessage::to_bytes`, before the base64 a Matrix transport adds). samizdat pads the \
             plaintext to a bucket (64 B, then powers of two to 4 KiB, then multiples of 4 KiB) so \
             lengths leak only a size class: a 1 KiB payload fills a 2 KiB bucket.\n"
        );
        let _ = writeln!(md, "| message | samizdat | vodozemac |");
        let _ = writeln!(md, "| --- | ---: | ---: |");
        for (label, ours, theirs) in &meta.overhead {
            let _ = writeln!(md, "| {label} | {} | {} |", dash_md(ours), dash_md(theirs));
        }
        let _ = writeln!(md, "\n## Floor compositions\n");
        let _ = writeln!(
            md,
            "Each floor is the sum of the primitives the operation cannot avoid, as \
             `benches/src/lib.rs` writes them down (from `core/src/ratchet/*.rs` and \
             `core/src/handshake/pqxdh.rs`). Not in any floor: encoding, allocation, copies, \
             zeroization, randomness, SQLite, and work the protocol does not require.\n"
        );
        for (key, value, text) in &self.floors {
            let what = meta.floor_descriptions.get(key).map_or_else(String::new, |w| format!(" ({w})"));
            let _ = writeln!(md, "- `{key}`{what}: {text} = **{}**", value.map_or_else(|| "?".to_owned(), fmt_time));
        }
        let _ = writeln!(md, "\n## Primitives\n");
        let _ = writeln!(md, "| primitive | criterion id | mean |");
        let _ = writeln!(md, "| --- | --- | ---: |");
        for (id, what, value) in &self.prims {
            let _ = writeln!(md, "| {what} | `{id}` | {} |", time_or(value.map(|v| v.ns), *value, "?"));
        }
        if !notes.trim().is_empty() {
            let _ = writeln!(md, "\n{}", notes.trim_end());
        }
        let _ = writeln!(md, "\n## How to run\n");
        let _ = writeln!(
            md,
            "```sh\ncargo xtask bench            # everything, then this file and benches/chart.svg\n\
             cargo xtask bench chain      # a criterion filter (other rows keep earlier values, marked †)\n\
             cargo bench -p samizdat-benches   # criterion's defaults, its own reports in target/criterion\n```\n\n\
             `cargo test --workspace --all-targets` builds the benchmarks and runs each routine once \
             (criterion's test mode)."
        );
        md
    }

    /// Grouped horizontal bars per operation, log scale: samizdat, vodozemac, floor.
    fn svg(&self) -> String {
        let lines: Vec<&Line> =
            self.lines.iter().filter(|l| l.ours_ns().is_some() || l.vodozemac_ns().is_some()).collect();
        let values: Vec<f64> = lines
            .iter()
            .flat_map(|l| [l.ours_ns(), l.vodozemac_ns(), l.floor_ns()])
            .flatten()
            .filter(|v| *v > 0.0)
            .collect();
        let lo = values.iter().copied().fold(f64::INFINITY, f64::min).max(1.0).log10().floor();
        let hi = values.iter().copied().fold(1.0, f64::max).log10().ceil().max(lo + 1.0);
        let (label_w, plot_w, bar_h, gap, top) = (390.0, 560.0, 7.0, 9.0, 70.0);
        let row_h = 3.0 * bar_h + gap;
        let mut sections = 0.0;
        let mut last = "";
        for l in &lines {
            if l.row.section != last {
                sections += 1.0;
                last = &l.row.section;
            }
        }
        let count = f64::from(u32::try_from(lines.len()).unwrap_or(u32::MAX));
        let height = top + count * row_h + sections * 22.0 + 40.0;
        let width = label_w + plot_w + 30.0;
        let x = |ns: f64| label_w + (ns.max(1.0).log10() - lo) / (hi - lo) * plot_w;
        let mut s = String::new();
        let _ = writeln!(
            s,
            "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{width:.0}\" height=\"{height:.0}\" \
             viewBox=\"0 0 {width:.0} {height:.0}\" font-family=\"sans-serif\" font-size=\"11\">"
        );
        let _ = writeln!(s, "<rect width=\"100%\" height=\"100%\" fill=\"white\"/>");
        let _ = writeln!(
            s,
            "<text x=\"10\" y=\"20\" font-size=\"14\" font-weight=\"bold\">Time per operation (log scale): \
             samizdat, vodozemac and the floor of the primitives</text>"
        );
        let legend = [("samizdat", "#1f77b4"), ("vodozemac", "#ff7f0e"), ("floor", "#9e9e9e")];
        for (i, (name, color)) in legend.iter().enumerate() {
            let lx = 10.0 + 120.0 * f64::from(u32::try_from(i).unwrap_or(0));
            let _ = writeln!(
                s,
                "<rect x=\"{lx:.0}\" y=\"32\" width=\"12\" height=\"12\" fill=\"{color}\"/>\
                 <text x=\"{:.0}\" y=\"42\">{name}</text>",
                lx + 16.0
            );
        }
        let mut decade = lo;
        while decade <= hi {
            let gx = label_w + (decade - lo) / (hi - lo) * plot_w;
            let _ = writeln!(
                s,
                "<line x1=\"{gx:.1}\" y1=\"{:.0}\" x2=\"{gx:.1}\" y2=\"{:.0}\" stroke=\"#ddd\"/>\
                 <text x=\"{gx:.1}\" y=\"{:.0}\" text-anchor=\"middle\" fill=\"#555\">{}</text>",
                top - 8.0,
                height - 30.0,
                top - 12.0,
                decade_label(decade)
            );
            decade += 1.0;
        }
        let mut y = top;
        let mut last = "";
        for l in &lines {
            if l.row.section != last {
                last = &l.row.section;
                y += 16.0;
                let _ = writeln!(s, "<text x=\"10\" y=\"{y:.0}\" font-weight=\"bold\">{}</text>", xml(last));
                y += 6.0;
            }
            let _ = writeln!(
                s,
                "<text x=\"{:.0}\" y=\"{:.1}\" text-anchor=\"end\">{}</text>",
                label_w - 8.0,
                y + 1.5 * bar_h + 4.0,
                xml(&l.row.label)
            );
            if l.row.ours.is_none() {
                let _ = writeln!(
                    s,
                    "<text x=\"{:.0}\" y=\"{:.1}\" fill=\"#1f77b4\" font-style=\"italic\">samizdat: not implemented</text>",
                    label_w + 4.0,
                    y + bar_h - 1.0
                );
            }
            for (i, (value, (name, color))) in
                [l.ours_ns(), l.vodozemac_ns(), l.floor_ns()].iter().zip(legend.iter()).enumerate()
            {
                let by = y + bar_h * f64::from(u32::try_from(i).unwrap_or(0));
                if let Some(v) = value {
                    let w = (x(*v) - label_w).max(1.0);
                    let _ = writeln!(
                        s,
                        "<rect x=\"{label_w:.0}\" y=\"{by:.1}\" width=\"{w:.1}\" height=\"{:.1}\" fill=\"{color}\">\
                         <title>{} {name}: {}</title></rect>",
                        bar_h - 1.0,
                        xml(&l.row.label),
                        fmt_time(*v)
                    );
                }
            }
            y += row_h;
        }
        let _ = writeln!(
            s,
            "<text x=\"10\" y=\"{:.0}\" fill=\"#555\">Generated by cargo xtask bench; numbers in BENCHMARKS.md.</text>",
            height - 10.0
        );
        s.push_str("</svg>\n");
        s
    }
}

fn judge(target: &Target, lines: &[Line], meta: &Meta, estimates: &Estimates, counts: &[Count]) -> Outcome {
    let (met, detail) = match &target.judge {
        Judge::Floor(max) if counts.iter().any(|c| c.target == target.name) => {
            let ours: Vec<&Count> = counts.iter().filter(|c| c.target == target.name).collect();
            let worst = ours.iter().copied().max_by(|a, b| a.ratio().total_cmp(&b.ratio()));
            let over: Vec<String> =
                ours.iter().filter(|c| c.ratio() > *max).map(|c| format!("{} {:.2}x", c.label, c.ratio())).collect();
            let timed = lines
                .iter()
                .filter(|l| l.row.target.as_deref() == Some(target.name.as_str()))
                .filter_map(|l| l.to_floor().map(|r| (l.row.label.as_str(), r)))
                .max_by(|a, b| a.1.total_cmp(&b.1));
            let mut detail = format!("bound {max}x, judged on instructions");
            if let Some(w) = worst {
                let _ = write!(detail, "; worst {:.2}x ({})", w.ratio(), w.label);
            }
            if !over.is_empty() {
                let _ = write!(detail, "; over: {}", over.join(", "));
            }
            if let Some((label, r)) = timed {
                let _ = write!(detail, " (this run's timings: worst {r:.2}x, {label})");
            }
            (Some(over.is_empty()), detail)
        }
        Judge::Floor(max) => {
            let ratios: Vec<(String, Option<f64>)> = lines
                .iter()
                .filter(|l| l.row.target.as_deref() == Some(target.name.as_str()))
                .map(|l| (l.row.label.clone(), l.to_floor()))
                .collect();
            if ratios.iter().any(|(_, r)| r.is_none()) || ratios.is_empty() {
                (None, "not measured".to_owned())
            } else {
                let worst = ratios.iter().filter_map(|(label, r)| r.map(|r| (label, r))).fold(
                    None::<(&String, f64)>,
                    |acc, (l, r)| match acc {
                        Some((_, w)) if w >= r => acc,
                        _ => Some((l, r)),
                    },
                );
                let over: Vec<String> =
                    ratios.iter().filter_map(|(l, r)| r.filter(|r| r > max).map(|r| format!("{l} {r:.2}x"))).collect();
                let detail = match worst {
                    Some((label, r)) => format!("bound {max}x; worst {r:.2}x ({label})"),
                    None => String::new(),
                };
                let detail = if over.is_empty() { detail } else { format!("{detail}; over: {}", over.join(", ")) };
                (Some(over.is_empty()), detail)
            }
        }
        Judge::Size(max, label) => match meta.size(label) {
            Some(size) => (Some(size < *max), format!("{size:.0} bytes ({label}), bound {max:.0}")),
            None => (None, "not computed".to_owned()),
        },
        Judge::Pairs(max, pairs) => {
            let ratios: Vec<Option<(String, f64)>> =
                pairs.iter().map(|(a, b)| Some((a.clone(), estimates.get(a)?.ns / estimates.get(b)?.ns))).collect();
            if ratios.iter().any(Option::is_none) || ratios.is_empty() {
                (None, "not measured".to_owned())
            } else {
                let parts: Vec<String> = ratios.iter().flatten().map(|(a, r)| format!("{a}: {r:.2}x")).collect();
                (Some(ratios.iter().flatten().all(|(_, r)| r <= max)), format!("bound {max}x; {}", parts.join(", ")))
            }
        }
        Judge::NotApplicable(reason) => (None, format!("not applicable: {reason}")),
    };
    Outcome { target: target.clone(), met, detail }
}

fn verdict(met: Option<bool>) -> &'static str {
    match met {
        Some(true) => "met",
        Some(false) => "not met",
        None => "n/a",
    }
}

fn fmt_time(ns: f64) -> String {
    let (value, unit) = if ns < 1e3 {
        (ns, "ns")
    } else if ns < 1e6 {
        (ns / 1e3, "µs")
    } else if ns < 1e9 {
        (ns / 1e6, "ms")
    } else {
        (ns / 1e9, "s")
    };
    if value < 10.0 {
        format!("{value:.2} {unit}")
    } else if value < 100.0 {
        format!("{value:.1} {unit}")
    } else {
        format!("{value:.0} {unit}")
    }
}

/// `10^decade` nanoseconds as a round label: 1 ns, 10 ns, 100 ns, 1 µs, ...
fn decade_label(decade: f64) -> String {
    let units = ["ns", "µs", "ms", "s"];
    let mut value = 10f64.powf(decade);
    let mut unit = 0;
    while value >= 1000.0 && unit + 1 < units.len() {
        value /= 1000.0;
        unit += 1;
    }
    format!("{value:.0} {}", units.get(unit).copied().unwrap_or("s"))
}

fn time_or(ns: Option<f64>, value: Option<Value>, missing: &str) -> String {
    match (ns, value) {
        (Some(ns), Some(v)) => format!("{}{}", fmt_time(ns), if v.fresh { "" } else { " †" }),
        _ => missing.to_owned(),
    }
}

fn ratio(r: Option<f64>) -> String {
    r.map_or_else(|| "—".to_owned(), |r| format!("{r:.2}x"))
}

fn dash_md(v: &str) -> &str {
    if v == "-" { "—" } else { v }
}

fn xml(text: &str) -> String {
    text.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;")
}

// ---------------------------------------------------------------- the machine

struct Machine {
    cpu: String,
    cores: String,
    rustc: String,
    date: String,
    temp_dir: String,
    temp_fs: String,
}

impl Machine {
    fn detect() -> Self {
        let cpuinfo = fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let field = |name: &str| {
            cpuinfo
                .lines()
                .find(|l| l.starts_with(name))
                .and_then(|l| l.split_once(':'))
                .map(|(_, v)| v.trim().to_owned())
        };
        let cpu = field("model name").unwrap_or_else(|| "unknown".to_owned());
        let logical = cpuinfo.lines().filter(|l| l.starts_with("processor")).count();
        let cores = match std::thread::available_parallelism() {
            Ok(n) => format!("{n} available to this process ({logical} logical CPUs in /proc/cpuinfo)"),
            Err(_) => format!("{logical} logical CPUs in /proc/cpuinfo"),
        };
        let output = |program: &str, args: &[&str]| {
            Command::new(program)
                .args(args)
                .output()
                .ok()
                .filter(|o| o.status.success())
                .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        };
        let rustc = output(&env::var("RUSTC").unwrap_or_else(|_| "rustc".to_owned()), &["-V"])
            .unwrap_or_else(|| "unknown".to_owned());
        let date = output("date", &["-u", "+%Y-%m-%d %H:%M UTC"]).unwrap_or_else(|| "unknown".to_owned());
        let temp = env::temp_dir();
        Machine {
            cpu,
            cores,
            rustc,
            date,
            temp_dir: temp.display().to_string(),
            temp_fs: filesystem_of(&temp).unwrap_or_else(|| "unknown filesystem".to_owned()),
        }
    }
}

/// The type of the filesystem holding `path`, from the longest matching mount point.
fn filesystem_of(path: &Path) -> Option<String> {
    let mounts = fs::read_to_string("/proc/mounts").ok()?;
    let path = path.canonicalize().ok()?;
    mounts
        .lines()
        .filter_map(|l| {
            let mut f = l.split_whitespace();
            let (device, mount, kind) = (f.next()?, f.next()?, f.next()?);
            path.starts_with(mount).then(|| (mount.len(), format!("{kind} on {device}, mounted at {mount}")))
        })
        .max_by_key(|(len, _)| *len)
        .map(|(_, text)| text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_criterion_estimates() {
        let json = r#"{"mean":{"confidence_interval":{"confidence_level":0.95,"lower_bound":1.0,"upper_bound":3.0},"point_estimate":2.5,"standard_error":0.1},"median":{"point_estimate":9.0}}"#;
        assert_eq!(mean_point_estimate(json), Some(2.5));
        assert_eq!(mean_point_estimate("{}"), None);
        let benchmark =
            r#"{"group_id":"floor","function_id":"a/1","full_id":"floor/a/1","directory_name":"floor/a_1"}"#;
        assert_eq!(json_string(benchmark, "full_id").as_deref(), Some("floor/a/1"));
    }

    #[test]
    fn formats_times() {
        assert_eq!(fmt_time(812.0), "812 ns");
        assert_eq!(fmt_time(3_410.0), "3.41 µs");
        assert_eq!(fmt_time(12_300_000.0), "12.3 ms");
        assert_eq!(decade_label(3.0), "1 µs");
        assert_eq!(decade_label(5.0), "100 µs");
    }

    #[test]
    fn parses_the_hand_over_file() {
        let meta = Meta::parse(
            "prim\tfloor/a\tA\nfloor\tk\t2\tfloor/a\nrow\tS\tL\tg/x\t-\tk\t1\tchain\n\
             target\tchain\tdesc\tfloor\t1.3\ntarget\tb\td\tpairs\t2\tg/x\tg/y\nsize\tS1\t900\t-\n",
        );
        assert_eq!(meta.floors.first().map(|(key, terms)| (key.as_str(), terms.len())), Some(("k", 1)));
        assert_eq!(meta.rows.first().and_then(|r| r.vodozemac.clone()), None);
        assert!(matches!(meta.targets.get(1).map(|t| &t.judge), Some(Judge::Pairs(_, p)) if p.len() == 1));
        assert_eq!(meta.size("S1"), Some(900.0));
        // The row of the floor-ratio target is profiled, under its floor key.
        assert_eq!(meta.profiled(), vec![("chain".to_owned(), "L".to_owned(), "k".to_owned())]);
    }
}
