//! The daemon's Prometheus metrics (`--metrics-addr`, `/metrics`), through
//! the prometheus-client crate: the state read at each scrape (sessions,
//! the tracer's counters, memory), and histograms of how long emit and
//! plan take, kept across scrapes.

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

/// What is read at a scrape.
#[derive(Debug, Default, Clone)]
pub struct Snapshot {
    pub sessions_observing: u64,
    pub sessions_closed: u64,
    pub sessions_failed: u64,
    pub tracer_events: u64,
    pub tracer_lost: u64,
    pub exit_mismatch: u64,
    pub session_events: u64,
    pub session_lost: u64,
    pub streams: u64,
    pub streams_cut_off: u64,
    pub held_cgroups: u64,
    pub held_dropped: u64,
    pub held_overflow: u64,
    pub excluded_cgroups: u64,
    pub reader_restarts: u64,
    pub dispatcher_restarts: u64,
    pub interrupted: u64,
    /// 1 while the reader and the dispatcher run, 0 while restarting.
    pub tracing: u64,
    pub watched_cgroups: u64,
    pub store_bytes: u64,
    pub resident_bytes: u64,
    /// Host-wide: runs of the kernel programs the kernel skipped (lost).
    pub missed_runs: u64,
    /// Host-wide: fork and exec records not made (lost).
    pub tracepoint_unread: u64,
    /// Records the kernel lost, by watched cgroup (its directory) and cause.
    pub cgroup_lost: Vec<(String, crate::trace::CgroupLoss)>,
}

impl Collector for Snapshot {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let sessions = ConstGauge::new(0i64);
        let mut family = encoder.encode_descriptor(
            "cimplifier_sessions",
            "Observation sessions by state.",
            None,
            sessions.metric_type(),
        )?;
        for (state, n) in [
            ("observing", self.sessions_observing),
            ("closed", self.sessions_closed),
            ("failed", self.sessions_failed),
        ] {
            let labels = [("state", state)];
            ConstGauge::new(gauge(n)).encode(family.encode_family(&labels)?)?;
        }
        let counters = [
            (
                "cimplifier_events",
                "Events the tracer delivered (rate() gives events/s).",
                self.tracer_events,
            ),
            (
                "cimplifier_lost_events",
                "Events the tracer lost since the daemon started.",
                self.tracer_lost,
            ),
            (
                "cimplifier_syscall_exit_mismatch",
                "Syscall exits that met another call's in-flight entry of the same thread (a \
                 diagnostic; not counted as lost).",
                self.exit_mismatch,
            ),
            (
                "cimplifier_event_streams_cut_off",
                "Streams cut off for falling behind.",
                self.streams_cut_off,
            ),
            (
                "cimplifier_held_cgroups",
                "New containers' cgroups held until their labels were known.",
                self.held_cgroups,
            ),
            (
                "cimplifier_held_dropped_events",
                "Held events dropped: another container's, or not claimed in time.",
                self.held_dropped,
            ),
            (
                "cimplifier_held_overflow_events",
                "Events that did not fit in what is held (lost).",
                self.held_overflow,
            ),
            (
                "cimplifier_excluded_cgroups",
                "Unwanted containers' cgroups excluded in the kernel.",
                self.excluded_cgroups,
            ),
            (
                "cimplifier_reader_restarts",
                "Times the ring reader ended (an error, a panic) and was restarted.",
                self.reader_restarts,
            ),
            (
                "cimplifier_dispatcher_restarts",
                "Times the dispatcher panicked and was restarted.",
                self.dispatcher_restarts,
            ),
            (
                "cimplifier_interrupted_events",
                "Events the reader or dispatcher had in hand when it ended (lost).",
                self.interrupted,
            ),
            (
                "cimplifier_missed_program_runs",
                "Runs of the kernel programs the kernel skipped because another BPF program \
                 ran on that CPU (bpf_prog_info.recursion_misses; lost, for every session).",
                self.missed_runs,
            ),
            (
                "cimplifier_tracepoint_unread",
                "Fork and exec records not made: a field of the tracepoint's record was \
                 unreadable (lost).",
                self.tracepoint_unread,
            ),
        ];
        for (name, help, value) in counters {
            let counter = ConstCounter::new(value);
            counter.encode(encoder.encode_descriptor(
                name,
                help,
                None,
                counter.metric_type(),
            )?)?;
        }
        let lost = ConstCounter::new(0u64);
        let mut family = encoder.encode_descriptor(
            "cimplifier_cgroup_lost_events",
            "Records the kernel lost of a watched cgroup (and the cgroups below it), by cause.",
            None,
            lost.metric_type(),
        )?;
        for (cgroup, loss) in &self.cgroup_lost {
            for (cause, n) in [
                ("ringbuf_full", loss.ringbuf_full),
                ("inflight", loss.inflight),
                ("tracepoint_unread", loss.unread),
            ] {
                let labels = [("cgroup", cgroup.as_str()), ("cause", cause)];
                ConstCounter::new(n).encode(family.encode_family(&labels)?)?;
            }
        }
        let gauges = [
            (
                "cimplifier_session_events",
                "Events recorded by the stored sessions.",
                self.session_events,
            ),
            (
                "cimplifier_session_lost_events",
                "Events the stored sessions lost.",
                self.session_lost,
            ),
            (
                "cimplifier_event_streams",
                "Clients streaming events now.",
                self.streams,
            ),
            (
                "cimplifier_tracing",
                "1 while the ring reader and the dispatcher run; 0 while they are restarted.",
                self.tracing,
            ),
            (
                "cimplifier_watched_cgroups",
                "Cgroups the tracer watches now for the sessions (and for labels).",
                self.watched_cgroups,
            ),
            (
                "cimplifier_store_bytes",
                "Size of the store file.",
                self.store_bytes,
            ),
            (
                "cimplifier_resident_memory_bytes",
                "The daemon's resident memory (models and buffers).",
                self.resident_bytes,
            ),
        ];
        for (name, help, value) in gauges {
            let g = ConstGauge::new(gauge(value));
            g.encode(encoder.encode_descriptor(name, help, None, g.metric_type())?)?;
        }
        Ok(())
    }
}

fn gauge(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

/// How long the heavy calls take, kept across scrapes.
#[derive(Debug, Clone)]
pub struct Timings {
    pub emit: Histogram,
    pub plan: Histogram,
}

impl Default for Timings {
    fn default() -> Self {
        // 0.1 s to about 7 minutes.
        let buckets = || exponential_buckets(0.1, 2.0, 13);
        Self {
            emit: Histogram::new(buckets()),
            plan: Histogram::new(buckets()),
        }
    }
}

/// The Prometheus text exposition of `snapshot` and `timings`.
pub fn render(snapshot: Snapshot, timings: &Timings) -> String {
    let mut registry = Registry::default();
    registry.register_collector(Box::new(snapshot));
    registry.register(
        "cimplifier_emit_seconds",
        "How long emits took, from the request to the report.",
        timings.emit.clone(),
    );
    registry.register(
        "cimplifier_plan_seconds",
        "How long plans took.",
        timings.plan.clone(),
    );
    let mut out = String::new();
    // Writing into a String cannot fail.
    let _ = prometheus_client::encoding::prometheus_text::encode(&mut out, &registry);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_exposition_names_every_metric_with_its_type() {
        let timings = Timings::default();
        timings.emit.observe(2.5);
        let text = render(
            Snapshot {
                sessions_closed: 1,
                tracer_events: 7,
                resident_bytes: 4096,
                cgroup_lost: vec![(
                    "/sys/fs/cgroup/docker/abc".to_owned(),
                    crate::trace::CgroupLoss {
                        ringbuf_full: 3,
                        ..Default::default()
                    },
                )],
                ..Default::default()
            },
            &timings,
        );
        for line in [
            "cimplifier_sessions{state=\"closed\"} 1",
            "# TYPE cimplifier_events_total counter",
            "cimplifier_events_total 7",
            "cimplifier_event_streams_cut_off_total 0",
            "cimplifier_reader_restarts_total 0",
            "# TYPE cimplifier_resident_memory_bytes gauge",
            "cimplifier_resident_memory_bytes 4096",
            "# TYPE cimplifier_emit_seconds histogram",
            "cimplifier_emit_seconds_count 1",
            "cimplifier_plan_seconds_count 0",
            "# TYPE cimplifier_cgroup_lost_events_total counter",
            "cimplifier_cgroup_lost_events_total{cgroup=\"/sys/fs/cgroup/docker/abc\",cause=\"ringbuf_full\"} 3",
            "cimplifier_cgroup_lost_events_total{cgroup=\"/sys/fs/cgroup/docker/abc\",cause=\"inflight\"} 0",
            "cimplifier_missed_program_runs_total 0",
        ] {
            assert!(text.contains(line), "{line} in:\n{text}");
        }
    }
}
