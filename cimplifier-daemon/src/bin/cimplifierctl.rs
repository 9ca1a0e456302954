//! cimplifierctl: the admin CLI. Today it analyses recorded traces offline.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use cimplifier::model::report::{Input, analyze};
use clap::{ArgGroup, Parser, Subcommand};

#[derive(Parser)]
#[command(version, about = "cimplifier's admin CLI")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Build the resource model of a recorded trace and report it.
    ///
    /// Prints each executable with the sizes of its read set R (what must
    /// exist for it to run as observed), its write set W (what it creates,
    /// changes, removes or connects to) and its failed lookups, then the exec
    /// call graph and the sockets. --json prints the whole model (format:
    /// docs/model-json.md); --dot prints the call graph for Graphviz
    /// (`cimplifierctl analyze --events t.jsonl --dot | dot -Tsvg > calls.svg`).
    #[command(group(ArgGroup::new("input").required(true).args(["events", "strace"])))]
    Analyze {
        /// Event log written by `cimplifierd trace --output FILE`.
        #[arg(long, value_name = "FILE")]
        events: Option<PathBuf>,
        /// strace log(s): one `strace -f -y -yy -s 4096 -o FILE` log, or
        /// all the FILE.PID files of `strace -ff`.
        #[arg(long, value_name = "FILE", num_args = 1..)]
        strace: Vec<PathBuf>,
        /// The container's file system (an unpacked image, or
        /// /proc/PID/root of a running container), to follow symlinks along
        /// each name and read `#!` lines. Without it only the names used
        /// and their directories are known.
        #[arg(long, value_name = "DIR")]
        root: Option<PathBuf>,
        /// Print the whole model as JSON.
        #[arg(long, conflicts_with = "dot")]
        json: bool,
        /// Print the exec call graph as Graphviz DOT.
        #[arg(long)]
        dot: bool,
    },
}

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("cimplifierctl: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Analyze {
            events,
            strace,
            root,
            json,
            dot,
        } => {
            let input = match events {
                Some(path) => Input::Events(path),
                None => Input::Strace(strace),
            };
            let report = analyze(&input, root.as_deref())?;
            let text = if json {
                serde_json::to_string_pretty(&report)? + "\n"
            } else if dot {
                report.dot()
            } else {
                report.table()
            };
            if !report.source.complete {
                eprintln!(
                    "cimplifierctl: warning: the trace is incomplete ({} events lost, or the log was cut off): the model may miss uses",
                    report.source.lost_events
                );
            }
            let mut out = std::io::stdout().lock();
            // A closed pipe (`| head`) is not an error worth reporting.
            match out.write_all(text.as_bytes()) {
                Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
                other => Ok(other?),
            }
        }
    }
}
