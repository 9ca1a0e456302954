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

/// Writes cimplifierctl(1) and a page per command into `dir`; prints what
/// it wrote.
pub fn man_pages(dir: &std::path::Path) -> anyhow::Result<()> {
    use anyhow::Context;
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let cli = Cli::command().name("cimplifierctl");
    let mut written = Vec::new();
    let mut page = |cmd: clap::Command, name: String| -> anyhow::Result<()> {
        let path = dir.join(format!("{name}.1"));
        let mut out = Vec::new();
        clap_mangen::Man::new(cmd.display_name(name.clone()))
            .render(&mut out)
            .with_context(|| format!("rendering {name}(1)"))?;
        std::fs::write(&path, out).with_context(|| format!("writing {}", path.display()))?;
        written.push(path.display().to_string());
        Ok(())
    };
    for sub in cli.get_subcommands() {
        if sub.get_name() != "help" {
            page(sub.clone(), format!("cimplifierctl-{}", sub.get_name()))?;
        }
    }
    page(cli, "cimplifierctl".to_owned())?;
    print(&(written.join("\n") + "\n"))
}

pub fn completions(shell: clap_complete::Shell) -> anyhow::Result<()> {
    let mut out = Vec::new();
    clap_complete::generate(shell, &mut Cli::command(), "cimplifierctl", &mut out);
    print(&String::from_utf8_lossy(&out))
}
