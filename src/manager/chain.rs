//! The parent links between listed snapshots, as one index: ancestors, descendants and
//! depth. Sidecars can be forged or damaged, so every walk here ends: a cycle, a
//! self-parent or a parent that is not listed stops it, never loops.

use crate::format::sidecar::SnapshotMetadata;
use crate::id::SnapshotId;
use std::collections::{HashMap, HashSet};

/// Parent and child links of a set of snapshots.
#[derive(Debug, Default)]
pub(crate) struct ChainIndex<'a> {
    parent: HashMap<&'a SnapshotId, &'a SnapshotId>,
    children: HashMap<&'a SnapshotId, Vec<&'a SnapshotId>>,
}

impl<'a> ChainIndex<'a> {
    /// Indexes `all` (any order).
    pub fn new(all: &'a [SnapshotMetadata]) -> Self {
        Self::from_links(all.iter().map(|m| (&m.id, m.parent_id.as_ref())))
    }

    /// Indexes `(id, parent)` pairs.
    pub fn from_links(
        links: impl IntoIterator<Item = (&'a SnapshotId, Option<&'a SnapshotId>)>,
    ) -> Self {
        let mut index = ChainIndex::default();
        for (id, parent) in links {
            if let Some(p) = parent {
                index.parent.insert(id, p);
                index.children.entry(p).or_default().push(id);
            }
        }
        for kids in index.children.values_mut() {
            kids.sort();
        }
        index
    }

    /// `id`'s ancestors, parent first, as far as links go: the walk stops at a snapshot
    /// without a parent, at a parent that is not indexed (its own parent is unknown, so it is
    /// the last one returned), and before any snapshot seen already (a forged cycle).
    pub fn ancestors(&self, id: &SnapshotId) -> Vec<&'a SnapshotId> {
        let mut seen: HashSet<&SnapshotId> = HashSet::from([id]);
        let mut out = Vec::new();
        let mut cur = id;
        while let Some(&p) = self.parent.get(cur) {
            if !seen.insert(p) {
                break;
            }
            out.push(p);
            cur = p;
        }
        out
    }

    /// Snapshots that build on `id`, directly or not, each after its parent (children,
    /// then grandchildren, ...), without repeats; `id` itself never, even in a cycle.
    pub fn descendants(&self, id: &SnapshotId) -> Vec<SnapshotId> {
        let mut seen: HashSet<&SnapshotId> = HashSet::from([id]);
        let mut out: Vec<&SnapshotId> = Vec::new();
        let mut next = 0;
        let mut cur = id;
        loop {
            for &c in self.children.get(cur).into_iter().flatten() {
                if seen.insert(c) {
                    out.push(c);
                }
            }
            let Some(&n) = out.get(next) else { break };
            cur = n;
            next += 1;
        }
        out.into_iter().cloned().collect()
    }

    /// How many ancestors `id` has (see [`Self::ancestors`]).
    pub fn depth(&self, id: &SnapshotId) -> usize {
        self.ancestors(id).len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(n: u64) -> SnapshotId {
        SnapshotId::parse(&format!("20250101T000000{n:03}Z-{n:016x}")).unwrap()
    }

    fn index(links: &[(u64, Option<u64>)]) -> (Vec<SnapshotId>, Vec<Option<SnapshotId>>) {
        links.iter().map(|(i, p)| (id(*i), p.map(id))).unzip()
    }

    fn build<'a>(ids: &'a [SnapshotId], parents: &'a [Option<SnapshotId>]) -> ChainIndex<'a> {
        ChainIndex::from_links(ids.iter().zip(parents.iter().map(Option::as_ref)))
    }

    #[test]
    fn a_chain_has_ancestors_descendants_and_depth() {
        let (ids, parents) = index(&[(1, None), (2, Some(1)), (3, Some(2)), (4, Some(2))]);
        let c = build(&ids, &parents);
        assert_eq!(c.ancestors(&id(3)), [&id(2), &id(1)]);
        assert_eq!(c.depth(&id(1)), 0);
        assert_eq!(c.depth(&id(4)), 2);
        assert_eq!(c.descendants(&id(1)), [id(2), id(3), id(4)]);
        assert!(c.descendants(&id(3)).is_empty());
    }

    #[test]
    fn a_parent_that_is_not_listed_ends_the_chain() {
        let (ids, parents) = index(&[(2, Some(1)), (3, Some(2))]);
        let c = build(&ids, &parents);
        assert_eq!(c.ancestors(&id(3)), [&id(2), &id(1)]);
        assert_eq!(c.descendants(&id(1)), [id(2), id(3)]);
    }

    #[test]
    fn forged_cycles_and_self_parents_end() {
        let (ids, parents) = index(&[(1, Some(2)), (2, Some(1)), (3, Some(3)), (4, Some(1))]);
        let c = build(&ids, &parents);
        assert_eq!(c.ancestors(&id(1)), [&id(2)]);
        assert_eq!(c.ancestors(&id(4)), [&id(1), &id(2)]);
        assert_eq!(c.ancestors(&id(3)), Vec::<&SnapshotId>::new());
        assert_eq!(c.descendants(&id(1)), [id(2), id(4)]);
        assert!(c.descendants(&id(3)).is_empty());
    }
}
