//! Deflate blocks of literals only (RFC 1951, block type 2: dynamic Huffman codes, no
//! back-references): how the exponent plane of a shuffled chunk is coded.
//!
//! zlib's Huffman-only strategy writes the same kind of block, but through its general
//! machinery: every byte goes through the symbol buffer, the trees are rebuilt by its heap
//! code and the symbols emitted a second pass later. On the reference data that was a third
//! of a single-threaded create (perf: `flush_block_only`, `deflate_huff`, `pqdownheap`), for
//! about 140 MB/s. Here a block is a histogram, a code for the few distinct bytes a plane
//! holds, and one pass that writes each byte's code through a 64-bit bit buffer.
//!
//! The output is an ordinary deflate block; any inflater reads it.

/// Longest code a literal/length code may have (RFC 1951).
const MAX_LITERAL_BITS: u8 = 15;
/// Longest code the code-length alphabet may have.
const MAX_LENGTH_BITS: u8 = 7;
/// The end-of-block symbol.
const END_OF_BLOCK: usize = 256;
/// Literal/length codes written (0..=255 literals and the end of block; no lengths).
const LITERAL_CODES: usize = 257;
/// Distance codes written: two of one bit each, unused. The data has no back-references, so
/// one code of zero bits would do (RFC 1951 3.2.7), but zlib writes two and some inflaters
/// expect at least one with bits.
const DISTANCE_CODES: usize = 2;
/// The order in which the code-length alphabet's lengths are written (RFC 1951 3.2.7).
const LENGTH_ORDER: [usize; 19] = [
    16, 17, 18, 0, 8, 7, 9, 6, 10, 5, 11, 4, 12, 3, 13, 2, 14, 1, 15,
];

/// Appends `data` as one non-final deflate block of literals, then an empty stored block, so
/// the stream ends byte-aligned (what zlib's sync flush writes) and any block may follow.
/// The stream before must end byte-aligned too. Nothing is appended for empty `data`.
pub fn append_literal_block(out: &mut Vec<u8>, data: &[u8]) {
    if data.is_empty() {
        return;
    }
    let mut freq = [0u32; LITERAL_CODES];
    count(data, &mut freq);
    freq[END_OF_BLOCK] = 1;
    let lengths = code_lengths(&freq, MAX_LITERAL_BITS);
    let codes = canonical_codes(&lengths);
    out.reserve(data.len() + data.len() / 4 + 128);
    let mut w = BitWriter { out, bits: 0, n: 0 };
    w.put(0b100, 3); // not final, dynamic Huffman codes
    write_code_lengths(&mut w, &lengths);
    for &b in data {
        let (code, len) = codes[usize::from(b)];
        w.put(code, len);
    }
    let (code, len) = codes[END_OF_BLOCK];
    w.put(code, len);
    w.put(0, 3); // an empty stored block: not final, type 0
    w.align();
    w.out.extend_from_slice(&[0, 0, 0xff, 0xff]);
}

/// Adds the byte frequencies of `data` to `freq`, in four interleaved tables (consecutive
/// equal bytes would otherwise wait on each other's increments).
fn count(data: &[u8], freq: &mut [u32; LITERAL_CODES]) {
    let mut tables = [[0u32; 256]; 4];
    let mut quads = data.chunks_exact(4);
    for q in &mut quads {
        tables[0][usize::from(q[0])] += 1;
        tables[1][usize::from(q[1])] += 1;
        tables[2][usize::from(q[2])] += 1;
        tables[3][usize::from(q[3])] += 1;
    }
    for &b in quads.remainder() {
        tables[0][usize::from(b)] += 1;
    }
    for (i, f) in freq.iter_mut().take(256).enumerate() {
        *f += tables.iter().map(|t| t[i]).sum::<u32>();
    }
}

/// Huffman code lengths for `freq` (0 for unused symbols), none longer than `limit`. At
/// least two symbols get a code (a lone symbol is given a partner), as inflaters expect.
/// Past the limit, frequencies are halved (keeping every used symbol at least 1) and the
/// code built again: the distribution flattens until it fits, which happens only for very
/// skewed inputs and costs little size.
fn code_lengths<const N: usize>(freq: &[u32; N], limit: u8) -> [u8; N] {
    // The used symbols, by ascending weight: a plane uses a few dozen of 257.
    let mut used: Vec<(u32, u16)> = (0..N)
        .filter(|&s| freq[s] > 0)
        .map(|s| (freq[s], s as u16))
        .collect();
    if used.len() < 2 {
        let partner = if used.first().is_some_and(|&(_, s)| s == 0) {
            1
        } else {
            0
        };
        used.push((1, partner));
    }
    loop {
        used.sort_unstable();
        let depths = huffman_depths(&used);
        if depths.iter().all(|&d| d <= limit) {
            let mut lengths = [0u8; N];
            for (&(_, s), &d) in used.iter().zip(&depths) {
                lengths[usize::from(s)] = d;
            }
            return lengths;
        }
        for (w, _) in &mut used {
            *w = (*w / 2).max(1);
        }
    }
}

/// The depth of each leaf in a Huffman tree of `leaves` (weights in ascending order, at
/// least two): the two-queue construction, where merged nodes are made in ascending weight
/// order and so need no heap.
fn huffman_depths(leaves: &[(u32, u16)]) -> Vec<u8> {
    let m = leaves.len();
    // Nodes 0..m are the leaves, m.. the merges, each after its children.
    let mut weight: Vec<u64> = leaves.iter().map(|&(w, _)| u64::from(w)).collect();
    weight.reserve(m - 1);
    let mut parent = vec![0usize; 2 * m - 1];
    let (mut leaf, mut merged) = (0, m);
    let mut smallest = |weight: &Vec<u64>| {
        let take_leaf = leaf < m && (merged >= weight.len() || weight[leaf] <= weight[merged]);
        if take_leaf {
            leaf += 1;
            leaf - 1
        } else {
            merged += 1;
            merged - 1
        }
    };
    for node in m..2 * m - 1 {
        let a = smallest(&weight);
        let b = smallest(&weight);
        parent[a] = node;
        parent[b] = node;
        weight.push(weight[a] + weight[b]);
    }
    let mut depth = vec![0u8; 2 * m - 1];
    for node in (0..2 * m - 2).rev() {
        depth[node] = depth[parent[node]].saturating_add(1);
    }
    depth.truncate(m);
    depth
}

/// The canonical codes of `lengths` (RFC 1951 3.2.2), bit-reversed for a stream written
/// from the least significant bit, with their lengths.
fn canonical_codes<const N: usize>(lengths: &[u8; N]) -> [(u32, u8); N] {
    let mut count = [0u32; 16];
    for &l in lengths {
        count[usize::from(l)] += 1;
    }
    count[0] = 0;
    let mut next = [0u32; 16];
    let mut code = 0;
    for bits in 1..16 {
        code = (code + count[bits - 1]) << 1;
        next[bits] = code;
    }
    let mut codes = [(0u32, 0u8); N];
    for (c, &l) in codes.iter_mut().zip(lengths) {
        if l > 0 {
            let n = &mut next[usize::from(l)];
            *c = (n.reverse_bits() >> (32 - u32::from(l)), l);
            *n += 1;
        }
    }
    codes
}

/// Writes the block's code lengths: HLIT, HDIST, HCLEN, the code-length code, then the
/// literal and distance code lengths run-length coded with it.
fn write_code_lengths(w: &mut BitWriter<'_>, literal_lengths: &[u8; LITERAL_CODES]) {
    let mut all = [1u8; LITERAL_CODES + DISTANCE_CODES];
    all[..LITERAL_CODES].copy_from_slice(literal_lengths);
    let runs = run_lengths(&all);
    let mut freq = [0u32; 19];
    for &(symbol, _) in &runs {
        freq[usize::from(symbol)] += 1;
    }
    let lengths = code_lengths(&freq, MAX_LENGTH_BITS);
    let codes = canonical_codes(&lengths);
    let written = LENGTH_ORDER
        .iter()
        .rposition(|&s| lengths[s] != 0)
        .map_or(4, |last| (last + 1).max(4));
    w.put((LITERAL_CODES - 257) as u32, 5);
    w.put((DISTANCE_CODES - 1) as u32, 5);
    w.put((written - 4) as u32, 4);
    for &s in &LENGTH_ORDER[..written] {
        w.put(u32::from(lengths[s]), 3);
    }
    for (symbol, extra) in runs {
        let (code, len) = codes[usize::from(symbol)];
        w.put(code, len);
        match symbol {
            16 => w.put(extra, 2),
            17 => w.put(extra, 3),
            18 => w.put(extra, 7),
            _ => {}
        }
    }
}

/// `lengths` in the code-length alphabet: 0-15 a length, 16 the previous length 3-6 more
/// times, 17 a zero 3-10 times, 18 a zero 11-138 times; each with its extra bits' value.
fn run_lengths(lengths: &[u8]) -> Vec<(u8, u32)> {
    let mut out = Vec::new();
    let mut i = 0;
    while i < lengths.len() {
        let l = lengths[i];
        let run = lengths[i..].iter().take_while(|&&x| x == l).count();
        if l == 0 && run >= 3 {
            let take = run.min(138);
            out.push(if take >= 11 {
                (18, (take - 11) as u32)
            } else {
                (17, (take - 3) as u32)
            });
            i += take;
        } else if l != 0 && run >= 4 {
            out.push((l, 0));
            let take = (run - 1).min(6);
            out.push((16, (take - 3) as u32));
            i += 1 + take;
        } else {
            out.push((l, 0));
            i += 1;
        }
    }
    out
}

/// Writes bit fields from the least significant bit up (RFC 1951 3.1.1).
struct BitWriter<'a> {
    out: &'a mut Vec<u8>,
    bits: u64,
    n: u32,
}

impl BitWriter<'_> {
    /// Appends the low `len` bits of `value` (at most 16).
    #[inline]
    fn put(&mut self, value: u32, len: u8) {
        self.bits |= u64::from(value) << self.n;
        self.n += u32::from(len);
        if self.n >= 32 {
            self.out
                .extend_from_slice(&(self.bits as u32).to_le_bytes());
            self.bits >>= 32;
            self.n -= 32;
        }
    }

    /// Pads to a byte boundary with zero bits and writes out every bit.
    fn align(&mut self) {
        let bytes = self.n.div_ceil(8) as usize;
        self.out
            .extend_from_slice(&self.bits.to_le_bytes()[..bytes]);
        self.bits = 0;
        self.n = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    /// `parts` as one raw deflate stream: each a literal block, then a final empty stored
    /// block; inflated back.
    fn round_trip(parts: &[&[u8]]) -> Vec<u8> {
        let mut stream = Vec::new();
        for p in parts {
            append_literal_block(&mut stream, p);
        }
        stream.extend_from_slice(&[1, 0, 0, 0xff, 0xff]);
        let mut back = Vec::new();
        flate2::read::DeflateDecoder::new(&stream[..])
            .read_to_end(&mut back)
            .expect("a valid deflate stream");
        back
    }

    fn lcg(seed: u64) -> impl FnMut() -> u64 {
        let mut x = seed;
        move || {
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            x >> 33
        }
    }

    #[test]
    fn blocks_of_any_distribution_inflate_back_exactly() {
        let mut next = lcg(7);
        let one_byte = vec![0x3f; 5000];
        let two_bytes: Vec<u8> = (0..3000)
            .map(|i| if i % 7 == 0 { 0xbe } else { 0x3e })
            .collect();
        let all_bytes: Vec<u8> = (0..=255u8).cycle().take(10_000).collect();
        let random: Vec<u8> = (0..20_000).map(|_| next() as u8).collect();
        // Exponent-like: a handful of values around 0x3d and 0xbd, skewed.
        let exponents: Vec<u8> = (0..50_000)
            .map(|_| {
                let r = next() % 100;
                let e = 0x3b + (r % 5) as u8 * u8::from(r > 40);
                if next() % 2 == 0 {
                    e
                } else {
                    e | 0x80
                }
            })
            .collect();
        for data in [&one_byte, &two_bytes, &all_bytes, &random, &exponents] {
            assert_eq!(round_trip(&[data]), *data);
        }
        assert_eq!(round_trip(&[&[0u8][..]]), vec![0u8]);
        assert_eq!(round_trip(&[&[255u8][..]]), vec![255u8]);
        // Blocks join into one stream; an empty part adds nothing.
        let joined: Vec<u8> = [&exponents[..], &random[..]].concat();
        assert_eq!(round_trip(&[&exponents, &[], &random]), joined);
    }

    #[test]
    fn codes_past_fifteen_bits_are_limited_and_still_decode() {
        // Fibonacci frequencies make an unlimited Huffman code as deep as the symbols are
        // many: with the end-of-block symbol (weight 1) ahead of them, 25 symbols of
        // weights 1, 2, 3, 5, ... would need 25 bits.
        let mut data = Vec::new();
        let (mut a, mut b) = (1usize, 2usize);
        for s in 0..25u8 {
            data.extend(std::iter::repeat_n(s, a));
            (a, b) = (b, a + b);
        }
        let mut freq = [0u32; LITERAL_CODES];
        count(&data, &mut freq);
        freq[END_OF_BLOCK] = 1;
        assert!(code_lengths(&freq, u8::MAX).iter().any(|&l| l > 15));
        assert!(code_lengths(&freq, 15).iter().all(|&l| l <= 15));
        assert_eq!(round_trip(&[&data]), data);
    }

    #[test]
    fn the_code_is_complete_and_prefix_free() {
        let mut next = lcg(3);
        let data: Vec<u8> = (0..4096).map(|_| (next() % 40) as u8).collect();
        let mut freq = [0u32; LITERAL_CODES];
        count(&data, &mut freq);
        freq[END_OF_BLOCK] = 1;
        let lengths = code_lengths(&freq, 15);
        // Kraft's sum of a complete code is exactly 1.
        let kraft: f64 = lengths
            .iter()
            .filter(|&&l| l > 0)
            .map(|&l| 0.5f64.powi(i32::from(l)))
            .sum();
        assert!((kraft - 1.0).abs() < 1e-12, "{kraft}");
        let codes = canonical_codes(&lengths);
        for (i, &(ci, li)) in codes.iter().enumerate().filter(|(_, c)| c.1 > 0) {
            for &(cj, lj) in codes.iter().skip(i + 1).filter(|c| c.1 > 0) {
                let l = li.min(lj);
                let mask = (1u32 << l) - 1;
                assert_ne!(ci & mask, cj & mask, "one code is a prefix of another");
            }
        }
    }

    #[test]
    fn a_plane_costs_its_huffman_code_plus_a_small_header() {
        let mut next = lcg(11);
        let plane: Vec<u8> = (0..16_384)
            .map(|_| 0x3c + (next() % 3) as u8 + 0x80 * (next() % 2) as u8)
            .collect();
        let mut ours = Vec::new();
        append_literal_block(&mut ours, &plane);
        // The optimal code of the bytes and the end-of-block symbol.
        let mut freq = [0u32; LITERAL_CODES];
        count(&plane, &mut freq);
        freq[END_OF_BLOCK] = 1;
        // An optimal code's cost is the sum of the weights of every merge (Huffman's
        // construction, computed here apart from the code under test).
        let mut heap: std::collections::BinaryHeap<std::cmp::Reverse<u64>> = freq
            .iter()
            .filter(|&&f| f > 0)
            .map(|&f| std::cmp::Reverse(u64::from(f)))
            .collect();
        let mut bits = 0;
        while heap.len() > 1 {
            let (a, b) = (heap.pop().unwrap().0, heap.pop().unwrap().0);
            bits += a + b;
            heap.push(std::cmp::Reverse(a + b));
        }
        let lengths = code_lengths(&freq, 15);
        let ours_bits: u64 = freq
            .iter()
            .zip(&lengths)
            .map(|(&f, &l)| u64::from(f) * u64::from(l))
            .sum();
        assert_eq!(ours_bits, bits, "the code is optimal");
        assert!(
            ours.len() as u64 <= bits / 8 + 64,
            "{} bytes for {} bytes of codes",
            ours.len(),
            bits / 8
        );
        let mut zlib = flate2::write::DeflateEncoder::new(Vec::new(), flate2::Compression::new(1));
        std::io::Write::write_all(&mut zlib, &plane).unwrap();
        assert!(ours.len() < zlib.finish().unwrap().len());
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig {
            cases: 64,
            ..Default::default()
        })]

        /// Any bytes, drawn from alphabets of 1 to 256 values with any skew, inflate back.
        #[test]
        fn any_bytes_inflate_back(
            alphabet in 1u32..=256,
            skew in 0u32..16,
            seed in proptest::prelude::any::<u64>(),
            len in 0usize..40_000,
        ) {
            let mut next = lcg(seed);
            let data: Vec<u8> = (0..len)
                .map(|_| {
                    // Smaller values more often the larger the skew.
                    let mut v = (next() as u32) % alphabet;
                    for _ in 0..skew % 4 {
                        v = v.min((next() as u32) % alphabet);
                    }
                    (v.wrapping_mul(skew | 1)) as u8
                })
                .collect();
            proptest::prop_assert_eq!(round_trip(&[&data]), data);
        }
    }
}
