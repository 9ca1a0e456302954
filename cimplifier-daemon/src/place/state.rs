//! State directories: where a program keeps what it writes.
//!
//! A directory that an observed executable writes in (creates, renames,
//! removes, binds or writes files there) is that program's state directory.
//! What the run did not touch there (an empty subdirectory its recovery path
//! opens after a restart, a journal it only replays after a crash) is still
//! the program's state, so placement keeps such a directory whole.
//!
//! Only observed executables count: a process whose exec was not seen (the
//! runtime's `runc:[2:INIT]`, which names host paths before it enters the
//! container's root) is not a program of the image.
//!
//! Not state directories:
//! - anything under `/proc`, `/sys` or `/dev`: kernel file systems mounted at
//!   run time, never image content;
//! - `/` itself: a marker file written at the root would otherwise keep the
//!   whole image;
//! - `/etc` for writes to `/etc/hosts`, `/etc/hostname` and
//!   `/etc/resolv.conf`: the engine bind-mounts those files, so writing them
//!   does not write in the image's `/etc`.
//!
//! `/tmp`, `/var/tmp` and `/run` are state directories like any other (a
//! program may expect what the image ships there) but are marked
//! [`StateDir::volatile`]: by convention their contents need not survive a
//! restart, so a run plan need not give them a persistent volume.

use std::collections::{BTreeMap, BTreeSet};

use crate::model::{Access, Exe, ImageTree, Model, Resource, walk};
use crate::trace::ContainerPath;

/// What an executable did to one entry of a state directory.
pub type Evidence = BTreeMap<ContainerPath, BTreeSet<Access>>;

/// A directory that observed executables write in.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StateDir {
    /// The directory, resolved through the image's symlinks (`/var/run/x`
    /// written is `/run` when `/var/run -> /run`). It may be absent from the
    /// image: a directory the run created.
    pub dir: ContainerPath,
    /// `/tmp`, `/var/tmp`, `/run` or below: contents need not survive a
    /// restart.
    pub volatile: bool,
    /// Each executable that writes in it, with the entries it wrote (their
    /// resolved paths) and how: `Create`, `Delete`, `Write` or `Bind`.
    pub writers: BTreeMap<Exe, Evidence>,
}

/// Accesses that write in the directory holding the name.
fn writes_in_parent(access: Access) -> bool {
    matches!(
        access,
        Access::Create | Access::Delete | Access::Write | Access::Bind
    )
}

/// Files the container engine bind-mounts over the image's.
const ENGINE_MOUNTED_FILES: [&str; 3] = ["/etc/hosts", "/etc/hostname", "/etc/resolv.conf"];

/// Kernel file systems: nothing under them comes from the image.
const KERNEL_FILE_SYSTEMS: [&str; 3] = ["/proc", "/sys", "/dev"];

/// Whose contents need not survive a restart (FHS).
const VOLATILE: [&str; 4] = ["/tmp", "/var/tmp", "/run", "/var/run"];

fn is_under(path: &ContainerPath, prefix: &str) -> bool {
    let p = path.as_str();
    p == prefix || (p.starts_with(prefix) && p.as_bytes().get(prefix.len()) == Some(&b'/'))
}

fn file_name(path: &ContainerPath) -> &str {
    path.as_str().rsplit('/').next().unwrap_or("")
}

/// The state directories of `exes` in `model`, in path order. `tree` is the
/// file system the events happened in (the source image), to resolve names
/// through its symlinks.
pub fn state_dirs(model: &Model, exes: &BTreeSet<Exe>, tree: &dyn ImageTree) -> Vec<StateDir> {
    let mut dirs: BTreeMap<ContainerPath, BTreeMap<Exe, Evidence>> = BTreeMap::new();
    for exe in exes.iter().filter(|e| !e.is_unobserved()) {
        for (resource, access) in model.uses(std::slice::from_ref(exe)) {
            let Resource::Path(path) = resource else {
                continue;
            };
            let writes: BTreeSet<Access> = access
                .iter()
                .copied()
                .filter(|&a| writes_in_parent(a))
                .collect();
            if writes.is_empty()
                || path == ContainerPath::root()
                || ENGINE_MOUNTED_FILES.contains(&path.as_str())
            {
                continue;
            }
            // Writing through a symlink writes where it leads; the model
            // holds that name too, with the same access.
            if !writes.iter().any(|&a| a != Access::Write) && tree.read_link(&path).is_some() {
                continue;
            }
            // A directory written (opened with O_TMPFILE: an unnamed file
            // made in it, as mariadbd does in /tmp) is written in.
            let parent = if writes.contains(&Access::Write) && tree.is_dir(&path) == Some(true) {
                path.clone()
            } else {
                path.parent()
            };
            let dir = walk(tree, &parent, true).resolved.unwrap_or(parent);
            if dir == ContainerPath::root() || KERNEL_FILE_SYSTEMS.iter().any(|k| is_under(&dir, k))
            {
                continue;
            }
            let entry = dir.join(file_name(&path));
            dirs.entry(dir)
                .or_default()
                .entry(exe.clone())
                .or_default()
                .entry(entry)
                .or_default()
                .extend(writes);
        }
    }
    dirs.into_iter()
        .map(|(dir, writers)| StateDir {
            volatile: VOLATILE.iter().any(|v| is_under(&dir, v)),
            dir,
            writers,
        })
        .collect()
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::testing::{call, exec, image, open, p};
    use crate::trace::PathRole;
    use cimplifier_common::syscalls::nr;

    const O_WRONLY_CREAT: u64 = 0o101;

    #[test]
    fn a_directory_written_in_is_a_state_directory_with_its_evidence() {
        let fs = image(&[
            "/usr/",
            "/usr/bin/",
            "/usr/bin/db",
            "/var/",
            "/var/lib/",
            "/var/lib/db/",
            "/var/lib/db/base/",
            "/var/lib/db/recovery/",
            "/var/lib/db/conf",
            "/run/",
            "/var/run -> /run",
            "/tmp/",
            "/etc/",
            "/etc/hosts",
        ]);
        let mut model = Model::with_image_tree(Box::new(fs.clone()));
        model.apply(&exec(1, "/usr/bin/db"));
        // Read only: not state.
        model.apply(&open(1, "/var/lib/db/conf", 0));
        // Rename of a temporary file into place.
        model.apply(&open(1, "/var/lib/db/base/tmp.1", O_WRONLY_CREAT));
        model.apply(&call(
            1,
            nr::RENAME,
            [0; 6],
            &[
                (PathRole::Old, "/var/lib/db/base/tmp.1"),
                (PathRole::New, "/var/lib/db/base/data"),
            ],
        ));
        // Through a symlinked directory.
        model.apply(&open(1, "/var/run/db.pid", O_WRONLY_CREAT));
        model.apply(&open(1, "/tmp/scratch", O_WRONLY_CREAT));
        // Not the image's: kernel file systems, engine-mounted files.
        model.apply(&open(1, "/dev/null", 1));
        model.apply(&open(1, "/proc/self/oom_score_adj", 1));
        model.apply(&open(1, "/etc/hosts", 1));
        // A marker at the root.
        model.apply(&open(1, "/.initialised", O_WRONLY_CREAT));
        // The runtime's set-up, before the first exec: host paths.
        model.apply(&open(
            2,
            "/var/lib/docker/overlay2/x/merged/dev/ptmx",
            O_WRONLY_CREAT,
        ));

        let exes = model.executables();
        let dirs = state_dirs(&model, &exes, &fs);
        let names: Vec<&str> = dirs.iter().map(|d| d.dir.as_str()).collect();
        assert_eq!(names, ["/run", "/tmp", "/var/lib/db/base"]);
        let base = &dirs[2];
        assert!(!base.volatile);
        let db = &base.writers[&Exe(p("/usr/bin/db"))];
        assert_eq!(
            db[&p("/var/lib/db/base/tmp.1")],
            [Access::Write, Access::Create, Access::Delete].into()
        );
        assert_eq!(db[&p("/var/lib/db/base/data")], [Access::Create].into());
        assert!(dirs[0].volatile && dirs[1].volatile);
        assert!(dirs[0].writers[&Exe(p("/usr/bin/db"))].contains_key(&p("/run/db.pid")));
    }

    #[test]
    fn an_unnamed_file_made_in_a_directory_writes_in_it() {
        let fs = image(&["/usr/", "/usr/sbin/", "/usr/sbin/db", "/tmp/"]);
        let mut model = Model::with_image_tree(Box::new(fs.clone()));
        model.apply(&exec(1, "/usr/sbin/db"));
        // open("/tmp", O_TMPFILE | O_RDWR)
        model.apply(&open(1, "/tmp", 0o20200002));
        let dirs = state_dirs(&model, &model.executables(), &fs);
        let names: Vec<&str> = dirs.iter().map(|d| d.dir.as_str()).collect();
        assert_eq!(names, ["/tmp"]);
    }

    #[test]
    fn writing_through_a_symlinked_file_writes_where_it_leads() {
        let fs = image(&[
            "/usr/",
            "/usr/sbin/",
            "/usr/sbin/web",
            "/var/",
            "/var/log/",
            "/var/log/web/",
            "/var/log/web/access.log -> /srv/logs/access.log",
            "/srv/",
            "/srv/logs/",
            "/srv/logs/access.log",
        ]);
        let mut model = Model::with_image_tree(Box::new(fs.clone()));
        model.apply(&exec(1, "/usr/sbin/web"));
        model.apply(&open(1, "/var/log/web/access.log", 0o2001));
        let dirs = state_dirs(&model, &model.executables(), &fs);
        let names: Vec<&str> = dirs.iter().map(|d| d.dir.as_str()).collect();
        assert_eq!(names, ["/srv/logs"]);
    }
}
