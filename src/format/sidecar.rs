//! The sidecar: `<id>.meta.json`, the commit record and table of contents of a snapshot.
//!
//! Written after the blob, only if no sidecar with that key exists; a snapshot exists if and
//! only if its sidecar does. Readers accept any minor version of their major and ignore
//! fields they do not know; they reject other majors with [`Error::UnsupportedVersion`].

use super::{format_version, FORMAT_MAJOR, SUPPORTED_MAJORS};
use crate::error::{Error, Result};
use crate::id::SnapshotId;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// The `format` field of every sidecar.
pub const FORMAT_NAME: &str = "dakera-snapshot";
/// Largest decompressed chunk a reader accepts: the largest chunk size plus two frames of
/// the largest size (a chunk closes after the frame that crosses its size).
pub const MAX_CHUNK_RAW: u64 = (32 << 20) + 2 * crate::format::blob::MAX_FRAME_LEN as u64;
/// Largest sidecar a reader accepts (a bound against forged or runaway files).
pub const MAX_SIDECAR_BYTES: u64 = 64 << 20;
/// Largest decompressed directory a reader accepts (format 3): about 8 million namespaces.
pub const MAX_DIRECTORY_RAW: u64 = 1 << 30;

/// Full or incremental.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SnapshotType {
    /// Holds every namespace of the store.
    Full,
    /// Holds only namespaces that changed since `parent_id`.
    Incremental,
}

/// A byte range inside the blob.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ByteRange {
    /// First byte.
    pub offset: u64,
    /// Number of bytes.
    pub length: u64,
}

impl ByteRange {
    /// One past the last byte.
    pub fn end(&self) -> u64 {
        self.offset.saturating_add(self.length)
    }

    /// As a `Range`.
    pub fn range(&self) -> std::ops::Range<u64> {
        self.offset..self.end()
    }
}

/// One chunk of a namespace section: one or two gzip members holding whole frames.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChunkEntry {
    /// Offset in the blob.
    pub offset: u64,
    /// Compressed length.
    pub length: u64,
    /// Decompressed length.
    pub raw_length: u64,
    /// Vectors in this chunk (0 for the header and end chunks).
    pub vectors: u64,
    /// CRC-32 (IEEE, as gzip's) of the chunk's compressed bytes: a restore checks every
    /// chunk of a namespace against it before it changes anything.
    pub crc32: u32,
}

/// A namespace stored in this snapshot's blob.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NamespaceEntry {
    /// Its name in the store.
    pub name: String,
    /// Its dimension; `None` for a namespace that never held a vector.
    pub dimension: Option<u32>,
    /// Vectors stored.
    pub vector_count: u64,
    /// Byte range of its members in the blob.
    pub offset: u64,
    /// Compressed length of its members.
    pub length: u64,
    /// Decompressed length of its section.
    pub raw_length: u64,
    /// Hex content digest: SHA-256 over the dimension and each vector frame's SHA-256, in id
    /// order (independent of filter, level and chunking; see docs/FORMAT.md).
    pub content_sha256: String,
    /// Format 1: its chunks, in order: the header chunk, data chunks, the end chunk. They
    /// tile `offset..offset+length`. Format 2 keeps them in the blob's chunk index.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub chunks: Vec<ChunkEntry>,
    /// Format 2: the namespace's chunk index (its CHUNK_INDEX frame), the last chunk of its
    /// section; the chunks stored in this blob come before it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub index: Option<ChunkEntry>,
    /// Format 2: compressed bytes of all its data chunks, stored here or referenced in
    /// ancestors: what a full snapshot would store for it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub logical_bytes: Option<u64>,
    /// The store's change token for the namespace when it was read
    /// ([`crate::VectorStorage::change_token`]), if the store keeps one: an incremental takes
    /// a namespace whose token is still the same as unchanged without reading it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub store_token: Option<String>,
}

impl ChunkEntry {
    /// The chunk's byte range in the blob.
    pub fn range(&self) -> ByteRange {
        ByteRange {
            offset: self.offset,
            length: self.length,
        }
    }
}

impl NamespaceEntry {
    /// The namespace's byte range in the blob.
    pub fn range(&self) -> ByteRange {
        ByteRange {
            offset: self.offset,
            length: self.length,
        }
    }
}

/// Format 3: where a snapshot's namespace directory is in its blob, how to check it, and how
/// many namespaces it lists.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DirectoryInfo {
    /// Offset of the directory chunk in the blob (it ends where the footer starts).
    pub offset: u64,
    /// Compressed length.
    pub length: u64,
    /// Decompressed length.
    pub raw_length: u64,
    /// CRC-32 of the compressed bytes.
    pub crc32: u32,
    /// Hex SHA-256 of the decompressed bytes: the directory is as trusted as the sidecar.
    pub sha256: String,
    /// Namespaces stored in this blob.
    pub stored: u64,
    /// Namespaces unchanged, stored in an ancestor.
    pub unchanged: u64,
    /// Namespaces of the parent that no longer exist.
    pub deleted: u64,
}

impl DirectoryInfo {
    /// The directory chunk's byte range.
    pub fn range(&self) -> ByteRange {
        ByteRange {
            offset: self.offset,
            length: self.length,
        }
    }
}

/// Compression settings a blob was written with.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CompressionInfo {
    /// Always `"gzip"` in format 1.
    pub codec: String,
    /// Deflate level 0-9 (0 = stored, no compression).
    pub level: u32,
    /// How vector values were laid out (`"none"` or `"shuffle"`).
    pub filter: crate::format::blob::Filter,
}

/// Everything known about one snapshot: the sidecar's content.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SnapshotMetadata {
    /// Always `"dakera-snapshot"`.
    pub format: String,
    /// `"MAJOR.MINOR"`.
    pub format_version: String,
    /// `"dakera-snapshot <crate version>"` of the writer.
    pub writer: String,
    /// The snapshot id.
    pub id: SnapshotId,
    /// Creation time, unix seconds.
    pub created_at: u64,
    /// Creation time, unix milliseconds.
    pub created_at_ms: u64,
    /// Free text from the caller.
    #[serde(default)]
    pub description: Option<String>,
    /// Key-value labels from the caller.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// Full or incremental.
    pub snapshot_type: SnapshotType,
    /// The snapshot this one builds on (incremental only).
    #[serde(default)]
    pub parent_id: Option<SnapshotId>,
    /// Namespaces stored in this blob, sorted by name.
    ///
    /// Format 3 keeps the three namespace lists in the blob's directory, not in the sidecar:
    /// they are filled by [`crate::SnapshotManager::get_snapshot_metadata`] and by create,
    /// but empty in what [`crate::SnapshotManager::list_snapshots`] returns (see
    /// [`Self::contents_loaded`]; the counts, [`Self::namespace_count`], are always there).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub namespaces: Vec<NamespaceEntry>,
    /// Namespaces that exist at this point in time but are stored in an ancestor (incremental).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub unchanged_namespaces: Vec<String>,
    /// Namespaces of the parent that no longer exist (incremental).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub deleted_namespaces: Vec<String>,
    /// Vectors stored in this blob.
    pub total_vectors: u64,
    /// Compressed blob size in bytes.
    pub size_bytes: u64,
    /// Decompressed content size in bytes.
    pub raw_bytes: u64,
    /// Hex SHA-256 of the whole blob.
    pub blob_sha256: String,
    /// Byte range of the header member.
    pub header: ByteRange,
    /// Byte range of the footer member.
    pub footer: ByteRange,
    /// Format 3: the blob's namespace directory (the namespace lists); `None` before.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub directory: Option<DirectoryInfo>,
    /// How the blob was compressed.
    pub compression: CompressionInfo,
    /// Whether vector metadata was included.
    pub include_metadata: bool,
    /// Format 2: compressed bytes of the data of every namespace at this point in time,
    /// wherever stored (what a full snapshot would hold); `size_bytes` is what this one adds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub logical_bytes: Option<u64>,
    /// Format 4.0: the keys the snapshot is sealed with (never stored).
    #[serde(skip)]
    pub sealed_by: crate::crypto::SealedBy,
}

impl SnapshotMetadata {
    /// The stored namespace entry with this name.
    pub fn namespace(&self, name: &str) -> Option<&NamespaceEntry> {
        self.namespaces.iter().find(|n| n.name == name)
    }

    /// Whether the namespace lists are here: always before format 3; in format 3 once the
    /// directory has been read from the blob.
    pub fn contents_loaded(&self) -> bool {
        self.directory.as_ref().is_none_or(|d| {
            self.namespaces.len() as u64 == d.stored
                && self.unchanged_namespaces.len() as u64 == d.unchanged
                && self.deleted_namespaces.len() as u64 == d.deleted
        })
    }

    /// Namespaces that exist at this snapshot's point in time (stored here or unchanged in
    /// an ancestor), known without the lists.
    pub fn namespace_count(&self) -> u64 {
        match &self.directory {
            Some(d) => d.stored + d.unchanged,
            None => (self.namespaces.len() + self.unchanged_namespaces.len()) as u64,
        }
    }

    /// Namespaces stored in this snapshot's blob, known without the lists.
    pub fn stored_namespace_count(&self) -> u64 {
        match &self.directory {
            Some(d) => d.stored,
            None => self.namespaces.len() as u64,
        }
    }

    /// The same metadata without its namespace lists: what a format 3 sidecar holds, and
    /// what a job that needs only a snapshot's identity and layout is handed.
    pub fn summary(&self) -> SnapshotMetadata {
        SnapshotMetadata {
            format: self.format.clone(),
            format_version: self.format_version.clone(),
            writer: self.writer.clone(),
            id: self.id.clone(),
            created_at: self.created_at,
            created_at_ms: self.created_at_ms,
            description: self.description.clone(),
            labels: self.labels.clone(),
            snapshot_type: self.snapshot_type,
            parent_id: self.parent_id.clone(),
            namespaces: Vec::new(),
            unchanged_namespaces: Vec::new(),
            deleted_namespaces: Vec::new(),
            total_vectors: self.total_vectors,
            size_bytes: self.size_bytes,
            raw_bytes: self.raw_bytes,
            blob_sha256: self.blob_sha256.clone(),
            header: self.header,
            footer: self.footer,
            directory: self.directory.clone(),
            compression: self.compression.clone(),
            include_metadata: self.include_metadata,
            logical_bytes: self.logical_bytes,
            sealed_by: self.sealed_by.clone(),
        }
    }

    /// Takes the namespace lists of a format 3 snapshot, read from its blob's directory, and
    /// checks the whole layout with them.
    pub(crate) fn fill_directory(
        &mut self,
        dir: crate::format::directory::Directory,
    ) -> std::result::Result<(), String> {
        self.namespaces = dir.stored;
        self.unchanged_namespaces = dir.unchanged;
        self.deleted_namespaces = dir.deleted;
        if !self.contents_loaded() {
            return Err("it lists other counts than the sidecar records".into());
        }
        self.check_layout()
    }

    /// Every namespace that exists at this snapshot's point in time, stored here or in an
    /// ancestor, sorted.
    pub fn all_namespaces(&self) -> Vec<String> {
        let mut v: Vec<String> = self
            .namespaces
            .iter()
            .map(|n| n.name.clone())
            .chain(self.unchanged_namespaces.iter().cloned())
            .collect();
        v.sort();
        v
    }

    /// The format major version the snapshot was written with.
    pub fn format_major(&self) -> u16 {
        self.format_version
            .split('.')
            .next()
            .and_then(|m| m.parse().ok())
            .unwrap_or(0)
    }

    /// Serializes for storage: the sidecar (format 3: without the namespace lists, which
    /// are in the blob).
    pub fn to_json(&self) -> Vec<u8> {
        let json = |m: &SnapshotMetadata| {
            serde_json::to_vec_pretty(m).expect("metadata always serializes")
        };
        match self.directory {
            Some(_) => json(&self.summary()),
            None => json(self),
        }
    }

    /// Parses and checks a sidecar read from `expected_id`'s key.
    pub fn from_json(bytes: &[u8], expected_id: &SnapshotId) -> Result<Self> {
        let corrupt = |reason: String| {
            Error::corrupt(
                expected_id.as_str(),
                None,
                None,
                format!("sidecar: {reason}"),
            )
        };
        #[derive(Deserialize)]
        struct Probe {
            format: Option<String>,
            format_version: Option<String>,
        }
        let probe: Probe = serde_json::from_slice(bytes).map_err(|e| corrupt(e.to_string()))?;
        if probe.format.as_deref() != Some(FORMAT_NAME) {
            return Err(corrupt(format!("not a {FORMAT_NAME} sidecar")));
        }
        let version = probe.format_version.unwrap_or_default();
        let major = version
            .split('.')
            .next()
            .and_then(|m| m.parse::<u16>().ok());
        if !major.is_some_and(|m| SUPPORTED_MAJORS.contains(&m)) {
            return Err(Error::UnsupportedVersion {
                what: format!("sidecar of snapshot {expected_id}"),
                found: version,
                supported: FORMAT_MAJOR,
            });
        }
        let meta: SnapshotMetadata =
            serde_json::from_slice(bytes).map_err(|e| corrupt(e.to_string()))?;
        if &meta.id != expected_id {
            return Err(corrupt(format!(
                "records id {} but is stored as {expected_id}",
                meta.id
            )));
        }
        let lists = !(meta.namespaces.is_empty()
            && meta.unchanged_namespaces.is_empty()
            && meta.deleted_namespaces.is_empty());
        if lists && meta.directory.is_some() {
            return Err(corrupt(
                "format 3 sidecars hold no namespace lists (they are in the blob)".into(),
            ));
        }
        meta.check_layout().map_err(corrupt)?;
        Ok(meta)
    }

    /// Format 3: the sidecar's own ranges (header at 0, the directory ending where the
    /// footer starts, the footer ending the blob) and links are sound.
    fn check_summary(&self) -> std::result::Result<(), String> {
        let Some(dir) = self.directory.as_ref().filter(|_| self.format_major() == 3) else {
            return Err("a directory in a sidecar before format 3".into());
        };
        if self.header.offset != 0 {
            return Err("header does not start at byte 0".into());
        }
        if dir.offset < self.header.end() {
            return Err("the directory starts inside the header".into());
        }
        self.check_directory_record(dir)?;
        if self.footer.end() != self.size_bytes {
            return Err("footer does not end the blob".into());
        }
        self.check_links()
    }

    /// Checks that the recorded ranges tile the blob: header, each namespace's members in
    /// order, (format 3) the directory, footer, with no gap or overlap, and that the counts
    /// add up. A reader relies on this before it trusts any offset. For a format 3 snapshot
    /// whose lists are not loaded, checks the ranges its sidecar records (header, directory,
    /// footer); the rest is checked when the directory is read.
    pub fn check_layout(&self) -> std::result::Result<(), String> {
        if !self.contents_loaded() {
            return self.check_summary();
        }
        if self.header.offset != 0 {
            return Err("header does not start at byte 0".into());
        }
        let mut at = self.header.end();
        let mut total = 0u64;
        let mut raw = 0u64;
        let mut last_name: Option<&str> = None;
        let major = self.format_major();
        for ns in &self.namespaces {
            if last_name.is_some_and(|l| l >= ns.name.as_str()) {
                return Err(format!("namespace {:?} out of order or repeated", ns.name));
            }
            last_name = Some(&ns.name);
            at = match major {
                1 => ns.check_layout(at)?,
                _ => ns.check_layout_v2(at)?,
            };
            total = total.saturating_add(ns.vector_count);
            raw = raw.saturating_add(ns.raw_length);
        }
        self.check_directory_place(at)?;
        if self.footer.end() != self.size_bytes {
            return Err("footer does not end the blob".into());
        }
        if total != self.total_vectors {
            return Err(format!(
                "total_vectors {} but namespaces hold {total}",
                self.total_vectors
            ));
        }
        if raw > self.raw_bytes {
            return Err("raw sizes exceed raw_bytes".into());
        }
        self.check_links()
    }

    /// Format 3: the directory follows the last namespace section (which ends at `at`) and
    /// ends where the footer starts. Before format 3: the footer follows the last section.
    fn check_directory_place(&self, at: u64) -> std::result::Result<(), String> {
        match (&self.directory, self.format_major()) {
            (None, 1 | 2) if self.footer.offset == at => Ok(()),
            (None, 1 | 2) => Err("footer does not follow the last namespace".into()),
            (Some(dir), 3) if dir.offset == at => self.check_directory_record(dir),
            (Some(_), 3) => Err("the directory does not follow the last namespace".into()),
            (None, _) => Err("a format 3 sidecar without its directory".into()),
            (Some(_), _) => Err("a directory in a sidecar before format 3".into()),
        }
    }

    /// The directory record itself: it ends where the footer starts, and its sizes are sane.
    fn check_directory_record(&self, dir: &DirectoryInfo) -> std::result::Result<(), String> {
        if dir.range().end() != self.footer.offset {
            return Err("the directory does not end where the footer starts".into());
        }
        if dir.length == 0 || dir.raw_length > MAX_DIRECTORY_RAW || dir.sha256.len() != 64 {
            return Err("the directory record is malformed".into());
        }
        Ok(())
    }

    /// Only incrementals have a parent, and never themselves.
    fn check_links(&self) -> std::result::Result<(), String> {
        if (self.snapshot_type == SnapshotType::Incremental) != self.parent_id.is_some() {
            return Err("only incremental snapshots have a parent".into());
        }
        if self.parent_id.as_ref() == Some(&self.id) {
            return Err("the snapshot names itself as its parent".into());
        }
        Ok(())
    }
}

impl NamespaceEntry {
    fn end(&self) -> u64 {
        self.offset.saturating_add(self.length)
    }

    /// Format 2: checks that this namespace starts at byte `at` and ends with its chunk
    /// index, which is where its chunks are listed (and checked when it is read); returns
    /// where it ends.
    fn check_layout_v2(&self, at: u64) -> std::result::Result<u64, String> {
        let name = &self.name;
        if self.offset != at {
            return Err(format!(
                "namespace {name:?} starts at {} instead of {at}",
                self.offset
            ));
        }
        let Some(index) = &self.index else {
            return Err(format!("namespace {name:?} has no chunk index"));
        };
        if !self.chunks.is_empty() {
            return Err(format!("namespace {name:?} lists chunks in the sidecar"));
        }
        if index.offset < self.offset || index.offset.saturating_add(index.length) != self.end() {
            return Err(format!(
                "the chunk index of {name:?} does not end its section"
            ));
        }
        if index.length == 0 || index.vectors != 0 || index.raw_length > MAX_SIDECAR_BYTES {
            return Err(format!("the chunk index of {name:?} is malformed"));
        }
        if self.content_sha256.len() != 64 {
            return Err(format!("digest of {name:?} is malformed"));
        }
        Ok(self.end())
    }

    /// Checks that this namespace starts at byte `at`, that its chunks tile its range
    /// (header chunk, data chunks, end chunk) and that their counts add up; returns where
    /// it ends.
    fn check_layout(&self, mut at: u64) -> std::result::Result<u64, String> {
        let name = &self.name;
        if self.offset != at {
            return Err(format!(
                "namespace {name:?} starts at {} instead of {at}",
                self.offset
            ));
        }
        if self.chunks.len() < 2 {
            return Err(format!("namespace {name:?} lacks its header or end chunk"));
        }
        let (mut vectors, mut raw) = (0u64, 0u64);
        for c in &self.chunks {
            if c.raw_length > MAX_CHUNK_RAW {
                return Err(format!(
                    "a chunk of {name:?} claims {} decompressed bytes, more than the {MAX_CHUNK_RAW} a writer produces",
                    c.raw_length
                ));
            }
            if c.offset != at || c.length == 0 {
                return Err(format!(
                    "chunk of {name:?} at {} does not follow byte {at}",
                    c.offset
                ));
            }
            at = at.saturating_add(c.length);
            vectors = vectors.saturating_add(c.vectors);
            raw = raw.saturating_add(c.raw_length);
        }
        let (first, last) = (&self.chunks[0], &self.chunks[self.chunks.len() - 1]);
        if first.vectors != 0 || last.vectors != 0 {
            return Err(format!(
                "the header or end chunk of {name:?} claims vectors"
            ));
        }
        if at != self.end() {
            return Err(format!("members of {name:?} do not fill its range"));
        }
        if vectors != self.vector_count || raw != self.raw_length {
            return Err(format!(
                "member totals of {name:?} disagree with the namespace"
            ));
        }
        if self.content_sha256.len() != 64 {
            return Err(format!("digest of {name:?} is malformed"));
        }
        Ok(at)
    }
}

/// The writer string for this build.
pub fn writer() -> String {
    format!("dakera-snapshot {}", env!("CARGO_PKG_VERSION"))
}

/// Fills the fixed fields for a new sidecar.
pub(crate) fn new_format_fields() -> (String, String, String) {
    (FORMAT_NAME.to_string(), format_version(), writer())
}
