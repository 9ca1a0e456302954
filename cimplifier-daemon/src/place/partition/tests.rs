//! Placement of the paper's running example and small cases.

use super::*;
use crate::partition::script::{Script, wiki};
use crate::partition::{Policy, partition};

fn p(s: &str) -> ContainerPath {
    ContainerPath::new(s).unwrap()
}

fn exe(s: &str) -> Exe {
    Exe(p(s))
}

fn name(s: &str) -> PartitionName {
    PartitionName::new(s).unwrap()
}

fn names(v: &[&str]) -> BTreeSet<PartitionName> {
    v.iter().map(|s| name(s)).collect()
}

fn paths(v: &[&str]) -> BTreeSet<ContainerPath> {
    v.iter().map(|s| p(s)).collect()
}

fn access(v: &[Access]) -> BTreeSet<Access> {
    v.iter().copied().collect()
}

/// No image: nothing is known about kinds or links.
struct NoImage;

impl ImageTree for NoImage {
    fn read_link(&self, _: &ContainerPath) -> Option<String> {
        None
    }
    fn head(&self, _: &ContainerPath, _: usize) -> Option<Vec<u8>> {
        None
    }
}

fn plan_for(script: &Script, policy: &str) -> PartitionPlan {
    let model = script.model();
    let policy = Policy::from_toml(policy).unwrap();
    plan(&model, &partition(&model, &policy).unwrap(), &NoImage)
}

/// The plan with `image` (a host directory) as the source image, as emit
/// makes it: the model and the placement both see the image.
fn plan_in(script: &Script, policy: &str, image: &std::path::Path) -> PartitionPlan {
    let tree = crate::model::DirTree::new(image);
    let model = script.model_with_tree(Box::new(tree.clone()));
    let policy = Policy::from_toml(policy).unwrap();
    plan(&model, &partition(&model, &policy).unwrap(), &tree)
}

const WIKI_SUBSETS: &str = r#"
kind = "disjoint-subsets"
[partitions]
web = ["/usr/sbin/apache2"]
db = ["/usr/sbin/mysqld"]
images = ["/usr/bin/convert"]
"#;

fn volume<'a>(plan: &'a PartitionPlan, mount: &str) -> &'a SharedVolume {
    plan.volumes
        .iter()
        .find(|v| v.mount == p(mount))
        .unwrap_or_else(|| panic!("no volume at {mount}: {:#?}", plan.volumes))
}

#[test]
fn an_upload_created_by_php_is_shared_with_convert_by_mounting_its_directory() {
    let plan = plan_for(&wiki(), WIKI_SUBSETS);
    let v = volume(&plan, "/var/www/wiki/images");
    assert_eq!(v.partitions, names(&["images", "web"]));
    assert_eq!(
        v.shared,
        [SharedResource {
            resource: p("/var/www/wiki/images/up.png"),
            mounted_as: MountedAs::Through {
                dir: p("/var/www/wiki/images")
            },
            uses: vec![
                Use {
                    partition: name("images"),
                    exe: exe("/usr/bin/convert"),
                    access: access(&[Access::Read]),
                },
                Use {
                    partition: name("web"),
                    exe: exe("/usr/bin/php"),
                    access: access(&[Access::Write, Access::Create]),
                },
            ],
        }]
    );
    // The thumbnail only convert uses still lives in the volume, which
    // convert mounts.
    assert_eq!(
        v.contents,
        paths(&[
            "/var/www/wiki/images/thumb",
            "/var/www/wiki/images/thumb/up.png",
            "/var/www/wiki/images/up.png"
        ])
    );
    let images = &plan.partitions[&name("images")];
    assert!(
        !images
            .private
            .contains(&p("/var/www/wiki/images/thumb/up.png"))
    );
    assert!(images.copied.contains(&p("/etc/ImageMagick-6/policy.xml")));
    assert!(
        images.copied.contains(&p("/var/www/wiki")),
        "above the mount"
    );
}

#[test]
fn a_socket_in_a_directory_made_at_run_time_is_shared_one_level_up() {
    let plan = plan_for(&wiki(), WIKI_SUBSETS);
    // mysqld makes /run/mysqld and binds its socket there: mounting
    // /run/mysqld would make the directory exist before mysqld's mkdir.
    let v = volume(&plan, "/run");
    assert_eq!(v.partitions, names(&["db", "web"]));
    let shared: Vec<(&str, &MountedAs)> = v
        .shared
        .iter()
        .map(|s| (s.resource.as_str(), &s.mounted_as))
        .collect();
    let via_run = MountedAs::Through { dir: p("/run") };
    assert_eq!(
        shared,
        [
            ("/run/mysqld", &via_run),
            ("/run/mysqld/mysqld.sock", &via_run)
        ]
    );
    let sock = &v.shared[1].uses;
    assert_eq!(
        sock.iter()
            .map(|u| (u.partition.as_str(), u.exe.0.as_str(), u.access.clone()))
            .collect::<Vec<_>>(),
        [
            ("db", "/usr/sbin/mysqld", access(&[Access::Bind])),
            ("web", "/usr/bin/php", access(&[Access::Connect])),
        ]
    );
    let shared: Vec<&str> = plan
        .volumes
        .iter()
        .filter(|v| !v.is_private())
        .map(|v| v.mount.as_str())
        .collect();
    assert_eq!(shared, ["/run", "/var/www/wiki/images"]);
}

#[test]
fn the_wiki_partitions_hold_what_they_use() {
    let plan = plan_for(&wiki(), WIKI_SUBSETS);
    let db = &plan.partitions[&name("db")];
    assert_eq!(db.executables, [exe("/usr/sbin/mysqld")].into());
    // ibdata1 is in the volume of mysqld's state directory.
    assert!(db.private.is_empty(), "{:?}", db.private);
    assert_eq!(
        db.copied,
        paths(&[
            "/",
            "/etc",
            "/etc/mysql",
            "/etc/mysql/my.cnf",
            "/usr",
            "/usr/sbin",
            "/usr/sbin/mysqld",
            "/var",
            "/var/lib",
        ])
    );
    assert_eq!(db.mounts, paths(&["/run", "/var/lib/mysql"]));
    assert_eq!(db.serves, [exe("/usr/sbin/mysqld")].into());
    assert!(db.stubs.is_empty());
    let web = &plan.partitions[&name("web")];
    // openssl makes the key and apache2 reads it: both in web, so in
    // web's own volume of openssl's state directory.
    let key = volume(&plan, "/etc/ssl/private");
    assert!(key.is_private() && key.partitions == names(&["web"]));
    assert!(web.copied.contains(&p("/etc/wiki/settings.conf")));
    assert_eq!(
        web.mounts,
        paths(&["/etc/ssl/private", "/run", "/var/www/wiki/images"])
    );
    assert_eq!(
        web.stubs,
        BTreeMap::from([
            (exe("/usr/bin/convert"), name("images")),
            (exe("/usr/sbin/mysqld"), name("db")),
        ])
    );
    assert!(web.resources.iter().any(
        |u| u.resource == Resource::Path(p("/etc/motd")) && u.access == access(&[Access::Read])
    ));
}

#[test]
fn rpe_edges_and_network_links_cross_partitions() {
    let plan = plan_for(&wiki(), WIKI_SUBSETS);
    assert_eq!(
        plan.rpe,
        [
            RpeEdge {
                caller_partition: name("web"),
                caller: exe("/entrypoint.sh"),
                callee_partition: name("db"),
                callee: exe("/usr/sbin/mysqld"),
                separation: Separation::Partitions {
                    caller_side: name("web"),
                    callee_side: name("db")
                },
            },
            RpeEdge {
                caller_partition: name("web"),
                caller: exe("/usr/bin/php"),
                callee_partition: name("images"),
                callee: exe("/usr/bin/convert"),
                separation: Separation::Partitions {
                    caller_side: name("web"),
                    callee_side: name("images")
                },
            },
        ]
    );
    let inet = |s: &str| {
        let a: std::net::SocketAddr = s.parse().unwrap();
        Resource::Inet(crate::model::InetEndpoint {
            ip: a.ip(),
            port: a.port(),
        })
    };
    assert!(plan.network.shared_namespace);
    assert_eq!(
        plan.network.links,
        [NetworkLink {
            client_partition: name("web"),
            client: exe("/usr/bin/php"),
            reached_as: inet("127.0.0.1:3306"),
            server_partition: name("db"),
            server: exe("/usr/sbin/mysqld"),
            bound: inet("0.0.0.0:3306"),
        }]
    );
}

#[test]
fn a_negative_constraint_leaves_a_stub_in_the_callers_partition() {
    let toml = r#"
kind = "disjoint-subsets"
apart = [["/usr/bin/php", "/usr/bin/convert"]]
[partitions]
web = ["/usr/sbin/apache2", "/entrypoint.sh"]
"#;
    let plan = plan_for(&wiki(), toml);
    let convert = plan
        .partitions
        .iter()
        .find(|(_, c)| c.executables.contains(&exe("/usr/bin/convert")))
        .map(|(n, _)| n.clone())
        .unwrap();
    assert_eq!(convert, name("convert"));
    let web = &plan.partitions[&name("web")];
    assert_eq!(
        web.stubs,
        BTreeMap::from([(exe("/usr/bin/convert"), name("convert"))])
    );
    assert_eq!(
        plan.rpe.iter().map(|e| &e.separation).collect::<Vec<_>>(),
        [&Separation::Apart {
            constraint: crate::partition::Constraint::new([
                crate::partition::Member::Exe(exe("/usr/bin/convert")),
                crate::partition::Member::Exe(exe("/usr/bin/php")),
            ]),
            caller_side: exe("/usr/bin/php"),
            callee_side: exe("/usr/bin/convert"),
        }]
    );
}

#[test]
fn all_one_shares_nothing() {
    let plan = plan_for(&wiki(), r#"kind = "all-one""#);
    assert_eq!(plan.partitions.len(), 1);
    assert!(plan.volumes.iter().all(SharedVolume::is_private));
    assert!(plan.rpe.is_empty() && plan.network.links.is_empty());
    let all = &plan.partitions[&name("all")];
    // State that must last is in volumes; /run need not.
    assert!(all.mounts.contains(&p("/var/www/wiki/images")));
    assert!(all.private.contains(&p("/run/mysqld/mysqld.sock")));
    assert!(all.copied.contains(&p("/etc/motd")));
    assert!(all.stubs.is_empty());
    let first = plan.render_text().lines().next().unwrap().to_owned();
    assert!(
        first.starts_with("policy all-one: 1 partition, 0 shared volumes, ")
            && first.contains(", 0 RPE calls,"),
        "one of a thing is said in the singular: {first}"
    );
}

#[test]
fn one_one_copies_read_only_files_and_shares_the_key() {
    let plan = plan_for(&wiki(), r#"kind = "one-one""#);
    for part in ["entrypoint.sh", "php"] {
        assert!(
            plan.partitions[&name(part)]
                .copied
                .contains(&p("/etc/wiki/settings.conf")),
            "read by both, changed by neither: a copy each"
        );
    }
    let key = volume(&plan, "/etc/ssl/private");
    assert_eq!(key.partitions, names(&["apache2", "openssl"]));
    assert_eq!(plan.rpe.len(), 6);
    assert_eq!(
        plan.partitions[&name("entrypoint.sh")].stubs.len(),
        4,
        "cat, openssl, apache2 and mysqld"
    );
}

#[test]
fn files_changed_in_place_are_mounted_themselves_unless_inside_another_volume() {
    // In /run, a directory whose contents need not last: no state volume.
    let mut s = Script::default();
    let db = s.start("/usr/sbin/mysqld");
    s.write(db, "/run/mysql/ibdata1").write(db, "/run/state");
    let backup = s.start("/usr/local/bin/backup");
    s.read(backup, "/run/mysql/ibdata1")
        .read(backup, "/run/state");
    let toml = r#"
kind = "disjoint-subsets"
[partitions]
db = ["/usr/sbin/mysqld"]
backup = ["/usr/local/bin/backup"]
"#;
    let plan = plan_for(&s, toml);
    let mounts: Vec<&str> = plan.volumes.iter().map(|v| v.mount.as_str()).collect();
    assert_eq!(mounts, ["/run/mysql/ibdata1", "/run/state"]);
    assert_eq!(plan.volumes[0].shared[0].mounted_as, MountedAs::Itself);
    // Now mysqld also creates a log next to ibdata1, which backup reads:
    // the directory is mounted and ibdata1's own volume merges into it.
    s.create(db, "/run/mysql/ib_logfile0");
    s.read(backup, "/run/mysql/ib_logfile0");
    let plan = plan_for(&s, toml);
    let mounts: Vec<&str> = plan.volumes.iter().map(|v| v.mount.as_str()).collect();
    assert_eq!(mounts, ["/run/mysql", "/run/state"]);
    let v = &plan.volumes[0];
    let shared: Vec<&str> = v.shared.iter().map(|s| s.resource.as_str()).collect();
    assert_eq!(shared, ["/run/mysql/ib_logfile0", "/run/mysql/ibdata1"]);
}

#[test]
fn what_cannot_be_shared_is_a_warning() {
    let mut s = Script::default();
    let a = s.start("/usr/sbin/daemon");
    s.create(a, "/daemon.pid").create(a, "/dev/shm/ring");
    s.write(a, "/dev/null");
    let b = s.start("/usr/bin/monitor");
    s.read(b, "/daemon.pid").read(b, "/dev/shm/ring");
    s.write(b, "/dev/null");
    let plan = plan_for(&s, r#"kind = "one-one""#);
    assert!(plan.volumes.is_empty(), "{:#?}", plan.volumes);
    assert_eq!(
        plan.warnings,
        [
            PlanWarning::RootNotShareable {
                resource: p("/daemon.pid"),
                partitions: names(&["daemon", "monitor"]),
            },
            PlanWarning::IpcNotShared {
                resource: p("/dev/shm/ring"),
                partitions: names(&["daemon", "monitor"]),
            },
        ]
    );
    let monitor = &plan.partitions[&name("monitor")];
    assert!(monitor.runtime.contains(&p("/dev/null")));
    assert!(!monitor.copied.contains(&p("/dev")));
}

#[test]
fn the_plan_is_deterministic_and_renders_as_json_and_text() {
    let first = plan_for(&wiki(), WIKI_SUBSETS);
    let shuffled = WIKI_SUBSETS.replace("web = [\"/usr/sbin/apache2\"]\n", "")
        + "web = [\"/usr/sbin/apache2\"]\n";
    assert_ne!(shuffled, WIKI_SUBSETS);
    let again = plan_for(&wiki(), &shuffled);
    assert_eq!(first, again);
    let json = serde_json::to_string_pretty(&first).unwrap();
    assert_eq!(json, serde_json::to_string_pretty(&again).unwrap());
    let back: PartitionPlan = serde_json::from_str(&json).unwrap();
    assert_eq!(back, first);
    let value: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(value["format"], FORMAT);
    assert_eq!(
        value["volumes"][1]["shared"][0]["mounted_as"],
        serde_json::json!({"how": "through", "dir": "/run"})
    );
    assert_eq!(
        value["partitions"]["web"]["stubs"]["/usr/bin/convert"],
        "images"
    );

    let text = first.render_text();
    assert_eq!(text, render_text(&again));
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(
        lines[0],
        "policy disjoint-subsets: 3 partitions, 2 shared volumes, 2 private state volumes, 2 RPE calls, one network namespace"
    );
    let has = |needle: &str| {
        assert!(
            lines.iter().any(|l| l.contains(needle)),
            "no line has {needle:?}:\n{text}"
        )
    };
    has("PARTITION  COPIED  PRIVATE  MOUNTS");
    has("db         9       0        /run, /var/lib/mysql");
    has(
        "/var/lib/mysql        db           /var/lib/mysql               state directory of db                      written by /usr/sbin/mysqld",
    );
    has("/usr/bin/convert (images), /usr/sbin/mysqld (db)");
    has("/run/mysqld/mysqld.sock");
    has("db /usr/sbin/mysqld bind; web /usr/bin/php connect");
    has("db /usr/sbin/mysqld create, stat; web /usr/bin/php stat");
    has("created/removed, via /var/www/wiki/images");
    let tail = text.split_once("\nRPE CALLER").unwrap().1;
    assert_eq!(
        tail,
        "          RUNS                     APART BECAUSE
web /entrypoint.sh  db /usr/sbin/mysqld      partitions web and db are disjoint
web /usr/bin/php    images /usr/bin/convert  partitions web and images are disjoint

NETWORK CLIENT    REACHES         SERVER (BOUND)
web /usr/bin/php  127.0.0.1:3306  db /usr/sbin/mysqld (0.0.0.0:3306)
"
    );
}

#[test]
fn a_directory_another_partition_only_stats_is_not_shared() {
    let mut s = Script::default();
    let init = s.start("/usr/bin/supervisord");
    let db = s.spawn(init, "/usr/sbin/mariadbd");
    s.write(db, "/tmp");
    let web = s.spawn(init, "/usr/sbin/nginx");
    s.stat(web, "/tmp");
    let policy = Policy::from_toml(
        "kind = \"disjoint-subsets\"\n[partitions]\ninit = [\"/usr/bin/supervisord\"]\n\
         db = [\"/usr/sbin/mariadbd\"]\nweb = [\"/usr/sbin/nginx\"]\n",
    )
    .unwrap();
    let image = tempfile::tempdir().unwrap();
    std::fs::create_dir(image.path().join("tmp")).unwrap();
    let tree = crate::model::DirTree::new(image.path());
    let placed = |model: &Model, tree: &dyn ImageTree| {
        plan(model, &partition(model, &policy).unwrap(), tree)
    };

    // Knowing /tmp is a directory, nginx's stat needs no shared /tmp.
    let with_tree = placed(&s.model_with_tree(Box::new(tree.clone())), &tree);
    assert!(with_tree.volumes.is_empty(), "{:#?}", with_tree.volumes);
    // Without the image, a stat of what another partition writes is a use.
    let without = placed(&s.model(), &NoImage);
    assert_eq!(volume(&without, "/tmp").partitions, names(&["db", "web"]));
    // Reading the directory (its entries) still shares it.
    s.read(web, "/tmp");
    let reads = placed(&s.model_with_tree(Box::new(tree.clone())), &tree);
    assert_eq!(volume(&reads, "/tmp").partitions, names(&["db", "web"]));
}

/// A Debian-like image: `/var/run -> /run`, with /run/mysqld and /run/app
/// made by the packages.
fn debian_run() -> tempfile::TempDir {
    let image = tempfile::tempdir().unwrap();
    let r = image.path();
    for d in ["run/mysqld", "run/app", "var", "etc/app", "usr/sbin"] {
        std::fs::create_dir_all(r.join(d)).unwrap();
    }
    std::os::unix::fs::symlink("/run", r.join("var/run")).unwrap();
    std::fs::write(r.join("etc/app/state"), b"0").unwrap();
    image
}

const DB_WEB_INIT: &str = r#"
kind = "disjoint-subsets"
[partitions]
init = ["/usr/bin/supervisord"]
db = ["/usr/sbin/mariadbd"]
web = ["/usr/sbin/php-fpm"]
"#;

#[test]
fn a_socket_reached_through_a_symlinked_directory_is_one_resource_shared_through_its_directory() {
    let image = debian_run();
    let mut s = Script::default();
    let init = s.start("/usr/bin/supervisord");
    let db = s.spawn(init, "/usr/sbin/mariadbd");
    s.bind_unix(db, "/run/mysqld/mysqld.sock");
    // A start-up check and the client use the other name of /run.
    s.stat(init, "/var/run/mysqld/mysqld.sock");
    let web = s.spawn(init, "/usr/sbin/php-fpm");
    s.connect_unix(web, "/var/run/mysqld/mysqld.sock");
    let plan = plan_in(&s, DB_WEB_INIT, image.path());
    let mounts: Vec<&str> = plan.volumes.iter().map(|v| v.mount.as_str()).collect();
    // Never a volume at the socket (mariadbd's bind would fail with
    // EADDRINUSE), nor at its /var/run name.
    assert_eq!(mounts, ["/run/mysqld"], "{:#?}", plan.volumes);
    let v = volume(&plan, "/run/mysqld");
    assert_eq!(v.partitions, names(&["db", "init", "web"]));
    assert_eq!(v.shared[0].resource, p("/run/mysqld/mysqld.sock"));
    assert_eq!(
        v.shared[0].mounted_as,
        MountedAs::Through {
            dir: p("/run/mysqld")
        }
    );
    assert_eq!(plan.dir_links.get(&p("/var/run")), Some(&p("/run")));
    assert_eq!(
        plan.resolve(&p("/var/run/mysqld/mysqld.sock")),
        p("/run/mysqld/mysqld.sock")
    );
}

#[test]
fn a_socket_nobody_was_seen_binding_is_shared_through_its_directory() {
    // Only a chmod of the socket and a connect were seen (say mariadbd
    // bound it before the watch began): the image has no such file, so a
    // mount there would make a directory in its place.
    let image = debian_run();
    let mut s = Script::default();
    let init = s.start("/usr/bin/supervisord");
    let db = s.spawn(init, "/usr/sbin/mariadbd");
    s.chmod(db, "/run/app/app.sock");
    let web = s.spawn(init, "/usr/sbin/php-fpm");
    s.connect_unix(web, "/var/run/app/app.sock");
    let plan = plan_in(&s, DB_WEB_INIT, image.path());
    let mounts: Vec<&str> = plan.volumes.iter().map(|v| v.mount.as_str()).collect();
    assert_eq!(mounts, ["/run/app"], "{:#?}", plan.volumes);
}

#[test]
fn two_names_of_one_directory_give_one_volume() {
    // A file changed in place is mounted itself; here its two users reach
    // its directory by two names, and also create files next to it.
    let image = debian_run();
    let mut s = Script::default();
    let init = s.start("/usr/bin/supervisord");
    let db = s.spawn(init, "/usr/sbin/mariadbd");
    s.create(db, "/var/run/app/db.pid");
    s.write(db, "/etc/app/state");
    let web = s.spawn(init, "/usr/sbin/php-fpm");
    s.read(web, "/var/run/app/db.pid");
    s.read(web, "/etc/app/state");
    s.create(web, "/run/app/web.pid");
    s.read(db, "/var/run/app/web.pid");
    let plan = plan_in(&s, DB_WEB_INIT, image.path());
    let mounts: Vec<&str> = plan.volumes.iter().map(|v| v.mount.as_str()).collect();
    // mariadbd writes /etc/app/state in place: /etc/app is its state
    // directory, whose volume php-fpm shares.
    assert_eq!(mounts, ["/etc/app", "/run/app"], "{:#?}", plan.volumes);
    let shared: Vec<&str> = volume(&plan, "/run/app")
        .shared
        .iter()
        .map(|s| s.resource.as_str())
        .collect();
    assert_eq!(shared, ["/run/app/db.pid", "/run/app/web.pid"]);
    // No partition mounts one volume inside another.
    for part in plan.partitions.values() {
        for a in &part.mounts {
            for b in &part.mounts {
                assert!(a == b || !a.is_under(b), "{a} inside {b}");
            }
        }
    }
}

#[test]
fn every_lasting_state_directory_gets_a_volume_private_to_its_partition() {
    let image = debian_run();
    for d in ["var/lib/mysql", "var/log/nginx", "srv/app", "tmp"] {
        std::fs::create_dir_all(image.path().join(d)).unwrap();
    }
    let mut s = Script::default();
    let init = s.start("/usr/bin/supervisord");
    let db = s.spawn(init, "/usr/sbin/mariadbd");
    s.write(db, "/var/lib/mysql/ibdata1")
        .create(db, "/var/lib/mysql/ib_logfile0")
        .create(db, "/tmp/ib123")
        .mkdir(db, "/srv/app/data")
        .create(db, "/srv/app/data/f")
        .mkdir(db, "/data")
        .create(db, "/data/f");
    let web = s.spawn(init, "/usr/sbin/php-fpm");
    s.create(web, "/var/log/nginx/access.log");
    let plan = plan_in(&s, DB_WEB_INIT, image.path());
    let vols: Vec<(&str, Vec<&str>)> = plan
        .volumes
        .iter()
        .map(|v| {
            (
                v.mount.as_str(),
                v.partitions.iter().map(|p| p.as_str()).collect(),
            )
        })
        .collect();
    // /tmp need not last; /srv/app/data is made at run time, so the
    // volume is one level up; /data could only be held by /.
    assert_eq!(
        vols,
        [
            ("/srv/app", vec!["db"]),
            ("/var/lib/mysql", vec!["db"]),
            ("/var/log/nginx", vec!["web"]),
        ]
    );
    let v = volume(&plan, "/var/lib/mysql");
    assert!(v.is_private() && v.shared.is_empty());
    assert_eq!(
        v.state,
        [StateUse {
            partition: name("db"),
            dir: p("/var/lib/mysql"),
            writers: [exe("/usr/sbin/mariadbd")].into(),
        }]
    );
    let srv: Vec<&str> = volume(&plan, "/srv/app")
        .state
        .iter()
        .map(|s| s.dir.as_str())
        .collect();
    assert_eq!(
        srv,
        ["/srv/app", "/srv/app/data"],
        "mkdir writes in /srv/app"
    );
    assert_eq!(
        plan.warnings,
        [PlanWarning::StateNotPersisted {
            dir: p("/data"),
            partition: name("db"),
        }]
    );
    let db = &plan.partitions[&name("db")];
    assert_eq!(db.mounts, paths(&["/srv/app", "/var/lib/mysql"]));
    assert!(db.private.contains(&p("/tmp/ib123")));
    assert!(plan.render_text().contains("state directory of db"));
}

/// A Debian-like image with a perl script and a `#!/bin/sh` script.
fn scripts_image() -> tempfile::TempDir {
    let image = tempfile::tempdir().unwrap();
    let r = image.path();
    for d in ["usr/bin", "usr/games", "usr/lib/x86_64-linux-gnu"] {
        std::fs::create_dir_all(r.join(d)).unwrap();
    }
    std::os::unix::fs::symlink("usr/bin", r.join("bin")).unwrap();
    std::os::unix::fs::symlink("dash", r.join("usr/bin/sh")).unwrap();
    for elf in ["usr/bin/dash", "usr/bin/perl", "usr/bin/sort"] {
        std::fs::write(r.join(elf), b"\x7fELF").unwrap();
    }
    std::fs::write(r.join("usr/games/cowsay"), b"#!/usr/bin/perl\nprint;\n").unwrap();
    std::fs::write(r.join("usr/bin/order"), b"#!/bin/sh\nsort\n").unwrap();
    image
}

#[test]
fn a_script_keeps_its_interpreter_whatever_partition_the_interpreter_has() {
    let image = scripts_image();
    let mut s = Script::default();
    let sh = s.start("/bin/sh");
    // The script's process is the interpreter's: it loads libperl and
    // reads the script, all as the script.
    let cow = s.spawn(sh, "/usr/games/cowsay");
    s.read(cow, "/usr/lib/x86_64-linux-gnu/libperl.so.5.36");
    s.read(cow, "/usr/games/cowsay");
    let order = s.spawn(sh, "/usr/bin/order");
    s.spawn(order, "/usr/bin/sort");
    // sh also runs perl itself: that call crosses partitions.
    s.spawn(sh, "/usr/bin/perl");
    let plan = plan_in(&s, "kind = \"one-one\"", image.path());
    let edges: BTreeSet<(&str, &str)> = plan
        .rpe
        .iter()
        .map(|e| (e.caller.0.as_str(), e.callee.0.as_str()))
        .collect();
    assert_eq!(
        edges,
        BTreeSet::from([
            ("/bin/sh", "/usr/games/cowsay"),
            ("/bin/sh", "/usr/bin/order"),
            ("/bin/sh", "/usr/bin/perl"),
            ("/usr/bin/order", "/usr/bin/sort"),
        ]),
        "no RPE edge from a script to its #! interpreter"
    );
    let part = |e: &str| {
        plan.partitions
            .values()
            .find(|c| c.executables.contains(&exe(e)))
            .unwrap()
    };
    let cowsay = part("/usr/games/cowsay");
    assert!(!cowsay.stubs.contains_key(&exe("/usr/bin/perl")));
    assert!(cowsay.copied.contains(&p("/usr/bin/perl")), "{cowsay:#?}");
    let order = part("/usr/bin/order");
    assert_eq!(
        order.stubs.keys().collect::<Vec<_>>(),
        [&exe("/usr/bin/sort")]
    );
    assert!(order.copied.contains(&p("/usr/bin/dash")), "{order:#?}");
    // The caller holds a stub at the script's path, and perl's partition
    // still serves sh's own call.
    assert!(
        part("/bin/sh")
            .stubs
            .contains_key(&exe("/usr/games/cowsay"))
    );
    assert_eq!(
        part("/usr/bin/perl").serves,
        BTreeSet::from([exe("/usr/bin/perl")])
    );
}

#[test]
fn a_scripts_interpreter_that_is_a_stub_in_its_partition_is_named() {
    let image = scripts_image();
    let mut s = Script::default();
    let sh = s.start("/bin/sh");
    s.spawn(sh, "/usr/games/cowsay");
    // The shell also runs perl itself, and the policy puts perl apart.
    s.spawn(sh, "/usr/bin/perl");
    let policy = "kind = \"disjoint-subsets\"\n[partitions]\nshell = [\"/bin/sh\", \
                  \"/usr/games/cowsay\"]\nperl = [\"/usr/bin/perl\"]\n";
    let tree = crate::model::DirTree::new(image.path());
    let model = s.model_with_tree(Box::new(tree.clone()));
    let plan = plan(
        &model,
        &partition(&model, &Policy::from_toml(policy).unwrap()).unwrap(),
        &tree,
    );
    assert_eq!(
        plan.stubbed_interpreters(&tree),
        [StubbedInterpreter {
            partition: name("shell"),
            script: exe("/usr/games/cowsay"),
            interpreter: exe("/usr/bin/perl"),
            interpreter_partition: name("perl"),
            callers: BTreeSet::from([exe("/bin/sh")]),
        }]
    );
    let one = plan_in(&s, "kind = \"one-one\"", image.path());
    assert!(one.stubbed_interpreters(&tree).is_empty());
}
