//! The cost of one encrypt + decrypt + commit round in Rust, beside the same
//! loop in the Kotlin and Python tests (`costOfOneRound`, `test_cost_of_one_round`):
//! two devices on SQLite stores in a temporary directory, 100-byte messages,
//! 20 warm-up rounds, then 200 timed ones. Not asserted; `cargo xtask test`
//! prints the three numbers side by side.
//!
//! ```sh
//! cargo run -p samizdat-ffi --example round_cost   # the debug profile, like the library the bindings load
//! ```

use std::{path::Path, time::Instant};

use samizdat_ffi::{Device, FilePath, SamizdatError, Timestamp};

const WARM_UP: u32 = 20;
const ROUNDS: u32 = 200;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = std::env::temp_dir().join(format!("samizdat-round-cost-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let result = measure(&dir);
    std::fs::remove_dir_all(&dir)?;
    println!("rust: one encrypt+decrypt+commit round (SQLite, 100 bytes): {:.0} us", result?);
    Ok(())
}

/// Microseconds per round, through the same `Device` the bindings export
/// (minus the foreign-language call).
fn measure(dir: &Path) -> Result<f64, SamizdatError> {
    let open = |name: &str, key: u8| {
        let path = FilePath(dir.join(format!("{name}.db")).to_string_lossy().into_owned());
        Device::open_or_create(path, vec![key; 32], name.to_owned(), 1, Timestamp(0))
    };
    let (alice, bob) = (open("alice", 1)?, open("bob", 2)?);
    alice.start_session(bob.prekey_bundle()?)?;
    let round = || -> Result<(), SamizdatError> {
        let pending = bob.decrypt(alice.address(), alice.encrypt(bob.address(), vec![0; 100])?)?;
        // A direct message: its commit answers nothing.
        bob.commit(pending).map(drop)
    };
    for _ in 0..WARM_UP {
        round()?;
    }
    let started = Instant::now();
    for _ in 0..ROUNDS {
        round()?;
    }
    Ok(started.elapsed().as_secs_f64() * 1e6 / f64::from(ROUNDS))
}
