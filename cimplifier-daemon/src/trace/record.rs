//! Recording one cgroup to an event log: what `cimplifierd trace` runs
//! (which finds a container's cgroup through the engine first).

use std::future::Future;
use std::path::PathBuf;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::Result;

use super::cgroup::cgroup_id;
use super::log::{EventLogWriter, FORMAT, LogHeader, LogSummary, VERSION};
use super::{Tracer, TracerConfig};

/// What to trace: a cgroup v2 directory and everything below it.
#[derive(Clone, Debug)]
pub struct TraceTarget {
    pub cgroup: PathBuf,
    /// What the log and the progress messages call it
    /// (`container web (ID)`).
    pub name: String,
}

impl TraceTarget {
    /// The cgroup directory `path`, named by its path.
    pub fn cgroup(path: PathBuf) -> Self {
        Self {
            name: format!("cgroup {}", path.display()),
            cgroup: path,
        }
    }
}

#[derive(Clone, Debug)]
pub struct RecordOptions {
    pub target: TraceTarget,
    pub output: PathBuf,
    /// Stop after this long; otherwise only `stop` ends the recording.
    pub duration: Option<Duration>,
    pub tracer: TracerConfig,
    /// How often to report progress through `tracing`.
    pub progress_every: Duration,
}

/// Traces the target into an event log until `stop` resolves or the duration
/// passes, then writes the summary with the loss counters.
pub async fn record(opts: RecordOptions, stop: impl Future<Output = ()>) -> Result<LogSummary> {
    let TraceTarget {
        cgroup: cgroup_path,
        name: target,
    } = opts.target.clone();
    // Name a bad cgroup or output path before loading anything.
    let cgroup = cgroup_id(&cgroup_path)?;
    let header = LogHeader {
        format: FORMAT.into(),
        version: VERSION,
        target: target.clone(),
        cgroup,
        cgroup_path: cgroup_path.clone(),
        started_unix_ms: SystemTime::now().duration_since(UNIX_EPOCH)?.as_millis() as u64,
    };
    let mut log = EventLogWriter::create(&opts.output, header)?;
    let mut tracer = Tracer::load(opts.tracer.clone())?;
    let mut events = tracer.events()?;
    let watched = tracer.watch_cgroup(&cgroup_path)?;
    if let Some(unhooked) = tracer.unhooked_event(cgroup) {
        log.write(&unhooked)?;
    }
    tracing::info!("tracing {target} into {}", opts.output.display());

    let started = Instant::now();
    let deadline = async {
        match opts.duration {
            Some(d) => tokio::time::sleep(d).await,
            None => std::future::pending().await,
        }
    };
    tokio::pin!(stop, deadline);
    let mut progress = tokio::time::interval(opts.progress_every);
    progress.tick().await;
    loop {
        tokio::select! {
            biased;
            _ = &mut stop => break,
            _ = &mut deadline => break,
            _ = progress.tick() => {
                let c = tracer.counters()?;
                tracing::info!(events = log.events_written(), lost = c.loss.lost(), "tracing {target}");
            }
            event = events.next_event() => match event {
                Some(e) => log.write(&e)?,
                None => break,
            },
        }
    }
    tracer.unwatch(&watched)?;
    // Records already in the ring buffer still belong to the trace.
    while let Ok(Some(e)) =
        tokio::time::timeout(Duration::from_millis(200), events.next_event()).await
    {
        log.write(&e)?;
    }
    let counters = tracer.counters()?;
    let summary = log.finish(started.elapsed().as_millis() as u64, counters.loss)?;
    if summary.complete {
        tracing::info!(events = summary.events, "trace complete: no events lost");
    } else {
        tracing::warn!(
            events = summary.events,
            lost = summary.loss.lost(),
            "trace INCOMPLETE: {} events lost ({:?}); the log says so",
            summary.loss.lost(),
            summary.loss
        );
    }
    // The process exits next: closed now, the hooks go several at a time.
    drop(events);
    let _ = tokio::task::spawn_blocking(move || tracer.wait_unhooked()).await;
    Ok(summary)
}
