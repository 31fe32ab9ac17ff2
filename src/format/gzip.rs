//! Gzip members (RFC 1952) from a deflate state that is reset, not rebuilt, for each one.
//!
//! Format 2 chunks are small (about 16 KiB), so setting up a fresh deflate state per member
//! (hundreds of KiB of tables) would cost more than compressing the member. Each thread
//! keeps one state per level; the gzip framing around the raw deflate stream is the fixed
//! 10-byte header and the 8-byte trailer (CRC-32 and length of the input).

use flate2::{Compress, Compression, FlushCompress, Status};
use std::cell::RefCell;

/// Header of every member: magic, deflate, no flags, no time, no extra flags, unknown OS.
const HEADER: [u8; 10] = [0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 0xff];

thread_local! {
    /// This thread's deflate states, by level.
    static STATES: RefCell<Vec<(u32, Compress)>> = const { RefCell::new(Vec::new()) };
}

/// Appends `raw` as one gzip member at deflate `level` (0 = stored blocks) to `out`.
pub fn append_member(out: &mut Vec<u8>, raw: &[u8], level: u32) {
    out.reserve(raw.len() + raw.len() / 8192 * 5 + 64);
    out.extend_from_slice(&HEADER);
    STATES.with(|states| {
        let mut states = states.borrow_mut();
        let at = match states.iter().position(|(l, _)| *l == level) {
            Some(at) => at,
            None => {
                states.push((level, Compress::new(Compression::new(level), false)));
                states.len() - 1
            }
        };
        let c = &mut states[at].1;
        c.reset();
        deflate_all(c, raw, out);
    });
    out.extend_from_slice(&crc32fast::hash(raw).to_le_bytes());
    out.extend_from_slice(&(raw.len() as u32).to_le_bytes());
}

fn deflate_all(c: &mut Compress, raw: &[u8], out: &mut Vec<u8>) {
    let start_in = c.total_in();
    loop {
        let consumed = (c.total_in() - start_in) as usize;
        if out.capacity() - out.len() < 64 {
            out.reserve(out.capacity().max(1024));
        }
        let status = c
            .compress_vec(&raw[consumed..], out, FlushCompress::Finish)
            .expect("deflating into a Vec cannot fail");
        if status == Status::StreamEnd {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use flate2::read::MultiGzDecoder;
    use std::io::Read;

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
    }
}
