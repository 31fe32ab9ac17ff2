//! Writing a blob's body: the header chunk, a section per stored namespace (its data chunks,
//! then its chunk index) and the footer chunk. A large namespace is streamed through the
//! one-namespace pipeline; runs of small ones are scanned whole and encoded in groups.

use super::create::namespace_dimension;
use super::dedup::IndexBuilder;
use super::pipeline::{
    change_token, outside_the_runtime, scan_whole, start_on_pool, BlobWriter, ByteBuffers,
    ChunkEncoder, EncodeSettings, EncodedGroup, EncodedNamespace, GroupEncoder, KnownChunks,
    PoolJob, SmallNamespace,
};
use super::plan::{ParentView, WritePlan};
use super::SnapshotManager;
use crate::crypto::{Chunk, Sealing};
use crate::error::Result;
use crate::format::blob::{self, DecodeError, EncodedBatch, Identity};
use crate::format::directory::{Directory, DirectoryMember};
use crate::format::framed::FramedVectors;
use crate::format::index::NamespaceIndex;
use crate::format::sidecar::{ByteRange, ChunkEntry, DirectoryInfo, NamespaceEntry};
use crate::id::SnapshotId;
use crate::storage::VectorStorage;
use std::sync::Arc;

/// A namespace whose values (4 bytes × dimension × count) are at most this is encoded in a
/// group with others: a quarter of the default batch, so a group holds at least four.
pub(super) const SMALL_NAMESPACE_MAX: u64 = 1 << 20;

/// What the store says of a namespace before it is read.
#[derive(Debug, Clone)]
pub(super) struct Shape {
    pub dimension: u32,
    /// Value bytes: 4 × dimension × count (what a create's progress counts).
    pub value_bytes: u64,
    /// The store's change token, if it keeps one: taken by `write_body` just before the
    /// namespace is read (a write while it is read then shows as a change next time); `None`
    /// until then.
    pub token: Option<String>,
}

impl Shape {
    /// How many vectors the store counted (0 for a namespace without a dimension yet).
    pub fn vector_count(&self) -> usize {
        match self.dimension {
            0 => 0,
            dim => (self.value_bytes / (4 * u64::from(dim))) as usize,
        }
    }
}

/// The shapes of `names`, from the store's dimensions and counts.
pub(super) async fn namespace_shapes(
    storage: &dyn VectorStorage,
    names: &[String],
) -> Result<Vec<Shape>> {
    let mut shapes = Vec::with_capacity(names.len());
    for ns in names {
        let dimension = namespace_dimension(storage, ns).await?;
        let count = storage.count(ns).await? as u64;
        shapes.push(Shape {
            dimension,
            value_bytes: (4 * u64::from(dimension)).saturating_mul(count),
            token: None,
        });
    }
    Ok(shapes)
}

/// The sections written into a blob.
pub(super) struct BlobBody {
    pub header: ByteRange,
    /// The stored namespaces' entries, decoded on the pool from the directory chunk as
    /// written (which held them compressed while they were written, a few percent of the
    /// memory of their [`NamespaceEntry`]s) while the blob is finished.
    pub listed: PoolJob<std::result::Result<(Directory, [u8; 32]), DecodeError>>,
    /// Namespaces compared while written and found equal to the parent's: nothing of them
    /// is in the blob; the snapshot records them unchanged.
    pub found_unchanged: Vec<String>,
    pub directory: DirectoryInfo,
    pub footer: ByteRange,
}

/// How one namespace ended up.
pub(super) enum Written {
    Stored(NamespaceEntry),
    /// Equal to the parent's version, and nothing of it was written.
    Unchanged,
}

/// Namespace sections as they are written, in order.
pub(super) struct Sections {
    directory: DirectoryMember,
    found_unchanged: Vec<String>,
}

impl Sections {
    pub(super) fn push(&mut self, name: String, written: Written) {
        match written {
            Written::Stored(entry) => self.directory.push(&entry),
            Written::Unchanged => self.found_unchanged.push(name),
        }
    }
}

/// A group of small namespaces laid out as consecutive sections.
struct LaidOut {
    bytes: Vec<u8>,
    raw: u64,
    written: Vec<(String, Written)>,
    value_bytes: u64,
}

impl SnapshotManager {
    /// Writes the header chunk, every namespace section of `plan.store` (whose shapes are
    /// `shapes`) and the footer chunk.
    pub(super) async fn write_body(
        &self,
        w: &mut BlobWriter,
        storage: &dyn VectorStorage,
        (id, created_ms): (&SnapshotId, u64),
        plan: &WritePlan,
        shapes: &[Shape],
    ) -> Result<BlobBody> {
        let level = self.config.effective_level();
        let range = |c: ChunkEntry| ByteRange {
            offset: c.offset,
            length: c.length,
        };
        let header = range(
            w.write_raw(
                blob::encode_header(id.as_str(), created_ms),
                level,
                Chunk::Header,
            )
            .await?,
        );
        let mut sections = Sections {
            directory: DirectoryMember::member(level),
            found_unchanged: Vec::new(),
        };
        match storage.shared_handle() {
            Some(shared) if self.config.effective_parallelism() > 1 => {
                let stores = (storage, shared);
                self.write_sections_in_parallel(w, stores, plan, shapes, &mut sections)
                    .await?
            }
            _ => {
                self.write_sections_reading_here(w, storage, plan, shapes, &mut sections)
                    .await?
            }
        }
        let mut unchanged = plan.unchanged.clone();
        unchanged.extend(sections.found_unchanged.iter().cloned());
        unchanged.sort();
        let (count, vectors) = (sections.directory.stored, sections.directory.vectors);
        let at = w.offset();
        let (directory_member, mut directory) = outside_the_runtime(|| {
            sections
                .directory
                .finish_chunk(&unchanged, &plan.deleted, at)
        });
        let stored = Sealing::maybe_seal(w.sealing(), directory_member.clone(), Chunk::Directory);
        (directory.length, directory.crc32) = (stored.len() as u64, crc32fast::hash(&stored));
        let raw_length = directory.raw_length;
        let listed =
            start_on_pool(move || blob::decode_directory_chunk(&directory_member, raw_length));
        w.append(stored, directory.raw_length).await?;
        let footer = range(
            w.write_raw(
                blob::encode_footer(count as u32, vectors),
                level,
                Chunk::Footer,
            )
            .await?,
        );
        Ok(BlobBody {
            header,
            listed,
            found_unchanged: sections.found_unchanged,
            directory,
            footer,
        })
    }

    /// Writes the namespace sections of `plan.store` in order, reading the store on this
    /// thread: small namespaces whole, encoded in groups on the pool; large ones streamed.
    async fn write_sections_reading_here(
        &self,
        w: &mut BlobWriter,
        storage: &dyn VectorStorage,
        plan: &WritePlan,
        shapes: &[Shape],
        sections: &mut Sections,
    ) -> Result<()> {
        let mut groups = GroupEncoder::new(EncodeSettings {
            sealing: w.sealing().cloned(),
            buffers: w.buffers(),
            ..self.encode_settings(0, Some(self.config.effective_level()))
        });
        for (ns, shape) in plan.store.iter().zip(shapes) {
            let shape = &Shape {
                token: change_token(storage, ns).await?,
                ..shape.clone()
            };
            if shape.value_bytes <= SMALL_NAMESPACE_MAX {
                if let Some(vectors) = self.scan_small(storage, ns, shape).await? {
                    let small = small_namespace(ns, shape, vectors, plan);
                    if groups.add(small) {
                        self.submit_group(&mut groups, w, storage, plan, sections)
                            .await?;
                    }
                    continue;
                }
            }
            self.drain_groups(&mut groups, w, storage, plan, sections)
                .await?;
            let written = self.write_namespace(w, storage, ns, shape, plan).await?;
            sections.push(ns.clone(), written);
        }
        self.drain_groups(&mut groups, w, storage, plan, sections)
            .await?;
        Ok(())
    }

    /// A namespace the store says is small, read whole; `None` if it turns out larger than
    /// a batch (the store's count was low): it is then streamed, read again from the start.
    async fn scan_small(
        &self,
        storage: &dyn VectorStorage,
        ns: &str,
        shape: &Shape,
    ) -> Result<Option<FramedVectors>> {
        let (dim, count) = (shape.dimension, shape.vector_count());
        let into = FramedVectors::with_room(dim, self.config.include_metadata, count);
        let (page, limit) = (self.config.scan_page_size, self.config.chunk_size);
        scan_whole(storage, ns, into, page, limit).await
    }

    /// Sends the group being filled to the pool, first writing the oldest group in flight
    /// if as many are in flight as may be.
    async fn submit_group(
        &self,
        groups: &mut GroupEncoder,
        w: &mut BlobWriter,
        storage: &dyn VectorStorage,
        plan: &WritePlan,
        sections: &mut Sections,
    ) -> Result<()> {
        if groups.is_busy() {
            if let Some(done) = groups.next().await {
                self.write_group(w, storage, done?, plan, sections).await?;
            }
        }
        groups.submit();
        Ok(())
    }

    /// Sends the group being filled, then writes every group in flight, in order.
    async fn drain_groups(
        &self,
        groups: &mut GroupEncoder,
        w: &mut BlobWriter,
        storage: &dyn VectorStorage,
        plan: &WritePlan,
        sections: &mut Sections,
    ) -> Result<()> {
        groups.submit();
        while let Some(done) = groups.next().await {
            self.write_group(w, storage, done?, plan, sections).await?;
        }
        Ok(())
    }

    /// Writes a group's namespaces, streaming in its place any the group found larger than
    /// a batch, and gives the group's buffer back.
    pub(super) async fn write_group(
        &self,
        w: &mut BlobWriter,
        storage: &dyn VectorStorage,
        group: EncodedGroup,
        plan: &WritePlan,
        sections: &mut Sections,
    ) -> Result<()> {
        let EncodedGroup {
            batch,
            mut namespaces,
            too_large,
        } = group;
        let mut written = 0;
        for large in too_large {
            let run: Vec<_> = namespaces.drain(..large.after - written).collect();
            written = large.after;
            self.write_run(w, &batch, run, plan, sections).await?;
            let shape = &Shape {
                dimension: large.dimension,
                value_bytes: 0,
                token: large.token,
            };
            let done = self.write_namespace(w, storage, &large.name, shape, plan);
            sections.push(large.name.clone(), done.await?);
        }
        self.write_run(w, &batch, namespaces, plan, sections)
            .await?;
        w.buffers().give(batch.bytes);
        Ok(())
    }

    /// Appends `run`, namespaces encoded in `batch`, as consecutive sections, in one write.
    async fn write_run(
        &self,
        w: &mut BlobWriter,
        batch: &EncodedBatch,
        run: Vec<EncodedNamespace>,
        plan: &WritePlan,
        sections: &mut Sections,
    ) -> Result<()> {
        if run.is_empty() {
            return Ok(());
        }
        let (start, filter) = (w.offset(), self.config.effective_filter());
        let level = self.config.effective_level();
        let (sealing, buffers) = (w.sealing().cloned(), w.buffers());
        let laid = outside_the_runtime(|| {
            lay_out_run(
                start,
                batch,
                run,
                plan,
                (filter, level),
                sealing.as_ref(),
                &buffers,
            )
        })?;
        w.append(laid.bytes, laid.raw).await?;
        // Entries are compressed into the directory as its frames fill: CPU work.
        outside_the_runtime(|| {
            for (name, written) in laid.written {
                sections.push(name, written);
            }
        });
        self.progress.advance(laid.value_bytes);
        Ok(())
    }

    /// Writes one namespace section (format 2: the chunks its parent's chain does not
    /// hold, then its chunk index), reporting the value bytes written to the progress. A namespace the plan
    /// compares with the parent, found equal with every chunk already in the chain, gets no
    /// index: it is [`Written::Unchanged`].
    pub(super) async fn write_namespace(
        &self,
        w: &mut BlobWriter,
        storage: &dyn VectorStorage,
        ns: &str,
        shape: &Shape,
        plan: &WritePlan,
    ) -> Result<Written> {
        let (dim, base) = (shape.dimension, plan.bases.get(ns));
        let (level, filter) = (
            self.config.effective_level(),
            self.config.effective_filter(),
        );
        let (known, identity) = dedup_inputs(plan, ns);
        let mut digest = blob::ContentDigest::new(dim);
        let mut index = IndexBuilder::new(ns, dim, filter, identity, base);
        let section = w.offset();
        let settings = EncodeSettings {
            identity,
            sealing: w.sealing().cloned(),
            buffers: w.buffers(),
            ..self.encode_settings(dim, Some(level))
        };
        let mut encoder = ChunkEncoder::new(storage, ns, settings, known);
        while let Some(batch) = encoder.next().await? {
            digest.add(&batch.vector_hashes);
            let raw: u64 = batch
                .chunks
                .iter()
                .filter(|c| c.stored.is_some())
                .map(|c| u64::from(c.raw_length))
                .sum();
            let at = w.append(batch.bytes, raw).await?;
            index.add_batch(at, &batch.chunks)?;
            self.progress
                .advance(4 * u64::from(dim) * batch.vector_hashes.len() as u64);
        }
        let (logical, stored_raw) = (index.logical_bytes, index.stored_raw);
        let digest = digest.finish();
        if stored_raw == 0 && same_as_parent(plan.compare.get(ns), dim, &digest) {
            return Ok(Written::Unchanged);
        }
        let (ix, frame) = index.finish(digest)?;
        let member = index_member(&frame, level);
        let index_entry = w
            .write_member(member, frame.len() as u64, Chunk::Index { namespace: ns })
            .await?;
        let sizes = (stored_raw, logical);
        let token = shape.token.clone();
        Ok(Written::Stored(stored_entry(
            section,
            ix,
            index_entry,
            sizes,
            token,
        )))
    }
}

/// Chunk identities the parent's chain holds for `ns` (referenced, not stored), and how a
/// child computes its own: as its base does, so they can match (a 2.0 chain stays
/// 2.0-identified until its next full snapshot).
pub(super) fn dedup_inputs(plan: &WritePlan, ns: &str) -> (KnownChunks, Identity) {
    let base = plan.bases.get(ns);
    let known: KnownChunks = Arc::new(
        base.map(|b| b.chunks.keys().copied().collect())
            .unwrap_or_default(),
    );
    (known, base.map_or(Identity::Vectors, |b| b.identity))
}

fn small_namespace(
    ns: &str,
    shape: &Shape,
    vectors: FramedVectors,
    plan: &WritePlan,
) -> SmallNamespace {
    let (known, identity) = dedup_inputs(plan, ns);
    SmallNamespace {
        name: ns.to_string(),
        dimension: shape.dimension,
        vectors,
        known,
        identity,
        token: shape.token.clone(),
    }
}

/// Lays a run of namespaces encoded in `batch` out as consecutive sections from blob offset
/// `start`: each one's data chunks, then its chunk index (built here, as its offsets are now
/// known), into a buffer from `buffers`. Blocking CPU work.
fn lay_out_run(
    start: u64,
    batch: &EncodedBatch,
    run: Vec<EncodedNamespace>,
    plan: &WritePlan,
    (filter, level): (blob::Filter, u32),
    sealing: Option<&Sealing>,
    buffers: &ByteBuffers,
) -> Result<LaidOut> {
    let bytes: usize = run.iter().map(|e| e.part(batch).bytes.len()).sum();
    let room = bytes + run.len() * STORED_INDEX_MAX / 4;
    let mut laid = lay_out_namespaces(
        start,
        batch,
        run,
        plan,
        (filter, level),
        sealing,
        buffers.take(room),
    );
    if let Ok(out) = &mut laid {
        buffers.fit_for_sink(&mut out.bytes);
    }
    laid
}

/// [`lay_out_run`]'s work, into `bytes` (empty).
fn lay_out_namespaces(
    start: u64,
    batch: &EncodedBatch,
    namespaces: Vec<EncodedNamespace>,
    plan: &WritePlan,
    (filter, level): (blob::Filter, u32),
    sealing: Option<&Sealing>,
    bytes: Vec<u8>,
) -> Result<LaidOut> {
    let mut out = LaidOut {
        bytes,
        raw: 0,
        written: Vec::with_capacity(namespaces.len()),
        value_bytes: 0,
    };
    for e in namespaces {
        let part = e.part(batch);
        let base = plan.bases.get(&e.name);
        let identity = base.map_or(Identity::Vectors, |b| b.identity);
        let dim = e.dimension;
        out.value_bytes += 4 * u64::from(dim) * part.vector_hashes.len() as u64;
        let mut digest = blob::ContentDigest::new(dim);
        digest.add(part.vector_hashes);
        let digest = digest.finish();
        let mut index = IndexBuilder::new(&e.name, dim, filter, identity, base);
        let section = start + out.bytes.len() as u64;
        index.add_batch(section, part.chunks)?;
        out.bytes.extend_from_slice(part.bytes);
        let (logical, stored_raw) = (index.logical_bytes, index.stored_raw);
        if stored_raw == 0 && same_as_parent(plan.compare.get(&e.name), dim, &digest) {
            out.written.push((e.name, Written::Unchanged));
            continue;
        }
        let (ix, frame) = index.finish(digest)?;
        let what = Chunk::Index { namespace: &e.name };
        let member = Sealing::maybe_seal(sealing, index_member(&frame, level), what);
        let index_entry = ChunkEntry {
            offset: start + out.bytes.len() as u64,
            length: member.len() as u64,
            raw_length: frame.len() as u64,
            vectors: 0,
            crc32: crc32fast::hash(&member),
        };
        out.bytes.extend_from_slice(&member);
        out.raw += stored_raw + frame.len() as u64;
        let entry = stored_entry(section, ix, index_entry, (stored_raw, logical), e.token);
        out.written.push((e.name, Written::Stored(entry)));
    }
    Ok(out)
}

/// An index frame of a few chunks is at most this long; it is stored, not deflated.
const STORED_INDEX_MAX: usize = 512;

/// The gzip member of an index frame, which is mostly SHA-256s and CRC-32s: stored when it
/// is short (deflating 150 bytes cost a state reset and Huffman trees per namespace for a
/// few bytes) or compression is off; else Huffman-coded without string matching, which
/// finds next to nothing in hashes (deflate at level 1 took 5 ms per 360 KB index, at
/// 1.3 GB raw per namespace, serial at the end of each namespace: see docs/PERFORMANCE.md).
fn index_member(frame: &[u8], level: u32) -> Vec<u8> {
    if frame.len() <= STORED_INDEX_MAX || level == 0 {
        blob::stored_member(frame)
    } else {
        blob::literal_member(frame)
    }
}

/// The sidecar entry of a namespace stored from `section` up to and with its index chunk,
/// `(stored_raw, logical_bytes)` of its data, read when the store's token was `token`.
fn stored_entry(
    section: u64,
    ix: NamespaceIndex,
    index: ChunkEntry,
    (stored_raw, logical_bytes): (u64, u64),
    token: Option<String>,
) -> NamespaceEntry {
    NamespaceEntry {
        name: ix.name,
        dimension: (ix.dimension > 0).then_some(ix.dimension),
        vector_count: ix.vector_count,
        offset: section,
        length: index.offset + index.length - section,
        raw_length: stored_raw + index.raw_length,
        content_sha256: hex::encode(ix.digest),
        chunks: Vec::new(),
        index: Some(index),
        logical_bytes: Some(logical_bytes),
        store_token: token,
    }
}

/// Whether a namespace of `dimension` and content `digest` is what the parent records.
fn same_as_parent(parent: Option<&ParentView>, dimension: u32, digest: &[u8; 32]) -> bool {
    parent.is_some_and(|p| p.dimension == dimension && p.digest_hex == hex::encode(digest))
}
