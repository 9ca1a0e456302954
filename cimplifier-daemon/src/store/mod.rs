//! The daemon's embedded store (redb, one file in the state directory):
//! every session's record and the events it observed, so a daemon that is
//! killed loses at most what it had not yet checkpointed (≤ 500 ms) and a
//! restarted one carries on. Why redb: docs/store.md. The record types
//! (what a session is: how it began and ended, its segments and gaps)
//! are in `record.rs`.
//!
//! Tables:
//! - `sessions`: session name → [`SessionRecord`] as JSON.
//! - `events`: (session id, sequence number) → one [`Event`] as JSON.
//! - `meta`: `next_session_id`.
//! - `selectors`: label selectors (`key=value`) given to `observe`, so
//!   they outlive a restart of the daemon.
//! - `quarantine`: records found unreadable at start-up (by session name,
//!   `~N` added when taken), as they were, moved aside so the daemon starts.

use std::io::{BufRead, Read};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};

use crate::docker::run::RunSettings;
use crate::model::Model;
use crate::trace::{Event, LossCounters};

mod record;

pub use record::{
    EndReason, FOREIGN_NAMED, Gap, LifecycleStep, Segment, SessionRecord, SessionState, Started,
};

const SESSIONS: TableDefinition<&str, &[u8]> = TableDefinition::new("sessions");
const EVENTS: TableDefinition<(u64, u64), &[u8]> = TableDefinition::new("events");
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
const QUARANTINE: TableDefinition<&str, &[u8]> = TableDefinition::new("quarantine");
const SELECTORS: TableDefinition<&str, u8> = TableDefinition::new("selectors");
/// Session ids of imports in progress; their events go if the daemon dies.
const PENDING_IMPORTS: TableDefinition<u64, ()> = TableDefinition::new("pending_imports");

/// Events an import writes per transaction: bounds the memory and the time
/// the write lock is held, whatever the bundle's size.
const IMPORT_BATCH: usize = 4096;
/// No event's line comes near this; a longer one is refused, not buffered.
const MAX_BUNDLE_LINE: u64 = 1 << 20;

/// The store's page cache.
const CACHE_BYTES: usize = 16 << 20;

/// The store's file name inside the state directory.
pub const FILE_NAME: &str = "cimplifier.redb";

pub struct Store {
    db: Database,
    path: PathBuf,
}

/// A closed session already has the name an import or a merge would give.
/// Nothing replaces a session silently: its events would be lost.
#[derive(Debug, thiserror::Error)]
#[error(
    "a session named {0} exists already; pass --replace to replace it (its events are deleted), \
     or give another name"
)]
pub struct SessionExists(pub String);

/// Whether a new session may take the name of a closed one.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum OnExisting {
    /// Refuse with [`SessionExists`].
    #[default]
    Refuse,
    /// Delete the old session (record and events) once the new one is in.
    Replace,
}

fn json_err(what: &str) -> impl FnOnce(serde_json::Error) -> anyhow::Error + '_ {
    move |e| anyhow::anyhow!("{what}: {e}")
}

impl Store {
    /// Opens (or creates) the store in `state_dir`. Fails when another
    /// daemon holds it.
    pub fn open(state_dir: &Path) -> Result<Self> {
        std::fs::create_dir_all(state_dir)
            .with_context(|| format!("creating the state directory {}", state_dir.display()))?;
        let path = state_dir.join(FILE_NAME);
        // redb caches up to 1 GiB by default, growing with the file; the
        // daemon reads little back, so a small cache keeps memory flat.
        let db = redb::Builder::new()
            .set_cache_size(CACHE_BYTES)
            .create(&path)
            .map_err(|e| {
                // Blame another daemon only when the lock says so.
                let hint = match &e {
                    redb::DatabaseError::DatabaseAlreadyOpen
                    | redb::DatabaseError::LockProtocolMismatch => {
                        "another cimplifierd is using this --state-dir: stop it, or pass another"
                    }
                    redb::DatabaseError::Storage(redb::StorageError::Io(io))
                        if matches!(
                            io.kind(),
                            std::io::ErrorKind::PermissionDenied
                                | std::io::ErrorKind::ReadOnlyFilesystem
                        ) =>
                    {
                        "the state directory is not writable (read-only file system, or \
                         permissions): give a writable --state-dir"
                    }
                    _ => "check the state directory (--state-dir)",
                };
                anyhow::Error::new(e)
                    .context(format!("opening the store {} ({hint})", path.display()))
            })?;
        let txn = db.begin_write()?;
        txn.open_table(SESSIONS)?;
        txn.open_table(EVENTS)?;
        txn.open_table(META)?;
        txn.open_table(QUARANTINE)?;
        txn.open_table(SELECTORS)?;
        txn.open_table(PENDING_IMPORTS)?;
        txn.commit()?;
        let store = Self { db, path };
        store.drop_pending_imports()?;
        store.quarantine_unreadable()?;
        Ok(store)
    }

    /// The state directory the store lives in; also where images are
    /// spooled while they are read.
    pub fn state_dir(&self) -> &Path {
        self.path.parent().unwrap_or(Path::new("."))
    }

    /// Moves every session record that does not parse (damaged, or written
    /// by a newer cimplifier) to the `quarantine` table, as it is, so one
    /// bad record does not keep the daemon from starting. Each is named in
    /// the log; [`Store::quarantined`] lists them. Their events stay.
    fn quarantine_unreadable(&self) -> Result<()> {
        let txn = self.db.begin_write()?;
        let mut moved = Vec::new();
        {
            let mut sessions = txn.open_table(SESSIONS)?;
            let mut quarantine = txn.open_table(QUARANTINE)?;
            let mut bad = Vec::new();
            for entry in sessions.iter()? {
                let (name, value) = entry?;
                if let Err(e) = serde_json::from_slice::<SessionRecord>(value.value()) {
                    bad.push((name.value().to_owned(), value.value().to_vec(), e));
                }
            }
            for (name, bytes, e) in bad {
                let mut key = name.clone();
                let mut n = 1;
                while quarantine.get(key.as_str())?.is_some() {
                    n += 1;
                    key = format!("{name}~{n}");
                }
                quarantine.insert(key.as_str(), bytes.as_slice())?;
                sessions.remove(name.as_str())?;
                moved.push((name, key, e));
            }
        }
        if moved.is_empty() {
            return Ok(());
        }
        txn.commit().with_context(|| {
            format!(
                "moving unreadable session records aside in {}",
                self.path.display()
            )
        })?;
        for (name, key, e) in moved {
            tracing::error!(
                session = %name,
                quarantined_as = %key,
                store = %self.path.display(),
                "an unreadable session record was quarantined (kept as it was in the store's \
                 `quarantine` table; its events are kept): {e}"
            );
        }
        Ok(())
    }

    /// Keeps a label selector for later starts of the daemon.
    pub fn add_selector(&self, selector: &str) -> Result<()> {
        let txn = self.db.begin_write()?;
        txn.open_table(SELECTORS)?.insert(selector, 1)?;
        txn.commit()
            .with_context(|| format!("storing a label selector in {}", self.path.display()))?;
        Ok(())
    }

    /// Forgets a label selector; whether it was kept.
    pub fn remove_selector(&self, selector: &str) -> Result<bool> {
        let txn = self.db.begin_write()?;
        let removed = txn.open_table(SELECTORS)?.remove(selector)?.is_some();
        txn.commit()
            .with_context(|| format!("forgetting a label selector in {}", self.path.display()))?;
        Ok(removed)
    }

    /// The label selectors kept with [`Store::add_selector`].
    pub fn selectors(&self) -> Result<Vec<String>> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(SELECTORS)?;
        table
            .iter()?
            .map(|entry| Ok(entry?.0.value().to_owned()))
            .collect()
    }

    /// The quarantined records: the name each is kept under, and why it
    /// could not be read.
    pub fn quarantined(&self) -> Result<Vec<(String, String)>> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(QUARANTINE)?;
        let mut out = Vec::new();
        for entry in table.iter()? {
            let (name, value) = entry?;
            let why = match serde_json::from_slice::<SessionRecord>(value.value()) {
                Err(e) => e.to_string(),
                Ok(_) => "readable now (a newer cimplifier wrote it?)".to_owned(),
            };
            out.push((name.value().to_owned(), why));
        }
        Ok(out)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// A fresh id for a new session's events.
    pub fn next_session_id(&self) -> Result<u64> {
        let txn = self.db.begin_write()?;
        let id = {
            let mut meta = txn.open_table(META)?;
            let id = meta.get("next_session_id")?.map_or(1, |v| v.value());
            meta.insert("next_session_id", id + 1)?;
            id
        };
        txn.commit()?;
        Ok(id)
    }

    /// Writes a session's record, replacing (and dropping the events of) any
    /// earlier session of that name with another id.
    pub fn put_session(&self, record: &SessionRecord) -> Result<()> {
        self.append(record, &[])
    }

    /// Appends events (numbered from `record.events - events.len()`) and
    /// writes the record, in one durable transaction.
    pub fn append(&self, record: &SessionRecord, events: &[Event]) -> Result<()> {
        let txn = self.db.begin_write()?;
        {
            let mut sessions = txn.open_table(SESSIONS)?;
            let mut table = txn.open_table(EVENTS)?;
            let old_id = match sessions.get(record.name.as_str())? {
                Some(old) => Some(
                    serde_json::from_slice::<SessionRecord>(old.value())
                        .map_err(json_err("a stored session record"))?
                        .id,
                ),
                None => None,
            };
            if let Some(old) = old_id.filter(|&old| old != record.id) {
                table.retain_in((old, 0)..=(old, u64::MAX), |_, _| false)?;
            }
            let first = record.events - events.len() as u64;
            for (i, e) in events.iter().enumerate() {
                let bytes = serde_json::to_vec(e)?;
                table.insert((record.id, first + i as u64), bytes.as_slice())?;
            }
            let bytes = serde_json::to_vec(record)?;
            sessions.insert(record.name.as_str(), bytes.as_slice())?;
        }
        txn.commit()
            .with_context(|| format!("committing to the store {}", self.path.display()))?;
        Ok(())
    }

    pub fn session(&self, name: &str) -> Result<Option<SessionRecord>> {
        let txn = self.db.begin_read()?;
        let sessions = txn.open_table(SESSIONS)?;
        sessions
            .get(name)?
            .map(|v| serde_json::from_slice(v.value()).map_err(json_err("a stored session record")))
            .transpose()
    }

    pub fn sessions(&self) -> Result<Vec<SessionRecord>> {
        let txn = self.db.begin_read()?;
        let sessions = txn.open_table(SESSIONS)?;
        let mut out = Vec::new();
        for entry in sessions.iter()? {
            let (_, v) = entry?;
            out.push(
                serde_json::from_slice(v.value()).map_err(json_err("a stored session record"))?,
            );
        }
        Ok(out)
    }

    pub fn delete_session(&self, name: &str) -> Result<bool> {
        let Some(record) = self.session(name)? else {
            return Ok(false);
        };
        let txn = self.db.begin_write()?;
        {
            txn.open_table(SESSIONS)?.remove(name)?;
            txn.open_table(EVENTS)?
                .retain_in((record.id, 0)..=(record.id, u64::MAX), |_, _| false)?;
        }
        txn.commit()?;
        Ok(true)
    }

    /// Calls `f` with each event of the session in order, with the segment
    /// it belongs to.
    pub fn for_each_event(
        &self,
        record: &SessionRecord,
        mut f: impl FnMut(&Segment, Event) -> Result<()>,
    ) -> Result<()> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(EVENTS)?;
        let mut segments = record.segments.iter().peekable();
        let Some(mut segment) = segments.next() else {
            return Ok(());
        };
        for entry in table.range((record.id, 0)..(record.id, record.events))? {
            let (key, value) = entry?;
            let seq = key.value().1;
            while let Some(next) = segments.next_if(|s| s.first_event <= seq) {
                segment = next;
            }
            let event: Event = serde_json::from_slice(value.value())
                .with_context(|| format!("event {seq} of session {} in the store", record.name))?;
            f(segment, event)?;
        }
        Ok(())
    }

    /// Folds the session's events into `model`, segment by segment;
    /// `also` sees each event too.
    pub fn fold(
        &self,
        record: &SessionRecord,
        model: &mut Model,
        mut also: impl FnMut(&Event),
    ) -> Result<()> {
        let mut current = None;
        self.for_each_event(record, |segment, event| {
            if current != Some(segment.first_event) {
                model.forget_processes();
                current = Some(segment.first_event);
            }
            also(&event);
            model.apply(&event);
            Ok(())
        })
    }
}

/// The first line of a session bundle (`cimplifierctl export`); the
/// session's events follow, one JSON object per line.
#[derive(Serialize, Deserialize)]
struct BundleHeader {
    format: String,
    version: u32,
    session: SessionRecord,
}

/// Reads a bundle's non-empty lines one at a time, each at most
/// [`MAX_BUNDLE_LINE`] bytes.
#[derive(Default)]
struct BundleLines {
    buf: Vec<u8>,
    /// The 1-based number of the line last returned.
    number: u64,
}

impl BundleLines {
    fn next(&mut self, from: &mut impl BufRead) -> Result<Option<&[u8]>> {
        loop {
            self.buf.clear();
            self.number += 1;
            let n = from
                .take(MAX_BUNDLE_LINE + 1)
                .read_until(b'\n', &mut self.buf)
                .with_context(|| format!("reading bundle line {}", self.number))?;
            if n == 0 {
                return Ok(None);
            }
            if self.buf.len() as u64 > MAX_BUNDLE_LINE {
                bail!(
                    "bundle line {} is longer than {} KiB: not a bundle `cimplifierctl export` \
                     writes",
                    self.number,
                    MAX_BUNDLE_LINE >> 10
                );
            }
            if self.buf.last() == Some(&b'\n') {
                self.buf.pop();
            }
            if !self.buf.is_empty() {
                return Ok(Some(&self.buf));
            }
        }
    }
}

pub const BUNDLE_FORMAT: &str = "cimplifier-session-bundle";
pub const BUNDLE_VERSION: u32 = 1;

impl Store {
    /// Writes a closed session as a bundle.
    pub fn export(&self, record: &SessionRecord, out: &mut dyn std::io::Write) -> Result<()> {
        let header = BundleHeader {
            format: BUNDLE_FORMAT.into(),
            version: BUNDLE_VERSION,
            session: record.clone(),
        };
        serde_json::to_writer(&mut *out, &header)?;
        out.write_all(b"\n")?;
        self.for_each_event(record, |_, e| {
            serde_json::to_writer(&mut *out, &e)?;
            out.write_all(b"\n")?;
            Ok(())
        })
    }

    /// Stores a bundle under `name` (its own when None). A closed session
    /// of that name is replaced only with [`OnExisting::Replace`]; an
    /// observing one never is.
    pub fn import(
        &self,
        bundle: &[u8],
        name: Option<&str>,
        existing: OnExisting,
    ) -> Result<SessionRecord> {
        self.import_from(bundle, name, existing)
    }

    /// [`Store::import`] read as a stream: the events go in batches of
    /// [`IMPORT_BATCH`], each its own transaction, under an id no record
    /// names yet (marked pending, so a daemon killed half-way deletes them
    /// at its next start). The record comes last, in one transaction with
    /// the removal of the mark, so the session appears whole or not at all.
    pub fn import_from(
        &self,
        mut bundle: impl BufRead,
        name: Option<&str>,
        existing: OnExisting,
    ) -> Result<SessionRecord> {
        let mut lines = BundleLines::default();
        let header = lines.next(&mut bundle)?.unwrap_or_default();
        let header: BundleHeader = serde_json::from_slice(header).map_err(|e| {
            anyhow::anyhow!(
                "not a session bundle (line 1: {e}); bundles are written by `cimplifierctl export`"
            )
        })?;
        if header.format != BUNDLE_FORMAT || header.version != BUNDLE_VERSION {
            bail!(
                "bundle format {} version {} is not {BUNDLE_FORMAT} version {BUNDLE_VERSION}",
                header.format,
                header.version
            );
        }
        let mut record = header.session;
        if record.state != SessionState::Closed {
            bail!(
                "the bundle's session {} was still observing when exported",
                record.name
            );
        }
        if let Some(name) = name {
            record.name = name.to_owned();
        }
        check_session_name(&record.name)?;
        self.refuse_observing(&record.name)?;
        self.taken(&record.name, existing)?;
        check_bundle_record(&record)?;
        record.id = self.next_session_id()?;
        self.mark_pending(record.id, true)?;
        let stored = self.import_events(&mut bundle, &mut lines, &record);
        let finished = stored.and_then(|()| self.finish_import(&record, existing));
        if finished.is_err() {
            // What was written under the new id goes; the mark goes last,
            // so a failure here is cleaned up at the next start.
            let _ = self
                .delete_events(record.id)
                .and_then(|()| self.mark_pending(record.id, false));
        }
        finished.map(|()| record)
    }

    fn import_events(
        &self,
        bundle: &mut impl BufRead,
        lines: &mut BundleLines,
        record: &SessionRecord,
    ) -> Result<()> {
        let mut batch: Vec<Event> = Vec::with_capacity(IMPORT_BATCH);
        let mut count = 0u64;
        while let Some(line) = lines.next(bundle)? {
            let event = serde_json::from_slice(line)
                .with_context(|| format!("bundle line {}: not an event", lines.number))?;
            if count == record.events {
                bail!(
                    "the bundle says {} events but holds more: it is not one export; export it \
                     again",
                    record.events
                );
            }
            batch.push(event);
            count += 1;
            if batch.len() == IMPORT_BATCH {
                self.put_events(record.id, count - batch.len() as u64, &batch)?;
                batch.clear();
            }
        }
        self.put_events(record.id, count - batch.len() as u64, &batch)?;
        if count != record.events {
            bail!(
                "the bundle says {} events but holds {count}: it was cut off; export it again",
                record.events
            );
        }
        Ok(())
    }

    /// Writes `events` of session `id`, numbered from `first`.
    fn put_events(&self, id: u64, first: u64, events: &[Event]) -> Result<()> {
        if events.is_empty() {
            return Ok(());
        }
        let txn = self.db.begin_write()?;
        {
            let mut table = txn.open_table(EVENTS)?;
            for (i, e) in events.iter().enumerate() {
                let bytes = serde_json::to_vec(e)?;
                table.insert((id, first + i as u64), bytes.as_slice())?;
            }
        }
        txn.commit()
            .with_context(|| format!("committing to the store {}", self.path.display()))?;
        Ok(())
    }

    /// Marks (or unmarks) `id` as an import in progress.
    fn mark_pending(&self, id: u64, pending: bool) -> Result<()> {
        let txn = self.db.begin_write()?;
        {
            let mut table = txn.open_table(PENDING_IMPORTS)?;
            if pending {
                table.insert(id, ())?;
            } else {
                table.remove(id)?;
            }
        }
        txn.commit()?;
        Ok(())
    }

    /// The imported session's record, in place of any it replaces (whose
    /// events go), and the pending mark removed: one transaction.
    fn finish_import(&self, record: &SessionRecord, existing: OnExisting) -> Result<()> {
        let txn = self.db.begin_write()?;
        {
            let mut sessions = txn.open_table(SESSIONS)?;
            let old = match sessions.get(record.name.as_str())? {
                Some(old) => Some(
                    serde_json::from_slice::<SessionRecord>(old.value())
                        .map_err(json_err("a stored session record"))?,
                ),
                None => None,
            };
            // Checked again: another call may have taken the name meanwhile.
            if let Some(old) = old {
                if existing == OnExisting::Refuse || old.state == SessionState::Observing {
                    return Err(SessionExists(record.name.clone()).into());
                }
                txn.open_table(EVENTS)?
                    .retain_in((old.id, 0)..=(old.id, u64::MAX), |_, _| false)?;
            }
            let bytes = serde_json::to_vec(record)?;
            sessions.insert(record.name.as_str(), bytes.as_slice())?;
            txn.open_table(PENDING_IMPORTS)?.remove(record.id)?;
        }
        txn.commit()
            .with_context(|| format!("committing to the store {}", self.path.display()))?;
        Ok(())
    }

    /// Deletes the events of imports a killed daemon left half-done.
    fn drop_pending_imports(&self) -> Result<()> {
        let pending: Vec<u64> = {
            let txn = self.db.begin_read()?;
            let table = txn.open_table(PENDING_IMPORTS)?;
            table
                .iter()?
                .map(|e| e.map(|(id, _)| id.value()))
                .collect::<Result<_, _>>()?
        };
        for id in pending {
            tracing::warn!(
                "deleting the events of an import that did not finish (session id {id})"
            );
            self.delete_events(id)?;
            self.mark_pending(id, false)?;
        }
        Ok(())
    }

    /// A new closed session `into` holding every event of `sources`, each
    /// source's segments kept apart. The sources must be closed and of one
    /// image.
    pub fn merge(
        &self,
        into: &str,
        sources: &[String],
        existing: OnExisting,
    ) -> Result<SessionRecord> {
        check_session_name(into)?;
        if sources.len() < 2 {
            bail!("give at least two sessions to merge");
        }
        if sources.iter().any(|s| s == into) {
            bail!("merge into a new name, not into one of the sessions merged ({into})");
        }
        self.refuse_observing(into)?;
        let old = self.taken(into, existing)?;
        let mut records = Vec::new();
        for name in sources {
            let r = self.session(name)?.with_context(|| {
                format!("no session {name:?}: `cimplifierctl sessions` lists them")
            })?;
            if r.state != SessionState::Closed {
                bail!("session {name} is still observing; `cimplifierctl stop {name}` first");
            }
            records.push(r);
        }
        let first = &records[0];
        if let Some(other) = records
            .iter()
            .find(|r| r.started.image_id != first.started.image_id)
        {
            bail!(
                "sessions {} ({}) and {} ({}) observed different images; merge only sessions of one image",
                first.name,
                first.started.image_id,
                other.name,
                other.started.image_id
            );
        }
        // Sources that ran the image alike (the same command, environment,
        // user...; host ports may differ from node to node, all are kept)
        // give the merge their settings. Sources that ran it differently
        // (one workload per command, say) are merged all the same, for
        // their files; the merged session then has no run settings, and
        // says why, so emit falls back to the image's config and says so.
        let (run, run_not_merged) = match RunSettings::merge(
            records
                .iter()
                .filter_map(|r| r.run.as_deref().map(|run| (r.name.as_str(), run))),
        ) {
            Ok(run) => (run.map(Box::new), None),
            Err(why) => (None, Some(why)),
        };
        let mut merged = SessionRecord {
            name: into.to_owned(),
            id: self.next_session_id()?,
            started: Started {
                container_name: into.to_owned(),
                from_first_exec: records.iter().all(|r| r.started.from_first_exec),
                ..first.started.clone()
            },
            state: SessionState::Closed,
            end: Some(EndReason::Stopped),
            duration_ms: 0,
            events: 0,
            aggregated: 0,
            kernel_folded: 0,
            loss: LossCounters::default(),
            foreign_programs: Default::default(),
            segments: vec![],
            gaps: vec![],
            checkpoint_unix_ms: 0,
            run,
            run_not_merged,
            containerd: first.containerd.clone(),
            // Every step any source went through, in the usual order.
            lifecycle: LifecycleStep::ALL
                .into_iter()
                .filter(|s| records.iter().any(|r| r.lifecycle.contains(s)))
                .collect(),
        };
        for r in &records {
            let mut events = Vec::with_capacity(r.events as usize);
            self.for_each_event(r, |_, e| {
                events.push(e);
                Ok(())
            })?;
            for s in &r.segments {
                merged.segments.push(Segment {
                    first_event: merged.events + s.first_event,
                    origin: format!("merged from {} ({})", r.name, s.origin),
                    ..s.clone()
                });
            }
            merged.events += events.len() as u64;
            merged.duration_ms += r.duration_ms;
            merged.aggregated += r.aggregated;
            merged.kernel_folded += r.kernel_folded;
            merged.loss = merged.loss.plus(r.loss);
            merged.name_foreign_programs(&r.foreign_programs);
            merged.gaps.extend(r.gaps.iter().cloned());
            merged.checkpoint_unix_ms = merged.checkpoint_unix_ms.max(r.checkpoint_unix_ms);
            self.append(&merged, &events)?;
        }
        if let Some(old) = old {
            self.delete_events(old)?;
        }
        Ok(merged)
    }

    /// The id of the closed session `name` that a new one may replace; an
    /// error when it may not.
    fn taken(&self, name: &str, existing: OnExisting) -> Result<Option<u64>> {
        match (self.session(name)?, existing) {
            (None, _) => Ok(None),
            (Some(_), OnExisting::Refuse) => Err(SessionExists(name.to_owned()).into()),
            (Some(old), OnExisting::Replace) => Ok(Some(old.id)),
        }
    }

    fn delete_events(&self, id: u64) -> Result<()> {
        let txn = self.db.begin_write()?;
        txn.open_table(EVENTS)?
            .retain_in((id, 0)..=(id, u64::MAX), |_, _| false)?;
        txn.commit()?;
        Ok(())
    }

    /// Deletes the closed sessions last written before `before_unix_ms`;
    /// returns their names.
    pub fn prune(&self, before_unix_ms: u64) -> Result<Vec<String>> {
        let mut pruned = Vec::new();
        for r in self.sessions()? {
            if r.state == SessionState::Closed
                && r.checkpoint_unix_ms < before_unix_ms
                && self.delete_session(&r.name)?
            {
                pruned.push(r.name);
            }
        }
        Ok(pruned)
    }

    fn refuse_observing(&self, name: &str) -> Result<()> {
        if let Some(r) = self.session(name)?
            && r.state == SessionState::Observing
        {
            bail!("session {name} is observing; pick another name or stop it first");
        }
        Ok(())
    }
}

/// What an imported record must hold for its events to be read as they
/// were recorded: segments that start at event 0, in order, within the
/// events; gaps that end after they begin; an image id as the engine
/// writes it.
fn check_bundle_record(r: &SessionRecord) -> Result<()> {
    let Some(first) = r.segments.first() else {
        bail!("the bundle's session has no segment: its events could not be read");
    };
    if first.first_event != 0 {
        bail!(
            "the bundle's first segment starts at event {}, not 0",
            first.first_event
        );
    }
    if let Some(w) = r
        .segments
        .windows(2)
        .find(|w| w[1].first_event < w[0].first_event)
    {
        bail!(
            "the bundle's segments are out of order (event {} after {})",
            w[1].first_event,
            w[0].first_event
        );
    }
    if let Some(s) = r.segments.iter().find(|s| s.first_event > r.events) {
        bail!(
            "a segment of the bundle starts at event {}, past its {} events",
            s.first_event,
            r.events
        );
    }
    if let Some(g) = r.gaps.iter().find(|g| g.to_unix_ms < g.from_unix_ms) {
        bail!(
            "a gap of the bundle ends ({}) before it begins ({})",
            g.to_unix_ms,
            g.from_unix_ms
        );
    }
    let id = &r.started.image_id;
    let hex = id.strip_prefix("sha256:").unwrap_or_default();
    if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        bail!("the bundle's image id {id:?} is not sha256:<64 hex digits>");
    }
    Ok(())
}

/// A valid session name for a merge or an import: what Docker allows in a
/// container name, so names never clash with paths or flags.
pub fn check_session_name(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 128
        && name
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_alphanumeric())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'));
    if !ok {
        bail!(
            "session name {name:?}: use 1 to 128 letters, digits, '_', '.' or '-', starting with a letter or digit"
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests;
