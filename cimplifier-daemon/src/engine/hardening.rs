//! What a container of a slim image is created with to apply its
//! privileges, as the engines take it. Place decides it (and checks a
//! label against its rules: `Hardening::check` in `place::privileges`),
//! emit writes it into the image's label, and the engines apply it when
//! `verify --image` creates a container of the image.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::trace::ContainerPath;

/// The label of a slim image holding its [`Hardening`] as JSON, which
/// `verify --image` starts it with.
pub const HARDENING_LABEL: &str = "io.cimplifier.hardening";

/// What a container of the image is created with to apply the
/// privileges, as the engine's API takes it (the seccomp profile inline).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hardening {
    /// Added after dropping every capability.
    pub cap_add: Vec<String>,
    pub security_opt: Vec<String>,
    pub read_only: bool,
    /// `DIR` -> `mode=...,uid=...,gid=...`.
    pub tmpfs: BTreeMap<String, String>,
    /// Anonymous volumes.
    pub volumes: Vec<ContainerPath>,
}
