//! Who ran what: each process's executable, followed through forks and
//! execs, for attributing events that the model does not fold.

use std::collections::HashMap;

use crate::trace::{ContainerPath, Event, EventKind};

/// Who ran what, per process, from forks, execs and processes met running.
#[derive(Default)]
pub struct ExeTracker(
    HashMap<u32, ContainerPath>,
    HashMap<u32, super::privileged::Uid>,
);

impl ExeTracker {
    /// The executable of the event's process once the event happened.
    pub fn exe_after(&mut self, e: &Event) -> Option<ContainerPath> {
        match &e.kind {
            EventKind::Fork {
                child_pid,
                thread: false,
                ..
            } => {
                if let Some(exe) = self.0.get(&e.pid).cloned() {
                    self.0.insert(*child_pid, exe);
                }
                if let Some(&uid) = self.1.get(&e.pid) {
                    self.1.insert(*child_pid, uid);
                }
            }
            EventKind::Running { exe: Some(exe), .. } => {
                self.0.insert(e.pid, exe.clone());
            }
            EventKind::Exit {
                process_exited: true,
            } => {
                self.1.remove(&e.pid);
                return self.0.remove(&e.pid);
            }
            _ => {
                if let Some(exe) = crate::model::exec_path(e) {
                    self.0.insert(e.pid, exe);
                }
                if let Some(s) = e.syscall()
                    && super::privileged::changes_credentials(s)
                {
                    let uid = self.uid(e.pid).after(s);
                    self.1.insert(e.pid, uid);
                }
            }
        }
        self.0.get(&e.pid).cloned()
    }

    /// The uid the process runs as, as far as its set*uid calls show.
    pub fn uid(&self, pid: u32) -> super::privileged::Uid {
        self.1.get(&pid).copied().unwrap_or_default()
    }
}
