//! The paper's policies on hand-built event sequences.

use super::script::{Script, wiki};
use super::*;
use crate::trace::ContainerPath;

fn exe(s: &str) -> Exe {
    Exe(ContainerPath::new(s).unwrap())
}

fn name(s: &str) -> PartitionName {
    PartitionName::new(s).unwrap()
}

fn exes(v: &[&str]) -> BTreeSet<Exe> {
    v.iter().map(|s| exe(s)).collect()
}

fn policy(toml: &str) -> Policy {
    Policy::from_toml(toml).unwrap_or_else(|e| panic!("{e}"))
}

/// The partitions as names to executable paths, for comparing whole.
fn layout(p: &Partitioning) -> Vec<(String, Vec<String>)> {
    p.partitions
        .iter()
        .map(|(n, exes)| {
            let exes = exes.iter().map(|e| e.to_string()).collect();
            (n.to_string(), exes)
        })
        .collect()
}

fn row(name: &str, exes: &[&str]) -> (String, Vec<String>) {
    (
        name.to_owned(),
        exes.iter().map(|s| (*s).to_owned()).collect(),
    )
}

fn err(model: &Model, toml: &str) -> String {
    let e = match Policy::from_toml(toml) {
        Ok(p) => partition(model, &p).expect_err("the policy should be refused"),
        Err(e) => e,
    };
    e.to_string()
}

const WIKI_SUBSETS: &str = r#"
kind = "disjoint-subsets"

[partitions]
web = ["/usr/sbin/apache2"]
db = ["/usr/sbin/mysqld"]
images = ["/usr/bin/convert"]
"#;

#[test]
fn all_one_puts_every_executable_in_one_partition() {
    let p = partition(&wiki().model(), &policy(r#"kind = "all-one""#)).unwrap();
    assert_eq!(
        layout(&p),
        [row(
            "all",
            &[
                "/bin/cat",
                "/entrypoint.sh",
                "/usr/bin/convert",
                "/usr/bin/openssl",
                "/usr/bin/php",
                "/usr/sbin/apache2",
                "/usr/sbin/mysqld"
            ]
        )]
    );
    assert!(p.separated_calls.is_empty());
    assert_eq!(p.assignment[&exe("/usr/bin/php")].why, Joined::AllOne);
}

#[test]
fn one_one_keeps_each_executable_alone_and_every_call_remote() {
    let p = partition(&wiki().model(), &policy(r#"kind = "one-one""#)).unwrap();
    let names: Vec<&str> = p.partitions.keys().map(|n| n.as_str()).collect();
    assert_eq!(
        names,
        [
            "apache2",
            "cat",
            "convert",
            "entrypoint.sh",
            "mysqld",
            "openssl",
            "php"
        ]
    );
    assert!(p.partitions.values().all(|e| e.len() == 1));
    let calls: Vec<(String, String)> = p
        .separated_calls
        .iter()
        .map(|c| (c.caller.to_string(), c.callee.to_string()))
        .collect();
    assert_eq!(
        calls,
        [
            ("/entrypoint.sh", "/bin/cat"),
            ("/entrypoint.sh", "/usr/bin/openssl"),
            ("/entrypoint.sh", "/usr/sbin/apache2"),
            ("/entrypoint.sh", "/usr/sbin/mysqld"),
            ("/usr/bin/php", "/usr/bin/convert"),
            ("/usr/sbin/apache2", "/usr/bin/php"),
        ]
        .map(|(a, b)| (a.to_owned(), b.to_owned()))
    );
    assert_eq!(
        p.separated_calls[0].separation,
        Separation::Alone {
            exe: exe("/entrypoint.sh")
        }
    );
    assert_eq!(p.assignment[&exe("/bin/cat")].why, Joined::Alone);
}

#[test]
fn disjoint_subsets_pull_dont_cares_along_the_call_graph_top_down() {
    let p = partition(&wiki().model(), &policy(WIKI_SUBSETS)).unwrap();
    // The start-up script's callees in path order: cat, openssl, then
    // apache2 (web), which brings the script's group into web; mysqld's db
    // must stay apart. PHP goes with Apache, which started it, before its
    // own callee convert could pull it into images.
    assert_eq!(
        layout(&p),
        [
            row("db", &["/usr/sbin/mysqld"]),
            row("images", &["/usr/bin/convert"]),
            row(
                "web",
                &[
                    "/bin/cat",
                    "/entrypoint.sh",
                    "/usr/bin/openssl",
                    "/usr/bin/php",
                    "/usr/sbin/apache2"
                ]
            ),
        ]
    );
    assert_eq!(
        p.separated_calls,
        [
            SeparatedCall {
                caller: exe("/entrypoint.sh"),
                callee: exe("/usr/sbin/mysqld"),
                separation: Separation::Partitions {
                    caller_side: name("web"),
                    callee_side: name("db")
                }
            },
            SeparatedCall {
                caller: exe("/usr/bin/php"),
                callee: exe("/usr/bin/convert"),
                separation: Separation::Partitions {
                    caller_side: name("web"),
                    callee_side: name("images")
                }
            },
        ]
    );
    let why = |e: &str| p.assignment[&exe(e)].why.clone();
    assert_eq!(why("/usr/sbin/apache2"), Joined::Listed);
    assert_eq!(
        why("/usr/bin/php"),
        Joined::CalledBy {
            caller: exe("/usr/sbin/apache2")
        }
    );
    // The script is in web because it started apache2; cat because the
    // script started it: each chain ends at a listed executable.
    assert_eq!(
        why("/entrypoint.sh"),
        Joined::Calls {
            callee: exe("/usr/sbin/apache2")
        }
    );
    assert_eq!(
        why("/bin/cat"),
        Joined::CalledBy {
            caller: exe("/entrypoint.sh")
        }
    );
}

#[test]
fn constraints_steer_dont_cares() {
    let toml = format!(
        "{}\n{}",
        r#"
kind = "disjoint-subsets"
together = [["/bin/cat", "db"]]
apart = [["/usr/bin/openssl", "web"]]
"#,
        WIKI_SUBSETS.replace(r#"kind = "disjoint-subsets""#, "")
    );
    let p = partition(&wiki().model(), &policy(&toml)).unwrap();
    // cat is with db by rule; the script, which starts cat first, follows
    // it, and openssl follows the script (it may not go to web anyway).
    assert_eq!(
        layout(&p),
        [
            row(
                "db",
                &[
                    "/bin/cat",
                    "/entrypoint.sh",
                    "/usr/bin/openssl",
                    "/usr/sbin/mysqld"
                ]
            ),
            row("images", &["/usr/bin/convert"]),
            row("web", &["/usr/bin/php", "/usr/sbin/apache2"]),
        ]
    );
    assert_eq!(
        p.assignment[&exe("/bin/cat")].why,
        Joined::Together {
            constraint: Constraint::new([
                Member::Exe(exe("/bin/cat")),
                Member::Partition(name("db"))
            ])
        }
    );
    let callers: Vec<(&str, &str)> = p
        .separated_calls
        .iter()
        .map(|c| (c.caller.0.as_str(), c.callee.0.as_str()))
        .collect();
    assert_eq!(
        callers,
        [
            ("/entrypoint.sh", "/usr/sbin/apache2"),
            ("/usr/bin/php", "/usr/bin/convert")
        ]
    );
}

/// A web server whose PHP runs ImageMagick; nothing else.
fn web_php_convert() -> Script {
    let mut s = Script::default();
    let web = s.start("/usr/sbin/apache2");
    let php = s.spawn(web, "/usr/bin/php");
    s.spawn(php, "/usr/bin/convert");
    s
}

#[test]
fn callees_join_their_callers_transitively() {
    let toml = r#"
kind = "disjoint-subsets"
[partitions]
web = ["/usr/sbin/apache2"]
"#;
    let p = partition(&web_php_convert().model(), &policy(toml)).unwrap();
    assert_eq!(
        layout(&p),
        [row(
            "web",
            &["/usr/bin/convert", "/usr/bin/php", "/usr/sbin/apache2"]
        )]
    );
    assert!(p.separated_calls.is_empty());
    assert_eq!(
        p.assignment[&exe("/usr/bin/convert")].why,
        Joined::CalledBy {
            caller: exe("/usr/bin/php")
        }
    );
}

#[test]
fn a_negative_constraint_stops_a_call_graph_merge() {
    let toml = r#"
kind = "disjoint-subsets"
apart = [["/usr/bin/php", "/usr/bin/convert"]]
[partitions]
web = ["/usr/sbin/apache2"]
"#;
    let p = partition(&web_php_convert().model(), &policy(toml)).unwrap();
    assert_eq!(
        layout(&p),
        [
            row("convert", &["/usr/bin/convert"]),
            row("web", &["/usr/bin/php", "/usr/sbin/apache2"]),
        ]
    );
    assert_eq!(
        p.separated_calls,
        [SeparatedCall {
            caller: exe("/usr/bin/php"),
            callee: exe("/usr/bin/convert"),
            separation: Separation::Apart {
                constraint: Constraint::new([
                    Member::Exe(exe("/usr/bin/convert")),
                    Member::Exe(exe("/usr/bin/php"))
                ]),
                caller_side: exe("/usr/bin/php"),
                callee_side: exe("/usr/bin/convert"),
            }
        }]
    );
    assert_eq!(p.assignment[&exe("/usr/bin/convert")].why, Joined::DontCare);
}

#[test]
fn a_positive_merge_enables_further_call_graph_merges() {
    // A backup helper (started by cron) runs a dump tool. Without a rule
    // they form their own partition; `together` with db brings the helper,
    // and the call graph then brings the tool it runs.
    let mut s = Script::default();
    s.start("/usr/sbin/mysqld");
    let cron = s.start("/usr/sbin/cron");
    let helper = s.spawn(cron, "/usr/local/bin/backup");
    s.spawn(helper, "/usr/bin/mysqldump");
    let model = s.model();
    let base = r#"
kind = "disjoint-subsets"
apart = [["/usr/sbin/cron", "db"]]
[partitions]
db = ["/usr/sbin/mysqld"]
"#;
    let p = partition(&model, &policy(base)).unwrap();
    assert_eq!(
        layout(&p),
        [
            row(
                "cron",
                &[
                    "/usr/bin/mysqldump",
                    "/usr/local/bin/backup",
                    "/usr/sbin/cron"
                ]
            ),
            row("db", &["/usr/sbin/mysqld"]),
        ]
    );
    let with_rule = base.replace(
        "apart =",
        r#"together = [["/usr/local/bin/backup", "db"]]
apart ="#,
    );
    let p = partition(&model, &policy(&with_rule)).unwrap();
    assert_eq!(
        layout(&p),
        [
            row("cron", &["/usr/sbin/cron"]),
            row(
                "db",
                &[
                    "/usr/bin/mysqldump",
                    "/usr/local/bin/backup",
                    "/usr/sbin/mysqld"
                ]
            ),
        ]
    );
    assert_eq!(
        p.assignment[&exe("/usr/bin/mysqldump")].why,
        Joined::CalledBy {
            caller: exe("/usr/local/bin/backup")
        }
    );
    assert!(matches!(
        &p.separated_calls[..],
        [SeparatedCall { separation: Separation::Apart { caller_side, .. }, .. }]
            if caller_side.0.as_str() == "/usr/sbin/cron"
    ));
}

#[test]
fn unlisted_alone_keeps_unnamed_executables_by_themselves() {
    let toml = r#"
kind = "disjoint-subsets"
unlisted = "alone"
[partitions]
web = ["/usr/sbin/apache2", "/usr/bin/php"]
"#;
    let p = partition(&web_php_convert().model(), &policy(toml)).unwrap();
    assert_eq!(
        layout(&p),
        [
            row("convert", &["/usr/bin/convert"]),
            row("web", &["/usr/bin/php", "/usr/sbin/apache2"]),
        ]
    );
    assert_eq!(
        p.separated_calls[0].separation,
        Separation::Alone {
            exe: exe("/usr/bin/convert")
        }
    );
}

#[test]
fn derived_names_do_not_collide() {
    let mut s = Script::default();
    s.start("/usr/bin/python3");
    s.start("/usr/local/bin/python3");
    s.start("/opt/Tool Box/Run!");
    let p = partition(&s.model(), &policy(r#"kind = "one-one""#)).unwrap();
    let names: Vec<&str> = p.partitions.keys().map(|n| n.as_str()).collect();
    assert_eq!(names, ["python3", "run", "usr-local-bin-python3"]);

    // Long names are cut to 63 characters, and numbered within them.
    // Three paths that all lower-case to the same file name, two to the
    // same whole path.
    let x = |n: usize| "x".repeat(n);
    let mut s = Script::default();
    for path in [
        format!("/A/{}", x(70)),
        format!("/a/{}", x(70)),
        format!("/a/{}", "X".repeat(70)),
    ] {
        s.start(&path);
    }
    let p = partition(&s.model(), &policy(r#"kind = "one-one""#)).unwrap();
    let names: Vec<String> = p.partitions.keys().map(|n| n.to_string()).collect();
    assert_eq!(
        names,
        [format!("a-{}", x(61)), format!("{}-2", x(61)), x(63)]
    );
    assert_eq!(
        p.assignment[&exe(&format!("/a/{}", x(70)))]
            .partition
            .as_str(),
        format!("{}-2", x(61))
    );
}

#[test]
fn an_unobserved_executable_is_named_with_the_closest_observed_one() {
    let msg = err(
        &wiki().model(),
        r#"
kind = "disjoint-subsets"
[partitions]
web = ["/usr/sbin/apache"]
"#,
    );
    assert!(msg.contains("`/usr/sbin/apache`"), "{msg}");
    assert!(msg.contains("in partition `web`"), "{msg}");
    assert!(msg.contains("did you mean `/usr/sbin/apache2`?"), "{msg}");
    assert!(msg.contains("observed: /bin/cat, /entrypoint.sh"), "{msg}");
    // Same file name elsewhere wins over spelling.
    let msg = err(
        &wiki().model(),
        r#"
kind = "disjoint-subsets"
[partitions]
web = ["/usr/local/bin/php"]
"#,
    );
    assert!(msg.contains("did you mean `/usr/bin/php`?"), "{msg}");
}

#[test]
fn contradicting_constraints_are_refused_with_the_chain() {
    let msg = err(
        &wiki().model(),
        r#"
kind = "disjoint-subsets"
together = [["/usr/bin/php", "/usr/bin/convert"]]
apart = [["/usr/bin/convert", "web"]]
[partitions]
web = ["/usr/sbin/apache2", "/usr/bin/php"]
"#,
    );
    assert_eq!(
        msg,
        "apart [/usr/bin/convert, web] cannot hold: `/usr/bin/convert` and `web` must be \
         together because together [/usr/bin/convert, /usr/bin/php] joins `/usr/bin/convert` \
         and `/usr/bin/php`, and `/usr/bin/php` is in partition `web`"
    );
}

#[test]
fn a_together_rule_joining_two_partitions_is_refused() {
    let msg = err(
        &wiki().model(),
        r#"
kind = "disjoint-subsets"
together = [["/usr/sbin/apache2", "/usr/sbin/mysqld"]]
[partitions]
web = ["/usr/sbin/apache2"]
db = ["/usr/sbin/mysqld"]
"#,
    );
    assert!(
        msg.contains("partitions `db` and `web` are disjoint"),
        "{msg}"
    );
    assert!(
        msg.contains("together [/usr/sbin/apache2, /usr/sbin/mysqld]"),
        "{msg}"
    );
}

#[test]
fn overlapping_partitions_are_refused() {
    let msg = err(
        &wiki().model(),
        r#"
kind = "disjoint-subsets"
dont_care = ["/usr/bin/php"]
[partitions]
web = ["/usr/sbin/apache2", "/usr/bin/php"]
db = ["/usr/sbin/mysqld", "/usr/sbin/apache2"]
"#,
    );
    assert!(msg.starts_with("2 problems with the policy:"), "{msg}");
    assert!(
        msg.contains(
            "`/usr/sbin/apache2` is in both partition `db` and partition `web`: partitions are disjoint"
        ),
        "{msg}"
    );
    assert!(
        msg.contains("`/usr/bin/php` is in both partition `web` and dont_care"),
        "{msg}"
    );
}

#[test]
fn an_unknown_partition_name_lists_the_defined_ones() {
    let msg = err(
        &wiki().model(),
        &WIKI_SUBSETS.replace(
            r#"kind = "disjoint-subsets""#,
            "kind = \"disjoint-subsets\"\napart = [[\"web\", \"imagemagick\"]]",
        ),
    );
    assert_eq!(
        msg,
        "apart [imagemagick, web] names partition `imagemagick`, which the policy does not \
         define; defined: db, images, web"
    );
}

#[test]
fn empty_and_malformed_policies_say_what_to_write() {
    let model = wiki().model();
    let cases: &[(&str, &[&str])] = &[
        ("", &["the policy is empty", "kind = \"all-one\""]),
        ("# nothing yet\n", &["the policy is empty"]),
        (
            "kind = \"disjoint-subsets\"",
            &["names no partitions and no constraints", "[partitions]"],
        ),
        (
            "kind = \"all-one\"\napart = [[\"/bin/cat\", \"/usr/bin/php\"]]",
            &["kind = \"all-one\" takes no `apart`"],
        ),
        (
            "[partitions]\nweb = [\"/usr/sbin/apache2\"]",
            &["the policy has no `kind`"],
        ),
        ("kind = \"one-to-one\"", &["one-to-one", "one-one"]),
        (
            "kind = \"disjoint-subsets\"\n[partitons]\nweb = [\"/usr/sbin/apache2\"]",
            &["partitons", "partitions"],
        ),
        (
            "kind = \"disjoint-subsets\"\n[partitions]\n\"Web Server\" = [\"/usr/sbin/apache2\"]",
            &["partition name `Web Server` is not valid"],
        ),
        (
            "kind = \"disjoint-subsets\"\n[partitions]\nweb = [\"usr/sbin/apache2\"]",
            &["`usr/sbin/apache2` in partition `web` is not an absolute path"],
        ),
        (
            "kind = \"disjoint-subsets\"\n[partitions]\nweb = [\"/usr/bin/php\", \"/usr/bin//php\"]",
            &["`/usr/bin/php` is listed twice in partition `web`"],
        ),
        (
            "kind = \"disjoint-subsets\"\n[partitions]\nweb = []",
            &["partition `web` lists no executables"],
        ),
        (
            "kind = \"disjoint-subsets\"\ntogether = [[\"/usr/bin/php\"]]",
            &["together [/usr/bin/php] has one member"],
        ),
        (
            "kind = \"disjoint-subsets\"\nunlisted = \"reject\"\n[partitions]\nweb = [\"/usr/sbin/apache2\", \"/usr/bin/php\"]",
            &[
                "5 observed executables are named nowhere",
                "/bin/cat, /entrypoint.sh, /usr/bin/convert, /usr/bin/openssl, /usr/sbin/mysqld;",
            ],
        ),
    ];
    for (toml, wanted) in cases {
        let msg = err(&model, toml);
        for w in *wanted {
            assert!(msg.contains(w), "{toml:?}: {msg:?} lacks {w:?}");
        }
    }
}

#[test]
fn an_empty_model_has_nothing_to_partition() {
    let msg = err(&Model::new(), r#"kind = "all-one""#);
    assert!(msg.contains("no executables"), "{msg}");
}

#[test]
fn the_result_does_not_depend_on_run_or_policy_order() {
    let model = wiki().model();
    let a = r#"
kind = "disjoint-subsets"
together = [["/bin/cat", "db"], ["/usr/bin/openssl", "/entrypoint.sh"]]
apart = [["/usr/bin/openssl", "web"], ["/usr/bin/php", "images"]]
[partitions]
web = ["/usr/sbin/apache2", "/usr/bin/php"]
db = ["/usr/sbin/mysqld"]
images = ["/usr/bin/convert"]
"#;
    let b = r#"
apart = [["images", "/usr/bin/php"], ["web", "/usr/bin/openssl"]]
together = [["/entrypoint.sh", "/usr/bin/openssl"], ["db", "/bin/cat"]]
kind = "disjoint-subsets"
[partitions]
images = ["/usr/bin/convert"]
db = ["/usr/sbin/mysqld"]
web = ["/usr/bin/php", "/usr/sbin/apache2"]
"#;
    let first = partition(&model, &policy(a)).unwrap();
    assert_eq!(first, partition(&model, &policy(a)).unwrap());
    assert_eq!(policy(a), policy(b));
    let shuffled = partition(&model, &policy(b)).unwrap();
    assert_eq!(first, shuffled);
    assert_eq!(
        serde_json::to_string(&first).unwrap(),
        serde_json::to_string(&shuffled).unwrap()
    );
    // A model built from the same events again partitions the same way.
    assert_eq!(first, partition(&wiki().model(), &policy(a)).unwrap());
    assert_eq!(
        first.partitions[&name("db")],
        exes(&[
            "/bin/cat",
            "/entrypoint.sh",
            "/usr/bin/openssl",
            "/usr/sbin/mysqld"
        ])
    );
}

#[test]
fn partitioning_serialises_with_meaningful_tags() {
    let p = partition(&web_php_convert().model(), &policy(r#"kind = "one-one""#)).unwrap();
    let json = serde_json::to_value(&p).unwrap();
    assert_eq!(json["policy"], "one-one");
    assert_eq!(json["partitions"]["php"][0], "/usr/bin/php");
    assert_eq!(
        json["assignment"]["/usr/bin/php"],
        serde_json::json!({"partition": "php", "why": {"reason": "alone"}})
    );
    assert_eq!(
        json["separated_calls"][0]["separation"],
        serde_json::json!({"by": "alone", "exe": "/usr/bin/php"})
    );
    let back: Partitioning = serde_json::from_value(json).unwrap();
    assert_eq!(back, p);
}

#[test]
fn the_documented_examples_are_valid_policies() {
    let doc = include_str!("../../../docs/policy.md");
    let mut blocks: Vec<String> = Vec::new();
    let mut current: Option<String> = None;
    for line in doc.lines() {
        if let Some(code) = line.strip_prefix("    ") {
            let block = current.get_or_insert_with(String::new);
            block.push_str(code);
            block.push('\n');
        } else if line.is_empty() {
            if let Some(block) = current.as_mut() {
                block.push('\n');
            }
        } else if let Some(block) = current.take() {
            blocks.push(block);
        }
    }
    blocks.extend(current);
    let policies: Vec<&String> = blocks
        .iter()
        .filter(|b| b.starts_with("kind =") && b.matches("kind =").count() == 1)
        .collect();
    assert_eq!(policies.len(), 5, "{blocks:#?}");
    for toml in policies {
        if let Err(e) = Policy::from_toml(toml) {
            panic!("{toml}\n{e}");
        }
    }
}
