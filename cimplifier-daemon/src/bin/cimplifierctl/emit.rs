//! Making images and running them: `plan`, `emit` (slim, or partitioned
//! with --policy), `up` and `down`.

use std::path::Path;

use anyhow::Context;
use cimplifier::api::{Address, pb};
use cimplifier::docker::compose;
use cimplifier::docker::tag::ImageTag;
use cimplifier::emit::partitioned::PartitionEmitReport;
use cimplifier::emit::push::PushTarget;
use cimplifier::emit::slim::{EmitReport, Explained};
use cimplifier::engine::containerd::{Containerd, plan as containerd_plan};
use cimplifier::place::slim::{SafetySet, SlimOptions};
use tokio_stream::StreamExt;

use crate::args::{EmitArgs, path_arg};
use crate::daemon::{connect, daemon, runtime, status, usage};
use crate::outputs::Outputs;
use crate::render::{bytes_style, mb, print, spinner, spinner_style};

/// The policy file's text; one that cannot be read is a usage error.
fn read_policy(path: &Path) -> anyhow::Result<String> {
    std::fs::read_to_string(path).map_err(|e| usage(format!("--policy {}: {e}", path.display())))
}

pub fn plan(socket: &Address, session: String, policy: &Path, json: bool) -> anyhow::Result<()> {
    let policy_toml = read_policy(policy)?;
    let plan = daemon(socket, async |mut c| {
        c.plan(pb::PlanRequest {
            session,
            policy_toml,
        })
        .await
    })?;
    print(&if json {
        plan.plan_json + "\n"
    } else {
        plan.text
    })
}

pub fn emit(socket: &Address, args: EmitArgs) -> anyhow::Result<()> {
    let EmitArgs {
        container,
        tag,
        oci_dir,
        force,
        include,
        exclude,
        no_safety_set,
        no_safety_sets,
        allow_incomplete,
        list_removed,
        strict,
        explain,
        policy,
        out,
        k8s,
        push,
        insecure_registry,
        seccomp,
        no_seccomp,
        json,
    } = args;
    // Every argument is checked before the daemon reads a byte of the image.
    if let Some(tag) = &tag {
        tag.parse::<ImageTag>().map_err(|e| usage(e.to_string()))?;
    }
    let registry_auth = match &push {
        Some(reference) => {
            let target = PushTarget::parse(reference, insecure_registry, Default::default())
                .map_err(|e| usage(e.to_string()))?;
            registry_auth(target.reference.registry(), "--push")?
        }
        None => None,
    };
    let source_auth = source_auth(socket, &container);
    let mut slim = SlimOptions::with_safety_sets();
    slim.strict = strict;
    if no_safety_sets {
        slim.safety_sets.clear();
    }
    for name in &no_safety_set {
        let set = SafetySet::from_name(name).ok_or_else(|| {
            usage(format!(
                "--no-safety-set {}: the sets are nss, ca-certificates, timezone and locales",
                cimplifier::cli::quote_capped(name, 80)
            ))
        })?;
        slim.safety_sets.remove(&set);
    }
    slim.include = include
        .iter()
        .map(|s| path_arg(s, "--include"))
        .collect::<Result<_, _>>()?;
    slim.exclude = exclude
        .iter()
        .map(|s| path_arg(s, "--exclude"))
        .collect::<Result<_, _>>()?;
    if let Some(root) = slim.exclude.iter().find(|p| p.as_str() == "/") {
        return Err(usage(format!(
            "--exclude {root} drops every file: the image would be empty; exclude the \
             directories you do not want instead"
        )));
    }
    let explain: Vec<Explained> = explain
        .iter()
        .map(|s| Explained::parse(s).map_err(anyhow::Error::msg))
        .collect::<Result<_, _>>()?;
    let policy_toml = match &policy {
        Some(p) => read_policy(p)?,
        None => String::new(),
    };
    let mut outputs = Outputs::prepare(oci_dir.as_deref(), out.as_deref())?;
    if let Some(file) = &k8s {
        outputs.set_k8s_file(file);
    }
    let request = pb::EmitRequest {
        container: container.clone(),
        tag: tag.unwrap_or_default(),
        oci_archive: outputs.wants_oci(),
        force,
        include: slim.include.iter().map(|p| p.to_string()).collect(),
        exclude: slim.exclude.iter().map(|p| p.to_string()).collect(),
        no_safety_sets: SafetySet::ALL
            .into_iter()
            .filter(|s| !slim.safety_sets.contains(s))
            .map(|s| s.name().to_owned())
            .collect(),
        allow_incomplete,
        list_removed,
        strict: slim.strict,
        // The daemon checks the paths against the image; capabilities are
        // answered from the report here.
        explain: explain
            .iter()
            .filter_map(|e| match e {
                Explained::Path(p) => Some(p.to_string()),
                Explained::Capability(_) | Explained::Syscall(_) => None,
            })
            .collect(),
        policy_toml,
        kubernetes: k8s.is_some(),
        push: push.unwrap_or_default(),
        insecure_registry,
        registry_auth,
        source_auth,
        seccomp: if no_seccomp {
            "off".to_owned()
        } else {
            seccomp
        },
        ..Default::default()
    };
    if policy.is_some() {
        return emit_partitioned(
            socket,
            request,
            &mut outputs,
            &explain,
            k8s.as_deref(),
            json,
        );
    }
    let mut report: EmitReport = emit_with_progress(socket, request, &mut outputs)?;
    report.oci_dir = outputs.finish_oci()?;
    write_seccomp_profile(&mut report, &mut outputs)?;
    for w in &report.warnings {
        eprintln!("cimplifierctl: warning: {w}");
    }
    if json {
        return print(&(serde_json::to_string_pretty(&report)? + "\n"));
    }
    let mut text = summary(&report);
    if let Some(p) = &report.pushed {
        text += &format!(
            "  pushed: {} ({} gzip-compressed layer)\n",
            p.pinned,
            mb(p.compressed_bytes)
        );
    }
    text += &format!(
        "  audit report: emit-reports/{container}.json in the daemon's state directory (or emit --json)\n"
    );
    for p in &explain {
        text += &format!("  {p}: {}\n", report.explain_item(p));
    }
    print(&text)
}

/// The caller's credentials for `registry` (`--push`'s, or the source
/// image's; `what` says which in errors), from its own docker config
/// ($DOCKER_CONFIG/config.json or ~/.docker/config.json, with its
/// credential helpers), as `docker push` and `docker pull` would use them;
/// none there is anonymous. Read here, as the caller: the daemon reads no
/// such file.
fn registry_auth(registry: &str, what: &str) -> anyhow::Result<Option<pb::RegistryAuth>> {
    use docker_credential::{CredentialRetrievalError as E, DockerCredential};
    let config = std::env::var_os("DOCKER_CONFIG")
        .map(std::path::PathBuf::from)
        .or_else(|| std::env::home_dir().map(|h| h.join(".docker")))
        .map(|d| d.join("config.json"));
    if !config.as_ref().is_some_and(|c| c.exists()) {
        return Ok(None);
    }
    let config = config.expect("checked");
    // Docker Hub's credentials are kept under its v1 index address.
    let key = match registry {
        "docker.io" | "index.docker.io" => "https://index.docker.io/v1/",
        other => other,
    };
    match docker_credential::get_credential(key) {
        Ok(DockerCredential::UsernamePassword(username, password)) => {
            Ok(Some(pb::RegistryAuth { username, password }))
        }
        Ok(DockerCredential::IdentityToken(_)) => Err(usage(format!(
            "{what}: {} holds an identity token for {key}, which cimplifier cannot use; \
             `docker login {key}` with a password or access token",
            config.display()
        ))),
        Err(E::NoCredentialConfigured) => Ok(None),
        Err(e) => Err(anyhow::anyhow!(
            "{what}: cannot read the credentials for {key} from {}: {e:?}; fix it or \
             `docker login {key}` again",
            config.display()
        )),
    }
}

/// The caller's credentials for the registry the observed image's
/// reference names, for the engine to pull it with should it be gone
/// (a Docker or Podman session's). Credentials that cannot be read are
/// warned of and left out: the image may well still be in the engine.
fn source_auth(socket: &Address, session: &str) -> Option<pb::RegistryAuth> {
    let request = pb::GetSessionRequest {
        container: session.to_owned(),
    };
    // No such session: emit says so itself.
    let found = daemon(socket, async |mut c| c.get_session(request).await).ok()?;
    if found.container_id.starts_with("containerd://") {
        return None;
    }
    let reference: oci_client::Reference = found.image_ref.parse().ok()?;
    match registry_auth(reference.registry(), "the source image's registry") {
        Ok(auth) => auth,
        Err(e) => {
            eprintln!(
                "cimplifierctl: warning: {e:#}; should the engine have to pull {}, it pulls anonymously",
                found.image_ref
            );
            None
        }
    }
}

/// Writes the slim image's seccomp profile into --out and makes its
/// `docker run` line name it there; without --out the line names
/// seccomp.json, and a warning says how to get it.
fn write_seccomp_profile(report: &mut EmitReport, outputs: &mut Outputs) -> anyhow::Result<()> {
    use cimplifier::place::privileges::SECCOMP_FILE;
    let Some(profile) = report.privileges.seccomp.profile_json() else {
        return Ok(());
    };
    let Some(dir) = outputs.out_dir().map(Path::to_path_buf) else {
        report.warnings.push(format!(
            "the run line names {SECCOMP_FILE}, its seccomp profile: emit --out DIR \
             writes it there (it is also the report's privileges.seccomp)"
        ));
        return Ok(());
    };
    outputs.plan_file(SECCOMP_FILE, profile.as_bytes())?;
    let at = dir.join(SECCOMP_FILE);
    report.docker_run = report.docker_run.replace(
        &format!("seccomp={SECCOMP_FILE}"),
        &format!("seccomp={}", at.display()),
    );
    Ok(())
}

/// Asks the daemon to emit, shows its steps on a spinner, and returns the
/// report it ends with (slim or partitioned, as the request asked).
fn emit_with_progress<R: serde::de::DeserializeOwned>(
    socket: &Address,
    request: pb::EmitRequest,
    outputs: &mut Outputs,
) -> anyhow::Result<R> {
    let bar = spinner();
    let report = runtime()?.block_on(async {
        let mut api = connect(socket).await?;
        let mut stream = api.emit(request).await.map_err(status)?.into_inner();
        let mut report = None;
        while let Some(item) = stream.next().await {
            match item.map_err(status)?.update {
                Some(pb::emit_progress::Update::Step(step)) => {
                    // Back to a spinner until the step says its bytes.
                    bar.set_style(spinner_style());
                    bar.set_length(0);
                    bar.set_message(step)
                }
                Some(pb::emit_progress::Update::Bytes(b)) => {
                    bar.set_style(bytes_style());
                    bar.set_length(b.total.max(b.done));
                    bar.set_position(b.done);
                    bar.set_message(b.what)
                }
                Some(pb::emit_progress::Update::ReportJson(json)) => {
                    report = Some(serde_json::from_str::<R>(&json)?)
                }
                Some(pb::emit_progress::Update::OciChunk(chunk)) => outputs.oci_chunk(&chunk)?,
                Some(pb::emit_progress::Update::PlanFile(f)) => {
                    outputs.plan_file(&f.name, &f.content)?
                }
                None => {}
            }
        }
        report.context("the daemon ended the emit without a report")
    });
    bar.finish_and_clear();
    if report.is_err() {
        outputs.abandon();
    }
    report
}

/// `emit --policy`: the daemon writes the partitions' images and run plan.
fn emit_partitioned(
    socket: &Address,
    request: pb::EmitRequest,
    outputs: &mut Outputs,
    explain: &[Explained],
    k8s: Option<&Path>,
    json: bool,
) -> anyhow::Result<()> {
    let mut report: PartitionEmitReport = emit_with_progress(socket, request, outputs)?;
    let dir = outputs
        .out_dir()
        .context("emit --policy needs --out DIR for the run plan")?;
    report.compose_file = dir.join(&report.compose_file);
    for w in &report.warnings {
        eprintln!("cimplifierctl: warning: {w}");
    }
    if json {
        return print(&(serde_json::to_string_pretty(&report)? + "\n"));
    }
    let mut text = report.render_text();
    for p in report.pushed.values() {
        text += &format!("  pushed: {}\n", p.pinned);
    }
    if let Some(file) = k8s {
        text += &format!(
            "  kubernetes plan: {} (a Deployment; docs/partitioning.md, \"Kubernetes\")\n",
            file.display()
        );
    }
    for p in explain {
        text += &format!("  {p}: {}\n", report.explain_item(p));
    }
    print(&format!(
        "{text}  start it: cimplifierctl up {}\n",
        report
            .compose_file
            .parent()
            .unwrap_or(Path::new("."))
            .display()
    ))
}

/// What `emit` prints about a slim image.
fn summary(r: &EmitReport) -> String {
    let mut s = String::new();
    let target = r
        .tag
        .clone()
        .or_else(|| r.oci_dir.as_ref().map(|d| d.display().to_string()))
        .unwrap_or_default();
    s += &format!(
        "slim image {target} ({}) from {}\n",
        r.image_id, r.source_ref
    );
    // Files and their content add up (kept + removed = source); the image
    // sizes are another measure (a tar layer against the engine's size).
    s += &format!(
        "  kept {} of {} files, {} of {} of content; removed {} files, {}\n",
        r.kept_files,
        r.source_files,
        mb(r.kept_bytes),
        mb(r.source_content_bytes),
        r.removed_files,
        mb(r.removed_bytes)
    );
    s += &format!("  {}\n", r.size_line());
    s += &format!(
        "  session: {} events, {}, {}\n",
        r.events,
        if r.complete {
            "complete".to_owned()
        } else if r.lost_events > 0 {
            format!(
                "INCOMPLETE ({} events lost; emitted with --allow-incomplete)",
                r.lost_events
            )
        } else {
            "INCOMPLETE (emitted with --allow-incomplete)".to_owned()
        },
        if r.from_first_exec {
            "observed from the first exec"
        } else {
            "start-up NOT observed"
        }
    );
    s += "  run settings (the image's config):\n";
    s += &r.run.render_text_on("    ", r.engine);
    s += &format!("  privileges: {}\n", r.privileges.summary());
    if let Some(line) = r.run_line() {
        s += &format!("  {line}\n");
    }
    for d in &r.state_directories {
        s += &format!(
            "  state directory {}{}, written by {}: kept whole\n",
            d.dir,
            if d.in_image {
                ""
            } else {
                " (not in the image)"
            },
            d.written_by
                .iter()
                .map(|e| e.to_string())
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    for t in &r.code_trees {
        s += &format!(
            "  code tree of {} under {}: loaded {} of {} {} files, kept all\n",
            t.exe,
            t.dir,
            t.loaded,
            t.files,
            t.kind.name()
        );
    }
    for d in &r.listed_directories {
        let by = d
            .listed_by
            .iter()
            .map(|e| e.to_string())
            .collect::<Vec<_>>()
            .join(", ");
        match d.why_missing {
            None => {
                s += &format!(
                    "  listed directory {} (by {by}): all {} entries kept\n",
                    d.dir, d.entries
                )
            }
            Some(why) => {
                s += &format!(
                    "  WARNING: listed directory {} (by {by}): {} of {} entries NOT kept ({} bytes; {}), \
                 a listing shows fewer names; --include {} keeps them\n",
                    d.dir,
                    d.missing,
                    d.entries,
                    d.missing_bytes,
                    why.describe(),
                    d.dir
                )
            }
        }
    }
    if r.unnamed_listings > 0 {
        s += &format!(
            "  WARNING: {} directory listings on descriptors the tracer could not name \
             (opened before the watch began): their entries may be missing; observe from \
             the first exec (not --attach)\n",
            r.unnamed_listings
        );
    }
    if r.strict {
        s += "  --strict: only what was observed (no state directories, code trees or listed directories kept whole)\n";
    }
    let t = &r.timings;
    s += &format!(
        "  time: read image {} ms, plan {} ms, write {} ms, load {} ms\n",
        t.read_image_ms, t.plan_ms, t.write_ms, t.load_ms
    );
    s
}

pub fn up(plan: &Path, publish: &[String], json: bool) -> anyhow::Result<()> {
    let opts = compose::UpOptions {
        publish: publish
            .iter()
            .map(|p| compose::ComposePort::parse_publish(p).map_err(|e| usage(e.to_string())))
            .collect::<Result<_, _>>()?,
        require_running: true,
        ..Default::default()
    };
    let (_, file) = compose::ComposeFile::load(plan)?;
    let bar = spinner();
    let report = runtime()?.block_on(async {
        // The engine the plan's images were emitted into.
        if let Some(ns) = containerd_plan::namespace_of(&file) {
            let containerd = Containerd::connect().await?;
            let start = containerd_plan::engine_start(&containerd, ns);
            return containerd_plan::up_with(&containerd, plan, &opts, &start, &|step| {
                // A warning stays on the screen; a step passes.
                match step.strip_prefix("warning: ") {
                    Some(w) => bar.suspend(|| eprintln!("cimplifierctl: warning: {w}")),
                    None => bar.set_message(step.to_owned()),
                }
            })
            .await;
        }
        let docker = cimplifier::docker::connect()?;
        let start = compose::engine_start(&docker);
        compose::up_with(&docker, plan, &opts, &start, &|step| {
            bar.set_message(step.to_owned())
        })
        .await
    });
    bar.finish_and_clear();
    let report = report?;
    if json {
        return print(&(serde_json::to_string_pretty(&report)? + "\n"));
    }
    let mut text = format!(
        "project {} is up ({})\n",
        report.project,
        report.compose_file.display()
    );
    for c in &report.containers {
        text += &format!("  {:<12} {}\n", c.service, c.container);
    }
    if !report.seeded.is_empty() {
        text += &format!(
            "  new volumes, seeded from the source image: {}\n",
            report.seeded.join(", ")
        );
    }
    if !report.kept.is_empty() {
        text += &format!(
            "  volumes kept with their data: {}\n",
            report.kept.join(", ")
        );
    }
    if let Some(ip) = &report.ip_address {
        text += &format!("  reachable at {ip} (the shared network namespace)\n");
    }
    if let Some(ns) = containerd_plan::namespace_of(&file) {
        text += &format!(
            "  in containerd namespace {ns}, with only loopback (no CNI): reach it inside its \
             network namespace, nsenter --net=/proc/PID/ns/net (PID: `ctr -n {ns} tasks ls`)\n"
        );
    }
    for p in &report.published {
        text += &format!("  published on the host: {p}\n");
    }
    print(&text)
}

pub fn down(plan: &Path, volumes: bool, json: bool) -> anyhow::Result<()> {
    let bar = spinner();
    let (_, file) = compose::ComposeFile::load(plan)?;
    let removed = runtime()?.block_on(async {
        if containerd_plan::namespace_of(&file).is_some() {
            let containerd = Containerd::connect().await?;
            return containerd_plan::down(&containerd, plan, volumes, &|step| {
                bar.set_message(step.to_owned())
            })
            .await;
        }
        let docker = cimplifier::docker::connect()?;
        compose::down(&docker, plan, volumes, &|step| {
            bar.set_message(step.to_owned())
        })
        .await
    });
    bar.finish_and_clear();
    let removed = removed?;
    if json {
        return print(&(serde_json::to_string_pretty(&removed)? + "\n"));
    }
    if removed.is_empty() {
        return print("nothing was running\n");
    }
    print(&format!("removed {}\n", removed.join(", ")))
}
