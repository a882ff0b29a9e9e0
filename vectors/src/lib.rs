//! The Samizdat protocol's test vectors: generation and verification.
//!
//! Every vector file in `vectors/` is produced by [`generate_all`] and checked
//! by [`verify_file`]. Both run the same computation: a file's *inputs* (the
//! fields listed in its `inputs` member) are read, every other field is
//! recomputed from them with the `samizdat` crate (its `hazmat` steps and its
//! public API), and the result is compared field by field with the file.
//! Generation differs only in where the inputs come from: fixed values and a
//! `ChaCha20Rng` seeded with the file's `seed`.
//!
//! Where a value can be computed two ways (a ratchet message through the
//! public API, and the same message rebuilt from single `hazmat` steps), the
//! computation does both and fails if they disagree, so a vector never shows
//! an intermediate value that the real code does not use.
//!
//! The file format is described in `vectors/README.md`.

mod attachment;
mod backup;
mod bundles;
mod curve_model;
mod device_lists;
mod format;
mod group;
mod healing;
mod kdf;
mod key_checks;
mod keys;
mod limits;
mod linking;
mod padding;
mod pqxdh;
mod records;
mod safety;
mod store_rows;
mod transcript;
mod util;
mod wire;

use std::fmt;

use serde_json::Value;

pub use format::input_patterns;

/// One field of one vector whose recomputed value differs from the file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    /// The vector file's name (`root_step.json`).
    pub file: String,
    /// The case's `name`, or `-` for the file's own fields.
    pub case: String,
    /// The path of the field inside the case (`events[12].wire`).
    pub field: String,
    /// What differs.
    pub message: String,
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: case {}: field {}: {}", self.file, self.case, self.field, self.message)
    }
}

/// The outcome of verifying one file.
#[derive(Debug, Clone, Default)]
pub struct Report {
    /// How many cases the file holds.
    pub cases: usize,
    /// Every field that differs.
    pub failures: Vec<Failure>,
}

impl Report {
    /// How many cases have at least one failure (a failure of the file's own
    /// fields counts as one).
    pub fn failed_cases(&self) -> usize {
        let mut names: Vec<&str> = self.failures.iter().map(|f| f.case.as_str()).collect();
        names.sort_unstable();
        names.dedup();
        names.len()
    }
}

/// The names of every vector file, in the order they are generated.
pub fn file_names() -> Vec<&'static str> {
    format::SETS.iter().map(|set| set.file).collect()
}

/// Generates every vector file: `(file name, JSON text)`, deterministically.
///
/// # Errors
/// A description of the first file that could not be generated (a bug in the
/// generator or a disagreement inside the library, never bad luck: every
/// input is fixed).
pub fn generate_all() -> Result<Vec<(String, String)>, String> {
    format::SETS.iter().map(|set| Ok((set.file.to_owned(), (set.generate)()?))).collect()
}

/// Recomputes every output of the vector file `name` from its inputs and
/// returns each field that differs (empty when the file verifies).
pub fn verify_file(name: &str, json: &str) -> Vec<Failure> {
    verify_report(name, json).failures
}

/// [`verify_file`], with the number of cases.
pub fn verify_report(name: &str, json: &str) -> Report {
    match format::SETS.iter().find(|set| set.file == name) {
        Some(set) => (set.verify)(json),
        None => Report {
            cases: 0,
            failures: vec![Failure {
                file: name.to_owned(),
                case: "-".to_owned(),
                field: "-".to_owned(),
                message: "not a known vector file".to_owned(),
            }],
        },
    }
}

/// The paths of a case's fields that are outputs and hold hex strings, with
/// their values: what a tamper test can alter. Paths use the notation of
/// [`Failure::field`].
pub fn output_hex_fields(name: &str, case: &Value) -> Vec<(String, String)> {
    let Some(patterns) = input_patterns(name) else { return Vec::new() };
    let mut out = Vec::new();
    format::leaves(case, "", &mut |path, value| {
        if let Value::String(s) = value
            && !s.is_empty()
            && s.len() % 2 == 0
            && s.bytes().all(|b| b.is_ascii_hexdigit())
            && !format::matches_any(patterns, path)
        {
            out.push((path.to_owned(), s.clone()));
        }
    });
    out
}
