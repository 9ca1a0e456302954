//! The RPE server: executes allow-listed programs for stubs of other
//! partitions. Usage: `cimplifier-rpe-server --config FILE`.

fn main() {
    std::process::exit(cimplifier_rpe::server::main());
}
