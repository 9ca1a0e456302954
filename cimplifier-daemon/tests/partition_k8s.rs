//! `emit --policy ... --k8s FILE` (issue 17, item 4): the Kubernetes run
//! plan of a real partitioned emit. There is no cluster here, so:
//!
//! - Debian's kubectl decodes it into its own typed objects. `kubectl
//!   apply --dry-run=client` cannot: it asks an API server for the
//!   resource mapping even in a client dry run (`--validate=false` does not
//!   help). `kubectl set env --local -f FILE` decodes the Deployment into
//!   the typed apps/v1 object without a server, changes it (an
//!   environment variable) and prints it: a wrong type fails, and a field
//!   kubectl does not know is dropped, so every field written must come
//!   back.
//! - The init container's seeding runs for real: its image and command
//!   under Docker with its securityContext, filling an empty host
//!   directory as a kubelet's emptyDir is one.
//!
//! Needs root, dockerd and kubectl.

mod common;

use std::process::Command;

use cimplifier::emit::partitioned::kubernetes::{Deployment, FILL_DIR};
use cimplifier::emit::partitioned::seed::{SEED_COPY_PROGRAM, SEED_DIR};
use common::{Container, Daemon, PlanCleanup, docker, require_root, stdout_of};
use serde_norway::Value;

/// Every mapping key and sequence item of `ours` is in `theirs`.
fn contained(ours: &Value, theirs: &Value, at: &str) -> Result<(), String> {
    match (ours, theirs) {
        (Value::Mapping(a), Value::Mapping(b)) => {
            for (k, v) in a {
                let key = k.as_str().unwrap_or("?");
                let Some(w) = b.get(k) else {
                    return Err(format!("{at}.{key} was dropped by kubectl"));
                };
                contained(v, w, &format!("{at}.{key}"))?;
            }
            Ok(())
        }
        (Value::Sequence(a), Value::Sequence(b)) if a.len() == b.len() => a
            .iter()
            .zip(b)
            .enumerate()
            .try_for_each(|(i, (v, w))| contained(v, w, &format!("{at}[{i}]"))),
        (a, b) if a == b => Ok(()),
        (a, b) => Err(format!("{at}: wrote {a:?}, kubectl read {b:?}")),
    }
}

#[test]
fn the_kubernetes_plan_of_a_shared_volume_emit_decodes_in_kubectl_and_its_seed_fills_volumes() {
    require_root();
    let pid = std::process::id();
    let d = Daemon::start();
    let dir = tempfile::tempdir().unwrap();
    let image = format!("cimplifier-e2e/k8s-src{pid}:latest");
    let mut cleanup = PlanCleanup {
        daemon: &d,
        plans: Vec::new(),
        images: vec![image.clone()],
    };
    common::flag_image("k8s-base", &image);
    let c = Container::create("k8s", &[&image]);
    let observed = d.ctl(&["observe", &c.0]);
    assert!(observed.status.success(), "{observed:?}");

    let policy = dir.path().join("policy.toml");
    std::fs::write(&policy, common::SHELL_AND_READER_POLICY).unwrap();
    let out = dir.path().join("split");
    let k8s = dir.path().join("app.yaml");
    let tag = format!("cimplifier-e2e/k8s{pid}");
    let report: cimplifier::emit::partitioned::PartitionEmitReport =
        serde_json::from_str(&stdout_of(&d.ctl(&[
            "emit",
            &c.0,
            "--policy",
            policy.to_str().unwrap(),
            "--tag",
            &tag,
            "--out",
            out.to_str().unwrap(),
            "--k8s",
            k8s.to_str().unwrap(),
            "--json",
        ])))
        .unwrap();
    cleanup.images.extend(report.images().map(str::to_owned));
    assert!(
        !out.join("kubernetes.yaml").exists(),
        "--k8s names the file"
    );
    let yaml = std::fs::read_to_string(&k8s).unwrap();
    println!("{yaml}");

    // Structure: one container per partition, by tag; the shared volume
    // and the RPE socket volume as emptyDirs; the seed as init container.
    let plan: Deployment = serde_norway::from_str(&yaml).unwrap();
    let pod = &plan.spec.template.spec;
    let mut names: Vec<&str> = pod.containers.iter().map(|c| c.name.as_str()).collect();
    names.sort();
    assert_eq!(names, ["reader", "shell"]);
    for p in &report.partitions {
        let c = pod
            .containers
            .iter()
            .find(|c| c.name == p.name.as_str())
            .unwrap();
        assert_eq!(c.image, p.image);
        let sc = c.security_context.as_ref().unwrap();
        assert_eq!(sc.capabilities.as_ref().unwrap().drop, ["ALL"]);
        assert_eq!(sc.allow_privilege_escalation, Some(false));
        assert_eq!(sc.read_only_root_filesystem, Some(true), "{}", p.name);
        assert!(
            c.volume_mounts.iter().any(|m| m.mount_path == "/srv/app"),
            "{}: {:?}",
            p.name,
            c.volume_mounts
        );
    }
    let shared = report
        .volumes
        .iter()
        .find(|v| v.mount.as_str() == "/srv/app")
        .expect("/srv/app is shared");
    assert!(pod.volumes.iter().any(|v| v.name == shared.name));
    assert!(pod.volumes.iter().any(|v| v.name.starts_with("rpe-")));
    let seed = report.seed.as_ref().unwrap();
    let [init] = pod.init_containers.as_slice() else {
        panic!("one init container: {:?}", pod.init_containers)
    };
    assert_eq!(init.image, seed.image);
    assert_eq!(init.command, [SEED_COPY_PROGRAM, SEED_DIR, FILL_DIR]);

    // kubectl's own decoder keeps every field.
    let decoded = Command::new("kubectl")
        .args(["set", "env", "--local", "-o", "yaml", "-f"])
        .arg(&k8s)
        .arg("CIMPLIFIER_DECODED=1")
        .output()
        .expect("running kubectl (apt-get install kubectl)");
    let decoded_yaml = stdout_of(&decoded);
    let theirs: Value = serde_norway::from_str(&decoded_yaml).unwrap();
    let ours: Value = serde_norway::from_str(&yaml).unwrap();
    if let Err(e) = contained(&ours, &theirs, "") {
        panic!("{e}\nkubectl read:\n{decoded_yaml}");
    }

    // The init container fills an empty volume from the seed image, with
    // the securityContext it has in the plan, and leaves a full one alone.
    let empty_dir = tempfile::tempdir().unwrap();
    let volume = empty_dir.path().join(&shared.name);
    std::fs::create_dir(&volume).unwrap();
    let run_seed = || {
        let sc = init.security_context.as_ref().unwrap();
        let caps = sc.capabilities.as_ref().unwrap();
        let mut args = vec![
            "run".to_owned(),
            "--rm".into(),
            "--read-only".into(),
            "--security-opt".into(),
            "no-new-privileges:true".into(),
            "--cap-drop".into(),
            "ALL".into(),
        ];
        for cap in &caps.add {
            args.extend(["--cap-add".into(), cap.clone()]);
        }
        for m in &init.volume_mounts {
            let host = empty_dir.path().join(&m.name);
            args.extend(["-v".into(), format!("{}:{}", host.display(), m.mount_path)]);
        }
        args.push("--entrypoint".into());
        args.push(init.command[0].clone());
        args.push(report.seed.as_ref().unwrap().image.clone());
        args.extend(init.command[1..].iter().cloned());
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        docker(&refs)
    };
    let first = run_seed();
    assert!(first.contains("filled volume"), "{first}");
    assert_eq!(
        std::fs::read_to_string(volume.join("flag")).unwrap(),
        "hello\n"
    );
    std::fs::write(volume.join("flag"), "data of a running pod\n").unwrap();
    let again = run_seed();
    assert!(again.contains("left as it is"), "{again}");
    assert_eq!(
        std::fs::read_to_string(volume.join("flag")).unwrap(),
        "data of a running pod\n"
    );
}
