//! A stored session, ready to plan or emit from: its record (refused by
//! one wording when it is missing, still observing or incomplete), its
//! source image (inspected once, read once from `docker image save`) and
//! the model its events fold into, with the image's tree behind it.

use std::sync::Arc;
use std::time::Instant;

use anyhow::Context;
use sha2::{Digest, Sha256};

use super::fs::ImageFs;
use crate::docker::image::ImageInspect;
use crate::model::Model;
use crate::store::{SessionRecord, SessionState, Store};

/// Which stored sessions a caller accepts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Admit {
    /// Any stored session, open or incomplete: a plan is a dry run.
    Any,
    /// A closed session, complete unless `allow_incomplete`: an image is
    /// built from it.
    Closed { allow_incomplete: bool },
}

/// Why a session is not read.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    #[error(
        "no session {0:?}: `cimplifierctl sessions` lists them; `cimplifierctl observe {0}` starts one"
    )]
    NoSession(String),
    #[error("session {0} is still observing; `cimplifierctl stop {0}` closes it first")]
    StillObserving(String),
    #[error(
        "the session {name} {why}, so the image could miss files it needs; \
         observe again (a larger --ring-buffer-mib helps with loss), or pass \
         --allow-incomplete to emit anyway (the report will say so)"
    )]
    Incomplete { name: String, why: String },
}

impl Admit {
    /// Whether `record` may be read for this use.
    pub fn check(self, record: &SessionRecord) -> Result<(), Refused> {
        let Admit::Closed { allow_incomplete } = self else {
            return Ok(());
        };
        if record.state != SessionState::Closed {
            return Err(Refused::StillObserving(record.name.clone()));
        }
        match record.incompleteness() {
            Some(why) if !allow_incomplete => Err(Refused::Incomplete {
                name: record.name.clone(),
                why,
            }),
            _ => Ok(()),
        }
    }
}

/// What went wrong reading a session, by whose fault: the caller's (a
/// refused session), the engine's (the image) or the store's.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error(transparent)]
    Refused(#[from] Refused),
    /// The engine is unreachable, or the image is gone or unreadable.
    #[error("{0:#}")]
    Image(anyhow::Error),
    /// The store could not give the session or its events.
    #[error("{0:#}")]
    Store(anyhow::Error),
}

/// Whether to digest the session's events while folding them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TraceDigest {
    Skip,
    /// SHA-256 over each event's JSON, in order (an image's provenance label).
    Sha256,
}

/// A session with its source image and folded model.
pub struct SourceSession {
    pub record: SessionRecord,
    /// The engine's description of the source image (its configuration).
    pub inspect: ImageInspect,
    pub tree: Arc<ImageFs>,
    /// The session's events folded into a model that knows the image's
    /// tree (symlinked names, `#!` interpreters).
    pub model: Model,
    /// `sha256:…` of the events, when [`TraceDigest::Sha256`] was asked.
    pub trace_digest: Option<String>,
    /// Exporting and indexing the image's files.
    pub read_image_ms: u64,
    /// Replaying the session's events into the model.
    pub fold_ms: u64,
}

/// Reads the session `name` from `store` and its source image from the
/// engine, and folds its events into a model.
pub async fn read_session(
    store: &Arc<Store>,
    name: &str,
    admit: Admit,
    digest: TraceDigest,
) -> Result<SourceSession, SourceError> {
    read_session_counting(
        store,
        name,
        admit,
        digest,
        &crate::engine::registry::Credentials::Anonymous,
        &|_, _| {},
    )
    .await
}

/// [`read_session`], telling `read` the image bytes read so far, of about
/// how many (the engine's size of the image; the archive has tar headers
/// on top). An image gone from the engine is pulled with `source_auth`.
pub async fn read_session_counting(
    store: &Arc<Store>,
    name: &str,
    admit: Admit,
    digest: TraceDigest,
    source_auth: &crate::engine::registry::Credentials,
    read: &(dyn Fn(u64, u64) + Send + Sync),
) -> Result<SourceSession, SourceError> {
    let record = store
        .session(name)
        .map_err(SourceError::Store)?
        .ok_or_else(|| Refused::NoSession(name.to_owned()))?;
    admit.check(&record)?;

    let start = Instant::now();
    let spool_dir = store.state_dir().to_path_buf();
    let (inspect, tree) = match &record.containerd {
        Some(at) => {
            read_containerd_image(&at.namespace, &record.started.image_id, &spool_dir, read).await
        }
        None => {
            read_image(
                &record.started.image_id,
                &record.started.image_ref,
                source_auth,
                &spool_dir,
                read,
            )
            .await
        }
    }
    .map_err(SourceError::Image)?;
    let read_image_ms = ms(start);

    // Folding is CPU work over every stored event: off the async workers.
    let start = Instant::now();
    let (store, fold_tree) = (store.clone(), tree.clone());
    let (record, model, trace_digest) = tokio::task::spawn_blocking(move || {
        let mut model = Model::with_image_tree(Box::new(fold_tree));
        let mut hash = (digest == TraceDigest::Sha256).then(Sha256::new);
        store.fold(&record, &mut model, |e| {
            if let Some(hash) = &mut hash {
                hash.update(serde_json::to_vec(e).expect("events serialize to JSON"));
            }
        })?;
        let trace_digest = hash.map(|h| format!("sha256:{:x}", h.finalize()));
        Ok::<_, anyhow::Error>((record, model, trace_digest))
    })
    .await
    .context("folding the session's events")
    .and_then(|r| r)
    .map_err(SourceError::Store)?;
    Ok(SourceSession {
        record,
        inspect,
        tree,
        model,
        trace_digest,
        read_image_ms,
        fold_ms: ms(start),
    })
}

/// The source image's configuration and file tree, read from the engine
/// and spooled into `spool_dir` (the state directory).
async fn read_image(
    image_id: &str,
    image_ref: &str,
    auth: &crate::engine::registry::Credentials,
    spool_dir: &std::path::Path,
    read: &(dyn Fn(u64, u64) + Send + Sync),
) -> anyhow::Result<(ImageInspect, Arc<ImageFs>)> {
    let docker = crate::docker::connect()?;
    let inspect = crate::docker::image::inspect(&docker, image_id, image_ref, auth).await?;
    let about = inspect.size.unwrap_or(0).max(0) as u64;
    let spool = crate::docker::image::save_to_spool(&docker, image_id, spool_dir, &|n| {
        read(n, about.max(n))
    })
    .await?;
    let image_ref = image_ref.to_owned();
    // Indexing reads every header of the spool: blocking I/O.
    let tree = tokio::task::spawn_blocking(move || {
        ImageFs::from_archive_file(spool, &image_ref).map(Arc::new)
    })
    .await
    .context("indexing the source image")??;
    Ok((inspect, tree))
}

/// [`read_image`] from containerd's content store: the image `digest`
/// (what its name pointed to when the session began) in `namespace`.
async fn read_containerd_image(
    namespace: &str,
    digest: &str,
    spool_dir: &std::path::Path,
    read: &(dyn Fn(u64, u64) + Send + Sync),
) -> anyhow::Result<(ImageInspect, Arc<ImageFs>)> {
    let containerd = crate::engine::containerd::Containerd::connect().await?;
    let (spool, config, size) = containerd
        .save_to_spool(namespace, digest, spool_dir, &|n| read(n, n))
        .await?;
    let inspect = crate::engine::containerd::inspect_of(digest, &config, size);
    let what = format!("image {digest} of containerd namespace {namespace}");
    let tree =
        tokio::task::spawn_blocking(move || ImageFs::from_archive_file(spool, &what).map(Arc::new))
            .await
            .context("indexing the source image")??;
    Ok((inspect, tree))
}

fn ms(start: Instant) -> u64 {
    start.elapsed().as_millis() as u64
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::Started;

    fn record(state: SessionState, lost: u64) -> SessionRecord {
        let started = Started {
            container_id: "c0ffee".into(),
            container_name: "web".into(),
            image_id: "sha256:0".into(),
            image_ref: "web:latest".into(),
            from_first_exec: true,
            started_unix_ms: 0,
        };
        let mut r = SessionRecord::new("web".into(), 1, started);
        r.state = state;
        r.loss.ringbuf_full = lost;
        r
    }

    #[test]
    fn plan_admits_open_and_incomplete_sessions() {
        assert_eq!(
            Admit::Any.check(&record(SessionState::Observing, 7)),
            Ok(())
        );
    }

    #[test]
    fn emit_refuses_open_sessions_and_incomplete_ones_unless_allowed() {
        let strict = Admit::Closed {
            allow_incomplete: false,
        };
        let lenient = Admit::Closed {
            allow_incomplete: true,
        };
        assert_eq!(
            strict.check(&record(SessionState::Observing, 0)),
            Err(Refused::StillObserving("web".into()))
        );
        assert_eq!(
            lenient.check(&record(SessionState::Observing, 0)),
            Err(Refused::StillObserving("web".into()))
        );
        let lossy = record(SessionState::Closed, 7);
        let err = strict.check(&lossy).unwrap_err();
        assert!(matches!(err, Refused::Incomplete { .. }), "{err}");
        let words = err.to_string();
        assert!(
            words.contains("lost 7 events") && words.contains("--allow-incomplete"),
            "{words}"
        );
        assert_eq!(lenient.check(&lossy), Ok(()));
        assert_eq!(strict.check(&record(SessionState::Closed, 0)), Ok(()));
    }

    #[test]
    fn a_missing_session_says_how_to_find_or_start_one() {
        let words = Refused::NoSession("web".into()).to_string();
        assert!(
            words.contains("`cimplifierctl sessions`")
                && words.contains("`cimplifierctl observe web`"),
            "{words}"
        );
    }
}
