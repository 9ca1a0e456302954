//! What can be wrong with a policy, said so a person can fix it.

use std::fmt::Write as _;
use std::path::PathBuf;

use super::policy::{Constraint, PartitionName, PolicyKind};
use crate::model::Exe;

/// At most this many observed executables are listed in one message.
const LIST_AT_MOST: usize = 40;

#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    #[error("cannot read the policy file {}: {source}", path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{origin}: {source}")]
    Toml {
        origin: String,
        source: Box<toml::de::Error>,
    },
    #[error(
        "the policy is empty: start it with kind = \"all-one\", \"one-one\" or \"disjoint-subsets\" (see docs/policy.md)"
    )]
    Empty,
    #[error(
        "the policy has no `kind`: add kind = \"disjoint-subsets\" (or \"all-one\", \"one-one\") as its first line"
    )]
    MissingKind,
    #[error(
        "kind = \"{kind}\" takes no `{field}`: remove it, or use kind = \"disjoint-subsets\" to name partitions and constraints"
    )]
    FieldNotForKind {
        kind: PolicyKind,
        field: &'static str,
    },
    #[error(
        "kind = \"disjoint-subsets\" names no partitions and no constraints, so every executable would be a don't-care: add `[partitions]` with NAME = [\"/path/to/exe\", ...], or use kind = \"all-one\""
    )]
    NothingNamed,
    #[error("partition name `{name}` is not valid: {why} (e.g. `web`, `db-1`)")]
    BadPartitionName { name: String, why: &'static str },
    #[error(
        "`{path}` in {place} is not an absolute path: write executables as the container sees them, e.g. `/usr/bin/php`"
    )]
    RelativeExe { path: String, place: String },
    #[error("`{name}` is listed twice in {place}: remove one")]
    Repeated { name: String, place: String },
    #[error("partition `{partition}` lists no executables: add at least one, or remove it")]
    EmptyPartition { partition: PartitionName },
    #[error(
        "`{exe}` is in both {first} and {second}: partitions are disjoint, keep it in one of them"
    )]
    Overlap {
        exe: Exe,
        first: String,
        second: String,
    },
    #[error("{rule} {constraint} has one member: it needs at least two")]
    TooFewMembers {
        rule: &'static str,
        constraint: Constraint,
    },
    #[error(
        "{rule} {constraint} names partition `{name}`, which the policy does not define; defined: {}",
        names(defined)
    )]
    UnknownPartition {
        rule: &'static str,
        constraint: Constraint,
        name: PartitionName,
        defined: Vec<PartitionName>,
    },
    #[error("apart {apart} cannot hold: `{a}` and `{b}` must be together because {because}")]
    Contradiction {
        apart: Constraint,
        a: String,
        b: String,
        because: String,
    },
    #[error(
        "partitions `{first}` and `{second}` are disjoint, but {because}: move the executables or drop the together rule"
    )]
    JoinsPartitions {
        first: PartitionName,
        second: PartitionName,
        because: String,
    },
    #[error(
        "executable `{exe}` ({place}) was never observed in this model{}; observed: {}",
        suggestion.as_ref().map(|s| format!(" (did you mean `{s}`?)")).unwrap_or_default(),
        exes(observed)
    )]
    Unobserved {
        exe: Exe,
        place: String,
        suggestion: Option<Exe>,
        observed: Vec<Exe>,
    },
    #[error(
        "unlisted = \"reject\", and {} observed executables are named nowhere in the policy: {}; add each to a partition or to dont_care",
        exes.len(),
        self::exes(exes)
    )]
    Unlisted { exes: Vec<Exe> },
    #[error(
        "the model has no executables, so there is nothing to partition (was the trace empty?)"
    )]
    NoExecutables,
    #[error("{} problems with the policy:{}", .0.len(), bullets(.0))]
    Several(Vec<PolicyError>),
}

impl PolicyError {
    /// Ok for no errors, the error for one, [`PolicyError::Several`] for more.
    pub(super) fn all(mut errors: Vec<PolicyError>) -> Result<(), PolicyError> {
        match errors.len() {
            0 => Ok(()),
            1 => Err(errors.remove(0)),
            _ => Err(PolicyError::Several(errors)),
        }
    }

    /// The errors this one stands for: itself, or each of several.
    pub fn each(&self) -> Vec<&PolicyError> {
        match self {
            PolicyError::Several(v) => v.iter().collect(),
            e => vec![e],
        }
    }
}

fn names(v: &[PartitionName]) -> String {
    if v.is_empty() {
        return "none".to_owned();
    }
    v.iter().map(|n| n.as_str()).collect::<Vec<_>>().join(", ")
}

fn exes(v: &[Exe]) -> String {
    let mut out = v
        .iter()
        .take(LIST_AT_MOST)
        .map(|e| e.to_string())
        .collect::<Vec<_>>()
        .join(", ");
    if v.len() > LIST_AT_MOST {
        let _ = write!(out, " and {} more", v.len() - LIST_AT_MOST);
    }
    out
}

fn bullets(v: &[PolicyError]) -> String {
    let mut out = String::new();
    for e in v {
        let _ = write!(out, "\n  - {e}");
    }
    out
}
