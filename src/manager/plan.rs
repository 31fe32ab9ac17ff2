//! Pure planners: what an incremental stores, where a restore writes, which blobs gc may
//! remove, which snapshots retention spares for writers at work. No I/O here; the use cases
//! gather the inputs, call these, and execute the result.

use super::dedup::DedupBase;
use crate::error::{Error, Result};
use crate::format::sidecar::SnapshotType;
use crate::id::SnapshotId;
use crate::paths::{validate_namespace, BlobPlace, Key, RepoLayout};
use crate::retention::RetentionPlan;
use crate::sink::ObjectInfo;
use std::collections::{BTreeMap, BTreeSet, HashMap};

/// What one snapshot will hold.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct WritePlan {
    pub snapshot_type: SnapshotType,
    pub parent: Option<SnapshotId>,
    /// Namespaces written into the blob, sorted.
    pub store: Vec<String>,
    /// Namespaces an ancestor stores (incremental only).
    pub unchanged: Vec<String>,
    /// Namespaces of the parent the store no longer has (incremental only).
    pub deleted: Vec<String>,
    /// For stored namespaces the parent's chain holds: its chunks, to reference rather
    /// than store again.
    pub bases: BTreeMap<String, DedupBase>,
    /// Compressed data bytes of the unchanged namespaces (stored in ancestors).
    pub inherited_bytes: u64,
    /// Stored namespaces compared with the parent while they are written: one that turns
    /// out equal to the parent's view is recorded unchanged instead.
    pub compare: BTreeMap<String, ParentView>,
}

/// What the parent records of a namespace: enough to tell, after writing it, whether it
/// changed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ParentView {
    pub dimension: u32,
    pub digest_hex: String,
    pub logical_bytes: u64,
}

impl WritePlan {
    /// A full snapshot of `current`.
    pub fn full(current: Vec<String>) -> Self {
        WritePlan {
            snapshot_type: SnapshotType::Full,
            parent: None,
            store: current,
            unchanged: Vec::new(),
            deleted: Vec::new(),
            bases: BTreeMap::new(),
            inherited_bytes: 0,
            compare: BTreeMap::new(),
        }
    }
}

/// How an incremental learns what changed.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Changes<'a> {
    /// The caller lists the changed namespaces.
    Listed(&'a [String]),
    /// Namespaces whose content digest and dimension match the parent's view.
    SameContent(&'a BTreeSet<String>),
}

/// Plans an incremental on `parent` (whose point in time has `parent_names`) of a store
/// holding `current` (sorted). A namespace the parent lacks is always stored; a listed name
/// that neither the store nor the parent has is an error.
pub(crate) fn incremental(
    parent: &SnapshotId,
    parent_names: &BTreeSet<String>,
    current: &[String],
    changes: Changes<'_>,
) -> Result<WritePlan> {
    if let Changes::Listed(list) = changes {
        for n in list {
            validate_namespace(n)?;
            if !current.contains(n) && !parent_names.contains(n) {
                return Err(Error::NamespaceNotFound {
                    namespace: n.clone(),
                    context: "in the store or the parent snapshot".into(),
                });
            }
        }
    }
    let stored_again = |n: &String| match changes {
        Changes::Listed(list) => list.contains(n),
        Changes::SameContent(same) => !same.contains(n),
    };
    let (store, unchanged): (Vec<String>, Vec<String>) = current
        .iter()
        .cloned()
        .partition(|n| !parent_names.contains(n) || stored_again(n));
    let current_set: BTreeSet<&String> = current.iter().collect();
    Ok(WritePlan {
        snapshot_type: SnapshotType::Incremental,
        parent: Some(parent.clone()),
        store,
        unchanged,
        deleted: parent_names
            .iter()
            .filter(|n| !current_set.contains(n))
            .cloned()
            .collect(),
        bases: BTreeMap::new(),
        inherited_bytes: 0,
        compare: BTreeMap::new(),
    })
}

/// Pairs each selected namespace with the name it is restored under, checking every rename
/// and target before anything is touched.
pub(crate) fn restore_targets(
    selected: &[String],
    rename: &BTreeMap<String, String>,
) -> Result<Vec<(String, String)>> {
    if let Some(from) = rename.keys().find(|from| !selected.contains(from)) {
        return Err(Error::invalid(
            "rename",
            format!("{from:?} is not among the namespaces being restored"),
        ));
    }
    let mut seen: HashMap<&String, &String> = HashMap::new();
    let mut targets = Vec::with_capacity(selected.len());
    for src in selected {
        let target = rename.get(src).unwrap_or(src);
        validate_namespace(target)?;
        if let Some(other) = seen.insert(target, src) {
            return Err(Error::invalid(
                "rename",
                format!("{other:?} and {src:?} would both be restored into {target:?}"),
            ));
        }
        targets.push((src.clone(), target.clone()));
    }
    Ok(targets)
}

/// Blobs in `place` among `blobs` (a listing of the blob folder) without a sidecar among
/// `sidecars` (a listing of the snapshots folder, made after the blobs' listing; the same one
/// when blobs live beside the sidecars) and last modified before `cutoff_ms`: candidates for
/// gc, which re-checks each right before deleting it.
pub(crate) fn orphan_blobs(
    (layout, place): (&RepoLayout, BlobPlace),
    blobs: &[ObjectInfo],
    sidecars: &[ObjectInfo],
    cutoff_ms: u64,
) -> Vec<(SnapshotId, Key)> {
    let sidecars: BTreeSet<SnapshotId> = sidecars
        .iter()
        .filter_map(|o| layout.parse_sidecar(&o.key))
        .collect();
    blobs
        .iter()
        .filter(|o| o.last_modified_ms < cutoff_ms)
        .filter_map(|o| match place.parse(&o.key) {
            Some(id) if !sidecars.contains(&id) => Some((id, o.key.clone())),
            _ => None,
        })
        .collect()
}

/// Moves protected snapshots (pinned by writers at work, and their ancestors) from the
/// plan's removals to its keeps.
pub(crate) fn keep_protected(plan: &mut RetentionPlan, protected: &BTreeSet<SnapshotId>) {
    let (spared, remove): (Vec<SnapshotId>, Vec<SnapshotId>) = std::mem::take(&mut plan.remove)
        .into_iter()
        .partition(|id| protected.contains(id));
    plan.remove = remove;
    for id in spared {
        plan.keep.push((
            id,
            vec!["pinned: an incremental snapshot is being written on top of it".into()],
        ));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    fn parent() -> SnapshotId {
        SnapshotId::parse("20250101T000000000Z-0000000000000001").unwrap()
    }

    #[test]
    fn a_listed_incremental_stores_the_listed_and_the_new() {
        let had: BTreeSet<String> = names(&["a", "b", "gone"]).into_iter().collect();
        let list = names(&["a"]);
        let plan = incremental(
            &parent(),
            &had,
            &names(&["a", "b", "new"]),
            Changes::Listed(&list),
        )
        .unwrap();
        assert_eq!(plan.store, names(&["a", "new"]));
        assert_eq!(plan.unchanged, names(&["b"]));
        assert_eq!(plan.deleted, names(&["gone"]));
        assert_eq!(plan.parent, Some(parent()));
    }

    #[test]
    fn a_digest_incremental_stores_what_differs() {
        let had: BTreeSet<String> = names(&["a", "b"]).into_iter().collect();
        let same: BTreeSet<String> = names(&["b"]).into_iter().collect();
        let plan = incremental(
            &parent(),
            &had,
            &names(&["a", "b", "c"]),
            Changes::SameContent(&same),
        )
        .unwrap();
        assert_eq!(plan.store, names(&["a", "c"]));
        assert_eq!(plan.unchanged, names(&["b"]));
        assert!(plan.deleted.is_empty());
    }

    #[test]
    fn a_listed_name_nobody_has_is_an_error() {
        let had = BTreeSet::new();
        let list = names(&["nowhere"]);
        let err = incremental(&parent(), &had, &[], Changes::Listed(&list)).unwrap_err();
        assert!(matches!(err, Error::NamespaceNotFound { .. }), "{err}");
    }

    #[test]
    fn restore_targets_refuse_collisions_and_strangers() {
        let sel = names(&["a", "b"]);
        let mut rename = BTreeMap::new();
        assert_eq!(
            restore_targets(&sel, &rename).unwrap(),
            [("a".into(), "a".into()), ("b".into(), "b".into())]
        );
        rename.insert("a".to_string(), "b".to_string());
        let err = restore_targets(&sel, &rename).unwrap_err();
        assert!(err.to_string().contains("would both be restored"), "{err}");
        rename.clear();
        rename.insert("zzz".to_string(), "y".to_string());
        assert!(restore_targets(&sel, &rename).is_err());
        rename.clear();
        rename.insert("a".to_string(), "bad\nname".to_string());
        assert!(restore_targets(&sel, &rename).is_err());
    }

    #[test]
    fn orphans_are_old_blobs_without_a_sidecar() {
        let layout = RepoLayout;
        let (a, b) = (
            parent(),
            SnapshotId::parse("20250101T000000000Z-0000000000000002").unwrap(),
        );
        let obj = |key: Key, t: u64| ObjectInfo {
            key,
            size: 1,
            last_modified_ms: t,
        };
        let beside = BlobPlace::BesideSidecars;
        let objects = vec![
            obj(beside.key(&a), 10),
            obj(layout.sidecar_key(&a), 10),
            obj(beside.key(&b), 10),
        ];
        let orphans = |place, blobs: &[ObjectInfo], sidecars: &[ObjectInfo], cutoff| {
            orphan_blobs((&layout, place), blobs, sidecars, cutoff)
        };
        assert_eq!(
            orphans(beside, &objects, &objects, 11),
            [(b.clone(), beside.key(&b))]
        );
        assert!(
            orphans(beside, &objects, &objects, 10).is_empty(),
            "too young"
        );
        let data = BlobPlace::Data;
        let blobs = vec![obj(data.key(&a), 10), obj(data.key(&b), 10)];
        let sidecars = vec![obj(layout.sidecar_key(&a), 10)];
        assert_eq!(
            orphans(data, &blobs, &sidecars, 11),
            [(b.clone(), data.key(&b))]
        );
        assert!(
            orphans(data, &objects, &sidecars, 11).is_empty(),
            "blobs beside the sidecars are not this repository's blobs"
        );
    }
}
