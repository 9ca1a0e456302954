//! Golden tests: recorded logs of tests/golden/workload.sh (one strace log,
//! one eBPF event log; re-record with tests/golden/record.sh) give the model
//! of the paper's cases. Each report is compared with its reviewed
//! `*.expected.json`; `UPDATE_GOLDEN=1` rewrites those after a deliberate
//! change (review the diff). The paper's cases are also asserted directly.

use std::collections::BTreeSet;
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};

use cimplifier::model::report::{ExecutableReport, Input, Report, analyze};
use cimplifier::model::{Access, Resource};

fn golden() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden")
}

const G: &str = "/tmp/cimplifier-golden";

/// The parts of the recording machine's tree the workload touched, with
/// Debian's merged-/usr links, so the test does not depend on the host.
fn image_tree() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let r = dir.path();
    std::fs::create_dir_all(r.join("usr/bin")).unwrap();
    std::fs::create_dir_all(r.join("etc")).unwrap();
    for top in ["bin", "sbin", "lib", "lib64"] {
        symlink(format!("usr/{top}"), r.join(top)).unwrap();
    }
    std::fs::create_dir_all(r.join("usr/lib/x86_64-linux-gnu")).unwrap();
    symlink("dash", r.join("usr/bin/sh")).unwrap();
    symlink("python3.11", r.join("usr/bin/python3")).unwrap();
    for elf in ["dash", "cat", "ls", "mv", "sleep", "python3.11"] {
        std::fs::write(r.join("usr/bin").join(elf), b"\x7fELF").unwrap();
    }
    let g = r.join(G.trim_start_matches('/'));
    std::fs::create_dir_all(&g).unwrap();
    for script in ["run.sh", "server.py", "client.py"] {
        std::fs::copy(golden().join(script), g.join(script)).unwrap();
    }
    dir
}

fn report(input: Input) -> Report {
    let tree = image_tree();
    analyze(&input, Some(tree.path())).unwrap()
}

/// The report without the parts that name this machine's temp dir.
fn stable_json(report: &Report) -> String {
    let mut r = report.clone();
    r.source.image_tree = Some("<fixture tree>".into());
    r.source.files = r
        .source
        .files
        .iter()
        .map(|f| {
            Path::new(f)
                .file_name()
                .unwrap()
                .to_string_lossy()
                .into_owned()
        })
        .collect();
    serde_json::to_string_pretty(&r).unwrap() + "\n"
}

fn check_golden(report: &Report, name: &str) {
    let path = golden().join(name);
    let actual = stable_json(report);
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        let before = std::fs::read_to_string(&path).ok();
        std::fs::write(&path, &actual).unwrap();
        // Fails so that a run with UPDATE_GOLDEN set never passes by accident.
        panic!(
            "UPDATE_GOLDEN is set: wrote {} ({}); review the diff, then run again without it",
            path.display(),
            if before.as_deref() == Some(actual.as_str()) {
                "unchanged"
            } else {
                "changed"
            }
        );
    }
    let expected = std::fs::read_to_string(&path).unwrap_or_else(|e| {
        panic!(
            "{}: {e}; run `UPDATE_GOLDEN=1 cargo test --test golden` and review it",
            path.display()
        )
    });
    if actual != expected {
        let (n, (a, e)) = actual
            .lines()
            .zip(expected.lines())
            .enumerate()
            .find(|(_, (a, e))| a != e)
            .unwrap_or((0, ("<length differs>", "")));
        panic!(
            "the model of {name} changed; first difference at line {}:\n  expected: {e}\n  actual:   {a}\n\
             If the change is intended, run `UPDATE_GOLDEN=1 cargo test --test golden` and review the diff.",
            n + 1
        );
    }
}

fn exe<'a>(r: &'a Report, path: &str) -> &'a ExecutableReport {
    r.executables
        .iter()
        .find(|e| e.path.0.as_str() == path)
        .unwrap_or_else(|| {
            let all: Vec<_> = r.executables.iter().map(|e| e.path.to_string()).collect();
            panic!("executable {path} not in the model: {all:?}")
        })
}

fn res(path: &str) -> Resource {
    Resource::Path(cimplifier::trace::ContainerPath::new(path).unwrap())
}

fn access(e: &ExecutableReport, path: &str) -> BTreeSet<Access> {
    e.uses
        .iter()
        .find(|u| u.resource == res(path))
        .map(|u| u.access.clone())
        .unwrap_or_default()
}

/// The paper's cases, which both logs must show.
fn assert_paper_cases(r: &Report) {
    assert!(r.source.complete, "the recorded log lost events");
    assert_eq!(r.unresolved_names, 0);
    let g = |name: &str| format!("{G}/{name}");

    // Created, then moved: the shell creates out.part, mv renames it.
    let sh = exe(r, "/bin/sh");
    assert!(access(sh, &g("out.part")).contains(&Access::Create));
    let mv = exe(r, "/usr/bin/mv");
    assert!(access(mv, &g("out.part")).contains(&Access::Delete));
    assert!(access(mv, &g("out.txt")).contains(&Access::Create));
    assert!(mv.writes.contains(&res(&g("out.part"))) && mv.writes.contains(&res(&g("out.txt"))));
    // The renamed file had to exist; its new name did not.
    assert!(mv.reads.contains(&res(&g("out.part"))));

    // Failed probes are their own evidence, and not needs.
    let ls = exe(r, "/usr/bin/ls");
    assert!(ls.failed_lookups.contains(&res(&g("missing.conf"))));
    assert!(!ls.reads.contains(&res(&g("missing.conf"))));
    let cat = exe(r, "/usr/bin/cat");
    assert!(
        cat.failed_lookups
            .contains(&res("/etc/cimplifier-golden-absent"))
    );
    assert!(!cat.reads.contains(&res("/etc/cimplifier-golden-absent")));

    // A shell script running a binary: the script calls cat and its
    // interpreter, and needs the interpreter through the merged-/usr links.
    let calls: BTreeSet<(String, String)> = r
        .calls
        .iter()
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .collect();
    let run = g("run.sh");
    assert!(
        calls.contains(&(run.clone(), "/usr/bin/cat".into())),
        "{calls:?}"
    );
    assert!(
        calls.contains(&(run.clone(), "/bin/sh".into())),
        "{calls:?}"
    );
    let run = exe(r, &run);
    for needed in ["/bin", "/usr/bin/sh", "/usr/bin/dash", "/usr/bin", G] {
        assert!(run.reads.contains(&res(needed)), "R(run.sh) lacks {needed}");
    }
    assert!(access(run, "/bin").contains(&Access::Traverse));
    assert!(access(run, "/usr/bin/dash").contains(&Access::Exec));
    assert!(cat.reads.contains(&res(&g("out.txt"))));

    // Merged /usr: /bin/sh needs the /bin link, the sh -> dash link and dash.
    for needed in ["/bin", "/usr/bin/sh", "/usr/bin/dash"] {
        assert!(sh.reads.contains(&res(needed)), "R(/bin/sh) lacks {needed}");
    }
    // python3 scripts need python3 -> python3.11; libc is reached through
    // the /lib -> usr/lib link.
    let server = exe(r, &g("server.py"));
    assert!(server.reads.contains(&res("/usr/bin/python3.11")));
    assert!(cat.reads.contains(&res("/lib")));
    assert!(
        cat.reads
            .contains(&res("/usr/lib/x86_64-linux-gnu/libc.so.6"))
    );

    // A unix socket between two executables: the node in both W sets, its
    // directory in both R sets, and the report pairs them.
    let client = exe(r, &g("client.py"));
    let sock = res(&g("golden.sock"));
    assert!(access(server, &g("golden.sock")).contains(&Access::Bind));
    assert!(access(client, &g("golden.sock")).contains(&Access::Connect));
    assert!(server.writes.contains(&sock) && client.writes.contains(&sock));
    assert!(server.reads.contains(&res(G)) && client.reads.contains(&res(G)));
    let socket = r.sockets.iter().find(|s| s.socket == sock).expect("socket");
    assert_eq!(
        socket
            .bound_by
            .iter()
            .map(|e| e.to_string())
            .collect::<Vec<_>>(),
        [g("server.py")]
    );
    assert_eq!(
        socket
            .connected_by
            .iter()
            .map(|e| e.to_string())
            .collect::<Vec<_>>(),
        [g("client.py")]
    );
}

#[test]
fn strace_log_gives_the_paper_cases() {
    let r = report(Input::Strace(vec![golden().join("workload.strace")]));
    assert_paper_cases(&r);
    check_golden(&r, "workload.strace.expected.json");
}

#[test]
fn event_log_gives_the_paper_cases() {
    let r = report(Input::Events(golden().join("workload.jsonl")));
    assert_paper_cases(&r);
    check_golden(&r, "workload.jsonl.expected.json");
}

/// The two recordings are of the same workload: apart from how the first
/// shell started (strace execs it; the eBPF trace sees it already running as
/// dash), each executable's sets agree.
#[test]
fn both_recordings_agree() {
    let a = report(Input::Strace(vec![golden().join("workload.strace")]));
    let b = report(Input::Events(golden().join("workload.jsonl")));
    let names = |r: &Report| -> BTreeSet<String> {
        r.executables.iter().map(|e| e.path.to_string()).collect()
    };
    let only_ebpf: Vec<_> = names(&b).difference(&names(&a)).cloned().collect();
    assert_eq!(
        only_ebpf,
        ["/usr/bin/dash"],
        "explained: the shell seen running"
    );
    assert!(names(&a).is_subset(&names(&b)));
    for e in &a.executables {
        let other = exe(&b, e.path.0.as_str());
        if e.path.0.as_str() == "/bin/sh" {
            continue; // explained above: the first shell's calls differ
        }
        assert_eq!(e.reads, other.reads, "R({}) differs", e.path);
        assert_eq!(e.writes, other.writes, "W({}) differs", e.path);
        assert_eq!(
            e.failed_lookups, other.failed_lookups,
            "failed({}) differs",
            e.path
        );
    }
}
