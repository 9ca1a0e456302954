//! Making images and running them: `plan`, `emit` (slim, or partitioned
//! with --policy), `up` and `down`.

use std::path::Path;

use anyhow::Context;
use cimplifier::api::{Address, pb};
use cimplifier::docker::compose;
use cimplifier::emit::partitioned::PartitionEmitReport;
use cimplifier::emit::slim::{EmitReport, Explained};
use cimplifier::place::slim::{SafetySet, SlimOptions};
use tokio_stream::StreamExt;

use crate::args::{EmitArgs, path_arg};
use crate::daemon::{connect, daemon, runtime, status};
use crate::render::{mb, print, spinner};

pub fn plan(socket: &Address, session: String, policy: &Path, json: bool) -> anyhow::Result<()> {
    let policy_toml = std::fs::read_to_string(policy)
        .with_context(|| format!("reading the policy file {}", policy.display()))?;
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
        json,
    } = args;
    let mut slim = SlimOptions::with_safety_sets();
    slim.strict = strict;
    if no_safety_sets {
        slim.safety_sets.clear();
    }
    for name in &no_safety_set {
        let set = SafetySet::from_name(name).with_context(|| {
            format!(
                "--no-safety-set {name:?}: the sets are nss, ca-certificates, timezone and locales"
            )
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
    let explain: Vec<Explained> = explain
        .iter()
        .map(|s| Explained::parse(s).map_err(anyhow::Error::msg))
        .collect::<Result<_, _>>()?;
    let request = pb::EmitRequest {
        container: container.clone(),
        tag: tag.unwrap_or_default(),
        oci_dir: oci_dir
            .map(|d| {
                std::path::absolute(&d)
                    .unwrap_or(d)
                    .to_string_lossy()
                    .into_owned()
            })
            .unwrap_or_default(),
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
        policy_toml: match &policy {
            Some(p) => std::fs::read_to_string(p)
                .with_context(|| format!("reading the policy file {}", p.display()))?,
            None => String::new(),
        },
        out_dir: out
            .map(|d| {
                std::path::absolute(&d)
                    .unwrap_or(d)
                    .to_string_lossy()
                    .into_owned()
            })
            .unwrap_or_default(),
    };
    if policy.is_some() {
        return emit_partitioned(socket, request, &explain, json);
    }
    let report: EmitReport = emit_with_progress(socket, request)?;
    if json {
        return print(&(serde_json::to_string_pretty(&report)? + "\n"));
    }
    let mut text = summary(&report);
    text += &format!(
        "  audit report: emit-reports/{container}.json in the daemon's state directory (or emit --json)\n"
    );
    for p in &explain {
        text += &format!("  {p}: {}\n", report.explain_item(p));
    }
    print(&text)
}

/// Asks the daemon to emit, shows its steps on a spinner, and returns the
/// report it ends with (slim or partitioned, as the request asked).
fn emit_with_progress<R: serde::de::DeserializeOwned>(
    socket: &Address,
    request: pb::EmitRequest,
) -> anyhow::Result<R> {
    let bar = spinner();
    let report = runtime()?.block_on(async {
        let mut api = connect(socket).await?;
        let mut stream = api.emit(request).await.map_err(status)?.into_inner();
        let mut report = None;
        while let Some(item) = stream.next().await {
            match item.map_err(status)?.update {
                Some(pb::emit_progress::Update::Step(step)) => bar.set_message(step),
                Some(pb::emit_progress::Update::ReportJson(json)) => {
                    report = Some(serde_json::from_str::<R>(&json)?)
                }
                None => {}
            }
        }
        report.context("the daemon ended the emit without a report")
    });
    bar.finish_and_clear();
    report
}

/// `emit --policy`: the daemon writes the partitions' images and run plan.
fn emit_partitioned(
    socket: &Address,
    request: pb::EmitRequest,
    explain: &[Explained],
    json: bool,
) -> anyhow::Result<()> {
    let report: PartitionEmitReport = emit_with_progress(socket, request)?;
    if json {
        return print(&(serde_json::to_string_pretty(&report)? + "\n"));
    }
    let mut text = report.render_text();
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
    s += &format!(
        "  kept {} of {} files: {} of {} ({:.1}% smaller)\n",
        r.kept_files,
        r.source_files,
        mb(r.slim_image_bytes),
        mb(r.source_image_bytes),
        r.reduction_percent
    );
    s += &format!(
        "  removed {} files, {}\n",
        r.removed_files,
        mb(r.removed_bytes)
    );
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
    s += &r.run.render_text("    ");
    s += &format!("  privileges: {}\n", r.privileges.summary());
    if !r.docker_run.is_empty() {
        s += &format!("  run it as the container ran: {}\n", r.docker_run);
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

pub fn up(plan: &Path, json: bool) -> anyhow::Result<()> {
    let bar = spinner();
    let report = runtime()?.block_on(async {
        let docker = cimplifier::docker::connect()?;
        compose::up(&docker, plan, &|step| bar.set_message(step.to_owned())).await
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
    print(&text)
}

pub fn down(plan: &Path, volumes: bool, json: bool) -> anyhow::Result<()> {
    let bar = spinner();
    let removed = runtime()?.block_on(async {
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
