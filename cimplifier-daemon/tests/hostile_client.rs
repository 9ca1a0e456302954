//! A client of the daemon must not be able to make it write where it
//! chooses: the daemon, root, writes no path a client names. The OCI layout
//! and the run plan come back over the API and cimplifierctl writes them
//! as its caller; links planted in the output directories are not
//! followed. Real daemon, Docker and eBPF; needs root.

mod common;

use std::os::unix::fs::symlink;

use common::{BASE_IMAGE, Container, Daemon, PlanCleanup, require_root};

#[test]
fn planted_links_in_output_directories_never_reach_their_targets() {
    require_root();
    let d = Daemon::start();
    let c = Container::create(
        "hostile",
        &[BASE_IMAGE, "/bin/sh", "-c", "cat /etc/os-release"],
    );
    let observed = d.ctl(&["observe", &c.0]);
    assert!(observed.status.success(), "{observed:?}");
    let dir = tempfile::tempdir().unwrap();
    let sentinel = dir.path().join("sentinel");
    std::fs::write(&sentinel, "untouched").unwrap();

    // An OCI directory holding a planted index.json is refused as not
    // empty: nothing is written through the link.
    let oci = dir.path().join("oci");
    std::fs::create_dir(&oci).unwrap();
    symlink(&sentinel, oci.join("index.json")).unwrap();
    let refused = d.ctl(&["emit", &c.0, "--oci-dir", oci.to_str().unwrap()]);
    assert_ne!(refused.status.code(), Some(0));
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(stderr.contains("not empty"), "{stderr}");
    assert_eq!(std::fs::read_to_string(&sentinel).unwrap(), "untouched");

    // The control: a new directory gets the layout.
    let fresh = dir.path().join("fresh");
    let emitted = d.ctl(&["emit", &c.0, "--oci-dir", fresh.to_str().unwrap(), "--json"]);
    assert!(emitted.status.success(), "{emitted:?}");
    let report: serde_json::Value = serde_json::from_slice(&emitted.stdout).unwrap();
    assert_eq!(report["oci_dir"], fresh.to_str().unwrap());
    assert!(fresh.join("index.json").is_file());
    assert!(fresh.join("oci-layout").is_file());
    assert!(!fresh.join(".cimplifier-oci.tar.partial").exists());

    // A run plan directory whose docker-compose.yml is a planted link: the
    // link is replaced, its target keeps its content.
    let out = dir.path().join("plan");
    std::fs::create_dir(&out).unwrap();
    symlink(&sentinel, out.join("docker-compose.yml")).unwrap();
    let policy = dir.path().join("policy.toml");
    std::fs::write(&policy, common::SHELL_AND_READER_POLICY).unwrap();
    let tag = format!("cimplifier-e2e/hostile{}", std::process::id());
    let report = common::emit_partitioned(&d, &c.0, &policy, &tag, &out);
    let _cleanup = PlanCleanup {
        daemon: &d,
        plans: vec![],
        images: report.images().map(str::to_owned).collect(),
    };
    assert_eq!(std::fs::read_to_string(&sentinel).unwrap(), "untouched");
    let compose = out.join("docker-compose.yml");
    assert!(!compose.is_symlink(), "the planted link is replaced");
    assert!(
        std::fs::read_to_string(&compose)
            .unwrap()
            .contains("services:")
    );
    assert_eq!(report.compose_file, compose);

    // A tag that names someone else's image is not taken from it.
    let foreign = format!("cimplifier-e2e/foreign{}:latest", std::process::id());
    let _foreign = PlanCleanup {
        daemon: &d,
        plans: vec![],
        images: vec![foreign.clone()],
    };
    common::docker(&["tag", BASE_IMAGE, &foreign]);
    let before = common::docker(&["image", "inspect", "-f", "{{.Id}}", &foreign]);
    let refused = d.ctl(&["emit", &c.0, "--tag", &foreign]);
    assert_eq!(refused.status.code(), Some(5), "{refused:?}");
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(stderr.contains("--force"), "{stderr}");
    assert_eq!(
        common::docker(&["image", "inspect", "-f", "{{.Id}}", &foreign]),
        before
    );
    // With --force it moves; and a tag cimplifier made moves without it.
    let forced = d.ctl(&["emit", &c.0, "--tag", &foreign, "--force"]);
    assert!(forced.status.success(), "{forced:?}");
    assert_ne!(
        common::docker(&["image", "inspect", "-f", "{{.Id}}", &foreign]),
        before
    );
    let again = d.ctl(&["emit", &c.0, "--tag", &foreign]);
    assert!(again.status.success(), "{again:?}");
}
