//! The shape shared by every vector file, and the generic generate / verify
//! loop over it.

use chacha20::{ChaCha20Rng, rand_core::SeedableRng};
use serde::{Deserialize, Serialize, de::DeserializeOwned};
use serde_json::Value;

use crate::{
    Failure, Report, attachment, backup, bundles, device_lists, group, healing, kdf, key_checks, keys, limits, linking,
    padding, pqxdh, records, safety, store_rows, transcript, util::VErr, wire,
};

/// What a file says about itself.
pub(crate) struct Meta {
    /// The file name, `root_step.json`.
    pub(crate) file: &'static str,
    /// The section of `PROTOCOL.md` the file checks, with its title.
    pub(crate) section: &'static str,
    /// One paragraph: what the cases cover.
    pub(crate) description: &'static str,
    /// The generator's `ChaCha20Rng` seed is 32 bytes of this value.
    pub(crate) seed: u8,
    /// The case fields that are inputs (every other field is an output).
    /// `a[].b` names field `b` of every element of array `a` that has one (in
    /// the transcript, `events[].plaintext` is the sent plaintext of the
    /// `send` events; a `deliver` event's is `decrypted`, an output); a name
    /// covers everything under it.
    pub(crate) inputs: &'static [&'static str],
}

/// One vector file: its cases, how to make their inputs, how to compute
/// every output from the inputs.
pub(crate) trait VectorSet {
    /// One case, inputs and outputs. Outputs are left empty by [`Self::inputs`].
    type Case: Serialize + DeserializeOwned;
    /// The file's description.
    const META: Meta;
    /// The cases' inputs, drawn from fixed values and `rng`.
    fn inputs(rng: &mut ChaCha20Rng) -> Result<Vec<Self::Case>, VErr>;
    /// The whole case, recomputed from the inputs of `case` alone.
    fn compute(case: &Self::Case) -> Result<Self::Case, VErr>;
}

/// A vector file on disk.
#[derive(Serialize, Deserialize)]
struct Document<C> {
    file: String,
    protocol_section: String,
    description: String,
    generator: String,
    seed: String,
    inputs: Vec<String>,
    cases: Vec<C>,
}

/// The generator, named in every file.
const GENERATOR: &str =
    "samizdat-vectors (cargo xtask vectors; check with: cargo run -p samizdat-vectors -- verify vectors/)";

/// One entry of the registry of files.
pub(crate) struct SetEntry {
    pub(crate) file: &'static str,
    pub(crate) generate: fn() -> Result<String, String>,
    pub(crate) verify: fn(&str) -> Report,
    pub(crate) inputs: &'static [&'static str],
}

const fn entry<S: VectorSet>() -> SetEntry {
    SetEntry { file: S::META.file, generate: generate::<S>, verify: verify::<S>, inputs: S::META.inputs }
}

/// Every vector file, in generation order.
pub(crate) static SETS: &[SetEntry] = &[
    entry::<keys::Identity>(),
    entry::<keys::X25519>(),
    entry::<keys::MlKem>(),
    entry::<kdf::RootStep>(),
    entry::<kdf::ChainStep>(),
    entry::<kdf::MessageKey>(),
    entry::<kdf::HeaderEncryption>(),
    entry::<padding::Padding>(),
    entry::<bundles::PreKeySignatures>(),
    entry::<bundles::Bundles>(),
    entry::<pqxdh::Pqxdh>(),
    entry::<transcript::RatchetTranscript>(),
    entry::<limits::RatchetLimits>(),
    entry::<wire::Wire>(),
    entry::<key_checks::KeyChecks>(),
    entry::<records::Records>(),
    entry::<safety::SafetyNumbers>(),
    entry::<store_rows::StoreRows>(),
    entry::<group::Group>(),
    entry::<healing::Healing>(),
    entry::<backup::Backup>(),
    entry::<attachment::Attachments>(),
    entry::<device_lists::DeviceLists>(),
    entry::<linking::Linking>(),
];

/// The input field patterns of a vector file (see `Meta::inputs`).
pub fn input_patterns(file: &str) -> Option<&'static [&'static str]> {
    SETS.iter().find(|set| set.file == file).map(|set| set.inputs)
}

fn document<C>(meta: &Meta, cases: Vec<C>) -> Document<C> {
    Document {
        file: meta.file.to_owned(),
        protocol_section: meta.section.to_owned(),
        description: meta.description.to_owned(),
        generator: GENERATOR.to_owned(),
        seed: hex::encode([meta.seed; 32]),
        inputs: meta.inputs.iter().map(|s| (*s).to_owned()).collect(),
        cases,
    }
}

fn generate<S: VectorSet>() -> Result<String, String> {
    let meta = S::META;
    let fail = |e: VErr| format!("{}: {}: {}", meta.file, e.field, e.message);
    let mut rng = ChaCha20Rng::from_seed([meta.seed; 32]);
    let inputs = S::inputs(&mut rng).map_err(fail)?;
    let cases = inputs.iter().map(S::compute).collect::<Result<Vec<_>, _>>().map_err(fail)?;
    let mut text = serde_json::to_string_pretty(&document(&meta, cases)).map_err(|e| e.to_string())?;
    text.push('\n');
    Ok(text)
}

fn verify<S: VectorSet>(json: &str) -> Report {
    let meta = S::META;
    let mut report = Report::default();
    let failure = |case: &str, field: &str, message: String| Failure {
        file: meta.file.to_owned(),
        case: case.to_owned(),
        field: field.to_owned(),
        message,
    };
    let value: Value = match serde_json::from_str(json) {
        Ok(value) => value,
        Err(e) => {
            report.failures.push(failure("-", "-", format!("not JSON: {e}")));
            return report;
        }
    };
    // The file's own fields, everything but the cases.
    let expected = match serde_json::to_value(document::<()>(&meta, Vec::new())) {
        Ok(Value::Object(mut map)) => {
            map.remove("cases");
            Value::Object(map)
        }
        _ => Value::Null,
    };
    let mut own = value.clone();
    let cases = match own.as_object_mut().and_then(|map| map.remove("cases")) {
        Some(Value::Array(cases)) => cases,
        _ => {
            report.failures.push(failure("-", "cases", "missing, or not an array".to_owned()));
            Vec::new()
        }
    };
    let mut own_diffs = Vec::new();
    diff(&own, &expected, "", &mut own_diffs);
    report.failures.extend(own_diffs.into_iter().map(|(field, message)| failure("-", &field, message)));

    report.cases = cases.len();
    for (index, case) in cases.into_iter().enumerate() {
        let name = case.get("name").and_then(Value::as_str).map_or_else(|| format!("#{index}"), str::to_owned);
        let parsed: S::Case = match serde_json::from_value(case.clone()) {
            Ok(parsed) => parsed,
            Err(e) => {
                report.failures.push(failure(&name, "-", format!("cannot read the case: {e}")));
                continue;
            }
        };
        let computed = match S::compute(&parsed)
            .and_then(|c| serde_json::to_value(c).map_err(|e| VErr { field: "-".to_owned(), message: e.to_string() }))
        {
            Ok(computed) => computed,
            Err(e) => {
                report.failures.push(failure(&name, &e.field, e.message));
                continue;
            }
        };
        let mut diffs = Vec::new();
        diff(&case, &computed, "", &mut diffs);
        report.failures.extend(diffs.into_iter().map(|(field, message)| failure(&name, &field, message)));
    }
    report
}

fn join(path: &str, key: &str) -> String {
    if path.is_empty() { key.to_owned() } else { format!("{path}.{key}") }
}

fn shorten(value: &Value) -> String {
    let text = value.to_string();
    if text.chars().count() > 72 { format!("{}…", text.chars().take(72).collect::<String>()) } else { text }
}

/// Every difference between `found` (the file) and `expected` (recomputed),
/// as `(path, message)`.
fn diff(found: &Value, expected: &Value, path: &str, out: &mut Vec<(String, String)>) {
    match (found, expected) {
        (Value::Object(f), Value::Object(e)) => {
            for (key, e_value) in e {
                match f.get(key) {
                    Some(f_value) => diff(f_value, e_value, &join(path, key), out),
                    None => out.push((join(path, key), format!("missing, expected {}", shorten(e_value)))),
                }
            }
            for key in f.keys().filter(|key| !e.contains_key(*key)) {
                out.push((join(path, key), "unexpected field".to_owned()));
            }
        }
        (Value::Array(f), Value::Array(e)) => {
            if f.len() != e.len() {
                out.push((path.to_owned(), format!("has {} entries, expected {}", f.len(), e.len())));
            }
            for (i, (f_value, e_value)) in f.iter().zip(e).enumerate() {
                diff(f_value, e_value, &format!("{path}[{i}]"), out);
            }
        }
        (Value::String(f), Value::String(e)) if f != e => {
            let at =
                f.chars().zip(e.chars()).position(|(a, b)| a != b).unwrap_or(f.chars().count().min(e.chars().count()));
            let window = |s: &str| s.chars().skip(at.saturating_sub(8)).take(24).collect::<String>();
            out.push((
                path.to_owned(),
                format!(
                    "differs from character {at} on: is \"…{}…\" ({} characters), expected \"…{}…\" ({} characters)",
                    window(f),
                    f.chars().count(),
                    window(e),
                    e.chars().count()
                ),
            ));
        }
        _ if found != expected => {
            out.push((path.to_owned(), format!("is {}, expected {}", shorten(found), shorten(expected))));
        }
        _ => {}
    }
}

/// Calls `f(path, leaf)` for every leaf (not object, not array) under `value`.
pub(crate) fn leaves(value: &Value, path: &str, f: &mut dyn FnMut(&str, &Value)) {
    match value {
        Value::Object(map) => map.iter().for_each(|(key, v)| leaves(v, &join(path, key), f)),
        Value::Array(items) => items.iter().enumerate().for_each(|(i, v)| leaves(v, &format!("{path}[{i}]"), f)),
        leaf => f(path, leaf),
    }
}

/// Whether `path` (`events[3].wire`) falls under one of `patterns` (`events[].wire`).
pub(crate) fn matches_any(patterns: &[&str], path: &str) -> bool {
    let mut normalized = String::with_capacity(path.len());
    let mut in_index = false;
    for c in path.chars() {
        match c {
            '[' => {
                in_index = true;
                normalized.push(c);
            }
            ']' => {
                in_index = false;
                normalized.push(c);
            }
            _ if in_index => {}
            _ => normalized.push(c),
        }
    }
    patterns.iter().any(|p| {
        normalized == *p
            || normalized.strip_prefix(p).is_some_and(|rest| rest.starts_with('.') || rest.starts_with('['))
    })
}
