//! `observe` (one container, by label, or with --exec driving a workload)
//! and `stop`.

use std::time::Duration;

use anyhow::Context;
use cimplifier::api::{Address, pb};
use cimplifier::cli::shutdown_signal;

use crate::args::{ObserveArgs, usage_error};
use crate::daemon::{WorkloadFailed, connect, daemon, runtime, status};
use crate::exercise::{Exercise, Pass, STEPS, interruption, outcome, step_name};
use crate::render::{print, print_json, session_json};

pub fn observe(socket: &Address, args: ObserveArgs) -> anyhow::Result<()> {
    let ObserveArgs {
        container,
        label,
        duration,
        restart,
        attach,
        exec,
        ready_timeout,
        lifecycle,
        no_lifecycle,
        replace,
        json,
    } = args;
    let lifecycle = Lifecycle::from_flags(lifecycle, no_lifecycle);
    if let (None, Some(label)) = (&container, label) {
        return observe_label(socket, label, exec.is_some(), json);
    }
    let container = container.context("give a container or --label")?;
    if let Some(cmd) = exec {
        let request = pb::ObserveRequest {
            container,
            restart,
            attach,
            replace,
            ..Default::default()
        };
        return observe_exec(socket, request, &cmd, ready_timeout, lifecycle, json);
    }
    let session = runtime()?.block_on(async {
        let mut api = connect(socket).await?;
        let started = api
            .observe(pb::ObserveRequest {
                container: container.clone(),
                restart,
                attach,
                duration_seconds: duration.map_or(0, |d| d.as_secs().max(1) as u32),
                replace,
                ..Default::default()
            })
            .await
            .map_err(status)?
            .into_inner();
        eprintln!(
            "observing {} ({}){}; run its workload now from another shell (or next time give \
             it as --exec CMD), then stop with Ctrl-C{}",
            started.container,
            started.image_ref,
            if started.from_first_exec { " from its first exec" } else { "" },
            match duration {
                Some(d) => format!(" or wait {}", humantime::format_duration(d)),
                None => String::new(),
            }
        );
        let stop = shutdown_signal();
        tokio::pin!(stop);
        loop {
            tokio::select! {
                _ = &mut stop => {
                    if lifecycle == Lifecycle::On {
                        let exercise = Exercise {
                            api: api.clone(),
                            container: &started.container,
                            cmd: None,
                            ready_timeout: LIFECYCLE_READY,
                            json,
                            steps: &STEPS,
                            netns: None,
                        };
                        eprintln!("running the lifecycle steps before the session closes");
                        let passes = exercise.run(started.target.as_ref(), interruption()?).await?;
                        eprintln!("lifecycle: {}", passes_text(&passes));
                    }
                    let req = pb::StopObservingRequest { container: started.container.clone(), ..Default::default() };
                    break api.stop_observing(req).await.map_err(status).map(|_| ());
                }
                // The list is cheap; GetSession builds the model.
                _ = tokio::time::sleep(Duration::from_millis(500)) => {
                    let list = api.list_sessions(pb::ListSessionsRequest {}).await.map_err(status)?.into_inner();
                    let now = list.sessions.into_iter().find(|s| s.container == started.container);
                    if now.is_none_or(|s| s.state != pb::session::State::Observing as i32) {
                        break Ok(());
                    }
                }
            }
        }?;
        let req = pb::GetSessionRequest { container: started.container.clone() };
        api.get_session(req).await.map_err(status).map(|r| r.into_inner())
    })?;
    if json {
        return print(&(serde_json::to_string_pretty(&session_json(&session))? + "\n"));
    }
    print_observed(&session)
}

/// `observe --label`: containers created from now on with the label.
fn observe_label(socket: &Address, label: String, exec: bool, json: bool) -> anyhow::Result<()> {
    if exec {
        usage_error(
            "--exec runs one workload against one container, and --label names \
             containers not created yet, so there is no single target: observe by \
             label, then drive each container with its own workload",
        );
    }
    let s = daemon(socket, async |mut c| {
        c.observe(pb::ObserveRequest {
            label_selector: label,
            ..Default::default()
        })
        .await
    })?;
    if json {
        return print_json(&serde_json::json!({ "label_selector": s.label_selector }));
    }
    print(&format!(
        "containers created with label {} will be observed from their first exec\n",
        s.label_selector
    ))
}

pub fn stop(
    socket: &Address,
    container: Option<String>,
    label: Option<String>,
    json: bool,
) -> anyhow::Result<()> {
    if let Some(label_selector) = label {
        let s = daemon(socket, async |mut c| {
            c.stop_observing(pb::StopObservingRequest {
                label_selector,
                ..Default::default()
            })
            .await
        })?;
        if json {
            return print_json(&serde_json::json!({ "label_selector": s.label_selector }));
        }
        return print(&format!(
            "containers created with label {} will no longer be observed; sessions it \
             started go on\n",
            s.label_selector
        ));
    }
    let container = container.context("give a container or --label")?;
    let s = daemon(socket, async |mut c| {
        c.stop_observing(pb::StopObservingRequest {
            container,
            ..Default::default()
        })
        .await
    })?;
    if json {
        return print_json(&session_json(&s));
    }
    print(&format!(
        "{}: {} events, {} lost; ended: {}\n",
        s.container, s.events, s.lost_events, s.end
    ))
}

/// The summary of an observed session; an error for a failed one.
fn print_observed(session: &pb::Session) -> anyhow::Result<()> {
    if session.state == pb::session::State::Failed as i32 {
        anyhow::bail!("observing {} failed: {}", session.container, session.error);
    }
    print(&format!(
        "observed {} for {:.1} s: {} executables used {} resources; {} events stored, {} repeats counted ({} folded in the kernel); {}; ended: {}\n",
        session.container,
        session.duration_ms as f64 / 1000.0,
        session.executables.len(),
        session.resources,
        session.events,
        session.aggregated_events + session.kernel_folded_events,
        session.kernel_folded_events,
        if session.complete {
            "no events lost".to_owned()
        } else {
            let mut why = Vec::new();
            if session.lost_events > 0 {
                why.push(format!("{} events LOST", session.lost_events));
            }
            if session.unreadable_names > 0 {
                why.push(format!("{} names unreadable", session.unreadable_names));
            }
            if !session.gaps.is_empty() {
                why.push(format!("{} gaps", session.gaps.len()));
            }
            if !session.from_first_exec {
                why.push("start-up NOT observed".to_owned());
            }
            if session.foreign_programs > 0 {
                let mut named = session.foreign_program_names.clone();
                if (named.len() as u64) < session.foreign_programs && !named.is_empty() {
                    named.push("...".to_owned());
                }
                let named = if named.is_empty() {
                    String::new()
                } else {
                    format!(" ({})", named.join(", "))
                };
                why.push(format!(
                    "{} program(s) of another ABI NOT traced{named}",
                    session.foreign_programs
                ));
            }
            format!(
                "INCOMPLETE: {} (emit will refuse without --allow-incomplete)",
                why.join(", ")
            )
        },
        session.end,
    ))
}

/// `observe CONTAINER --exec CMD`: observes, runs CMD against the
/// container (and again after each lifecycle step), closes the session
/// when done and exits with CMD's status.
fn observe_exec(
    socket: &Address,
    request: pb::ObserveRequest,
    cmd: &str,
    ready_timeout: Duration,
    lifecycle: Lifecycle,
    json: bool,
) -> anyhow::Result<()> {
    let (session, passes) = runtime()?.block_on(async {
        let stop = interruption()?;
        let mut api = connect(socket).await?;
        let started = api.observe(request).await.map_err(status)?.into_inner();
        let name = started.container.clone();
        eprintln!(
            "observing {name} ({}){}",
            started.image_ref,
            if started.from_first_exec {
                " from its first exec"
            } else {
                ""
            }
        );
        let steps = lifecycle.steps(started.target.as_ref());
        let exercise = Exercise {
            api: api.clone(),
            container: &name,
            cmd: Some(cmd),
            ready_timeout,
            json,
            steps,
            netns: None,
        };
        let passes = exercise.run(started.target.as_ref(), stop).await;
        // Whatever happened, the session is closed, as `stop` closes it.
        let closed = api
            .stop_observing(pb::StopObservingRequest {
                container: name.clone(),
                ..Default::default()
            })
            .await
            .map_err(status);
        let session = match closed {
            Ok(_) => api
                .get_session(pb::GetSessionRequest { container: name })
                .await
                .map(tonic::Response::into_inner)
                .map_err(status),
            Err(e) => Err(e),
        };
        Ok::<_, anyhow::Error>((session, passes))
    })?;
    // A workload that could not run says why before anything else.
    let passes = passes?;
    let session = session.context("closing the session after the workload")?;
    let last = passes.last().context("the workload did not run")?;
    let (code, what) = outcome(&last.ended);
    if json {
        let mut v = session_json(&session);
        v["workload"] = serde_json::json!({
            "command": cmd, "exit_code": code, "status": what,
            "passes": passes_json(&passes),
        });
        print(&(serde_json::to_string_pretty(&v)? + "\n"))?;
    } else {
        print_observed(&session)?;
        if passes.len() > 1 {
            print(&format!("workload passes: {}\n", passes_text(&passes)))?;
        }
    }
    if session.end != "stopped" && !session.end.is_empty() {
        eprintln!(
            "cimplifierctl: warning: the session of {} ended before the workload did ({}): \
             what the workload did afterwards was not observed",
            session.container, session.end
        );
    }
    if code == 0 {
        return Ok(());
    }
    Err(WorkloadFailed {
        code,
        message: format!(
            "the workload `{cmd}` {what} ({}); the session {} is closed and kept",
            last.name(),
            session.container
        ),
    }
    .into())
}

/// How long `observe --lifecycle` without a workload waits for a
/// restarted container's ports.
const LIFECYCLE_READY: Duration = Duration::from_secs(30);

/// Whether observe puts the container through the lifecycle steps.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Lifecycle {
    /// For a server (a container that exposes TCP ports).
    Auto,
    On,
    Off,
}

impl Lifecycle {
    pub fn from_flags(on: bool, off: bool) -> Self {
        match (on, off) {
            (true, _) => Self::On,
            (_, true) => Self::Off,
            _ => Self::Auto,
        }
    }

    /// The steps to run for a container reached at `target`.
    pub fn steps(self, target: Option<&pb::Target>) -> &'static [pb::LifecycleStep] {
        let server = target.is_some_and(|t| !t.tcp_ports.is_empty());
        match self {
            Self::On => &STEPS,
            Self::Auto if server => &STEPS,
            _ => &[],
        }
    }
}

/// Each pass of the workload, as JSON.
pub fn passes_json(passes: &[Pass]) -> serde_json::Value {
    passes
        .iter()
        .map(|p| {
            let (code, status) = outcome(&p.ended);
            serde_json::json!({
                "pass": p.name(),
                "after": p.after.map(step_name),
                "exit_code": code,
                "status": status,
            })
        })
        .collect()
}

/// "first pass: ok, after restart: ok, after kill-start: exited with status 1".
pub fn passes_text(passes: &[Pass]) -> String {
    passes
        .iter()
        .map(|p| {
            let status = if p.succeeded() {
                "ok".to_owned()
            } else {
                outcome(&p.ended).1
            };
            format!("{}: {status}", p.name())
        })
        .collect::<Vec<_>>()
        .join(", ")
}
