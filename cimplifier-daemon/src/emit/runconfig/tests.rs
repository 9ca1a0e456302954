use super::*;
use crate::docker::run::PublishedPort;

fn image() -> SourceConfig {
    SourceConfig {
        cmd: Some(vec!["/bin/bash".into()]),
        env: Some(vec!["PATH=/usr/bin:/bin".into(), "LANG=C.UTF-8".into()]),
        working_dir: Some("/".into()),
        exposed_ports: Some(vec!["80/tcp".into()]),
        labels: [("org.example".to_owned(), "x".to_owned())].into(),
        created: Some("2026-01-01T00:00:00Z".into()),
        ..Default::default()
    }
}

/// What the engine reports for `docker create IMAGE` with no options:
/// the image's settings, merged in.
fn as_image() -> RunSettings {
    RunSettings {
        cmd: Some(vec!["/bin/bash".into()]),
        env: vec!["PATH=/usr/bin:/bin".into(), "LANG=C.UTF-8".into()],
        working_dir: Some("/".into()),
        exposed_ports: vec!["80/tcp".into()],
        ..Default::default()
    }
}

fn from(report: &RunReport, setting: Setting, name: Option<&str>) -> Origin {
    report
        .settings
        .iter()
        .find(|s| s.setting == setting && s.name.as_deref() == name)
        .unwrap_or_else(|| panic!("{setting:?} {name:?} in {:?}", report.settings))
        .from
}

#[test]
fn a_container_run_as_its_image_changes_nothing() {
    let (config, report) = carry(&image(), Some(&as_image()));
    assert_eq!(config, image());
    assert!(
        report
            .settings
            .iter()
            .all(|s| s.from == Origin::ImageConfig)
    );
    assert_eq!(report.docker_run("t:slim"), "docker run -d t:slim");
}

#[test]
fn the_containers_settings_win_where_they_differ() {
    let mut run = as_image();
    run.cmd = Some(vec!["sh".into(), "-c".into(), "echo $GREETING".into()]);
    run.env.push("GREETING=hello".into());
    run.env[1] = "LANG=de_DE.UTF-8".into();
    run.working_dir = Some("/srv".into());
    run.user = Some("nobody".into());
    run.exposed_ports.push("8080/tcp".into());
    run.runtime.published_ports = vec![PublishedPort {
        container_port: "8080/tcp".into(),
        host_ip: "127.0.0.1".into(),
        host_port: "18080".into(),
    }];
    run.runtime.stdin_open = true;
    run.left_out = vec!["--volume /srv/data:/data".into()];
    let (config, report) = carry(&image(), Some(&run));
    assert_eq!(config.cmd, run.cmd);
    assert_eq!(config.env.as_deref().unwrap(), run.env);
    assert_eq!(config.working_dir.as_deref(), Some("/srv"));
    assert_eq!(config.user.as_deref(), Some("nobody"));
    assert_eq!(
        config.exposed_ports.as_deref().unwrap(),
        ["80/tcp", "8080/tcp"]
    );
    // What only the image has stays.
    assert_eq!(config.labels, image().labels);
    assert_eq!(config.created, image().created);

    assert_eq!(from(&report, Setting::Cmd, None), Origin::Container);
    assert_eq!(
        from(&report, Setting::Env, Some("PATH")),
        Origin::ImageConfig
    );
    assert_eq!(from(&report, Setting::Env, Some("LANG")), Origin::Container);
    assert_eq!(
        from(&report, Setting::Env, Some("GREETING")),
        Origin::Container
    );
    assert_eq!(from(&report, Setting::WorkingDir, None), Origin::Container);
    assert_eq!(from(&report, Setting::User, None), Origin::Container);
    assert_eq!(
        from(&report, Setting::PublishedPorts, None),
        Origin::Container
    );
    assert_eq!(
        report.docker_run("t:slim"),
        "docker run -d -i -p 127.0.0.1:18080:8080 t:slim"
    );
    let text = report.render_text("  ");
    assert!(
        text.contains(
            r#"  cmd ["sh","-c","echo $GREETING"]: container (docker create IMAGE COMMAND)"#
        ),
        "{text}"
    );
    assert!(text.contains("  env PATH: image config"), "{text}");
    assert!(
        text.contains("  env LANG GREETING: container (docker create --env)"),
        "{text}"
    );
    assert!(!text.contains("hello"), "env values stay out: {text}");
    assert!(
        text.contains("  NOT carried (the container had them; add them when you run it): --volume /srv/data:/data"),
        "{text}"
    );
    // Each engine's own words: no `docker create` said of a container
    // Podman or containerd made.
    let podman = report.render_text_on("  ", crate::engine::Engine::Podman);
    assert!(
        podman.contains("  env LANG GREETING: container (podman create --env)"),
        "{podman}"
    );
    assert!(!podman.contains("docker create"), "{podman}");
    let containerd = report.render_text_on("  ", crate::engine::Engine::Containerd);
    assert!(
        containerd.contains("  env LANG GREETING: container (its OCI spec, as"),
        "{containerd}"
    );
    assert!(
        !containerd.contains("container (docker create"),
        "{containerd}"
    );
}

#[test]
fn an_entrypoint_cleared_by_the_container_stays_cleared() {
    let mut img = image();
    img.entrypoint = Some(vec!["/docker-entrypoint.sh".into()]);
    let mut run = as_image();
    run.entrypoint = None;
    run.cmd = Some(vec!["sh".into()]);
    let (config, report) = carry(&img, Some(&run));
    assert_eq!(config.entrypoint, None);
    let e = report
        .settings
        .iter()
        .find(|s| s.setting == Setting::Entrypoint)
        .unwrap();
    assert_eq!((e.from, e.value.as_deref()), (Origin::Container, None));
}

#[test]
fn a_merge_of_sessions_run_otherwise_says_so() {
    let started = crate::store::Started {
        container_id: String::new(),
        container_name: "m".into(),
        image_id: "sha256:1".into(),
        image_ref: "img".into(),
        from_first_exec: true,
        started_unix_ms: 0,
    };
    let mut merged = SessionRecord::new("m".into(), 1, started);
    merged.run_not_merged =
        Some("sessions a and b ran their containers with different command".into());
    let (config, report) = carry_for(&image(), &merged);
    assert_eq!(config, image());
    let text = report.render_text("");
    assert!(
        text.contains("NOT CARRIED (sessions a and b ran their containers with different command, and were merged)"),
        "{text}"
    );
}

#[test]
fn without_recorded_settings_the_image_config_is_used_and_said() {
    let (config, report) = carry(&image(), None);
    assert_eq!(config, image());
    assert!(!report.recorded);
    assert!(
        report
            .render_text("")
            .contains("NOT CARRIED (not recorded)")
    );
}

/// Podman puts `container=podman`, `HOSTNAME`, `TERM` and root's `HOME`
/// into every container's environment: none is carried into the image (a
/// `HOSTNAME` there would name the observed container in every new one),
/// and the report says they were left to the engine. A variable the
/// creator gave is carried as before.
#[test]
fn the_variables_podman_sets_itself_are_not_carried() {
    let img = image();
    let mut run = RunSettings {
        env: img.env.clone().unwrap_or_default(),
        ..Default::default()
    };
    run.env.extend(
        [
            "TERM=xterm",
            "container=podman",
            "HOME=/root",
            "HOSTNAME=ba0b6b1bbe0d",
            "MODE=fast",
        ]
        .map(str::to_owned),
    );
    let (config, report) = carry(&img, Some(&run));
    let env = config.env.unwrap_or_default();
    for injected in ["TERM=", "container=", "HOME=", "HOSTNAME="] {
        assert!(!env.iter().any(|e| e.starts_with(injected)), "{env:?}");
    }
    assert!(env.iter().any(|e| e == "MODE=fast"), "{env:?}");
    assert_eq!(report.engine_env, ["TERM", "container", "HOME", "HOSTNAME"]);
    let text = report.render_text("");
    assert!(
        text.contains("env TERM container HOME HOSTNAME: set by the engine itself, not carried"),
        "{text}"
    );
    assert!(text.contains("env MODE: container"), "{text}");

    // On Docker (no `container=podman`) the same variables are the
    // creator's, and carried.
    run.env.retain(|e| e != "container=podman");
    let (config, report) = carry(&img, Some(&run));
    assert!(report.engine_env.is_empty());
    assert!(
        config
            .env
            .unwrap_or_default()
            .iter()
            .any(|e| e.starts_with("HOSTNAME="))
    );
}
