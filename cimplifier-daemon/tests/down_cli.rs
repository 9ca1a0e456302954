//! `down` removes only what its plan's `up` made: a container or volume of
//! a same-named project that does not carry the plan's id is left alone.
//! Real Docker; needs root.

mod common;

use common::{BASE_IMAGE, Daemon, docker, require_root};

#[test]
fn down_leaves_a_same_named_foreign_project_alone() {
    require_root();
    let d = Daemon::start();
    let pid = std::process::id();
    let project = format!("downtest{pid}");
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("docker-compose.yml"),
        format!(
            "name: {project}\nx-cimplifier-plan: 0123456789abcdef\nservices:\n  app:\n    image: {BASE_IMAGE}\nvolumes:\n  data: {{}}\n"
        ),
    )
    .unwrap();
    // What the plan's `up` made carries its id; the foreign project's
    // container and volume (same project name, same volume name) do not.
    let ours = format!("{project}-app-1");
    let theirs = format!("{project}-other-1");
    let volume = format!("{project}_data");
    for (name, labels) in [
        (
            &ours,
            vec![
                format!("com.docker.compose.project={project}"),
                "io.cimplifier.plan=0123456789abcdef".to_owned(),
            ],
        ),
        (
            &theirs,
            vec![format!("com.docker.compose.project={project}")],
        ),
    ] {
        let mut args = vec!["create".to_owned(), "--name".to_owned(), name.clone()];
        for l in labels {
            args.extend(["--label".to_owned(), l]);
        }
        args.extend([BASE_IMAGE.to_owned(), "true".to_owned()]);
        docker(&args.iter().map(String::as_str).collect::<Vec<_>>());
    }
    docker(&[
        "volume",
        "create",
        "--label",
        &format!("com.docker.compose.project={project}"),
        &volume,
    ]);

    let out = d.ctl(&["down", dir.path().to_str().unwrap(), "--volumes", "--json"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let removed: Vec<String> = serde_json::from_slice(&out.stdout).unwrap();
    let exists = |kind: &str, name: &str| {
        std::process::Command::new("docker")
            .args([kind, "inspect", name])
            .output()
            .unwrap()
            .status
            .success()
    };
    let foreign_left = exists("container", &theirs);
    let volume_left = exists("volume", &volume);
    let _ = docker(&["rm", "-f", &theirs]);
    let _ = std::process::Command::new("docker")
        .args(["volume", "rm", &volume])
        .output();
    assert_eq!(
        removed,
        std::slice::from_ref(&ours),
        "only the plan's container"
    );
    assert!(
        !exists("container", &ours),
        "the plan's container is removed"
    );
    assert!(foreign_left, "the foreign container is left");
    assert!(volume_left, "the foreign volume keeps its data");
}
