//! The blob codec.
//!
//! A blob is a concatenation of independent gzip members (so `zcat` reads it whole). Its
//! decompressed content is:
//!
//! ```text
//! MAGIC "DKSNAP\r\n" | major u16 | minor u16 | FILE_HEADER frame        <- header chunk
//! per namespace:
//!   NS_HEADER frame                                                       <- header chunk
//!   VECTOR frames (filter none) or one BLOCK frame (filter shuffle)      <- data chunks
//!   NS_END frame                                                          <- end chunk
//! FILE_END frame                                                          <- footer chunk
//! ```
//!
//! A frame is `kind u8 | len u32 LE | payload[len]`. A *chunk* is one or two gzip members
//! holding whole frames; the sidecar records every chunk's byte range, so chunks are
//! compressed and decompressed independently and in parallel, and one namespace is read
//! with one ranged request. All integers are little-endian. `docs/FORMAT.md` has the
//! byte-level layout of every payload.

use super::framed::FramedVectors;
use super::{FORMAT_MAJOR, FORMAT_MINOR};
use crate::storage::Vector;
use flate2::read::{GzDecoder, MultiGzDecoder};
#[cfg(any(test, feature = "test-util"))]
use flate2::write::GzEncoder;
#[cfg(any(test, feature = "test-util"))]
use flate2::Compression;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
#[cfg(any(test, feature = "test-util"))]
use std::io::Write;
use std::io::{self, Read};
use std::ops::Range;

/// The first eight bytes of every blob's decompressed content.
pub const MAGIC: &[u8; 8] = b"DKSNAP\r\n";

/// Frame kinds. Kinds `0x00..0x40` are required: a reader that meets an unknown one stops
/// with an error. Kinds `0x40..=0xFF` are optional: readers skip ones they do not know.
pub mod kind {
    /// Snapshot id and creation time.
    pub const FILE_HEADER: u8 = 0x01;
    /// Start of a namespace: name, dimension, flags.
    pub const NS_HEADER: u8 = 0x02;
    /// One vector (filter none).
    pub const VECTOR: u8 = 0x03;
    /// End of a namespace: vector count and content digest.
    pub const NS_END: u8 = 0x04;
    /// End of the blob: namespace count and total vectors.
    pub const FILE_END: u8 = 0x05;
    /// A block of vectors with byte-shuffled values (filter shuffle).
    pub const BLOCK: u8 = 0x06;
    /// A namespace's chunk table (format 2).
    pub const CHUNK_INDEX: u8 = 0x07;
    /// Stored namespaces of the snapshot's directory (format 3).
    pub const NS_DIRECTORY: u8 = 0x08;
    /// Namespaces unchanged in an ancestor (format 3 directory).
    pub const UNCHANGED_NAMES: u8 = 0x09;
    /// Namespaces deleted since the parent (format 3 directory).
    pub const DELETED_NAMES: u8 = 0x0A;
    /// First optional kind.
    pub const FIRST_OPTIONAL: u8 = 0x40;
}

/// Largest frame payload accepted (64 MiB): a bound on what a forged length can allocate.
pub const MAX_FRAME_LEN: u32 = 64 << 20;
/// Largest dimension accepted.
pub const MAX_DIMENSION: u32 = 1 << 20;
/// NS_HEADER flag: the namespace's vectors are stored in BLOCK frames.
pub const NS_FLAG_SHUFFLE: u32 = 1;

/// VECTOR frame flags (the first byte of its payload).
pub(super) const FLAG_METADATA: u8 = 1;
pub(super) const FLAG_TTL: u8 = 2;
pub(super) const FLAG_EXPIRES: u8 = 4;

/// How vector values are laid out before compression.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Filter {
    /// One VECTOR frame per vector, values as plain little-endian f32.
    None,
    /// Vectors in BLOCK frames: the values' bytes grouped by significance (all sign/exponent
    /// bytes, then the next byte of every value, ...). The exponent plane is deflated; the
    /// three mantissa planes, which are close to random, are stored. Smaller and about twice
    /// as fast as deflating plain floats. The default.
    #[default]
    Shuffle,
}

impl Filter {
    /// The namespace flags that record this filter (NS_HEADER and CHUNK_INDEX frames).
    pub(crate) fn flags(self) -> u32 {
        match self {
            Filter::None => 0,
            Filter::Shuffle => NS_FLAG_SHUFFLE,
        }
    }

    /// The filter that namespace `flags` record; `None` for flags this version does not know.
    pub(crate) fn from_flags(flags: u32) -> Option<Filter> {
        match flags {
            0 => Some(Filter::None),
            NS_FLAG_SHUFFLE => Some(Filter::Shuffle),
            _ => None,
        }
    }
}

/// A decoding failure, without snapshot context; the manager adds the snapshot id and
/// namespace when it turns this into [`crate::Error::Corrupt`].
#[derive(Debug)]
pub enum DecodeError {
    /// The bytes are not a valid blob (the message says which check failed).
    Corrupt(String),
    /// The blob was written by an incompatible format version.
    Version {
        /// The major version found.
        major: u16,
        /// The minor version found.
        minor: u16,
    },
}

impl From<io::Error> for DecodeError {
    fn from(e: io::Error) -> Self {
        match e.kind() {
            io::ErrorKind::UnexpectedEof => {
                DecodeError::Corrupt("unexpected end of data (truncated?)".into())
            }
            _ => DecodeError::Corrupt(format!("gzip stream invalid: {e}")),
        }
    }
}

pub(super) fn corrupt<T>(msg: impl Into<String>) -> Result<T, DecodeError> {
    Err(DecodeError::Corrupt(msg.into()))
}

/// Why vectors could not be encoded.
#[derive(Debug, PartialEq)]
pub enum EncodeError {
    /// A vector's length differs from the namespace's dimension.
    Dimension {
        /// The namespace's dimension.
        expected: u32,
        /// The vector's length.
        actual: usize,
    },
    /// Something cannot be stored (ids out of order, a vector too large for a frame).
    Invalid(String),
}

/// `raw` as one gzip member of stored blocks (no deflate state touched).
pub fn stored_member(raw: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    super::gzip::append_stored_member(&mut out, raw);
    out
}

/// `raw` as one gzip member of Huffman-coded literals, no string matching (see
/// [`super::gzip::append_literal_member`]).
pub fn literal_member(raw: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    super::gzip::append_literal_member(&mut out, raw);
    out
}

/// Compresses `raw` into one gzip member at deflate `level` (0 = stored), with this
/// thread's reused deflate state: a fresh state per member (hundreds of KiB) per namespace
/// fragmented the heap by that much per namespace.
pub fn compress_member(raw: &[u8], level: u32) -> Vec<u8> {
    let mut out = Vec::new();
    super::gzip::append_member_parts(&mut out, raw, level, &[], false);
    out
}

fn put_frame(buf: &mut Vec<u8>, kind: u8, payload: &[u8]) {
    buf.push(kind);
    buf.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    buf.extend_from_slice(payload);
}

fn put_str16(buf: &mut Vec<u8>, s: &str) {
    buf.extend_from_slice(&(s.len() as u16).to_le_bytes());
    buf.extend_from_slice(s.as_bytes());
}

fn put_f32s(buf: &mut Vec<u8>, values: &[f32]) {
    if cfg!(target_endian = "little") {
        buf.extend_from_slice(bytemuck::cast_slice(values));
    } else {
        for x in values {
            buf.extend_from_slice(&x.to_le_bytes());
        }
    }
}

/// The decompressed content of the header chunk.
pub fn encode_header(snapshot_id: &str, created_at_ms: u64) -> Vec<u8> {
    let mut buf = Vec::with_capacity(64);
    buf.extend_from_slice(MAGIC);
    buf.extend_from_slice(&FORMAT_MAJOR.to_le_bytes());
    buf.extend_from_slice(&FORMAT_MINOR.to_le_bytes());
    let mut p = Vec::new();
    put_str16(&mut p, snapshot_id);
    p.extend_from_slice(&created_at_ms.to_le_bytes());
    put_frame(&mut buf, kind::FILE_HEADER, &p);
    buf
}

/// The decompressed content of the footer chunk.
pub fn encode_footer(namespaces: u32, total_vectors: u64) -> Vec<u8> {
    let mut p = Vec::with_capacity(12);
    p.extend_from_slice(&namespaces.to_le_bytes());
    p.extend_from_slice(&total_vectors.to_le_bytes());
    let mut buf = Vec::new();
    put_frame(&mut buf, kind::FILE_END, &p);
    buf
}

#[cfg(any(test, feature = "test-util"))]
/// The NS_HEADER frame that starts a namespace section. `dimension` is 0 only for a
/// namespace that never held a vector.
pub fn encode_ns_header(name: &str, dimension: u32, filter: Filter) -> Vec<u8> {
    let mut p = Vec::new();
    put_str16(&mut p, name);
    p.extend_from_slice(&dimension.to_le_bytes());
    p.extend_from_slice(&filter.flags().to_le_bytes());
    let mut buf = Vec::new();
    put_frame(&mut buf, kind::NS_HEADER, &p);
    buf
}

#[cfg(any(test, feature = "test-util"))]
/// The NS_END frame that closes a namespace section.
pub fn encode_ns_end(count: u64, digest: &[u8; 32]) -> Vec<u8> {
    let mut p = Vec::with_capacity(40);
    p.extend_from_slice(&count.to_le_bytes());
    p.extend_from_slice(digest);
    let mut buf = Vec::new();
    put_frame(&mut buf, kind::NS_END, &p);
    buf
}

/// How a format 2 chunk's identity (the SHA-256 its chunk index records, which dedup
/// matches on) is computed. A namespace's index says which (its flags).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Identity {
    /// Format 2.0: the SHA-256 of the chunk's decompressed bytes.
    RawBytes,
    /// Format 2.1: [`vector_identity`], from the per-vector hashes the content digest
    /// needs anyway, so neither writers nor readers hash the chunk's bytes a second time.
    Vectors,
}

/// CHUNK_INDEX flag: the namespace's chunk identities are [`Identity::Vectors`].
pub const NS_FLAG_VECTOR_IDENTITY: u32 = 2;

/// Domain tag of [`vector_identity`].
const VECTOR_IDENTITY_TAG: &[u8; 16] = b"dakera-chunk-2.1";

/// A chunk's identity in format 2.1: SHA-256 over the tag `dakera-chunk-2.1`, the
/// namespace flags of its filter (u32 LE), its vector count (u32 LE) and the SHA-256 of each
/// of its vectors' canonical VECTOR frame (as in the content digest), in order. The frames
/// cover ids, values, metadata and expiry; with the filter, they decide every byte of the
/// chunk, so equal identities mean equal chunks.
pub fn vector_identity(filter: Filter, vector_hashes: &[[u8; 32]]) -> [u8; 32] {
    let mut h = Sha256::new();
    for part in identity_parts(filter, vector_hashes) {
        h.update(part);
    }
    h.finalize().into()
}

/// A chunk's identity in its repository: [`vector_identity`], or in an encrypted
/// repository (format 4.0) an HMAC-SHA256 of the same bytes under the repository's
/// identity key, so that equal or guessed content cannot be confirmed without the key.
pub(crate) fn repository_identity(
    keys: Option<&crate::crypto::RepoKeys>,
    filter: Filter,
    vector_hashes: &[[u8; 32]],
) -> [u8; 32] {
    match keys {
        Some(keys) => keys.identity(identity_parts(filter, vector_hashes)),
        None => vector_identity(filter, vector_hashes),
    }
}

/// The bytes a format 2.1 identity hashes, in order.
fn identity_parts(
    filter: Filter,
    vector_hashes: &[[u8; 32]],
) -> impl Iterator<Item = Vec<u8>> + '_ {
    let head = [
        &VECTOR_IDENTITY_TAG[..],
        &filter.flags().to_le_bytes(),
        &(vector_hashes.len() as u32).to_le_bytes(),
    ]
    .concat();
    std::iter::once(head).chain(vector_hashes.iter().map(|h| h.to_vec()))
}

/// What a writer deduplicates against: how identities are computed, and which are
/// already stored in the chain.
pub struct Dedup<'a> {
    pub identity: Identity,
    pub known: &'a (dyn Fn(&[u8; 32]) -> bool + Sync),
    /// In an encrypted repository: how chunks of this namespace are sealed (and their
    /// identities keyed).
    pub seal: Option<ChunkSeal<'a>>,
}

/// Sealing the data chunks of one namespace (format 4.0).
#[derive(Clone, Copy)]
pub struct ChunkSeal<'a> {
    pub sealing: &'a crate::crypto::Sealing,
    pub namespace: &'a str,
}

/// A namespace's content digest: SHA-256 over the dimension (u32 LE) followed by the
/// SHA-256 of every vector's canonical VECTOR frame, in order. The per-vector hashes are
/// computed in parallel with the chunks (the chunks' `vector_hashes`);
/// only 32 bytes per vector are hashed in order. The
/// digest does not depend on the filter, the level, chunking or the namespace's name.
#[derive(Clone)]
pub struct ContentDigest(Sha256);

impl ContentDigest {
    /// Starts the digest of a namespace of this dimension.
    pub fn new(dimension: u32) -> Self {
        let mut h = Sha256::new();
        h.update(dimension.to_le_bytes());
        ContentDigest(h)
    }

    /// Adds the next vectors' hashes.
    pub fn add(&mut self, vector_hashes: &[[u8; 32]]) {
        for h in vector_hashes {
            self.0.update(h);
        }
    }

    /// The digest.
    pub fn finish(self) -> [u8; 32] {
        self.0.finalize().into()
    }
}

/// Hashes a canonical VECTOR frame given in pieces: `head` (flags and id), the values and
/// `tail` (ttl, expiry, metadata), without assembling it.
fn hash_vector_frame(head: &[u8], values: &[f32], tail: &[u8]) -> [u8; 32] {
    let len = head.len() + 4 * values.len() + tail.len();
    let mut h = Sha256::new();
    h.update([kind::VECTOR]);
    h.update((len as u32).to_le_bytes());
    h.update(head);
    if cfg!(target_endian = "little") {
        h.update(bytemuck::cast_slice::<f32, u8>(values));
    } else {
        for x in values {
            h.update(x.to_le_bytes());
        }
    }
    h.update(tail);
    h.finalize().into()
}

#[cfg(any(test, feature = "test-util"))]
/// One chunk of vectors, encoded.
#[derive(Debug)]
pub struct EncodedChunk {
    /// The chunk's gzip members, ready to append to the blob.
    pub bytes: Vec<u8>,
    /// CRC-32 of `bytes` (the chunk's checksum in the sidecar).
    pub crc32: u32,
    /// Decompressed length of the chunk.
    pub raw_len: u64,
    /// Per-vector hashes, for the content digest ([`ContentDigest`]).
    pub vector_hashes: Vec<[u8; 32]>,
    /// Vectors in the chunk.
    pub vectors: u64,
}

#[cfg(any(test, feature = "test-util"))]
/// Encodes vectors (in strictly ascending id order, all of `dimension` values) into one
/// chunk. With `level = None`, only the per-vector hashes are produced (`bytes` is empty),
/// which is what a digest-only pass needs.
pub fn encode_chunk(
    vectors: &[Vector],
    dimension: u32,
    include_metadata: bool,
    filter: Filter,
    level: Option<u32>,
) -> Result<EncodedChunk, EncodeError> {
    let framed = FramedVectors::of(vectors, dimension, include_metadata)?;
    Ok(build_chunk(&framed, 0..framed.len(), filter, level)?.compress(level))
}

/// One chunk of an [`EncodedBatch`].
#[derive(Debug, Clone, Copy)]
pub struct BatchChunk {
    /// Its compressed length and CRC-32 in the batch's bytes; `None` when the chunk was
    /// already stored (its hash was known) and is not in them.
    pub stored: Option<(u32, u32)>,
    /// Decompressed length.
    pub raw_length: u32,
    /// Vectors in the chunk.
    pub vectors: u32,
    /// Its identity (see [`Identity`]).
    pub sha256: [u8; 32],
}

/// Consecutive chunks encoded together (the unit of work of the create pipeline).
#[derive(Debug, Default)]
pub struct EncodedBatch {
    /// The stored chunks' gzip members, back to back.
    pub bytes: Vec<u8>,
    /// Every chunk, in order.
    pub chunks: Vec<BatchChunk>,
    /// Per-vector hashes, for the content digest ([`ContentDigest`]).
    pub vector_hashes: Vec<[u8; 32]>,
}

impl EncodedBatch {
    /// An empty batch with room for `vectors` vectors of `dimension` values and a little
    /// metadata, compressed at `level`: about what a batch of embeddings compresses to, so the
    /// buffer rarely grows (each growth copies it). A digest pass (`None`) stores no bytes.
    /// Its bytes go into the buffer `take(room)` gives (a spare one, or a new one), emptied
    /// first.
    pub fn with_room(
        vectors: usize,
        dimension: u32,
        level: Option<u32>,
        take: impl FnOnce(usize) -> Vec<u8>,
    ) -> Self {
        let room = match level {
            Some(_) => vectors * (4 * dimension as usize + 64),
            None => 0,
        };
        let mut bytes = take(room);
        bytes.clear();
        EncodedBatch {
            vector_hashes: Vec::with_capacity(vectors),
            bytes,
            ..Default::default()
        }
    }
}

/// Encodes `vectors` as the chunks that end at `cuts` (exclusive end indices, ascending, the
/// last one `vectors.len()`), format 2, appending them to `batch`: each chunk one gzip
/// member of whole frames, laid out as `filter` says and identified as `dedup.identity`
/// says. Chunks whose identity `dedup.known` accepts are identified but not compressed.
/// With `level = None` only the per-vector hashes are produced (a digest pass). Whether
/// mantissa planes are deflated is decided once per `mantissas` (see [`MantissaChoice`]).
pub fn encode_batch(
    batch: &mut EncodedBatch,
    vectors: &FramedVectors,
    cuts: &[usize],
    filter: Filter,
    level: Option<u32>,
    dedup: &Dedup<'_>,
    mantissas: &mut MantissaChoice,
) -> Result<(), EncodeError> {
    let mut start = 0;
    for &end in cuts {
        let built = build_chunk(vectors, start..end, filter, level)?;
        start = end;
        batch.vector_hashes.extend_from_slice(&built.vector_hashes);
        let Some(level) = level else { continue };
        let low_level = mantissas.level_for(&built, level);
        let identity = built.identity(dedup.identity, filter, dedup.seal);
        let stored = !(dedup.known)(&identity);
        let levels = (level, low_level);
        let chunk = built.append_to(&mut batch.bytes, levels, identity, stored, dedup.seal);
        batch.chunks.push(chunk);
    }
    Ok(())
}

/// A chunk framed but not yet compressed.
struct BuiltChunk {
    /// VECTOR frames, or the first part of the BLOCK frame (up to and with plane 3).
    out: Vec<u8>,
    /// Planes 2, 1, 0 (shuffle only), each `n` bytes.
    low: Vec<u8>,
    n: usize,
    vector_hashes: Vec<[u8; 32]>,
    vectors: u64,
}

impl BuiltChunk {
    /// The chunk's identity, computed as `kind` says.
    fn identity(&self, kind: Identity, filter: Filter, seal: Option<ChunkSeal<'_>>) -> [u8; 32] {
        let keys = seal.map(|s| &*s.sealing.keys);
        match kind {
            Identity::RawBytes => {
                let mut h = Sha256::new();
                h.update(&self.out);
                h.update(&self.low);
                h.finalize().into()
            }
            Identity::Vectors => repository_identity(keys, filter, &self.vector_hashes),
        }
    }

    /// The chunk's index entry; with `store`, its member is appended to `out` at the
    /// `levels` (records and exponent plane, mantissa planes), sealed if `seal` says so.
    fn append_to(
        &self,
        out: &mut Vec<u8>,
        (level, low_level): (u32, u32),
        sha256: [u8; 32],
        store: bool,
        seal: Option<ChunkSeal<'_>>,
    ) -> BatchChunk {
        let raw_length = (self.out.len() + self.low.len()) as u32;
        let stored = store.then(|| {
            let start = out.len();
            if seal.is_some() {
                crate::crypto::seal::reserve(out);
            }
            let low_stored = low_level == 0 && level != 0;
            if low_stored && self.n > 0 {
                // Real-valued embeddings: the exponent plane Huffman-coded, mantissas stored.
                let (records, plane) = self.out.split_at(self.out.len() - self.n);
                let records_level = records_level(level);
                super::gzip::append_member_planes(out, records, records_level, plane, &self.low);
            } else {
                super::gzip::append_member_parts(out, &self.out, level, &self.low, low_stored);
            }
            if let Some(s) = seal {
                let what = crate::crypto::Chunk::Data {
                    namespace: s.namespace,
                    identity: &sha256,
                };
                s.sealing.cipher.seal_tail(out, start, what);
            }
            ((out.len() - start) as u32, crc32fast::hash(&out[start..]))
        });
        BatchChunk {
            stored,
            raw_length,
            vectors: self.vectors as u32,
            sha256,
        }
    }

    /// The format 1 encoding: the chunk's two gzip members at `level` (`None`: framing and
    /// hashes only, no bytes).
    #[cfg(any(test, feature = "test-util"))]
    fn compress(self, level: Option<u32>) -> EncodedChunk {
        let Some(level) = level else {
            return EncodedChunk {
                bytes: Vec::new(),
                crc32: 0,
                raw_len: 0,
                vector_hashes: self.vector_hashes,
                vectors: self.vectors,
            };
        };
        let raw_len = (self.out.len() + self.low.len()) as u64;
        // Both members go into one buffer sized for the worst case: no regrowth, no copy.
        let capacity = raw_len as usize + raw_len as usize / 8192 * 5 + 128;
        let mut enc = GzEncoder::new(Vec::with_capacity(capacity), Compression::new(level));
        enc.write_all(&self.out)
            .expect("writing to a Vec cannot fail");
        let mut bytes = enc.finish().expect("writing to a Vec cannot fail");
        drop(self.out);
        if !self.low.is_empty() {
            let low_level = if mantissas_compress(&self.low, self.n, level) == Some(true) {
                level
            } else {
                0
            };
            let mut enc = GzEncoder::new(bytes, Compression::new(low_level));
            enc.write_all(&self.low)
                .expect("writing to a Vec cannot fail");
            bytes = enc.finish().expect("writing to a Vec cannot fail");
        }
        let crc32 = crc32fast::hash(&bytes);
        EncodedChunk {
            bytes,
            crc32,
            raw_len,
            vector_hashes: self.vector_hashes,
            vectors: self.vectors,
        }
    }
}

/// The deflate level of a chunk's records (ids, TTLs, metadata) when its values are byte
/// planes: the fast level (2) becomes zlib's level 1, which codes with fixed Huffman codes
/// where level 2 builds three trees per block. A chunk's records are a few hundred bytes to
/// a few KiB, so building those trees (and choosing between them) was most of their cost:
/// callgrind counted 7% fewer instructions for a whole create, for 0.07% more blob on
/// 768-dimensional embeddings and 1.0% more on 64-dimensional ones (docs/PERFORMANCE.md).
/// Level 1 did poorly on float bytes, which is why the fast level is 2 elsewhere.
fn records_level(level: u32) -> u32 {
    if level == 2 {
        1
    } else {
        level
    }
}

/// Frames (and with `level`, lays out for compression) vectors `rows`.
fn build_chunk(
    vectors: &FramedVectors,
    rows: Range<usize>,
    filter: Filter,
    level: Option<u32>,
) -> Result<BuiltChunk, EncodeError> {
    let dim = vectors.dimension() as usize;
    let count = rows.len();
    let shuffle = filter == Filter::Shuffle;
    let write = level.is_some();
    let mut vector_hashes = Vec::with_capacity(count);
    // Filter none: the VECTOR frames. Shuffle: the BLOCK frame's first part, i.e.
    // [kind][len][count][records...][plane 3], then the stored part [plane 2][plane 1][plane 0].
    let estimate = if write {
        count * (if shuffle { dim + 48 } else { 4 * dim + 48 })
    } else {
        0
    };
    let mut out = Vec::with_capacity(estimate);
    if write && shuffle {
        out.push(kind::BLOCK);
        out.extend_from_slice(&[0; 4]); // length, patched below
        out.extend_from_slice(&(count as u32).to_le_bytes());
    }
    for i in rows.clone() {
        let (head, values, tail) = (vectors.head(i), vectors.values(i), vectors.tail(i));
        vector_hashes.push(hash_vector_frame(head, values, tail));
        if !write {
            continue;
        }
        if !shuffle {
            let len = head.len() + 4 * values.len() + tail.len();
            out.push(kind::VECTOR);
            out.extend_from_slice(&(len as u32).to_le_bytes());
            out.extend_from_slice(head);
            put_f32s(&mut out, values);
        } else {
            out.extend_from_slice(head);
        }
        out.extend_from_slice(tail);
    }
    let (low, n) = if write && shuffle {
        append_planes(&mut out, vectors.values_of(rows), count)?
    } else {
        (Vec::new(), 0)
    };
    Ok(BuiltChunk {
        out,
        low,
        n,
        vector_hashes,
        vectors: count as u64,
    })
}

/// Appends the most significant byte plane (sign and exponent) of `values` (those of
/// `count` vectors) to `out`, returns the three lower planes (plane 2, 1, 0; `n` bytes
/// each) and `n`, and patches the BLOCK frame's length.
fn append_planes(
    out: &mut Vec<u8>,
    values: &[f32],
    count: usize,
) -> Result<(Vec<u8>, usize), EncodeError> {
    let n = values.len();
    // One pass per plane: a chunk's values stay in cache, and each pass writes its plane
    // straight into place (no zeroed buffer to overwrite).
    let plane = |shift: u32| values.iter().map(move |x| (x.to_bits() >> shift) as u8);
    out.extend(plane(24));
    let mut low = Vec::with_capacity(3 * n);
    low.extend(plane(16));
    low.extend(plane(8));
    low.extend(plane(0));
    let payload_len = out.len() - 5 + low.len();
    if payload_len > MAX_FRAME_LEN as usize {
        return Err(EncodeError::Invalid(format!(
            "a block of {count} vectors encodes to {payload_len} bytes, more than the {MAX_FRAME_LEN}-byte frame limit"
        )));
    }
    out[1..5].copy_from_slice(&(payload_len as u32).to_le_bytes());
    Ok((low, n))
}

/// Whether the mantissa planes of shuffled chunks are deflated or stored, decided once for
/// a run of chunks (a batch of one namespace, or a group of small namespaces): by a trial
/// deflate of the first chunk whose planes make a large enough sample.
///
/// A trial per chunk was a third of a create's instructions at 100,000 namespaces of ten
/// vectors: a second deflate (and reset of the deflate state) for every namespace. The
/// choice only trades size for speed; every chunk decodes the same either way.
#[derive(Debug, Default)]
pub struct MantissaChoice {
    /// The level mantissa planes are deflated at (0: stored), once decided.
    decided: Option<u32>,
}

impl MantissaChoice {
    /// The level for `chunk`'s mantissa planes, deciding on its sample if none is decided
    /// and its sample is large enough (stored until then).
    fn level_for(&mut self, chunk: &BuiltChunk, level: u32) -> u32 {
        if let Some(decided) = self.decided {
            return decided;
        }
        match mantissas_compress(&chunk.low, chunk.n, level) {
            Some(true) => *self.decided.insert(level),
            Some(false) => *self.decided.insert(0),
            None => 0,
        }
    }
}

/// Whether the three low byte planes (each `n` bytes) are worth deflating: true for
/// quantized or repetitive data, false for the near-random mantissas of real embeddings,
/// which are then stored at memory speed. Decided on a 16 KiB sample of each plane; `None`
/// when the planes are too short to tell (under 1 KiB in all).
fn mantissas_compress(low_planes: &[u8], n: usize, level: u32) -> Option<bool> {
    const SAMPLE: usize = 16 << 10;
    if level == 0 {
        return Some(false);
    }
    let take = n.min(SAMPLE);
    if 3 * take < 1024 {
        return None;
    }
    let mut sample = Vec::with_capacity(3 * take);
    for p in 0..3 {
        sample.extend_from_slice(&low_planes[p * n..p * n + take]);
    }
    Some(compress_member(&sample, level).len() < sample.len() * 9 / 10)
}

/// Reads frames from decompressed content.
pub(super) struct FrameReader<R: Read> {
    r: R,
    /// Decompressed bytes consumed so far.
    pos: u64,
    /// Most decompressed bytes accepted (the size a sidecar records, when known): a forged
    /// or damaged member cannot make the reader allocate more.
    limit: u64,
}

impl<R: Read> FrameReader<R> {
    /// Frames from `r`, whose first byte is at decompressed offset `pos`, with no size limit.
    pub(super) fn new(r: R, pos: u64) -> Self {
        FrameReader {
            r,
            pos,
            limit: u64::MAX,
        }
    }

    /// The next frame, or `None` at a clean end of input.
    fn next(&mut self) -> Result<Option<(u8, Vec<u8>)>, DecodeError> {
        let mut head = [0u8; 5];
        let n = read_full(&mut self.r, &mut head)?;
        if n == 0 {
            return Ok(None);
        }
        if n < 5 {
            return corrupt(format!(
                "truncated frame header at decompressed offset {}",
                self.pos
            ));
        }
        let kind = head[0];
        let len = u32::from_le_bytes([head[1], head[2], head[3], head[4]]);
        if len > MAX_FRAME_LEN {
            return corrupt(format!(
                "frame of {len} bytes exceeds the {MAX_FRAME_LEN}-byte limit"
            ));
        }
        if self.pos + 5 + u64::from(len) > self.limit {
            return corrupt(format!(
                "decompresses to more than the {} bytes recorded for it",
                self.limit
            ));
        }
        // Read through `take` so a forged length cannot allocate more than the data holds.
        let mut payload = Vec::new();
        (&mut self.r)
            .take(u64::from(len))
            .read_to_end(&mut payload)?;
        if payload.len() != len as usize {
            return corrupt(format!(
                "truncated frame at decompressed offset {}",
                self.pos
            ));
        }
        self.pos += 5 + u64::from(len);
        Ok(Some((kind, payload)))
    }

    /// The next frame whose kind is required (optional frames are skipped).
    fn next_required(&mut self) -> Result<Option<(u8, Vec<u8>)>, DecodeError> {
        loop {
            match self.next()? {
                Some((k, _)) if k >= kind::FIRST_OPTIONAL => continue,
                other => return Ok(other),
            }
        }
    }
}

fn read_full(r: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

/// A cursor over a frame payload with bounds-checked reads.
pub(super) struct Payload<'a> {
    pub(super) b: &'a [u8],
    pub(super) what: &'static str,
}

impl<'a> Payload<'a> {
    pub(super) fn take(&mut self, n: usize) -> Result<&'a [u8], DecodeError> {
        if self.b.len() < n {
            return corrupt(format!("{} frame too short", self.what));
        }
        let (h, t) = self.b.split_at(n);
        self.b = t;
        Ok(h)
    }
    pub(super) fn u8(&mut self) -> Result<u8, DecodeError> {
        Ok(self.take(1)?[0])
    }
    pub(super) fn u16(&mut self) -> Result<u16, DecodeError> {
        Ok(u16::from_le_bytes(
            self.take(2)?.try_into().expect("2 bytes"),
        ))
    }
    pub(super) fn u32(&mut self) -> Result<u32, DecodeError> {
        Ok(u32::from_le_bytes(
            self.take(4)?.try_into().expect("4 bytes"),
        ))
    }
    pub(super) fn u64(&mut self) -> Result<u64, DecodeError> {
        Ok(u64::from_le_bytes(
            self.take(8)?.try_into().expect("8 bytes"),
        ))
    }
    pub(super) fn str(&mut self, n: usize) -> Result<String, DecodeError> {
        let what = self.what;
        String::from_utf8(self.take(n)?.to_vec())
            .or_else(|_| corrupt(format!("{what} frame holds invalid UTF-8")))
    }
    pub(super) fn end(&self) -> Result<(), DecodeError> {
        if self.b.is_empty() {
            Ok(())
        } else {
            corrupt(format!(
                "{} frame has {} trailing bytes",
                self.what,
                self.b.len()
            ))
        }
    }
}

/// What the header chunk says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlobHeader {
    /// Format major version.
    pub major: u16,
    /// Format minor version.
    pub minor: u16,
    /// The snapshot id the blob was written for.
    pub snapshot_id: String,
    /// Creation time, unix milliseconds.
    pub created_at_ms: u64,
}

/// What the footer chunk says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BlobFooter {
    /// Number of namespace sections in the blob.
    pub namespaces: u32,
    /// Vectors in the blob.
    pub total_vectors: u64,
}

/// Decodes the header chunk (given as its compressed bytes, or a stream starting with it).
pub fn decode_header(compressed: impl Read) -> Result<BlobHeader, DecodeError> {
    let mut r = GzDecoder::new(compressed);
    let mut fixed = [0u8; 12];
    if read_full(&mut r, &mut fixed)? < 12 || &fixed[..8] != MAGIC {
        return corrupt("not a dakera snapshot blob (bad magic)");
    }
    let major = u16::from_le_bytes([fixed[8], fixed[9]]);
    let minor = u16::from_le_bytes([fixed[10], fixed[11]]);
    if !super::SUPPORTED_MAJORS.contains(&major) {
        return Err(DecodeError::Version { major, minor });
    }
    let frames = FrameReader::new(r, 12);
    only_frame(frames, kind::FILE_HEADER, "the header chunk", |p| {
        let mut p = Payload {
            b: p,
            what: "FILE_HEADER",
        };
        let n = p.u16()? as usize;
        let snapshot_id = p.str(n)?;
        let created_at_ms = p.u64()?;
        Ok(BlobHeader {
            major,
            minor,
            snapshot_id,
            created_at_ms,
        })
    })
}

/// Decodes the footer chunk.
pub fn decode_footer(compressed: impl Read) -> Result<BlobFooter, DecodeError> {
    let frames = FrameReader::new(GzDecoder::new(compressed), 0);
    only_frame(frames, kind::FILE_END, "the footer chunk", |p| {
        let mut p = Payload {
            b: p,
            what: "FILE_END",
        };
        let footer = BlobFooter {
            namespaces: p.u32()?,
            total_vectors: p.u64()?,
        };
        p.end()?;
        Ok(footer)
    })
}

/// Reads the one frame a small chunk holds: it must be of kind `want`, and nothing but
/// optional frames may follow it.
pub(super) fn only_frame<R: Read, T>(
    mut frames: FrameReader<R>,
    want: u8,
    what: &str,
    parse: impl FnOnce(&[u8]) -> Result<T, DecodeError>,
) -> Result<T, DecodeError> {
    let payload = match frames.next_required()? {
        Some((k, p)) if k == want => p,
        Some((k, _)) => {
            return corrupt(format!(
                "{what} holds a frame of kind {k:#04x}, not {want:#04x}"
            ))
        }
        None => return corrupt(format!("{what} is empty (truncated?)")),
    };
    let value = parse(&payload)?;
    if frames.next_required()?.is_some() {
        return corrupt(format!("{what} holds more than one frame"));
    }
    Ok(value)
}

/// Decodes a namespace's chunk-index chunk (format 2), decompressing at most `raw_limit`
/// bytes (its recorded raw length).
pub fn decode_index_chunk(
    compressed: &[u8],
    raw_limit: u64,
) -> Result<super::index::NamespaceIndex, DecodeError> {
    let mut raw = Vec::new();
    super::gzip::read_members(compressed, raw_limit, &mut raw)?;
    let mut frames = FrameReader::new(&raw[..], 0);
    frames.limit = raw_limit;
    only_frame(
        frames,
        kind::CHUNK_INDEX,
        "the chunk index",
        super::index::NamespaceIndex::decode,
    )
}

/// Decodes a snapshot's directory chunk (format 3) of `raw_length` decompressed bytes (its
/// recorded length), a frame at a time; returns it with the SHA-256 of its decompressed
/// bytes.
pub fn decode_directory_chunk(
    compressed: &[u8],
    raw_length: u64,
) -> Result<(super::directory::Directory, [u8; 32]), DecodeError> {
    let r = MultiGzDecoder::new(compressed).take(raw_length.saturating_add(1));
    super::directory::decode_from(r, raw_length)
}

/// What an NS_HEADER frame says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NamespaceHeader {
    /// The namespace's name.
    pub name: String,
    /// Its dimension (0 = never held a vector).
    pub dimension: u32,
    /// How its vectors are laid out.
    pub filter: Filter,
}

fn parse_ns_header(p: &[u8]) -> Result<NamespaceHeader, DecodeError> {
    let mut p = Payload {
        b: p,
        what: "NS_HEADER",
    };
    let n = p.u16()? as usize;
    let name = p.str(n)?;
    let dimension = p.u32()?;
    let flags = p.u32()?;
    p.end()?;
    let Some(filter) = Filter::from_flags(flags) else {
        return corrupt(format!(
            "namespace {name:?} uses flags {flags:#x} this version does not know (written by a newer version?)"
        ));
    };
    if dimension > MAX_DIMENSION {
        return corrupt(format!(
            "dimension {dimension} exceeds the limit of {MAX_DIMENSION}"
        ));
    }
    Ok(NamespaceHeader {
        name,
        dimension,
        filter,
    })
}

fn parse_ns_end(p: &[u8]) -> Result<(u64, [u8; 32]), DecodeError> {
    let mut p = Payload {
        b: p,
        what: "NS_END",
    };
    let count = p.u64()?;
    let digest: [u8; 32] = p.take(32)?.try_into().expect("32 bytes");
    p.end()?;
    Ok((count, digest))
}

/// Decodes a namespace's header chunk.
pub fn decode_ns_header_chunk(compressed: impl Read) -> Result<NamespaceHeader, DecodeError> {
    let frames = FrameReader::new(MultiGzDecoder::new(compressed), 0);
    only_frame(
        frames,
        kind::NS_HEADER,
        "a namespace's header chunk",
        parse_ns_header,
    )
}

/// Decodes a namespace's end chunk: the vector count and content digest it records.
pub fn decode_ns_end_chunk(compressed: impl Read) -> Result<(u64, [u8; 32]), DecodeError> {
    let frames = FrameReader::new(MultiGzDecoder::new(compressed), 0);
    only_frame(
        frames,
        kind::NS_END,
        "a namespace's end chunk",
        parse_ns_end,
    )
}

/// One chunk of vectors, decoded.
#[derive(Debug, Default)]
pub struct DecodedChunk {
    /// The vectors, in id order.
    pub vectors: Vec<Vector>,
    /// Per-vector hashes, for the content digest ([`ContentDigest`]).
    pub vector_hashes: Vec<[u8; 32]>,
}

/// Appends the vectors of one data frame (VECTOR or BLOCK) to `out`, checking it against the
/// namespace's dimension and filter, and that ids ascend strictly after `last_id` (which
/// carries the order check across frames, batches and chunks).
fn decode_data_frame(
    k: u8,
    payload: &[u8],
    dimension: u32,
    filter: Filter,
    out: &mut DecodedChunk,
    last_id: &mut Option<String>,
) -> Result<(), DecodeError> {
    let first_new = out.vectors.len();
    match (k, filter) {
        (kind::VECTOR, Filter::None) => {
            out.vectors.push(decode_vector(payload, dimension)?);
            let mut h = Sha256::new();
            h.update([kind::VECTOR]);
            h.update((payload.len() as u32).to_le_bytes());
            h.update(payload);
            out.vector_hashes.push(h.finalize().into());
        }
        (kind::BLOCK, Filter::Shuffle) => decode_block(payload, dimension, out)?,
        (kind::VECTOR | kind::BLOCK, _) => {
            return corrupt(format!(
                "frame kind {k:#04x} does not match the namespace's filter {filter:?}"
            ))
        }
        (other, _) => return corrupt(format!("unexpected frame kind {other:#04x} among vectors")),
    }
    for v in &out.vectors[first_new..] {
        if let Some(last) = last_id.as_deref() {
            if v.id.as_bytes() <= last.as_bytes() {
                return corrupt(format!("vector ids out of order at {:?}", v.id));
            }
        }
        *last_id = Some(v.id.clone());
    }
    Ok(())
}

#[cfg(any(test, feature = "test-util"))]
/// Decodes one data chunk (its gzip members) of a namespace with this dimension and filter.
pub fn decode_chunk(
    compressed: impl Read,
    dimension: u32,
    filter: Filter,
) -> Result<DecodedChunk, DecodeError> {
    decode_chunk_within(compressed, dimension, filter, u64::MAX)
}

/// [`decode_chunk`] that refuses to decompress more than `raw_limit` bytes (the chunk's
/// `raw_length` from the sidecar), so damaged or forged data cannot make it allocate more
/// than the sidecar declared.
#[cfg(any(test, feature = "test-util"))]
pub fn decode_chunk_within(
    compressed: impl Read,
    dimension: u32,
    filter: Filter,
    raw_limit: u64,
) -> Result<DecodedChunk, DecodeError> {
    decode_frames(
        MultiGzDecoder::new(compressed),
        dimension,
        filter,
        raw_limit,
    )
}

/// Decodes the data frames of decompressed chunk content.
fn decode_frames(
    raw: impl Read,
    dimension: u32,
    filter: Filter,
    raw_limit: u64,
) -> Result<DecodedChunk, DecodeError> {
    let mut frames = FrameReader {
        r: raw,
        pos: 0,
        limit: raw_limit,
    };
    let mut out = DecodedChunk::default();
    let mut last_id = None;
    while let Some((k, payload)) = frames.next_required()? {
        decode_data_frame(k, &payload, dimension, filter, &mut out, &mut last_id)?;
    }
    Ok(out)
}

/// What a chunk's content must match, besides its frames.
#[derive(Debug, Clone, Copy)]
pub enum RawCheck<'a> {
    /// At most this many bytes (format 1: the sidecar's `raw_length`).
    AtMost(u64),
    /// Exactly this many bytes (format 2: the index's `raw_length`).
    Exactly(u64),
    /// Exactly this many bytes, whose SHA-256 is this (format 2, when the chunk's identity
    /// is checked).
    Hashed(u64, &'a [u8; 32]),
}

/// Decodes one chunk from its compressed bytes (its gzip members), checking its content
/// as `check` says.
pub fn decode_chunk_slice(
    compressed: &[u8],
    dimension: u32,
    filter: Filter,
    check: RawCheck<'_>,
) -> Result<DecodedChunk, DecodeError> {
    let (RawCheck::AtMost(raw_length)
    | RawCheck::Exactly(raw_length)
    | RawCheck::Hashed(raw_length, _)) = check;
    let mut raw = Vec::with_capacity(raw_length.min(MAX_FRAME_LEN as u64) as usize);
    super::gzip::read_members(compressed, raw_length, &mut raw)?;
    let exact = !matches!(check, RawCheck::AtMost(_));
    if exact && raw.len() as u64 != raw_length {
        return corrupt(format!(
            "decompresses to {} bytes, its index records {raw_length}",
            raw.len()
        ));
    }
    if let RawCheck::Hashed(_, sha256) = check {
        if Sha256::digest(&raw).as_slice() != sha256 {
            return corrupt("the chunk's content does not match its recorded SHA-256");
        }
    }
    decode_frames(&raw[..], dimension, filter, raw_length)
}

#[cfg(any(test, feature = "test-util"))]
/// What a decoded namespace section turned out to hold.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NamespaceSummary {
    /// The name in the NS_HEADER frame.
    pub name: String,
    /// The dimension (0 = never held a vector).
    pub dimension: u32,
    /// How its vectors were laid out.
    pub filter: Filter,
    /// Vectors decoded.
    pub vectors: u64,
    /// Content digest recomputed from the data.
    pub digest: [u8; 32],
}

#[cfg(any(test, feature = "test-util"))]
/// Decodes one whole namespace section sequentially from its compressed bytes (all its
/// chunks), handing vectors to `sink` in batches of up to `batch` vectors. Needs no sidecar:
/// this is how a blob is read without one, and what the fuzz tests drive.
///
/// Checks gzip CRCs and lengths, frame structure, UTF-8, dimensions, the filter, ascending
/// ids, and the count and digest the NS_END frame records against what was decoded. The
/// caller compares the summary with the sidecar.
pub fn decode_namespace<R, F>(
    compressed: R,
    batch: usize,
    mut sink: F,
) -> Result<NamespaceSummary, DecodeError>
where
    R: Read,
    F: FnMut(Vec<Vector>) -> Result<(), DecodeError>,
{
    let mut frames = FrameReader::new(MultiGzDecoder::new(compressed), 0);
    let Some((kind::NS_HEADER, p)) = frames.next_required()? else {
        return corrupt("namespace section does not start with an NS_HEADER frame");
    };
    let header = parse_ns_header(&p)?;
    let mut digest = ContentDigest::new(header.dimension);
    let mut count = 0u64;
    let mut last_id = None;
    let mut pending = DecodedChunk::default();
    loop {
        let Some((k, payload)) = frames.next_required()? else {
            return corrupt(format!(
                "namespace {:?} ends without its NS_END frame (truncated?)",
                header.name
            ));
        };
        if k == kind::NS_END {
            let (recorded, recorded_digest) = parse_ns_end(&payload)?;
            digest.add(&pending.vector_hashes);
            count += pending.vectors.len() as u64;
            let actual = digest.finish();
            if recorded != count {
                return corrupt(format!(
                    "namespace {:?} holds {count} vectors, its end frame says {recorded}",
                    header.name
                ));
            }
            if recorded_digest != actual {
                return corrupt(format!(
                    "namespace {:?} content digest mismatch",
                    header.name
                ));
            }
            if frames.next_required()?.is_some() {
                return corrupt(format!("data after the end of namespace {:?}", header.name));
            }
            if !pending.vectors.is_empty() {
                sink(pending.vectors)?;
            }
            return Ok(NamespaceSummary {
                name: header.name,
                dimension: header.dimension,
                filter: header.filter,
                vectors: count,
                digest: actual,
            });
        }
        decode_data_frame(
            k,
            &payload,
            header.dimension,
            header.filter,
            &mut pending,
            &mut last_id,
        )?;
        if pending.vectors.len() >= batch {
            let full = std::mem::take(&mut pending);
            digest.add(&full.vector_hashes);
            count += full.vectors.len() as u64;
            sink(full.vectors)?;
        }
    }
}

fn decode_vector(payload: &[u8], dimension: u32) -> Result<Vector, DecodeError> {
    let mut p = Payload {
        b: payload,
        what: "VECTOR",
    };
    let flags = p.u8()?;
    let id = read_id(&mut p, flags)?;
    if dimension == 0 {
        return corrupt("vector in a namespace of dimension 0");
    }
    let values = f32s(p.take(4 * dimension as usize)?);
    let (ttl_seconds, expires_at, metadata) = read_tail(&mut p, flags, &id)?;
    p.end()?;
    Ok(Vector {
        id,
        values,
        metadata,
        ttl_seconds,
        expires_at,
    })
}

fn f32s(raw: &[u8]) -> Vec<f32> {
    raw.chunks_exact(4)
        .map(|c| f32::from_le_bytes(c.try_into().expect("4 bytes")))
        .collect()
}

fn read_id(p: &mut Payload<'_>, flags: u8) -> Result<String, DecodeError> {
    if flags & !(FLAG_METADATA | FLAG_TTL | FLAG_EXPIRES) != 0 {
        return corrupt(format!("unknown vector flags {flags:#04x}"));
    }
    let id_len = p.u32()? as usize;
    p.str(id_len)
}

type Tail = (Option<u64>, Option<u64>, Option<serde_json::Value>);

/// The optional fields after a vector's values: ttl, expiry, metadata.
fn read_tail(p: &mut Payload<'_>, flags: u8, id: &str) -> Result<Tail, DecodeError> {
    let ttl = if flags & FLAG_TTL != 0 {
        Some(p.u64()?)
    } else {
        None
    };
    let expires = if flags & FLAG_EXPIRES != 0 {
        Some(p.u64()?)
    } else {
        None
    };
    let metadata = if flags & FLAG_METADATA != 0 {
        let n = p.u32()? as usize;
        let bytes = p.take(n)?;
        Some(
            serde_json::from_slice(bytes)
                .or_else(|e| corrupt(format!("metadata of {id:?} is not JSON: {e}")))?,
        )
    } else {
        None
    };
    Ok((ttl, expires, metadata))
}

/// Decodes a BLOCK payload: `count`, the records, then the four byte planes.
fn decode_block(payload: &[u8], dimension: u32, out: &mut DecodedChunk) -> Result<(), DecodeError> {
    let mut p = Payload {
        b: payload,
        what: "BLOCK",
    };
    let count = p.u32()? as usize;
    let dim = dimension as usize;
    if dim == 0 && count > 0 {
        return corrupt("vectors in a namespace of dimension 0");
    }
    // Every record takes at least 5 bytes and every vector 4 * dim: check before allocating.
    let values_len = count
        .checked_mul(4 * dim)
        .filter(|n| n.saturating_add(5 * count) <= payload.len());
    let Some(values_len) = values_len else {
        return corrupt(format!(
            "BLOCK frame claims {count} vectors, more than it holds"
        ));
    };
    let planes_start = payload.len() - values_len;
    let (records, planes) = payload.split_at(planes_start);
    let n = dim * count;
    let (p3, rest) = planes.split_at(n);
    let (p2, rest) = rest.split_at(n);
    let (p1, p0) = rest.split_at(n);
    let mut p = Payload {
        b: &records[4..],
        what: "BLOCK",
    };
    out.vectors.reserve(count);
    out.vector_hashes.reserve(count);
    for i in 0..count {
        let rec_start = p.b;
        let flags = p.u8()?;
        let id = read_id(&mut p, flags)?;
        let head_len = rec_start.len() - p.b.len();
        let values: Vec<f32> = (i * dim..(i + 1) * dim)
            .map(|j| f32::from_bits(u32::from_le_bytes([p0[j], p1[j], p2[j], p3[j]])))
            .collect();
        let tail_start = p.b;
        let (ttl_seconds, expires_at, metadata) = read_tail(&mut p, flags, &id)?;
        let tail = &tail_start[..tail_start.len() - p.b.len()];
        out.vector_hashes
            .push(hash_vector_frame(&rec_start[..head_len], &values, tail));
        out.vectors.push(Vector {
            id,
            values,
            metadata,
            ttl_seconds,
            expires_at,
        });
    }
    p.end()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn vectors(n: usize, dim: usize) -> Vec<Vector> {
        (0..n)
            .map(|i| {
                let values = (0..dim)
                    .map(|j| ((i * dim + j) as f32 * 0.37).sin())
                    .collect();
                let mut v = Vector::new(format!("v{i:05}"), values);
                if i % 2 == 0 {
                    v = v.with_metadata(json!({"i": i, "text": "héllo"}));
                }
                if i % 3 == 0 {
                    v.ttl_seconds = Some(60);
                    v.expires_at = Some(1_000 + i as u64);
                }
                v
            })
            .collect()
    }

    /// A whole namespace section: header chunk, data chunks of `per_chunk` vectors, end chunk.
    fn section(vs: &[Vector], dim: u32, filter: Filter, per_chunk: usize) -> (Vec<u8>, [u8; 32]) {
        let mut out = compress_member(&encode_ns_header("ns", dim, filter), 1);
        let mut h = ContentDigest::new(dim);
        for c in vs.chunks(per_chunk.max(1)) {
            let e = encode_chunk(c, dim, true, filter, Some(2)).unwrap();
            h.add(&e.vector_hashes);
            out.extend(e.bytes);
        }
        let digest = h.finish();
        out.extend(compress_member(&encode_ns_end(vs.len() as u64, &digest), 1));
        (out, digest)
    }

    #[test]
    fn sections_round_trip_with_either_filter_and_any_chunking() {
        let vs = vectors(300, 8);
        for filter in [Filter::None, Filter::Shuffle] {
            for per_chunk in [1, 7, 300] {
                let (bytes, digest) = section(&vs, 8, filter, per_chunk);
                let mut got = Vec::new();
                let s = decode_namespace(&bytes[..], 11, |b| {
                    assert!(b.len() <= 11 + 300);
                    got.extend(b);
                    Ok(())
                })
                .unwrap();
                assert_eq!(got, vs, "{filter:?} {per_chunk}");
                assert_eq!((s.vectors, s.digest, s.filter), (300, digest, filter));
            }
        }
    }

    #[test]
    fn a_chunk_never_decompresses_past_its_recorded_size() {
        let vs = vectors(40, 8);
        let chunk = encode_chunk(&vs, 8, true, Filter::Shuffle, Some(2)).unwrap();
        let exact = chunk.raw_len;
        let ok = decode_chunk_within(&chunk.bytes[..], 8, Filter::Shuffle, exact).unwrap();
        assert_eq!(ok.vectors, vs);
        let err = decode_chunk_within(&chunk.bytes[..], 8, Filter::Shuffle, exact - 1).unwrap_err();
        assert!(format!("{err:?}").contains("more than the"), "{err:?}");
        // A member inflating to far more than recorded stops at the limit.
        let bomb = compress_member(&vec![0u8; 8 << 20], 9);
        assert!(bomb.len() < 64 << 10);
        assert!(decode_chunk_within(&bomb[..], 8, Filter::None, 4096).is_err());
    }

    #[test]
    fn the_digest_ignores_filter_level_and_chunking() {
        let vs = vectors(50, 4);
        let a = section(&vs, 4, Filter::None, 3).1;
        let b = section(&vs, 4, Filter::Shuffle, 50).1;
        assert_eq!(a, b);
    }

    #[test]
    fn a_chunk_decodes_alone_and_yields_the_same_vector_hashes() {
        let vs = vectors(40, 6);
        let plain = encode_chunk(&vs, 6, true, Filter::None, Some(2)).unwrap();
        let shuffled = encode_chunk(&vs, 6, true, Filter::Shuffle, Some(2)).unwrap();
        assert_eq!(plain.vector_hashes, shuffled.vector_hashes);
        assert_eq!(shuffled.crc32, crc32fast::hash(&shuffled.bytes));
        let d = decode_chunk(&shuffled.bytes[..], 6, Filter::Shuffle).unwrap();
        assert_eq!(d.vectors, vs);
        assert_eq!(d.vector_hashes, plain.vector_hashes);
        let d = decode_chunk(&plain.bytes[..], 6, Filter::None).unwrap();
        assert_eq!(d.vector_hashes, plain.vector_hashes);
        assert!(
            decode_chunk(&shuffled.bytes[..], 6, Filter::None).is_err(),
            "filter must match"
        );
        assert!(
            decode_chunk(&plain.bytes[..], 7, Filter::None).is_err(),
            "dimension must match"
        );
        // a digest-only pass produces no bytes
        let only = encode_chunk(&vs, 6, true, Filter::Shuffle, None).unwrap();
        assert!(only.bytes.is_empty());
        assert_eq!(only.vector_hashes, plain.vector_hashes);
    }

    /// Encodes `vs` as one chunk with `choice`, and checks it decodes back.
    fn encode_one(vs: &[Vector], dim: u32, choice: &mut MantissaChoice) -> usize {
        let never = |_: &[u8; 32]| false;
        let dedup = Dedup {
            identity: Identity::Vectors,
            known: &never,
            seal: None,
        };
        let cuts = [vs.len()];
        let framed = FramedVectors::of(vs, dim, true).unwrap();
        let mut batch = EncodedBatch::default();
        let shuffle = Filter::Shuffle;
        encode_batch(&mut batch, &framed, &cuts, shuffle, Some(1), &dedup, choice).unwrap();
        let decoded = decode_chunk(&batch.bytes[..], dim, Filter::Shuffle).unwrap();
        assert_eq!(decoded.vectors, vs);
        batch.bytes.len()
    }

    #[test]
    fn mantissa_planes_are_decided_once_per_run_by_a_sample_large_enough() {
        let quantized = |n: usize, dim: usize| -> Vec<Vector> {
            (0..n)
                .map(|i| {
                    let values = (0..dim).map(|j| ((i + j) % 4) as f32 * 0.25).collect();
                    Vector::new(format!("q{i:05}"), values)
                })
                .collect()
        };
        let mut choice = MantissaChoice::default();
        // One vector of 64 values: 192 mantissa bytes, too few to tell; stored, undecided.
        encode_one(&quantized(1, 64), 64, &mut choice);
        assert_eq!(choice.decided, None);
        // Zero mantissas in a large enough sample: deflated, and so for the rest of the run.
        let compressible = encode_one(&quantized(20, 64), 64, &mut choice);
        assert_eq!(choice.decided, Some(1));
        let near_random = vectors(20, 64);
        let deflated = encode_one(&near_random, 64, &mut choice);
        assert_eq!(choice.decided, Some(1), "the choice holds for the run");
        // A run that starts with near-random mantissas stores them.
        let mut fresh = MantissaChoice::default();
        let stored = encode_one(&near_random, 64, &mut fresh);
        assert_eq!(fresh.decided, Some(0));
        assert!(compressible < 20 * 64 * 2, "{compressible} bytes");
        assert_ne!(
            stored, deflated,
            "the two runs coded the same chunk differently"
        );
    }

    #[test]
    fn the_encoder_rejects_bad_vectors() {
        let bad_dim = [Vector::new("a", vec![1.0; 4])];
        assert!(matches!(
            encode_chunk(&bad_dim, 3, true, Filter::Shuffle, Some(2)),
            Err(EncodeError::Dimension { .. })
        ));
        let disorder = [
            Vector::new("b", vec![1.0; 3]),
            Vector::new("a", vec![1.0; 3]),
        ];
        assert!(matches!(
            encode_chunk(&disorder, 3, true, Filter::None, Some(2)),
            Err(EncodeError::Invalid(_))
        ));
        let empty = [Vector::new("a", vec![])];
        assert!(encode_chunk(&empty, 0, true, Filter::None, Some(2)).is_err());
    }

    #[test]
    fn header_footer_round_trip_and_version_check() {
        let h = compress_member(&encode_header("snap-1", 42), 6);
        let got = decode_header(&h[..]).unwrap();
        assert_eq!(
            (got.snapshot_id.as_str(), got.created_at_ms, got.major),
            ("snap-1", 42, FORMAT_MAJOR)
        );
        let f = compress_member(&encode_footer(3, 99), 6);
        assert_eq!(
            decode_footer(&f[..]).unwrap(),
            BlobFooter {
                namespaces: 3,
                total_vectors: 99
            }
        );

        let mut future = encode_header("x", 1);
        future[8..10].copy_from_slice(&4u16.to_le_bytes());
        let err = decode_header(&compress_member(&future, 1)[..]).unwrap_err();
        assert!(matches!(err, DecodeError::Version { major: 4, .. }));
        let mut old = encode_header("x", 1);
        old[8..10].copy_from_slice(&1u16.to_le_bytes());
        assert_eq!(
            decode_header(&compress_member(&old, 1)[..]).unwrap().major,
            1
        );
        assert!(matches!(
            decode_header(&compress_member(b"PK\x03\x04 not ours", 1)[..]),
            Err(DecodeError::Corrupt(_))
        ));
    }

    #[test]
    fn every_truncation_and_flip_is_detected() {
        for filter in [Filter::None, Filter::Shuffle] {
            let vs = vectors(20, 4);
            let (bytes, _) = section(&vs, 4, filter, 6);
            for cut in 0..bytes.len() {
                assert!(
                    decode_namespace(&bytes[..cut], 16, |_| Ok(())).is_err(),
                    "{filter:?} truncation at {cut}"
                );
            }
            for i in 0..bytes.len() {
                let mut b = bytes.clone();
                b[i] ^= 0x20;
                // Some gzip header bytes (mtime, OS, extra flags) are not covered by any check and
                // do not change the content; the data itself must decode identically or fail.
                let mut got = Vec::new();
                if decode_namespace(&b[..], 16, |v| {
                    got.extend(v);
                    Ok(())
                })
                .is_ok()
                {
                    assert_eq!(
                        got, vs,
                        "{filter:?}: flip at {i} changed content undetected"
                    );
                }
            }
        }
    }

    #[test]
    fn unknown_optional_frames_are_skipped_and_required_ones_rejected() {
        let vs = vec![Vector::new("a", vec![1.0, 2.0])];
        let mut raw = encode_ns_header("ns", 2, Filter::None);
        let e = encode_chunk(&vs, 2, true, Filter::None, Some(2)).unwrap();
        let mut frames = Vec::new();
        flate2::read::GzDecoder::new(&e.bytes[..])
            .read_to_end(&mut frames)
            .unwrap();
        raw.extend(&frames);
        put_frame(&mut raw, 0x7f, b"future optional data");
        let digest = {
            let mut h = ContentDigest::new(2);
            h.add(&e.vector_hashes);
            h.finish()
        };
        raw.extend(encode_ns_end(1, &digest));
        assert_eq!(
            decode_namespace(&compress_member(&raw, 1)[..], 8, |_| Ok(()))
                .unwrap()
                .vectors,
            1
        );
        let at = raw.len() - 45; // the NS_END frame's kind byte
        assert_eq!(raw[at], kind::NS_END);
        raw[at] = 0x3f;
        assert!(decode_namespace(&compress_member(&raw, 1)[..], 8, |_| Ok(())).is_err());
    }

    #[test]
    fn unknown_namespace_flags_are_refused() {
        let mut raw = encode_ns_header("ns", 2, Filter::None);
        let flags_at = raw.len() - 4;
        raw[flags_at] = 2;
        let err = decode_ns_header_chunk(&compress_member(&raw, 1)[..]).unwrap_err();
        assert!(matches!(err, DecodeError::Corrupt(m) if m.contains("flags")));
    }

    #[test]
    fn forged_lengths_and_counts_do_not_allocate() {
        let mut raw = vec![kind::NS_HEADER];
        raw.extend_from_slice(&u32::MAX.to_le_bytes());
        let err = decode_namespace(&compress_member(&raw, 1)[..], 8, |_| Ok(())).unwrap_err();
        assert!(matches!(err, DecodeError::Corrupt(m) if m.contains("limit")));
        let mut raw = vec![kind::NS_HEADER];
        raw.extend_from_slice(&MAX_FRAME_LEN.to_le_bytes());
        raw.extend_from_slice(b"short");
        assert!(decode_namespace(&compress_member(&raw, 1)[..], 8, |_| Ok(())).is_err());
        // a BLOCK that claims a billion vectors of a huge dimension
        let mut block = Vec::new();
        put_frame(&mut block, kind::BLOCK, &1_000_000_000u32.to_le_bytes());
        let err = decode_chunk(
            &compress_member(&block, 1)[..],
            MAX_DIMENSION,
            Filter::Shuffle,
        )
        .unwrap_err();
        assert!(matches!(err, DecodeError::Corrupt(m) if m.contains("more than it holds")));
    }

    #[test]
    fn shuffle_beats_plain_on_embeddings_and_keeps_up_on_regular_data() {
        let mut seed = 0x9E37_79B9_7F4A_7C15u64;
        let mut next = || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            (seed >> 40) as f32 / (1u64 << 24) as f32 - 0.5
        };
        let embeddings: Vec<Vector> = (0..200)
            .map(|i| Vector::new(format!("{i:04}"), (0..256).map(|_| next() * 0.1).collect()))
            .collect();
        let regular: Vec<Vector> = (0..200)
            .map(|i| {
                let raw = (0..256)
                    .map(|j| ((i * 7919 + j * 104_729) % 1000) as f32 / 1000.0 - 0.5)
                    .collect();
                Vector::new(format!("{i:04}"), raw)
            })
            .collect();
        let size = |vs: &[Vector], f| encode_chunk(vs, 256, true, f, Some(2)).unwrap().bytes.len();
        let (p, s) = (
            size(&embeddings, Filter::None),
            size(&embeddings, Filter::Shuffle),
        );
        assert!(s * 100 < p * 95, "embeddings: shuffle {s} vs plain {p}");
        let (p, s) = (
            size(&regular, Filter::None),
            size(&regular, Filter::Shuffle),
        );
        assert!(
            s <= p * 2,
            "regular data: shuffle {s} must stay close to plain {p}"
        );
    }
}
