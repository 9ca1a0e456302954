//! How plan and emit fail, by whose fault. The API gives each kind one
//! status code (and so cimplifierctl one exit code), whichever call met it.

use crate::image::source::{Refused, SourceError};

/// Why a plan or an emit did not finish.
#[derive(Debug, thiserror::Error)]
pub enum EmitError {
    /// The session is missing, still observing, or incomplete.
    #[error(transparent)]
    Refused(#[from] Refused),
    /// The policy does not fit the session's model or image: the caller
    /// changes the policy.
    #[error("policy: {0}")]
    Policy(String),
    /// The emit's own options (--include, --exclude) do not fit the source
    /// image: the caller changes them.
    #[error("{0}")]
    Options(String),
    /// The session lacks what the image needs (its entrypoint was never
    /// seen): the caller observes again.
    #[error("{0}")]
    Session(String),
    /// The tag names an image cimplifier did not make: the caller picks
    /// another tag, or forces.
    #[error("{0}")]
    ForeignTag(String),
    /// The engine is unreachable, or the source image is gone or unreadable.
    #[error("{0:#}")]
    Engine(anyhow::Error),
    /// The registry of `emit --push` is unreachable, refused the
    /// credentials, or speaks no HTTPS; the message names it.
    #[error("{0}")]
    Registry(String),
    /// Anything else: the store, writing or loading the images.
    #[error("{0:#}")]
    Failed(#[from] anyhow::Error),
}

impl From<SourceError> for EmitError {
    fn from(e: SourceError) -> Self {
        match e {
            SourceError::Refused(why) => Self::Refused(why),
            SourceError::Image(e) => Self::Engine(e),
            SourceError::Store(e) => Self::Failed(e),
        }
    }
}

impl From<crate::partition::PolicyError> for EmitError {
    fn from(e: crate::partition::PolicyError) -> Self {
        Self::Policy(e.to_string())
    }
}
