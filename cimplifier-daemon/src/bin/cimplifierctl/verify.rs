//! `verify`: starts an emitted output under observation, drives the
//! workload (and the lifecycle steps) against it, and has the daemon
//! compare what the output did with the original session.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use anyhow::Context;
use cimplifier::api::{Address, pb};
use cimplifier::docker::compose::{self, ComposeFile, StartOrder};
use cimplifier::emit::partitioned::seed::SEED_SERVICE;
use cimplifier::engine::containerd::{ContainerRef, Containerd, plan as containerd_plan};
use cimplifier::place::privileges::{HARDENING_LABEL, Hardening};

use crate::args::VerifyArgs;
use crate::daemon::{Client, WorkloadFailed, connect, runtime, status};
use crate::exercise::{Exercise, NetnsOf, Pass, STEPS, interruption, outcome, step_name};
use crate::observe::{passes_json, passes_text};
use crate::render::print;

/// The exit code of a verify that found the output worse.
const REGRESSED: u8 = 7;

/// The output being verified, started.
struct Started {
    /// Its sessions, by container name, with the partition each runs.
    sessions: Vec<(String, String)>,
    /// The container the workload reaches and the lifecycle steps act on.
    front: String,
    target: Option<pb::Target>,
    what: String,
    /// Volumes this verify made (a plan's), removed with the output.
    volumes: Vec<String>,
    /// The front's network namespace when it has only loopback (a
    /// containerd task without CNI): the workload runs inside it.
    netns: Option<NetnsOf>,
    /// The one-service plan a containerd `--image` output runs as.
    image_plan: Option<(Containerd, ComposeFile)>,
}

/// The engine a run plan starts in: the one its images were emitted into.
enum PlanEngine {
    Docker,
    Containerd {
        containerd: Containerd,
        namespace: String,
    },
}

impl PlanEngine {
    async fn of(plan: &std::path::Path) -> anyhow::Result<Self> {
        let (_, file) = ComposeFile::load(plan)?;
        Ok(match containerd_plan::namespace_of(&file) {
            Some(ns) => PlanEngine::Containerd {
                containerd: Containerd::connect().await?,
                namespace: ns.to_owned(),
            },
            None => PlanEngine::Docker,
        })
    }
}

pub fn verify(socket: &Address, args: VerifyArgs) -> anyhow::Result<()> {
    let VerifyArgs {
        session,
        workload,
        image,
        plan,
        ready_timeout,
        no_lifecycle,
        keep,
        json,
    } = args;
    let (started, passes, report) = runtime()?.block_on(async {
        let stop = interruption()?;
        let mut api = connect(socket).await?;
        let original = api
            .get_session(pb::GetSessionRequest {
                container: session.clone(),
            })
            .await
            .map_err(status)?
            .into_inner();
        if original.state == pb::session::State::Observing as i32 {
            anyhow::bail!(
                "session {session} is still being observed: `cimplifierctl stop {session}`, \
                 emit, then verify"
            );
        }
        let docker = cimplifier::docker::connect()?;
        let tag = format!("{}-{}", original.container, std::process::id());
        let started = match (&image, &plan) {
            (Some(image), _) => match original.container_id.parse::<ContainerRef>() {
                Ok(at) => start_image_containerd(&api, &at, image, &tag).await,
                Err(_) => start_image(&docker, &mut api, &original, image, &tag).await,
            },
            (_, Some(plan)) => match PlanEngine::of(plan).await {
                Ok(engine) => start_plan(&docker, &engine, &api, plan).await,
                Err(e) => Err(e),
            },
            _ => unreachable!("clap requires --image or --plan"),
        };
        let started = match started {
            Ok(s) => s,
            Err(e) => {
                if let (Some(_), false) = (&image, keep) {
                    let _ = cimplifier::docker::output::remove(&docker, &verify_name(&tag)).await;
                }
                return Err(e);
            }
        };
        // The output goes through what the original went through while
        // observed: compared with a different history, a call can fail in
        // one and not the other for no fault of the output. Partitions
        // share one network namespace, whose owner cannot be restarted
        // alone, so a plan runs the workload once.
        let steps: Vec<pb::LifecycleStep> = if no_lifecycle || plan.is_some() {
            Vec::new()
        } else {
            original
                .lifecycle_steps
                .iter()
                .filter_map(|name| STEPS.into_iter().find(|s| step_name(*s) == name))
                .collect()
        };
        if steps.is_empty() && original.lifecycle_steps.is_empty() && !no_lifecycle {
            eprintln!(
                "note: session {session} went through no lifecycle step while observed, so \
                 neither does the output (`observe --exec` runs them for servers)"
            );
        }
        eprintln!("verifying {}: {}", session, started.what);
        let exercise = Exercise {
            api: api.clone(),
            container: &started.front,
            cmd: Some(&workload),
            ready_timeout,
            json,
            steps: &steps,
            netns: started.netns.clone(),
        };
        let passes = exercise.run(started.target.as_ref(), stop).await;
        for (name, _) in &started.sessions {
            let request = pb::StopObservingRequest {
                container: name.clone(),
                ..Default::default()
            };
            if let Err(e) = api.stop_observing(request).await {
                eprintln!(
                    "cimplifierctl: warning: closing the session of {name}: {}",
                    e.message()
                );
            }
        }
        let report = api
            .verify(pb::VerifyRequest {
                original: session.clone(),
                outputs: started
                    .sessions
                    .iter()
                    .map(|(s, p)| pb::VerifiedOutput {
                        session: s.clone(),
                        partition: p.clone(),
                    })
                    .collect(),
            })
            .await
            .map_err(status)
            .map(tonic::Response::into_inner);
        if !keep {
            let removed = match &plan {
                Some(plan) => match PlanEngine::of(plan).await {
                    Ok(engine) => stop_plan(&docker, &engine, plan, &started.volumes).await,
                    Err(e) => Err(e),
                },
                None => match &started.image_plan {
                    Some((containerd, plan)) => {
                        containerd_plan::down_plan(containerd, plan, true, &|_| {})
                            .await
                            .map(drop)
                    }
                    None => cimplifier::docker::output::remove(&docker, &started.front).await,
                },
            };
            if let Err(e) = removed {
                eprintln!("cimplifierctl: warning: removing the output: {e:#}");
            }
        }
        // An output that did not come up is compared all the same: what it
        // failed to find is why.
        Ok((started, passes.map_err(|e| format!("{e:#}")), report?))
    })?;
    let failed_pass = passes
        .as_ref()
        .ok()
        .and_then(|p| p.iter().find(|p| !p.succeeded()));
    let regressed = !report.regressions.is_empty() || failed_pass.is_some() || passes.is_err();
    let workload_json = match &passes {
        Ok(p) => serde_json::json!({ "command": workload, "passes": passes_json(p) }),
        Err(e) => serde_json::json!({ "command": workload, "passes": [], "not_run": e }),
    };
    if json {
        let v = serde_json::json!({
            "session": session,
            "output": started.what,
            "output_sessions": started.sessions.iter().map(|(s, p)| serde_json::json!({"session": s, "partition": p})).collect::<Vec<_>>(),
            "workload": workload_json,
            "regressions": report.regressions.iter().map(regression_json).collect::<Vec<_>>(),
            "incomplete": report.incomplete,
            "failed_calls_compared": report.failed_calls,
            "verified": !regressed,
        });
        print(&(serde_json::to_string_pretty(&v)? + "\n"))?;
    } else {
        print(&render(&session, &started, &passes, &report))?;
    }
    if !regressed {
        return Ok(());
    }
    let mut why = Vec::new();
    if let Err(e) = &passes {
        why.push(format!("the workload could not run: {e}"));
    }
    if let Some(p) = failed_pass {
        why.push(format!(
            "the workload {} ({})",
            outcome(&p.ended).1,
            p.name()
        ));
    }
    if !report.regressions.is_empty() {
        why.push(format!(
            "{} regression{}",
            report.regressions.len(),
            if report.regressions.len() == 1 {
                ""
            } else {
                "s"
            }
        ));
    }
    Err(WorkloadFailed {
        code: REGRESSED,
        message: format!(
            "the output of {session} does worse than the original: {}",
            why.join(", ")
        ),
    }
    .into())
}

fn verify_name(tag: &str) -> String {
    format!("cimplifier-verify-{tag}")
}

/// Creates a container from the slim image and has the daemon start it
/// under observation.
async fn start_image(
    docker: &cimplifier::docker::Docker,
    api: &mut Client,
    original: &pb::Session,
    image: &str,
    tag: &str,
) -> anyhow::Result<Started> {
    let name = verify_name(tag);
    let runtime = cimplifier::docker::output::original_runtime(docker, &original.container_id)
        .await
        .unwrap_or_default();
    let label = cimplifier::docker::output::image_label(docker, image, HARDENING_LABEL).await?;
    let hardening = hardening_label(image, label.as_deref())?;
    cimplifier::docker::output::create(docker, &name, image, &runtime, hardening.as_ref()).await?;
    let observed = api
        .observe(pb::ObserveRequest {
            container: name.clone(),
            // An earlier verify's session of this name is not this one's.
            replace: true,
            ..Default::default()
        })
        .await
        .map_err(status)
        .with_context(|| format!("starting {name} under observation"))?
        .into_inner();
    Ok(Started {
        sessions: vec![(name.clone(), String::new())],
        front: name.clone(),
        target: observed.target,
        what: format!("image {image}, run as container {name}"),
        volumes: Vec::new(),
        netns: None,
        image_plan: None,
    })
}

/// The service a containerd `--image` output runs as.
const IMAGE_SERVICE: &str = "output";

/// The privileges `image`'s hardening label (`json`) asks for, refused
/// when it is not what emit writes or asks for more than emit grants (the
/// label is input); None for an image without the label (an older emit).
fn hardening_label(image: &str, json: Option<&str>) -> anyhow::Result<Option<Hardening>> {
    let Some(json) = json else {
        return Ok(None);
    };
    let h: Hardening = serde_json::from_str(json).with_context(|| {
        format!("image {image}: its {HARDENING_LABEL} label is not what emit writes")
    })?;
    h.check().map_err(|e| {
        anyhow::anyhow!(
            "image {image}: its {HARDENING_LABEL} label asks for more than emit grants: {e}"
        )
    })?;
    Ok(Some(h))
}

/// The one-service plan that runs `image` in containerd namespace `ns`
/// with its hardening label's settings (as Docker's container gets them):
/// its anonymous volumes are volumes of the plan, filled from the image.
fn image_plan(
    ns: &str,
    image: &str,
    tag: &str,
    hardening: Option<&Hardening>,
) -> anyhow::Result<ComposeFile> {
    let mut service = compose::ComposeService {
        image: image.to_owned(),
        ..Default::default()
    };
    let mut volumes = BTreeMap::new();
    if let Some(h) = hardening {
        service.cap_drop = vec!["ALL".to_owned()];
        service.cap_add = h.cap_add.clone();
        service.security_opt = h.security_opt.clone();
        service.read_only = h.read_only;
        service.tmpfs = h
            .tmpfs
            .iter()
            .map(|(dir, opts)| match opts.is_empty() {
                true => dir.clone(),
                false => format!("{dir}:{opts}"),
            })
            .collect();
        for (i, path) in h.volumes.iter().enumerate() {
            let name = format!("anonymous-{}", i + 1);
            service.volumes.push(format!("{name}:{path}"));
            volumes.insert(name, compose::ComposeVolume::default());
        }
    }
    let plan = ComposeFile {
        name: verify_name(tag),
        plan_id: String::new(),
        containerd_namespace: Some(ns.to_owned()),
        services: [(IMAGE_SERVICE.to_owned(), service)].into(),
        volumes,
    }
    .with_plan_id()?;
    containerd_plan::check(&plan)
        .with_context(|| format!("running image {image} in containerd"))?;
    Ok(plan)
}

/// `verify --image` of a containerd session: the slim image runs in the
/// original's namespace, hardened by its label, started by the daemon
/// under observation; the workload runs inside its network namespace.
async fn start_image_containerd(
    api: &Client,
    original: &ContainerRef,
    image: &str,
    tag: &str,
) -> anyhow::Result<Started> {
    let containerd = Containerd::connect().await?;
    let ns = original.namespace.clone();
    let labels = containerd
        .image_labels(&ns, image)
        .await?
        .with_context(|| {
            format!(
                "image {image} is not in containerd namespace {ns}, where the session's container \
             ran (`emit --tag` writes it there)"
            )
        })?;
    let hardening = hardening_label(image, labels.get(HARDENING_LABEL).map(String::as_str))?;
    let plan = image_plan(&ns, image, tag, hardening.as_ref())?;
    let id = plan.container_name(IMAGE_SERVICE);
    let client = api.clone();
    let at = ContainerRef {
        namespace: ns.clone(),
        id: id.clone(),
    };
    let observed_at = at.to_string();
    let start = move |_: String| -> futures::future::BoxFuture<'static, anyhow::Result<()>> {
        let mut api = client.clone();
        let container = observed_at.clone();
        Box::pin(async move {
            api.observe(pb::ObserveRequest {
                container: container.clone(),
                replace: true,
                ..Default::default()
            })
            .await
            .map_err(status)
            .with_context(|| format!("starting {container} under observation"))?;
            Ok(())
        })
    };
    let file = std::path::PathBuf::from(format!("(verify of {image})"));
    containerd_plan::up_plan(
        &containerd,
        &file,
        &plan,
        &ns,
        &compose::UpOptions::default(),
        &start,
        &|step| eprintln!("{step}"),
    )
    .await?;
    let digest = containerd
        .image_target(&ns, image)
        .await?
        .with_context(|| format!("image {image} in namespace {ns}"))?;
    let config = containerd.image_config(&ns, &digest).await?;
    let tcp_ports = cimplifier::engine::containerd::exposed_tcp_ports(&config)
        .into_iter()
        .map(u32::from)
        .collect();
    let netns = NetnsOf {
        containerd: containerd.clone(),
        at,
    };
    netns.path().await?;
    Ok(Started {
        sessions: vec![(id.clone(), String::new())],
        front: id.clone(),
        target: Some(pb::Target {
            network_mode: "netns".into(),
            ip_address: std::net::Ipv4Addr::LOCALHOST.to_string(),
            tcp_ports,
        }),
        what: format!("image {image}, run as container {id} in containerd namespace {ns}"),
        volumes: Vec::new(),
        netns: Some(netns),
        image_plan: Some((containerd, plan)),
    })
}

/// Brings the plan up with each partition started by the daemon, under
/// observation from its first exec.
async fn start_plan(
    docker: &cimplifier::docker::Docker,
    engine: &PlanEngine,
    api: &Client,
    plan: &std::path::Path,
) -> anyhow::Result<Started> {
    let (_, file) = ComposeFile::load(plan)?;
    // Volumes that exist already keep their data: only those made here go.
    let mut volumes = Vec::new();
    for name in file.volumes.keys() {
        let full = file.volume_name(name);
        let exists = match engine {
            PlanEngine::Docker => cimplifier::docker::output::volume_exists(docker, &full).await?,
            PlanEngine::Containerd { namespace, .. } => containerd_plan::StateDirs::new(namespace)
                .volume(&full)
                .exists(),
        };
        if exists {
            eprintln!(
                "cimplifierctl: warning: volume {full} exists already: the output starts with \
                 its data, not with what the seed service would give it"
            );
        } else {
            volumes.push(full);
        }
    }
    let targets: Arc<Mutex<BTreeMap<String, Option<pb::Target>>>> = Arc::default();
    let seen = targets.clone();
    let client = api.clone();
    // A containerd container is observed as containerd://NS/ID, and its
    // session is named by its id.
    let scheme = match engine {
        PlanEngine::Docker => None,
        PlanEngine::Containerd { namespace, .. } => Some(namespace.clone()),
    };
    let start = move |name: String| -> futures::future::BoxFuture<'static, anyhow::Result<()>> {
        let mut api = client.clone();
        let seen = seen.clone();
        let container = match &scheme {
            Some(ns) => ContainerRef {
                namespace: ns.clone(),
                id: name.clone(),
            }
            .to_string(),
            None => name.clone(),
        };
        Box::pin(async move {
            let observed = api
                .observe(pb::ObserveRequest {
                    container,
                    replace: true,
                    ..Default::default()
                })
                .await
                .map_err(status)
                .with_context(|| format!("starting {name} under observation"))?
                .into_inner();
            seen.lock()
                .expect("targets lock")
                .insert(name, observed.target);
            Ok(())
        })
    };
    let order = compose::UpOptions {
        order: StartOrder::Dependencies,
        ..Default::default()
    };
    let progress = |step: &str| eprintln!("{step}");
    let up = match engine {
        PlanEngine::Docker => compose::up_with(docker, plan, &order, &start, &progress).await,
        PlanEngine::Containerd { containerd, .. } => {
            containerd_plan::up_with(containerd, plan, &order, &start, &progress).await
        }
    };
    let up = match up {
        Ok(up) => up,
        Err(e) => {
            let started: Vec<String> = targets
                .lock()
                .expect("targets lock")
                .keys()
                .cloned()
                .collect();
            for name in started {
                let _ = api
                    .clone()
                    .stop_observing(pb::StopObservingRequest {
                        container: name,
                        ..Default::default()
                    })
                    .await;
            }
            let _ = stop_plan(docker, engine, plan, &volumes).await;
            return Err(e);
        }
    };
    let owner = file
        .services
        .iter()
        .find(|(name, s)| s.network_mode.is_none() && name.as_str() != SEED_SERVICE)
        .map(|(name, _)| file.container_name(name))
        .context("the plan has no partition that owns the network")?;
    let mut targets = targets.lock().expect("targets lock").clone();
    let target = targets.remove(&owner).flatten();
    // Only loopback (no CNI): the workload runs in the owner's namespace.
    let netns = match engine {
        PlanEngine::Containerd {
            containerd,
            namespace,
        } if target.as_ref().is_none_or(|t| t.ip_address.is_empty()) => {
            let at = ContainerRef {
                namespace: namespace.clone(),
                id: owner.clone(),
            };
            let netns = NetnsOf {
                containerd: containerd.clone(),
                at,
            };
            netns.path().await?;
            Some(netns)
        }
        _ => None,
    };
    // Reached inside that namespace, on the ports the owner exposes.
    let target = match (&netns, target) {
        (Some(_), _) => Some(pb::Target {
            network_mode: "netns".into(),
            ip_address: std::net::Ipv4Addr::LOCALHOST.to_string(),
            tcp_ports: file
                .services
                .values()
                .filter(|s| s.network_mode.is_none())
                .flat_map(|s| &s.expose)
                .filter_map(|p| p.strip_suffix("/tcp").unwrap_or(p).parse().ok())
                .collect(),
        }),
        (None, target) => target,
    };
    Ok(Started {
        sessions: up
            .containers
            .iter()
            .map(|c| (c.container.clone(), c.service.clone()))
            .collect(),
        front: owner,
        target,
        what: format!(
            "plan {} ({} partitions)",
            up.compose_file.display(),
            up.containers.len()
        ),
        volumes,
        netns,
        image_plan: None,
    })
}

/// Stops the plan's containers and removes `volumes`, which verify made.
async fn stop_plan(
    docker: &cimplifier::docker::Docker,
    engine: &PlanEngine,
    plan: &std::path::Path,
    volumes: &[String],
) -> anyhow::Result<()> {
    match engine {
        PlanEngine::Docker => {
            compose::down(docker, plan, false, &|_| {}).await?;
            for v in volumes {
                cimplifier::docker::output::remove_volume(docker, v).await?;
            }
        }
        PlanEngine::Containerd {
            containerd,
            namespace,
        } => {
            containerd_plan::down(containerd, plan, false, &|_| {}).await?;
            let dirs = containerd_plan::StateDirs::new(namespace);
            for v in volumes {
                dirs.remove_volume(v)?;
            }
        }
    }
    Ok(())
}

fn kind(r: &pb::Regression) -> &'static str {
    match pb::regression::Kind::try_from(r.kind) {
        Ok(pb::regression::Kind::ExecMissing) => "exec_missing",
        _ => "call_fails",
    }
}

fn regression_json(r: &pb::Regression) -> serde_json::Value {
    serde_json::json!({
        "kind": kind(r),
        "executable": r.executable,
        "partition": r.partition,
        "syscall": r.syscall,
        "resource": r.resource,
        "errno": r.errno,
        "count": r.count,
        "fix": r.fix,
    })
}

fn render(
    session: &str,
    started: &Started,
    passes: &Result<Vec<Pass>, String>,
    report: &pb::VerifyReport,
) -> String {
    let mut s = format!("verify {session}: {}\n", started.what);
    match passes {
        Ok(passes) => s += &format!("  workload: {}\n", passes_text(passes)),
        Err(e) => s += &format!("  workload: NOT RUN: {e}\n"),
    }
    if report.regressions.is_empty() {
        s += &format!(
            "  regressions: none ({} failed calls of the output compared with the original)\n",
            report.failed_calls
        );
    } else {
        s += &format!("  regressions: {}\n", report.regressions.len());
        for r in &report.regressions {
            let what = if kind(r) == "exec_missing" {
                "PROGRAM MISSING"
            } else {
                "CALL FAILS"
            };
            let partition = if r.partition.is_empty() {
                String::new()
            } else {
                format!(" [partition {}]", r.partition)
            };
            s += &format!(
                "    {what}: {} {} {}: {}{partition}\n      fix: {}\n",
                r.executable, r.syscall, r.resource, r.errno, r.fix
            );
        }
    }
    for i in &report.incomplete {
        s += &format!("  INCOMPLETE output session (not everything could be compared): {i}\n");
    }
    s
}
