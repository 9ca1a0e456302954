//! Fills a pod's empty volumes from the seed image (an init container's
//! command, see cimplifier_rpe::seed). Usage: `cimplifier-seed SEED_DIR FILL_DIR`.

fn main() {
    std::process::exit(cimplifier_rpe::seed::main());
}
