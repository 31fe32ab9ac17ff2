//! A snapshot's namespace directory (format 3): the namespaces its blob stores and where,
//! those it leaves unchanged in an ancestor, and those it records deleted.
//!
//! Up to format 2 these lists were in the sidecar, which then grew by hundreds of bytes per
//! namespace. Format 3 writes them as one chunk just before the blob's footer, located by the
//! sidecar's `directory` record, so a sidecar stays a few hundred bytes whatever the
//! namespace count, `list` reads only sidecars, and every reader of a snapshot's namespaces
//! gets them with one ranged read.

use super::blob::{corrupt, kind, DecodeError, Payload, MAX_DIMENSION, MAX_FRAME_LEN};
use super::sidecar::{ChunkEntry, DirectoryInfo, NamespaceEntry};
use flate2::write::GzEncoder;
use flate2::Compression;
use sha2::{Digest, Sha256};
use std::io::{Read, Write};

/// Entries (or names) per directory frame a writer puts: frames stay far below
/// [`MAX_FRAME_LEN`] whatever the names.
const PER_FRAME: usize = 2048;
/// Longest store token a directory entry carries (as the sidecar's `store_token`).
const MAX_TOKEN: usize = 128;

/// What a directory chunk lists.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Directory {
    /// Namespaces stored in this blob, sorted by name.
    pub stored: Vec<NamespaceEntry>,
    /// Namespaces stored in an ancestor, unchanged here, sorted.
    pub unchanged: Vec<String>,
    /// Namespaces of the parent that no longer exist, sorted.
    pub deleted: Vec<String>,
}

/// The decompressed content of a directory chunk: `NS_DIRECTORY` frames with the stored
/// namespaces, then `UNCHANGED_NAMES` and `DELETED_NAMES` frames (each kind only when it has
/// something to list).
#[cfg(test)]
pub fn encode(stored: &[NamespaceEntry], unchanged: &[String], deleted: &[String]) -> Vec<u8> {
    let mut w = DirectoryWriter::new(Vec::new());
    for e in stored {
        w.push(e);
    }
    w.finish(unchanged, deleted).expect("writing to memory").0
}

/// A directory written as its namespaces are: each stored namespace is encoded at once
/// (about 110 bytes and its name) and the frames compressed as they fill, so a create never
/// holds the [`NamespaceEntry`]s (three times the size) nor the whole decompressed
/// directory.
pub struct DirectoryWriter<W: Write> {
    out: W,
    sha: Sha256,
    raw_length: u64,
    frame: Vec<u8>,
    in_frame: usize,
    /// Stored namespaces so far.
    pub stored: u64,
    /// Their vectors (what the footer records).
    pub vectors: u64,
}

/// A directory chunk being written: one gzip member.
pub type DirectoryMember = DirectoryWriter<GzEncoder<Vec<u8>>>;

impl DirectoryMember {
    /// A directory written as one gzip member deflated at `level`.
    pub fn member(level: u32) -> Self {
        DirectoryWriter::new(GzEncoder::new(Vec::new(), Compression::new(level)))
    }

    /// The chunk, and the sidecar's record of it were it written at blob offset `offset`.
    pub fn finish_chunk(
        self,
        unchanged: &[String],
        deleted: &[String],
        offset: u64,
    ) -> (Vec<u8>, DirectoryInfo) {
        let stored = self.stored;
        let (enc, raw_length, sha) = self
            .finish(unchanged, deleted)
            .expect("writing to memory cannot fail");
        let member = enc.finish().expect("writing to memory cannot fail");
        let info = DirectoryInfo {
            offset,
            length: member.len() as u64,
            raw_length,
            crc32: crc32fast::hash(&member),
            sha256: hex::encode(sha),
            stored,
            unchanged: unchanged.len() as u64,
            deleted: deleted.len() as u64,
        };
        (member, info)
    }
}

impl<W: Write> DirectoryWriter<W> {
    /// A directory whose decompressed bytes go to `out`.
    pub fn new(out: W) -> Self {
        DirectoryWriter {
            out,
            sha: Sha256::new(),
            raw_length: 0,
            frame: Vec::new(),
            in_frame: 0,
            stored: 0,
            vectors: 0,
        }
    }

    /// Adds the next stored namespace (in name order).
    pub fn push(&mut self, e: &NamespaceEntry) {
        put_entry(&mut self.frame, e);
        self.in_frame += 1;
        self.stored += 1;
        self.vectors = self.vectors.saturating_add(e.vector_count);
        if self.in_frame == PER_FRAME {
            self.close_frame();
        }
    }

    /// Ends the stored namespaces' frame being filled. Errors of the output are kept for
    /// [`Self::finish`] (a `Vec` or a gzip encoder over one never fails).
    fn close_frame(&mut self) {
        if self.in_frame > 0 {
            let count = (self.in_frame as u32).to_le_bytes();
            let frame = std::mem::take(&mut self.frame);
            self.in_frame = 0;
            self.write_frame(kind::NS_DIRECTORY, &count, &frame);
        }
    }

    fn write_frame(&mut self, k: u8, count: &[u8; 4], body: &[u8]) {
        let len = (count.len() + body.len()) as u32;
        debug_assert!(len <= MAX_FRAME_LEN);
        let mut head = [0u8; 9];
        head[0] = k;
        head[1..5].copy_from_slice(&len.to_le_bytes());
        head[5..].copy_from_slice(count);
        for part in [&head[..], body] {
            self.sha.update(part);
            self.raw_length += part.len() as u64;
            if let Err(e) = self.out.write_all(part) {
                tracing::error!(error = %e, "the directory could not be written");
            }
        }
    }

    /// Writes the unchanged and deleted names; returns the output, the decompressed length
    /// and its SHA-256.
    pub fn finish(
        mut self,
        unchanged: &[String],
        deleted: &[String],
    ) -> std::io::Result<(W, u64, [u8; 32])> {
        self.close_frame();
        for (k, names) in [
            (kind::UNCHANGED_NAMES, unchanged),
            (kind::DELETED_NAMES, deleted),
        ] {
            for part in names.chunks(PER_FRAME) {
                let mut p = Vec::with_capacity(part.len() * 24);
                for n in part {
                    put_name(&mut p, n);
                }
                self.write_frame(k, &(part.len() as u32).to_le_bytes(), &p);
            }
        }
        self.out.flush()?;
        Ok((self.out, self.raw_length, self.sha.finalize().into()))
    }
}

/// The directory chunk of these lists (one gzip member at deflate `level`), and the
/// sidecar's record of it were it written at blob offset `offset`. Blocking CPU work. For
/// tests that forge directories; writers stream theirs through [`DirectoryWriter`].
#[cfg(any(test, feature = "test-util"))]
pub fn chunk(
    stored: &[NamespaceEntry],
    unchanged: &[String],
    deleted: &[String],
    level: u32,
    offset: u64,
) -> (Vec<u8>, DirectoryInfo) {
    let mut w = DirectoryWriter::member(level);
    for e in stored {
        w.push(e);
    }
    w.finish_chunk(unchanged, deleted, offset)
}

fn put_name(p: &mut Vec<u8>, name: &str) {
    p.extend_from_slice(&(name.len() as u16).to_le_bytes());
    p.extend_from_slice(name.as_bytes());
}

/// One stored namespace: name, dimension (0: never held a vector), vector count, section
/// offset, length and raw length, content digest, its index chunk (offset, length, raw
/// length, CRC-32), logical bytes, and its store token (length 0: none).
fn put_entry(p: &mut Vec<u8>, e: &NamespaceEntry) {
    put_name(p, &e.name);
    p.extend_from_slice(&e.dimension.unwrap_or(0).to_le_bytes());
    for v in [e.vector_count, e.offset, e.length, e.raw_length] {
        p.extend_from_slice(&v.to_le_bytes());
    }
    let mut digest = [0u8; 32];
    // A writer's digest is always 64 hex digits; a malformed one is caught by the layout
    // check before anything is written.
    let _ = hex::decode_to_slice(&e.content_sha256, &mut digest);
    p.extend_from_slice(&digest);
    let index = e.index.clone().unwrap_or(ChunkEntry {
        offset: 0,
        length: 0,
        raw_length: 0,
        vectors: 0,
        crc32: 0,
    });
    for v in [index.offset, index.length, index.raw_length] {
        p.extend_from_slice(&v.to_le_bytes());
    }
    p.extend_from_slice(&index.crc32.to_le_bytes());
    p.extend_from_slice(&e.logical_bytes.unwrap_or(0).to_le_bytes());
    let token = e.store_token.as_deref().unwrap_or("");
    p.push(token.len() as u8);
    p.extend_from_slice(token.as_bytes());
}

/// Parses the decompressed content of a directory chunk, checking its structure: known
/// frames in order, each list sorted without repeats, no name both stored and unchanged.
/// Whether the entries tile the blob is the caller's to check (with the sidecar).
#[cfg(test)]
pub fn decode(raw: &[u8]) -> Result<Directory, DecodeError> {
    decode_from(raw, raw.len() as u64).map(|(d, _)| d)
}

/// [`decode`] from a reader of the decompressed directory, which must be exactly
/// `raw_length` bytes, one frame at a time (never the whole directory in memory); returns
/// it with the SHA-256 of its bytes.
pub fn decode_from(
    mut r: impl Read,
    raw_length: u64,
) -> Result<(Directory, [u8; 32]), DecodeError> {
    let mut dir = Directory::default();
    let (mut sha, mut at) = (Sha256::new(), 0u64);
    let mut last_kind = kind::NS_DIRECTORY;
    let mut payload = Vec::new();
    loop {
        let mut head = [0u8; 5];
        match read_full(&mut r, &mut head)? {
            0 => break,
            5 => {}
            _ => return corrupt("the directory ends inside a frame header (truncated?)"),
        }
        let k = head[0];
        let len = u32::from_le_bytes([head[1], head[2], head[3], head[4]]);
        at += 5 + u64::from(len);
        if len > MAX_FRAME_LEN || at > raw_length {
            return corrupt(format!(
                "a directory frame of {len} bytes runs past the directory's {raw_length}"
            ));
        }
        payload.clear();
        (&mut r).take(u64::from(len)).read_to_end(&mut payload)?;
        if payload.len() as u64 != u64::from(len) {
            return corrupt("the directory ends inside a frame (truncated?)");
        }
        sha.update(head);
        sha.update(&payload);
        if k >= kind::FIRST_OPTIONAL {
            continue;
        }
        if !matches!(
            k,
            kind::NS_DIRECTORY | kind::UNCHANGED_NAMES | kind::DELETED_NAMES
        ) {
            return corrupt(format!("the directory holds a frame of kind {k:#04x}"));
        }
        if k < last_kind {
            return corrupt("the directory's frames are out of order");
        }
        last_kind = k;
        read_frame(k, &payload, &mut dir)?;
    }
    if at != raw_length {
        return corrupt(format!(
            "the directory holds {at} bytes, its record says {raw_length}"
        ));
    }
    check_lists(&dir)?;
    Ok((dir, sha.finalize().into()))
}

/// Reads as many bytes as fill `buf` or the input has; returns how many.
fn read_full(r: &mut impl Read, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

/// Adds what a frame of kind `k` lists to `dir`.
fn read_frame(k: u8, payload: &[u8], dir: &mut Directory) -> Result<(), DecodeError> {
    let mut p = Payload {
        b: payload,
        what: "directory",
    };
    let count = p.u32()? as usize;
    for _ in 0..count {
        match k {
            kind::NS_DIRECTORY => dir.stored.push(read_entry(&mut p)?),
            kind::UNCHANGED_NAMES => dir.unchanged.push(read_name(&mut p)?),
            _ => dir.deleted.push(read_name(&mut p)?),
        }
    }
    p.end()
}

fn read_name(p: &mut Payload<'_>) -> Result<String, DecodeError> {
    let n = p.u16()? as usize;
    p.str(n)
}

fn read_entry(p: &mut Payload<'_>) -> Result<NamespaceEntry, DecodeError> {
    let name = read_name(p)?;
    let dimension = p.u32()?;
    if dimension > MAX_DIMENSION {
        return corrupt(format!(
            "namespace {name:?} has dimension {dimension}, beyond the supported maximum"
        ));
    }
    let (vector_count, offset, length, raw_length) = (p.u64()?, p.u64()?, p.u64()?, p.u64()?);
    let digest = hex::encode(p.take(32)?);
    let index = ChunkEntry {
        offset: p.u64()?,
        length: p.u64()?,
        raw_length: p.u64()?,
        vectors: 0,
        crc32: p.u32()?,
    };
    let logical_bytes = p.u64()?;
    let token_len = p.u8()? as usize;
    if token_len > MAX_TOKEN {
        return corrupt(format!("namespace {name:?} has a store token too long"));
    }
    let token = p.str(token_len)?;
    if !token.bytes().all(|b| b.is_ascii_graphic()) {
        return corrupt(format!("namespace {name:?} has a malformed store token"));
    }
    Ok(NamespaceEntry {
        name,
        dimension: (dimension > 0).then_some(dimension),
        vector_count,
        offset,
        length,
        raw_length,
        content_sha256: digest,
        chunks: Vec::new(),
        index: Some(index),
        logical_bytes: Some(logical_bytes),
        store_token: (!token.is_empty()).then_some(token),
    })
}

/// Each list is sorted without repeats, and no stored namespace is also listed unchanged.
fn check_lists(dir: &Directory) -> Result<(), DecodeError> {
    let sorted = |names: &mut dyn Iterator<Item = &str>, what: &str| {
        let mut last: Option<&str> = None;
        for n in names {
            if last.is_some_and(|l| l >= n) {
                return corrupt(format!(
                    "the directory's {what} namespaces are out of order or repeated at {n:?}"
                ));
            }
            last = Some(n);
        }
        Ok(())
    };
    sorted(&mut dir.stored.iter().map(|e| e.name.as_str()), "stored")?;
    sorted(&mut dir.unchanged.iter().map(String::as_str), "unchanged")?;
    sorted(&mut dir.deleted.iter().map(String::as_str), "deleted")?;
    let (mut s, mut u) = (
        dir.stored.iter().peekable(),
        dir.unchanged.iter().peekable(),
    );
    while let (Some(a), Some(b)) = (s.peek(), u.peek()) {
        match a.name.as_str().cmp(b.as_str()) {
            std::cmp::Ordering::Less => {
                s.next();
            }
            std::cmp::Ordering::Greater => {
                u.next();
            }
            std::cmp::Ordering::Equal => {
                return corrupt(format!(
                    "namespace {b:?} is listed both stored and unchanged"
                ))
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(name: &str, at: u64, token: Option<&str>) -> NamespaceEntry {
        NamespaceEntry {
            name: name.into(),
            dimension: Some(8),
            vector_count: 3,
            offset: at,
            length: 100,
            raw_length: 200,
            content_sha256: "ab".repeat(32),
            chunks: Vec::new(),
            index: Some(ChunkEntry {
                offset: at + 60,
                length: 40,
                raw_length: 90,
                vectors: 0,
                crc32: 7,
            }),
            logical_bytes: Some(60),
            store_token: token.map(String::from),
        }
    }

    fn sample() -> Directory {
        Directory {
            stored: vec![entry("a", 40, Some("e.1.0")), entry("c", 140, None)],
            unchanged: vec!["b".into(), "d".into()],
            deleted: vec!["z".into()],
        }
    }

    fn round_trip(d: &Directory) -> Result<Directory, DecodeError> {
        decode(&encode(&d.stored, &d.unchanged, &d.deleted))
    }

    #[test]
    fn round_trips_and_splits_long_lists_into_frames() {
        assert_eq!(round_trip(&sample()).unwrap(), sample());
        assert_eq!(
            round_trip(&Directory::default()).unwrap(),
            Directory::default()
        );
        let many = Directory {
            unchanged: (0..PER_FRAME * 2 + 5)
                .map(|i| format!("ns-{i:06}"))
                .collect(),
            ..sample()
        };
        let raw = encode(&many.stored, &many.unchanged, &many.deleted);
        let (mut kinds, mut at) = (Vec::new(), 0);
        while at < raw.len() {
            kinds.push(raw[at]);
            at += 5 + u32::from_le_bytes(raw[at + 1..at + 5].try_into().unwrap()) as usize;
        }
        let (s, u, d) = (
            kind::NS_DIRECTORY,
            kind::UNCHANGED_NAMES,
            kind::DELETED_NAMES,
        );
        assert_eq!(kinds, [s, u, u, u, d]);
        assert_eq!(decode(&raw).unwrap(), many);
    }

    #[test]
    fn unsorted_repeated_or_overlapping_lists_are_refused() {
        let mut unsorted = sample();
        unsorted.stored.swap(0, 1);
        let mut repeated = sample();
        repeated.deleted = vec!["z".into(), "z".into()];
        let mut both = sample();
        both.unchanged = vec!["c".into()];
        for d in [unsorted, repeated, both] {
            assert!(round_trip(&d).is_err(), "{d:?}");
        }
    }

    #[test]
    fn a_cut_inside_a_frame_is_refused_and_a_cut_between_frames_loses_a_list() {
        let d = sample();
        let raw = encode(&d.stored, &d.unchanged, &d.deleted);
        let boundaries = [
            encode(&d.stored, &[], &[]).len(),
            encode(&d.stored, &d.unchanged, &[]).len(),
        ];
        for cut in 1..raw.len() {
            match decode(&raw[..cut]) {
                // What the sidecar's counts then catch.
                Ok(short) if boundaries.contains(&cut) => assert_ne!(short, d),
                Ok(_) => panic!("cut {cut} decoded"),
                Err(_) => assert!(!boundaries.contains(&cut), "cut {cut}"),
            }
        }
    }

    #[test]
    fn frames_out_of_order_and_unknown_required_kinds_are_refused() {
        let d = sample();
        let names = encode(&[], &d.unchanged, &[]);
        let stored = encode(&d.stored, &[], &[]);
        assert!(decode(&[names.clone(), stored].concat()).is_err());
        let mut unknown = names.clone();
        unknown[0] = 0x3F;
        assert!(decode(&unknown).is_err());
        let mut optional = names;
        optional[0] = 0x41;
        assert_eq!(decode(&optional).unwrap(), Directory::default());
    }
}
