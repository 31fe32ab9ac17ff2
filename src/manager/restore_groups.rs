//! Restoring many small namespaces: runs of adjacent small sections of one blob are read
//! with one ranged read, checked and decoded whole as one job on the worker pool, and then
//! written to the store, while the next group decodes.
//!
//! One namespace at a time, a namespace of a few kilobytes cost a read of its index, a read
//! of its chunks and two pool hand-offs, and kept one core idle; with thousands of them that
//! overhead was most of a restore. A group holds only namespaces whose whole data lies in
//! their own section (no references into ancestors) and whose sections touch, so a group
//! reads exactly the bytes of the namespaces it restores and nothing between them. Every
//! namespace of a group is checked whole (CRC-32 of every chunk, count, content digest)
//! before the first of them is written to the store.

use super::catalog::ResolvedSnapshot;
use super::chunks::{decode_index, table_from_index, unseal_small};
use super::pipeline::{self, crc_mismatch, decode_whole, ChunkBytes, Ordered, Run, Spool};
use super::reports::{RestoreResult, RestoredNamespace};
use super::SnapshotManager;
use crate::config::RestoreOptions;
use crate::error::Result;
use crate::format::sidecar::{NamespaceEntry, SnapshotMetadata};
use crate::progress::NoProgress;
use crate::storage::{Vector, VectorStorage};
use std::ops::Range;
use std::sync::Arc;

/// Sections up to this size (compressed, index included) are restored in groups.
const SMALL_SECTION_MAX: u64 = 1 << 20;

/// One namespace to restore: its name in the snapshot, its target, and where it is.
#[derive(Clone)]
struct Member {
    source: String,
    target: String,
    entry: NamespaceEntry,
}

/// What to restore next: one namespace the usual way, or a group of small ones.
enum Step {
    One { source: String, target: String },
    Group(Group),
}

/// Small namespaces of one blob whose sections touch, in order.
struct Group {
    /// Index in the resolved chain of the snapshot whose blob holds them.
    holder: usize,
    range: Range<u64>,
    members: Vec<Member>,
}

/// A group read and decoded: each member with its vectors, or `None` where its index
/// turned out to reference other blobs (then it is restored the usual way).
type Decoded = Vec<(Member, Option<Vec<Vector>>)>;

/// Whether a namespace can be restored in a group: format 2, small, and every data chunk in
/// its own section (its logical size is its local data: a reference would add to it).
fn groupable(entry: &NamespaceEntry) -> bool {
    let Some(index) = &entry.index else {
        return false;
    };
    entry.length <= SMALL_SECTION_MAX
        && entry.logical_bytes.is_some()
        && entry.logical_bytes == index.offset.checked_sub(entry.offset)
}

/// Splits the targets into steps, in order: runs of groupable namespaces of one blob whose
/// sections touch become groups of up to `group_bytes`; the rest are restored one by one.
fn plan_steps(
    resolved: &ResolvedSnapshot,
    targets: Vec<(String, String)>,
    group_bytes: u64,
) -> Vec<Step> {
    let mut steps: Vec<Step> = Vec::new();
    for (source, target) in targets {
        let (holder, entry) = &resolved.namespaces[&source];
        if !groupable(entry) {
            steps.push(Step::One { source, target });
            continue;
        }
        let section = entry.offset..entry.offset.saturating_add(entry.length);
        let member = Member {
            source,
            target,
            entry: entry.clone(),
        };
        if let Some(Step::Group(g)) = steps.last_mut() {
            let touches = g.holder == *holder && g.range.end == section.start;
            if touches && section.end - g.range.start <= group_bytes {
                g.range.end = section.end;
                g.members.push(member);
                continue;
            }
        }
        steps.push(Step::Group(Group {
            holder: *holder,
            range: section,
            members: vec![member],
        }));
    }
    steps
}

impl SnapshotManager {
    /// Restores `targets` ((name in the snapshot, target name), in order) of `resolved`,
    /// adding each to `result`.
    pub(super) async fn restore_targets(
        &self,
        storage: &dyn VectorStorage,
        resolved: &ResolvedSnapshot,
        targets: Vec<(String, String)>,
        options: &RestoreOptions,
        result: &mut RestoreResult,
    ) -> Result<()> {
        let now = self.clock.now_secs();
        let holders = slim_holders(resolved);
        let mut jobs: Ordered<Decoded> = Ordered::new(self.config.effective_parallelism());
        let steps = plan_steps(resolved, targets, self.config.chunk_size as u64);
        for step in steps {
            match step {
                Step::One { source, target } => {
                    self.write_groups(storage, resolved, &mut jobs, 0, options, now, result)
                        .await?;
                    self.restore_one(storage, resolved, &source, &target, options, now, result)
                        .await?;
                }
                Step::Group(group) => {
                    let holder = holders[group.holder].clone();
                    let spool = self.read_group(&holder, &group).await?;
                    let base = group.range.start;
                    jobs.push(move || decode_group(&holder, group.members, &spool, base));
                    let keep = self.config.effective_parallelism() - 1;
                    self.write_groups(storage, resolved, &mut jobs, keep, options, now, result)
                        .await?;
                }
            }
        }
        self.write_groups(storage, resolved, &mut jobs, 0, options, now, result)
            .await
    }

    /// Reads a group's sections with one ranged read (in place, for a local file).
    async fn read_group(&self, holder: &SnapshotMetadata, group: &Group) -> Result<Arc<Spool>> {
        let run = Run {
            key: self.blob_key(&holder.id).await?,
            range: group.range.clone(),
        };
        let first = &group.members[0].entry.name;
        let on_error =
            |_, e| pipeline::blob_read_error(e, holder.id.as_str(), first, run.range.start);
        let mut spools = pipeline::download_runs(
            self.sink.as_ref(),
            std::slice::from_ref(&run),
            &NoProgress,
            on_error,
        )
        .await?;
        Ok(spools.remove(0))
    }

    /// Writes decoded groups to the store, oldest first, until at most `keep` are left in
    /// flight.
    #[allow(clippy::too_many_arguments)]
    async fn write_groups(
        &self,
        storage: &dyn VectorStorage,
        resolved: &ResolvedSnapshot,
        jobs: &mut Ordered<Decoded>,
        keep: usize,
        options: &RestoreOptions,
        now: u64,
        result: &mut RestoreResult,
    ) -> Result<()> {
        while jobs.in_flight() > keep {
            let Some(decoded) = jobs.next().await else {
                break;
            };
            for (m, vectors) in decoded? {
                let Some(vectors) = vectors else {
                    self.restore_one(
                        storage, resolved, &m.source, &m.target, options, now, result,
                    )
                    .await?;
                    continue;
                };
                self.prepare_target(storage, &m.target, options.mode)
                    .await?;
                let (written, skipped) = self
                    .upsert_live(storage, &m.target, vectors, options, now)
                    .await?;
                self.progress.advance(m.entry.logical_bytes.unwrap_or(0));
                let holder = &resolved.chain[resolved.namespaces[&m.source].0];
                record(result, m.source, m.target, holder, written, skipped);
            }
        }
        Ok(())
    }

    /// Restores one namespace the usual way (its chunks wherever they are).
    #[allow(clippy::too_many_arguments)]
    async fn restore_one(
        &self,
        storage: &dyn VectorStorage,
        resolved: &ResolvedSnapshot,
        source: &str,
        target: &str,
        options: &RestoreOptions,
        now: u64,
        result: &mut RestoreResult,
    ) -> Result<()> {
        let (idx, entry) = &resolved.namespaces[source];
        let holder = &resolved.chain[*idx];
        let (written, skipped) = self
            .restore_namespace(storage, holder, entry, target, options, now)
            .await?;
        record(
            result,
            source.to_string(),
            target.to_string(),
            holder,
            written,
            skipped,
        );
        Ok(())
    }
}

fn record(
    result: &mut RestoreResult,
    source: String,
    target: String,
    holder: &SnapshotMetadata,
    written: u64,
    skipped: u64,
) {
    tracing::info!(snapshot = %result.snapshot_id, namespace = %source, target = %target, vectors = written, "namespace restored");
    result.namespaces_restored += 1;
    result.vectors_restored += written;
    result.vectors_skipped_expired += skipped;
    result.namespaces.push(RestoredNamespace {
        source,
        target,
        from_snapshot: holder.id.clone(),
        vectors: written,
    });
}

/// The chain's sidecars without their namespace lists, to hand to pool jobs: a job needs a
/// holder's id, filter and layout, and a list of 100,000 namespaces is not worth copying.
fn slim_holders(resolved: &ResolvedSnapshot) -> Vec<Arc<SnapshotMetadata>> {
    resolved
        .chain
        .iter()
        .map(|m| Arc::new(m.summary()))
        .collect()
}

/// Checks and decodes every member of a group from its spool (which starts at blob offset
/// `base`). Blocking CPU work, run on the worker pool.
fn decode_group(
    holder: &SnapshotMetadata,
    members: Vec<Member>,
    spool: &Arc<Spool>,
    base: u64,
) -> Result<Decoded> {
    let bytes = ChunkBytes {
        spool: spool.clone(),
        base,
    };
    let mut out = Vec::with_capacity(members.len());
    for m in members {
        let vectors = decode_member(holder, &m.entry, &bytes)?;
        out.push((m, vectors));
    }
    Ok(out)
}

/// One member: its index chunk checked and decoded, then its chunks; `None` if the index
/// references other blobs after all.
fn decode_member(
    holder: &SnapshotMetadata,
    entry: &NamespaceEntry,
    bytes: &ChunkBytes,
) -> Result<Option<Vec<Vector>>> {
    let Some(index) = &entry.index else {
        return Ok(None);
    };
    let stored = bytes.spool.read(index.offset - bytes.base, index.length)?;
    if crc32fast::hash(&stored) != index.crc32 {
        let range = index.offset..index.offset + index.length;
        return Err(crc_mismatch(holder.id.as_str(), &entry.name, range, None));
    }
    let what = crate::crypto::Chunk::Index {
        namespace: &entry.name,
    };
    let raw = unseal_small(holder, what, index.range(), stored.to_vec())?;
    let ix = decode_index(holder, entry, index, &raw)?;
    if !ix.sources.is_empty() {
        return Ok(None);
    }
    let table = table_from_index(holder, entry, index, ix, &[])?;
    decode_whole(&table, bytes).map(Some)
}
