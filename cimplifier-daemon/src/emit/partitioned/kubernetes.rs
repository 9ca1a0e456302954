//! The run plan for Kubernetes (`emit --policy ... --k8s FILE`): a
//! Deployment translated from the Compose run plan itself, so the two
//! cannot disagree.
//!
//! A Deployment of one replica with the `Recreate` strategy, rather than a
//! bare Pod: the Deployment brings the pod back when it is evicted or its
//! node is lost, and `Recreate` never runs two copies at once (the
//! original was one container; its state volumes are written by one).
//!
//! - One container per partition. A pod's containers share one network
//!   namespace, which the Compose plan builds with `network_mode:
//!   service:...`; ports are declared on the container that held it.
//! - Every volume (shared, state, RPE sockets, tmpfs) is an `emptyDir`.
//! - The seed service becomes an init container that copies each volume's
//!   starting content from the seed image into the volume while it is
//!   empty ([`SEED_COPY_PROGRAM`]): Kubernetes has no copy of an image's
//!   content into an empty volume as Docker has.
//! - The privilege settings become each container's `securityContext`.
//!
//! Written with typed structs of the Kubernetes API's own field names
//! (checked by `kubectl`'s decoder in tests/partition_k8s.rs) rather than
//! k8s-openapi, whose build would cost more than the whole subset here.

use std::collections::{BTreeMap, BTreeSet};

use anyhow::{Result, bail};
use serde::{Deserialize, Serialize};

use super::IMAGE_TAG_LABEL;
use super::seed::{SEED_COPY_PROGRAM, SEED_DIR};
use crate::docker::compose::{ComposeFile, ComposeService, SEED_SERVICE};

/// The file's name among the run plan's.
pub const KUBERNETES_FILE: &str = "kubernetes.yaml";
/// Where the init container mounts each volume to fill it.
pub use crate::docker::compose::FILL_DIR;
/// Where a kubelet looks for `Localhost` seccomp profiles is its
/// `/var/lib/kubelet/seccomp`; the plan's profiles go below this.
pub const SECCOMP_PROFILE_DIR: &str = "cimplifier";

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Deployment {
    pub api_version: String,
    pub kind: String,
    pub metadata: ObjectMeta,
    pub spec: DeploymentSpec,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ObjectMeta {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DeploymentSpec {
    pub replicas: u32,
    pub selector: LabelSelector,
    pub strategy: DeploymentStrategy,
    pub template: PodTemplateSpec,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LabelSelector {
    pub match_labels: BTreeMap<String, String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeploymentStrategy {
    #[serde(rename = "type")]
    pub kind: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PodTemplateSpec {
    pub metadata: ObjectMeta,
    pub spec: PodSpec,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PodSpec {
    /// The partitions need no API access.
    pub automount_service_account_token: bool,
    /// No other service's address in the environment: the partitions ran
    /// with the environment the container had.
    pub enable_service_links: bool,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub init_containers: Vec<Container>,
    pub containers: Vec<Container>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub volumes: Vec<Volume>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Container {
    pub name: String,
    pub image: String,
    /// `IfNotPresent`: an image imported into the node's containerd is used
    /// as it is; one in a registry is pulled.
    pub image_pull_policy: String,
    /// Only for the init container: the partitions run their image's
    /// entrypoint and command, as the Compose plan does.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub command: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<ContainerPort>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub volume_mounts: Vec<VolumeMount>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub tty: bool,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub stdin: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub security_context: Option<SecurityContext>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ContainerPort {
    pub container_port: u16,
    /// `TCP`, `UDP` or `SCTP`.
    pub protocol: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct VolumeMount {
    pub name: String,
    pub mount_path: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Volume {
    pub name: String,
    pub empty_dir: EmptyDir,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct EmptyDir {
    /// `Memory` for what the Compose plan mounts as tmpfs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub medium: Option<String>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SecurityContext {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub capabilities: Option<Capabilities>,
    /// False for `no-new-privileges` (the runtime sets no_new_privs).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allow_privilege_escalation: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub read_only_root_filesystem: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run_as_user: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run_as_group: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seccomp_profile: Option<SeccompProfile>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Capabilities {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub drop: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub add: Vec<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SeccompProfile {
    /// `Localhost`, `RuntimeDefault` or `Unconfined`.
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub localhost_profile: Option<String>,
}

impl Deployment {
    pub fn to_yaml(&self) -> Result<String> {
        Ok(serde_norway::to_string(self)?)
    }
}

/// What the translation could not carry over, said by name.
pub type Warnings = Vec<String>;

/// A name Kubernetes takes for a container or volume (an RFC 1123 label:
/// `[a-z0-9-]`, at most 63, alphanumeric at both ends), unique in `taken`.
fn label_name(text: &str, taken: &mut BTreeSet<String>) -> String {
    let mapped: String = text
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '-'
            }
        })
        .collect();
    let trimmed = mapped.trim_matches('-');
    let base = if trimmed.is_empty() { "x" } else { trimmed };
    let fit = |s: &str, room: usize| s[..s.len().min(room)].trim_end_matches('-').to_owned();
    let mut name = fit(base, 63);
    let mut n = 2;
    while taken.contains(&name) {
        let suffix = format!("-{n}");
        name = fit(base, 63 - suffix.len()) + &suffix;
        n += 1;
    }
    taken.insert(name.clone());
    name
}

/// The image a service's container runs: `pinned` (a reference by digest,
/// e.g. what `emit --push` pushed) or the tag the Compose plan's label
/// names (the Compose plan runs by local image id, which a node does not
/// know).
fn image_of(
    name: &str,
    service: &ComposeService,
    pinned: &BTreeMap<String, String>,
) -> Result<String> {
    if let Some(image) = pinned.get(name) {
        return Ok(image.clone());
    }
    match service.labels.get(IMAGE_TAG_LABEL) {
        Some(tag) => Ok(tag.clone()),
        None => bail!(
            "service {name} of the run plan has no {IMAGE_TAG_LABEL} label naming its image by \
             tag, so Kubernetes could not find it; emit the plan again"
        ),
    }
}

/// The `securityContext` for a service's privilege settings; anything in
/// them that has no Kubernetes equivalent is refused by name.
fn security_context(
    name: &str,
    s: &ComposeService,
    plan_name: &str,
) -> Result<Option<SecurityContext>> {
    let mut sc = SecurityContext {
        capabilities: (!s.cap_drop.is_empty() || !s.cap_add.is_empty()).then(|| Capabilities {
            drop: s.cap_drop.clone(),
            add: s.cap_add.clone(),
        }),
        read_only_root_filesystem: s.read_only.then_some(true),
        ..Default::default()
    };
    for opt in &s.security_opt {
        if opt == "no-new-privileges:true" || opt == "no-new-privileges" {
            sc.allow_privilege_escalation = Some(false);
        } else if let Some(profile) = opt
            .strip_prefix("seccomp=")
            .or_else(|| opt.strip_prefix("seccomp:"))
        {
            // A profile file beside the plan: the kubelet reads it from
            // its seccomp directory on the node.
            sc.seccomp_profile = Some(match profile {
                "unconfined" => SeccompProfile {
                    kind: "Unconfined".into(),
                    localhost_profile: None,
                },
                file if !file.contains('/') && !file.starts_with('{') && !file.is_empty() => {
                    SeccompProfile {
                        kind: "Localhost".into(),
                        localhost_profile: Some(format!(
                            "{SECCOMP_PROFILE_DIR}/{plan_name}/{file}"
                        )),
                    }
                }
                _ => bail!(
                    "service {name}: security option {opt:?} names no profile file beside the \
                     plan; Kubernetes takes a Localhost profile by file name"
                ),
            });
        } else {
            bail!(
                "service {name}: security option {opt:?} has no Kubernetes equivalent known to \
                 cimplifier; the Kubernetes plan would run it with less confinement"
            );
        }
    }
    Ok((sc != SecurityContext::default()).then_some(sc))
}

/// The Kubernetes run plan of `plan`. `pinned` gives, by service, an image
/// reference to use instead of the tag (a digest the image was pushed
/// with).
pub fn deployment(
    plan: &ComposeFile,
    pinned: &BTreeMap<String, String>,
) -> Result<(Deployment, Warnings)> {
    let mut warnings = Warnings::new();
    let mut volume_names = BTreeSet::new();
    // Compose volume -> Kubernetes volume.
    let volumes: BTreeMap<&str, String> = plan
        .volumes
        .keys()
        .map(|v| (v.as_str(), label_name(v, &mut volume_names)))
        .collect();
    let mut pod_volumes: Vec<Volume> = volumes
        .values()
        .map(|name| Volume {
            name: name.clone(),
            empty_dir: EmptyDir::default(),
        })
        .collect();
    let mount = |service: &str, spec: &str| -> Result<(String, String)> {
        // `<volume>:<mount point>[:nocopy]`; nocopy is what emptyDir does.
        let mut parts = spec.split(':');
        let (Some(v), Some(target)) = (parts.next(), parts.next()) else {
            bail!("service {service}: volume {spec:?} is not <volume>:<mount point>");
        };
        let Some(name) = volumes.get(v) else {
            bail!("service {service} mounts volume {v}, which the plan does not define");
        };
        Ok((name.clone(), target.to_owned()))
    };

    let mut container_names = BTreeSet::new();
    let mut containers = Vec::new();
    let mut init_containers = Vec::new();
    for service_name in plan.start_order()? {
        let s = &plan.services[service_name];
        // Every field of the Compose service, named: one added there does
        // not compile here until it is translated (or refused), so the two
        // plans cannot drift apart unseen.
        let ComposeService {
            image: _,        // by tag or pinned digest: image_of
            network_mode: _, // the pod's one network namespace
            depends_on: _,   // the containers' order (start_order)
            volumes: _,      // mounts
            expose: _,       // ports
            ports: _,        // ports, and a warning: a Service publishes
            tty: _,          // tty
            stdin_open: _,   // stdin
            init: _,         // a warning: no equivalent
            labels: _,       // the image's tag (IMAGE_TAG_LABEL)
            cap_drop: _,     // securityContext
            cap_add: _,      // securityContext
            security_opt: _, // securityContext, or refused
            read_only: _,    // securityContext
            tmpfs: _,        // emptyDir, medium Memory
        } = s;
        let name = label_name(service_name, &mut container_names);
        let image = image_of(service_name, s, pinned)?;
        if service_name == SEED_SERVICE {
            // Each volume at FILL_DIR/<volume>, filled from SEED_DIR/<volume>.
            let mut volume_mounts = Vec::new();
            for spec in &s.volumes {
                let (volume, target) = mount(service_name, spec)?;
                let Some(staged) = target.strip_prefix(SEED_DIR) else {
                    bail!("the seed service mounts {target}, not below {SEED_DIR}");
                };
                volume_mounts.push(VolumeMount {
                    name: volume,
                    mount_path: format!("{FILL_DIR}{staged}"),
                });
            }
            init_containers.push(Container {
                name,
                image,
                image_pull_policy: "IfNotPresent".into(),
                command: vec![SEED_COPY_PROGRAM.into(), SEED_DIR.into(), FILL_DIR.into()],
                volume_mounts,
                // Owners, modes and file capabilities as the image has them.
                security_context: Some(SecurityContext {
                    capabilities: Some(Capabilities {
                        drop: vec!["ALL".into()],
                        add: ["CHOWN", "DAC_OVERRIDE", "FOWNER", "FSETID", "SETFCAP"]
                            .map(String::from)
                            .to_vec(),
                    }),
                    allow_privilege_escalation: Some(false),
                    read_only_root_filesystem: Some(true),
                    run_as_user: Some(0),
                    run_as_group: Some(0),
                    seccomp_profile: None,
                }),
                ..Default::default()
            });
            continue;
        }
        let mut volume_mounts: Vec<VolumeMount> = s
            .volumes
            .iter()
            .map(|spec| {
                mount(service_name, spec).map(|(name, mount_path)| VolumeMount { name, mount_path })
            })
            .collect::<Result<_>>()?;
        for t in &s.tmpfs {
            let dir = t.split_once(':').map_or(t.as_str(), |(d, _)| d);
            let volume = label_name(&format!("{service_name}-tmpfs{dir}"), &mut volume_names);
            pod_volumes.push(Volume {
                name: volume.clone(),
                empty_dir: EmptyDir {
                    medium: Some("Memory".into()),
                },
            });
            volume_mounts.push(VolumeMount {
                name: volume,
                mount_path: dir.to_owned(),
            });
        }
        let mut ports: Vec<ContainerPort> = Vec::new();
        let exposed = s.expose.iter().map(|e| {
            let (port, proto) = e.split_once('/').unwrap_or((e.as_str(), "tcp"));
            (port.parse::<u16>().ok(), proto.to_owned())
        });
        let published = s.ports.iter().map(|p| (Some(p.target), p.protocol.clone()));
        for (port, proto) in exposed.chain(published) {
            let Some(port) = port else {
                bail!("service {service_name}: an exposed port is not PORT[/PROTOCOL]");
            };
            let p = ContainerPort {
                container_port: port,
                protocol: proto.to_ascii_uppercase(),
            };
            if !ports.contains(&p) {
                ports.push(p);
            }
        }
        if !s.ports.is_empty() {
            warnings.push(format!(
                "kubernetes: partition {service_name} published {} on the host; the Deployment \
                 declares the container ports, publish them with a Service",
                s.ports
                    .iter()
                    .map(|p| p.container_port())
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
        }
        if s.init {
            warnings.push(format!(
                "kubernetes: partition {service_name} ran with Docker's init as PID 1 (--init), \
                 which Kubernetes has not; its entrypoint is PID 1 there and must reap its children"
            ));
        }
        containers.push(Container {
            name,
            image,
            image_pull_policy: "IfNotPresent".into(),
            command: Vec::new(),
            ports,
            volume_mounts,
            tty: s.tty,
            stdin: s.stdin_open,
            security_context: security_context(service_name, s, &plan.name)?,
        });
    }
    let name = label_name(&plan.name, &mut BTreeSet::new());
    let selector: BTreeMap<String, String> = [
        ("app.kubernetes.io/name".to_owned(), name.clone()),
        (
            "app.kubernetes.io/managed-by".to_owned(),
            "cimplifier".to_owned(),
        ),
    ]
    .into_iter()
    .collect();
    let mut annotations = BTreeMap::new();
    if !plan.plan_id.is_empty() {
        annotations.insert("cimplifier.io/plan".to_owned(), plan.plan_id.clone());
    }
    let deployment = Deployment {
        api_version: "apps/v1".into(),
        kind: "Deployment".into(),
        metadata: ObjectMeta {
            name: Some(name),
            labels: selector.clone(),
            annotations: annotations.clone(),
        },
        spec: DeploymentSpec {
            replicas: 1,
            selector: LabelSelector {
                match_labels: selector.clone(),
            },
            strategy: DeploymentStrategy {
                kind: "Recreate".into(),
            },
            template: PodTemplateSpec {
                metadata: ObjectMeta {
                    name: None,
                    labels: selector,
                    annotations,
                },
                spec: PodSpec {
                    automount_service_account_token: false,
                    enable_service_links: false,
                    init_containers,
                    containers,
                    volumes: pod_volumes,
                },
            },
        },
    };
    Ok((deployment, warnings))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::docker::compose::ComposePort;

    /// A plan as emit writes one: a server holding the network, a client
    /// calling it over RPE, one shared volume, and the seed service.
    fn sample() -> ComposeFile {
        let labels = |tag: &str| -> BTreeMap<String, String> {
            [(IMAGE_TAG_LABEL.to_owned(), tag.to_owned())].into()
        };
        let srv = ComposeService {
            image: "sha256:aaa".into(),
            depends_on: vec![SEED_SERVICE.into()],
            volumes: vec![
                "run-php:/run/php:nocopy".into(),
                "rpe-web-to-php:/run/cimplifier-rpe/from-web".into(),
            ],
            expose: vec!["80/tcp".into()],
            ports: vec![ComposePort {
                target: 80,
                published: Some("8080".into()),
                host_ip: Some("127.0.0.1".into()),
                protocol: "tcp".into(),
            }],
            labels: labels("t/app-php:v1"),
            cap_drop: vec!["ALL".into()],
            cap_add: vec!["SETUID".into(), "SETGID".into()],
            security_opt: vec![
                "no-new-privileges:true".into(),
                "seccomp=seccomp-php.json".into(),
            ],
            read_only: true,
            tmpfs: vec!["/tmp:mode=1777,uid=0,gid=0".into()],
            ..Default::default()
        };
        let web = ComposeService {
            image: "sha256:bbb".into(),
            network_mode: Some("service:php".into()),
            depends_on: vec![SEED_SERVICE.into(), "php".into()],
            volumes: vec![
                "run-php:/run/php:nocopy".into(),
                "rpe-web-to-php:/run/cimplifier-rpe/to-php".into(),
            ],
            labels: labels("t/app-web_1:v1"),
            tty: true,
            init: true,
            cap_drop: vec!["ALL".into()],
            ..Default::default()
        };
        let seed = ComposeService {
            image: "sha256:ccc".into(),
            volumes: vec!["run-php:/.cimplifier/seed/run-php".into()],
            labels: labels("t/app-cimplifier-seed:v1"),
            ..Default::default()
        };
        ComposeFile {
            name: "app".into(),
            plan_id: "0123456789abcdef".into(),
            containerd_namespace: None,
            services: [
                ("php".to_owned(), srv),
                ("web_1".to_owned(), web),
                (SEED_SERVICE.to_owned(), seed),
            ]
            .into(),
            volumes: ["run-php", "rpe-web-to-php"]
                .map(|v| (v.to_owned(), Default::default()))
                .into(),
        }
    }

    #[test]
    fn one_container_per_partition_with_the_seed_as_init_container_and_the_privileges() {
        let (d, warnings) = deployment(&sample(), &BTreeMap::new()).unwrap();
        assert_eq!((d.kind.as_str(), d.spec.replicas), ("Deployment", 1));
        assert_eq!(d.spec.strategy.kind, "Recreate");
        let pod = &d.spec.template.spec;
        assert_eq!(
            d.spec.selector.match_labels,
            d.spec.template.metadata.labels
        );
        assert!(!pod.automount_service_account_token);

        // Started in the plan's order; names made valid (`_` is not).
        let names: Vec<&str> = pod.containers.iter().map(|c| c.name.as_str()).collect();
        assert_eq!(names, ["php", "web-1"]);
        let volumes: Vec<(&str, Option<&str>)> = pod
            .volumes
            .iter()
            .map(|v| (v.name.as_str(), v.empty_dir.medium.as_deref()))
            .collect();
        assert_eq!(
            volumes,
            [
                ("rpe-web-to-php", None),
                ("run-php", None),
                ("php-tmpfs-tmp", Some("Memory"))
            ]
        );

        let init = &pod.init_containers[0];
        assert_eq!(init.name, SEED_SERVICE);
        assert_eq!(init.image, "t/app-cimplifier-seed:v1");
        assert_eq!(init.command, [SEED_COPY_PROGRAM, SEED_DIR, FILL_DIR]);
        assert_eq!(
            init.volume_mounts,
            [VolumeMount {
                name: "run-php".into(),
                mount_path: format!("{FILL_DIR}/run-php"),
            }]
        );
        let init_sc = init.security_context.as_ref().unwrap();
        assert_eq!(init_sc.capabilities.as_ref().unwrap().drop, ["ALL"]);
        assert_eq!(init_sc.read_only_root_filesystem, Some(true));

        let php = &pod.containers[0];
        assert_eq!(
            php.image, "t/app-php:v1",
            "by tag: a node knows no local image id"
        );
        assert!(php.command.is_empty(), "the image's entrypoint runs");
        assert_eq!(
            php.ports,
            [ContainerPort {
                container_port: 80,
                protocol: "TCP".into()
            }]
        );
        let mounts: Vec<(&str, &str)> = php
            .volume_mounts
            .iter()
            .map(|m| (m.name.as_str(), m.mount_path.as_str()))
            .collect();
        assert_eq!(
            mounts,
            [
                ("run-php", "/run/php"),
                ("rpe-web-to-php", "/run/cimplifier-rpe/from-web"),
                ("php-tmpfs-tmp", "/tmp")
            ]
        );
        let sc = php.security_context.as_ref().unwrap();
        assert_eq!(
            sc.capabilities,
            Some(Capabilities {
                drop: vec!["ALL".into()],
                add: vec!["SETUID".into(), "SETGID".into()]
            })
        );
        assert_eq!(sc.allow_privilege_escalation, Some(false));
        assert_eq!(sc.read_only_root_filesystem, Some(true));
        assert_eq!(
            sc.seccomp_profile,
            Some(SeccompProfile {
                kind: "Localhost".into(),
                localhost_profile: Some("cimplifier/app/seccomp-php.json".into())
            })
        );

        let web = &pod.containers[1];
        assert!(web.ports.is_empty() && web.tty);
        let web_sc = web.security_context.as_ref().unwrap();
        assert_eq!(web_sc.allow_privilege_escalation, None);
        assert_eq!(web_sc.read_only_root_filesystem, None);

        // What Kubernetes cannot do as Compose did is said by name.
        assert_eq!(warnings.len(), 2, "{warnings:?}");
        assert!(warnings[0].contains("php") && warnings[0].contains("Service"));
        assert!(warnings[1].contains("web_1") && warnings[1].contains("--init"));

        let yaml = d.to_yaml().unwrap();
        assert!(
            yaml.starts_with("apiVersion: apps/v1\nkind: Deployment\n"),
            "{yaml}"
        );
        assert!(yaml.contains("readOnlyRootFilesystem: true"), "{yaml}");
        let back: Deployment = serde_norway::from_str(&yaml).unwrap();
        assert_eq!(back, d);
    }

    #[test]
    fn a_pinned_image_wins_and_what_has_no_equivalent_is_refused() {
        let pinned = [("php".to_owned(), "reg/app-php@sha256:feed".to_owned())].into();
        let (d, _) = deployment(&sample(), &pinned).unwrap();
        assert_eq!(
            d.spec.template.spec.containers[0].image,
            "reg/app-php@sha256:feed"
        );

        let mut plan = sample();
        plan.services.get_mut("php").unwrap().security_opt = vec!["apparmor=unconfined".into()];
        let e = deployment(&plan, &BTreeMap::new()).unwrap_err().to_string();
        assert!(
            e.contains("php") && e.contains("apparmor=unconfined"),
            "{e}"
        );

        let mut plan = sample();
        plan.services.get_mut("web_1").unwrap().labels.clear();
        let e = deployment(&plan, &BTreeMap::new()).unwrap_err().to_string();
        assert!(e.contains("web_1") && e.contains(IMAGE_TAG_LABEL), "{e}");
    }

    #[test]
    fn names_are_rfc_1123_labels_and_unique() {
        let mut taken = BTreeSet::new();
        assert_eq!(label_name("run.php_sock", &mut taken), "run-php-sock");
        assert_eq!(label_name("run-php-sock", &mut taken), "run-php-sock-2");
        let long = "a".repeat(80);
        assert_eq!(label_name(&long, &mut taken).len(), 63);
        assert_eq!(
            label_name(&long, &mut taken),
            format!("{}-2", "a".repeat(61))
        );
        assert_eq!(label_name("__", &mut taken), "x");
    }
}
