//! `cargo xtask vectors`: regenerates the JSON test vectors in `vectors/`.

use std::env;

/// Runs `cargo run -p samizdat-vectors -- generate vectors/` in the workspace
/// root. The generator is deterministic: review the diff it leaves, and
/// `cargo test -p samizdat-vectors` checks that the files verify.
pub(crate) fn generate() -> Result<(), String> {
    let cargo = env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
    crate::run("vectors", &cargo, &["run", "--quiet", "-p", "samizdat-vectors", "--", "generate", "vectors/"])
}
