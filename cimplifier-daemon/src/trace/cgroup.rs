//! cgroup v2 and /proc facts the tracer needs: ids, members, and the state
//! of processes that were running before a watch began.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, anyhow};

use super::{CgroupId, ContainerPath};

/// Where the cgroup v2 hierarchy is mounted (`/sys/fs/cgroup` on unified
/// hosts, `/sys/fs/cgroup/unified` on hybrid ones like these machines).
pub fn cgroup2_mount() -> Result<PathBuf> {
    let mountinfo =
        std::fs::read_to_string("/proc/self/mountinfo").context("reading /proc/self/mountinfo")?;
    mountinfo
        .lines()
        .find_map(|line| {
            let (left, right) = line.split_once(" - ")?;
            let mount_point = left.split_whitespace().nth(4)?;
            (right.split_whitespace().next()? == "cgroup2").then(|| PathBuf::from(mount_point))
        })
        .ok_or_else(|| anyhow!("no cgroup2 file system is mounted; cimplifier needs cgroup v2"))
}

/// The id of a cgroup directory: its inode number, which is what the kernel
/// programs see from `bpf_get_current_cgroup_id()`.
pub fn cgroup_id(dir: &Path) -> Result<CgroupId> {
    let meta = std::fs::metadata(dir)
        .with_context(|| format!("cgroup {} does not exist or is not readable", dir.display()))?;
    if !dir.join("cgroup.procs").exists() {
        return Err(anyhow!(
            "{} is not a cgroup v2 directory (no cgroup.procs); give a path under {}",
            dir.display(),
            cgroup2_mount()
                .map(|p| p.display().to_string())
                .unwrap_or_default()
        ));
    }
    Ok(CgroupId(meta.ino()))
}

/// The cgroup v2 directory of a process, from `/proc/PID/cgroup`.
pub fn cgroup_of_pid(pid: u32) -> Result<PathBuf> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/cgroup"))
        .with_context(|| format!("reading /proc/{pid}/cgroup: has process {pid} exited?"))?;
    let rel = text
        .lines()
        .find_map(|l| l.strip_prefix("0::"))
        .ok_or_else(|| {
            anyhow!("process {pid} has no cgroup v2 membership in /proc/{pid}/cgroup")
        })?;
    Ok(cgroup2_mount()?.join(rel.trim_start_matches('/')))
}

/// The cgroup at `dir` and every cgroup below it.
pub fn cgroups_below(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        if let Ok(entries) = std::fs::read_dir(&d) {
            stack.extend(
                entries
                    .flatten()
                    .filter(|e| e.path().is_dir())
                    .map(|e| e.path()),
            );
        }
        out.push(d);
    }
    out
}

/// Processes in `dir` and every cgroup below it.
pub fn pids_below(dir: &Path) -> Vec<u32> {
    cgroups_below(dir)
        .iter()
        .filter_map(|d| std::fs::read_to_string(d.join("cgroup.procs")).ok())
        .flat_map(|text| {
            text.lines()
                .filter_map(|l| l.trim().parse::<u32>().ok())
                .collect::<Vec<_>>()
        })
        .collect()
}

/// How deep the cgroup at `dir` lies: 0 for the cgroup2 root, 1 for its
/// children, and so on (the kernel's `cgroup->level`).
pub fn cgroup_level(dir: &Path) -> Result<usize> {
    let mount = cgroup2_mount()?;
    let real = std::fs::canonicalize(dir)
        .with_context(|| format!("cgroup {} does not exist or is not readable", dir.display()))?;
    let rel = real.strip_prefix(&mount).map_err(|_| {
        anyhow!(
            "{} is not under the cgroup v2 mount {}",
            dir.display(),
            mount.display()
        )
    })?;
    Ok(rel.components().count())
}

/// A cgroup v2 frozen (`cgroup.freeze`) until this is dropped: none of its
/// processes runs, forks or execs meanwhile. One found frozen already (a
/// paused container) is left frozen.
#[derive(Debug)]
pub struct Frozen {
    dir: PathBuf,
    thaw: bool,
}

impl Frozen {
    /// Freezes the cgroup at `dir` and waits until the kernel reports every
    /// process in it (and below) stopped, at most `timeout`.
    pub fn new(dir: &Path, timeout: std::time::Duration) -> Result<Self> {
        if cgroup_of_pid(std::process::id()).is_ok_and(|own| own.starts_with(dir)) {
            return Err(anyhow!(
                "this process runs in cgroup {} itself and would freeze with it",
                dir.display()
            ));
        }
        let file = dir.join("cgroup.freeze");
        let state = std::fs::read_to_string(&file)
            .with_context(|| format!("reading {}", file.display()))?;
        // On a hybrid host `docker pause` freezes through the v1 freezer,
        // which the v2 files do not show; v2 would then wait in vain.
        if state.trim() == "1" || frozen_by_v1_freezer(dir) {
            return Ok(Self {
                dir: dir.to_path_buf(),
                thaw: false,
            });
        }
        std::fs::write(&file, "1").with_context(|| format!("writing 1 to {}", file.display()))?;
        // From here on, dropping it (on an error too) thaws the cgroup.
        let frozen = Self {
            dir: dir.to_path_buf(),
            thaw: true,
        };
        let events = dir.join("cgroup.events");
        let deadline = std::time::Instant::now() + timeout;
        loop {
            let text = std::fs::read_to_string(&events)
                .with_context(|| format!("reading {}", events.display()))?;
            if text.lines().any(|l| l.trim() == "frozen 1") {
                return Ok(frozen);
            }
            if std::time::Instant::now() >= deadline {
                return Err(anyhow!(
                    "cgroup {} did not freeze within {timeout:?} (a process in uninterruptible \
                     sleep, or stopped by another freezer?)",
                    dir.display()
                ));
            }
            std::thread::sleep(std::time::Duration::from_micros(200));
        }
    }
}

/// Whether the processes of the v2 cgroup at `dir` are held by a frozen v1
/// freezer cgroup (hybrid hosts), judged by its first process.
fn frozen_by_v1_freezer(dir: &Path) -> bool {
    let Some(pid) = std::fs::read_to_string(dir.join("cgroup.procs"))
        .ok()
        .and_then(|t| t.lines().next()?.trim().parse::<u32>().ok())
    else {
        return false;
    };
    let Ok(mountinfo) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return false;
    };
    let Some(mount) = mountinfo.lines().find_map(|line| {
        let (left, right) = line.split_once(" - ")?;
        let mut fs = right.split_whitespace();
        let v1_freezer = fs.next()? == "cgroup" && fs.nth(1)?.split(',').any(|o| o == "freezer");
        let mount_point = left.split_whitespace().nth(4)?;
        v1_freezer.then(|| PathBuf::from(mount_point))
    }) else {
        return false;
    };
    let Ok(membership) = std::fs::read_to_string(format!("/proc/{pid}/cgroup")) else {
        return false;
    };
    membership
        .lines()
        .find_map(|l| {
            let mut parts = l.splitn(3, ':');
            let (_, controllers, path) = (parts.next()?, parts.next()?, parts.next()?);
            controllers.split(',').any(|c| c == "freezer").then(|| {
                mount
                    .join(path.trim_start_matches('/'))
                    .join("freezer.state")
            })
        })
        .and_then(|state| std::fs::read_to_string(state).ok())
        .is_some_and(|s| s.trim() == "FROZEN")
}

impl Drop for Frozen {
    fn drop(&mut self) {
        if !self.thaw {
            return;
        }
        let file = self.dir.join("cgroup.freeze");
        if let Err(e) = std::fs::write(&file, "0") {
            tracing::error!(
                "could not thaw cgroup {}: {e}; its processes stay stopped until `echo 0 > {}`",
                self.dir.display(),
                file.display()
            );
        }
    }
}

/// A process's root directory (`chroot`), as the container sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ProcessRoot {
    /// The container's root (`/`) or the directory the process chrooted to.
    Known(ContainerPath),
    /// Could not be learnt: the process's names cannot be placed in the
    /// container, and are reported unresolved with this reason.
    Unknown(String),
}

impl Default for ProcessRoot {
    fn default() -> Self {
        Self::Known(ContainerPath::root())
    }
}

/// A running process as /proc shows it, in the container's view of the file
/// system (not the process's own, when it is chrooted).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ProcessSnapshot {
    /// `None` when the process had exited (or was a zombie) before /proc
    /// could show its root: nothing is known of it then.
    pub root: Option<ProcessRoot>,
    pub cwd: Option<ContainerPath>,
    pub fds: Vec<(i32, ContainerPath)>,
    /// The file it is running (`/proc/PID/exe`).
    pub exe: Option<ContainerPath>,
    pub argv: Vec<String>,
    pub ppid: u32,
    pub comm: String,
}

/// `target` (as /proc shows it to us) in the view of a root that /proc shows
/// as `root`; `None` when it lies outside.
fn below(root: &str, target: &str) -> Option<ContainerPath> {
    let rel = if root == "/" {
        target
    } else {
        target.strip_prefix(root)?
    };
    if !rel.is_empty() && !rel.starts_with('/') {
        return None; // "/srv/ab" is not below "/srv/a"
    }
    ContainerPath::new(if rel.is_empty() { "/" } else { rel })
}

fn ppid_of(pid: u32) -> Option<u32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat[stat.rfind(')')? + 1..]
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

/// The container's root as /proc shows it to us: the root of the oldest
/// ancestor of `pid` in the same mount namespace (the container's init, or
/// the host's for a plain cgroup). A chroot changes a process's root but not
/// its mount namespace, so this is the root the process's chroot is below.
/// `Ok(None)` when the process is gone.
fn container_root(pid: u32) -> Result<Option<String>, String> {
    let mnt_ns = |p: u32| std::fs::read_link(format!("/proc/{p}/ns/mnt")).ok();
    let ns = match std::fs::read_link(format!("/proc/{pid}/ns/mnt")) {
        Ok(ns) => ns,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(format!("reading /proc/{pid}/ns/mnt: {e}")),
    };
    let mut top = pid;
    while let Some(parent) = ppid_of(top).filter(|&p| p != 0) {
        if mnt_ns(parent).as_ref() != Some(&ns) {
            break;
        }
        top = parent;
    }
    let root = std::fs::read_link(format!("/proc/{top}/root"))
        .map_err(|e| format!("reading /proc/{top}/root: {e}"))?;
    root.to_str()
        .map(|r| Some(r.to_owned()))
        .ok_or_else(|| format!("/proc/{top}/root is not UTF-8"))
}

/// The process's root in the container's view, given the container's root.
/// `None` when the process is gone.
fn process_root(pid: u32, container: &Result<Option<String>, String>) -> Option<ProcessRoot> {
    let container = match container {
        Ok(c) => c.as_ref()?,
        Err(why) => return Some(ProcessRoot::Unknown(format!("the container's root: {why}"))),
    };
    let own = match std::fs::read_link(format!("/proc/{pid}/root")) {
        Ok(own) => own,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return None,
        Err(e) => {
            return Some(ProcessRoot::Unknown(format!(
                "reading /proc/{pid}/root: {e}"
            )));
        }
    };
    let own = own.to_string_lossy();
    Some(match below(container, &own) {
        Some(root) => ProcessRoot::Known(root),
        None => ProcessRoot::Unknown(format!(
            "its root {own} is not below the container's root {container}"
        )),
    })
}

/// Reads a process's root, cwd and open file paths from /proc, translated
/// from the host's view to the container's by stripping the container's root
/// (not the process's own: a chrooted process's names are placed in the
/// container through its root).
pub fn snapshot_process(pid: u32) -> ProcessSnapshot {
    let proc_dir = PathBuf::from(format!("/proc/{pid}"));
    let container = container_root(pid);
    let root = process_root(pid, &container);
    let inside = |target: PathBuf| -> Option<ContainerPath> {
        below(container.as_ref().ok()?.as_ref()?, target.to_str()?)
    };
    let cwd = std::fs::read_link(proc_dir.join("cwd"))
        .ok()
        .and_then(&inside);
    // A deleted file reads as "/path (deleted)": still the file it ran.
    let exe = std::fs::read_link(proc_dir.join("exe"))
        .ok()
        .map(|p| PathBuf::from(p.to_string_lossy().trim_end_matches(" (deleted)")))
        .and_then(&inside)
        // Seen mid-setup (runc's init, say), a process can show its root or
        // an anonymous memfd as its executable: neither is a file to keep.
        .filter(|p| p.as_str() != "/" && !p.as_str().starts_with("/memfd:"));
    let argv = std::fs::read(proc_dir.join("cmdline"))
        .map(|b| {
            b.split(|&c| c == 0)
                .filter(|a| !a.is_empty())
                .map(|a| String::from_utf8_lossy(a).into_owned())
                .collect()
        })
        .unwrap_or_default();
    // "pid (comm) state ppid ...": comm may hold spaces and parentheses.
    let stat = std::fs::read_to_string(proc_dir.join("stat")).unwrap_or_default();
    let (comm, ppid) = match (stat.find('('), stat.rfind(')')) {
        (Some(open), Some(close)) if open < close => (
            stat[open + 1..close].to_owned(),
            stat[close + 1..]
                .split_whitespace()
                .nth(1)
                .and_then(|p| p.parse().ok())
                .unwrap_or(0),
        ),
        _ => (String::new(), 0),
    };
    let mut fds = Vec::new();
    if let Ok(entries) = std::fs::read_dir(proc_dir.join("fd")) {
        for entry in entries.flatten() {
            let Some(fd) = entry
                .file_name()
                .to_str()
                .and_then(|s| s.parse::<i32>().ok())
            else {
                continue;
            };
            // Sockets, pipes and anon inodes read as "socket:[..]": not paths.
            if let Some(path) = std::fs::read_link(entry.path()).ok().and_then(&inside) {
                fds.push((fd, path));
            }
        }
    }
    ProcessSnapshot {
        root,
        cwd,
        fds,
        exe,
        argv,
        ppid,
        comm,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_process_snapshot_and_cgroup() {
        let me = std::process::id();
        let snap = snapshot_process(me);
        let cwd = std::env::current_dir().unwrap();
        assert_eq!(snap.cwd.unwrap().as_str(), cwd.to_str().unwrap());
        let exe = std::env::current_exe().unwrap();
        assert_eq!(snap.exe.unwrap().as_str(), exe.to_str().unwrap());
        assert_eq!(snap.argv, std::env::args().collect::<Vec<_>>());
        assert_eq!(snap.ppid, std::os::unix::process::parent_id());
        assert!(!snap.comm.is_empty());
        let dir = cgroup_of_pid(me).unwrap();
        assert!(
            pids_below(&dir).contains(&me),
            "{} should list us",
            dir.display()
        );
        assert!(cgroup_id(&dir).unwrap().0 > 0);
    }

    #[test]
    fn names_a_directory_that_is_not_a_cgroup() {
        let err = cgroup_id(Path::new("/tmp")).unwrap_err().to_string();
        assert!(err.contains("not a cgroup v2 directory"), "{err}");
    }
}
