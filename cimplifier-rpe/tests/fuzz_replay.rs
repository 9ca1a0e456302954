//! Every fuzz seed and past crash of the RPE glue's targets
//! (fuzz/seeds/TARGET, fuzz/crashes-found/TARGET-*) replayed as ordinary
//! tests through fuzz/src/rpe_targets.rs, included as it is.

#[path = "../../fuzz/src/rpe_targets.rs"]
mod rpe_targets;

use std::path::{Path, PathBuf};

fn replay(target: &str, body: fn(&[u8])) {
    let fuzz = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz");
    let seeds = fuzz.join("seeds").join(target);
    let mut inputs: Vec<PathBuf> = std::fs::read_dir(&seeds)
        .unwrap_or_else(|e| panic!("{}: {e}", seeds.display()))
        .map(|e| e.unwrap().path())
        .collect();
    assert!(!inputs.is_empty(), "{} holds no seed", seeds.display());
    inputs.extend(
        std::fs::read_dir(fuzz.join("crashes-found"))
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| {
                p.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with(&format!("{target}-")))
            }),
    );
    for input in &inputs {
        println!("{target}: {}", input.display());
        body(&std::fs::read(input).unwrap());
    }
}

#[test]
fn rpe_frame() {
    replay("rpe_frame", rpe_targets::rpe_frame);
}

#[test]
fn rpe_config() {
    replay("rpe_config", rpe_targets::rpe_config);
}
