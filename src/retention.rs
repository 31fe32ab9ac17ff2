//! Retention: which snapshots a policy keeps, and why.
//!
//! Planning is a pure function over the list of snapshots, so it is tested without a sink.
//! A snapshot is kept if any rule keeps it; the newest snapshot is always kept; and every
//! ancestor of a kept snapshot is kept, so no kept incremental ever loses its chain.

use crate::format::sidecar::SnapshotMetadata;
use crate::id::SnapshotId;
use crate::manager::chain::ChainIndex;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::Duration;

/// Which snapshots to keep. Rules combine: a snapshot is kept if any rule keeps it. A policy
/// with no rule set keeps everything.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RetentionPolicy {
    /// Keep the newest N snapshots.
    pub keep_last: Option<usize>,
    /// Keep snapshots created within this long before now (`"7d"`, `"12h"` in config files).
    #[serde(with = "humantime_serde")]
    pub keep_within: Option<Duration>,
    /// Keep the newest snapshot of each of the last N UTC days that have snapshots.
    pub keep_daily: Option<usize>,
    /// Keep the newest snapshot of each of the last N ISO weeks (Monday to Sunday, UTC) that
    /// have snapshots.
    pub keep_weekly: Option<usize>,
}

impl RetentionPolicy {
    /// Keep the newest `n` (the original module's `max_snapshots`).
    pub fn keep_last(n: usize) -> Self {
        RetentionPolicy {
            keep_last: Some(n),
            ..Default::default()
        }
    }

    /// True when no rule is set.
    pub fn is_empty(&self) -> bool {
        self.keep_last.is_none()
            && self.keep_within.is_none()
            && self.keep_daily.is_none()
            && self.keep_weekly.is_none()
    }
}

/// The outcome of planning: what stays (with the reasons) and what goes.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct RetentionPlan {
    /// Kept snapshots, newest first, each with why it is kept (in JSON: objects with `id`
    /// and `reasons`).
    #[serde(serialize_with = "kept_objects")]
    pub keep: Vec<(SnapshotId, Vec<String>)>,
    /// Snapshots to delete, in a safe deletion order (descendants before their ancestors).
    pub remove: Vec<SnapshotId>,
}

const DAY: u64 = 86_400;

/// Plans retention over `snapshots` (any order) at time `now_secs`.
pub(crate) fn plan(
    snapshots: &[SnapshotMetadata],
    policy: &RetentionPolicy,
    now_secs: u64,
) -> RetentionPlan {
    let mut sorted: Vec<&SnapshotMetadata> = snapshots.iter().collect();
    sorted.sort_by(|a, b| (b.created_at_ms, &b.id).cmp(&(a.created_at_ms, &a.id)));
    let mut reasons: BTreeMap<&SnapshotId, Vec<String>> = BTreeMap::new();
    if policy.is_empty() {
        for s in &sorted {
            add(&mut reasons, s, "no retention rule set".into());
        }
    } else {
        if let Some(newest) = sorted.first() {
            add(&mut reasons, newest, "newest snapshot".into());
        }
        if let Some(n) = policy.keep_last {
            for s in sorted.iter().take(n) {
                add(&mut reasons, s, format!("keep-last {n}"));
            }
        }
        if let Some(within) = policy.keep_within {
            let cutoff = now_secs.saturating_sub(within.as_secs());
            let why = format!("keep-within {}", humantime::format_duration(within));
            for s in sorted.iter().filter(|s| s.created_at >= cutoff) {
                add(&mut reasons, s, why.clone());
            }
        }
        if let Some(n) = policy.keep_daily {
            keep_per_bucket(&mut reasons, &sorted, n, "keep-daily", |t| t / DAY);
        }
        if let Some(n) = policy.keep_weekly {
            // 1970-01-01 was a Thursday; shifting by 3 days makes weeks start on Monday.
            keep_per_bucket(&mut reasons, &sorted, n, "keep-weekly", |t| {
                (t / DAY + 3) / 7
            });
        }
    }

    // Close over ancestry: an ancestor of a kept snapshot is kept.
    let chains = ChainIndex::new(snapshots);
    let by_id: HashMap<&SnapshotId, &SnapshotMetadata> =
        sorted.iter().map(|s| (&s.id, *s)).collect();
    let kept_now: Vec<&SnapshotId> = reasons.keys().copied().collect();
    for id in kept_now {
        for a in chains.ancestors(id) {
            if let Some(parent) = by_id.get(a) {
                add(&mut reasons, parent, format!("ancestor of {id}"));
            }
        }
    }

    // Deepest first, so a snapshot is deleted before its parent.
    let mut remove: Vec<&SnapshotMetadata> = sorted
        .iter()
        .copied()
        .filter(|s| !reasons.contains_key(&s.id))
        .collect();
    remove.sort_by_cached_key(|s| {
        (
            std::cmp::Reverse(chains.depth(&s.id)),
            std::cmp::Reverse(&s.id),
        )
    });
    RetentionPlan {
        keep: sorted
            .iter()
            .filter_map(|s| reasons.get(&s.id).map(|r| (s.id.clone(), r.clone())))
            .collect(),
        remove: remove.into_iter().map(|s| s.id.clone()).collect(),
    }
}

fn add<'a>(
    reasons: &mut BTreeMap<&'a SnapshotId, Vec<String>>,
    s: &'a SnapshotMetadata,
    why: String,
) {
    let entry = reasons.entry(&s.id).or_default();
    if !entry.contains(&why) {
        entry.push(why);
    }
}

/// Keeps the newest snapshot of each of the `n` most recent buckets (`sorted` is newest first).
fn keep_per_bucket<'a>(
    reasons: &mut BTreeMap<&'a SnapshotId, Vec<String>>,
    sorted: &[&'a SnapshotMetadata],
    n: usize,
    rule: &str,
    bucket: impl Fn(u64) -> u64,
) {
    let mut seen = BTreeSet::new();
    for s in sorted {
        let b = bucket(s.created_at);
        if seen.contains(&b) {
            continue;
        }
        if seen.len() >= n {
            break;
        }
        seen.insert(b);
        add(reasons, s, format!("{rule} {n}"));
    }
}

/// `(id, reasons)` pairs as `{"id": id, "reasons": [...]}` objects.
fn kept_objects<S: serde::Serializer>(
    kept: &[(SnapshotId, Vec<String>)],
    s: S,
) -> Result<S::Ok, S::Error> {
    use serde::ser::SerializeSeq;
    let mut seq = s.serialize_seq(Some(kept.len()))?;
    for (id, reasons) in kept {
        seq.serialize_element(&serde_json::json!({"id": id, "reasons": reasons}))?;
    }
    seq.end()
}
