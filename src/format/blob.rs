//! The blob codec.
//!
//! A blob is a concatenation of independent gzip members (so `zcat` reads it whole). Its
//! decompressed content is:
//!
//! ```text
//! MAGIC "DKSNAP\r\n" | major u16 | minor u16 | FILE_HEADER frame     <- header member
//! NS_HEADER frame | VECTOR frame* | NS_END frame                     <- one or more members
//! ...one section per namespace...
//! FILE_END frame                                                     <- footer member
//! ```
//!
//! A frame is `kind u8 | len u32 LE | payload[len]`. A member always holds whole frames and
//! never spans two namespaces, so each namespace (and each member) decodes on its own from the
//! byte range the sidecar records. All integers are little-endian. `docs/FORMAT.md` has the
//! byte-level layout of every payload.

use super::{FORMAT_MAJOR, FORMAT_MINOR};
use crate::storage::Vector;
use flate2::read::GzDecoder;
use flate2::write::GzEncoder;
use flate2::Compression;
use sha2::{Digest, Sha256};
use std::io::{self, Read, Write};

/// The first eight bytes of every blob's decompressed content.
pub const MAGIC: &[u8; 8] = b"DKSNAP\r\n";

/// Frame kinds. Kinds `0x00..0x40` are required: a reader that meets an unknown one stops
/// with an error. Kinds `0x40..=0xFF` are optional: readers skip ones they do not know.
pub mod kind {
    /// Snapshot id and creation time.
    pub const FILE_HEADER: u8 = 0x01;
    /// Start of a namespace: name, dimension, flags.
    pub const NS_HEADER: u8 = 0x02;
    /// One vector.
    pub const VECTOR: u8 = 0x03;
    /// End of a namespace: vector count and content digest.
    pub const NS_END: u8 = 0x04;
    /// End of the blob: namespace count and total vectors.
    pub const FILE_END: u8 = 0x05;
    /// First optional kind.
    pub const FIRST_OPTIONAL: u8 = 0x40;
}

/// Largest frame payload accepted (64 MiB): a bound on what a forged length can allocate.
pub const MAX_FRAME_LEN: u32 = 64 << 20;
/// Largest dimension accepted.
pub const MAX_DIMENSION: u32 = 1 << 20;

const FLAG_METADATA: u8 = 1;
const FLAG_TTL: u8 = 2;
const FLAG_EXPIRES: u8 = 4;

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

fn corrupt<T>(msg: impl Into<String>) -> Result<T, DecodeError> {
    Err(DecodeError::Corrupt(msg.into()))
}

/// Compresses `raw` into one gzip member at `level` (0 = stored, no compression).
pub fn compress_member(raw: &[u8], level: u32) -> Vec<u8> {
    let mut enc = GzEncoder::new(
        Vec::with_capacity(raw.len() / 2 + 64),
        Compression::new(level),
    );
    enc.write_all(raw).expect("writing to a Vec cannot fail");
    enc.finish().expect("writing to a Vec cannot fail")
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

/// The decompressed content of the header member.
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

/// The decompressed content of the footer member.
pub fn encode_footer(namespaces: u32, total_vectors: u64) -> Vec<u8> {
    let mut p = Vec::with_capacity(12);
    p.extend_from_slice(&namespaces.to_le_bytes());
    p.extend_from_slice(&total_vectors.to_le_bytes());
    let mut buf = Vec::new();
    put_frame(&mut buf, kind::FILE_END, &p);
    buf
}

/// Frames one namespace's vectors into raw (uncompressed) member content, hashing as it
/// goes. The caller pushes vectors in id order, takes full chunks with [`take_chunk`]
/// (each becomes a gzip member) and ends with [`finish`].
///
/// The content digest is SHA-256 over the dimension (u32 LE) followed by every VECTOR frame
/// exactly as encoded; it does not depend on compression or on the namespace's name, so an
/// unchanged namespace has the same digest in every snapshot written by the same format.
///
/// [`take_chunk`]: NamespaceEncoder::take_chunk
/// [`finish`]: NamespaceEncoder::finish
#[derive(Debug)]
pub struct NamespaceEncoder {
    dimension: u32,
    include_metadata: bool,
    buf: Vec<u8>,
    buf_vectors: u64,
    hasher: Sha256,
    count: u64,
    last_id: Option<String>,
}

/// Why a vector could not be encoded.
#[derive(Debug, PartialEq)]
pub enum EncodeError {
    /// Its length differs from the namespace's dimension.
    Dimension {
        /// The namespace's dimension.
        expected: u32,
        /// The vector's length.
        actual: usize,
    },
    /// Something about it cannot be stored (empty values, id too long, ids out of order).
    Invalid(String),
}

impl NamespaceEncoder {
    /// Starts a namespace section. `dimension` is 0 only for a namespace that never held a
    /// vector; such a namespace accepts no vectors.
    pub fn new(name: &str, dimension: u32, include_metadata: bool) -> Self {
        let mut p = Vec::new();
        put_str16(&mut p, name);
        p.extend_from_slice(&dimension.to_le_bytes());
        p.extend_from_slice(&0u32.to_le_bytes()); // flags: none defined in 1.0
        let mut buf = Vec::with_capacity(1 << 16);
        put_frame(&mut buf, kind::NS_HEADER, &p);
        let mut hasher = Sha256::new();
        hasher.update(dimension.to_le_bytes());
        NamespaceEncoder {
            dimension,
            include_metadata,
            buf,
            buf_vectors: 0,
            hasher,
            count: 0,
            last_id: None,
        }
    }

    /// Appends one vector.
    pub fn push(&mut self, v: &Vector) -> Result<(), EncodeError> {
        if v.values.len() != self.dimension as usize || v.values.is_empty() {
            return Err(EncodeError::Dimension {
                expected: self.dimension,
                actual: v.values.len(),
            });
        }
        if let Some(last) = &self.last_id {
            if v.id.as_bytes() <= last.as_bytes() {
                return Err(EncodeError::Invalid(format!(
                    "vector ids must arrive in ascending order without repeats ({:?} after {last:?})",
                    v.id
                )));
            }
        }
        let meta = match (&v.metadata, self.include_metadata) {
            (Some(m), true) => Some(serde_json::to_vec(m).expect("a Value always serializes")),
            _ => None,
        };
        let mut flags = 0u8;
        let mut len = 1 + 4 + v.id.len() + 4 * v.values.len();
        if let Some(m) = &meta {
            flags |= FLAG_METADATA;
            len += 4 + m.len();
        }
        if v.ttl_seconds.is_some() {
            flags |= FLAG_TTL;
            len += 8;
        }
        if v.expires_at.is_some() {
            flags |= FLAG_EXPIRES;
            len += 8;
        }
        if len > MAX_FRAME_LEN as usize {
            return Err(EncodeError::Invalid(format!(
                "vector {:?} encodes to {len} bytes, more than the {MAX_FRAME_LEN}-byte frame limit",
                v.id
            )));
        }
        let start = self.buf.len();
        self.buf.reserve(5 + len);
        self.buf.push(kind::VECTOR);
        self.buf.extend_from_slice(&(len as u32).to_le_bytes());
        self.buf.push(flags);
        self.buf
            .extend_from_slice(&(v.id.len() as u32).to_le_bytes());
        self.buf.extend_from_slice(v.id.as_bytes());
        for x in &v.values {
            self.buf.extend_from_slice(&x.to_le_bytes());
        }
        if let Some(t) = v.ttl_seconds {
            self.buf.extend_from_slice(&t.to_le_bytes());
        }
        if let Some(t) = v.expires_at {
            self.buf.extend_from_slice(&t.to_le_bytes());
        }
        if let Some(m) = &meta {
            self.buf.extend_from_slice(&(m.len() as u32).to_le_bytes());
            self.buf.extend_from_slice(m);
        }
        self.hasher.update(&self.buf[start..]);
        self.count += 1;
        self.buf_vectors += 1;
        self.last_id = Some(v.id.clone());
        Ok(())
    }

    /// Bytes buffered for the current member.
    pub fn buffered(&self) -> usize {
        self.buf.len()
    }

    /// Takes the buffered raw member content (whole frames) and the number of vectors in it.
    pub fn take_chunk(&mut self) -> (Vec<u8>, u64) {
        let n = std::mem::take(&mut self.buf_vectors);
        (
            std::mem::replace(&mut self.buf, Vec::with_capacity(1 << 16)),
            n,
        )
    }

    /// Ends the section: returns the last raw member content (with the NS_END frame), its
    /// vector count, the namespace's total vector count and its content digest.
    pub fn finish(mut self) -> (Vec<u8>, u64, u64, [u8; 32]) {
        let digest: [u8; 32] = self.hasher.finalize().into();
        let mut p = Vec::with_capacity(40);
        p.extend_from_slice(&self.count.to_le_bytes());
        p.extend_from_slice(&digest);
        put_frame(&mut self.buf, kind::NS_END, &p);
        (self.buf, self.buf_vectors, self.count, digest)
    }
}

/// Reads frames from decompressed content.
struct FrameReader<R: Read> {
    r: R,
    /// Decompressed bytes consumed so far.
    pos: u64,
}

impl<R: Read> FrameReader<R> {
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
struct Payload<'a> {
    b: &'a [u8],
    what: &'static str,
}

impl<'a> Payload<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], DecodeError> {
        if self.b.len() < n {
            return corrupt(format!("{} frame too short", self.what));
        }
        let (h, t) = self.b.split_at(n);
        self.b = t;
        Ok(h)
    }
    fn u16(&mut self) -> Result<u16, DecodeError> {
        Ok(u16::from_le_bytes(
            self.take(2)?.try_into().expect("2 bytes"),
        ))
    }
    fn u32(&mut self) -> Result<u32, DecodeError> {
        Ok(u32::from_le_bytes(
            self.take(4)?.try_into().expect("4 bytes"),
        ))
    }
    fn u64(&mut self) -> Result<u64, DecodeError> {
        Ok(u64::from_le_bytes(
            self.take(8)?.try_into().expect("8 bytes"),
        ))
    }
    fn str(&mut self, n: usize) -> Result<String, DecodeError> {
        let what = self.what;
        String::from_utf8(self.take(n)?.to_vec())
            .or_else(|_| corrupt(format!("{what} frame holds invalid UTF-8")))
    }
    fn end(&self) -> Result<(), DecodeError> {
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

/// What the header member says.
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

/// What the footer member says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BlobFooter {
    /// Number of namespace sections in the blob.
    pub namespaces: u32,
    /// Vectors in the blob.
    pub total_vectors: u64,
}

/// Decodes the header member (given as its compressed bytes, or a stream starting with it).
pub fn decode_header(compressed: impl Read) -> Result<BlobHeader, DecodeError> {
    let mut r = GzDecoder::new(compressed);
    let mut fixed = [0u8; 12];
    if read_full(&mut r, &mut fixed)? < 12 || &fixed[..8] != MAGIC {
        return corrupt("not a dakera snapshot blob (bad magic)");
    }
    let major = u16::from_le_bytes([fixed[8], fixed[9]]);
    let minor = u16::from_le_bytes([fixed[10], fixed[11]]);
    if major != FORMAT_MAJOR {
        return Err(DecodeError::Version { major, minor });
    }
    let mut frames = FrameReader { r, pos: 12 };
    let Some((kind::FILE_HEADER, p)) = frames.next_required()? else {
        return corrupt("header member lacks its FILE_HEADER frame");
    };
    let mut p = Payload {
        b: &p,
        what: "FILE_HEADER",
    };
    let n = p.u16()? as usize;
    let snapshot_id = p.str(n)?;
    let created_at_ms = p.u64()?;
    if frames.next_required()?.is_some() {
        return corrupt("header member holds more than its header");
    }
    Ok(BlobHeader {
        major,
        minor,
        snapshot_id,
        created_at_ms,
    })
}

/// Decodes the footer member.
pub fn decode_footer(compressed: impl Read) -> Result<BlobFooter, DecodeError> {
    let mut frames = FrameReader {
        r: GzDecoder::new(compressed),
        pos: 0,
    };
    let Some((kind::FILE_END, p)) = frames.next_required()? else {
        return corrupt("footer member lacks its FILE_END frame");
    };
    let mut p = Payload {
        b: &p,
        what: "FILE_END",
    };
    let footer = BlobFooter {
        namespaces: p.u32()?,
        total_vectors: p.u64()?,
    };
    p.end()?;
    if frames.next_required()?.is_some() {
        return corrupt("footer member holds more than its footer");
    }
    Ok(footer)
}

/// What a decoded namespace section turned out to hold.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NamespaceSummary {
    /// The name in the NS_HEADER frame.
    pub name: String,
    /// The dimension (0 = never held a vector).
    pub dimension: u32,
    /// Vectors decoded.
    pub vectors: u64,
    /// Content digest recomputed from the frames.
    pub digest: [u8; 32],
}

/// Decodes one namespace section from its compressed byte range (one or more gzip members),
/// handing vectors to `sink` in batches of up to `batch` vectors.
///
/// Every check that can be made without the sidecar is made here: gzip CRCs and lengths,
/// frame structure, UTF-8, dimensions, ascending ids, and the vector count and digest the
/// NS_END frame records against what was actually decoded. The caller compares the returned
/// summary with the sidecar.
pub fn decode_namespace<R, F>(
    compressed: R,
    batch: usize,
    mut sink: F,
) -> Result<NamespaceSummary, DecodeError>
where
    R: Read,
    F: FnMut(Vec<Vector>) -> Result<(), DecodeError>,
{
    let mut frames = FrameReader {
        r: flate2::read::MultiGzDecoder::new(compressed),
        pos: 0,
    };
    let Some((kind::NS_HEADER, p)) = frames.next_required()? else {
        return corrupt("namespace section does not start with an NS_HEADER frame");
    };
    let mut p = Payload {
        b: &p,
        what: "NS_HEADER",
    };
    let n = p.u16()? as usize;
    let name = p.str(n)?;
    let dimension = p.u32()?;
    let flags = p.u32()?;
    p.end()?;
    if flags != 0 {
        return corrupt(format!(
            "namespace {name:?} uses flags {flags:#x} this version does not know (written by a newer version?)"
        ));
    }
    if dimension > MAX_DIMENSION {
        return corrupt(format!(
            "dimension {dimension} exceeds the limit of {MAX_DIMENSION}"
        ));
    }
    let mut hasher = Sha256::new();
    hasher.update(dimension.to_le_bytes());
    let mut count = 0u64;
    let mut pending = Vec::with_capacity(batch.min(4096));
    let mut last_id: Option<String> = None;
    loop {
        let Some((k, payload)) = frames.next_required()? else {
            return corrupt(format!(
                "namespace {name:?} ends without its NS_END frame (truncated?)"
            ));
        };
        match k {
            kind::VECTOR => {
                let v = decode_vector(&payload, dimension)?;
                if let Some(last) = &last_id {
                    if v.id.as_bytes() <= last.as_bytes() {
                        return corrupt(format!("vector ids out of order at {:?}", v.id));
                    }
                }
                hasher.update([kind::VECTOR]);
                hasher.update((payload.len() as u32).to_le_bytes());
                hasher.update(&payload);
                count += 1;
                last_id = Some(v.id.clone());
                pending.push(v);
                if pending.len() >= batch {
                    sink(std::mem::take(&mut pending))?;
                }
            }
            kind::NS_END => {
                let mut p = Payload {
                    b: &payload,
                    what: "NS_END",
                };
                let recorded = p.u64()?;
                let digest: [u8; 32] = p.take(32)?.try_into().expect("32 bytes");
                p.end()?;
                let actual: [u8; 32] = hasher.finalize().into();
                if recorded != count {
                    return corrupt(format!(
                        "namespace {name:?} holds {count} vectors, its end frame says {recorded}"
                    ));
                }
                if digest != actual {
                    return corrupt(format!("namespace {name:?} content digest mismatch"));
                }
                if frames.next_required()?.is_some() {
                    return corrupt(format!("data after the end of namespace {name:?}"));
                }
                if !pending.is_empty() {
                    sink(pending)?;
                }
                return Ok(NamespaceSummary {
                    name,
                    dimension,
                    vectors: count,
                    digest,
                });
            }
            other => {
                return corrupt(format!(
                    "unexpected frame kind {other:#04x} inside namespace {name:?}"
                ))
            }
        }
    }
}

fn decode_vector(payload: &[u8], dimension: u32) -> Result<Vector, DecodeError> {
    let mut p = Payload {
        b: payload,
        what: "VECTOR",
    };
    let flags = p.take(1)?[0];
    if flags & !(FLAG_METADATA | FLAG_TTL | FLAG_EXPIRES) != 0 {
        return corrupt(format!("unknown vector flags {flags:#04x}"));
    }
    let id_len = p.u32()? as usize;
    let id = p.str(id_len)?;
    if dimension == 0 {
        return corrupt("vector in a namespace of dimension 0");
    }
    let raw = p.take(4 * dimension as usize)?;
    let values = raw
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes(c.try_into().expect("4 bytes")))
        .collect();
    let ttl_seconds = if flags & FLAG_TTL != 0 {
        Some(p.u64()?)
    } else {
        None
    };
    let expires_at = if flags & FLAG_EXPIRES != 0 {
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
    p.end()?;
    Ok(Vector {
        id,
        values,
        metadata,
        ttl_seconds,
        expires_at,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn vectors(n: usize, dim: usize) -> Vec<Vector> {
        (0..n)
            .map(|i| {
                let mut v = Vector::new(
                    format!("v{i:05}"),
                    (0..dim).map(|j| (i * dim + j) as f32 * 0.5).collect(),
                );
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

    fn encode(vs: &[Vector], dim: u32, chunk: usize) -> (Vec<u8>, [u8; 32]) {
        let mut enc = NamespaceEncoder::new("ns", dim, true);
        let mut out = Vec::new();
        for v in vs {
            enc.push(v).unwrap();
            if enc.buffered() >= chunk {
                out.extend(compress_member(&enc.take_chunk().0, 1));
            }
        }
        let (last, _, _, digest) = enc.finish();
        out.extend(compress_member(&last, 1));
        (out, digest)
    }

    #[test]
    fn namespace_round_trip_across_members() {
        let vs = vectors(300, 8);
        let (bytes, digest) = encode(&vs, 8, 1000);
        let mut got = Vec::new();
        let s = decode_namespace(&bytes[..], 7, |b| {
            assert!(b.len() <= 7);
            got.extend(b);
            Ok(())
        })
        .unwrap();
        assert_eq!(got, vs);
        assert_eq!(
            (s.name.as_str(), s.dimension, s.vectors, s.digest),
            ("ns", 8, 300, digest)
        );
    }

    #[test]
    fn digest_ignores_compression_and_chunking() {
        let vs = vectors(50, 4);
        assert_eq!(encode(&vs, 4, 100).1, encode(&vs, 4, 1 << 20).1);
    }

    #[test]
    fn encoder_rejects_bad_vectors() {
        let mut enc = NamespaceEncoder::new("ns", 3, true);
        assert!(matches!(
            enc.push(&Vector::new("a", vec![1.0; 4])),
            Err(EncodeError::Dimension { .. })
        ));
        enc.push(&Vector::new("b", vec![1.0; 3])).unwrap();
        assert!(matches!(
            enc.push(&Vector::new("a", vec![1.0; 3])),
            Err(EncodeError::Invalid(_))
        ));
        let mut empty = NamespaceEncoder::new("e", 0, true);
        assert!(empty.push(&Vector::new("a", vec![])).is_err());
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
        future[8..10].copy_from_slice(&2u16.to_le_bytes());
        let err = decode_header(&compress_member(&future, 1)[..]).unwrap_err();
        assert!(matches!(err, DecodeError::Version { major: 2, .. }));
        assert!(matches!(
            decode_header(&compress_member(b"PK\x03\x04 not ours", 1)[..]),
            Err(DecodeError::Corrupt(_))
        ));
    }

    #[test]
    fn every_truncation_and_flip_is_detected() {
        let (bytes, _) = encode(&vectors(20, 4), 4, 200);
        for cut in 0..bytes.len() {
            assert!(
                decode_namespace(&bytes[..cut], 16, |_| Ok(())).is_err(),
                "truncation at {cut}"
            );
        }
        for i in 0..bytes.len() {
            let mut b = bytes.clone();
            b[i] ^= 0x20;
            // Some gzip header bytes (mtime, OS, extra flags) are not covered by any check and
            // do not change the content; the data itself must decode identically or fail.
            if let Ok(s) = decode_namespace(&b[..], 16, |_| Ok(())) {
                assert_eq!(s.vectors, 20, "flip at {i} changed content undetected");
            }
        }
    }

    #[test]
    fn unknown_optional_frames_are_skipped_and_required_ones_rejected() {
        let mut enc = NamespaceEncoder::new("ns", 2, true);
        enc.push(&Vector::new("a", vec![1.0, 2.0])).unwrap();
        let (mut raw, _) = enc.take_chunk();
        put_frame(&mut raw, 0x7f, b"future optional data");
        let (last, _, _, _) = enc.finish();
        raw.extend(last);
        assert_eq!(
            decode_namespace(&compress_member(&raw, 1)[..], 8, |_| Ok(()))
                .unwrap()
                .vectors,
            1
        );
        let mut bad = raw.clone();
        let at = bad.len() - 45; // the NS_END frame's kind byte
        assert_eq!(bad[at], kind::NS_END);
        bad[at] = 0x3f;
        assert!(decode_namespace(&compress_member(&bad, 1)[..], 8, |_| Ok(())).is_err());
    }

    #[test]
    fn unknown_namespace_flags_are_refused() {
        let (mut raw, _) = NamespaceEncoder::new("ns", 2, true).take_chunk();
        let flags_at = raw.len() - 4;
        raw[flags_at] = 1;
        let err = decode_namespace(&compress_member(&raw, 1)[..], 8, |_| Ok(())).unwrap_err();
        assert!(matches!(err, DecodeError::Corrupt(m) if m.contains("flags")));
    }

    #[test]
    fn forged_lengths_do_not_allocate() {
        let mut raw = Vec::new();
        raw.push(kind::NS_HEADER);
        raw.extend_from_slice(&u32::MAX.to_le_bytes());
        let err = decode_namespace(&compress_member(&raw, 1)[..], 8, |_| Ok(())).unwrap_err();
        assert!(matches!(err, DecodeError::Corrupt(m) if m.contains("limit")));
        let mut raw = Vec::new();
        raw.push(kind::NS_HEADER);
        raw.extend_from_slice(&(MAX_FRAME_LEN).to_le_bytes());
        raw.extend_from_slice(b"short");
        assert!(decode_namespace(&compress_member(&raw, 1)[..], 8, |_| Ok(())).is_err());
    }
}
