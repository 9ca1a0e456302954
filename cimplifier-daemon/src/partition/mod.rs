//! The partition stage: which executables go into which container
//! (section 3.2 of the CIMPLIFIER paper).
//!
//! A [`Policy`] (docs/policy.md) gives the initial grouping and the user's
//! constraints. The algorithm starts with every executable alone, merges
//! by the positive constraints (`together`, and the members of each named
//! partition), then merges caller with callee along the exec call graph
//! unless a negative constraint forbids it, and repeats both to a fixed
//! point. A call left between two partitions is made by remote process
//! execution; [`Partitioning::separated_calls`] says what kept them apart.
//!
//! Call edges are taken top-down: by the caller's distance from the roots
//! of the call graph (programs no observed program started), then in path
//! order. So a don't-care executable joins the partition of the program
//! that started it before that of any program it starts; called from
//! partitions that must stay apart, it joins the first caller in that
//! order and the others reach it by RPE.

mod check;
mod error;
mod policy;
#[cfg(test)]
pub(crate) mod script;
#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use serde::{Deserialize, Serialize};

pub use error::PolicyError;
pub use policy::{Constraint, Member, PartitionName, Policy, PolicyKind, Subsets, Unlisted};

use crate::model::{Exe, Model};

/// The partition of an all-one-context policy.
pub const ALL_ONE_NAME: &str = "all";

/// Why an executable is in its partition.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "reason")]
pub enum Joined {
    /// All-one-context: every executable is in the one partition.
    AllOne,
    /// One-one-context, or `unlisted = "alone"`: kept by itself.
    Alone,
    /// Listed in the policy's partition of this name.
    Listed,
    /// A `together` rule put it with its other members.
    Together { constraint: Constraint },
    /// Merged along the call graph: it was exec'd by `caller`.
    CalledBy { caller: Exe },
    /// Merged along the call graph: it exec'd `callee`.
    Calls { callee: Exe },
    /// A don't-care no rule placed nor call joined to one that was: its
    /// partition grew from it and is named after it.
    DontCare,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Assignment {
    pub partition: PartitionName,
    pub why: Joined,
}

/// What kept a caller's partition and its callee's apart.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "by")]
pub enum Separation {
    /// One-one-context or `unlisted = "alone"` keeps `exe` by itself.
    Alone { exe: Exe },
    /// Two of the policy's partitions, disjoint by definition.
    Partitions {
        caller_side: PartitionName,
        callee_side: PartitionName,
    },
    /// An `apart` rule between an executable on each side.
    Apart {
        constraint: Constraint,
        caller_side: Exe,
        callee_side: Exe,
    },
}

/// A call edge whose ends are in different partitions: the callee is run
/// by RPE from the caller's partition.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SeparatedCall {
    pub caller: Exe,
    pub callee: Exe,
    pub separation: Separation,
}

/// The partition stage's output: every observed executable in exactly one
/// partition.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Partitioning {
    pub policy: PolicyKind,
    pub partitions: BTreeMap<PartitionName, BTreeSet<Exe>>,
    pub assignment: BTreeMap<Exe, Assignment>,
    /// Sorted by caller, then callee.
    pub separated_calls: Vec<SeparatedCall>,
}

impl Partitioning {
    pub fn partition_of(&self, exe: &Exe) -> Option<&PartitionName> {
        self.assignment.get(exe).map(|a| &a.partition)
    }
}

/// Partitions the executables `model` observed by `policy`.
/// Stand-ins for processes whose exec was never seen (the runtime's set-up
/// before the entrypoint, say) are not placed: there is no file to place.
pub fn partition(model: &Model, policy: &Policy) -> Result<Partitioning, PolicyError> {
    let observed: BTreeSet<Exe> = model
        .executables()
        .into_iter()
        .filter(|e| !e.is_unobserved())
        .collect();
    if observed.is_empty() {
        return Err(PolicyError::NoExecutables);
    }
    let calls = model.calls();
    let rules = match policy {
        Policy::AllOne => return Ok(all_one(observed)),
        Policy::OneOne => Rules {
            subsets: &NO_SUBSETS,
            together: &NO_CONSTRAINTS,
            apart: &NO_CONSTRAINTS,
            alone: observed.clone(),
        },
        Policy::DisjointSubsets(s) => {
            s.check()?;
            s.check_against(&observed)?;
            let alone = match s.unlisted {
                Unlisted::Alone => {
                    let named = s.named();
                    observed
                        .iter()
                        .filter(|e| !named.contains_key(*e))
                        .cloned()
                        .collect()
                }
                Unlisted::DontCare | Unlisted::Reject => BTreeSet::new(),
            };
            Rules {
                subsets: &s.partitions,
                together: &s.together,
                apart: &s.apart,
                alone,
            }
        }
    };
    Ok(Merger::new(observed, &rules).run(&calls, policy.kind()))
}

fn all_one(observed: BTreeSet<Exe>) -> Partitioning {
    let name = PartitionName::new(ALL_ONE_NAME).expect("valid");
    Partitioning {
        policy: PolicyKind::AllOne,
        assignment: observed
            .iter()
            .map(|e| {
                let a = Assignment {
                    partition: name.clone(),
                    why: Joined::AllOne,
                };
                (e.clone(), a)
            })
            .collect(),
        partitions: BTreeMap::from([(name, observed)]),
        separated_calls: Vec::new(),
    }
}

/// The policy as the algorithm sees it.
struct Rules<'a> {
    subsets: &'a BTreeMap<PartitionName, BTreeSet<Exe>>,
    together: &'a BTreeSet<Constraint>,
    apart: &'a BTreeSet<Constraint>,
    alone: BTreeSet<Exe>,
}

static NO_SUBSETS: BTreeMap<PartitionName, BTreeSet<Exe>> = BTreeMap::new();
static NO_CONSTRAINTS: BTreeSet<Constraint> = BTreeSet::new();

/// Union-find over executables (indices into the sorted `exes`);
/// `members`, `subset` and `alone` are kept at roots only.
struct Merger<'a> {
    exes: Vec<Exe>,
    index: BTreeMap<Exe, usize>,
    subset_names: Vec<PartitionName>,
    subset_members: Vec<Vec<usize>>,
    together: Vec<Vec<usize>>,
    /// For each executable, those an `apart` rule keeps from it, and the
    /// first such rule.
    apart: Vec<BTreeMap<usize, &'a Constraint>>,
    parent: Vec<usize>,
    members: Vec<BTreeSet<usize>>,
    subset: Vec<Option<usize>>,
    alone: Vec<Option<usize>>,
    why: Vec<Option<Joined>>,
}

impl<'a> Merger<'a> {
    fn new(observed: BTreeSet<Exe>, rules: &Rules<'a>) -> Self {
        let exes: Vec<Exe> = observed.into_iter().collect();
        let index: BTreeMap<Exe, usize> = exes
            .iter()
            .enumerate()
            .map(|(i, e)| (e.clone(), i))
            .collect();
        let n = exes.len();
        let mut m = Merger {
            subset_names: rules.subsets.keys().cloned().collect(),
            subset_members: Vec::new(),
            together: Vec::new(),
            apart: vec![BTreeMap::new(); n],
            parent: (0..n).collect(),
            members: (0..n).map(|i| BTreeSet::from([i])).collect(),
            subset: vec![None; n],
            alone: vec![None; n],
            why: vec![None; n],
            exes,
            index,
        };
        for (s, exes) in rules.subsets.values().enumerate() {
            let ids: Vec<usize> = exes.iter().map(|e| m.index[e]).collect();
            for &i in &ids {
                m.subset[i] = Some(s);
                m.why[i] = Some(Joined::Listed);
            }
            m.subset_members.push(ids);
        }
        for e in &rules.alone {
            let i = m.index[e];
            m.alone[i] = Some(i);
            m.why[i] = Some(Joined::Alone);
        }
        for c in rules.together {
            let ids = m.expand(rules.subsets, c).into_iter().flatten().collect();
            m.together.push(ids);
            for member in &c.0 {
                if let Member::Exe(e) = member
                    && m.why[m.index[e]].is_none()
                {
                    m.why[m.index[e]] = Some(Joined::Together {
                        constraint: c.clone(),
                    });
                }
            }
        }
        for c in rules.apart {
            let groups = m.expand(rules.subsets, c);
            for (g, xs) in groups.iter().enumerate() {
                for ys in &groups[g + 1..] {
                    for &x in xs {
                        for &y in ys {
                            m.apart[x].entry(y).or_insert(c);
                            m.apart[y].entry(x).or_insert(c);
                        }
                    }
                }
            }
        }
        m
    }

    /// Each member's executables (a partition stands for all of its own).
    fn expand(
        &self,
        subsets: &BTreeMap<PartitionName, BTreeSet<Exe>>,
        c: &Constraint,
    ) -> Vec<Vec<usize>> {
        c.0.iter()
            .map(|m| match m {
                Member::Exe(e) => vec![self.index[e]],
                Member::Partition(p) => subsets[p].iter().map(|e| self.index[e]).collect(),
            })
            .collect()
    }

    fn find(&mut self, mut i: usize) -> usize {
        while self.parent[i] != i {
            self.parent[i] = self.parent[self.parent[i]];
            i = self.parent[i];
        }
        i
    }

    /// What forbids merging the groups of roots `a` (caller side) and `b`.
    fn blocked(&self, a: usize, b: usize) -> Option<Separation> {
        if let Some(x) = self.alone[a].or(self.alone[b]) {
            return Some(Separation::Alone {
                exe: self.exes[x].clone(),
            });
        }
        if let (Some(x), Some(y)) = (self.subset[a], self.subset[b])
            && x != y
        {
            return Some(Separation::Partitions {
                caller_side: self.subset_names[x].clone(),
                callee_side: self.subset_names[y].clone(),
            });
        }
        for &x in &self.members[a] {
            for (&y, c) in &self.apart[x] {
                if self.members[b].contains(&y) {
                    return Some(Separation::Apart {
                        constraint: (*c).clone(),
                        caller_side: self.exes[x].clone(),
                        callee_side: self.exes[y].clone(),
                    });
                }
            }
        }
        None
    }

    /// Merges the groups of `a` and `b` if allowed; true if it did.
    fn merge(&mut self, a: usize, b: usize) -> bool {
        let (ra, rb) = (self.find(a), self.find(b));
        if ra == rb || self.blocked(ra, rb).is_some() {
            return false;
        }
        let (keep, gone) = (ra.min(rb), ra.max(rb));
        self.parent[gone] = keep;
        let moved = std::mem::take(&mut self.members[gone]);
        self.members[keep].extend(moved);
        self.subset[keep] = self.subset[keep].or(self.subset[gone]);
        self.alone[keep] = self.alone[keep].or(self.alone[gone]);
        true
    }

    fn positive_step(&mut self) -> bool {
        let mut changed = false;
        let groups: Vec<Vec<usize>> = (self.subset_members.iter())
            .chain(&self.together)
            .cloned()
            .collect();
        for ids in &groups {
            for w in ids.windows(2) {
                changed |= self.merge(w[0], w[1]);
            }
        }
        changed
    }

    fn call_step(&mut self, calls: &[(usize, usize)]) -> bool {
        let mut changed = false;
        for &(a, b) in calls {
            changed |= self.merge(a, b);
        }
        changed
    }

    fn run(mut self, calls: &BTreeSet<(Exe, Exe)>, policy: PolicyKind) -> Partitioning {
        let calls: Vec<(usize, usize)> = calls
            .iter()
            .filter(|(a, b)| a != b)
            .map(|(a, b)| (self.index[a], self.index[b]))
            .collect();
        let calls = top_down(self.exes.len(), calls);
        loop {
            let merged_positive = self.positive_step();
            let merged_calls = self.call_step(&calls);
            if !merged_positive && !merged_calls {
                break;
            }
        }
        let mut separated_calls = Vec::new();
        for &(a, b) in &calls {
            let (ra, rb) = (self.find(a), self.find(b));
            if ra == rb {
                continue;
            }
            let separation = self
                .blocked(ra, rb)
                .expect("at the fixed point every call across partitions is blocked");
            separated_calls.push(SeparatedCall {
                caller: self.exes[a].clone(),
                callee: self.exes[b].clone(),
                separation,
            });
        }
        separated_calls.sort_by(|x, y| (&x.caller, &x.callee).cmp(&(&y.caller, &y.callee)));
        let names = self.names(&calls);
        self.explain(&calls, &names);
        let mut partitions: BTreeMap<PartitionName, BTreeSet<Exe>> = BTreeMap::new();
        let mut assignment = BTreeMap::new();
        for i in 0..self.exes.len() {
            let name = names[&self.find(i)].0.clone();
            partitions
                .entry(name.clone())
                .or_default()
                .insert(self.exes[i].clone());
            let why = self.why[i].take().unwrap_or(Joined::DontCare);
            assignment.insert(
                self.exes[i].clone(),
                Assignment {
                    partition: name,
                    why,
                },
            );
        }
        Partitioning {
            policy,
            partitions,
            assignment,
            separated_calls,
        }
    }

    /// Gives each executable no rule placed the call that links it, inside
    /// its partition, to the nearest one a rule placed (or to the one the
    /// partition is named after): a chain a person can follow.
    fn explain(
        &mut self,
        calls: &[(usize, usize)],
        names: &BTreeMap<usize, (PartitionName, usize)>,
    ) {
        let n = self.exes.len();
        let roots: Vec<usize> = (0..n).map(|i| self.find(i)).collect();
        let mut near: Vec<Vec<(usize, bool)>> = vec![Vec::new(); n];
        for &(a, b) in calls {
            if roots[a] == roots[b] {
                near[a].push((b, true));
                near[b].push((a, false));
            }
        }
        for v in &mut near {
            v.sort();
        }
        let mut placed = vec![false; n];
        for (i, why) in self.why.iter().enumerate() {
            placed[roots[i]] |= why.is_some();
        }
        for (&root, (_, label)) in names {
            if !placed[root] {
                self.why[*label] = Some(Joined::DontCare);
            }
        }
        let mut queue: VecDeque<usize> = (0..n).filter(|&i| self.why[i].is_some()).collect();
        while let Some(x) = queue.pop_front() {
            for &(y, x_calls_y) in &near[x] {
                if self.why[y].is_some() {
                    continue;
                }
                self.why[y] = Some(if x_calls_y {
                    Joined::CalledBy {
                        caller: self.exes[x].clone(),
                    }
                } else {
                    Joined::Calls {
                        callee: self.exes[x].clone(),
                    }
                });
                queue.push_back(y);
            }
        }
    }

    /// A name for each group, with the executable it is named after: the
    /// policy's name, or one made from the group's first executable no
    /// other member calls (the one that started the rest).
    fn names(&mut self, calls: &[(usize, usize)]) -> BTreeMap<usize, (PartitionName, usize)> {
        let mut names = BTreeMap::new();
        let mut taken: BTreeSet<PartitionName> = self.subset_names.iter().cloned().collect();
        let mut unnamed: Vec<(usize, usize)> = Vec::new();
        for i in 0..self.exes.len() {
            if self.find(i) != i {
                continue;
            }
            let called: BTreeSet<usize> = calls
                .iter()
                .filter(|(a, b)| self.members[i].contains(a) && self.members[i].contains(b))
                .map(|&(_, b)| b)
                .collect();
            let first = self.members[i].iter().find(|m| !called.contains(m));
            let label = *first.unwrap_or(self.members[i].first().expect("non-empty"));
            match self.subset[i] {
                Some(s) => {
                    names.insert(i, (self.subset_names[s].clone(), label));
                }
                None => unnamed.push((label, i)),
            }
        }
        unnamed.sort();
        for (label, root) in unnamed {
            let path = self.exes[label].0.as_str();
            let file = path.rsplit('/').next().unwrap_or(path);
            let short = PartitionName::derive(file);
            let mut candidates = [short.clone(), PartitionName::derive(path)]
                .into_iter()
                .chain((2..).map(|n| short.numbered(n)));
            let name = candidates
                .find(|c| !taken.contains(c))
                .expect("an endless supply of names");
            taken.insert(name.clone());
            names.insert(root, (name, label));
        }
        names
    }
}

/// The call edges ordered by their caller's depth in the call graph (from
/// the programs nothing called; in a cycle nothing enters, from its first
/// executable), then by caller and callee (indices are in path order).
fn top_down(n: usize, mut calls: Vec<(usize, usize)>) -> Vec<(usize, usize)> {
    let mut callees: Vec<Vec<usize>> = vec![Vec::new(); n];
    let mut called = vec![false; n];
    for &(a, b) in &calls {
        callees[a].push(b);
        called[b] = true;
    }
    let mut depth = vec![usize::MAX; n];
    let mut queue: VecDeque<usize> = (0..n).filter(|&i| !called[i]).collect();
    for &r in &queue {
        depth[r] = 0;
    }
    loop {
        while let Some(a) = queue.pop_front() {
            for &b in &callees[a] {
                if depth[b] == usize::MAX {
                    depth[b] = depth[a] + 1;
                    queue.push_back(b);
                }
            }
        }
        match (0..n).find(|&i| depth[i] == usize::MAX) {
            Some(r) => {
                depth[r] = 0;
                queue.push_back(r);
            }
            None => break,
        }
    }
    calls.sort_by_key(|&(a, b)| (depth[a], a, b));
    calls
}
