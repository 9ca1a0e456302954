//! The audit log: every call of the admin role, with who made it (uid and
//! gid, or certificate subject), its main argument and how it ended, on the
//! `cimplifier::audit` target. [`Audited`] wraps the service, so every RPC
//! passes here (the trait makes a new one a compile error until it is
//! added); read-only calls pass through unlogged.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use tokio_stream::Stream;
use tonic::{Request, Response, Status, Streaming};

use super::authz::{AUDIT_TARGET, Caller};
use super::pb;
use super::pb::cimplifier_server::Cimplifier;
use super::service::Service;
use crate::cli::quote_capped;

/// The service, with every admin call logged.
pub struct Audited(pub Arc<Service>);

/// The caller the authorisation layer put in the request.
fn caller<T>(request: &Request<T>) -> Caller {
    request
        .extensions()
        .get::<Caller>()
        .cloned()
        .unwrap_or_else(|| Caller::Unknown {
            why: "not identified (no authorisation layer)".into(),
        })
}

/// A name from a request, quoted and capped so a hostile one cannot forge
/// log lines.
fn q(s: &str) -> String {
    quote_capped(s, 120)
}

/// One audit line.
fn log(caller: &Caller, rpc: &str, arg: &str, outcome: Result<&str, &Status>) {
    match outcome {
        Ok(outcome) => tracing::info!(
            target: AUDIT_TARGET,
            caller = %caller,
            uid = caller.uid(),
            gid = caller.gid(),
            subject = caller.subject(),
            rpc,
            arg,
            outcome,
            "{rpc} {arg}: {outcome}"
        ),
        Err(status) => tracing::info!(
            target: AUDIT_TARGET,
            caller = %caller,
            uid = caller.uid(),
            gid = caller.gid(),
            subject = caller.subject(),
            rpc,
            arg,
            outcome = ?status.code(),
            "{rpc} {arg}: failed, {:?}: {}",
            status.code(),
            status.message()
        ),
    }
}

/// Logs a unary call's outcome and hands it on.
fn logged<T>(
    caller: &Caller,
    rpc: &str,
    arg: &str,
    result: Result<Response<T>, Status>,
) -> Result<Response<T>, Status> {
    log(caller, rpc, arg, result.as_ref().map(|_| "ok"));
    result
}

type ResultStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

/// A streamed answer whose outcome is logged when it ends: ok at its end,
/// failed at its first error, cancelled when the client goes away first.
struct AuditedStream<T> {
    inner: ResultStream<T>,
    /// Taken once the outcome is logged.
    pending: Option<(Caller, &'static str, String)>,
}

impl<T> Stream for AuditedStream<T> {
    type Item = Result<T, Status>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let polled = self.inner.as_mut().poll_next(cx);
        let outcome = match &polled {
            Poll::Ready(None) => Some(Ok("ok")),
            Poll::Ready(Some(Err(status))) => Some(Err(status.clone())),
            _ => None,
        };
        if let Some(outcome) = outcome
            && let Some((caller, rpc, arg)) = self.pending.take()
        {
            log(&caller, rpc, &arg, outcome.as_ref().map(|s| *s));
        }
        polled
    }
}

impl<T> Drop for AuditedStream<T> {
    fn drop(&mut self) {
        if let Some((caller, rpc, arg)) = self.pending.take() {
            log(
                &caller,
                rpc,
                &arg,
                Ok("cancelled: the client went away before the end"),
            );
        }
    }
}

/// Logs a streamed call: a refusal now, else its outcome when the stream
/// ends.
fn logged_stream<T: Send + 'static>(
    caller: Caller,
    rpc: &'static str,
    arg: String,
    result: Result<Response<ResultStream<T>>, Status>,
) -> Result<Response<ResultStream<T>>, Status> {
    match result {
        Ok(response) => Ok(response.map(|inner| {
            Box::pin(AuditedStream {
                inner,
                pending: Some((caller, rpc, arg)),
            }) as ResultStream<T>
        })),
        Err(status) => {
            log(&caller, rpc, &arg, Err(&status));
            Err(status)
        }
    }
}

#[tonic::async_trait]
impl Cimplifier for Audited {
    async fn version(
        &self,
        request: Request<pb::VersionRequest>,
    ) -> Result<Response<pb::VersionResponse>, Status> {
        self.0.version(request).await
    }

    async fn observe(
        &self,
        request: Request<pb::ObserveRequest>,
    ) -> Result<Response<pb::Session>, Status> {
        let caller = caller(&request);
        let r = request.get_ref();
        let mut arg = if r.label_selector.is_empty() {
            format!("container {}", q(&r.container))
        } else {
            format!("label selector {}", q(&r.label_selector))
        };
        for (set, flag) in [
            (r.restart, "restart"),
            (r.attach, "attach"),
            (r.replace, "replace"),
        ] {
            if set {
                arg += &format!(" {flag}");
            }
        }
        logged(&caller, "Observe", &arg, self.0.observe(request).await)
    }

    async fn stop_observing(
        &self,
        request: Request<pb::StopObservingRequest>,
    ) -> Result<Response<pb::Session>, Status> {
        let caller = caller(&request);
        let req = request.get_ref();
        let arg = if req.label_selector.is_empty() {
            format!("container {}", q(&req.container))
        } else {
            format!("label selector {}", q(&req.label_selector))
        };
        logged(
            &caller,
            "StopObserving",
            &arg,
            self.0.stop_observing(request).await,
        )
    }

    async fn list_sessions(
        &self,
        request: Request<pb::ListSessionsRequest>,
    ) -> Result<Response<pb::ListSessionsResponse>, Status> {
        self.0.list_sessions(request).await
    }

    async fn get_session(
        &self,
        request: Request<pb::GetSessionRequest>,
    ) -> Result<Response<pb::Session>, Status> {
        self.0.get_session(request).await
    }

    async fn get_report(
        &self,
        request: Request<pb::GetReportRequest>,
    ) -> Result<Response<pb::Report>, Status> {
        self.0.get_report(request).await
    }

    type EmitStream = ResultStream<pb::EmitProgress>;

    async fn emit(
        &self,
        request: Request<pb::EmitRequest>,
    ) -> Result<Response<Self::EmitStream>, Status> {
        let caller = caller(&request);
        let r = request.get_ref();
        let mut arg = format!("session {}", q(&r.container));
        if !r.tag.is_empty() {
            arg += &format!(" tag {}", q(&r.tag));
        }
        if r.oci_archive {
            arg += " oci_archive";
        }
        if !r.policy_toml.is_empty() {
            arg += " with a policy";
        }
        if r.force {
            arg += " force";
        }
        logged_stream(caller, "Emit", arg, self.0.emit(request).await)
    }

    async fn plan(
        &self,
        request: Request<pb::PlanRequest>,
    ) -> Result<Response<pb::PlanResponse>, Status> {
        let caller = caller(&request);
        let arg = format!("session {}", q(&request.get_ref().session));
        logged(&caller, "Plan", &arg, self.0.plan(request).await)
    }

    type StreamEventsStream = ResultStream<pb::Event>;

    async fn stream_events(
        &self,
        request: Request<pb::StreamEventsRequest>,
    ) -> Result<Response<Self::StreamEventsStream>, Status> {
        self.0.stream_events(request).await
    }

    type ExportSessionStream = ResultStream<pb::Chunk>;

    async fn export_session(
        &self,
        request: Request<pb::ExportSessionRequest>,
    ) -> Result<Response<Self::ExportSessionStream>, Status> {
        let caller = caller(&request);
        let arg = format!("session {}", q(&request.get_ref().session));
        logged_stream(
            caller,
            "ExportSession",
            arg,
            self.0.export_session(request).await,
        )
    }

    async fn import_session(
        &self,
        request: Request<Streaming<pb::ImportChunk>>,
    ) -> Result<Response<pb::Session>, Status> {
        let caller = caller(&request);
        // The name is in the bundle's first chunk, read by the service: the
        // outcome names the session stored.
        let result = self.0.import_session(request).await;
        let arg = match &result {
            Ok(session) => format!("as session {}", q(&session.get_ref().container)),
            Err(_) => "a bundle".to_owned(),
        };
        logged(&caller, "ImportSession", &arg, result)
    }

    async fn merge_sessions(
        &self,
        request: Request<pb::MergeSessionsRequest>,
    ) -> Result<Response<pb::Session>, Status> {
        let caller = caller(&request);
        let r = request.get_ref();
        let from: Vec<String> = r.sessions.iter().take(16).map(|s| q(s)).collect();
        let mut arg = format!("into {} from {}", q(&r.into), from.join(", "));
        if r.replace {
            arg += " replace";
        }
        logged(
            &caller,
            "MergeSessions",
            &arg,
            self.0.merge_sessions(request).await,
        )
    }

    async fn delete_session(
        &self,
        request: Request<pb::DeleteSessionRequest>,
    ) -> Result<Response<pb::Session>, Status> {
        let caller = caller(&request);
        let arg = format!("session {}", q(&request.get_ref().session));
        logged(
            &caller,
            "DeleteSession",
            &arg,
            self.0.delete_session(request).await,
        )
    }

    async fn lifecycle(
        &self,
        request: Request<pb::LifecycleRequest>,
    ) -> Result<Response<pb::Target>, Status> {
        let caller = caller(&request);
        let r = request.get_ref();
        let step = pb::LifecycleStep::try_from(r.step).map_or_else(
            |_| format!("step {}", r.step),
            |s| s.as_str_name().to_owned(),
        );
        let arg = format!("container {} {step}", q(&r.container));
        logged(&caller, "Lifecycle", &arg, self.0.lifecycle(request).await)
    }

    async fn verify(
        &self,
        request: Request<pb::VerifyRequest>,
    ) -> Result<Response<pb::VerifyReport>, Status> {
        let caller = caller(&request);
        let r = request.get_ref();
        let outputs: Vec<String> = r.outputs.iter().take(16).map(|o| q(&o.session)).collect();
        let arg = format!("original {} outputs {}", q(&r.original), outputs.join(", "));
        logged(&caller, "Verify", &arg, self.0.verify(request).await)
    }
}
