//! The Lifecycle and Verify calls: lifecycle steps inside a session, and
//! the comparison of an output's sessions with the original's.

use std::sync::Arc;

use tonic::Status;

use super::convert::{check_name, internal, not_found};
use super::pb;
use super::service::target;
use crate::session::{LifecycleStep, Manager, ObserveError};
use crate::verify::{Original, OutputComparer, RegressionKind};

pub(super) async fn lifecycle(
    manager: &Arc<Manager>,
    req: pb::LifecycleRequest,
) -> Result<pb::Target, Status> {
    check_name(&req.container, "container")?;
    let step = match pb::LifecycleStep::try_from(req.step) {
        Ok(pb::LifecycleStep::Restart) => LifecycleStep::Restart,
        Ok(pb::LifecycleStep::KillStart) => LifecycleStep::KillStart,
        Ok(pb::LifecycleStep::Reload) => LifecycleStep::Reload,
        _ => {
            return Err(Status::invalid_argument(format!(
                "step: {} is not a lifecycle step (restart, kill-start, reload)",
                req.step
            )));
        }
    };
    let started = match manager.get(&req.container).map_err(internal)? {
        Some(crate::session::SessionView::Stored(r)) => r.started.container_id,
        Some(crate::session::SessionView::Starting(s)) => s.container_id,
        _ => return Err(not_found(&req.container)),
    };
    match manager.lifecycle(&req.container, step).await {
        Ok(()) => Ok(target(&started).await.unwrap_or_default()),
        Err(e @ ObserveError::NotObserving(_)) => Err(Status::failed_precondition(e.to_string())),
        Err(e) => Err(Status::failed_precondition(e.to_string())),
    }
}

pub(super) async fn verify(
    manager: &Arc<Manager>,
    req: pb::VerifyRequest,
) -> Result<pb::VerifyReport, Status> {
    check_name(&req.original, "original")?;
    if req.outputs.is_empty() {
        return Err(Status::invalid_argument(
            "outputs: name at least one session of the output",
        ));
    }
    let store = manager.store().clone();
    let record = |name: &str| {
        store
            .session(name)
            .map_err(internal)?
            .ok_or_else(|| not_found(name))
    };
    let original = record(&req.original)?;
    let mut outputs = Vec::new();
    for o in &req.outputs {
        check_name(&o.session, "outputs")?;
        if o.session == req.original {
            return Err(Status::invalid_argument(format!(
                "outputs: {} is the original session; name the sessions of the output",
                o.session
            )));
        }
        outputs.push((record(&o.session)?, o.partition.clone()));
    }
    let store = store.clone();
    tokio::task::spawn_blocking(move || {
        let mut seen = Original::new();
        store.for_each_event(&original, |_, e| {
            seen.apply(&e);
            Ok(())
        })?;
        let mut report = pb::VerifyReport::default();
        for (record, partition) in outputs {
            if let Some(why) = record.incompleteness() {
                report.incomplete.push(format!("{}: {why}", record.name));
            }
            let mut comparer = OutputComparer::new(&seen, &partition);
            store.for_each_event(&record, |_, e| {
                comparer.apply(&e);
                Ok(())
            })?;
            let (regressions, failed) = comparer.finish();
            report.failed_calls += failed;
            report
                .regressions
                .extend(regressions.into_iter().map(|r| pb::Regression {
                    kind: match r.kind {
                        RegressionKind::CallFails => pb::regression::Kind::CallFails,
                        RegressionKind::ExecMissing => pb::regression::Kind::ExecMissing,
                    } as i32,
                    executable: r.executable,
                    partition: r.partition,
                    syscall: r.syscall,
                    resource: r.resource,
                    errno: r.errno,
                    count: r.count,
                    fix: r.fix,
                }));
        }
        Ok::<_, anyhow::Error>(report)
    })
    .await
    .map_err(|e| Status::internal(e.to_string()))?
    .map_err(internal)
}
