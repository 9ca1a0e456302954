//! cimplifierctl: the admin CLI, a gRPC client of cimplifierd; `analyze`
//! works offline on recorded traces.
//!
//! `args` holds the command line; each group of commands has its own
//! module, called from [`run`]; `daemon` reaches the daemon and maps
//! failures to exit codes; `render` holds what several commands print.

mod analyze;
mod args;
mod daemon;
mod emit;
mod exercise;
mod observe;
mod outputs;
mod render;
mod sessions;
mod verify;
mod version;

use std::process::ExitCode;

use clap::Parser;

use crate::args::{Cli, Command, SessionsAction};

fn main() -> ExitCode {
    cimplifier::cli::init_logging();
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("cimplifierctl: error: {e:#}");
            ExitCode::from(daemon::exit_code(&e))
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    let socket = match cli.command {
        Command::Completions { .. } | Command::Man { .. } | Command::Analyze { .. } => {
            cimplifier::api::Address::Unix(cli.socket.clone())
        }
        _ => cli.address(),
    };
    let socket = &socket;
    match cli.command {
        Command::Completions { shell } => version::completions(shell),
        Command::Man { dir } => version::man_pages(&dir),
        Command::Version { json } => version::version(socket, json),
        Command::Observe(args) => observe::observe(socket, args),
        Command::Verify(args) => verify::verify(socket, args),
        Command::Stop {
            container,
            label,
            json,
        } => observe::stop(socket, container, label, json),
        Command::Sessions { json, action } => match action {
            None => sessions::list(socket, json),
            Some(SessionsAction::Rm { sessions, json }) => sessions::remove(socket, sessions, json),
        },
        Command::Report {
            container,
            json,
            dot,
        } => sessions::report(socket, container, json, dot),
        Command::Events {
            session,
            exe,
            kind,
            buffer,
            json,
        } => sessions::events(socket, session, exe, kind, buffer, json),
        Command::Export {
            session,
            output,
            json,
        } => sessions::export(socket, session, &output, json),
        Command::Import {
            bundle,
            name,
            replace,
            json,
        } => sessions::import(socket, &bundle, name, replace, json),
        Command::Merge {
            into,
            sessions,
            replace,
            json,
        } => sessions::merge(socket, into, sessions, replace, json),
        Command::Plan {
            session,
            policy,
            json,
        } => emit::plan(socket, session, &policy, json),
        Command::Emit(args) => emit::emit(socket, args),
        Command::Up {
            plan,
            publish,
            json,
        } => emit::up(&plan, &publish, json),
        Command::Down {
            plan,
            volumes,
            json,
        } => emit::down(&plan, volumes, json),
        Command::Analyze {
            events,
            strace,
            root,
            json,
            dot,
        } => analyze::analyze(events, strace, root.as_deref(), json, dot),
    }
}
