//! The run configuration of emitted images: the source image's config with
//! what the observed container set on top of it (`docker create IMAGE
//! COMMAND`, `--env`, `--user`, `--workdir`, `--publish`...). Where the two
//! agree nothing changes; where they differ the container's setting wins,
//! since that is what was observed. Each setting says where it came from,
//! for the reports.

use serde::{Deserialize, Serialize};

use super::oci::SourceConfig;
use crate::docker::run::{RunSettings, RuntimeSettings};
use crate::engine::Engine;
use crate::store::SessionRecord;

/// Where a setting of an emitted image came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Origin {
    /// The source image's configuration.
    ImageConfig,
    /// The observed container, which set it at `docker create`/`run`.
    Container,
}

/// A run setting, named as in an image config or `docker run`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Setting {
    Entrypoint,
    Cmd,
    Env,
    User,
    WorkingDir,
    ExposedPorts,
    StopSignal,
    PublishedPorts,
    PublishAllPorts,
    Tty,
    StdinOpen,
    Init,
}

impl Setting {
    pub fn name(self) -> &'static str {
        match self {
            Setting::Entrypoint => "entrypoint",
            Setting::Cmd => "cmd",
            Setting::Env => "env",
            Setting::User => "user",
            Setting::WorkingDir => "working_dir",
            Setting::ExposedPorts => "exposed_ports",
            Setting::StopSignal => "stop_signal",
            Setting::PublishedPorts => "published_ports",
            Setting::PublishAllPorts => "publish_all_ports",
            Setting::Tty => "tty",
            Setting::StdinOpen => "stdin_open",
            Setting::Init => "init",
        }
    }

    /// How a container sets it, in the words of `engine`'s CLI: Podman's
    /// `create` takes Docker's flags; a containerd container has it in
    /// its OCI spec.
    fn how(self, engine: Engine) -> String {
        let flag = match self {
            Setting::Entrypoint => "--entrypoint",
            Setting::Cmd => "IMAGE COMMAND",
            Setting::Env => "--env",
            Setting::User => "--user",
            Setting::WorkingDir => "--workdir",
            Setting::ExposedPorts => "--expose/--publish",
            Setting::StopSignal => "--stop-signal",
            Setting::PublishedPorts => "--publish",
            Setting::PublishAllPorts => "--publish-all",
            Setting::Tty => "--tty",
            Setting::StdinOpen => "--interactive",
            Setting::Init => "--init",
        };
        match engine {
            Engine::Docker => format!("docker create {flag}"),
            Engine::Podman => format!("podman create {flag}"),
            Engine::Containerd => format!("its OCI spec, as `docker create {flag}` would set it"),
        }
    }
}

/// One setting of the emitted configuration and where it came from.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CarriedSetting {
    pub setting: Setting,
    /// For `env`: the variable.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// The value (argv as JSON). Left out for `env`: values may be secrets,
    /// and `docker image inspect` shows them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
    pub from: Origin,
}

impl CarriedSetting {
    /// `image config` or `container (docker create --env)`.
    pub fn origin(&self) -> String {
        self.origin_on(Engine::Docker)
    }

    /// [`CarriedSetting::origin`] of a container that ran on `engine`.
    pub fn origin_on(&self, engine: Engine) -> String {
        match self.from {
            Origin::ImageConfig => "image config".to_owned(),
            Origin::Container => format!("container ({})", self.setting.how(engine)),
        }
    }
}

/// The run configuration an emit carried, for its report.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunReport {
    /// False when the session has no run settings: only the image's
    /// configuration was carried, for the reason `not_carried` gives.
    pub recorded: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub not_carried: Option<String>,
    pub settings: Vec<CarriedSetting>,
    /// What the output must be started with, outside its image config.
    pub runtime: RuntimeSettings,
    /// What the container was run with that emit does not carry (bind
    /// mounts, capabilities, `--network`...), as `docker run` flags: add
    /// them when running the output.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub left_out: Vec<String>,
    /// Variables the engine put into the container's environment itself
    /// (Podman's `container`, `HOSTNAME`, `TERM`, root's `HOME`), not
    /// carried: the engine sets them again in a new container, and a
    /// `HOSTNAME` in the image would name the old container.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub engine_env: Vec<String>,
}

impl RunReport {
    /// The `docker run` line that starts `image` as the container ran.
    pub fn docker_run(&self, image: &str) -> String {
        self.docker_run_with(image, &[])
    }

    /// The same, with `extra` flags (the image's privileges) before `image`.
    pub fn docker_run_with(&self, image: &str, extra: &[String]) -> String {
        let mut argv = vec!["docker".to_owned(), "run".to_owned(), "-d".to_owned()];
        argv.extend(self.runtime.docker_run_flags());
        argv.extend(extra.iter().cloned());
        argv.push(image.to_owned());
        argv.join(" ")
    }

    /// One line per setting (variables grouped by origin), each indented
    /// by `indent`.
    pub fn render_text(&self, indent: &str) -> String {
        self.render_text_on(indent, Engine::Docker)
    }

    /// [`RunReport::render_text`] of a container that ran on `engine`.
    pub fn render_text_on(&self, indent: &str, engine: Engine) -> String {
        use std::fmt::Write as _;
        let mut out = String::new();
        if !self.recorded {
            let _ = writeln!(
                out,
                "{indent}how the container was run: NOT CARRIED ({}): only the image config \
                 was; check the command, environment and ports",
                self.not_carried.as_deref().unwrap_or("not recorded")
            );
        }
        let mut env: Vec<(Origin, Vec<&str>)> = Vec::new();
        for s in &self.settings {
            if s.setting == Setting::Env {
                let name = s.name.as_deref().unwrap_or_default();
                match env.iter_mut().find(|(o, _)| *o == s.from) {
                    Some((_, names)) => names.push(name),
                    None => env.push((s.from, vec![name])),
                }
                continue;
            }
            let _ = writeln!(
                out,
                "{indent}{} {}: {}",
                s.setting.name(),
                s.value.as_deref().unwrap_or("(none)"),
                s.origin_on(engine)
            );
        }
        env.sort_by_key(|(from, _)| *from);
        for (from, names) in env {
            let s = CarriedSetting {
                setting: Setting::Env,
                name: None,
                value: None,
                from,
            };
            let _ = writeln!(
                out,
                "{indent}env {}: {}",
                names.join(" "),
                s.origin_on(engine)
            );
        }
        if !self.engine_env.is_empty() {
            let _ = writeln!(
                out,
                "{indent}env {}: set by the engine itself, not carried (it sets them again)",
                self.engine_env.join(" ")
            );
        }
        if !self.left_out.is_empty() {
            let _ = writeln!(
                out,
                "{indent}NOT carried (the container had them; add them when you run it): {}",
                self.left_out.join(", ")
            );
        }
        out
    }
}

fn argv_text(v: &Option<Vec<String>>) -> Option<String> {
    v.as_ref()
        .map(|v| serde_json::to_string(v).expect("strings serialize"))
}

/// The configuration to emit for the source image of `session`, whose
/// container ran with its recorded run settings, and where each setting
/// came from.
pub fn carry_for(image: &SourceConfig, session: &SessionRecord) -> (SourceConfig, RunReport) {
    let (config, mut report) = carry(image, session.run.as_deref());
    if !report.recorded {
        report.not_carried = Some(match &session.run_not_merged {
            Some(why) => format!("{why}, and were merged"),
            None if session.containerd.is_some() => {
                "the daemon could not read the containerd container's image configuration to \
                 record how it ran (its log says why)"
                    .to_owned()
            }
            None => "the session was recorded by a daemon that did not keep it".to_owned(),
        });
    }
    (config, report)
}

/// The configuration to emit for a source image whose container ran with
/// `run` (None: unknown), and where each setting came from.
pub fn carry(image: &SourceConfig, run: Option<&RunSettings>) -> (SourceConfig, RunReport) {
    let mut report = RunReport {
        recorded: run.is_some(),
        ..Default::default()
    };
    let Some(run) = run else {
        let image_env = image.env.clone().unwrap_or_default();
        let same = RunSettings {
            entrypoint: image.entrypoint.clone(),
            cmd: image.cmd.clone(),
            env: image_env,
            user: image.user.clone(),
            working_dir: image.working_dir.clone(),
            exposed_ports: image.exposed_ports.clone().unwrap_or_default(),
            stop_signal: image.stop_signal.clone(),
            runtime: RuntimeSettings::default(),
            left_out: Vec::new(),
        };
        report.settings = settings(image, &same);
        return (image.clone(), report);
    };
    let image_env = image.env.clone().unwrap_or_default();
    let injected = podman_injected(run, &image_env);
    let own;
    let run = if injected.is_empty() {
        run
    } else {
        own = RunSettings {
            env: run
                .env
                .iter()
                .filter(|e| !injected.contains(e))
                .cloned()
                .collect(),
            ..run.clone()
        };
        &own
    };
    report.engine_env = injected
        .iter()
        .map(|e| e.split_once('=').map_or(e.as_str(), |(k, _)| k).to_owned())
        .collect();
    report.settings = settings(image, run);
    report.runtime = run.runtime.clone();
    report.left_out = run.left_out.clone();
    let config = SourceConfig {
        entrypoint: run.entrypoint.clone(),
        cmd: run.cmd.clone(),
        env: (!run.env.is_empty()).then(|| run.env.clone()),
        user: run.user.clone(),
        working_dir: run.working_dir.clone(),
        exposed_ports: (!run.exposed_ports.is_empty()).then(|| run.exposed_ports.clone()),
        stop_signal: run.stop_signal.clone(),
        ..image.clone()
    };
    (config, report)
}

/// The variables of `run`'s environment that Podman put there itself,
/// not the image (`image_env`) or the container's creator: `container=
/// podman` (which only Podman sets, and which tells its containers), with
/// its `HOSTNAME`, `TERM=xterm` and, for root, `HOME=/root`.
fn podman_injected(run: &RunSettings, image_env: &[String]) -> Vec<String> {
    const MARK: &str = "container=podman";
    if !run.env.iter().any(|e| e == MARK) || image_env.iter().any(|e| e == MARK) {
        return Vec::new();
    }
    let root = matches!(
        run.user.as_deref(),
        None | Some("" | "root" | "0" | "0:0" | "root:root")
    );
    run.env
        .iter()
        .filter(|e| !image_env.contains(e))
        .filter(|e| match e.split_once('=') {
            Some(("container", "podman") | ("TERM", "xterm") | ("HOSTNAME", _)) => true,
            Some(("HOME", "/root")) => root,
            _ => false,
        })
        .cloned()
        .collect()
}

/// Every setting that is set in the image or the container, by origin.
fn settings(image: &SourceConfig, run: &RunSettings) -> Vec<CarriedSetting> {
    let mut out = Vec::new();
    let mut one = |setting: Setting, image: Option<String>, run: Option<String>| {
        if image.is_none() && run.is_none() {
            return;
        }
        out.push(CarriedSetting {
            setting,
            name: None,
            from: if image == run {
                Origin::ImageConfig
            } else {
                Origin::Container
            },
            value: run,
        });
    };
    let empty_argv = |v: &Option<Vec<String>>| v.clone().filter(|v| !v.is_empty());
    one(
        Setting::Entrypoint,
        argv_text(&empty_argv(&image.entrypoint)),
        argv_text(&run.entrypoint),
    );
    one(
        Setting::Cmd,
        argv_text(&empty_argv(&image.cmd)),
        argv_text(&run.cmd),
    );
    one(Setting::User, image.user.clone(), run.user.clone());
    one(
        Setting::WorkingDir,
        image.working_dir.clone(),
        run.working_dir.clone(),
    );
    let ports = |v: &[String]| (!v.is_empty()).then(|| v.join(" "));
    let mut image_ports = image.exposed_ports.clone().unwrap_or_default();
    image_ports.sort();
    one(
        Setting::ExposedPorts,
        ports(&image_ports),
        ports(&run.exposed_ports),
    );
    one(
        Setting::StopSignal,
        image.stop_signal.clone(),
        run.stop_signal.clone(),
    );
    let r = &run.runtime;
    if !r.published_ports.is_empty() {
        let flags: Vec<String> = r.published_ports.iter().map(|p| p.flag()).collect();
        one(Setting::PublishedPorts, None, Some(flags.join(" ")));
    }
    for (setting, on) in [
        (Setting::PublishAllPorts, r.publish_all_ports),
        (Setting::Tty, r.tty),
        (Setting::StdinOpen, r.stdin_open),
        (Setting::Init, r.init),
    ] {
        if on {
            one(setting, None, Some("true".to_owned()));
        }
    }
    let image_env = image.env.clone().unwrap_or_default();
    let var = |e: &str| e.split_once('=').map_or(e, |(k, _)| k).to_owned();
    for e in &run.env {
        out.push(CarriedSetting {
            setting: Setting::Env,
            name: Some(var(e)),
            value: None,
            from: if image_env.contains(e) {
                Origin::ImageConfig
            } else {
                Origin::Container
            },
        });
    }
    // A variable of the image the container ran without.
    for e in &image_env {
        let name = var(e);
        if !run.env.iter().any(|r| var(r) == name) {
            out.push(CarriedSetting {
                setting: Setting::Env,
                name: Some(format!("{name} (unset)")),
                value: None,
                from: Origin::Container,
            });
        }
    }
    out
}

#[cfg(test)]
mod tests;
