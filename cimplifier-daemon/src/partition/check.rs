//! Checking a policy: on its own (structure, contradictions), and against
//! the executables a model observed.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use super::error::PolicyError;
use super::policy::{Constraint, Member, PartitionName, Subsets, Unlisted};
use crate::model::Exe;

/// Why two nodes of the positive graph are joined.
#[derive(Clone, Debug)]
enum Via {
    InPartition,
    Together(Constraint),
}

/// Members joined by partitions and `together` rules: partitions are nodes
/// of their own, so an explanation can say "`x` is in partition `web`".
#[derive(Default)]
struct Joins {
    edges: BTreeMap<Member, Vec<(Member, Via)>>,
}

impl Joins {
    fn add(&mut self, a: &Member, b: &Member, via: Via) {
        self.edges
            .entry(a.clone())
            .or_default()
            .push((b.clone(), via.clone()));
        self.edges
            .entry(b.clone())
            .or_default()
            .push((a.clone(), via));
    }

    /// The shortest chain of joins from `a` to `b`, said in words.
    fn explain(&self, a: &Member, b: &Member) -> Option<String> {
        let mut from: BTreeMap<&Member, Option<(&Member, &Via)>> = BTreeMap::new();
        from.insert(a, None);
        let mut queue = VecDeque::from([a]);
        while let Some(m) = queue.pop_front() {
            if m == b {
                break;
            }
            for (next, via) in self.edges.get(m).into_iter().flatten() {
                if !from.contains_key(next) {
                    from.insert(next, Some((m, via)));
                    queue.push_back(next);
                }
            }
        }
        from.get(b)?;
        let mut steps = Vec::new();
        let mut at = b;
        while let Some(Some((prev, via))) = from.get(at).copied() {
            steps.push(match via {
                Via::InPartition => match (prev, at) {
                    (Member::Partition(p), m) | (m, Member::Partition(p)) => {
                        format!("`{m}` is in partition `{p}`")
                    }
                    (x, y) => format!("`{x}` is with `{y}`"),
                },
                Via::Together(c) => format!("together {c} joins `{prev}` and `{at}`"),
            });
            at = prev;
        }
        steps.reverse();
        Some(steps.join(", and "))
    }
}

impl Subsets {
    /// Checks the policy on its own: what it names exists in it, its
    /// partitions are disjoint, and no `together` contradicts an `apart`.
    pub fn check(&self) -> Result<(), PolicyError> {
        if self.partitions.is_empty()
            && self.together.is_empty()
            && self.apart.is_empty()
            && self.unlisted == Unlisted::DontCare
        {
            return Err(PolicyError::NothingNamed);
        }
        let mut errors = Vec::new();
        let mut home: BTreeMap<&Exe, String> = BTreeMap::new();
        let places = self
            .partitions
            .iter()
            .flat_map(|(name, exes)| exes.iter().map(move |e| (e, format!("partition `{name}`"))))
            .chain(self.dont_care.iter().map(|e| (e, "dont_care".to_owned())));
        for (exe, place) in places {
            if let Some(first) = home.get(exe) {
                errors.push(PolicyError::Overlap {
                    exe: exe.clone(),
                    first: first.clone(),
                    second: place,
                });
            } else {
                home.insert(exe, place);
            }
        }
        for (name, exes) in &self.partitions {
            if exes.is_empty() {
                errors.push(PolicyError::EmptyPartition {
                    partition: name.clone(),
                });
            }
        }
        let defined: Vec<PartitionName> = self.partitions.keys().cloned().collect();
        for (rule, set) in [("together", &self.together), ("apart", &self.apart)] {
            for c in set {
                if c.0.len() < 2 {
                    errors.push(PolicyError::TooFewMembers {
                        rule,
                        constraint: c.clone(),
                    });
                }
                for m in &c.0 {
                    if let Member::Partition(name) = m
                        && !self.partitions.contains_key(name)
                    {
                        errors.push(PolicyError::UnknownPartition {
                            rule,
                            constraint: c.clone(),
                            name: name.clone(),
                            defined: defined.clone(),
                        });
                    }
                }
            }
        }
        if errors.is_empty() {
            self.contradictions(&mut errors);
        }
        PolicyError::all(errors)
    }

    fn contradictions(&self, errors: &mut Vec<PolicyError>) {
        let mut joins = Joins::default();
        for (name, exes) in &self.partitions {
            let p = Member::Partition(name.clone());
            for e in exes {
                joins.add(&p, &Member::Exe(e.clone()), Via::InPartition);
            }
        }
        for c in &self.together {
            for (a, b) in c.0.iter().zip(c.0.iter().skip(1)) {
                joins.add(a, b, Via::Together(c.clone()));
            }
        }
        // Two partitions joined by together rules.
        let names: Vec<Member> = self
            .partitions
            .keys()
            .map(|n| Member::Partition(n.clone()))
            .collect();
        let mut reported: BTreeSet<&Member> = BTreeSet::new();
        for (i, a) in names.iter().enumerate() {
            if reported.contains(a) {
                continue;
            }
            for b in &names[i + 1..] {
                if let Some(because) = joins.explain(a, b) {
                    reported.insert(b);
                    if let (Member::Partition(first), Member::Partition(second)) = (a, b) {
                        errors.push(PolicyError::JoinsPartitions {
                            first: first.clone(),
                            second: second.clone(),
                            because,
                        });
                    }
                }
            }
        }
        // Members of an apart rule joined some other way; each member stands
        // for its executables, so a partition and one of its own
        // executables contradict too.
        for c in &self.apart {
            let members: Vec<&Member> = c.0.iter().collect();
            'rule: for (i, a) in members.iter().enumerate() {
                for b in &members[i + 1..] {
                    if let Some(because) = joins.explain(a, b) {
                        errors.push(PolicyError::Contradiction {
                            apart: c.clone(),
                            a: a.to_string(),
                            b: b.to_string(),
                            because,
                        });
                        break 'rule;
                    }
                }
            }
        }
    }

    /// Every executable the policy names, with where (for messages).
    pub(super) fn named(&self) -> BTreeMap<Exe, String> {
        let mut out = BTreeMap::new();
        for (name, exes) in &self.partitions {
            for e in exes {
                out.entry(e.clone())
                    .or_insert_with(|| format!("in partition `{name}`"));
            }
        }
        for e in &self.dont_care {
            out.entry(e.clone())
                .or_insert_with(|| "in dont_care".to_owned());
        }
        for (rule, set) in [("together", &self.together), ("apart", &self.apart)] {
            for c in set {
                for m in &c.0 {
                    if let Member::Exe(e) = m {
                        out.entry(e.clone())
                            .or_insert_with(|| format!("in {rule} {c}"));
                    }
                }
            }
        }
        out
    }

    /// Checks the policy against what was observed: everything it names
    /// was run, and with `unlisted = "reject"`, everything run is named.
    pub fn check_against(&self, observed: &BTreeSet<Exe>) -> Result<(), PolicyError> {
        let named = self.named();
        let all: Vec<Exe> = observed.iter().cloned().collect();
        let mut errors: Vec<PolicyError> = named
            .iter()
            .filter(|(e, _)| !observed.contains(*e))
            .map(|(e, place)| PolicyError::Unobserved {
                exe: e.clone(),
                place: place.clone(),
                suggestion: closest(e, observed),
                observed: all.clone(),
            })
            .collect();
        if self.unlisted == Unlisted::Reject {
            let unnamed: Vec<Exe> = observed
                .iter()
                .filter(|e| !named.contains_key(*e))
                .cloned()
                .collect();
            if !unnamed.is_empty() {
                errors.push(PolicyError::Unlisted { exes: unnamed });
            }
        }
        PolicyError::all(errors)
    }
}

/// The observed executable `exe` was most likely meant to be: one of the
/// same file name, else the nearest by edit distance if near enough.
fn closest(exe: &Exe, observed: &BTreeSet<Exe>) -> Option<Exe> {
    let name = |e: &Exe| e.0.as_str().rsplit('/').next().unwrap_or("").to_owned();
    let want = name(exe);
    if let Some(same) = observed.iter().find(|o| name(o) == want) {
        return Some(same.clone());
    }
    let target = exe.0.as_str();
    let limit = (target.chars().count() / 4).max(2);
    observed
        .iter()
        .map(|o| (edit_distance(target, o.0.as_str()), o))
        .filter(|(d, _)| *d <= limit)
        .min_by_key(|(d, _)| *d)
        .map(|(_, o)| o.clone())
}

fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut diag = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let next = (row[j + 1] + 1)
                .min(row[j] + 1)
                .min(diag + usize::from(ca != *cb));
            diag = row[j + 1];
            row[j + 1] = next;
        }
    }
    row[b.len()]
}
