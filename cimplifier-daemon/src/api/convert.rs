//! Conversions between the API's messages and the daemon's types, the
//! checks on what a request names, and the status code each failure gets.

use tonic::Status;

use super::pb;
use super::pb::session::State;
use crate::docker::tag::ImageTag;
use crate::docker::target::NetworkTarget;
use crate::emit::EmitError;
use crate::image::source::Refused;
use crate::session::SessionView;
use crate::store::{SessionRecord, SessionState, Started};
use crate::trace::ContainerPath;

/// Longest name or id the API accepts.
const MAX_NAME: usize = 256;

pub(super) fn starting(s: &Started) -> pb::Session {
    pb::Session {
        container: s.container_name.clone(),
        container_id: s.container_id.clone(),
        image_ref: s.image_ref.clone(),
        image_id: s.image_id.clone(),
        state: State::Observing as i32,
        from_first_exec: s.from_first_exec,
        started_unix_ms: s.started_unix_ms,
        ..Default::default()
    }
}

pub(super) fn stored(r: &SessionRecord) -> pb::Session {
    pb::Session {
        container: r.name.clone(),
        state: match r.state {
            SessionState::Observing => State::Observing,
            SessionState::Closed => State::Closed,
        } as i32,
        end: r
            .end
            .as_ref()
            .and_then(|e| serde_json::to_value(e).ok())
            .and_then(|v| v.as_str().map(str::to_owned))
            .unwrap_or_default(),
        duration_ms: r.duration_ms,
        events: r.events,
        aggregated_events: r.aggregated,
        kernel_folded_events: r.kernel_folded,
        lost_events: r.loss.lost(),
        unreadable_names: r.loss.unreadable_names,
        foreign_programs: r.loss.foreign_programs,
        foreign_program_names: r.foreign_programs.iter().cloned().collect(),
        complete: r.complete(),
        gaps: r
            .gaps
            .iter()
            .map(|g| pb::Gap {
                from_unix_ms: g.from_unix_ms,
                to_unix_ms: g.to_unix_ms,
                reason: g.reason.clone(),
            })
            .collect(),
        segments: r
            .segments
            .iter()
            .map(|s| pb::Segment {
                first_event: s.first_event,
                started_unix_ms: s.started_unix_ms,
                from_first_exec: s.from_first_exec,
                origin: s.origin.clone(),
            })
            .collect(),
        lifecycle_steps: r.lifecycle.iter().map(|s| s.name().to_owned()).collect(),
        ..starting(&r.started)
    }
}

pub(super) fn view(v: &SessionView) -> pb::Session {
    match v {
        SessionView::Stored(r) => stored(r),
        SessionView::Starting(s) => starting(s),
        SessionView::Failed { name, error } => pb::Session {
            container: name.clone(),
            state: State::Failed as i32,
            error: error.clone(),
            ..Default::default()
        },
    }
}

pub(super) fn internal(e: anyhow::Error) -> Status {
    Status::internal(format!("{e:#}"))
}

pub(super) fn not_found(name: &str) -> Status {
    refused(Refused::NoSession(name.to_owned()))
}

/// A session refused for plan or emit, with the status [`EmitError`] gives it.
pub(super) fn refused(why: Refused) -> Status {
    EmitError::Refused(why).into()
}

/// The one place where a plan's or an emit's failure gets its status code,
/// so the same refusal is the same code (and cimplifierctl exit code) from
/// every call: a missing session is NotFound; one still observing or
/// incomplete, or lacking what the image needs, FailedPrecondition; a
/// policy that does not fit, InvalidArgument; an unreachable engine or a
/// gone image, FailedPrecondition; the rest Internal.
impl From<EmitError> for Status {
    fn from(e: EmitError) -> Self {
        let message = e.to_string();
        match e {
            EmitError::Refused(Refused::NoSession(_)) => Status::not_found(message),
            EmitError::Refused(Refused::StillObserving(_) | Refused::Incomplete { .. })
            | EmitError::Session(_)
            | EmitError::Engine(_)
            | EmitError::Registry(_) => Status::failed_precondition(message),
            EmitError::Policy(_) | EmitError::Options(_) => Status::invalid_argument(message),
            EmitError::ForeignTag(_) => Status::already_exists(message),
            EmitError::Failed(_) => Status::internal(message),
        }
    }
}

/// The request's tag, checked against Docker's reference grammar; none
/// when empty.
pub(super) fn image_tag(tag: &str) -> Result<Option<ImageTag>, Status> {
    if tag.is_empty() {
        return Ok(None);
    }
    tag.parse()
        .map(Some)
        .map_err(|e: crate::docker::tag::TagError| Status::invalid_argument(e.to_string()))
}

pub(super) fn check_name(name: &str, field: &str) -> Result<(), Status> {
    if name.is_empty() || name.len() > MAX_NAME {
        return Err(Status::invalid_argument(format!(
            "{field}: give a name or id of 1 to {MAX_NAME} characters"
        )));
    }
    Ok(())
}

pub(super) fn paths(list: &[String], field: &str) -> Result<Vec<ContainerPath>, Status> {
    list.iter()
        .map(|s| {
            ContainerPath::new(s)
                .filter(|_| s.len() <= 4096)
                .ok_or_else(|| {
                    Status::invalid_argument(format!(
                        "{field} {s:?}: give an absolute path inside the container"
                    ))
                })
        })
        .collect()
}

pub(super) fn event_message(e: &crate::session::StreamedEvent) -> pb::Event {
    let (kind, syscall) = crate::session::observer::kind_of(&e.event);
    pb::Event {
        session: e.session.to_string(),
        ts_ns: e.event.ts_ns,
        pid: e.event.pid,
        tid: e.event.tid,
        comm: e.event.comm.clone(),
        executable: e
            .exe
            .as_ref()
            .map(|p| p.as_str().to_owned())
            .unwrap_or_default(),
        kind: kind.to_owned(),
        syscall: syscall.unwrap_or_default().to_owned(),
        json: serde_json::to_string(&*e.event).unwrap_or_default(),
    }
}

/// Where a workload reaches the container, asked of the engine now that it
/// runs. The client may be remote and without Docker access, so the daemon
/// says it. None (with a warning) when the engine cannot tell.
pub(super) async fn target(container_id: &str) -> Option<pb::Target> {
    if let Ok(at) = container_id.parse::<crate::engine::containerd::ContainerRef>() {
        let found = match crate::engine::containerd::Containerd::connect().await {
            Ok(c) => c.network_target(&at).await,
            Err(e) => Err(e),
        };
        return match found {
            Ok(Some(t)) => Some(t.into()),
            Ok(None) => {
                tracing::warn!(
                    container = container_id,
                    "no network target: the container has only loopback in its network namespace (no CNI); the workload must reach it there (e.g. `nsenter --net=/proc/PID/ns/net`)"
                );
                None
            }
            Err(e) => {
                tracing::warn!(container = container_id, "no network target: {e:#}");
                None
            }
        };
    }
    NetworkTarget::lookup(container_id).await.map(Into::into)
}

impl From<NetworkTarget> for pb::Target {
    fn from(t: NetworkTarget) -> Self {
        pb::Target {
            network_mode: t.network_mode,
            ip_address: t.address.map(|a| a.to_string()).unwrap_or_default(),
            tcp_ports: t.tcp_ports.into_iter().map(u32::from).collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tonic::Code;

    fn code(e: EmitError) -> Code {
        Status::from(e).code()
    }

    #[test]
    fn each_failure_has_one_code() {
        assert_eq!(
            code(EmitError::Refused(Refused::NoSession("web".into()))),
            Code::NotFound
        );
        assert_eq!(
            code(EmitError::Refused(Refused::StillObserving("web".into()))),
            Code::FailedPrecondition
        );
        assert_eq!(
            code(EmitError::Policy("`/bin/bash` was never observed".into())),
            Code::InvalidArgument
        );
        assert_eq!(
            code(EmitError::Engine(anyhow::anyhow!("the image is gone"))),
            Code::FailedPrecondition
        );
        assert_eq!(
            code(EmitError::Failed(anyhow::anyhow!("disk full"))),
            Code::Internal
        );
    }

    #[test]
    fn a_policy_that_does_not_parse_is_invalid_argument() {
        let e = crate::partition::Policy::from_toml("kind = \"one-one\"\nbogus = 1\n")
            .map(|_| ())
            .map_err(EmitError::from);
        let status = Status::from(e.expect_err("an unknown field is refused"));
        assert_eq!(status.code(), Code::InvalidArgument);
        assert!(status.message().starts_with("policy: "), "{status:?}");
    }
}
