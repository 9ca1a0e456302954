//! Who ran what: each process's executable, followed through forks and
//! execs, for attributing events that the model does not fold.

use std::collections::HashMap;

use crate::trace::{ContainerPath, Event, EventKind};

/// Who ran what, per process, from forks, execs and processes met running.
#[derive(Default)]
pub struct ExeTracker(HashMap<u32, ContainerPath>);

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
            }
            EventKind::Running { exe: Some(exe), .. } => {
                self.0.insert(e.pid, exe.clone());
            }
            EventKind::Exit {
                process_exited: true,
            } => return self.0.remove(&e.pid),
            _ => {
                if let Some(exe) = crate::model::exec_path(e) {
                    self.0.insert(e.pid, exe);
                }
            }
        }
        self.0.get(&e.pid).cloned()
    }
}
