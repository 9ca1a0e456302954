use super::*;
use crate::model::Model;
use crate::testing::sample_tar;
use crate::trace::{CgroupId, Event, EventKind, PathArg, PathRole, Resolution, SyscallEvent};
use cimplifier_common::syscalls::nr;

fn p(s: &str) -> ContainerPath {
    ContainerPath::new(s).unwrap()
}

fn exec(pid: u32, path: &str) -> Event {
    Event {
        ts_ns: 0,
        pid,
        tid: pid,
        ppid: 1,
        cgroup: CgroupId(1),
        comm: "x".into(),
        kind: EventKind::Syscall(Box::new(SyscallEvent {
            syscall: "execve".into(),
            nr: nr::EXECVE,
            args: [0; 6],
            ret: Some(0),
            errno: None,
            paths: vec![PathArg {
                role: PathRole::Target,
                raw: path.into(),
                path: ContainerPath::new(path),
                resolution: Resolution::Resolved,
                truncated: false,
            }],
            fd_path: None,
            fd_addr: None,
            addr: None,
            argv: None,
            incomplete: vec![],
        })),
    }
}

#[test]
fn keeps_the_used_binary_with_its_links_parents_and_hard_link_target() {
    let fs = Arc::new(ImageFs::from_tar(sample_tar(), "sample").unwrap());
    let mut model = Model::with_image_tree(Box::new(fs.clone()));
    model.apply(&exec(1, "/bin/ping6"));
    let plan = plan(&model, &fs, &SlimOptions::default());
    let kept: Vec<&str> = plan.keep.keys().map(|k| k.as_str()).collect();
    assert_eq!(
        kept,
        [
            "/bin",
            "/etc",
            "/usr",
            "/usr/bin",
            "/usr/bin/ping",
            "/usr/bin/ping6"
        ]
    );
    assert!(matches!(
        &plan.keep[&p("/etc")],
        KeepReason::DirectorySkeleton { of } if of.as_str() == "/"
    ));
    assert!(matches!(
        &plan.keep[&p("/usr/bin/ping")],
        KeepReason::HardLinkTarget { of } if of.as_str() == "/usr/bin/ping6"
    ));
    assert!(matches!(plan.keep[&p("/bin")], KeepReason::Observed { .. }));
    assert!(!plan.keep.contains_key(&p("/etc/motd")), "never used");
}

#[test]
fn includes_safety_sets_and_excludes() {
    let fs = Arc::new(ImageFs::from_tar(sample_tar(), "sample").unwrap());
    let model = Model::new();
    let opts = SlimOptions {
        include: vec![p("/etc")],
        exclude: vec![p("/usr/bin/ping6")],
        safety_sets: SafetySet::ALL.into_iter().collect(),
        env: vec![],
        strict: false,
    };
    let plan = plan(&model, &fs, &opts);
    assert!(matches!(
        plan.keep[&p("/etc/motd")],
        KeepReason::UserInclude { .. }
    ));
    assert!(
        plan.keep.contains_key(&p("/etc")),
        "parents of included files"
    );
    assert!(!plan.keep.contains_key(&p("/usr/bin/ping6")));
    assert_eq!(
        SafetySet::from_name("ca-certificates"),
        Some(SafetySet::CaCertificates)
    );
    assert_eq!(
        locale_dirs(&["LANG=C.UTF-8".into(), "PATH=/bin".into(), "LC_ALL=C".into()]),
        [p("/usr/lib/locale/C.UTF-8"), p("/usr/lib/locale/C.utf8")]
    );
}

mod rules {
    use super::super::*;
    use crate::testing::{call, exec, image, open, p};
    use crate::trace::PathRole;
    use cimplifier_common::syscalls::nr;

    /// A database that writes in its data directory, whose recovery
    /// directory (empty in the image) the run never opened.
    fn database() -> (Arc<ImageFs>, Model) {
        let fs = image(&[
            "/usr/",
            "/usr/bin/",
            "/usr/bin/db",
            "/usr/share/",
            "/usr/share/doc/",
            "/usr/share/doc/db/",
            "/usr/share/doc/db/README",
            "/etc/",
            "/etc/db.conf",
            "/etc/other.conf",
            "/var/",
            "/var/lib/",
            "/var/lib/db/",
            "/var/lib/db/base/",
            "/var/lib/db/base/1",
            "/var/lib/db/recovery/",
            "/var/lib/db/VERSION",
        ]);
        let mut model = Model::with_image_tree(Box::new(fs.clone()));
        model.apply(&exec(1, "/usr/bin/db"));
        model.apply(&open(1, "/etc/db.conf", 0));
        model.apply(&open(1, "/var/lib/db/base/1", 2));
        model.apply(&open(1, "/var/lib/db/wal.tmp", 0o101));
        model.apply(&call(
            1,
            nr::RENAME,
            [0; 6],
            &[
                (PathRole::Old, "/var/lib/db/wal.tmp"),
                (PathRole::New, "/var/lib/db/wal"),
            ],
        ));
        (fs, model)
    }

    #[test]
    fn a_state_directory_is_kept_whole_with_its_empty_subdirectories() {
        let (fs, model) = database();
        let plan = plan(&model, &fs, &SlimOptions::default());
        for kept in ["/var/lib/db/recovery", "/var/lib/db/VERSION"] {
            assert!(
                matches!(
                    &plan.keep[&p(kept)],
                    KeepReason::StateDirectory { dir, written_by }
                        if dir.as_str() == "/var/lib/db"
                            && written_by.contains(&Exe(p("/usr/bin/db")))
                ),
                "{kept}: {:?}",
                plan.keep.get(&p(kept))
            );
        }
        assert!(
            !plan.keep.contains_key(&p("/etc/other.conf")),
            "only read in /etc"
        );
        let strict = plan_for_strict(&model, &fs);
        assert!(!strict.keep.contains_key(&p("/var/lib/db/VERSION")));
    }

    fn plan_for_strict(model: &Model, fs: &Arc<ImageFs>) -> SlimPlan {
        plan(
            model,
            fs,
            &SlimOptions {
                strict: true,
                ..SlimOptions::default()
            },
        )
    }

    #[test]
    fn the_directory_skeleton_keeps_subdirectories_without_files() {
        let (fs, model) = database();
        let plan = plan_for_strict(&model, &fs);
        // Under kept directories: the subdirectories, not their files.
        assert!(matches!(
            &plan.keep[&p("/var/lib/db/recovery")],
            KeepReason::DirectorySkeleton { of } if of.as_str() == "/var/lib/db"
        ));
        assert!(plan.keep.contains_key(&p("/usr/share")));
        assert!(
            !plan.keep.contains_key(&p("/usr/share/doc")),
            "one level only"
        );
        assert!(!plan.keep.contains_key(&p("/usr/share/doc/db/README")));
    }

    /// getdents64 by `pid` on a descriptor opened on `dir`.
    fn list(pid: u32, dir: &str) -> crate::trace::Event {
        let mut e = call(pid, nr::GETDENTS64, [3, 0, 32768, 0, 0, 0], &[]);
        if let crate::trace::EventKind::Syscall(s) = &mut e.kind {
            s.ret = Some(96);
            s.fd_path = Some(p(dir));
        }
        e
    }

    /// A web application that lists its template directory, then
    /// renders the one template the run asked for; and its locale
    /// directory, holding more than the budget.
    fn lister() -> (Arc<ImageFs>, Model) {
        let big = format!(
            "/usr/share/app/locale/big.mo = {}",
            "x".repeat(LISTED_DIRECTORY_BUDGET as usize + 1)
        );
        let fs = image(&[
            "/usr/",
            "/usr/bin/",
            "/usr/bin/app",
            "/usr/share/",
            "/usr/share/app/",
            "/usr/share/app/templates/",
            "/usr/share/app/templates/plain.tpl",
            "/usr/share/app/templates/fancy.tpl",
            "/usr/share/app/templates/alt -> fancy.tpl",
            "/usr/share/app/templates/extra/",
            "/usr/share/app/templates/extra/deep.tpl",
            "/usr/share/app/locale/",
            "/usr/share/app/locale/en.mo",
            &big,
            "/usr/share/app/unlisted/",
            "/usr/share/app/unlisted/other.tpl",
            "/proc/",
        ]);
        let mut model = Model::with_image_tree(Box::new(fs.clone()));
        model.apply(&exec(1, "/usr/bin/app"));
        for dir in ["/usr/share/app/templates", "/usr/share/app/locale", "/proc"] {
            model.apply(&open(1, dir, 0o200000));
            model.apply(&list(1, dir));
        }
        model.apply(&open(1, "/usr/share/app/templates/plain.tpl", 0));
        model.apply(&open(1, "/usr/share/app/locale/en.mo", 0));
        model.apply(&open(1, "/usr/share/app/unlisted", 0o200000));
        (fs, model)
    }

    #[test]
    fn a_listed_directory_keeps_its_entries_unless_strict_and_names_what_it_lacks() {
        let (fs, model) = lister();
        let app = Exe(p("/usr/bin/app"));
        let plan = plan(&model, &fs, &SlimOptions::default());
        for entry in [
            "/usr/share/app/templates/fancy.tpl",
            "/usr/share/app/templates/alt",
        ] {
            assert_eq!(
                plan.keep.get(&p(entry)),
                Some(&KeepReason::ListedDirectory {
                    dir: p("/usr/share/app/templates"),
                    listed_by: [app.clone()].into(),
                }),
                "{entry}"
            );
        }
        assert!(plan.keep.contains_key(&p("/usr/share/app/templates/extra")));
        assert!(
            !plan
                .keep
                .contains_key(&p("/usr/share/app/templates/extra/deep.tpl")),
            "one level, not the subtree"
        );
        assert!(
            !plan
                .keep
                .contains_key(&p("/usr/share/app/unlisted/other.tpl")),
            "opened, never listed"
        );
        assert!(
            !plan.keep.contains_key(&p("/usr/share/app/locale/big.mo")),
            "over the budget"
        );
        let listed: Vec<(&str, usize, usize, Option<WhyMissing>)> = plan
            .listed_dirs
            .iter()
            .map(|d| (d.dir.as_str(), d.entries, d.missing, d.why_missing))
            .collect();
        assert_eq!(
            listed,
            [
                ("/usr/share/app/locale", 2, 1, Some(WhyMissing::OverBudget)),
                ("/usr/share/app/templates", 4, 0, None),
            ],
            "kernel file systems are not image content"
        );

        let strict = plan_for_strict(&model, &fs);
        assert!(
            !strict
                .keep
                .contains_key(&p("/usr/share/app/templates/fancy.tpl"))
        );
        let templates = strict
            .listed_dirs
            .iter()
            .find(|d| d.dir.as_str() == "/usr/share/app/templates")
            .expect("named with --strict too");
        assert_eq!(
            (
                templates.missing,
                templates.why_missing,
                templates.kept_whole()
            ),
            (2, Some(WhyMissing::Strict), false),
            "fancy.tpl and the alt link; the subdirectory stays as skeleton"
        );
        assert_eq!(templates.listed_by, [app].into());
    }

    #[test]
    fn an_interpreter_keeps_its_application_code_tree_unless_strict() {
        let fs = image(&[
            "/usr/",
            "/usr/bin/",
            "/usr/bin/php8.2",
            "/usr/share/",
            "/usr/share/app/",
            "/usr/share/app/index.php",
            "/usr/share/app/README",
            "/usr/share/app/src/",
            "/usr/share/app/src/Record.php",
            "/usr/share/app/src/Edit.php",
        ]);
        let mut model = Model::with_image_tree(Box::new(fs.clone()));
        model.apply(&exec(1, "/usr/bin/php8.2"));
        model.apply(&open(1, "/usr/share/app/index.php", 0));
        model.apply(&open(1, "/usr/share/app/src/Record.php", 0));
        let plan = plan(&model, &fs, &SlimOptions::default());
        assert_eq!(
            plan.keep[&p("/usr/share/app/src/Edit.php")],
            KeepReason::CodeTree {
                exe: Exe(p("/usr/bin/php8.2")),
                kind: CodeKind::Php,
                dir: p("/usr/share/app"),
                loaded: 2,
                files: 3,
            }
        );
        assert!(!plan.keep.contains_key(&p("/usr/share/app/README")));
        let strict = plan_for_strict(&model, &fs);
        assert!(!strict.keep.contains_key(&p("/usr/share/app/src/Edit.php")));
        assert!(
            strict
                .keep
                .contains_key(&p("/usr/share/app/src/Record.php"))
        );
    }
}
