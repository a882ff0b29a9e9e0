//! `samizdat-vectors generate <dir>` writes every vector file;
//! `samizdat-vectors verify <dir>` recomputes every output from the inputs
//! and reports each field that differs.

use std::{collections::BTreeSet, env, fs, path::Path, process::ExitCode};

fn main() -> ExitCode {
    let args: Vec<String> = env::args().skip(1).collect();
    match (args.first().map(String::as_str), args.get(1), args.len()) {
        (Some("generate"), Some(dir), 2) => generate(Path::new(dir)),
        (Some("verify"), Some(dir), 2) => verify(Path::new(dir)),
        _ => {
            eprintln!("usage: samizdat-vectors generate <dir> | verify <dir>");
            ExitCode::from(2)
        }
    }
}

fn generate(dir: &Path) -> ExitCode {
    let files = match samizdat_vectors::generate_all() {
        Ok(files) => files,
        Err(e) => {
            eprintln!("generation failed: {e}");
            return ExitCode::FAILURE;
        }
    };
    if let Err(e) = fs::create_dir_all(dir) {
        eprintln!("{}: {e}", dir.display());
        return ExitCode::FAILURE;
    }
    for (name, json) in &files {
        let path = dir.join(name);
        let unchanged = fs::read_to_string(&path).is_ok_and(|old| old == *json);
        if let Err(e) = fs::write(&path, json) {
            eprintln!("{}: {e}", path.display());
            return ExitCode::FAILURE;
        }
        println!("{} {}", if unchanged { "unchanged" } else { "wrote    " }, path.display());
    }
    println!("{} files", files.len());
    ExitCode::SUCCESS
}

fn verify(dir: &Path) -> ExitCode {
    let (mut vectors, mut failed) = (0usize, 0usize);
    let known: BTreeSet<&str> = samizdat_vectors::file_names().into_iter().collect();
    for name in &known {
        let path = dir.join(name);
        let json = match fs::read_to_string(&path) {
            Ok(json) => json,
            Err(e) => {
                println!("FAIL {name}: cannot read {}: {e}", path.display());
                failed += 1;
                continue;
            }
        };
        let report = samizdat_vectors::verify_report(name, &json);
        for failure in &report.failures {
            println!("FAIL {failure}");
        }
        println!("{name}: {} cases, {} failed", report.cases, report.failed_cases());
        vectors += report.cases;
        failed += report.failed_cases();
    }
    if let Ok(entries) = fs::read_dir(dir) {
        let mut unknown: Vec<String> = entries
            .filter_map(Result::ok)
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|name| name.ends_with(".json") && !known.contains(name.as_str()))
            .collect();
        unknown.sort();
        for name in unknown {
            println!("FAIL {name}: not a vector file this generator knows (remove it, or regenerate)");
            failed += 1;
        }
    }
    println!("{vectors} vectors, {failed} failed");
    if failed == 0 { ExitCode::SUCCESS } else { ExitCode::FAILURE }
}
