//! `observe` (one container, by label, or with --exec driving a workload)
//! and `stop`.

use std::time::Duration;

use anyhow::Context;
use cimplifier::api::{Address, pb};
use cimplifier::cli::shutdown_signal;

use crate::args::{ObserveArgs, usage_error};
use crate::daemon::{Client, WorkloadFailed, connect, daemon, runtime, status};
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
        json,
    } = args;
    if let (None, Some(label)) = (&container, label) {
        return observe_label(socket, label, exec.is_some(), json);
    }
    let container = container.context("give a container or --label")?;
    if let Some(cmd) = exec {
        let request = pb::ObserveRequest {
            container,
            restart,
            attach,
            ..Default::default()
        };
        return observe_exec(socket, request, &cmd, ready_timeout, json);
    }
    let session = runtime()?.block_on(async {
        let mut api = connect(socket).await?;
        let started = api
            .observe(pb::ObserveRequest {
                container: container.clone(),
                restart,
                attach,
                duration_seconds: duration.map_or(0, |d| d.as_secs().max(1) as u32),
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
                    let req = pb::StopObservingRequest { container: started.container.clone() };
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

pub fn stop(socket: &Address, container: String, json: bool) -> anyhow::Result<()> {
    let s = daemon(socket, async |mut c| {
        c.stop_observing(pb::StopObservingRequest { container })
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
        "observed {} for {:.1} s: {} executables used {} resources; {} events stored, {} repeats counted; {}; ended: {}\n",
        session.container,
        session.duration_ms as f64 / 1000.0,
        session.executables.len(),
        session.resources,
        session.events,
        session.aggregated_events,
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
            format!(
                "INCOMPLETE: {} (emit will refuse without --allow-incomplete)",
                why.join(", ")
            )
        },
        session.end,
    ))
}

/// How long a stopped workload has between SIGTERM and SIGKILL.
const WORKLOAD_GRACE: Duration = Duration::from_secs(5);

/// How the workload of `observe --exec` ended.
enum Ended {
    Exited(std::process::ExitStatus),
    /// By a signal to cimplifierctl; the status is the workload's, if it
    /// had started.
    Interrupted(nix::sys::signal::Signal, Option<std::process::ExitStatus>),
}

/// Ctrl-C or SIGTERM, listened for from now on (so one that comes while
/// the daemon is still starting the container is not lost).
fn interruption() -> anyhow::Result<impl Future<Output = nix::sys::signal::Signal>> {
    use nix::sys::signal::Signal;
    use tokio::signal::unix::{SignalKind, signal};
    let mut int = signal(SignalKind::interrupt())?;
    let mut term = signal(SignalKind::terminate())?;
    Ok(async move {
        tokio::select! {
            _ = int.recv() => Signal::SIGINT,
            _ = term.recv() => Signal::SIGTERM,
        }
    })
}

/// Resolves when the session is no longer observing (its container died,
/// say), with how it ended.
async fn session_ended(mut api: Client, name: &str) -> String {
    loop {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let Ok(list) = api.list_sessions(pb::ListSessionsRequest {}).await else {
            continue;
        };
        match list
            .into_inner()
            .sessions
            .into_iter()
            .find(|s| s.container == name)
        {
            Some(s) if s.state == pb::session::State::Observing as i32 => {}
            Some(s) if !s.end.is_empty() => return s.end,
            Some(s) if !s.error.is_empty() => return s.error,
            _ => return "closed".into(),
        }
    }
}

/// `observe CONTAINER --exec CMD`: observes, runs CMD against the
/// container, closes the session when CMD exits and exits with its status.
fn observe_exec(
    socket: &Address,
    request: pb::ObserveRequest,
    cmd: &str,
    ready_timeout: Duration,
    json: bool,
) -> anyhow::Result<()> {
    use cimplifier::api::workload;
    let (session, ended) = runtime()?.block_on(async {
        let stop = interruption()?;
        let mut api = connect(socket).await?;
        let started = api.observe(request).await.map_err(status)?.into_inner();
        let name = started.container.clone();
        let ended = drive(api.clone(), &started, cmd, ready_timeout, json, stop).await;
        // Whatever happened, the session is closed, as `stop` closes it.
        let closed = api
            .stop_observing(pb::StopObservingRequest {
                container: name.clone(),
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
        Ok::<_, anyhow::Error>((session, ended))
    })?;
    // A workload that could not run says why before anything else.
    let ended = ended?;
    let session = session.context("closing the session after the workload")?;
    let (code, what) = match &ended {
        Ended::Exited(s) => (workload::exit_code(*s), workload::describe(*s)),
        Ended::Interrupted(sig, s) => (
            128 + *sig as u8,
            match s {
                Some(s) => format!("was stopped on {sig} ({})", workload::describe(*s)),
                None => format!("did not start: {sig} came first"),
            },
        ),
    };
    if json {
        let mut v = session_json(&session);
        v["workload"] = serde_json::json!({
            "command": cmd, "exit_code": code, "status": what,
        });
        print(&(serde_json::to_string_pretty(&v)? + "\n"))?;
    } else {
        print_observed(&session)?;
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
            "the workload `{cmd}` {what}; the session {} is closed and kept",
            session.container
        ),
    }
    .into())
}

/// Waits until the container can be reached, then runs CMD until it exits
/// or cimplifierctl is told to stop.
async fn drive(
    api: Client,
    started: &pb::Session,
    cmd: &str,
    ready_timeout: Duration,
    json: bool,
    stop: impl Future<Output = nix::sys::signal::Signal>,
) -> anyhow::Result<Ended> {
    use cimplifier::api::workload::{self, Workload};
    let name = &started.container;
    let target = started.target.as_ref().with_context(|| {
        format!(
            "the daemon did not say where container {name} is (a cimplifierd older than this \
             cimplifierctl?): update cimplifierd, or observe without --exec"
        )
    })?;
    let address: std::net::IpAddr = match target.ip_address.parse() {
        Ok(a) => a,
        Err(_) if target.network_mode == "none" => anyhow::bail!(
            "container {name} has no network (--network none), so a workload cannot reach it: \
             run it with a network, or observe without --exec and drive it yourself"
        ),
        Err(_) => anyhow::bail!(
            "container {name} (network {}) has no IP address: it is not running any more; \
             `cimplifierctl sessions` shows how its session ended",
            target.network_mode
        ),
    };
    eprintln!(
        "observing {name} ({}){} at {address}",
        started.image_ref,
        if started.from_first_exec {
            " from its first exec"
        } else {
            ""
        }
    );
    tokio::pin!(stop);
    let ports: Vec<u16> = target
        .tcp_ports
        .iter()
        .filter_map(|&p| u16::try_from(p).ok())
        .collect();
    if !ports.is_empty() && !ready_timeout.is_zero() {
        let list = ports
            .iter()
            .map(u16::to_string)
            .collect::<Vec<_>>()
            .join(", ");
        eprintln!("waiting until {name} accepts connections on TCP port(s) {list}");
        let never = tokio::select! {
            never = workload::wait_for_ports(address, &ports, ready_timeout) => never,
            sig = &mut stop => return Ok(Ended::Interrupted(sig, None)),
            end = session_ended(api.clone(), name) => anyhow::bail!(
                "the session of {name} ended ({end}) before its ports accepted connections, \
                 so the workload was not run"
            ),
        };
        if !never.is_empty() {
            eprintln!(
                "cimplifierctl: warning: {name} did not accept connections on port(s) {never:?} \
                 within {}; running the workload anyway",
                humantime::format_duration(ready_timeout)
            );
        }
    }
    // A signal that came while the daemon was starting the container.
    tokio::select! {
        biased;
        sig = &mut stop => return Ok(Ended::Interrupted(sig, None)),
        _ = std::future::ready(()) => {}
    }
    eprintln!(
        "running the workload: sh -c {cmd:?} with {}={address}",
        workload::TARGET_VAR
    );
    let mut w = Workload::spawn(cmd, address, name, json)?;
    tokio::select! {
        status = w.wait() => Ok(Ended::Exited(status?)),
        sig = &mut stop => {
            eprintln!("{sig}: stopping the workload and closing the session");
            let status = w.stop(WORKLOAD_GRACE).await?;
            Ok(Ended::Interrupted(sig, Some(status)))
        }
    }
}
