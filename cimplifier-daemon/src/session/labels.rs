//! Containers observed by their labels: the selectors, Docker's `create`
//! events, and the new cgroups below Docker's parent held until their
//! container's labels are known.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result};
use futures::StreamExt;

use super::observer;
use super::task::{Prepared, RouteGuard};
use super::{
    Manager, OBSERVE_LABEL, ObserveError, ObserveOptions, Opening, Subject, continued,
    docker_parent_cgroup, now_ms,
};
use crate::docker::{Docker, container};
use crate::store::{SessionState, Started};

/// How long to wait before asking an engine that did not answer again,
/// doubling up to the last.
const LABELS_RETRY_FIRST: Duration = Duration::from_millis(500);
const LABELS_RETRY_MAX: Duration = Duration::from_secs(30);

/// A `key=value` label selector, checked.
pub fn check_selector(selector: &str) -> Result<(), ObserveError> {
    match selector.split_once('=') {
        Some((k, v)) if !k.is_empty() && !v.is_empty() && selector.len() <= 256 => Ok(()),
        _ => Err(ObserveError::Refused(format!(
            "label selector {selector:?}: give key=value, e.g. {OBSERVE_LABEL}"
        ))),
    }
}

impl Manager {
    pub fn selectors(&self) -> Vec<String> {
        self.selectors
            .lock()
            .expect("selectors lock")
            .iter()
            .cloned()
            .collect()
    }

    /// Observes containers created from now on whose labels match
    /// `selector` (`key=value`), from their first exec.
    pub fn add_selector(&self, selector: &str) -> Result<(), ObserveError> {
        check_selector(selector)?;
        // Kept first: a selector the next start would forget is refused.
        self.store.add_selector(selector)?;
        self.selectors
            .lock()
            .expect("selectors lock")
            .insert(selector.to_owned());
        Ok(())
    }

    /// Forgets `selector`: containers created with its label from now on
    /// are not observed (sessions it started go on). False when no such
    /// selector was given; the built-in one cannot be removed.
    pub fn remove_selector(&self, selector: &str) -> Result<bool, ObserveError> {
        check_selector(selector)?;
        if selector == OBSERVE_LABEL {
            return Err(ObserveError::Refused(format!(
                "{OBSERVE_LABEL} is built in: a container created with it asks to be observed; \
                 remove the label from the container instead"
            )));
        }
        let kept = self.store.remove_selector(selector)?;
        let held = self
            .selectors
            .lock()
            .expect("selectors lock")
            .remove(selector);
        Ok(kept || held)
    }

    /// Follows Docker's `create` events and observes the containers whose
    /// labels match a selector; attaches to matching containers already
    /// running without a session. Runs for the daemon's life: an engine
    /// that does not answer is asked again with backoff, and after its
    /// event stream broke (the engine restarted) the running containers
    /// are looked at again, for those created meanwhile.
    pub async fn watch_labels(self: Arc<Self>) -> Result<()> {
        let mut backoff = LABELS_RETRY_FIRST;
        let docker = loop {
            match crate::docker::connect() {
                Ok(docker) => break docker,
                Err(e) => {
                    tracing::warn!("labelled containers: {e:#}; trying again in {backoff:?}");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(LABELS_RETRY_MAX);
                }
            }
        };
        // Creations from here on are heard, including during the listing.
        let since = loop {
            let since = SystemTime::now().duration_since(UNIX_EPOCH)?;
            match self.attach_running_labelled(&docker).await {
                Ok(()) => break since,
                Err(e) => {
                    tracing::warn!(
                        "labelled containers: cannot list the running containers ({e:#}); \
                         trying again in {backoff:?}"
                    );
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(LABELS_RETRY_MAX);
                }
            }
        };
        // `docker run` starts a container right after creating it, often
        // before its `create` event reaches us: Docker's parent cgroup is
        // watched, and what starts there is held until its labels are known.
        let layout = crate::engine::docker::CgroupLayout::of(&docker).await;
        match self.hold_new_containers(&docker, layout) {
            Ok(()) => {}
            Err(e) => tracing::warn!(
                "cannot watch Docker's parent cgroup: a labelled container started at once \
                 (`docker run`) may have its start-up missed: {e:#}"
            ),
        }
        let events = container::follow(
            &docker,
            since,
            &[("type", "container"), ("event", "create")],
        );
        let mut events = std::pin::pin!(events);
        while let Some(followed) = events.next().await {
            let event = match followed {
                container::Followed::Event(event) => event,
                container::Followed::Reconnected => {
                    // Creations while the engine was away are not replayed.
                    if let Err(e) = self.attach_running_labelled(&docker).await {
                        tracing::warn!(
                            "labelled containers: cannot list the running containers: {e:#}"
                        );
                    }
                    continue;
                }
            };
            let Some(actor) = event.actor else { continue };
            let Some(id) = actor.id else { continue };
            let attributes = actor.attributes.unwrap_or_default();
            if !self.wanted(&attributes) {
                continue;
            }
            // Watched first, inspected after: the creator is starting it now.
            let name = attributes
                .get("name")
                .cloned()
                .unwrap_or_else(|| id.clone());
            let prepared = match self.prepare(layout, &id, &name) {
                Ok(p) => Some(p),
                Err(e) => {
                    tracing::debug!(container = %name, "cannot watch ahead of the start: {e:#}");
                    None
                }
            };
            let Ok(details) = container::inspect(&docker, &id).await else {
                continue;
            };
            let manager = self.clone();
            tokio::spawn(async move {
                let name = container::name_of(&details);
                match manager
                    .begin(
                        Subject::Docker(Box::new(details)),
                        Opening::AwaitStart,
                        None,
                        None,
                        prepared,
                    )
                    .await
                {
                    Ok(_) => {
                        tracing::info!(container = %name, "labelled container: observing from its first exec")
                    }
                    Err(e) => {
                        tracing::warn!(container = %name, "labelled container not observed: {e}")
                    }
                }
            });
        }
        Ok(())
    }

    /// Observes, from now on, the running labelled containers that have
    /// no session; an error when the engine does not list them.
    async fn attach_running_labelled(self: &Arc<Self>, docker: &Docker) -> Result<()> {
        for container::Listed { name, labels } in container::running(docker).await? {
            if !self.wanted(&labels)
                || self
                    .running
                    .lock()
                    .expect("sessions lock")
                    .contains_key(&name)
            {
                continue;
            }
            tracing::info!(container = %name, "labelled container already running: observing it from now on");
            if let Err(e) = self.attach_labelled(&name).await {
                tracing::warn!(container = %name, "not observed: {e}");
            }
        }
        Ok(())
    }

    /// Observes a labelled container found running without a session. When
    /// the store holds a session of this very container (the daemon was
    /// stopped and started again while it ran), that session goes on in a
    /// new segment after a gap: a fresh session would replace it, dropping
    /// its events and restarting its duration from zero.
    async fn attach_labelled(self: &Arc<Self>, name: &str) -> Result<Started, ObserveError> {
        let docker = crate::docker::connect()?;
        let details = container::inspect(&docker, name)
            .await
            .map_err(|_| ObserveError::NotFound(name.to_owned()))?;
        let Some(record) = self
            .store
            .session(&container::name_of(&details))?
            .filter(|r| {
                Some(&r.started.container_id) == details.id.as_ref()
                    && r.state == SessionState::Closed
            })
        else {
            let opts = ObserveOptions {
                container: name.to_owned(),
                attach: true,
                ..Default::default()
            };
            return self.observe(opts).await;
        };
        let record = continued(record, now_ms());
        self.store.put_session(&record)?;
        tracing::warn!(
            session = %record.name,
            "continuing the session of a labelled container that ran while the daemon was down; the gap is marked"
        );
        self.begin(
            Subject::Docker(Box::new(details)),
            Opening::Resume,
            None,
            Some(record),
            None,
        )
        .await
    }

    /// Watches Docker's parent cgroup and answers, for each new cgroup
    /// below it that no session owns, whether its container is wanted.
    fn hold_new_containers(
        self: &Arc<Self>,
        docker: &Docker,
        layout: crate::engine::docker::CgroupLayout,
    ) -> Result<()> {
        let parent = docker_parent_cgroup(layout, None)?;
        let (watch, mut new_cgroups) = self.observer.hold_below(&parent)?;
        let manager = self.clone();
        let docker = docker.clone();
        tokio::spawn(async move {
            // Held for the daemon's life.
            let _watch = watch;
            while let Some(cgroup) = new_cgroups.recv().await {
                let (manager, docker, parent) = (manager.clone(), docker.clone(), parent.clone());
                tokio::spawn(async move {
                    let (verdict, dir) = manager.classify(&docker, layout, &parent, cgroup).await;
                    manager.observer.decide(cgroup, verdict, dir.as_deref());
                });
            }
        });
        Ok(())
    }

    /// Whose the new cgroup `cgroup` below `parent` is: wanted when its
    /// container matches a selector and a session for it is begun or about
    /// to be (the container was just created); else foreign, with the
    /// directory to exclude.
    async fn classify(
        &self,
        docker: &Docker,
        layout: crate::engine::docker::CgroupLayout,
        parent: &std::path::Path,
        cgroup: crate::trace::CgroupId,
    ) -> (observer::Verdict, Option<PathBuf>) {
        use observer::Verdict;
        let Some(dir) = child_holding(parent, cgroup) else {
            // Gone already: the container exited before it could be named.
            tracing::debug!(cgroup = cgroup.0, parent = %parent.display(), "a new cgroup was gone before its container was known");
            return (Verdict::Foreign, None);
        };
        let Some(id) = dir
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| layout.id_of_dir(n))
            .map(str::to_owned)
        else {
            // Not a container's (a builder's, or Podman's conmon).
            return (Verdict::Foreign, Some(dir));
        };
        let mut details = container::inspect(docker, &id).await;
        if details.is_err() && dir.exists() {
            // A busy engine, not a removed container: once more.
            tokio::time::sleep(Duration::from_millis(200)).await;
            details = container::inspect(docker, &id).await;
        }
        let Ok(details) = details else {
            return (Verdict::Foreign, Some(dir));
        };
        let labels = details
            .config
            .as_ref()
            .and_then(|c| c.labels.clone())
            .unwrap_or_default();
        let name = container::name_of(&details);
        let observed = self
            .running
            .lock()
            .expect("sessions lock")
            .contains_key(&name);
        // A session begins at `create`; a labelled container restarted
        // later, or still running after its session was stopped, gets
        // none, so what it does is no one's.
        let had_session = self
            .store
            .session(&name)
            .ok()
            .flatten()
            .is_some_and(|r| r.started.container_id == id && r.state == SessionState::Closed);
        let just_created = !had_session
            && details
                .created
                .as_deref()
                .and_then(|c| humantime::parse_rfc3339_weak(c).ok())
                .and_then(|c| c.elapsed().ok())
                .is_some_and(|age| age < observer::HOLD_WAIT);
        if self.wanted(&labels) && (observed || just_created) {
            tracing::debug!(container = %name, "a labelled container started before its session began: its events are held for it");
            (Verdict::Wanted, Some(dir))
        } else {
            (Verdict::Foreign, Some(dir))
        }
    }

    /// Makes the cgroup Docker will start container `id` in (its default
    /// place) and watches it, so a session can begin there.
    fn prepare(
        &self,
        layout: crate::engine::docker::CgroupLayout,
        id: &str,
        name: &str,
    ) -> Result<Prepared> {
        self.prepare_dir(
            docker_parent_cgroup(layout, None)?.join(layout.dir_name(id)),
            name,
        )
    }

    /// [`Manager::prepare`] of the cgroup at `dir`, whatever the engine.
    pub(super) fn prepare_dir(&self, dir: PathBuf, name: &str) -> Result<Prepared> {
        match std::fs::create_dir_all(&dir) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(e).with_context(|| format!("making {}", dir.display())),
        }
        let (route, events) = self.observer.route(name);
        self.observer.claim(&route, &dir);
        let route = RouteGuard {
            observer: self.observer.clone(),
            route,
        };
        let watch = self.observer.watch(&dir)?;
        Ok(Prepared {
            route,
            events,
            watch,
            dir,
        })
    }

    /// Whether labels (or Docker event attributes, which include them)
    /// match a selector.
    pub(super) fn wanted(&self, labels: &HashMap<String, String>) -> bool {
        self.selectors
            .lock()
            .expect("selectors lock")
            .iter()
            .any(|s| {
                s.split_once('=')
                    .is_some_and(|(k, v)| labels.get(k).is_some_and(|x| x == v))
            })
    }
}

/// The child of `parent` that is, or holds, the cgroup `cgroup`.
fn child_holding(parent: &std::path::Path, cgroup: crate::trace::CgroupId) -> Option<PathBuf> {
    std::fs::read_dir(parent)
        .ok()?
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.is_dir())
        .find(|child| observer::cgroup_ids_below(child).contains(&cgroup))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn selectors_must_be_key_equals_value() {
        assert!(check_selector(OBSERVE_LABEL).is_ok());
        for bad in ["", "x", "=v", "k=", &format!("k={}", "v".repeat(300))] {
            assert!(check_selector(bad).is_err(), "{bad}");
        }
    }
}
