//! How a container was run: what `docker create` / `docker run` set on top
//! of its image, as the engine reports it. A session records this when it
//! begins, so emit can give the output images the command, environment,
//! user, working directory and ports the observed container really ran
//! with, not only those of its image.

use serde::{Deserialize, Serialize};

/// A port the container published on the host: `-p [HOST_IP:][HOST_PORT:]PORT/PROTO`.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct PublishedPort {
    /// The container's port and protocol as Docker names it: `80/tcp`.
    pub container_port: String,
    /// The host address; empty for all of them.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub host_ip: String,
    /// The host port; empty when the engine picks one.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub host_port: String,
}

impl PublishedPort {
    /// The port number and protocol (`tcp` when Docker's name has none).
    pub fn port_and_protocol(&self) -> (&str, &str) {
        self.container_port
            .split_once('/')
            .unwrap_or((&self.container_port, "tcp"))
    }

    /// The `docker run -p` argument that publishes it again.
    pub fn flag(&self) -> String {
        let (port, proto) = self.port_and_protocol();
        let inner = if proto == "tcp" {
            port.to_owned()
        } else {
            format!("{port}/{proto}")
        };
        let ip = if self.host_ip.contains(':') {
            format!("[{}]", self.host_ip)
        } else {
            self.host_ip.clone()
        };
        match (ip.is_empty(), self.host_port.is_empty()) {
            (true, true) => inner,
            (true, false) => format!("{}:{inner}", self.host_port),
            (false, _) => format!("{ip}:{}:{inner}", self.host_port),
        }
    }
}

/// What the container is run with that an image config cannot hold: the
/// output must be started with the same (`docker run` flags, the run
/// plan's `ports:`, `tty:`, `stdin_open:`, `init:`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct RuntimeSettings {
    /// `-p`, sorted.
    pub published_ports: Vec<PublishedPort>,
    /// `-P`: every exposed port on a port the engine picks.
    pub publish_all_ports: bool,
    /// `-t`: programs see a terminal.
    pub tty: bool,
    /// `-i`: stdin stays open (a shell reading it does not see EOF).
    pub stdin_open: bool,
    /// `--init`: Docker's init is PID 1 and reaps zombies.
    pub init: bool,
}

impl RuntimeSettings {
    /// The `docker run` flags that give a container these settings.
    pub fn docker_run_flags(&self) -> Vec<String> {
        let mut flags = Vec::new();
        if self.stdin_open {
            flags.push("-i".to_owned());
        }
        if self.tty {
            flags.push("-t".to_owned());
        }
        if self.init {
            flags.push("--init".to_owned());
        }
        if self.publish_all_ports {
            flags.push("-P".to_owned());
        }
        for p in &self.published_ports {
            flags.push("-p".to_owned());
            flags.push(p.flag());
        }
        flags
    }
}

/// The observed container's run settings. The engine reports the effective
/// values: what the container set, else what it inherited from its image
/// (Docker merges the two at create), so these are what ran.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct RunSettings {
    pub entrypoint: Option<Vec<String>>,
    pub cmd: Option<Vec<String>>,
    /// `KEY=VALUE`, in the engine's order.
    pub env: Vec<String>,
    pub user: Option<String>,
    pub working_dir: Option<String>,
    /// Sorted: `80/tcp`.
    pub exposed_ports: Vec<String>,
    pub stop_signal: Option<String>,
    #[serde(flatten)]
    pub runtime: RuntimeSettings,
    /// Settings of the container that emit does not carry over (bind
    /// mounts, capabilities, `--network`...), as `docker run` flags: the
    /// reports name them, so whoever runs the output can add them.
    pub left_out: Vec<String>,
}

fn non_empty(s: Option<String>) -> Option<String> {
    s.filter(|s| !s.is_empty())
}

fn non_empty_argv(v: Option<Vec<String>>) -> Option<Vec<String>> {
    v.filter(|v| !v.is_empty())
}

/// The container's host settings that change what runs or what it sees
/// and that emit does not carry, as `docker run` flags.
fn left_out(h: &bollard::models::HostConfig) -> Vec<String> {
    let mut out = Vec::new();
    let mut each = |flag: &str, values: &Option<Vec<String>>| {
        for v in values.iter().flatten() {
            out.push(format!("{flag} {v}"));
        }
    };
    each("--volume", &h.binds);
    each("--volumes-from", &h.volumes_from);
    each("--cap-add", &h.cap_add);
    each("--cap-drop", &h.cap_drop);
    each("--security-opt", &h.security_opt);
    each("--add-host", &h.extra_hosts);
    each("--dns", &h.dns);
    each("--group-add", &h.group_add);
    each("--link", &h.links);
    for m in h.mounts.iter().flatten() {
        let typ = m.typ.map(|t| t.to_string()).unwrap_or_default();
        out.push(format!(
            "--mount type={typ},source={},target={}",
            m.source.as_deref().unwrap_or_default(),
            m.target.as_deref().unwrap_or_default()
        ));
    }
    let mut tmpfs: Vec<&String> = h.tmpfs.iter().flat_map(|t| t.keys()).collect();
    tmpfs.sort();
    out.extend(tmpfs.into_iter().map(|t| format!("--tmpfs {t}")));
    for d in h.devices.iter().flatten() {
        out.push(format!(
            "--device {}:{}",
            d.path_on_host.as_deref().unwrap_or_default(),
            d.path_in_container.as_deref().unwrap_or_default()
        ));
    }
    for u in h.ulimits.iter().flatten() {
        out.push(format!(
            "--ulimit {}={}:{}",
            u.name.as_deref().unwrap_or_default(),
            u.soft.unwrap_or_default(),
            u.hard.unwrap_or_default()
        ));
    }
    let mut sysctls: Vec<_> = h.sysctls.iter().flatten().collect();
    sysctls.sort();
    out.extend(
        sysctls
            .into_iter()
            .map(|(k, v)| format!("--sysctl {k}={v}")),
    );
    if h.privileged == Some(true) {
        out.push("--privileged".into());
    }
    if h.readonly_rootfs == Some(true) {
        out.push("--read-only".into());
    }
    let modes = [
        ("--network", &h.network_mode, &["", "default", "bridge"][..]),
        ("--pid", &h.pid_mode, &[""][..]),
        ("--ipc", &h.ipc_mode, &["", "private", "shareable"][..]),
        ("--uts", &h.uts_mode, &[""][..]),
        ("--userns", &h.userns_mode, &[""][..]),
    ];
    for (flag, mode, defaults) in modes {
        if let Some(m) = mode.as_deref().filter(|m| !defaults.contains(m)) {
            out.push(format!("{flag} {m}"));
        }
    }
    // Docker's default /dev/shm is 64 MiB.
    if let Some(size) = h.shm_size.filter(|&s| s > 0 && s != 64 << 20) {
        out.push(format!("--shm-size {size}"));
    }
    out
}

impl RunSettings {
    /// From `docker inspect CONTAINER`.
    pub fn from_inspect(details: &bollard::models::ContainerInspectResponse) -> Self {
        let c = details.config.clone().unwrap_or_default();
        let h = details.host_config.clone().unwrap_or_default();
        let left_out = left_out(&h);
        let mut exposed_ports = c.exposed_ports.unwrap_or_default();
        exposed_ports.sort();
        let mut published_ports: Vec<PublishedPort> = h
            .port_bindings
            .unwrap_or_default()
            .into_iter()
            .flat_map(|(container_port, bindings)| {
                bindings
                    .unwrap_or_default()
                    .into_iter()
                    .map(move |b| PublishedPort {
                        container_port: container_port.clone(),
                        host_ip: b.host_ip.unwrap_or_default(),
                        host_port: b.host_port.unwrap_or_default(),
                    })
            })
            .collect();
        published_ports.sort();
        published_ports.dedup();
        Self {
            left_out,
            entrypoint: non_empty_argv(c.entrypoint),
            cmd: non_empty_argv(c.cmd),
            env: c.env.unwrap_or_default(),
            user: non_empty(c.user),
            working_dir: non_empty(c.working_dir),
            exposed_ports,
            stop_signal: non_empty(c.stop_signal),
            runtime: RuntimeSettings {
                published_ports,
                publish_all_ports: h.publish_all_ports == Some(true),
                tty: c.tty == Some(true),
                stdin_open: c.open_stdin == Some(true),
                init: h.init == Some(true),
            },
        }
    }

    /// The settings of sessions of one image merged into one: equal in
    /// what runs (else the first difference, in words), with the ports of
    /// all of them.
    pub fn merge<'a>(
        sessions: impl IntoIterator<Item = (&'a str, &'a RunSettings)>,
    ) -> Result<Option<RunSettings>, String> {
        let mut merged: Option<(&str, RunSettings)> = None;
        for (name, run) in sessions {
            let Some((first, m)) = &mut merged else {
                merged = Some((name, run.clone()));
                continue;
            };
            if let Some(what) = run.first_difference(m) {
                return Err(format!(
                    "sessions {first} and {name} ran their containers with different {what}"
                ));
            }
            m.exposed_ports.extend(run.exposed_ports.iter().cloned());
            m.exposed_ports.sort();
            m.exposed_ports.dedup();
            let r = &mut m.runtime;
            r.published_ports
                .extend(run.runtime.published_ports.iter().cloned());
            r.published_ports.sort();
            r.published_ports.dedup();
            r.publish_all_ports |= run.runtime.publish_all_ports;
            for flag in &run.left_out {
                if !m.left_out.contains(flag) {
                    m.left_out.push(flag.clone());
                }
            }
        }
        Ok(merged.map(|(_, m)| m))
    }

    fn first_difference(&self, other: &RunSettings) -> Option<&'static str> {
        let r = (&self.runtime, &other.runtime);
        [
            (self.entrypoint != other.entrypoint, "entrypoint"),
            (self.cmd != other.cmd, "command"),
            (self.env != other.env, "environment"),
            (self.user != other.user, "user"),
            (self.working_dir != other.working_dir, "working directory"),
            (self.stop_signal != other.stop_signal, "stop signal"),
            (r.0.tty != r.1.tty, "tty (-t)"),
            (r.0.stdin_open != r.1.stdin_open, "stdin (-i)"),
            (r.0.init != r.1.init, "init (--init)"),
        ]
        .into_iter()
        .find_map(|(differs, what)| differs.then_some(what))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bollard::models::{ContainerConfig, ContainerInspectResponse, HostConfig, PortBinding};

    fn inspect() -> ContainerInspectResponse {
        ContainerInspectResponse {
            config: Some(ContainerConfig {
                cmd: Some(vec!["sh".into(), "-c".into(), "echo hi".into()]),
                entrypoint: Some(vec![]),
                env: Some(vec!["FOO=bar".into()]),
                working_dir: Some("/srv".into()),
                user: Some(String::new()),
                exposed_ports: Some(vec!["81/udp".into(), "80/tcp".into()]),
                tty: Some(true),
                open_stdin: Some(true),
                ..Default::default()
            }),
            host_config: Some(HostConfig {
                port_bindings: Some(
                    [
                        (
                            "80/tcp".to_owned(),
                            Some(vec![PortBinding {
                                host_ip: Some("127.0.0.1".into()),
                                host_port: Some(String::new()),
                            }]),
                        ),
                        (
                            "81/udp".to_owned(),
                            Some(vec![PortBinding {
                                host_ip: Some("::1".into()),
                                host_port: Some("8081".into()),
                            }]),
                        ),
                    ]
                    .into_iter()
                    .collect(),
                ),
                binds: Some(vec!["/srv/data:/data".into()]),
                cap_add: Some(vec!["NET_ADMIN".into()]),
                network_mode: Some("bridge".into()),
                ipc_mode: Some("private".into()),
                shm_size: Some(64 << 20),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn from_inspect_keeps_what_ran_and_drops_empty_values() {
        let run = RunSettings::from_inspect(&inspect());
        assert_eq!(run.entrypoint, None);
        assert_eq!(run.cmd.as_deref().unwrap()[2], "echo hi");
        assert_eq!(run.user, None);
        assert_eq!(run.working_dir.as_deref(), Some("/srv"));
        assert_eq!(run.exposed_ports, ["80/tcp", "81/udp"]);
        assert!(run.runtime.tty && run.runtime.stdin_open && !run.runtime.init);
        assert_eq!(
            run.runtime.docker_run_flags(),
            ["-i", "-t", "-p", "127.0.0.1::80", "-p", "[::1]:8081:81/udp"]
        );
        // What emit cannot carry is named; Docker's defaults are not.
        assert_eq!(
            run.left_out,
            ["--volume /srv/data:/data", "--cap-add NET_ADMIN"]
        );
        // What old stores hold (no run settings) and partial JSON still load.
        let partial: RunSettings = serde_json::from_str(r#"{"cmd":["x"]}"#).unwrap();
        assert_eq!(partial.cmd.unwrap(), ["x"]);
    }

    #[test]
    fn merge_takes_the_ports_of_all_and_refuses_different_commands() {
        let a = RunSettings::from_inspect(&inspect());
        let mut b = a.clone();
        b.runtime.published_ports = vec![PublishedPort {
            container_port: "80/tcp".into(),
            host_ip: String::new(),
            host_port: "8080".into(),
        }];
        let m = RunSettings::merge([("a", &a), ("b", &b)]).unwrap().unwrap();
        assert_eq!(m.runtime.published_ports.len(), 3);
        assert_eq!(m.cmd, a.cmd);

        let mut c = a.clone();
        c.env.push("MODE=other".into());
        let e = RunSettings::merge([("a", &a), ("c", &c)]).unwrap_err();
        assert!(
            e.contains("sessions a and c") && e.contains("environment"),
            "{e}"
        );
        assert_eq!(RunSettings::merge([]), Ok(None));
    }
}
