//! The modules' imports point only where docs/architecture.md's diagram
//! says they may: each stage imports the stages before it in the flow,
//! never one after it. The allowed imports are read from the diagram
//! itself, so the picture and the code cannot drift apart.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Modules any module may import: `cli` imports nothing of the library,
/// and `testing` is test support.
const ANYWHERE: &[&str] = &["cli", "testing"];

fn manifest_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Module -> the modules it may import, from the diagram under "Modules
/// and their imports": lines `[floor N] MODULE ───▶ A, B, C  (comment)`,
/// and `trace`'s line, which imports none.
fn allowed_imports() -> BTreeMap<String, BTreeSet<String>> {
    let doc_path = manifest_dir().join("../docs/architecture.md");
    let doc = std::fs::read_to_string(&doc_path)
        .unwrap_or_else(|e| panic!("reading {}: {e}", doc_path.display()));
    let section = doc
        .split("## Modules and their imports")
        .nth(1)
        .expect("docs/architecture.md has a section \"Modules and their imports\"");
    let diagram = section
        .split("```")
        .nth(1)
        .expect("the section opens with the diagram in a code block");
    let mut allowed = BTreeMap::new();
    for line in diagram.lines() {
        let line = line.trim_start();
        let line = match line.strip_prefix("floor ") {
            Some(rest) => rest
                .trim_start_matches(|c: char| c.is_ascii_digit())
                .trim_start(),
            None => line,
        };
        if let Some((module, imports)) = line.split_once('▶') {
            let module = module.trim_end_matches(['─', ' ']).trim();
            // The flow's own lines ("the flow: trace ─▶ model ...") are no module's.
            if !module.chars().all(|c| c.is_ascii_lowercase() || c == '_') {
                continue;
            }
            let imports = imports.split("  ").next().unwrap_or_default();
            allowed.insert(
                module.to_owned(),
                imports.split(',').map(|m| m.trim().to_owned()).collect(),
            );
        } else if line.starts_with("trace ") && line.contains("imports none") {
            allowed.insert("trace".to_owned(), BTreeSet::new());
        }
    }
    allowed
}

/// Every `crate::NAME` written in the module's files (code, tests and
/// comments alike), `docker` being the re-export of `engine::docker`.
fn imports_of(module: &str) -> BTreeMap<String, Vec<String>> {
    let src = manifest_dir().join("src");
    let mut files = Vec::new();
    collect_rs(&src.join(module), &mut files);
    let single = src.join(format!("{module}.rs"));
    if single.is_file() {
        files.push(single);
    }
    assert!(
        !files.is_empty(),
        "no source files for module {module} under {}",
        src.display()
    );
    let mut found: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for file in files {
        let text = std::fs::read_to_string(&file).unwrap();
        for (i, line) in text.lines().enumerate() {
            for piece in line.split("crate::").skip(1) {
                let name: String = piece
                    .chars()
                    .take_while(|c| c.is_ascii_lowercase() || *c == '_')
                    .collect();
                let name = if name == "docker" {
                    "engine".to_owned()
                } else {
                    name
                };
                if name.is_empty() || name == module || ANYWHERE.contains(&name.as_str()) {
                    continue;
                }
                let at = format!("{}:{}", file.strip_prefix(&src).unwrap().display(), i + 1);
                found.entry(name).or_default().push(at);
            }
        }
    }
    found
}

fn collect_rs(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries {
        let path = entry.unwrap().path();
        if path.is_dir() {
            collect_rs(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

#[test]
fn every_import_points_down_as_the_architecture_diagram_says() {
    let allowed = allowed_imports();
    for stage in [
        "trace",
        "model",
        "partition",
        "place",
        "emit",
        "engine",
        "api",
    ] {
        assert!(
            allowed.contains_key(stage),
            "the diagram has no line for {stage}: {allowed:?}"
        );
    }
    let mut wrong = Vec::new();
    for (module, may) in &allowed {
        for (imported, at) in imports_of(module) {
            if !may.contains(&imported) {
                wrong.push(format!("{module} imports {imported} at {}", at.join(", ")));
            }
        }
    }
    assert!(
        wrong.is_empty(),
        "imports the diagram in docs/architecture.md does not allow (move the code \
         down, or change the diagram and say why):\n{}",
        wrong.join("\n")
    );
}

#[test]
fn the_diagram_names_every_module_of_the_library() {
    let allowed = allowed_imports();
    let lib = std::fs::read_to_string(manifest_dir().join("src/lib.rs")).unwrap();
    let modules: Vec<&str> = lib
        .lines()
        .filter_map(|l| l.strip_prefix("pub mod "))
        .map(|m| m.trim_end_matches(';'))
        .filter(|m| !ANYWHERE.contains(m))
        .collect();
    assert!(
        modules.len() >= 10,
        "lib.rs lists too few modules: {modules:?}"
    );
    for m in modules {
        assert!(
            allowed.contains_key(m),
            "docs/architecture.md's diagram has no line for module {m}"
        );
    }
}
