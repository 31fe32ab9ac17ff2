//! A namespace's chunk table (format 2): the CHUNK_INDEX frame that ends each namespace
//! section of a blob.
//!
//! It lists every data chunk of the namespace at the snapshot's point in time, in order:
//! chunks stored in this blob (source 0) and chunks an ancestor's blob already holds
//! (source k ≥ 1: the k-th snapshot id of `sources`), each with its place, sizes, CRC-32 and
//! identity for deduplication (see `blob::Identity`). A reader needs this one frame,
//! read with one ranged request, to restore or verify the namespace.

use super::blob::{
    corrupt, kind, DecodeError, Filter, Identity, Payload, MAX_DIMENSION, NS_FLAG_VECTOR_IDENTITY,
};

/// Bytes of one chunk entry.
pub const CHUNK_ENTRY_LEN: usize = 2 + 8 + 4 + 4 + 4 + 4 + 32;

/// One data chunk of a namespace.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IndexedChunk {
    /// 0: this snapshot's blob; k ≥ 1: the blob of `sources[k - 1]`.
    pub source: u16,
    /// Offset in that blob.
    pub offset: u64,
    /// Compressed length.
    pub length: u32,
    /// Decompressed length.
    pub raw_length: u32,
    /// Vectors in the chunk.
    pub vectors: u32,
    /// CRC-32 of the compressed bytes.
    pub crc32: u32,
    /// The chunk's identity ([`Identity`]: in format 2.0 the SHA-256 of its decompressed
    /// bytes, in 2.1 the SHA-256 of its vectors' hashes).
    pub sha256: [u8; 32],
}

/// What a CHUNK_INDEX frame says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NamespaceIndex {
    /// The namespace's name.
    pub name: String,
    /// Its dimension (0 = never held a vector).
    pub dimension: u32,
    /// How its vectors are laid out.
    pub filter: Filter,
    /// How its chunks' identities are computed.
    pub identity: Identity,
    /// Vectors in all its chunks.
    pub vector_count: u64,
    /// Its content digest (see docs/FORMAT.md).
    pub digest: [u8; 32],
    /// Snapshot ids that referenced chunks live in.
    pub sources: Vec<String>,
    /// Its data chunks, in id order.
    pub chunks: Vec<IndexedChunk>,
}

impl NamespaceIndex {
    /// The CHUNK_INDEX frame (kind, length, payload).
    pub fn encode(&self) -> Vec<u8> {
        let mut p = Vec::with_capacity(128 + self.chunks.len() * CHUNK_ENTRY_LEN);
        p.extend_from_slice(&(self.name.len() as u16).to_le_bytes());
        p.extend_from_slice(self.name.as_bytes());
        p.extend_from_slice(&self.dimension.to_le_bytes());
        let identity = match self.identity {
            Identity::RawBytes => 0,
            Identity::Vectors => NS_FLAG_VECTOR_IDENTITY,
        };
        p.extend_from_slice(&(self.filter.flags() | identity).to_le_bytes());
        p.extend_from_slice(&self.vector_count.to_le_bytes());
        p.extend_from_slice(&self.digest);
        p.extend_from_slice(&(self.sources.len() as u16).to_le_bytes());
        for s in &self.sources {
            p.push(s.len() as u8);
            p.extend_from_slice(s.as_bytes());
        }
        p.extend_from_slice(&(self.chunks.len() as u32).to_le_bytes());
        for c in &self.chunks {
            p.extend_from_slice(&c.source.to_le_bytes());
            p.extend_from_slice(&c.offset.to_le_bytes());
            p.extend_from_slice(&c.length.to_le_bytes());
            p.extend_from_slice(&c.raw_length.to_le_bytes());
            p.extend_from_slice(&c.vectors.to_le_bytes());
            p.extend_from_slice(&c.crc32.to_le_bytes());
            p.extend_from_slice(&c.sha256);
        }
        let mut frame = Vec::with_capacity(p.len() + 5);
        frame.push(kind::CHUNK_INDEX);
        frame.extend_from_slice(&(p.len() as u32).to_le_bytes());
        frame.extend_from_slice(&p);
        frame
    }

    /// Parses a CHUNK_INDEX payload, checking its structure: sources in range, counts that
    /// add up, no empty chunk. Where chunks point is the caller's to check.
    pub fn decode(payload: &[u8]) -> Result<Self, DecodeError> {
        let mut p = Payload {
            b: payload,
            what: "CHUNK_INDEX",
        };
        let n = p.u16()? as usize;
        let name = p.str(n)?;
        let dimension = p.u32()?;
        if dimension > MAX_DIMENSION {
            return corrupt(format!(
                "dimension {dimension} is beyond the supported maximum"
            ));
        }
        let flags = p.u32()?;
        let identity = if flags & NS_FLAG_VECTOR_IDENTITY != 0 {
            Identity::Vectors
        } else {
            Identity::RawBytes
        };
        let Some(filter) = Filter::from_flags(flags & !NS_FLAG_VECTOR_IDENTITY) else {
            return corrupt(format!(
                "namespace {name:?} uses flags {flags:#x} this version does not know (written by a newer version?)"
            ));
        };
        let vector_count = p.u64()?;
        let digest: [u8; 32] = p.take(32)?.try_into().expect("32 bytes");
        let sources = read_sources(&mut p)?;
        let count = p.u32()? as usize;
        if count.saturating_mul(CHUNK_ENTRY_LEN) != p.b.len() {
            return corrupt(format!(
                "CHUNK_INDEX claims {count} chunks but holds {} bytes of them",
                p.b.len()
            ));
        }
        let mut chunks = Vec::with_capacity(count);
        for _ in 0..count {
            chunks.push(read_chunk(&mut p, sources.len())?);
        }
        p.end()?;
        let total: u64 = chunks.iter().map(|c| u64::from(c.vectors)).sum();
        if total != vector_count {
            return corrupt(format!(
                "chunks hold {total} vectors, the index records {vector_count}"
            ));
        }
        if (dimension == 0) != (vector_count == 0) {
            return corrupt("a namespace's dimension and vectors disagree");
        }
        Ok(NamespaceIndex {
            name,
            dimension,
            filter,
            identity,
            vector_count,
            digest,
            sources,
            chunks,
        })
    }
}

fn read_sources(p: &mut Payload<'_>) -> Result<Vec<String>, DecodeError> {
    let n = p.u16()? as usize;
    let mut sources = Vec::with_capacity(n.min(p.b.len()));
    for _ in 0..n {
        let len = p.u8()? as usize;
        let id = p.str(len)?;
        if sources.contains(&id) {
            return corrupt(format!("source {id} is listed twice"));
        }
        sources.push(id);
    }
    Ok(sources)
}

fn read_chunk(p: &mut Payload<'_>, sources: usize) -> Result<IndexedChunk, DecodeError> {
    let c = IndexedChunk {
        source: p.u16()?,
        offset: p.u64()?,
        length: p.u32()?,
        raw_length: p.u32()?,
        vectors: p.u32()?,
        crc32: p.u32()?,
        sha256: p.take(32)?.try_into().expect("32 bytes"),
    };
    if usize::from(c.source) > sources {
        return corrupt(format!("a chunk names source {} of {sources}", c.source));
    }
    if c.length == 0 || c.vectors == 0 {
        return corrupt("an empty chunk in CHUNK_INDEX");
    }
    Ok(c)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> NamespaceIndex {
        NamespaceIndex {
            name: "docs".into(),
            dimension: 8,
            filter: Filter::Shuffle,
            identity: Identity::Vectors,
            vector_count: 7,
            digest: [9; 32],
            sources: vec!["20261202T000000000Z-0000000000000001".into()],
            chunks: vec![
                IndexedChunk {
                    source: 1,
                    offset: 40,
                    length: 100,
                    raw_length: 300,
                    vectors: 3,
                    crc32: 7,
                    sha256: [1; 32],
                },
                IndexedChunk {
                    source: 0,
                    offset: 46,
                    length: 120,
                    raw_length: 400,
                    vectors: 4,
                    crc32: 8,
                    sha256: [2; 32],
                },
            ],
        }
    }

    #[test]
    fn round_trips() {
        let mut ix = sample();
        for identity in [Identity::Vectors, Identity::RawBytes] {
            ix.identity = identity;
            let frame = ix.encode();
            assert_eq!(frame[0], kind::CHUNK_INDEX);
            assert_eq!(NamespaceIndex::decode(&frame[5..]).unwrap(), ix);
        }
    }

    #[test]
    fn forged_tables_are_refused() {
        let mut bad_source = sample();
        bad_source.chunks[0].source = 2;
        let mut bad_count = sample();
        bad_count.vector_count = 8;
        for ix in [bad_source, bad_count] {
            assert!(NamespaceIndex::decode(&ix.encode()[5..]).is_err());
        }
        let frame = sample().encode();
        for cut in 0..frame.len() - 5 {
            assert!(
                NamespaceIndex::decode(&frame[5..5 + cut]).is_err(),
                "cut {cut}"
            );
        }
    }
}
