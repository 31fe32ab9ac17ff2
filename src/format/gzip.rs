//! Gzip members (RFC 1952) written and read with deflate states that are reset, not
//! rebuilt, for each one.
//!
//! Format 2 chunks are small (about 16 KiB), so setting up a fresh deflate or inflate state
//! per member (tens to hundreds of KiB of tables and window) would cost more than the
//! member's own work. Each thread keeps its states; the gzip framing around the raw deflate
//! stream is the fixed 10-byte header and the 8-byte trailer (CRC-32 and length of the
//! input). Members with optional header fields (names, comments, extra fields) are read by
//! flate2's own gzip reader instead.

use flate2::read::MultiGzDecoder;
use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress, Status};
use std::cell::RefCell;
use std::io::{self, Read};

/// Header of every member: magic, deflate, no flags, no time, no extra flags, unknown OS.
const HEADER: [u8; 10] = [0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 0xff];

thread_local! {
    /// This thread's deflate state, and the level it is set to.
    static DEFLATE: RefCell<Option<(Compress, u32)>> = const { RefCell::new(None) };
    /// This thread's inflate state.
    static INFLATE: RefCell<Option<Decompress>> = const { RefCell::new(None) };
}

/// Appends `raw` as one gzip member at deflate `level` (0 = stored blocks) to `out`.
#[cfg(test)]
pub fn append_member(out: &mut Vec<u8>, raw: &[u8], level: u32) {
    append_member_parts(out, raw, level, &[], false);
}

/// Appends one gzip member holding `head` deflated at `level`, then `tail`, either in the
/// same deflate stream (`tail_stored` false) or as stored blocks (true): one member, one
/// header and trailer and one reset of the deflate state per chunk, where a member per part
/// would cost two of each.
///
/// Stored blocks are written here, after a sync flush has byte-aligned the stream (RFC 1951
/// section 3.2.4: a header byte, the length and its complement, the bytes): flate2 cannot
/// change the level of a stream once it has started (`set_level` fails mid-stream with the
/// zlib-rs backend), and a stored block is five bytes of framing.
pub fn append_member_parts(
    out: &mut Vec<u8>,
    head: &[u8],
    level: u32,
    tail: &[u8],
    tail_stored: bool,
) {
    let total = head.len() + tail.len();
    out.reserve(total + total / 8192 * 5 + 64);
    out.extend_from_slice(&HEADER);
    with_reset_deflate(level, |c| {
        if tail_stored {
            deflate_all(c, head, out, FlushCompress::Sync);
            append_stored_blocks(out, tail);
        } else {
            deflate_all(c, head, out, FlushCompress::None);
            deflate_all(c, tail, out, FlushCompress::Finish);
        }
    });
    append_trailer(out, &[head, tail]);
}

/// Appends one gzip member holding `records` deflated at `level`, then `plane` Huffman-coded
/// without string matching (one block of literals, `format::huffman`), then `tail` as stored
/// blocks, in one deflate stream.
///
/// For the exponent plane of real-valued embeddings (a few distinct bytes in no order),
/// string matching costs most of a deflate's time and *loses* size: matches of three or four
/// bytes occur by chance and cost more bits as length and distance codes than the literals
/// they replace. Huffman-only coding of such a plane was 22% smaller than level 2's output
/// (0.324 against 0.416 of its bytes, 1,300 × 768 normalized values). The records (ids,
/// metadata) keep string matching.
///
/// Each part ends byte-aligned (a sync flush: an empty stored block), so the parts' blocks
/// join into one valid stream whatever state wrote them (RFC 1951: blocks are independent
/// but for back-references, and the plane's blocks make none).
pub fn append_member_planes(
    out: &mut Vec<u8>,
    records: &[u8],
    level: u32,
    plane: &[u8],
    tail: &[u8],
) {
    let total = records.len() + plane.len() + tail.len();
    out.reserve(total + total / 8192 * 5 + 64);
    out.extend_from_slice(&HEADER);
    with_reset_deflate(level, |c| {
        deflate_all(c, records, out, FlushCompress::Sync);
    });
    super::huffman::append_literal_block(out, plane);
    append_stored_blocks(out, tail);
    append_trailer(out, &[records, plane, tail]);
}

/// Appends `raw` as one gzip member of one block of Huffman-coded literals
/// (`format::huffman`), no string matching: for frames that are mostly hashes (a chunk
/// index), where deflate's matching finds little and costs most of the time.
pub fn append_literal_member(out: &mut Vec<u8>, raw: &[u8]) {
    out.reserve(raw.len() + raw.len() / 8 + 64);
    out.extend_from_slice(&HEADER);
    super::huffman::append_literal_block(out, raw);
    append_stored_blocks(out, &[]);
    append_trailer(out, &[raw]);
}

/// Appends `raw` as one gzip member of stored deflate blocks: no deflate state is touched
/// (for small members of incompressible bytes, a reset state and Huffman trees cost more
/// than the member).
pub fn append_stored_member(out: &mut Vec<u8>, raw: &[u8]) {
    out.reserve(raw.len() + raw.len() / 8192 * 5 + 32);
    out.extend_from_slice(&HEADER);
    append_stored_blocks(out, raw);
    append_trailer(out, &[raw]);
}

/// Appends a member's trailer: the CRC-32 and length (mod 2^32) of its input, `parts` in
/// order.
fn append_trailer(out: &mut Vec<u8>, parts: &[&[u8]]) {
    let mut crc = crc32fast::Hasher::new();
    let mut len = 0usize;
    for part in parts {
        crc.update(part);
        len += part.len();
    }
    out.extend_from_slice(&crc.finalize().to_le_bytes());
    out.extend_from_slice(&(len as u32).to_le_bytes());
}

/// Appends `raw` as stored deflate blocks, the last one final, to a byte-aligned stream.
fn append_stored_blocks(out: &mut Vec<u8>, raw: &[u8]) {
    let mut pieces = raw.chunks(u16::MAX as usize).peekable();
    if pieces.peek().is_none() {
        out.extend_from_slice(&[1, 0, 0, 0xff, 0xff]);
    }
    while let Some(piece) = pieces.next() {
        let last = pieces.peek().is_none();
        let len = piece.len() as u16;
        out.push(u8::from(last));
        out.extend_from_slice(&len.to_le_bytes());
        out.extend_from_slice(&(!len).to_le_bytes());
        out.extend_from_slice(piece);
    }
}

/// Runs `f` with this thread's deflate state, reset for a new stream at `level`.
fn with_reset_deflate(level: u32, f: impl FnOnce(&mut Compress)) {
    DEFLATE.with(|state| {
        let mut state = state.borrow_mut();
        let (c, at) =
            state.get_or_insert_with(|| (Compress::new(Compression::new(level), false), level));
        c.reset();
        if *at != level {
            c.set_level(Compression::new(level))
                .expect("setting the level of a reset deflate state cannot fail");
            *at = level;
        }
        f(c);
    });
}

/// Feeds all of `raw` to `c` with `flush`, appending the output to `out`: with `Finish`
/// until the stream ends; otherwise until all input is taken and a call left output room
/// to spare (with `Sync`, everything pending is then out).
fn deflate_all(c: &mut Compress, raw: &[u8], out: &mut Vec<u8>, flush: FlushCompress) {
    let start_in = c.total_in();
    loop {
        let consumed = (c.total_in() - start_in) as usize;
        if out.capacity() - out.len() < 64 {
            out.reserve(out.capacity().max(1024));
        }
        let status = c
            .compress_vec(&raw[consumed..], out, flush)
            .expect("deflating into a Vec cannot fail");
        let all_in = (c.total_in() - start_in) as usize == raw.len();
        let done = match flush {
            FlushCompress::Finish => status == Status::StreamEnd,
            _ => all_in && out.capacity() > out.len(),
        };
        if done {
            return;
        }
    }
}

/// Decompresses the gzip members that make up `compressed` (one or more, back to back),
/// appending at most `limit` bytes to `out`; more is an error, as is a damaged or truncated
/// member (checked against its CRC-32 and length).
pub fn read_members(compressed: &[u8], limit: u64, out: &mut Vec<u8>) -> io::Result<()> {
    let start = out.len();
    let fast = INFLATE.with(|state| {
        let mut state = state.borrow_mut();
        let d = state.get_or_insert_with(|| Decompress::new(false));
        let mut at = 0;
        while at < compressed.len() {
            if !plain_header(&compressed[at..]) {
                return Ok(false);
            }
            d.reset(false);
            at += HEADER.len();
            let member = out.len();
            at += inflate_member(d, &compressed[at..], limit, start, out)?;
            at += check_trailer(&compressed[at..], &out[member..])?;
        }
        Ok::<_, io::Error>(true)
    })?;
    if !fast {
        out.truncate(start);
        let mut r = MultiGzDecoder::new(compressed).take(limit.saturating_add(1));
        r.read_to_end(out)?;
        if (out.len() - start) as u64 > limit {
            return Err(too_long(limit));
        }
    }
    Ok(())
}

/// True if `b` starts with a gzip header without optional fields: deflate, no flags (the
/// time, extra flags and OS bytes are not read).
fn plain_header(b: &[u8]) -> bool {
    b.len() >= HEADER.len() && b[..4] == HEADER[..4]
}

/// Inflates one member's raw deflate stream from `input` onto `out` (which must not grow
/// past `start + limit`); returns the input bytes it took.
fn inflate_member(
    d: &mut Decompress,
    input: &[u8],
    limit: u64,
    start: usize,
    out: &mut Vec<u8>,
) -> io::Result<usize> {
    let begin = d.total_in();
    let cap = start as u64 + limit + 1;
    loop {
        if out.capacity() == out.len() {
            let want = (out.capacity().max(4096) as u64).min(cap - out.len() as u64);
            if want == 0 {
                return Err(too_long(limit));
            }
            out.reserve(want as usize);
        }
        let used = (d.total_in() - begin) as usize;
        let before = (d.total_in(), d.total_out());
        let status = d
            .decompress_vec(&input[used..], out, FlushDecompress::None)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
        if (out.len() - start) as u64 > limit {
            return Err(too_long(limit));
        }
        if status == Status::StreamEnd {
            return Ok((d.total_in() - begin) as usize);
        }
        let stalled = (d.total_in(), d.total_out()) == before;
        if stalled && out.capacity() > out.len() {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "the gzip member ends early (truncated)",
            ));
        }
    }
}

/// Checks the trailer at the start of `b` (CRC-32 and length) against the member's
/// decompressed `content`; returns the trailer's length.
fn check_trailer(b: &[u8], content: &[u8]) -> io::Result<usize> {
    let Some(t) = b.get(..8) else {
        return Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "the gzip member ends before its trailer (truncated)",
        ));
    };
    let crc = u32::from_le_bytes(t[..4].try_into().expect("4 bytes"));
    let size = u32::from_le_bytes(t[4..].try_into().expect("4 bytes"));
    if crc != crc32fast::hash(content) || size != content.len() as u32 {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "the gzip member does not match its CRC-32 or length (damaged)",
        ));
    }
    Ok(8)
}

fn too_long(limit: u64) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!("decompresses to more than the {limit} bytes recorded"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use flate2::read::MultiGzDecoder;
    use std::io::Read;

    /// `member` is one gzip member of `raw`, read back by flate2's reader and by ours.
    fn assert_reads_back_alone(member: &[u8], raw: &[u8]) {
        let mut back = Vec::new();
        flate2::read::GzDecoder::new(member)
            .read_to_end(&mut back)
            .unwrap();
        assert_eq!(back, raw);
        let mut ours = Vec::new();
        read_members(member, raw.len() as u64, &mut ours).unwrap();
        assert_eq!(ours, raw);
    }

    #[test]
    fn a_stored_member_reads_back_with_any_gzip_reader() {
        for raw in [&b""[..], b"x", &[7u8; 70_000][..]] {
            let mut out = Vec::new();
            append_stored_member(&mut out, raw);
            assert_reads_back_alone(&out, raw);
        }
    }

    #[test]
    fn a_literal_member_reads_back_with_any_gzip_reader_and_codes_hashes_tightly() {
        // Like a chunk index: counters and lengths, then a hash-like 32 bytes, per entry.
        let mut index = Vec::new();
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        for i in 0..5_000u64 {
            index.extend_from_slice(&(i * 13_000).to_le_bytes());
            index.extend_from_slice(&(12_000 + i % 900).to_le_bytes());
            for _ in 0..4 {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                index.extend_from_slice(&x.to_le_bytes());
            }
        }
        for raw in [&b""[..], b"x", &index[..]] {
            let mut out = Vec::new();
            append_literal_member(&mut out, raw);
            assert_reads_back_alone(&out, raw);
        }
        let mut out = Vec::new();
        append_literal_member(&mut out, &index);
        let (coded, raw) = (out.len() as f64, index.len() as f64);
        assert!(coded < 0.9 * raw, "{coded} bytes of {raw}");
    }

    #[test]
    fn members_read_back_with_any_gzip_reader_at_every_level() {
        let data: Vec<u8> = (0..100_000u32)
            .flat_map(|i| (i % 251).to_le_bytes())
            .collect();
        let mut blob = Vec::new();
        for level in [0, 2, 6, 9, 2, 0] {
            append_member(&mut blob, &data[..level as usize * 1000 + 17], level);
        }
        append_member(&mut blob, &[], 2);
        let mut back = Vec::new();
        MultiGzDecoder::new(&blob[..])
            .read_to_end(&mut back)
            .unwrap();
        let want: Vec<u8> = [0usize, 2, 6, 9, 2, 0]
            .iter()
            .flat_map(|l| data[..l * 1000 + 17].to_vec())
            .collect();
        assert_eq!(back, want);
        let mut ours = Vec::new();
        read_members(&blob, want.len() as u64, &mut ours).unwrap();
        assert_eq!(ours, want);
    }

    fn members(parts: &[&[u8]]) -> Vec<u8> {
        let mut out = Vec::new();
        for p in parts {
            append_member(&mut out, p, 6);
        }
        out
    }

    #[test]
    fn read_members_refuses_damage_truncation_and_excess() {
        let data: Vec<u8> = (0..20_000u32).map(|i| (i * 7 % 13) as u8).collect();
        let blob = members(&[&data, &data[..5000]]);
        let mut out = vec![9u8];
        read_members(&blob, 25_000, &mut out).unwrap();
        assert_eq!(out.len(), 25_001, "appends after what `out` held");
        assert!(read_members(&blob, 24_999, &mut Vec::new()).is_err());
        for cut in [5, 12, blob.len() / 2, blob.len() - 3] {
            let e = read_members(&blob[..cut], 25_000, &mut Vec::new());
            assert!(e.is_err(), "cut at {cut}");
        }
        for at in [20, blob.len() / 3, blob.len() - 6] {
            let mut bad = blob.clone();
            bad[at] ^= 0x10;
            let mut out = Vec::new();
            let r = read_members(&bad, 25_000, &mut out);
            assert!(
                r.is_err() || out != [&data[..], &data[..5000]].concat(),
                "flip at {at}"
            );
        }
    }

    #[test]
    fn a_member_of_parts_at_different_levels_reads_back() {
        let text: Vec<u8> = (0..30_000u32).map(|i| (i % 7) as u8).collect();
        let noise: Vec<u8> = (0..70_000u32)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
            .collect();
        let mut blob = Vec::new();
        append_member_parts(&mut blob, &text, 1, &noise, true);
        append_member_parts(&mut blob, &text[..99], 6, &noise[..10], false);
        append_member_parts(&mut blob, &[], 1, &[], true);
        append_member_parts(&mut blob, &noise[..10], 0, &text, true);
        append_member_parts(
            &mut blob,
            &noise[..200_000.min(noise.len())],
            2,
            &noise,
            true,
        );
        let want = [
            &text[..],
            &noise,
            &text[..99],
            &noise[..10],
            &noise[..10],
            &text,
            &noise,
            &noise,
        ]
        .concat();
        let mut back = Vec::new();
        MultiGzDecoder::new(&blob[..])
            .read_to_end(&mut back)
            .unwrap();
        assert_eq!(back, want);
        let mut ours = Vec::new();
        read_members(&blob, want.len() as u64, &mut ours).unwrap();
        assert_eq!(ours, want);
        assert!(
            blob.len() < 4 * noise.len() + 12_000,
            "{} bytes",
            blob.len()
        );
    }

    #[test]
    fn members_with_a_huffman_coded_plane_read_back_alone_and_together() {
        let records: Vec<u8> = b"id-0001 {\"text\": \"passage\"} ".repeat(40);
        // A few distinct bytes in no order, like an exponent plane; and more than 64 KiB of it.
        let plane: Vec<u8> = (0..90_000u32)
            .map(|i| 0x3b + ((i.wrapping_mul(2_654_435_761) >> 27) % 5) as u8)
            .collect();
        let tail: Vec<u8> = (0..9_000u32).map(|i| (i * 31 % 251) as u8).collect();
        let cases: [(&[u8], &[u8], &[u8]); 4] = [
            (&records, &plane, &tail),
            (&records[..5], &plane[..300], &[]),
            (&[], &[], &[]),
            (&records, &plane[..70_000], &tail[..1]),
        ];
        let mut blob = Vec::new();
        let mut want = Vec::new();
        for (r, p, t) in cases {
            let mut member = Vec::new();
            append_member_planes(&mut member, r, 2, p, t);
            let raw = [r, p, t].concat();
            // Each member decodes alone (the Huffman stream is never reset between them).
            assert_reads_back_alone(&member, &raw);
            blob.extend_from_slice(&member);
            want.extend_from_slice(&raw);
        }
        let mut back = Vec::new();
        MultiGzDecoder::new(&blob[..])
            .read_to_end(&mut back)
            .unwrap();
        assert_eq!(back, want);
        // The plane is coded in about 2.3 bits a byte (5 symbols), not stored.
        let mut one = Vec::new();
        append_member_planes(&mut one, &[], 2, &plane, &[]);
        assert!(one.len() < plane.len() * 2 / 5, "{} bytes", one.len());
    }

    #[test]
    fn members_with_header_fields_are_read_too() {
        use flate2::write::GzEncoder;
        use std::io::Write;
        let mut e = flate2::GzBuilder::new()
            .filename("chunk")
            .comment("written elsewhere")
            .write(Vec::new(), Compression::fast());
        e.write_all(b"hello, members").unwrap();
        let mut blob = e.finish().unwrap();
        let mut plain = GzEncoder::new(Vec::new(), Compression::best());
        plain.write_all(b" and more").unwrap();
        blob.extend(plain.finish().unwrap());
        let mut out = Vec::new();
        read_members(&blob, 100, &mut out).unwrap();
        assert_eq!(out, b"hello, members and more");
    }
}
