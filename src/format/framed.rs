//! Vectors framed for encoding: what the codec needs of each vector, its VECTOR frame's head
//! (flags, id) and tail (TTL, expiry, metadata) and its values, copied into three flat
//! buffers as the store lends each vector ([`crate::VectorStorage::scan_each`]).
//!
//! Cloning scanned vectors (an id, a values buffer and a metadata tree each) only to free
//! them after encoding was nine tenths of the runtime thread's time in a create of 10,000
//! namespaces of 20 vectors (perf); framed here, a namespace is three allocations, whatever
//! its vector count, and the values of a chunk lie contiguous for the byte-plane filter.

use super::blob::{EncodeError, FLAG_EXPIRES, FLAG_METADATA, FLAG_TTL, MAX_FRAME_LEN};
use crate::storage::Vector;
use std::ops::Range;

/// Bytes of the head before the id: flags (1) and the id's length (4).
const HEAD_FIXED: usize = 5;

/// Vectors of one namespace (one dimension), in strictly ascending id order, framed.
#[derive(Debug, Default)]
pub struct FramedVectors {
    dimension: u32,
    include_metadata: bool,
    /// Each vector's head then tail, back to back.
    parts: Vec<u8>,
    rows: Vec<Row>,
    /// Every vector's values, `dimension` each, in order.
    values: Vec<f32>,
    /// The raw bytes all its vectors count for (see [`Self::size`]).
    raw: usize,
}

/// Where a vector's frame parts end in `parts`, and how long its head is.
#[derive(Debug, Clone, Copy)]
struct Row {
    end: usize,
    head_len: u32,
}

impl FramedVectors {
    /// No vectors yet, of `dimension` values each; with `include_metadata`, their metadata
    /// is kept in the frames (else dropped).
    pub fn new(dimension: u32, include_metadata: bool) -> Self {
        FramedVectors {
            dimension,
            include_metadata,
            ..Default::default()
        }
    }

    /// Like [`Self::new`], with room for `vectors` vectors (and a little metadata each)
    /// before any buffer grows: a namespace whose count the store gave is framed with three
    /// allocations, not a few dozen growths.
    pub fn with_room(dimension: u32, include_metadata: bool, vectors: usize) -> Self {
        FramedVectors {
            dimension,
            include_metadata,
            parts: Vec::with_capacity(vectors * 64),
            rows: Vec::with_capacity(vectors),
            values: Vec::with_capacity(vectors * dimension as usize),
            raw: 0,
        }
    }

    /// No vectors yet, of the same dimension and metadata setting as `self`.
    pub fn empty_like(&self) -> Self {
        Self::new(self.dimension, self.include_metadata)
    }

    /// `vectors` framed; the first one that cannot be stored is the error.
    #[cfg(any(test, feature = "test-util"))]
    pub fn of(
        vectors: &[Vector],
        dimension: u32,
        include_metadata: bool,
    ) -> Result<Self, EncodeError> {
        let mut framed = Self::new(dimension, include_metadata);
        for v in vectors {
            framed.push(v)?;
        }
        Ok(framed)
    }

    /// Empties it, keeping its buffers' capacity.
    pub fn clear(&mut self) {
        self.parts.clear();
        self.rows.clear();
        self.values.clear();
        self.raw = 0;
    }

    /// Empties it for vectors of `dimension`, keeping its buffers' capacity.
    pub fn clear_for(&mut self, dimension: u32) {
        self.clear();
        self.dimension = dimension;
    }

    pub fn dimension(&self) -> u32 {
        self.dimension
    }

    pub fn len(&self) -> usize {
        self.rows.len()
    }

    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    /// Appends `v`, which must have the dimension and come after the last vector in id
    /// order; on error nothing is appended.
    pub fn push(&mut self, v: &Vector) -> Result<(), EncodeError> {
        if v.values.len() != self.dimension as usize || self.dimension == 0 {
            return Err(EncodeError::Dimension {
                expected: self.dimension,
                actual: v.values.len(),
            });
        }
        if let Some(last) = self.last_id() {
            if v.id.as_bytes() <= last {
                return Err(out_of_order(&v.id, &String::from_utf8_lossy(last)));
            }
        }
        let start = self.parts.len();
        let head_len = match frame_parts(v, self.include_metadata, &mut self.parts) {
            Ok(head_len) => head_len,
            Err(e) => {
                self.parts.truncate(start);
                return Err(e);
            }
        };
        self.rows.push(Row {
            end: self.parts.len(),
            head_len: head_len as u32,
        });
        self.values.extend_from_slice(&v.values);
        self.raw += self.size(self.rows.len() - 1);
        Ok(())
    }

    fn start(&self, i: usize) -> usize {
        if i == 0 {
            0
        } else {
            self.rows[i - 1].end
        }
    }

    /// Vector `i`'s frame head: flags, id length, id.
    pub fn head(&self, i: usize) -> &[u8] {
        let start = self.start(i);
        &self.parts[start..start + self.rows[i].head_len as usize]
    }

    /// Vector `i`'s frame tail: TTL, expiry, metadata (as its flags say).
    pub fn tail(&self, i: usize) -> &[u8] {
        let row = self.rows[i];
        &self.parts[self.start(i) + row.head_len as usize..row.end]
    }

    /// Vector `i`'s id, as bytes.
    pub fn id(&self, i: usize) -> &[u8] {
        &self.head(i)[HEAD_FIXED..]
    }

    pub fn last_id(&self) -> Option<&[u8]> {
        self.len().checked_sub(1).map(|i| self.id(i))
    }

    /// Vector `i`'s values.
    pub fn values(&self, i: usize) -> &[f32] {
        let dim = self.dimension as usize;
        &self.values[i * dim..(i + 1) * dim]
    }

    /// The values of vectors `rows`, back to back.
    pub fn values_of(&self, rows: Range<usize>) -> &[f32] {
        let dim = self.dimension as usize;
        &self.values[rows.start * dim..rows.end * dim]
    }

    /// Raw bytes vector `i` counts for, in batches and in the chunker: its values, its id
    /// and 16 for the rest.
    pub fn size(&self, i: usize) -> usize {
        4 * self.dimension as usize + self.id(i).len() + 16
    }

    /// The raw bytes all its vectors count for (see [`Self::size`]).
    pub fn raw_size(&self) -> usize {
        self.raw
    }
}

/// Why vector `id` cannot follow `prev`: ids ascend strictly, within a namespace's batch and
/// across its batches.
pub fn out_of_order(id: &str, prev: &str) -> EncodeError {
    EncodeError::Invalid(format!(
        "vector ids must arrive in ascending order without repeats ({id:?} after {prev:?}); a store's scan must ascend by id"
    ))
}

/// Appends `v`'s frame head (flags, id) and tail (TTL, expiry, metadata) to `out`; returns
/// the head's length.
fn frame_parts(
    v: &Vector,
    include_metadata: bool,
    out: &mut Vec<u8>,
) -> Result<usize, EncodeError> {
    let start = out.len();
    out.push(0);
    out.extend_from_slice(&(v.id.len() as u32).to_le_bytes());
    out.extend_from_slice(v.id.as_bytes());
    let head_len = out.len() - start;
    let mut flags = 0u8;
    if let Some(t) = v.ttl_seconds {
        flags |= FLAG_TTL;
        out.extend_from_slice(&t.to_le_bytes());
    }
    if let Some(t) = v.expires_at {
        flags |= FLAG_EXPIRES;
        out.extend_from_slice(&t.to_le_bytes());
    }
    if let (Some(m), true) = (&v.metadata, include_metadata) {
        flags |= FLAG_METADATA;
        let at = out.len();
        out.extend_from_slice(&[0; 4]);
        serde_json::to_writer(&mut *out, m).expect("a Value always serializes");
        let n = (out.len() - at - 4) as u32;
        out[at..at + 4].copy_from_slice(&n.to_le_bytes());
    }
    out[start] = flags;
    let len = out.len() - start + 4 * v.values.len();
    if len > MAX_FRAME_LEN as usize {
        return Err(EncodeError::Invalid(format!(
            "vector {:?} encodes to {len} bytes, more than the {MAX_FRAME_LEN}-byte frame limit",
            v.id
        )));
    }
    Ok(head_len)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn vector(i: usize) -> Vector {
        let mut v = Vector::new(format!("id-{i:03}"), vec![i as f32, -1.5, 0.25]);
        if i % 2 == 0 {
            v = v.with_metadata(json!({"i": i}));
        }
        if i % 3 == 0 {
            v.ttl_seconds = Some(60);
            v.expires_at = Some(1_000);
        }
        v
    }

    #[test]
    fn each_vector_reads_back_its_id_values_and_frame_parts() {
        let vs: Vec<Vector> = (0..7).map(vector).collect();
        let framed = FramedVectors::of(&vs, 3, true).unwrap();
        assert_eq!(framed.len(), 7);
        for (i, v) in vs.iter().enumerate() {
            assert_eq!(framed.id(i), v.id.as_bytes());
            assert_eq!(framed.values(i), &v.values[..]);
            assert_eq!(framed.size(i), 12 + v.id.len() + 16);
            let head = framed.head(i);
            let flags = head[0];
            assert_eq!(flags & FLAG_METADATA != 0, v.metadata.is_some(), "{i}");
            assert_eq!(flags & FLAG_TTL != 0, v.ttl_seconds.is_some(), "{i}");
            let tail = framed.tail(i);
            let fixed =
                8 * (usize::from(v.ttl_seconds.is_some()) + usize::from(v.expires_at.is_some()));
            if let Some(m) = &v.metadata {
                let json = serde_json::to_vec(m).unwrap();
                assert_eq!(&tail[fixed + 4..], &json[..], "{i}");
            } else {
                assert_eq!(tail.len(), fixed, "{i}");
            }
        }
        assert_eq!(framed.values_of(2..4), &[2.0, -1.5, 0.25, 3.0, -1.5, 0.25]);
        let total: usize = (0..7).map(|i| framed.size(i)).sum();
        assert_eq!(framed.raw_size(), total);
    }

    #[test]
    fn without_metadata_the_frames_drop_it() {
        let framed = FramedVectors::of(&[vector(0)], 3, false).unwrap();
        assert_eq!(framed.head(0)[0] & FLAG_METADATA, 0);
        assert_eq!(framed.tail(0).len(), 16);
    }

    #[test]
    fn a_bad_vector_is_refused_and_leaves_the_rest_as_it_was() {
        let mut framed = FramedVectors::of(&[vector(5)], 3, true).unwrap();
        let wrong_dim = Vector::new("id-9", vec![1.0; 4]);
        assert!(matches!(
            framed.push(&wrong_dim),
            Err(EncodeError::Dimension {
                expected: 3,
                actual: 4
            })
        ));
        let earlier = vector(4);
        assert!(matches!(
            framed.push(&earlier),
            Err(EncodeError::Invalid(_))
        ));
        let repeated = vector(5);
        assert!(matches!(
            framed.push(&repeated),
            Err(EncodeError::Invalid(_))
        ));
        assert_eq!(framed.len(), 1);
        framed.push(&vector(6)).unwrap();
        assert_eq!(framed.id(1), b"id-006");
        assert!(FramedVectors::of(&[Vector::new("a", vec![])], 0, true).is_err());
    }
}
