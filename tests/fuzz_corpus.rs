//! Replays every kept fuzz input (`fuzz/seeds/<target>/` and
//! `fuzz/regressions/<target>/`, the inputs a fuzzing run once failed on) through the
//! fuzz targets' own code, so that `cargo test` catches a regression without a fuzzer.
//! Also replays the working corpus (`fuzz/corpus/<target>/`) when a local fuzzing run
//! left one.

use std::path::Path;

fn replay(target: &str, run: fn(&[u8])) {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz");
    let mut replayed = 0;
    for kind in ["seeds", "regressions", "corpus"] {
        let Ok(entries) = std::fs::read_dir(root.join(kind).join(target)) else {
            continue;
        };
        for entry in entries {
            let path = entry.unwrap().path();
            let data = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            let outcome = std::panic::catch_unwind(|| run(&data));
            assert!(outcome.is_ok(), "fuzz target {target} panics on {}", path.display());
            replayed += 1;
        }
    }
    assert!(
        replayed > 0,
        "no input for fuzz target {target} under {}",
        root.display()
    );
    println!("fuzz target {target}: {replayed} inputs replayed, no panic");
}

#[test]
fn document_inputs_replay_without_a_panic() {
    replay("document", ker_agent::fuzzing::document);
}

#[test]
fn manifest_inputs_replay_without_a_panic() {
    replay("manifest", ker_agent::fuzzing::manifest);
}

#[test]
fn info_inputs_replay_without_a_panic() {
    replay("info", ker_agent::fuzzing::info);
}

#[test]
fn render_inputs_replay_and_round_trip() {
    replay("render", ker_agent::fuzzing::render);
}
