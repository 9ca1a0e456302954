//! What a session counts as lost: the records the kernel dropped of its own
//! cgroups, not of every watched container's, so one noisy container does
//! not mark the other sessions incomplete. Losses the kernel could not
//! charge to a cgroup, and records user space could not decode, count for
//! every session: nothing is lost without some session knowing.

use std::collections::{HashMap, HashSet};

use super::observer::Observer;
use crate::trace::{CgroupId, CgroupLoss, LossCounters, TracerCounters};

/// The counters when a session began, to count its losses from.
pub(super) struct LossBase {
    host: TracerCounters,
    /// Cgroups that existed before the session watched them (attaching to a
    /// running container): what they had lost before. A cgroup made after
    /// the watch began starts from nothing.
    cgroups: HashMap<CgroupId, CgroupLoss>,
    /// The same cgroups' repeats folded in the kernel before.
    folded: HashMap<CgroupId, u64>,
}

impl LossBase {
    /// Host-wide counters now; cgroups are added by [`LossBase::existing`].
    pub(super) fn new(observer: &Observer) -> Self {
        Self {
            host: observer.counters(),
            cgroups: HashMap::new(),
            folded: HashMap::new(),
        }
    }

    /// Counts the cgroups in `existing` from what they have lost so far.
    pub(super) fn existing(&mut self, observer: &Observer, existing: &HashSet<CgroupId>) {
        for &id in existing {
            self.cgroups.insert(id, observer.cgroup_loss(id));
            self.folded.insert(id, observer.cgroup_folded(id));
        }
    }

    /// The repeats the kernel folded of the session's cgroups since.
    pub(super) fn folded_since(&self, observer: &Observer, members: &HashSet<CgroupId>) -> u64 {
        members.iter().fold(0u64, |sum, id| {
            let base = self.folded.get(id).copied().unwrap_or_default();
            sum.saturating_add(observer.cgroup_folded(*id).saturating_sub(base))
        })
    }

    /// What the session whose cgroups are `members` has lost since.
    pub(super) fn since(&self, observer: &Observer, members: &HashSet<CgroupId>) -> LossCounters {
        let now = observer.counters();
        let mut loss = LossCounters {
            ringbuf_full: now.unattributed.saturating_sub(self.host.unattributed),
            user_read_faults: now
                .loss
                .user_read_faults
                .saturating_sub(self.host.loss.user_read_faults),
            undecodable: now
                .loss
                .undecodable
                .saturating_sub(self.host.loss.undecodable),
            // Which cgroup's runs the kernel skipped is unknown.
            missed_runs: now
                .loss
                .missed_runs
                .saturating_sub(self.host.loss.missed_runs),
            ..Default::default()
        };
        for &id in members {
            let lost = observer.cgroup_loss(id);
            let base = self.cgroups.get(&id).copied().unwrap_or_default();
            loss.ringbuf_full = loss
                .ringbuf_full
                .saturating_add(lost.ringbuf_full.saturating_sub(base.ringbuf_full));
            loss.inflight_full = loss
                .inflight_full
                .saturating_add(lost.inflight.saturating_sub(base.inflight));
            loss.tracepoint_unread = loss
                .tracepoint_unread
                .saturating_add(lost.unread.saturating_sub(base.unread));
        }
        loss
    }
}
