//! Removing snapshots: delete, retention and garbage collection.

use super::chain::ChainIndex;
use super::plan;
use super::reports::{Catalog, GcReport, RetentionReport};
use super::SnapshotManager;
use crate::error::{Error, Result};
use crate::id::SnapshotId;
use crate::paths::BlobPlace;
use crate::retention::{self, RetentionPolicy};
use crate::sink::SinkExt;
use std::collections::BTreeSet;
use std::time::Duration;

/// How long a pin protects its parent: a writer that crashed leaves its pin behind, and
/// after this long retention ignores it and `gc` removes it.
pub(crate) const PIN_TTL: Duration = Duration::from_secs(6 * 3600);

impl SnapshotManager {
    /// Deletes a snapshot. If other snapshots build on it, fails with
    /// [`Error::HasDependents`] unless `force`, in which case its descendants are deleted too
    /// (newest first, so no listed snapshot ever lacks its parent). A snapshot whose sidecar
    /// cannot be read is deleted only with `force`; while another snapshot's sidecar cannot
    /// be read, nothing else is deleted (it might build on the one to delete). Returns what
    /// was deleted.
    pub async fn delete_snapshot(&self, id: &str, force: bool) -> Result<Vec<SnapshotId>> {
        let doomed = self.plan_delete(id, force).await?;
        for s in &doomed {
            self.remove(s).await?;
        }
        Ok(doomed)
    }

    /// What [`Self::delete_snapshot`] would delete, in the order it would (descendants
    /// first), after every check it makes; deletes nothing (a dry run).
    pub async fn plan_delete(&self, id: &str, force: bool) -> Result<Vec<SnapshotId>> {
        let id = SnapshotId::parse(id)?;
        if !self.snapshot_exists(id.as_str()).await? {
            return Err(Error::SnapshotNotFound { id: id.to_string() });
        }
        let catalog = self.list_catalog().await?;
        check_damaged_before_delete(&catalog, &id, force)?;
        let mut doomed = vec![id.clone()];
        doomed.extend(ChainIndex::new(&catalog.snapshots).descendants(&id));
        if doomed.len() > 1 && !force {
            return Err(Error::HasDependents {
                id: id.to_string(),
                children: doomed[1..].iter().map(|s| s.to_string()).collect(),
            });
        }
        let pins = self.live_pins().await?;
        if let Some(p) = doomed.iter().find(|d| pins.contains(*d)) {
            return Err(Error::Conflict {
                key: p.to_string(),
                reason:
                    "an incremental snapshot is being written on top of it; retry when that is done"
                        .into(),
            });
        }
        doomed.reverse();
        Ok(doomed)
    }

    /// Removes one snapshot: the sidecar first (the snapshot stops existing atomically), then
    /// the blob (if that fails, the orphan is left for `gc`).
    pub(super) async fn remove(&self, id: &SnapshotId) -> Result<()> {
        let blob = self.blob_key(id).await?;
        self.sink.delete(&self.layout.sidecar_key(id)).await?;
        if let Err(e) = self.sink.delete(&blob).await {
            tracing::warn!(snapshot = %id, error = %e, "sidecar deleted but blob not; `gc` will remove it");
        }
        tracing::info!(snapshot = %id, "snapshot deleted");
        Ok(())
    }

    /// Applies a retention policy (see [`RetentionPolicy`]: rules combine, the newest
    /// snapshot and every ancestor of a kept one are kept). Deletes nothing if the listing
    /// fails or any sidecar cannot be read (a snapshot it cannot read might be one a kept
    /// snapshot needs); never deletes an ancestor of a kept snapshot or of a pinned one.
    pub async fn apply_retention(
        &self,
        policy: &RetentionPolicy,
        dry_run: bool,
    ) -> Result<RetentionReport> {
        let all = self.list_snapshots().await?;
        let mut plan = retention::plan(&all, policy, self.clock.now_secs());
        let chains = ChainIndex::new(&all);
        let mut protected = self.pinned_chains(&chains).await?;
        plan::keep_protected(&mut plan, &protected);
        let mut deleted = Vec::new();
        if !dry_run {
            for id in plan.remove.clone() {
                // Pins placed since the plan: look again right before each delete.
                protected.extend(self.pinned_chains(&chains).await?);
                if protected.contains(&id) {
                    continue;
                }
                self.remove(&id).await?;
                deleted.push(id);
            }
            for gone in &deleted {
                protected.remove(gone);
            }
            plan::keep_protected(&mut plan, &protected);
        }
        Ok(RetentionReport { plan, deleted })
    }

    /// Snapshots pinned by writers at work, with their ancestors.
    async fn pinned_chains(&self, chains: &ChainIndex<'_>) -> Result<BTreeSet<SnapshotId>> {
        let mut protected = BTreeSet::new();
        for p in self.live_pins().await? {
            protected.extend(chains.ancestors(&p).into_iter().cloned());
            protected.insert(p);
        }
        Ok(protected)
    }

    /// Snapshots pinned by incremental snapshots being written (pins younger than
    /// [`PIN_TTL`]; pins whose age the backend cannot tell count as live).
    async fn live_pins(&self) -> Result<BTreeSet<SnapshotId>> {
        let cutoff = self.pin_cutoff_ms();
        Ok(self
            .sink
            .list_all(&self.layout.pins_dir())
            .await?
            .iter()
            .filter(|o| o.last_modified_ms == 0 || o.last_modified_ms >= cutoff)
            .filter_map(|o| self.layout.parse_pin(&o.key))
            .collect())
    }

    /// Removes blobs that have no sidecar and were last modified more than `grace` ago
    /// (orphans of writers that crashed between upload and commit), and the sink's own
    /// stale temporary files or incomplete uploads. `grace` protects writers still at work.
    /// Right before each delete the sidecar is looked up again: a blob is removed only when
    /// the repository says its sidecar is absent; any other answer stops the run.
    pub async fn collect_garbage(&self, grace: Duration, dry_run: bool) -> Result<GcReport> {
        // Like every command, it needs the key of an encrypted repository (it reads no
        // sealed data, but who cleans a repository up must be one of its key holders).
        let place = self.blob_place().await?;
        let cutoff = self.clock.now_ms().saturating_sub(grace.as_millis() as u64);
        let blobs = self.sink.list_all(&place.dir()).await?;
        let sidecars = match place {
            BlobPlace::BesideSidecars => blobs.clone(),
            BlobPlace::Data => self.sink.list_all(&self.layout.snapshots_dir()).await?,
        };
        let mut report = GcReport::default();
        for (id, key) in plan::orphan_blobs((&self.layout, place), &blobs, &sidecars, cutoff) {
            report.orphan_blobs.push(key.to_string());
            if dry_run {
                continue;
            }
            match self.sink.head(&self.layout.sidecar_key(&id)).await {
                // A slow writer committed meanwhile.
                Ok(_) => continue,
                Err(e) if e.is_not_found() => {}
                // Unknown whether it is committed: stop, deleting nothing more.
                Err(e) => return Err(e),
            }
            self.sink.delete(&key).await?;
            report.removed.push(key.to_string());
        }
        if !dry_run {
            report.incomplete_uploads_removed = self.sink.remove_incomplete(cutoff).await?;
            report.stale_pins_removed = self.remove_stale_pins(cutoff).await?;
        }
        Ok(report)
    }

    /// Pins last modified before this (unix ms) are older than [`PIN_TTL`]: retention
    /// ignores them and gc may remove them.
    fn pin_cutoff_ms(&self) -> u64 {
        self.clock
            .now_ms()
            .saturating_sub(PIN_TTL.as_millis() as u64)
    }

    /// Removes pins of writers that died: only once retention ignores them anyway.
    async fn remove_stale_pins(&self, cutoff: u64) -> Result<usize> {
        let pin_cutoff = cutoff.min(self.pin_cutoff_ms());
        let mut removed = 0;
        for o in self.sink.list_all(&self.layout.pins_dir()).await? {
            if self.layout.parse_pin(&o.key).is_some()
                && o.last_modified_ms != 0
                && o.last_modified_ms < pin_cutoff
            {
                self.sink.delete(&o.key).await?;
                removed += 1;
            }
        }
        Ok(removed)
    }
}

/// Unreadable sidecars and a delete: the snapshot itself may be removed with `force`; any
/// other unreadable one blocks the delete, since its parent is unknown.
fn check_damaged_before_delete(catalog: &Catalog, id: &SnapshotId, force: bool) -> Result<()> {
    for d in &catalog.damaged {
        if d.id == *id && !force {
            return Err(Error::Conflict {
                key: id.to_string(),
                reason: format!(
                    "its sidecar cannot be read ({}); delete it with --force (force = true)",
                    d.problem
                ),
            });
        }
        if d.id != *id {
            return Err(Error::Conflict {
                key: id.to_string(),
                reason: format!(
                    "the sidecar of snapshot {} cannot be read ({}), so whether it builds on this one is unknown; remove it first with `delete {} --force`",
                    d.id, d.problem, d.id
                ),
            });
        }
    }
    Ok(())
}
