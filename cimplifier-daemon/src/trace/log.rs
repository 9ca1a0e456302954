//! The replayable event log: JSON lines, documented in docs/event-log.md.
//!
//! Line 1 is a `header`, then one `event` per line, and a final `summary`
//! with the loss counters. A log without a summary was cut off (the tracer
//! crashed or the disk filled) and reads as incomplete.

use std::fs::File;
use std::io::{BufRead, BufReader, BufWriter, Write};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};

use super::{CgroupId, Event, LossCounters};

pub const FORMAT: &str = "cimplifier-event-log";
pub const VERSION: u32 = 1;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogHeader {
    pub format: String,
    pub version: u32,
    /// What was traced, as the user named it (`container nginx`, `cgroup /sys/...`).
    pub target: String,
    pub cgroup: CgroupId,
    pub cgroup_path: PathBuf,
    pub started_unix_ms: u64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogSummary {
    pub events: u64,
    pub duration_ms: u64,
    pub loss: LossCounters,
    /// True only when nothing was lost anywhere and every name was read.
    pub complete: bool,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "record", rename_all = "snake_case")]
#[serde(try_from = "super::wire::FlatRecord")]
pub enum LogLine {
    Header(LogHeader),
    Event(Box<Event>),
    Summary(LogSummary),
}

pub struct EventLogWriter {
    out: BufWriter<File>,
    path: PathBuf,
    events: u64,
    unreadable_names: u64,
    foreign_programs: u64,
}

impl EventLogWriter {
    pub fn create(path: &Path, header: LogHeader) -> Result<Self> {
        let file =
            File::create(path).with_context(|| format!("creating event log {}", path.display()))?;
        let mut w = Self {
            out: BufWriter::new(file),
            path: path.to_path_buf(),
            events: 0,
            unreadable_names: 0,
            foreign_programs: 0,
        };
        w.line(&LogLine::Header(header))?;
        Ok(w)
    }

    fn line(&mut self, line: &LogLine) -> Result<()> {
        serde_json::to_writer(&mut self.out, line)?;
        self.out
            .write_all(b"\n")
            .with_context(|| format!("writing event log {}", self.path.display()))
    }

    pub fn write(&mut self, event: &Event) -> Result<()> {
        self.events += 1;
        self.unreadable_names += event.unreadable_names();
        self.foreign_programs += event.foreign_programs();
        // Borrowing serialisation of the tagged line without cloning the event.
        #[derive(Serialize)]
        struct Tagged<'a> {
            record: &'static str,
            #[serde(flatten)]
            event: &'a Event,
        }
        serde_json::to_writer(
            &mut self.out,
            &Tagged {
                record: "event",
                event,
            },
        )?;
        self.out
            .write_all(b"\n")
            .with_context(|| format!("writing event log {}", self.path.display()))
    }

    pub fn events_written(&self) -> u64 {
        self.events
    }

    /// Writes the summary and flushes to disk. `loss` is the tracer's;
    /// the unreadable names are counted from the events written.
    pub fn finish(mut self, duration_ms: u64, loss: LossCounters) -> Result<LogSummary> {
        let loss = LossCounters {
            unreadable_names: self.unreadable_names,
            foreign_programs: self.foreign_programs,
            ..loss
        };
        let summary = LogSummary {
            events: self.events,
            duration_ms,
            loss,
            complete: loss.is_complete()
                && loss.unreadable_names == 0
                && loss.foreign_programs == 0,
        };
        self.line(&LogLine::Summary(summary.clone()))?;
        self.out.flush()?;
        self.out.get_ref().sync_all()?;
        Ok(summary)
    }
}

/// A whole log read back.
#[derive(Clone, Debug)]
pub struct EventLog {
    pub header: LogHeader,
    pub events: Vec<Event>,
    /// `None` when the log was cut off before its summary.
    pub summary: Option<LogSummary>,
}

impl EventLog {
    pub fn is_complete(&self) -> bool {
        self.summary.as_ref().is_some_and(|s| s.complete)
    }

    pub fn read(path: &Path) -> Result<Self> {
        let file =
            File::open(path).with_context(|| format!("opening event log {}", path.display()))?;
        Self::from_reader(BufReader::new(file), path)
    }

    /// Reads a log. A last line without its newline that does not parse
    /// was cut off (the tracer was killed mid-write): the log is read up to
    /// it, with a warning, and is incomplete (it has no summary).
    pub fn from_reader(mut reader: impl BufRead, name: &Path) -> Result<Self> {
        let mut header = None;
        let mut events = Vec::new();
        let mut summary = None;
        let mut bytes = Vec::new();
        for n in 1.. {
            bytes.clear();
            reader
                .read_until(b'\n', &mut bytes)
                .with_context(|| format!("{}:{n}: reading", name.display()))?;
            if bytes.is_empty() {
                break;
            }
            let whole = bytes.last() == Some(&b'\n');
            let parsed = std::str::from_utf8(&bytes)
                .map_err(anyhow::Error::from)
                .and_then(|line| {
                    if line.trim().is_empty() {
                        return Ok(None);
                    }
                    Ok(Some(serde_json::from_str::<LogLine>(line)?))
                });
            let parsed = match parsed {
                Ok(Some(p)) => p,
                Ok(None) => continue,
                Err(_) if !whole && header.is_some() => {
                    tracing::warn!(
                        "{}:{n}: the last line is cut off (the tracer was stopped while \
                         writing it); read up to it",
                        name.display()
                    );
                    break;
                }
                Err(e) => {
                    return Err(e.context(format!(
                        "{}:{n}: expected a JSON log record (header, event or summary)",
                        name.display()
                    )));
                }
            };
            match (parsed, &header) {
                (LogLine::Header(h), None) if n == 1 => {
                    if h.format != FORMAT || h.version != VERSION {
                        bail!(
                            "{}:1: log format {} v{} is not {FORMAT} v{VERSION}",
                            name.display(),
                            h.format,
                            h.version
                        );
                    }
                    header = Some(h)
                }
                (_, None) => bail!("{}:{n}: expected the header record first", name.display()),
                (LogLine::Header(_), Some(_)) => {
                    bail!("{}:{n}: a second header record", name.display())
                }
                (LogLine::Event(e), Some(_)) if summary.is_none() => events.push(*e),
                (LogLine::Summary(s), Some(_)) if summary.is_none() => summary = Some(s),
                (_, Some(_)) => bail!("{}:{n}: records after the summary", name.display()),
            }
        }
        let header = header.with_context(|| format!("{}: empty event log", name.display()))?;
        Ok(Self {
            header,
            events,
            summary,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::trace::EventKind;

    fn header() -> LogHeader {
        LogHeader {
            format: FORMAT.into(),
            version: VERSION,
            target: "cgroup /x".into(),
            cgroup: CgroupId(7),
            cgroup_path: "/x".into(),
            started_unix_ms: 1,
        }
    }

    #[test]
    fn writes_and_reads_back() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log.jsonl");
        let mut w = EventLogWriter::create(&path, header()).unwrap();
        let event = Event {
            ts_ns: 1,
            pid: 1,
            tid: 1,
            ppid: 0,
            cgroup: CgroupId(7),
            comm: "x".into(),
            kind: EventKind::Exit {
                process_exited: true,
            },
        };
        w.write(&event).unwrap();
        let unhooked = Event {
            kind: EventKind::Unhooked { nrs: vec![0, 1] },
            ..event.clone()
        };
        w.write(&unhooked).unwrap();
        let loss = LossCounters {
            ringbuf_full: 3,
            ..Default::default()
        };
        w.finish(10, loss).unwrap();
        let log = EventLog::read(&path).unwrap();
        assert_eq!(log.events, vec![event, unhooked]);
        assert!(
            !log.is_complete(),
            "3 lost events must make the log incomplete"
        );
        assert_eq!(log.summary.unwrap().loss.ringbuf_full, 3);
    }

    #[test]
    fn unreadable_names_make_the_log_incomplete() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log.jsonl");
        let mut w = EventLogWriter::create(&path, header()).unwrap();
        let line = r#"{"ts_ns":1,"pid":1,"tid":1,"ppid":0,"cgroup":7,"comm":"x","event":"syscall",
            "syscall":"execve","nr":59,"args":[0,0,0,0,0,0],"ret":0,
            "paths":[{"role":"target","raw":"","status":"unreadable"}]}"#;
        let event: Event = serde_json::from_str(line).unwrap();
        w.write(&event).unwrap();
        let summary = w.finish(10, LossCounters::default()).unwrap();
        assert_eq!(summary.loss.unreadable_names, 1);
        assert_eq!(summary.loss.lost(), 0);
        assert!(!EventLog::read(&path).unwrap().is_complete());
    }

    #[test]
    fn a_program_of_another_abi_makes_the_log_incomplete() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log.jsonl");
        let mut w = EventLogWriter::create(&path, header()).unwrap();
        let line = r#"{"ts_ns":1,"pid":1,"tid":1,"ppid":0,"cgroup":7,"comm":"x",
            "event":"foreign_abi","elf_class":1,"machine":3}"#;
        let event: Event = serde_json::from_str(line).unwrap();
        assert_eq!(
            event.kind,
            EventKind::ForeignAbi {
                elf_class: 1,
                machine: 3
            }
        );
        w.write(&event).unwrap();
        let summary = w.finish(10, LossCounters::default()).unwrap();
        assert_eq!((summary.loss.foreign_programs, summary.loss.lost()), (1, 0));
        let log = EventLog::read(&path).unwrap();
        assert!(!log.is_complete());
        assert_eq!(log.events, vec![event]);
    }

    #[test]
    fn a_cut_off_last_line_is_read_up_to() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log.jsonl");
        let mut w = EventLogWriter::create(&path, header()).unwrap();
        let line = r#"{"ts_ns":1,"pid":1,"tid":1,"ppid":0,"cgroup":7,"comm":"x","event":"syscall",
            "syscall":"execve","nr":59,"args":[0,0,0,0,0,0],"ret":0,"paths":[]}"#;
        w.write(&serde_json::from_str(line).unwrap()).unwrap();
        w.finish(10, LossCounters::default()).unwrap();
        let written = std::fs::read_to_string(&path).unwrap();
        let mut lines: Vec<&str> = written.lines().collect();
        // The summary cut off half-way, as by a kill.
        let summary = lines.pop().unwrap();
        let (header, event) = (lines[0], lines[1]);
        let text = format!("{header}\n{event}\n{}", &summary[..summary.len() / 2]);
        let log = EventLog::from_reader(text.as_bytes(), Path::new("cut.jsonl")).unwrap();
        assert_eq!(log.events.len(), 1);
        assert!(!log.is_complete(), "no summary: cut off");
        // A whole line that does not parse is an error, named by its line.
        let text = format!("{header}\nnot json\n{event}\n");
        let err = EventLog::from_reader(text.as_bytes(), Path::new("bad.jsonl")).unwrap_err();
        assert!(format!("{err:#}").contains("bad.jsonl:2"), "{err:#}");
    }

    #[test]
    fn errors_name_the_file_and_line() {
        let text = format!(
            "{}\nnot json\n",
            serde_json::to_string(&LogLine::Header(header())).unwrap()
        );
        let err = EventLog::from_reader(text.as_bytes(), Path::new("t.jsonl")).unwrap_err();
        assert!(format!("{err:#}").contains("t.jsonl:2"), "{err:#}");
        let cut = serde_json::to_string(&LogLine::Header(header())).unwrap();
        let log = EventLog::from_reader(cut.as_bytes(), Path::new("t.jsonl")).unwrap();
        assert!(!log.is_complete(), "a log without a summary was cut off");
    }
}
