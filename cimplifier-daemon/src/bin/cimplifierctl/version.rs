//! About cimplifierctl itself: `version` and `completions`.

use cimplifier::api::{Address, pb};
use clap::CommandFactory;

use crate::args::Cli;
use crate::daemon::daemon;
use crate::render::{print, print_json};

pub fn version(socket: &Address, json: bool) -> anyhow::Result<()> {
    let v = daemon(socket, async |mut c| c.version(pb::VersionRequest {}).await)?;
    if json {
        return print_json(&serde_json::json!({
            "cimplifierctl": env!("CARGO_PKG_VERSION"),
            "cimplifierd": v.version,
            "apis": v.apis,
        }));
    }
    print(&format!(
        "cimplifierctl {}\ncimplifierd {} (APIs: {})\n",
        env!("CARGO_PKG_VERSION"),
        v.version,
        v.apis.join(", ")
    ))
}

pub fn completions(shell: clap_complete::Shell) -> anyhow::Result<()> {
    let mut out = Vec::new();
    clap_complete::generate(shell, &mut Cli::command(), "cimplifierctl", &mut out);
    print(&String::from_utf8_lossy(&out))
}
