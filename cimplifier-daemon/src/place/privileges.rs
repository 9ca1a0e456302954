//! What each image may do, beside what it keeps: the capabilities its
//! executables' observed operations need, whether it may gain privileges
//! by exec (`no-new-privileges`), and whether its root file system can be
//! read-only. Every grant and every refusal carries its evidence. The rules
//! and their evidence are tabled in docs/privileges.md.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::seccomp::{Seccomp, SeccompInputs, SeccompMode};
use super::state::{StateDir, state_dirs};
use crate::image::fs::{EntryKind, ImageFs};
use crate::model::privileged::{Observed, Operation, Uid};
use crate::model::{Access, Exe, Model, Resource};
use crate::trace::ContainerPath;

/// A Linux capability that a rule may grant.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Capability {
    Chown,
    DacOverride,
    DacReadSearch,
    Fowner,
    Kill,
    NetBindService,
    NetRaw,
    Setgid,
    Setuid,
    SysChroot,
}

impl Capability {
    pub const ALL: [Capability; 10] = [
        Capability::Chown,
        Capability::DacOverride,
        Capability::DacReadSearch,
        Capability::Fowner,
        Capability::Kill,
        Capability::NetBindService,
        Capability::NetRaw,
        Capability::Setgid,
        Capability::Setuid,
        Capability::SysChroot,
    ];

    /// The name `docker run --cap-add` takes.
    pub fn name(self) -> &'static str {
        match self {
            Capability::Chown => "CHOWN",
            Capability::DacOverride => "DAC_OVERRIDE",
            Capability::DacReadSearch => "DAC_READ_SEARCH",
            Capability::Fowner => "FOWNER",
            Capability::Kill => "KILL",
            Capability::NetBindService => "NET_BIND_SERVICE",
            Capability::NetRaw => "NET_RAW",
            Capability::Setgid => "SETGID",
            Capability::Setuid => "SETUID",
            Capability::SysChroot => "SYS_CHROOT",
        }
    }

    /// From `NAME` or `CAP_NAME`, any case.
    pub fn from_name(name: &str) -> Option<Self> {
        let name = name.to_ascii_uppercase();
        let name = name.strip_prefix("CAP_").unwrap_or(&name);
        Self::ALL.into_iter().find(|c| c.name() == name)
    }
}

impl fmt::Display for Capability {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Docker's default capability set (moby `oci/caps/defaults.go`): what a
/// container has without `--cap-drop`.
pub const DOCKER_DEFAULT_CAPABILITIES: usize = 14;

/// Who did something: an observed executable, or the RPE server emit adds.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "who", content = "exe")]
pub enum Actor {
    Exe(Exe),
    RpeServer,
}

impl fmt::Display for Actor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Actor::Exe(e) => e.fmt(f),
            Actor::RpeServer => f.write_str("the RPE server"),
        }
    }
}

/// One piece of evidence: who did what.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Evidence {
    pub by: Actor,
    /// What it did, e.g. `bound 0.0.0.0:80`.
    pub did: String,
}

impl fmt::Display for Evidence {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.by, self.did)
    }
}

/// A directory mounted as tmpfs in a read-only root, with the image's
/// mode and owner of that directory.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Tmpfs {
    pub dir: ContainerPath,
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
}

impl Tmpfs {
    /// The `--tmpfs` / Compose `tmpfs:` value.
    pub fn spec(&self) -> String {
        format!(
            "{}:mode={:o},uid={},gid={}",
            self.dir, self.mode, self.uid, self.gid
        )
    }
}

/// Whether the root file system can be read-only, and how.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReadOnlyRoot {
    /// True when every observed write lands in a tmpfs or a volume.
    pub read_only: bool,
    /// Volatile state directories (/tmp, /run...) holding no file of the
    /// image: written fresh at start, so a tmpfs serves.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tmpfs: Vec<Tmpfs>,
    /// State directories that need a writable volume (anonymous for a slim
    /// image: Docker copies the image's content in, and it survives a
    /// restart as the container's layer would).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub volumes: Vec<ContainerPath>,
    /// The writes outside both, which keep the root writable.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub prevented_by: Vec<Evidence>,
}

/// What an image may do.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Privileges {
    /// The uid the container starts as (the image's user); `None` when its
    /// name is not in the image's /etc/passwd (then taken as root).
    pub start_uid: Option<u32>,
    /// Capabilities to add after `--cap-drop ALL`, each with its evidence.
    pub capabilities: BTreeMap<Capability, Vec<Evidence>>,
    /// False when an exec may gain privileges (a setuid, setgid or
    /// file-capability binary was run): `new_privileges_by` says which.
    pub no_new_privileges: bool,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub new_privileges_by: Vec<Evidence>,
    pub root: ReadOnlyRoot,
    /// Processes whose exec was not seen (running before the watch began;
    /// not the runtime's own set-up) that made operations needing a
    /// privilege: what they need is not granted, as it is not known.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub not_seen: Vec<Exe>,
    /// The seccomp profile: the syscalls allowed, each with its evidence.
    #[serde(default)]
    pub seccomp: Seccomp,
}

pub use crate::engine::hardening::{HARDENING_LABEL, Hardening};

// The type is the engine's (how a container is created); which
// capabilities and options a label may ask for is this stage's rule.
impl Hardening {
    /// Refuses what emit never writes: an image's label is input, and
    /// must not widen a container beyond what the rules can grant (a
    /// capability no rule grants, `seccomp=unconfined`, another option).
    pub fn check(&self) -> Result<(), String> {
        if let Some(cap) = self
            .cap_add
            .iter()
            .find(|c| Capability::from_name(c).is_none())
        {
            return Err(format!("capability {cap:?} is none the rules grant"));
        }
        if let Some(opt) = self.security_opt.iter().find(|o| {
            *o != "no-new-privileges:true"
                && !o
                    .strip_prefix("seccomp=")
                    .is_some_and(|p| p.starts_with('{'))
        }) {
            return Err(format!("security option {opt:?} is none emit writes"));
        }
        Ok(())
    }
}

/// The file name the slim image's `docker run` line gives its profile;
/// `cimplifierctl emit --out DIR` writes it there.
pub const SECCOMP_FILE: &str = "seccomp.json";

/// At most this many pieces of evidence are kept per capability.
const EVIDENCE_KEPT: usize = 8;

/// The inputs beyond the model: the image, how it starts, and for a
/// partition what the run plan mounts and runs beside its executables.
pub struct Context<'a> {
    pub fs: &'a Arc<ImageFs>,
    /// The image config's `User` (empty: root).
    pub user: &'a str,
    /// Directories the run plan mounts as volumes (a partition's shared and
    /// state volumes). Empty for a slim image: its state directories get
    /// anonymous volumes instead.
    pub plan_volumes: &'a BTreeSet<ContainerPath>,
    /// Whether a non-volatile state directory may become an anonymous
    /// volume (slim) or must be one of `plan_volumes` (partition).
    pub anonymous_volumes: bool,
    /// Runs the RPE server (callees started for callers in other partitions).
    pub rpe_server: bool,
    /// Runs RPE stubs (calls into other partitions).
    pub rpe_stub: bool,
    pub seccomp: SeccompMode,
}

/// The uid `user` names in the image (`name`, `uid`, `name:group`,
/// `uid:gid`); root for an empty user.
pub fn user_uid(user: &str, fs: &ImageFs) -> Option<u32> {
    let user = user.split(':').next().unwrap_or("");
    if user.is_empty() {
        return Some(0);
    }
    if let Ok(uid) = user.parse() {
        return Some(uid);
    }
    let passwd = fs.data(&ContainerPath::new("/etc/passwd")?)?;
    String::from_utf8_lossy(&passwd).lines().find_map(|line| {
        let mut f = line.split(':');
        (f.next()? == user).then(|| f.nth(1)?.parse().ok())?
    })
}

const KERNEL_FILE_SYSTEMS: [&str; 3] = ["/proc", "/sys", "/dev"];
const ENGINE_MOUNTED_FILES: [&str; 3] = ["/etc/hosts", "/etc/hostname", "/etc/resolv.conf"];
const VOLATILE: [&str; 4] = ["/tmp", "/var/tmp", "/run", "/var/run"];

fn under_any(path: &ContainerPath, dirs: &[&str]) -> bool {
    dirs.iter()
        .any(|d| path.is_under(&ContainerPath::new(d).expect("absolute")))
}

struct Rules<'a> {
    ctx: &'a Context<'a>,
    out: Privileges,
    /// Owners given at run time by an observed chown: `postfix` makes
    /// `/var/spool/postfix/hold`, chowns it to postfix, then chmods it, which
    /// root may only do with FOWNER. The operations are a set, not a
    /// sequence, so a chown anywhere in the run counts.
    chowned: BTreeMap<ContainerPath, u32>,
}

impl Rules<'_> {
    fn grant(&mut self, cap: Capability, by: Actor, did: String) {
        let list = self.out.capabilities.entry(cap).or_default();
        let e = Evidence { by, did };
        if list.len() < EVIDENCE_KEPT && !list.contains(&e) {
            list.push(e);
        }
    }

    /// Owner, group and mode of `path` in the image; what a process as root
    /// created at run time is root's.
    fn meta(&self, path: &ContainerPath) -> Option<(u32, u32, u32, bool)> {
        let e = self.ctx.fs.get(path)?;
        Some((e.uid, e.gid, e.mode, e.kind == EntryKind::Dir))
    }

    /// The permission bits that apply to root (uid 0, gid 0) without
    /// DAC_OVERRIDE: the owner's, the group's or the others'.
    fn root_bits(uid: u32, gid: u32, mode: u32) -> u32 {
        if uid == 0 {
            (mode >> 6) & 7
        } else if gid == 0 {
            (mode >> 3) & 7
        } else {
            mode & 7
        }
    }

    fn deny(&mut self, path: &ContainerPath, need: u32, cap: Capability, by: &Exe, what: &str) {
        let Some((uid, gid, mode, _)) = self.meta(path) else {
            return;
        };
        if Self::root_bits(uid, gid, mode) & need != need {
            self.grant(
                cap,
                Actor::Exe(by.clone()),
                format!(
                    "{what} {path} (mode {:04o}, owner {uid}:{gid})",
                    mode & 0o7777
                ),
            );
        }
    }

    fn observed(&mut self, o: &Observed) {
        if let Operation::File {
            path,
            access: Access::Exec,
        } = &o.op
            && let Some(e) = self.ctx.fs.get(path)
            && (e.mode & 0o6000 != 0 || e.file_caps)
        {
            let what = if e.file_caps {
                "file capabilities".to_owned()
            } else {
                format!("mode {:04o}", e.mode & 0o7777)
            };
            self.out.new_privileges_by.push(Evidence {
                by: Actor::Exe(o.exe.clone()),
                did: format!("executed {path} ({what})"),
            });
        }
        let uid = match o.uid {
            Uid::AsStarted => self.out.start_uid.unwrap_or(0),
            Uid::Set(u) => u,
        };
        let by = Actor::Exe(o.exe.clone());
        // Checked whatever the uid: a process that set PR_SET_KEEPCAPS
        // (setpriv does) changes its uid first and its groups after, still
        // needing SETGID. Its own uid again needs nothing; the gid is not
        // followed, so any other gid call counts.
        if let Operation::SetIds { call, args } = &o.op {
            let is_gid = call.contains("gid") || call == "setgroups";
            let cap = if is_gid {
                Capability::Setgid
            } else {
                Capability::Setuid
            };
            let own = |a: i64| {
                a == -1 || (!is_gid && a == i64::from(uid)) || (is_gid && uid == 0 && a == 0)
            };
            if call == "setgroups" {
                // Its second argument is a pointer: only the count says anything.
                let n = args.first().copied().unwrap_or(0);
                self.grant(cap, by, format!("called setgroups with {n} groups"));
            } else if !args.iter().all(|&a| own(a)) {
                let args: Vec<String> = args.iter().map(i64::to_string).collect();
                self.grant(cap, by, format!("called {call}({})", args.join(", ")));
            }
            return;
        }
        // The kernel compared the ids itself and let the signal pass: the
        // sender held CAP_KILL, whatever uid the model followed.
        if let Operation::Signal { sig, target_uid } = &o.op {
            self.grant(
                Capability::Kill,
                by,
                format!("sent {sig} to a process of uid {target_uid}, which shares no uid with it"),
            );
            return;
        }
        // A process of another uid lost its effective capabilities when it
        // changed uid (or never had them): it can use none.
        if uid != 0 {
            return;
        }
        match &o.op {
            Operation::Bind { addr } if addr.port() != 0 && addr.port() < 1024 => {
                self.grant(Capability::NetBindService, by, format!("bound {addr}"))
            }
            Operation::Bind { .. } => {}
            Operation::RawSocket { domain, kind } => self.grant(
                Capability::NetRaw,
                by,
                format!("opened a raw socket (domain {domain}, type {kind})"),
            ),
            Operation::SetIds { .. } => {}
            Operation::Chown { path, uid, gid } => {
                let (ou, og, ..) = self.meta(path).unwrap_or((0, 0, 0, false));
                // What root hands to another uid where it survives a restart
                // (not a tmpfs), root meets again after a crash, with that
                // uid's mode bits: dovecot's master, restarted after a
                // SIGKILL, probes its stale 0600 sockets in /run/dovecot.
                if let Some(to) = uid
                    && *to != 0
                    && *to != ou
                    && !self.out.root.tmpfs.iter().any(|t| path.is_under(&t.dir))
                {
                    self.grant(
                        Capability::DacOverride,
                        by.clone(),
                        format!(
                            "gave {path} to uid {to} where it outlives a restart, so root meets \
                             it again after a crash"
                        ),
                    );
                }
                if uid.is_some_and(|u| u != ou) || gid.is_some_and(|g| g != og) {
                    let show = |v: &Option<u32>| v.map_or("-1".to_owned(), |v| v.to_string());
                    self.grant(
                        Capability::Chown,
                        by,
                        format!(
                            "changed the owner of {path} from {ou}:{og} to {}:{}",
                            show(uid),
                            show(gid)
                        ),
                    );
                }
            }
            Operation::Chmod { path } | Operation::Utime { path } => {
                let owner = self
                    .chowned
                    .get(path)
                    .copied()
                    .or_else(|| self.meta(path).map(|m| m.0));
                if let Some(ou) = owner
                    && ou != 0
                {
                    let what = if matches!(o.op, Operation::Chmod { .. }) {
                        "changed the mode of"
                    } else {
                        "set the times of"
                    };
                    self.grant(
                        Capability::Fowner,
                        by,
                        format!("{what} {path}, owned by uid {ou}"),
                    );
                }
            }
            Operation::Chroot { path } => {
                self.grant(Capability::SysChroot, by, format!("chroot to {path}"))
            }
            Operation::Signal { .. } => {}
            Operation::File { path, access } => self.file(&o.exe, path, *access),
        }
    }

    /// DAC_OVERRIDE / DAC_READ_SEARCH for root using a file of the image
    /// whose bits deny root as owner, group member or other.
    fn file(&mut self, exe: &Exe, path: &ContainerPath, access: Access) {
        use Capability::{DacOverride, DacReadSearch};
        // Every directory above must be searchable.
        let mut dir = path.parent();
        let mut above = Vec::new();
        while dir != ContainerPath::root() {
            above.push(dir.clone());
            dir = dir.parent();
        }
        for d in above.iter().rev() {
            self.deny(d, 1, DacReadSearch, exe, "searched");
        }
        let is_dir = self.meta(path).is_some_and(|m| m.3);
        match access {
            Access::Read if is_dir => self.deny(path, 4, DacReadSearch, exe, "opened"),
            Access::Read => self.deny(path, 4, DacReadSearch, exe, "read"),
            Access::List => self.deny(path, 4, DacReadSearch, exe, "listed"),
            Access::Write => self.deny(path, 2, DacOverride, exe, "wrote"),
            Access::Exec => self.deny(path, 1, DacOverride, exe, "executed"),
            Access::Create | Access::Delete => {
                let what = if access == Access::Create {
                    "created an entry in"
                } else {
                    "removed an entry from"
                };
                self.deny(&path.parent(), 3, DacOverride, exe, what)
            }
            _ => {}
        }
    }

    /// The RPE server starts each callee as its caller's user and relays
    /// the caller's signals to it (cimplifier-rpe `server/spawn.rs`,
    /// `server/relay.rs`).
    fn rpe_server(&mut self) {
        let by = || Actor::RpeServer;
        self.grant(
            Capability::Setuid,
            by(),
            "starts each callee as its caller's uid (setresuid)".into(),
        );
        self.grant(
            Capability::Setgid,
            by(),
            "starts each callee with its caller's gid and groups (setresgid, setgroups)".into(),
        );
        self.grant(
            Capability::Kill,
            by(),
            "relays the caller's signals to the callee, which runs as another uid".into(),
        );
    }

    fn root(&mut self, model: &Model, exes: &BTreeSet<Exe>) {
        let dirs: Vec<StateDir> = state_dirs(model, exes, self.ctx.fs);
        let mut root = ReadOnlyRoot::default();
        // One mount for a directory and the state directories below it: a
        // rename between two mounts fails (EXDEV), as redis's rename of its
        // append-only manifest from /var/lib/redis into appendonlydir did.
        let mut mounted: Vec<&ContainerPath> = Vec::new();
        for d in &dirs {
            if self.ctx.plan_volumes.iter().any(|v| d.dir.is_under(v))
                || mounted.iter().any(|m| d.dir.is_under(m))
            {
                continue;
            }
            mounted.push(&d.dir);
            let holds_files = self
                .ctx
                .fs
                .entries()
                .any(|(p, e)| p.is_under(&d.dir) && p != &d.dir && e.kind != EntryKind::Dir);
            if d.volatile && !holds_files {
                let (uid, gid, mode, _) = self.meta(&d.dir).unwrap_or((0, 0, 0o755, true));
                root.tmpfs.push(Tmpfs {
                    dir: d.dir.clone(),
                    mode: mode & 0o7777,
                    uid,
                    gid,
                });
            } else if self.ctx.anonymous_volumes {
                root.volumes.push(d.dir.clone());
            } else {
                for (exe, wrote) in &d.writers {
                    if let Some(path) = wrote.keys().next() {
                        root.prevented_by.push(Evidence {
                            by: Actor::Exe(exe.clone()),
                            did: format!(
                                "wrote {path} in {}, which is no volume of the plan",
                                d.dir
                            ),
                        });
                    }
                }
            }
        }
        // Writes in no state directory: at the root, or in a file the state
        // rules leave out.
        for exe in exes {
            for (r, access) in model.uses(std::slice::from_ref(exe)) {
                let Resource::Path(path) = r else { continue };
                let writes = access.iter().any(|a| {
                    matches!(
                        a,
                        Access::Write | Access::Create | Access::Delete | Access::Metadata
                    )
                });
                if !writes
                    || under_any(&path, &KERNEL_FILE_SYSTEMS)
                    || ENGINE_MOUNTED_FILES.contains(&path.as_str())
                    || under_any(&path, &VOLATILE)
                    || dirs.iter().any(|d| path.is_under(&d.dir))
                    || self.ctx.plan_volumes.iter().any(|v| path.is_under(v))
                {
                    continue;
                }
                root.prevented_by.push(Evidence {
                    by: Actor::Exe(exe.clone()),
                    did: format!("wrote {path}, in no state directory"),
                });
            }
        }
        root.prevented_by.sort();
        root.prevented_by.dedup();
        root.read_only = root.prevented_by.is_empty();
        self.out.root = root;
    }
}

/// What the image holding `exes` may do.
pub fn privileges(model: &Model, exes: &BTreeSet<Exe>, ctx: &Context<'_>) -> Privileges {
    let all_exes = exes;
    // A process whose exec was not seen (the runtime's `runc:[2:INIT]`,
    // which sets up the container before its program runs) is not a
    // program of the image: the capabilities it uses are the runtime's.
    let not_seen: Vec<Exe> = exes
        .iter()
        .filter(|e| e.is_unobserved() && !e.is_runtime())
        .filter(|e| {
            model
                .privileged(&BTreeSet::from([(*e).clone()]))
                .iter()
                .any(|o| !matches!(o.op, Operation::File { .. }))
        })
        .cloned()
        .collect();
    let exes: &BTreeSet<Exe> = &exes
        .iter()
        .filter(|e| !e.is_unobserved())
        .cloned()
        .collect();
    let observed = model.privileged(exes);
    let mut rules = Rules {
        ctx,
        out: Privileges {
            start_uid: user_uid(ctx.user, ctx.fs),
            ..Privileges::default()
        },
        chowned: observed
            .iter()
            .filter_map(|o| match &o.op {
                Operation::Chown {
                    path, uid: Some(u), ..
                } => Some((path.clone(), *u)),
                _ => None,
            })
            .collect(),
    };
    // The root first: where tmpfs lies decides what survives a restart.
    rules.root(model, exes);
    for o in &observed {
        rules.observed(o);
    }
    if ctx.rpe_server {
        rules.rpe_server();
    }
    let out = &mut rules.out;
    out.new_privileges_by.sort();
    out.new_privileges_by.dedup();
    out.no_new_privileges = out.new_privileges_by.is_empty();
    out.not_seen = not_seen;
    for list in out.capabilities.values_mut() {
        list.sort();
    }
    out.seccomp = super::seccomp::seccomp(
        model,
        all_exes,
        SeccompInputs {
            mode: ctx.seccomp,
            no_new_privileges: out.no_new_privileges,
            rpe_server: ctx.rpe_server,
            rpe_stub: ctx.rpe_stub,
        },
    );
    rules.out
}

impl Privileges {
    /// The `docker run` flags that apply them.
    pub fn docker_run_flags(&self) -> Vec<String> {
        let mut f = vec!["--cap-drop".to_owned(), "ALL".to_owned()];
        for cap in self.capabilities.keys() {
            f.extend(["--cap-add".to_owned(), cap.name().to_owned()]);
        }
        if self.no_new_privileges {
            f.extend(["--security-opt".to_owned(), "no-new-privileges".to_owned()]);
        }
        if self.seccomp.applies() {
            f.extend([
                "--security-opt".to_owned(),
                format!("seccomp={SECCOMP_FILE}"),
            ]);
        }
        if self.root.read_only {
            f.push("--read-only".to_owned());
            for t in &self.root.tmpfs {
                f.extend(["--tmpfs".to_owned(), t.spec()]);
            }
            for v in &self.root.volumes {
                f.extend(["-v".to_owned(), v.to_string()]);
            }
        }
        f
    }

    /// The settings a container is created with to apply them.
    pub fn hardening(&self) -> Hardening {
        let mut security_opt = Vec::new();
        if self.no_new_privileges {
            security_opt.push("no-new-privileges:true".to_owned());
        }
        if let Some(profile) = self.seccomp.profile() {
            security_opt.push(format!(
                "seccomp={}",
                serde_json::to_string(&profile).expect("a profile serialises")
            ));
        }
        Hardening {
            cap_add: self
                .capabilities
                .keys()
                .map(|c| c.name().to_owned())
                .collect(),
            security_opt,
            read_only: self.root.read_only,
            tmpfs: if self.root.read_only {
                self.root
                    .tmpfs
                    .iter()
                    .filter_map(|t| {
                        let spec = t.spec();
                        let (dir, opts) = spec.split_once(':')?;
                        Some((dir.to_owned(), opts.to_owned()))
                    })
                    .collect()
            } else {
                BTreeMap::new()
            },
            volumes: if self.root.read_only {
                self.root.volumes.clone()
            } else {
                Vec::new()
            },
        }
    }

    /// Why `cap` is granted, or that it is not.
    pub fn explain(&self, cap: Capability) -> String {
        match self.capabilities.get(&cap) {
            Some(ev) => format!(
                "granted: {}",
                ev.iter()
                    .map(Evidence::to_string)
                    .collect::<Vec<_>>()
                    .join("; ")
            ),
            None => "dropped: no observed operation needs it".to_owned(),
        }
    }

    /// One line: capabilities, no-new-privileges, read-only root.
    pub fn summary(&self) -> String {
        let caps: Vec<&str> = self.capabilities.keys().map(|c| c.name()).collect();
        let warning = match self.not_seen.as_slice() {
            [] => String::new(),
            exes => format!(
                "; WARNING: processes whose exec was not seen ({}) made privileged calls whose \
                 needs are unknown and not granted: observe from the first exec",
                exes.iter()
                    .map(Exe::to_string)
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        };
        format!(
            "capabilities {} of Docker's {}: [{}]; no-new-privileges {}; read-only root {}{warning}; {}",
            caps.len(),
            DOCKER_DEFAULT_CAPABILITIES,
            caps.join(", "),
            if self.no_new_privileges { "yes" } else { "no" },
            if self.root.read_only {
                "yes".to_owned()
            } else {
                format!(
                    "no ({})",
                    self.root
                        .prevented_by
                        .iter()
                        .map(Evidence::to_string)
                        .collect::<Vec<_>>()
                        .join("; ")
                )
            },
            self.seccomp.summary()
        )
    }
}

#[cfg(test)]
mod tests;

/// Each partition's privileges under `plan`, as emit will grant them: a
/// partition that serves callers runs its RPE server as root, the others
/// as `user` (the image's).
pub fn of_plan(
    model: &Model,
    plan: &super::partition::PartitionPlan,
    fs: &Arc<ImageFs>,
    user: &str,
) -> BTreeMap<crate::partition::PartitionName, Privileges> {
    plan.partitions
        .iter()
        .map(|(name, contents)| {
            let serves = plan.rpe.iter().any(|e| &e.callee_partition == name);
            let volumes: BTreeSet<ContainerPath> = plan
                .volumes
                .iter()
                .filter(|v| v.partitions.contains(name))
                .map(|v| v.mount.clone())
                .collect();
            let ctx = Context {
                fs,
                user: if serves { "" } else { user },
                plan_volumes: &volumes,
                anonymous_volumes: false,
                rpe_server: serves,
                rpe_stub: plan.rpe.iter().any(|e| &e.caller_partition == name),
                seccomp: SeccompMode::Enforce,
            };
            (name.clone(), privileges(model, &contents.executables, &ctx))
        })
        .collect()
}
