//! The Kotlin, Python and Swift snippets in the README's "Bindings" section
//! are copies of test code: the region between `README-BEGIN` and
//! `README-END` comments in each language's tests (dedented). The Kotlin and
//! Python ones run in `cargo xtask test`; this keeps the README from drifting.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing, clippy::panic)]

use std::path::Path;

fn read(relative: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(relative);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The lines between the `README-BEGIN` and `README-END` comments, with their
/// common indentation removed.
fn marked_region(source: &str) -> String {
    let lines: Vec<&str> = source.lines().collect();
    let marker = |name: &str| {
        let found: Vec<usize> = (0..lines.len()).filter(|&i| lines[i].trim_end().ends_with(name)).collect();
        assert_eq!(found.len(), 1, "exactly one {name} marker");
        found[0]
    };
    let region = &lines[marker("README-BEGIN") + 1..marker("README-END")];
    let indent = region.iter().filter(|l| !l.trim().is_empty()).map(|l| l.len() - l.trim_start().len()).min();
    let indent = indent.unwrap_or(0);
    region.iter().map(|l| l.get(indent..).unwrap_or("")).collect::<Vec<_>>().join("\n")
}

/// The body of the first fenced block of `language` in the README's "## Bindings" section.
fn readme_block(language: &str) -> String {
    let readme = read("README.md");
    let section = readme.split("\n## Bindings\n").nth(1).expect("a Bindings section");
    let section = section.split("\n## ").next().unwrap();
    let fence = format!("```{language}\n");
    let body = section.split(&fence).nth(1).unwrap_or_else(|| panic!("no ```{language} block"));
    body.split("\n```").next().unwrap().to_owned()
}

#[test]
fn kotlin_snippet_is_the_tested_code() {
    let source = read("ffi/tests/kotlin/src/test/kotlin/org/samizdat/DeviceTest.kt");
    assert_eq!(readme_block("kotlin"), marked_region(&source));
}

#[test]
fn python_snippet_is_the_tested_code() {
    assert_eq!(readme_block("python"), marked_region(&read("ffi/tests/python/test_device.py")));
}

#[test]
fn swift_snippet_is_the_test_code() {
    let source = read("ffi/swift/Tests/SamizdatTests/DeviceTests.swift");
    assert_eq!(readme_block("swift"), marked_region(&source));
}
