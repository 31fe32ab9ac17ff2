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

impl NamespaceEntry {
    /// The namespace's byte range in the blob.
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
    pub namespaces: Vec<NamespaceEntry>,
    /// Namespaces that exist at this point in time but are stored in an ancestor (incremental).
    #[serde(default)]
    pub unchanged_namespaces: Vec<String>,
    /// Namespaces of the parent that no longer exist (incremental).
    #[serde(default)]
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
    /// How the blob was compressed.
    pub compression: CompressionInfo,
    /// Whether vector metadata was included.
    pub include_metadata: bool,
    /// Format 2: compressed bytes of the data of every namespace at this point in time,
    /// wherever stored (what a full snapshot would hold); `size_bytes` is what this one adds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub logical_bytes: Option<u64>,
}

impl SnapshotMetadata {
    /// The stored namespace entry with this name.
    pub fn namespace(&self, name: &str) -> Option<&NamespaceEntry> {
        self.namespaces.iter().find(|n| n.name == name)
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

    /// Serializes for storage.
    pub fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec_pretty(self).expect("metadata always serializes")
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
        meta.check_layout().map_err(corrupt)?;
        Ok(meta)
    }

    /// Checks that the recorded ranges tile the blob: header, each namespace's members in
    /// order, footer, with no gap or overlap, and that the counts add up. A reader relies on
    /// this before it trusts any offset.
    pub fn check_layout(&self) -> std::result::Result<(), String> {
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
        if self.footer.offset != at || self.footer.end() != self.size_bytes {
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
