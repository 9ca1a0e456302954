//! All-one-context placement: one image holding every file the observed
//! executables used, with what those files need to work: every directory and
//! symlink on the way to them, the ELF libraries of every binary, hard-link
//! targets, small safety sets, and the user's includes.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::code_tree::{CodeKind, code_trees};
use super::listed::{content_bytes, listed_dirs};
use super::state::state_dirs;
use crate::image::fs::{EntryKind, ImageFs};
use crate::model::{Access, Exe, Model, Resource, walk};
use crate::trace::ContainerPath;

/// Why a path is in the slim image.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "reason")]
pub enum KeepReason {
    /// An executable used it.
    Observed { exe: Exe, access: BTreeSet<Access> },
    /// A directory above a kept path.
    ParentDirectory { of: ContainerPath },
    /// A symlink followed, or the file reached, on the way to a kept path.
    LinkChain { of: ContainerPath },
    /// The file a kept hard link shares its content with.
    HardLinkTarget { of: ContainerPath },
    /// The ELF interpreter or a DT_NEEDED library of a kept binary.
    ElfDependency { of: ContainerPath },
    /// In a safety set (see [`SafetySet`]).
    SafetySet { set: SafetySet },
    /// Under a `--include` path.
    UserInclude { include: ContainerPath },
    /// Inside a directory the run wrote in (see [`super::state`]): the
    /// program's state, kept whole as the image has it.
    StateDirectory {
        dir: ContainerPath,
        written_by: BTreeSet<Exe>,
    },
    /// A code file of an application an interpreter loaded code from (see
    /// [`super::code_tree`]): loaded `loaded` of the `files` files of its
    /// kind under `dir`.
    CodeTree {
        exe: Exe,
        kind: CodeKind,
        dir: ContainerPath,
        loaded: usize,
        files: usize,
    },
    /// A subdirectory (not its files) of a kept directory: programs create
    /// files in, or change into, directories they never did on the run.
    DirectorySkeleton { of: ContainerPath },
    /// An entry of a directory an executable listed (see
    /// [`super::listed`]): the listing must show the names it showed.
    ListedDirectory {
        dir: ContainerPath,
        listed_by: BTreeSet<Exe>,
    },
}

/// The most content bytes the listed-directory rule adds for one
/// directory. Above it, the directory keeps only what other rules keep and
/// the report names it: listing `/usr/lib/python3.11` (Python's import
/// cache does) must not pull in the whole standard library, while a
/// configuration or plugin directory is far below it.
pub const LISTED_DIRECTORY_BUDGET: u64 = 1 << 20;

/// Files kept although a run may not have touched them, because programs
/// reach them on paths a test workload rarely takes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum SafetySet {
    /// Name service and resolver configuration and the glibc NSS modules
    /// for files and DNS: user, group and host lookups.
    Nss,
    /// The CA certificate bundle and OpenSSL's configuration: TLS clients.
    CaCertificates,
    /// The local time zone.
    Timezone,
    /// The locales the image's environment selects (LANG, LC_ALL, LC_*),
    /// and the locale archive.
    Locales,
}

impl SafetySet {
    pub const ALL: [SafetySet; 4] = [
        SafetySet::Nss,
        SafetySet::CaCertificates,
        SafetySet::Timezone,
        SafetySet::Locales,
    ];

    pub fn name(self) -> &'static str {
        match self {
            SafetySet::Nss => "nss",
            SafetySet::CaCertificates => "ca-certificates",
            SafetySet::Timezone => "timezone",
            SafetySet::Locales => "locales",
        }
    }

    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|s| s.name() == name)
    }

    /// Paths (files, or directories kept whole) in the set.
    fn paths(self) -> &'static [&'static str] {
        match self {
            SafetySet::Nss => &[
                "/etc/nsswitch.conf",
                "/etc/passwd",
                "/etc/group",
                "/etc/hosts",
                "/etc/host.conf",
                "/etc/resolv.conf",
                "/etc/gai.conf",
            ],
            SafetySet::CaCertificates => &[
                "/etc/ssl/certs/ca-certificates.crt",
                "/etc/ssl/openssl.cnf",
                "/usr/lib/ssl/openssl.cnf",
                "/usr/lib/ssl/certs",
            ],
            SafetySet::Timezone => &["/etc/localtime", "/etc/timezone"],
            SafetySet::Locales => &["/usr/lib/locale/locale-archive"],
        }
    }

    /// Library names found through the library search path.
    fn libraries(self) -> &'static [&'static str] {
        match self {
            SafetySet::Nss => &["libnss_files.so.2", "libnss_dns.so.2", "libresolv.so.2"],
            _ => &[],
        }
    }
}

#[derive(Clone, Debug, Default)]
pub struct SlimOptions {
    /// Paths kept whole (with everything below), used or not.
    pub include: Vec<ContainerPath>,
    /// Paths dropped with everything below, whatever else wants them.
    pub exclude: Vec<ContainerPath>,
    pub safety_sets: BTreeSet<SafetySet>,
    /// The image's environment (`KEY=VALUE`), for the locales it selects.
    pub env: Vec<String>,
    /// Keep only what was observed and what it needs: no state directory
    /// subtrees, no code trees, no entries of listed directories
    /// (`emit --strict`).
    pub strict: bool,
}

impl SlimOptions {
    /// Every safety set on, no includes or excludes.
    pub fn with_safety_sets() -> Self {
        Self {
            safety_sets: SafetySet::ALL.into_iter().collect(),
            ..Self::default()
        }
    }
}

#[derive(Clone, Debug, Default)]
pub struct SlimPlan {
    /// Every image path kept, with the first reason found for it.
    pub keep: BTreeMap<ContainerPath, KeepReason>,
    /// Used by the trace but absent from the image: created at run time.
    pub not_in_image: BTreeSet<ContainerPath>,
    /// Kept for a reason but dropped by `--exclude`.
    pub excluded: BTreeSet<ContainerPath>,
    /// The state directories found (none with `strict`).
    pub state_dirs: Vec<KeptStateDir>,
    /// The interpreters' code trees found (none with `strict`).
    pub code_trees: Vec<KeptCodeTree>,
    /// Every directory of the image an executable listed, and whether the
    /// slim image holds all its entries (also with `strict`).
    pub listed_dirs: Vec<KeptListedDir>,
}

/// A listed directory, as the audit report lists it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeptListedDir {
    pub dir: ContainerPath,
    pub listed_by: BTreeSet<Exe>,
    /// Its entries in the source image (one level).
    pub entries: usize,
    /// How many of them the slim image does not hold: a listing there
    /// shows fewer names than the run saw. Never 0 when `kept_whole` is
    /// false.
    pub missing: usize,
    /// The content bytes of the missing entries.
    pub missing_bytes: u64,
    /// Why entries are missing; none when none is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub why_missing: Option<WhyMissing>,
}

/// Why a listed directory's entries are not all in the slim image.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum WhyMissing {
    /// `--strict`: the listed-directory rule is off.
    Strict,
    /// They would add more than [`LISTED_DIRECTORY_BUDGET`] bytes.
    OverBudget,
    /// `--exclude` dropped them.
    Excluded,
}

impl WhyMissing {
    pub fn describe(self) -> &'static str {
        match self {
            WhyMissing::Strict => "--strict keeps only what was observed",
            WhyMissing::OverBudget => "over the listed-directory budget of 1 MiB",
            WhyMissing::Excluded => "dropped by --exclude",
        }
    }
}

impl KeptListedDir {
    pub fn kept_whole(&self) -> bool {
        self.missing == 0
    }
}

/// A state directory, as the audit report lists it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeptStateDir {
    pub dir: ContainerPath,
    pub written_by: BTreeSet<Exe>,
    /// Under /tmp, /var/tmp or /run: need not survive a restart.
    pub volatile: bool,
    /// Whether the source image has it (a directory the run created has
    /// nothing to keep).
    pub in_image: bool,
}

/// An interpreter's code tree, as the audit report lists it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeptCodeTree {
    pub exe: Exe,
    pub kind: CodeKind,
    pub dir: ContainerPath,
    /// Files of the kind the run loaded under `dir`.
    pub loaded: usize,
    /// Files of the kind under `dir` in the image: all kept.
    pub files: usize,
}

struct Planner<'a> {
    fs: &'a Arc<ImageFs>,
    plan: SlimPlan,
    queue: VecDeque<ContainerPath>,
    search_dirs: Vec<ContainerPath>,
}

impl Planner<'_> {
    fn keep(&mut self, path: ContainerPath, reason: KeepReason) {
        if self.fs.get(&path).is_none() {
            // Named through a symlinked directory (/lib64/ld-linux…): keep
            // the links on the way and the file it reaches.
            let w = walk(self.fs, &path, true);
            match w.resolved {
                Some(real) if real != path && self.fs.get(&real).is_some() => {
                    for p in w.links.into_iter().chain(w.dirs).chain([real]) {
                        self.keep(p, reason.clone());
                    }
                }
                _ if matches!(reason, KeepReason::Observed { .. }) => {
                    self.plan.not_in_image.insert(path);
                }
                _ => {}
            }
            return;
        }
        if !self.plan.keep.contains_key(&path) {
            self.plan.keep.insert(path.clone(), reason);
            self.queue.push_back(path);
        }
    }

    /// Adds what one kept path needs.
    fn close_over(&mut self, path: &ContainerPath) {
        let w = walk(self.fs, path, true);
        for dir in w.dirs {
            self.keep(dir, KeepReason::ParentDirectory { of: path.clone() });
        }
        for link in w.links {
            self.keep(link, KeepReason::LinkChain { of: path.clone() });
        }
        if let Some(real) = w.resolved
            && real != *path
        {
            self.keep(real, KeepReason::LinkChain { of: path.clone() });
        }
        // The lexical parents too: a kept name must stay reachable by it.
        let mut dir = path.clone();
        while dir != ContainerPath::root() {
            dir = dir.parent();
            self.keep(
                dir.clone(),
                KeepReason::ParentDirectory { of: path.clone() },
            );
        }
        let Some(entry) = self.fs.get(path) else {
            return;
        };
        match &entry.kind {
            EntryKind::HardLink(target) => {
                let target = target.clone();
                self.keep(target, KeepReason::HardLinkTarget { of: path.clone() });
            }
            EntryKind::File => {
                for dep in self.elf_dependencies(path) {
                    self.keep(dep, KeepReason::ElfDependency { of: path.clone() });
                }
            }
            _ => {}
        }
    }

    /// The interpreter and DT_NEEDED libraries of an ELF file, resolved as
    /// ld.so would: RPATH/RUNPATH (with $ORIGIN), then the image's
    /// ld.so.conf directories, then the default directories.
    fn elf_dependencies(&self, path: &ContainerPath) -> Vec<ContainerPath> {
        if !self
            .fs
            .head(path, 4)
            .is_some_and(|magic| magic.starts_with(b"\x7fELF"))
        {
            return Vec::new();
        }
        let Some(data) = self.fs.data(path) else {
            return Vec::new();
        };
        let Ok(elf) = goblin::elf::Elf::parse(&data) else {
            return Vec::new();
        };
        let mut out = Vec::new();
        if let Some(interp) = elf.interpreter.and_then(ContainerPath::new) {
            out.push(interp);
        }
        let origin = path.parent();
        let own_dirs: Vec<ContainerPath> = if elf.runpaths.is_empty() {
            &elf.rpaths
        } else {
            &elf.runpaths
        }
        .iter()
        .flat_map(|p| p.split(':'))
        .filter_map(|d| {
            let d = d
                .replace("${ORIGIN}", origin.as_str())
                .replace("$ORIGIN", origin.as_str());
            ContainerPath::new(&d)
        })
        .collect();
        for lib in &elf.libraries {
            if lib.contains('/') {
                out.extend(ContainerPath::new(lib));
                continue;
            }
            if let Some(found) = own_dirs
                .iter()
                .chain(&self.search_dirs)
                .map(|d| d.join(lib))
                .find(|c| self.exists(c))
            {
                out.push(found);
            }
        }
        out
    }

    fn exists(&self, path: &ContainerPath) -> bool {
        walk(self.fs, path, true)
            .resolved
            .is_some_and(|r| self.fs.get(&r).is_some())
    }

    fn find_library(&self, name: &str) -> Option<ContainerPath> {
        self.search_dirs
            .iter()
            .map(|d| d.join(name))
            .find(|c| self.exists(c))
    }
}

/// The library directories of the image: /etc/ld.so.conf (with its
/// `include` globs of the form `DIR/*.conf`), then the defaults.
fn library_search_dirs(fs: &ImageFs) -> Vec<ContainerPath> {
    let mut dirs = Vec::new();
    let mut files = vec![ContainerPath::new("/etc/ld.so.conf").expect("absolute")];
    let mut i = 0;
    while i < files.len() && i < 64 {
        let text = fs
            .data(&files[i])
            .map(|d| String::from_utf8_lossy(&d).into_owned())
            .unwrap_or_default();
        i += 1;
        for line in text
            .lines()
            .map(|l| l.split('#').next().unwrap_or("").trim())
        {
            if let Some(pattern) = line.strip_prefix("include ") {
                let pattern = pattern.trim();
                if let Some((dir, suffix)) = pattern.rsplit_once("/*")
                    && let Some(dir) = ContainerPath::new(dir)
                {
                    let mut matches: Vec<ContainerPath> = fs
                        .entries()
                        .map(|(p, _)| p)
                        .filter(|p| p.parent() == dir && p.as_str().ends_with(suffix))
                        .cloned()
                        .collect();
                    matches.sort();
                    files.extend(matches);
                }
            } else if let Some(dir) = ContainerPath::new(line) {
                dirs.push(dir);
            }
        }
    }
    for d in [
        "/lib/x86_64-linux-gnu",
        "/usr/lib/x86_64-linux-gnu",
        "/lib64",
        "/usr/lib64",
        "/lib",
        "/usr/lib",
    ] {
        dirs.push(ContainerPath::new(d).expect("absolute"));
    }
    dirs
}

/// The locale directories the environment selects: `LANG=C.UTF-8` is found
/// as /usr/lib/locale/C.UTF-8 or, normalised as glibc does, C.utf8.
fn locale_dirs(env: &[String]) -> Vec<ContainerPath> {
    let mut dirs = Vec::new();
    for var in env {
        let Some((key, value)) = var.split_once('=') else {
            continue;
        };
        if !(key == "LANG" || key == "LC_ALL" || key.starts_with("LC_")) || value.is_empty() {
            continue;
        }
        if value.contains('/') || value == "C" || value == "POSIX" {
            continue;
        }
        let normalised = match value.split_once('.') {
            Some((lang, codeset)) => format!(
                "{lang}.{}",
                codeset
                    .chars()
                    .filter(|c| c.is_ascii_alphanumeric())
                    .collect::<String>()
                    .to_lowercase()
            ),
            None => value.to_owned(),
        };
        for name in [value.to_owned(), normalised] {
            if let Some(dir) = ContainerPath::new(&format!("/usr/lib/locale/{name}"))
                && !dirs.contains(&dir)
            {
                dirs.push(dir);
            }
        }
    }
    dirs
}

/// The slim image's contents for `model`, observed on a container of the
/// image `fs`.
pub fn plan(model: &Model, fs: &Arc<ImageFs>, opts: &SlimOptions) -> SlimPlan {
    plan_for(model, &model.executables(), &BTreeSet::new(), fs, opts)
}

/// The contents of an image holding only `exes` (one partition) and their
/// resources. Nothing is kept at a `replaced` path, nor for it: another
/// file (an RPE stub) stands there.
pub fn plan_for(
    model: &Model,
    exes: &BTreeSet<Exe>,
    replaced: &BTreeSet<ContainerPath>,
    fs: &Arc<ImageFs>,
    opts: &SlimOptions,
) -> SlimPlan {
    let mut p = Planner {
        fs,
        plan: SlimPlan::default(),
        queue: VecDeque::new(),
        search_dirs: library_search_dirs(fs),
    };
    for exe in exes {
        for (resource, access) in model.uses(std::slice::from_ref(exe)) {
            let Resource::Path(path) = resource else {
                continue;
            };
            if access.iter().all(|&a| a == Access::ProbeFailed) || replaced.contains(&path) {
                continue;
            }
            p.keep(
                path,
                KeepReason::Observed {
                    exe: exe.clone(),
                    access,
                },
            );
        }
    }
    for include in &opts.include {
        let inside: Vec<ContainerPath> = fs
            .entries()
            .map(|(path, _)| path)
            .filter(|path| path.is_under(include))
            .cloned()
            .collect();
        for path in inside {
            p.keep(
                path,
                KeepReason::UserInclude {
                    include: include.clone(),
                },
            );
        }
    }
    for set in &opts.safety_sets {
        for path in set.paths() {
            let path = ContainerPath::new(path).expect("absolute");
            let inside: Vec<ContainerPath> = fs
                .entries()
                .map(|(e, _)| e)
                .filter(|e| e.is_under(&path))
                .cloned()
                .collect();
            for e in inside {
                p.keep(e, KeepReason::SafetySet { set: *set });
            }
        }
        if *set == SafetySet::Locales {
            for dir in locale_dirs(&opts.env) {
                let inside: Vec<ContainerPath> = fs
                    .entries()
                    .map(|(e, _)| e)
                    .filter(|e| e.is_under(&dir))
                    .cloned()
                    .collect();
                for e in inside {
                    p.keep(e, KeepReason::SafetySet { set: *set });
                }
            }
        }
        for lib in set.libraries() {
            if let Some(found) = p.find_library(lib) {
                p.keep(found, KeepReason::SafetySet { set: *set });
            }
        }
    }
    if !opts.strict {
        for state in state_dirs(model, exes, fs) {
            let written_by: BTreeSet<Exe> = state.writers.into_keys().collect();
            p.plan.state_dirs.push(KeptStateDir {
                dir: state.dir.clone(),
                written_by: written_by.clone(),
                volatile: state.volatile,
                in_image: fs.get(&state.dir).is_some(),
            });
            let inside: Vec<ContainerPath> = fs
                .entries()
                .map(|(e, _)| e)
                .filter(|e| e.is_under(&state.dir))
                .cloned()
                .collect();
            for e in inside {
                p.keep(
                    e,
                    KeepReason::StateDirectory {
                        dir: state.dir.clone(),
                        written_by: written_by.clone(),
                    },
                );
            }
        }
        for tree in code_trees(model, exes, fs) {
            let (loaded, files) = (tree.loaded.len(), tree.files.len());
            p.plan.code_trees.push(KeptCodeTree {
                exe: tree.exe.clone(),
                kind: tree.kind,
                dir: tree.root.clone(),
                loaded,
                files,
            });
            for file in tree.files {
                p.keep(
                    file,
                    KeepReason::CodeTree {
                        exe: tree.exe.clone(),
                        kind: tree.kind,
                        dir: tree.root.clone(),
                        loaded,
                        files,
                    },
                );
            }
        }
    }
    let listed = listed_dirs(model, exes, fs);
    let mut over_budget = BTreeSet::new();
    for dir in &listed {
        let adds: u64 = dir
            .entries
            .iter()
            .filter(|e| !p.plan.keep.contains_key(*e) && !replaced.contains(*e))
            .map(|e| content_bytes(fs, e))
            .sum();
        if opts.strict {
            continue;
        }
        if adds > LISTED_DIRECTORY_BUDGET {
            over_budget.insert(dir.dir.clone());
            continue;
        }
        for e in &dir.entries {
            if !replaced.contains(e) {
                p.keep(
                    e.clone(),
                    KeepReason::ListedDirectory {
                        dir: dir.dir.clone(),
                        listed_by: dir.listed_by.clone(),
                    },
                );
            }
        }
    }
    while let Some(path) = p.queue.pop_front() {
        p.close_over(&path);
    }
    // The skeleton: every subdirectory of a kept directory, without files.
    let skeleton: Vec<(ContainerPath, ContainerPath)> = fs
        .entries()
        .filter(|(path, entry)| {
            entry.kind == EntryKind::Dir
                && !p.plan.keep.contains_key(*path)
                && *path != &ContainerPath::root()
        })
        .map(|(path, _)| (path.clone(), path.parent()))
        .filter(|(_, parent)| {
            *parent == ContainerPath::root()
                || (fs.get(parent).is_some_and(|e| e.kind == EntryKind::Dir)
                    && p.plan.keep.contains_key(parent))
        })
        .collect();
    for (dir, parent) in skeleton {
        p.keep(dir, KeepReason::DirectorySkeleton { of: parent });
    }
    while let Some(path) = p.queue.pop_front() {
        p.close_over(&path);
    }
    let mut plan = p.plan;
    plan.keep.retain(|path, _| !replaced.contains(path));
    if !opts.exclude.is_empty() {
        let (dropped, kept): (BTreeMap<_, _>, BTreeMap<_, _>) = std::mem::take(&mut plan.keep)
            .into_iter()
            .partition(|(path, _)| opts.exclude.iter().any(|x| path.is_under(x)));
        plan.keep = kept;
        plan.excluded = dropped.into_keys().collect();
    }
    // Named whatever the reason, so that no shortened listing is silent.
    for dir in listed {
        let missing: Vec<&ContainerPath> = dir
            .entries
            .iter()
            .filter(|e| !plan.keep.contains_key(*e) && !replaced.contains(*e))
            .collect();
        let why_missing = if missing.is_empty() {
            None
        } else if opts.strict {
            Some(WhyMissing::Strict)
        } else if over_budget.contains(&dir.dir) {
            Some(WhyMissing::OverBudget)
        } else {
            Some(WhyMissing::Excluded)
        };
        plan.listed_dirs.push(KeptListedDir {
            entries: dir.entries.len(),
            missing: missing.len(),
            missing_bytes: missing.iter().map(|e| content_bytes(fs, e)).sum(),
            why_missing,
            dir: dir.dir,
            listed_by: dir.listed_by,
        });
    }
    plan
}

#[cfg(test)]
mod tests;
