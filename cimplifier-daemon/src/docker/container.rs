//! Containers in the engine, as sessions need them: described, listed,
//! started, stopped and restarted, and heard being created or dying; and
//! their names as users write them.

use std::collections::HashMap;
use std::time::Duration;

use anyhow::{Context, Result};
use bollard::Docker;
pub use bollard::models::ContainerInspectResponse as Details;
use bollard::query_parameters::{
    EventsOptions, ListContainersOptions, RestartContainerOptions, StartContainerOptions,
    StopContainerOptions,
};
use futures::{Stream, StreamExt};

/// A container's name as users write it: the engine's API gives `/web`.
pub fn bare_name(name: &str) -> &str {
    name.trim_start_matches('/')
}

/// The name of the container `details` describes, as users write it.
pub fn name_of(details: &Details) -> String {
    bare_name(details.name.as_deref().unwrap_or_default()).to_owned()
}

/// The engine's description of a container, by name or id.
pub async fn inspect(docker: &Docker, name_or_id: &str) -> Result<Details> {
    docker
        .inspect_container(name_or_id, None)
        .await
        .with_context(|| format!("inspecting container {name_or_id}"))
}

/// A running container, as the engine lists it.
pub struct Listed {
    pub name: String,
    pub labels: HashMap<String, String>,
}

/// The containers running now.
pub async fn running(docker: &Docker) -> Result<Vec<Listed>> {
    let listed = docker
        .list_containers(Some(ListContainersOptions {
            all: false,
            ..Default::default()
        }))
        .await
        .context("listing containers")?;
    Ok(listed
        .into_iter()
        .map(|c| Listed {
            name: c
                .names
                .as_ref()
                .and_then(|n| n.first())
                .map(|n| bare_name(n).to_owned())
                .unwrap_or_default(),
            labels: c.labels.unwrap_or_default(),
        })
        .collect())
}

/// A container the engine created: its id, and the event's attributes
/// (its labels, and `name`).
pub struct Created {
    pub id: String,
    pub attributes: HashMap<String, String>,
}

/// Every container created from `since` (after the Unix epoch) on. The
/// stream ends with the engine's event stream.
pub fn created_since(docker: &Docker, since: Duration) -> impl Stream<Item = Result<Created>> {
    events(docker, since, [("type", "container"), ("event", "create")]).filter_map(|event| {
        futures::future::ready(match event {
            Err(e) => Some(Err(e)),
            Ok(event) => event.actor.and_then(|actor| {
                Some(Ok(Created {
                    id: actor.id?,
                    attributes: actor.attributes.unwrap_or_default(),
                }))
            }),
        })
    })
}

/// An item each time the container `id` dies from `since` (after the Unix
/// epoch) on. The stream connects when first polled.
pub fn deaths_since(
    docker: &Docker,
    id: &str,
    since: Duration,
) -> impl Stream<Item = Result<()>> + use<> {
    events(docker, since, [("container", id), ("event", "die")]).map(|e| e.map(|_| ()))
}

fn events<const N: usize>(
    docker: &Docker,
    since: Duration,
    filters: [(&str, &str); N],
) -> impl Stream<Item = Result<bollard::models::EventMessage>> + use<N> {
    docker
        .events(Some(EventsOptions {
            since: Some(format!("{}.{:09}", since.as_secs(), since.subsec_nanos())),
            filters: Some(
                filters
                    .into_iter()
                    .map(|(k, v)| (k.to_owned(), vec![v.to_owned()]))
                    .collect(),
            ),
            ..Default::default()
        }))
        .map(|e| e.context("reading Docker's events"))
}

/// Starts the container `id` (`name` in errors).
pub async fn start(docker: &Docker, id: &str, name: &str) -> Result<()> {
    docker
        .start_container(id, None::<StartContainerOptions>)
        .await
        .with_context(|| format!("starting container {name}"))
}

/// Stops the container `id` (`name` in errors), with the engine's grace.
pub async fn stop(docker: &Docker, id: &str, name: &str) -> Result<()> {
    docker
        .stop_container(id, None::<StopContainerOptions>)
        .await
        .with_context(|| format!("stopping container {name}"))
}

/// Restarts the container `id` (`name` in errors).
pub async fn restart(docker: &Docker, id: &str, name: &str) -> Result<()> {
    docker
        .restart_container(id, None::<RestartContainerOptions>)
        .await
        .with_context(|| format!("restarting container {name}"))
}

/// Sends `signal` (`HUP`, `KILL`, ...) to the container `id`'s main
/// process (`name` in errors).
pub async fn kill(docker: &Docker, id: &str, name: &str, signal: &str) -> Result<()> {
    docker
        .kill_container(
            id,
            Some(bollard::query_parameters::KillContainerOptions {
                signal: signal.to_owned(),
            }),
        )
        .await
        .with_context(|| format!("sending SIG{signal} to container {name}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_lose_the_apis_leading_slash_only() {
        assert_eq!(bare_name("/web"), "web");
        assert_eq!(bare_name("web"), "web");
        let details = Details {
            name: Some("/db-1".into()),
            ..Default::default()
        };
        assert_eq!(name_of(&details), "db-1");
        assert_eq!(name_of(&Details::default()), "");
    }
}
