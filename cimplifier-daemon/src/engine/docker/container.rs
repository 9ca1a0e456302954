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

/// What the engine says of a container.
pub enum Lookup {
    Found(Box<Details>),
    /// No such container (404): removed.
    Gone,
    /// The engine did not answer as it should (down, restarting): nothing
    /// is known of the container.
    Unreachable(anyhow::Error),
}

/// Asks the engine about container `name_or_id`, telling a container that
/// is gone from an engine that does not answer.
pub async fn look_up(docker: &Docker, name_or_id: &str) -> Lookup {
    match docker.inspect_container(name_or_id, None).await {
        Ok(details) => Lookup::Found(Box::new(details)),
        Err(bollard::errors::Error::DockerResponseServerError {
            status_code: 404, ..
        }) => Lookup::Gone,
        Err(e) => Lookup::Unreachable(
            anyhow::Error::new(e).context(format!("inspecting container {name_or_id}")),
        ),
    }
}

impl Lookup {
    /// Whether the container was found running.
    pub fn running(&self) -> bool {
        matches!(self, Lookup::Found(d) if d.state.as_ref().and_then(|s| s.running) == Some(true))
    }
}

/// What a followed event stream gives.
pub enum Followed {
    Event(Box<bollard::models::EventMessage>),
    /// The stream broke (the engine restarted, say) and is connected again,
    /// from the last event seen. The engine keeps its events in memory
    /// only, so what happened while it was away may be missing: look again
    /// at what matters.
    Reconnected,
}

/// Waits between reconnections, doubling from the first to the last.
const RECONNECT_FIRST: Duration = Duration::from_millis(200);
const RECONNECT_MAX: Duration = Duration::from_secs(10);

/// The engine's events matching `filters` from `since` (after the Unix
/// epoch) on, for ever: when the stream fails or ends, it is connected
/// again, with backoff, from the last event seen, and
/// [`Followed::Reconnected`] says so.
pub fn follow(
    docker: &Docker,
    since: Duration,
    filters: &[(&str, &str)],
) -> impl Stream<Item = Followed> + Send + use<> {
    struct Following {
        docker: Docker,
        since: Duration,
        filters: HashMap<String, Vec<String>>,
        stream: Option<
            futures::stream::BoxStream<
                'static,
                Result<bollard::models::EventMessage, bollard::errors::Error>,
            >,
        >,
        backoff: Duration,
    }
    let mut filters_map: HashMap<String, Vec<String>> = HashMap::new();
    for (k, v) in filters {
        filters_map
            .entry((*k).to_owned())
            .or_default()
            .push((*v).to_owned());
    }
    let open = |f: &Following| {
        f.docker
            .events(Some(EventsOptions {
                since: Some(format!(
                    "{}.{:09}",
                    f.since.as_secs(),
                    f.since.subsec_nanos()
                )),
                filters: Some(f.filters.clone()),
                ..Default::default()
            }))
            .boxed()
    };
    let first = Following {
        docker: docker.clone(),
        since,
        filters: filters_map,
        stream: None,
        backoff: RECONNECT_FIRST,
    };
    let first = Following {
        stream: Some(open(&first)),
        ..first
    };
    futures::stream::unfold(first, move |mut f| async move {
        loop {
            let Some(stream) = f.stream.as_mut() else {
                // Connected again once the engine answers.
                if let Err(e) = f.docker.ping().await {
                    tracing::debug!("the Docker engine does not answer yet: {e}");
                    tokio::time::sleep(f.backoff).await;
                    f.backoff = (f.backoff * 2).min(RECONNECT_MAX);
                    continue;
                }
                f.stream = Some(open(&f));
                tracing::info!("following Docker's events again");
                return Some((Followed::Reconnected, f));
            };
            match stream.next().await {
                Some(Ok(event)) => {
                    f.backoff = RECONNECT_FIRST;
                    if let Some(ns) = event.time_nano.and_then(|t| u64::try_from(t).ok()) {
                        // Past this one: `since` includes its own instant.
                        f.since = f.since.max(Duration::from_nanos(ns + 1));
                    }
                    return Some((Followed::Event(Box::new(event)), f));
                }
                Some(Err(e)) => {
                    tracing::warn!("Docker's event stream broke ({e}): connecting again");
                    f.stream = None;
                }
                None => {
                    tracing::warn!(
                        "Docker's event stream ended (the engine stopped?): connecting again"
                    );
                    f.stream = None;
                }
            }
        }
    })
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
