//! Partitioning policies and their TOML form (docs/policy.md).

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::path::Path;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use super::error::PolicyError;
use crate::model::Exe;
use crate::trace::ContainerPath;

/// The name of a partition: becomes part of image and container names, so
/// it is restricted to what both accept.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct PartitionName(String);

impl PartitionName {
    pub const MAX_LEN: usize = 63;

    /// Checks `name`: 1 to 63 of `a-z 0-9 _ . -`, starting with a letter
    /// or digit.
    pub fn new(name: &str) -> Result<Self, PolicyError> {
        let why = if name.is_empty() {
            Some("it is empty")
        } else if name.len() > Self::MAX_LEN {
            Some("it is longer than 63 characters")
        } else if !name.starts_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit()) {
            Some("it must start with a lower-case letter or a digit")
        } else if !name.chars().all(name_char) {
            Some("it has characters other than a-z, 0-9, '_', '.' and '-'")
        } else {
            None
        };
        match why {
            Some(why) => Err(PolicyError::BadPartitionName {
                name: name.to_owned(),
                why,
            }),
            None => Ok(Self(name.to_owned())),
        }
    }

    /// A valid name made from any text: lower-cased, other characters
    /// replaced by '-'. For partitions the policy did not name.
    pub(super) fn derive(text: &str) -> Self {
        let mut s: String = text
            .chars()
            .map(|c| c.to_ascii_lowercase())
            .map(|c| if name_char(c) { c } else { '-' })
            .collect();
        let start = s
            .find(|c: char| c.is_ascii_alphanumeric())
            .unwrap_or(s.len());
        s.drain(..start);
        s.truncate(Self::MAX_LEN);
        while s.ends_with(['-', '.', '_']) {
            s.pop();
        }
        if s.is_empty() {
            s.push_str("exe");
        }
        Self(s)
    }

    /// This name with `-n` appended, shortened to stay within the limit.
    pub(super) fn numbered(&self, n: usize) -> Self {
        let suffix = format!("-{n}");
        let mut base = self.0.clone();
        base.truncate(Self::MAX_LEN - suffix.len());
        while base.ends_with(['-', '.', '_']) {
            base.pop();
        }
        Self(base + &suffix)
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

fn name_char(c: char) -> bool {
    c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '_' | '.' | '-')
}

impl fmt::Display for PartitionName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl FromStr for PartitionName {
    type Err = PolicyError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::new(s)
    }
}

impl TryFrom<String> for PartitionName {
    type Error = PolicyError;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        Self::new(&s)
    }
}

impl From<PartitionName> for String {
    fn from(n: PartitionName) -> String {
        n.0
    }
}

/// One member of a constraint: an executable, or every executable of one
/// of the policy's partitions. Written as an absolute path or a name.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum Member {
    Exe(Exe),
    Partition(PartitionName),
}

impl fmt::Display for Member {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Member::Exe(e) => e.fmt(f),
            Member::Partition(p) => p.fmt(f),
        }
    }
}

impl FromStr for Member {
    type Err = PolicyError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.starts_with('/') {
            return exe(s, "a constraint").map(Member::Exe);
        }
        if s.contains('/') {
            return Err(PolicyError::RelativeExe {
                path: s.to_owned(),
                place: "a constraint".to_owned(),
            });
        }
        PartitionName::new(s).map(Member::Partition)
    }
}

impl TryFrom<String> for Member {
    type Error = PolicyError;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        s.parse()
    }
}

impl From<Member> for String {
    fn from(m: Member) -> String {
        m.to_string()
    }
}

/// A set of members a `together` or `apart` rule relates pairwise. A set,
/// so the order they were written in changes nothing.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Constraint(pub BTreeSet<Member>);

impl Constraint {
    pub fn new(members: impl IntoIterator<Item = Member>) -> Self {
        Self(members.into_iter().collect())
    }
}

impl fmt::Display for Constraint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[")?;
        for (i, m) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(", ")?;
            }
            write!(f, "{m}")?;
        }
        f.write_str("]")
    }
}

/// What becomes of an observed executable no rule of a disjoint-subsets
/// policy names.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Unlisted {
    /// It may go anywhere: the call graph decides (the paper's choice).
    #[default]
    DontCare,
    /// It gets a partition of its own and is reached by RPE.
    Alone,
    /// The policy is refused until every executable is named.
    Reject,
}

impl fmt::Display for Unlisted {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Unlisted::DontCare => "dont-care",
            Unlisted::Alone => "alone",
            Unlisted::Reject => "reject",
        })
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum PolicyKind {
    AllOne,
    OneOne,
    DisjointSubsets,
}

impl fmt::Display for PolicyKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            PolicyKind::AllOne => "all-one",
            PolicyKind::OneOne => "one-one",
            PolicyKind::DisjointSubsets => "disjoint-subsets",
        })
    }
}

/// The rules of a disjoint-subsets policy.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Subsets {
    /// Named, disjoint sets of executables; each becomes its own partition.
    pub partitions: BTreeMap<PartitionName, BTreeSet<Exe>>,
    /// Members that must share a partition (the paper's UC+).
    pub together: BTreeSet<Constraint>,
    /// Members no two of which may share a partition (UC-).
    pub apart: BTreeSet<Constraint>,
    /// Executables that may go anywhere.
    pub dont_care: BTreeSet<Exe>,
    pub unlisted: Unlisted,
}

/// A partitioning policy (section 3.2 of the paper).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", tag = "kind")]
pub enum Policy {
    /// Every executable in one partition: slimming only.
    AllOne,
    /// Every executable in a partition of its own.
    OneOne,
    DisjointSubsets(Subsets),
}

/// The file as written, before its strings get their meanings.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPolicy {
    kind: Option<PolicyKind>,
    partitions: Option<BTreeMap<String, Vec<String>>>,
    together: Option<Vec<Vec<String>>>,
    apart: Option<Vec<Vec<String>>>,
    dont_care: Option<Vec<String>>,
    unlisted: Option<Unlisted>,
}

fn exe(path: &str, place: &str) -> Result<Exe, PolicyError> {
    ContainerPath::new(path)
        .map(Exe)
        .ok_or_else(|| PolicyError::RelativeExe {
            path: path.to_owned(),
            place: place.to_owned(),
        })
}

impl Policy {
    pub fn kind(&self) -> PolicyKind {
        match self {
            Policy::AllOne => PolicyKind::AllOne,
            Policy::OneOne => PolicyKind::OneOne,
            Policy::DisjointSubsets(_) => PolicyKind::DisjointSubsets,
        }
    }

    /// Reads a policy file.
    pub fn load(path: &Path) -> Result<Self, PolicyError> {
        let text = std::fs::read_to_string(path).map_err(|source| PolicyError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::parse(&text, &path.display().to_string())
    }

    /// Parses a policy and checks it on its own (without a model).
    pub fn from_toml(text: &str) -> Result<Self, PolicyError> {
        Self::parse(text, "policy")
    }

    fn parse(text: &str, origin: &str) -> Result<Self, PolicyError> {
        let raw: RawPolicy = toml::from_str(text).map_err(|source| PolicyError::Toml {
            origin: origin.to_owned(),
            source: Box::new(source),
        })?;
        let given: Vec<&'static str> = [
            ("partitions", raw.partitions.is_some()),
            ("together", raw.together.is_some()),
            ("apart", raw.apart.is_some()),
            ("dont_care", raw.dont_care.is_some()),
            ("unlisted", raw.unlisted.is_some()),
        ]
        .into_iter()
        .filter_map(|(field, set)| set.then_some(field))
        .collect();
        let kind = match raw.kind {
            Some(kind) => kind,
            None if given.is_empty() => return Err(PolicyError::Empty),
            None => return Err(PolicyError::MissingKind),
        };
        match kind {
            PolicyKind::AllOne | PolicyKind::OneOne => {
                let errors: Vec<PolicyError> = given
                    .into_iter()
                    .map(|field| PolicyError::FieldNotForKind { kind, field })
                    .collect();
                PolicyError::all(errors)?;
                Ok(if kind == PolicyKind::AllOne {
                    Policy::AllOne
                } else {
                    Policy::OneOne
                })
            }
            PolicyKind::DisjointSubsets => {
                let subsets = raw.subsets()?;
                subsets.check()?;
                Ok(Policy::DisjointSubsets(subsets))
            }
        }
    }
}

impl RawPolicy {
    /// Gives the strings their types, refusing what a set would hide: a
    /// name listed twice.
    fn subsets(self) -> Result<Subsets, PolicyError> {
        let mut errors = Vec::new();
        let mut out = Subsets {
            unlisted: self.unlisted.unwrap_or_default(),
            ..Subsets::default()
        };
        for (name, paths) in self.partitions.unwrap_or_default() {
            let name = match PartitionName::new(&name) {
                Ok(n) => n,
                Err(e) => {
                    errors.push(e);
                    continue;
                }
            };
            let place = format!("partition `{name}`");
            let exes = typed_set(paths, &place, &mut errors, |s| exe(s, &place));
            out.partitions.insert(name, exes);
        }
        let place = "dont_care";
        out.dont_care = typed_set(
            self.dont_care.unwrap_or_default(),
            place,
            &mut errors,
            |s| exe(s, place),
        );
        for (rule, raw, set) in [
            ("together", self.together, &mut out.together),
            ("apart", self.apart, &mut out.apart),
        ] {
            for members in raw.unwrap_or_default() {
                let place = format!("{rule} {members:?}");
                let c = Constraint(typed_set(members, &place, &mut errors, |s| s.parse()));
                set.insert(c);
            }
        }
        PolicyError::all(errors)?;
        Ok(out)
    }
}

/// Parses each string, noting failures and repeats in `errors`.
fn typed_set<T: Ord + fmt::Display>(
    raw: Vec<String>,
    place: &str,
    errors: &mut Vec<PolicyError>,
    parse: impl Fn(&str) -> Result<T, PolicyError>,
) -> BTreeSet<T> {
    let mut out = BTreeSet::new();
    for s in raw {
        match parse(&s) {
            Ok(t) => {
                if out.contains(&t) {
                    errors.push(PolicyError::Repeated {
                        name: t.to_string(),
                        place: place.to_owned(),
                    });
                } else {
                    out.insert(t);
                }
            }
            Err(e) => errors.push(e),
        }
    }
    out
}
