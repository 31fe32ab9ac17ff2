//! Writing a blob's namespace sections with small namespaces read several at once: runs of
//! them are read and encoded in groups by spawned tasks ([`InOrderTasks`]), through the
//! store's shared handle, and written in order; a large namespace is streamed in its place,
//! as when the store is read by one task.
//!
//! Read by the one task that creates the snapshot, thousands of small namespaces kept that
//! thread busy (the store's lookups, every vector's metadata framed as JSON) while the pool
//! waited: at 10,000 namespaces two threads created only 1.5× as fast as one. See
//! docs/PERFORMANCE.md, "Small namespaces read by several tasks".

use super::pipeline::{
    change_token, read_and_encode_group, BlobWriter, EncodeSettings, EncodedGroup, InOrderTasks,
    PlannedNamespace, GROUP_BYTES,
};
use super::plan::WritePlan;
use super::sections::{dedup_inputs, Sections, Shape, SMALL_NAMESPACE_MAX};
use super::SnapshotManager;
use crate::error::Result;
use crate::storage::VectorStorage;
use std::sync::Arc;

/// A unit of work, in the order of the plan.
enum Unit {
    /// Consecutive small namespaces, read and encoded by one task.
    Group(Vec<PlannedNamespace>),
    /// The plan's namespace at this index, to be streamed.
    Large(usize),
}

impl SnapshotManager {
    /// Writes the namespace sections of `plan.store` (whose shapes are `shapes`) in order,
    /// small namespaces read by tasks through `shared`, a handle to `storage`, with up to
    /// `parallelism` groups read and encoded at once while the oldest is written.
    pub(super) async fn write_sections_in_parallel(
        &self,
        w: &mut BlobWriter,
        (storage, shared): (&dyn VectorStorage, Arc<dyn VectorStorage>),
        plan: &WritePlan,
        shapes: &[Shape],
        sections: &mut Sections,
    ) -> Result<()> {
        let settings = EncodeSettings {
            sealing: w.sealing().cloned(),
            buffers: w.buffers(),
            ..self.encode_settings(0, Some(self.config.effective_level()))
        };
        let group_bytes = GROUP_BYTES.min(settings.chunk_size) as u64;
        let mut groups = InOrderTasks::new(settings.parallelism);
        for unit in units(plan, shapes, group_bytes) {
            match unit {
                Unit::Group(group) => {
                    let task = read_and_encode_group(shared.clone(), group, settings.clone());
                    groups.spawn_on_pool(task);
                    while groups.is_over() {
                        self.write_oldest(w, storage, &mut groups, plan, sections)
                            .await?;
                    }
                }
                Unit::Large(i) => {
                    while self
                        .write_oldest(w, storage, &mut groups, plan, sections)
                        .await?
                    {}
                    self.write_large(w, storage, i, plan, shapes, sections)
                        .await?;
                }
            }
        }
        while self
            .write_oldest(w, storage, &mut groups, plan, sections)
            .await?
        {}
        Ok(())
    }

    /// Writes the oldest group in flight, if there is one (true then).
    async fn write_oldest(
        &self,
        w: &mut BlobWriter,
        storage: &dyn VectorStorage,
        groups: &mut InOrderTasks<EncodedGroup>,
        plan: &WritePlan,
        sections: &mut Sections,
    ) -> Result<bool> {
        let Some(group) = groups.next().await else {
            return Ok(false);
        };
        self.write_group(w, storage, group?, plan, sections).await?;
        Ok(true)
    }

    /// Streams the plan's namespace at index `i`.
    async fn write_large(
        &self,
        w: &mut BlobWriter,
        storage: &dyn VectorStorage,
        i: usize,
        plan: &WritePlan,
        shapes: &[Shape],
        sections: &mut Sections,
    ) -> Result<()> {
        let ns = &plan.store[i];
        let shape = &Shape {
            token: change_token(storage, ns).await?,
            ..shapes[i].clone()
        };
        let written = self.write_namespace(w, storage, ns, shape, plan).await?;
        sections.push(ns.clone(), written);
        Ok(())
    }
}

/// The plan's namespaces as units of work, in order: consecutive small namespaces in groups
/// of about `group_bytes` value bytes, each large one a unit of its own. Lazy, so a plan of
/// 100,000 namespaces is not all held as units at once.
fn units<'p>(
    plan: &'p WritePlan,
    shapes: &'p [Shape],
    group_bytes: u64,
) -> impl Iterator<Item = Unit> + 'p {
    let mut next = 0;
    std::iter::from_fn(move || {
        let mut group = Vec::new();
        let mut bytes = 0;
        while let (Some(ns), Some(shape)) = (plan.store.get(next), shapes.get(next)) {
            if shape.value_bytes > SMALL_NAMESPACE_MAX {
                if group.is_empty() {
                    next += 1;
                    return Some(Unit::Large(next - 1));
                }
                break;
            }
            next += 1;
            bytes += shape.value_bytes + 64;
            group.push(planned(ns, shape, plan));
            if bytes >= group_bytes {
                break;
            }
        }
        (!group.is_empty()).then_some(Unit::Group(group))
    })
}

fn planned(ns: &str, shape: &Shape, plan: &WritePlan) -> PlannedNamespace {
    let (known, identity) = dedup_inputs(plan, ns);
    PlannedNamespace {
        name: ns.to_string(),
        dimension: shape.dimension,
        count: shape.vector_count(),
        known,
        identity,
    }
}
