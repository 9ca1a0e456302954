//! Code trees: the source an interpreter may load later.
//!
//! An interpreter (php, python, node, ruby, perl, java, or a program that
//! embeds one, such as a web server with mod_php) loads code lazily: an
//! autoloader or a deferred `import` opens a file only on the request that
//! needs it. A run that passed its workload once may not have loaded it yet.
//! So when an interpreter loads code files from a tree, the whole tree's
//! files of that kind are kept.
//!
//! Which tree: each loaded file belongs to the application directory right
//! below the deepest *boundary* above it, and the tree is the deepest
//! directory holding every file the interpreter loaded from that
//! application. Boundaries are the system's shared hierarchy (`/`, `/usr`,
//! `/usr/lib`, `/usr/share`, `/var`, `/srv`, `/opt`, ...) and the language
//! library roots (`/usr/lib/python3.11`, `dist-packages`, `site-packages`,
//! `node_modules`, `/usr/share/php`, `/usr/share/perl5`, `/usr/lib/ruby/*`,
//! `/usr/share/java`, ...). So a PHP application under `/var/www/html` is
//! kept whole, a Python program gets each package it imported from
//! (`dist-packages/flask`, the standard library's `email`), and a module
//! that is one file directly in a library root is kept alone, as observed:
//! nothing keeps all of `/usr`.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use crate::image::fs::{EntryKind, ImageFs};
use crate::model::{Access, Exe, Model, Resource, shebang_interpreter};
use crate::trace::ContainerPath;

/// A language whose interpreter loads code files by name.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CodeKind {
    Php,
    Python,
    Node,
    Ruby,
    Perl,
    Java,
}

impl CodeKind {
    pub const ALL: [CodeKind; 6] = [
        CodeKind::Php,
        CodeKind::Python,
        CodeKind::Node,
        CodeKind::Ruby,
        CodeKind::Perl,
        CodeKind::Java,
    ];

    pub fn name(self) -> &'static str {
        match self {
            CodeKind::Php => "php",
            CodeKind::Python => "python",
            CodeKind::Node => "node",
            CodeKind::Ruby => "ruby",
            CodeKind::Perl => "perl",
            CodeKind::Java => "java",
        }
    }

    /// File name extensions of this kind's code.
    fn extensions(self) -> &'static [&'static str] {
        match self {
            CodeKind::Php => &["php", "phtml", "inc"],
            CodeKind::Python => &["py", "pyc"],
            CodeKind::Node => &["js", "mjs", "cjs", "json"],
            CodeKind::Ruby => &["rb"],
            CodeKind::Perl => &["pm", "pl"],
            CodeKind::Java => &["class", "jar"],
        }
    }

    /// Extensions that only an interpreter of this kind loads: reading one
    /// makes a program (a web server with an embedded interpreter, a
    /// script run through its `#!` line) an interpreter of the kind. Not
    /// `.js`/`.json`, which web servers serve as they are.
    fn telltale(self) -> &'static [&'static str] {
        match self {
            CodeKind::Php => &["php"],
            CodeKind::Python => &["py", "pyc"],
            CodeKind::Node => &[],
            CodeKind::Ruby => &["rb"],
            CodeKind::Perl => &["pm"],
            CodeKind::Java => &["class", "jar"],
        }
    }

    /// The interpreter named by an executable's file name: `php8.2`,
    /// `php-fpm8.2`, `python3.11`, `nodejs`, `perl5.36.0`, `java`...
    fn of_program(name: &str) -> Option<CodeKind> {
        let versioned = |stem: &str| {
            name.strip_prefix(stem)
                .is_some_and(|v| v.chars().all(|c| c.is_ascii_digit() || c == '.'))
        };
        if ["php", "php-fpm", "php-cgi"].into_iter().any(versioned) {
            Some(CodeKind::Php)
        } else if versioned("python") || versioned("pypy") {
            Some(CodeKind::Python)
        } else if name == "node" || name == "nodejs" {
            Some(CodeKind::Node)
        } else if versioned("ruby") {
            Some(CodeKind::Ruby)
        } else if versioned("perl") {
            Some(CodeKind::Perl)
        } else if name == "java" {
            Some(CodeKind::Java)
        } else {
            None
        }
    }

    fn of_file(path: &ContainerPath) -> impl Iterator<Item = CodeKind> + '_ {
        let ext = extension(path);
        Self::ALL
            .into_iter()
            .filter(move |k| ext.is_some_and(|e| k.extensions().contains(&e)))
    }
}

fn file_name(path: &ContainerPath) -> &str {
    path.as_str().rsplit('/').next().unwrap_or("")
}

fn extension(path: &ContainerPath) -> Option<&str> {
    file_name(path).rsplit_once('.').map(|(_, e)| e)
}

/// One application's code, kept whole for the interpreter that loads it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CodeTree {
    /// The interpreter (or the program embedding it).
    pub exe: Exe,
    pub kind: CodeKind,
    /// The deepest directory holding every file loaded from the application.
    pub root: ContainerPath,
    /// The files of the kind the run loaded under `root`.
    pub loaded: BTreeSet<ContainerPath>,
    /// Every file of the kind under `root` in the image.
    pub files: BTreeSet<ContainerPath>,
}

/// Shared hierarchy: a directory here holds many applications.
const HIERARCHY: &[&str] = &[
    "/",
    "/bin",
    "/sbin",
    "/lib",
    "/etc",
    "/home",
    "/root",
    "/opt",
    "/srv",
    "/tmp",
    "/run",
    "/usr",
    "/usr/bin",
    "/usr/sbin",
    "/usr/lib",
    "/usr/lib/*-linux-gnu",
    "/usr/libexec",
    "/usr/share",
    "/usr/local",
    "/usr/local/bin",
    "/usr/local/sbin",
    "/usr/local/lib",
    "/usr/local/lib/*-linux-gnu",
    "/usr/local/share",
    "/var",
    "/var/lib",
    "/var/cache",
    "/var/tmp",
];

/// Language library roots: each directory below one is a package.
const LIBRARY_ROOTS: &[&str] = &[
    "/usr/lib/python*",
    "/usr/local/lib/python*",
    "**/site-packages",
    "**/dist-packages",
    "**/node_modules",
    "/usr/share/nodejs",
    "/usr/lib/nodejs",
    "/usr/share/php",
    "/usr/lib/php",
    "/usr/share/perl5",
    "/usr/share/perl/*",
    "/usr/lib/*/perl/*",
    "/usr/lib/*/perl5/*",
    "/usr/lib/*/perl-base",
    "/usr/local/share/perl/*",
    "/usr/local/lib/*/perl/*",
    "/usr/lib/ruby/*",
    "/usr/share/rubygems-integration/*",
    "/var/lib/gems/*",
    "**/gems",
    "/usr/share/java",
    "/usr/lib/jvm/*",
];

/// Whether `path` matches `pattern`: components compared one by one, `*`
/// at the end of a component matches any rest, a leading `**/` any
/// directories.
fn matches(pattern: &str, path: &ContainerPath) -> bool {
    let component = |pat: &str, c: &str| match pat.strip_suffix('*') {
        Some(prefix) => c.starts_with(prefix),
        None => pat == c,
    };
    let comps: Vec<&str> = path.as_str().split('/').filter(|c| !c.is_empty()).collect();
    if let Some(last) = pattern.strip_prefix("**/") {
        return comps.last().is_some_and(|c| component(last, c));
    }
    let pats: Vec<&str> = pattern.split('/').filter(|c| !c.is_empty()).collect();
    pats.len() == comps.len() && pats.iter().zip(&comps).all(|(p, c)| component(p, c))
}

fn is_boundary(dir: &ContainerPath) -> bool {
    HIERARCHY
        .iter()
        .chain(LIBRARY_ROOTS)
        .any(|p| matches(p, dir))
}

/// The application directory `file` belongs to: the child, on the way to
/// it, of the deepest boundary above it. None when it lies directly in a
/// boundary: a lone module.
fn application_of(file: &ContainerPath) -> Option<ContainerPath> {
    let mut below = file.clone();
    let mut dir = file.parent();
    loop {
        if is_boundary(&dir) {
            return (below != *file).then_some(below);
        }
        if dir == ContainerPath::root() {
            return None;
        }
        below = dir.clone();
        dir = dir.parent();
    }
}

fn common_dir(a: &ContainerPath, b: &ContainerPath) -> ContainerPath {
    let mut d = a.clone();
    while !b.is_under(&d) {
        d = d.parent();
    }
    d
}

/// The kinds of interpreter `exe` is, from its name, its `#!` line, and
/// the code files it read.
fn kinds_of(exe: &Exe, read: &BTreeSet<ContainerPath>, fs: &ImageFs) -> BTreeSet<CodeKind> {
    let mut kinds = BTreeSet::new();
    kinds.extend(CodeKind::of_program(file_name(&exe.0)));
    if let Some(head) = fs.head(&exe.0, 4096)
        && let Some(interp) = shebang_interpreter(&head[..head.len().min(256)])
    {
        kinds.extend(CodeKind::of_program(file_name(&interp)));
        // `#!/usr/bin/env node`: the program is env's argument.
        if file_name(&interp) == "env"
            && let Some(line) = head.split(|&b| b == b'\n').next()
        {
            let line = String::from_utf8_lossy(line);
            kinds.extend(
                line.split_whitespace()
                    .skip(1)
                    .find(|a| !a.starts_with('-'))
                    .and_then(CodeKind::of_program),
            );
        }
    }
    for path in read {
        let ext = extension(path);
        kinds.extend(
            CodeKind::ALL
                .into_iter()
                .filter(|k| ext.is_some_and(|e| k.telltale().contains(&e))),
        );
    }
    kinds
}

/// Whether `path` is a regular file in the image (a hard link counts).
fn is_file(fs: &ImageFs, path: &ContainerPath) -> bool {
    fs.get(path)
        .is_some_and(|e| matches!(e.kind, EntryKind::File | EntryKind::HardLink(_)))
}

/// The code trees of the interpreters among `exes`, in order of
/// executable, kind and root.
pub fn code_trees(model: &Model, exes: &BTreeSet<Exe>, fs: &ImageFs) -> Vec<CodeTree> {
    let mut out = Vec::new();
    for exe in exes {
        let read: BTreeSet<ContainerPath> = model
            .uses(std::slice::from_ref(exe))
            .into_iter()
            .filter_map(|(r, a)| match r {
                Resource::Path(p) if a.contains(&Access::Read) && is_file(fs, &p) => Some(p),
                _ => None,
            })
            .collect();
        for kind in kinds_of(exe, &read, fs) {
            // Application directory -> the deepest directory holding all
            // its loaded files, and those files.
            let mut apps: BTreeMap<ContainerPath, (ContainerPath, BTreeSet<ContainerPath>)> =
                BTreeMap::new();
            for file in read
                .iter()
                .filter(|f| CodeKind::of_file(f).any(|k| k == kind))
            {
                // A compiled module in `__pycache__` stands where its source
                // does: `email/__pycache__/x.pyc` is of the package `email`.
                let source = if file_name(&file.parent()) == "__pycache__" {
                    file.parent().parent().join(file_name(file))
                } else {
                    file.clone()
                };
                let Some(app) = application_of(&source) else {
                    continue;
                };
                let (root, loaded) = apps
                    .entry(app)
                    .or_insert_with(|| (source.parent(), BTreeSet::new()));
                *root = common_dir(root, &source);
                loaded.insert(file.clone());
            }
            for (_, (root, loaded)) in apps {
                let files: BTreeSet<ContainerPath> = fs
                    .entries()
                    .map(|(p, _)| p)
                    .filter(|p| {
                        p.is_under(&root)
                            && CodeKind::of_file(p).any(|k| k == kind)
                            && is_file(fs, p)
                    })
                    .cloned()
                    .collect();
                out.push(CodeTree {
                    exe: exe.clone(),
                    kind,
                    root,
                    loaded,
                    files,
                });
            }
        }
    }
    out
}

#[cfg(test)]
mod tests;
