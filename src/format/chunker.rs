//! Content-defined chunk boundaries: where a namespace's id-ordered vector stream is cut
//! into chunks (format 2), so that an insert, update or delete changes only the chunks
//! around it and every other boundary stays where it was.
//!
//! A chunk ends after a vector when the chunk holds at least `min` bytes and the vector's
//! *id* hashes to a boundary (one id in `divisor`), or when it reaches `max` bytes. The
//! decision depends on the ids and sizes only, never on positions, so two snapshots of
//! mostly the same vectors cut mostly the same chunks, which then hash the same and are
//! stored once (chunk-level dedup). Values do not take part: updating a vector changes its
//! chunk's content, never where chunks end.

use sha2::{Digest, Sha256};

/// Default target size of a chunk, in raw bytes.
pub const DEFAULT_TARGET: usize = 16 << 10;
/// Smallest and largest target a writer accepts.
pub const TARGET_RANGE: std::ops::RangeInclusive<usize> = (1 << 10)..=(1 << 20);

/// Cuts one namespace's vectors into chunks.
#[derive(Debug, Clone)]
pub struct Chunker {
    min: usize,
    max: usize,
    divisor: u64,
    bytes: usize,
}

impl Chunker {
    /// A chunker for a namespace of `dimension` aiming at chunks of `target` raw bytes:
    /// at least a quarter of it, at most four times it.
    pub fn new(dimension: u32, target: usize) -> Self {
        let min = target / 4;
        let per_vector = 4 * dimension as usize + 32;
        let divisor = ((target - min) / per_vector).max(1) as u64;
        Chunker {
            min,
            max: 4 * target,
            divisor,
            bytes: 0,
        }
    }

    /// Adds a vector of `size` raw bytes with this id; true if the chunk ends after it.
    pub fn cut_after(&mut self, id: impl AsRef<[u8]>, size: usize) -> bool {
        self.bytes += size;
        let cut = self.bytes >= self.max
            || (self.bytes >= self.min && is_boundary(id.as_ref(), self.divisor));
        if cut {
            self.bytes = 0;
        }
        cut
    }
}

/// True if `id` ends a chunk: the first 8 bytes of its SHA-256, as a little-endian u64,
/// are a multiple of `divisor`.
fn is_boundary(id: &[u8], divisor: u64) -> bool {
    let h = Sha256::digest(id);
    let x = u64::from_le_bytes(h[..8].try_into().expect("8 bytes"));
    x % divisor == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cuts(ids: &[String], dim: u32) -> Vec<String> {
        let mut c = Chunker::new(dim, DEFAULT_TARGET);
        ids.iter()
            .filter(|id| c.cut_after(id, 4 * dim as usize + 40))
            .cloned()
            .collect()
    }

    fn ids(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("id-{i:06}")).collect()
    }

    #[test]
    fn chunks_average_near_the_target_and_respect_min_and_max() {
        for dim in [8u32, 64, 768, 4096] {
            let all = ids(20_000);
            let n = cuts(&all, dim).len().max(1);
            let per_vector = 4 * dim as usize + 40;
            let avg = all.len() * per_vector / n;
            let near = (DEFAULT_TARGET / 2..=DEFAULT_TARGET * 2).contains(&avg);
            assert!(
                near || per_vector > DEFAULT_TARGET / 4,
                "dim {dim}: average chunk {avg} bytes"
            );
            let mut c = Chunker::new(dim, DEFAULT_TARGET);
            let mut run = 0;
            for id in &all {
                run += per_vector;
                if c.cut_after(id, per_vector) {
                    assert!(run >= DEFAULT_TARGET / 4 && run < 4 * DEFAULT_TARGET + per_vector);
                    run = 0;
                }
            }
        }
    }

    #[test]
    fn an_insert_or_delete_moves_only_nearby_boundaries() {
        let all = ids(10_000);
        let before = cuts(&all, 64);
        let mut edited = all.clone();
        edited.remove(5_000);
        edited.insert(2_000, "id-001999x".into());
        let after = cuts(&edited, 64);
        let same = before.iter().filter(|c| after.contains(c)).count();
        assert!(
            same + 4 >= before.len(),
            "{same} of {} boundaries kept",
            before.len()
        );
    }
}
