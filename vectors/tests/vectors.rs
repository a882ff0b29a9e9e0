//! The checked-in vectors: they verify, they are exactly what the generator
//! makes, and a change to any output is caught and named.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

use std::{fs, path::PathBuf};

use samizdat_vectors::{file_names, generate_all, output_hex_fields, verify_file};
use serde_json::Value;

/// `vectors/`, where the JSON files are checked in.
fn dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn read(name: &str) -> String {
    fs::read_to_string(dir().join(name)).unwrap_or_else(|e| panic!("{name}: {e} (run `cargo xtask vectors`)"))
}

#[test]
fn every_checked_in_file_verifies() {
    let mut failures = Vec::new();
    for name in file_names() {
        failures.extend(verify_file(name, &read(name)).into_iter().map(|f| f.to_string()));
    }
    assert!(failures.is_empty(), "{} failures:\n{}", failures.len(), failures.join("\n"));
}

#[test]
fn regenerating_changes_no_byte() {
    let generated = generate_all().unwrap();
    assert_eq!(generated.len(), file_names().len());
    let mut changed = Vec::new();
    for (name, json) in &generated {
        if fs::read_to_string(dir().join(name)).ok().as_deref() != Some(json.as_str()) {
            changed.push(name.clone());
        }
    }
    let mut stray: Vec<String> = fs::read_dir(dir())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".json") && !generated.iter().any(|(g, _)| g == n))
        .collect();
    stray.sort();
    assert!(
        changed.is_empty() && stray.is_empty(),
        "the generator would change {changed:?} and does not make {stray:?}: run `cargo xtask vectors`, \
         review the diff, and say in PROTOCOL.md what changed"
    );
}

/// Changes one hex digit in the middle of `text`.
fn flip_digit(text: &str) -> String {
    let mut chars: Vec<char> = text.chars().collect();
    let i = chars.len() / 2;
    let digit = chars[i].to_digit(16).unwrap();
    chars[i] = char::from_digit(digit ^ 1, 16).unwrap();
    chars.into_iter().collect()
}

/// Sets the string at `path` (`events[3].wire`) inside `value`.
fn set(value: &mut Value, path: &str, text: String) {
    let mut at = value;
    for part in path.split('.') {
        let (key, indices) = part.split_once('[').map_or((part, ""), |(k, rest)| (k, rest));
        at = &mut at[key];
        for index in indices.split('[').filter(|s| !s.is_empty()) {
            at = &mut at[index.trim_end_matches(']').parse::<usize>().unwrap()];
        }
    }
    *at = Value::String(text);
}

/// At most this many fields of one case are altered (evenly spread, first
/// and last included), so that the long conversation stays quick.
const MAX_FIELDS_PER_CASE: usize = 40;

#[test]
fn altering_any_output_is_reported_by_file_case_and_field() {
    for name in file_names() {
        let document: Value = serde_json::from_str(&read(name)).unwrap();
        let mut tested = 0;
        for case in document["cases"].as_array().unwrap() {
            let case_name = case["name"].as_str().unwrap();
            let fields = output_hex_fields(name, case);
            let step = fields.len().div_ceil(MAX_FIELDS_PER_CASE).max(1);
            let mut picked: Vec<usize> = (0..fields.len()).step_by(step).collect();
            if let Some(last) = fields.len().checked_sub(1)
                && picked.last() != Some(&last)
            {
                picked.push(last);
            }
            for (path, text) in picked.into_iter().map(|i| &fields[i]) {
                // The file with this one case, altered in this one field.
                let mut altered_case = case.clone();
                set(&mut altered_case, path, flip_digit(text));
                let mut altered = document.clone();
                altered["cases"] = Value::Array(vec![altered_case]);
                let failures = verify_file(name, &serde_json::to_string(&altered).unwrap());
                assert!(
                    failures.iter().any(|f| f.file == name && f.case == case_name && f.field == *path),
                    "{name}: case {case_name}: altering {path} gave {failures:?}"
                );
                tested += 1;
            }
        }
        assert!(tested > 0, "{name}: no output field was altered");
    }
}

#[test]
fn altering_an_input_is_reported_too() {
    // Inputs are not compared directly: a changed input changes the recomputed outputs.
    let name = "root_step.json";
    let mut document: Value = serde_json::from_str(&read(name)).unwrap();
    let text = document["cases"][0]["dh_output"].as_str().unwrap().to_owned();
    document["cases"][0]["dh_output"] = Value::String(flip_digit(&text));
    let fields: Vec<String> = verify_file(name, &document.to_string()).into_iter().map(|f| f.field).collect();
    assert_eq!(fields, ["new_root_key", "chain_key", "next_header_key"]);
}

#[test]
fn the_transcript_lists_sent_plaintexts_as_inputs_and_decrypted_ones_as_outputs() {
    let name = "ratchet_transcript.json";
    let document: Value = serde_json::from_str(&read(name)).unwrap();
    let case = &document["cases"][0];
    let outputs = output_hex_fields(name, case);
    let events = case["events"].as_array().unwrap();
    for (i, event) in events.iter().enumerate() {
        let is_output = |field: &str| outputs.iter().any(|(path, _)| *path == format!("events[{i}].{field}"));
        match event["event"].as_str().unwrap() {
            "send" => assert!(!is_output("plaintext") && event.get("decrypted").is_none(), "event {i}"),
            "deliver" => {
                assert!(event.get("plaintext").is_none(), "event {i}");
                let decrypted = event["decrypted"].as_str().unwrap_or_default();
                assert_eq!(is_output("decrypted"), !decrypted.is_empty(), "event {i}");
            }
            _ => {}
        }
    }
    // A decrypted plaintext altered by one digit is reported by the verifier.
    let (i, event) = events
        .iter()
        .enumerate()
        .find(|(_, e)| e["event"] == "deliver" && e["decrypted"].as_str().is_some_and(|d| !d.is_empty()))
        .unwrap();
    let path = format!("events[{i}].decrypted");
    let mut altered = document.clone();
    set(&mut altered["cases"][0], &path, flip_digit(event["decrypted"].as_str().unwrap()));
    let failures = verify_file(name, &altered.to_string());
    assert!(failures.iter().any(|f| f.field == path), "{failures:?}");
}

#[test]
fn unknown_files_and_broken_json_fail() {
    assert_eq!(verify_file("nonexistent.json", "[]").len(), 1);
    let failures = verify_file("padding.json", "{");
    assert_eq!(failures.len(), 1);
    assert!(failures[0].message.starts_with("not JSON"));
}
