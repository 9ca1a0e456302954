//! Where a workload reaches a container: its IP address on this host and
//! the TCP ports it exposes, from the engine's inspect. `observe --exec`
//! hands them to the workload command (README, "Slimming a container").

use std::net::{IpAddr, Ipv4Addr};

use anyhow::{Context, Result};
use bollard::Docker;
use bollard::models::ContainerInspectResponse;

/// A container as a workload on the engine's host sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NetworkTarget {
    /// The network mode as the engine reports it: `bridge`, `host`, `none`,
    /// `container:ID`, or a user-defined network's name.
    pub network_mode: String,
    /// None when nothing outside the container can reach it: network
    /// `none`, or a container that is no longer running.
    pub address: Option<IpAddr>,
    /// TCP ports the container exposes (EXPOSE, `--expose`), ascending.
    pub tcp_ports: Vec<u16>,
}

impl NetworkTarget {
    /// From the container's inspect; `netns_owner` is the inspect of the
    /// container whose network namespace it joined (`--network
    /// container:X`), if any.
    pub fn from_inspect(
        details: &ContainerInspectResponse,
        netns_owner: Option<&ContainerInspectResponse>,
    ) -> Self {
        let network_mode = details
            .host_config
            .as_ref()
            .and_then(|h| h.network_mode.clone())
            .unwrap_or_default();
        let address = if network_mode == "host" {
            // The host's own stack: loopback reaches what it listens on.
            Some(IpAddr::V4(Ipv4Addr::LOCALHOST))
        } else if network_mode.starts_with("container:") {
            netns_owner.and_then(|o| Self::from_inspect(o, None).address)
        } else {
            own_address(details, &network_mode)
        };
        let mut tcp_ports: Vec<u16> = details
            .config
            .as_ref()
            .and_then(|c| c.exposed_ports.as_ref())
            .into_iter()
            .flatten()
            .filter_map(|p| match p.split_once('/') {
                Some((port, "tcp")) => port.parse().ok(),
                Some(_) => None,
                None => p.parse().ok(),
            })
            .collect();
        tcp_ports.sort_unstable();
        tcp_ports.dedup();
        Self {
            network_mode,
            address,
            tcp_ports,
        }
    }

    /// Where the container `container_id` is reached, asked of the local
    /// engine; None (with a warning) when the engine cannot tell.
    pub async fn lookup(container_id: &str) -> Option<Self> {
        let docker = super::connect().ok()?;
        match Self::of(&docker, container_id).await {
            Ok(t) => Some(t),
            Err(e) => {
                tracing::warn!(container = %container_id, "no network target: {e:#}");
                None
            }
        }
    }

    /// Inspects the container (and the owner of its network namespace).
    pub async fn of(docker: &Docker, container: &str) -> Result<Self> {
        let details = docker
            .inspect_container(container, None)
            .await
            .with_context(|| format!("inspecting container {container} for its address"))?;
        let owner = match details
            .host_config
            .as_ref()
            .and_then(|h| h.network_mode.as_deref())
            .and_then(|m| m.strip_prefix("container:"))
        {
            Some(other) => docker.inspect_container(other, None).await.ok(),
            None => None,
        };
        Ok(Self::from_inspect(&details, owner.as_ref()))
    }
}

/// The address on the container's own network: the one its mode names,
/// else the first by name. A stopped container has none.
fn own_address(details: &ContainerInspectResponse, mode: &str) -> Option<IpAddr> {
    if details.state.as_ref().and_then(|s| s.running) != Some(true) {
        return None;
    }
    let networks = details
        .network_settings
        .as_ref()
        .and_then(|n| n.networks.as_ref())?;
    let mode = if mode == "default" { "bridge" } else { mode };
    let mut named: Vec<_> = networks.iter().collect();
    named.sort_by_key(|(name, _)| (name.as_str() != mode, name.as_str()));
    named.into_iter().find_map(|(_, e)| {
        [&e.ip_address, &e.global_ipv6_address]
            .into_iter()
            .flatten()
            .find_map(|a| a.parse().ok())
    })
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use bollard::models::{
        ContainerConfig, ContainerState, EndpointSettings, HostConfig, NetworkSettings,
    };

    use super::*;

    fn container(
        mode: &str,
        networks: &[(&str, &str)],
        exposed: &[&str],
    ) -> ContainerInspectResponse {
        ContainerInspectResponse {
            state: Some(ContainerState {
                running: Some(true),
                ..Default::default()
            }),
            host_config: Some(HostConfig {
                network_mode: Some(mode.into()),
                ..Default::default()
            }),
            config: Some(ContainerConfig {
                exposed_ports: Some(exposed.iter().map(|p| p.to_string()).collect()),
                ..Default::default()
            }),
            network_settings: Some(NetworkSettings {
                networks: Some(
                    networks
                        .iter()
                        .map(|(name, ip)| {
                            (
                                name.to_string(),
                                EndpointSettings {
                                    ip_address: Some(ip.to_string()),
                                    ..Default::default()
                                },
                            )
                        })
                        .collect::<HashMap<_, _>>(),
                ),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    fn ip(s: &str) -> Option<IpAddr> {
        Some(s.parse().unwrap())
    }

    #[test]
    fn bridge_gives_the_bridge_address_and_the_exposed_tcp_ports() {
        let c = container(
            "bridge",
            &[("bridge", "172.17.0.5")],
            &["80/tcp", "53/udp", "443/tcp", "80/tcp"],
        );
        let t = NetworkTarget::from_inspect(&c, None);
        assert_eq!(t.address, ip("172.17.0.5"));
        assert_eq!(t.tcp_ports, vec![80, 443]);
        assert_eq!(t.network_mode, "bridge");
    }

    #[test]
    fn a_user_network_is_preferred_by_the_mode_that_names_it() {
        let c = container(
            "appnet",
            &[("aaa", "10.1.0.2"), ("appnet", "10.9.0.7"), ("zzz", "")],
            &[],
        );
        assert_eq!(
            NetworkTarget::from_inspect(&c, None).address,
            ip("10.9.0.7")
        );
        // "default" is the bridge; empty addresses are skipped.
        let c = container("default", &[("zzz", ""), ("bridge", "172.17.0.9")], &[]);
        assert_eq!(
            NetworkTarget::from_inspect(&c, None).address,
            ip("172.17.0.9")
        );
    }

    #[test]
    fn host_is_loopback_none_and_stopped_have_no_address() {
        let host = container("host", &[("host", "")], &[]);
        assert_eq!(
            NetworkTarget::from_inspect(&host, None).address,
            ip("127.0.0.1")
        );
        let none = container("none", &[("none", "")], &[]);
        assert_eq!(NetworkTarget::from_inspect(&none, None).address, None);
        let mut stopped = container("bridge", &[("bridge", "172.17.0.5")], &[]);
        stopped.state.as_mut().unwrap().running = Some(false);
        assert_eq!(NetworkTarget::from_inspect(&stopped, None).address, None);
    }

    #[test]
    fn a_joined_namespace_has_its_owners_address() {
        let joined = container("container:abc", &[], &["8080/tcp"]);
        let owner = container("bridge", &[("bridge", "172.17.0.3")], &[]);
        let t = NetworkTarget::from_inspect(&joined, Some(&owner));
        assert_eq!(t.address, ip("172.17.0.3"));
        assert_eq!(t.tcp_ports, vec![8080]);
        assert_eq!(NetworkTarget::from_inspect(&joined, None).address, None);
    }
}
