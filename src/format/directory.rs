//! A snapshot's namespace directory (format 3): the namespaces its blob stores and where,
//! those it leaves unchanged in an ancestor, and those it records deleted.
//!
//! Up to format 2 these lists were in the sidecar, which then grew by hundreds of bytes per
//! namespace. Format 3 writes them as one chunk just before the blob's footer, located by the
//! sidecar's `directory` record, so a sidecar stays a few hundred bytes whatever the
//! namespace count, `list` reads only sidecars, and every reader of a snapshot's namespaces
//! gets them with one ranged read.

use super::blob::{
    compress_member, corrupt, kind, DecodeError, Payload, MAX_DIMENSION, MAX_FRAME_LEN,
};
use super::sidecar::{ChunkEntry, DirectoryInfo, NamespaceEntry};
use sha2::{Digest, Sha256};

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
pub fn encode(stored: &[NamespaceEntry], unchanged: &[String], deleted: &[String]) -> Vec<u8> {
    let mut out = Vec::with_capacity(stored.len() * 160 + (unchanged.len() + deleted.len()) * 24);
    for part in stored.chunks(PER_FRAME) {
        let mut p = Vec::with_capacity(4 + part.len() * 160);
        p.extend_from_slice(&(part.len() as u32).to_le_bytes());
        for e in part {
            put_entry(&mut p, e);
        }
        put_frame(&mut out, kind::NS_DIRECTORY, &p);
    }
    for (k, names) in [
        (kind::UNCHANGED_NAMES, unchanged),
        (kind::DELETED_NAMES, deleted),
    ] {
        for part in names.chunks(PER_FRAME) {
            let mut p = Vec::with_capacity(4 + part.len() * 24);
            p.extend_from_slice(&(part.len() as u32).to_le_bytes());
            for n in part {
                put_name(&mut p, n);
            }
            put_frame(&mut out, k, &p);
        }
    }
    out
}

/// The directory chunk of these lists (one gzip member at deflate `level`), and the
/// sidecar's record of it were it written at blob offset `offset`. Blocking CPU work.
pub fn chunk(
    stored: &[NamespaceEntry],
    unchanged: &[String],
    deleted: &[String],
    level: u32,
    offset: u64,
) -> (Vec<u8>, DirectoryInfo) {
    let raw = encode(stored, unchanged, deleted);
    let member = compress_member(&raw, level);
    let info = DirectoryInfo {
        offset,
        length: member.len() as u64,
        raw_length: raw.len() as u64,
        crc32: crc32fast::hash(&member),
        sha256: hex::encode(Sha256::digest(&raw)),
        stored: stored.len() as u64,
        unchanged: unchanged.len() as u64,
        deleted: deleted.len() as u64,
    };
    (member, info)
}

fn put_frame(out: &mut Vec<u8>, k: u8, payload: &[u8]) {
    debug_assert!(payload.len() <= MAX_FRAME_LEN as usize);
    out.push(k);
    out.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    out.extend_from_slice(payload);
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
pub fn decode(raw: &[u8]) -> Result<Directory, DecodeError> {
    let mut dir = Directory::default();
    let mut at = 0usize;
    let mut last_kind = kind::NS_DIRECTORY;
    while at < raw.len() {
        let Some(head) = raw.get(at..at + 5) else {
            return corrupt("the directory ends inside a frame header (truncated?)");
        };
        let k = head[0];
        let len = u32::from_le_bytes([head[1], head[2], head[3], head[4]]) as usize;
        let Some(payload) = raw.get(at + 5..at + 5 + len) else {
            return corrupt("the directory ends inside a frame (truncated?)");
        };
        at += 5 + len;
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
        p.end()?;
    }
    check_lists(&dir)?;
    Ok(dir)
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
