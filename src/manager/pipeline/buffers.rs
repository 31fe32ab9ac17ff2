//! Byte buffers of encoded batches, handed back by the blob writer once written and reused
//! by the next batches.
//!
//! Each batch of a create is encoded into a buffer of a few MiB. Allocated fresh, every page
//! of it was faulted in and zeroed by the kernel as the encoder first wrote it: a create of
//! 50,000 × 768 took 31,800 page faults, one per 4 KiB of its 126 MB blob (`perf stat -e
//! page-faults`). A sink that is done with a buffer when its write returns (the local one)
//! lets the writer hand it back here; a sink that keeps it (object storage, until the part
//! holding it is uploaded) does not, and its batches are allocated as before.

use std::sync::{Arc, Mutex};

/// At most this many spare buffers are kept: about the batches in flight at once.
const SPARE_MAX: usize = 4;

/// Spare byte buffers, shared by the encoders that fill them and the writer that empties
/// them. Clones share the same spares.
#[derive(Clone, Default)]
pub(crate) struct ByteBuffers {
    shared: Arc<Shared>,
}

#[derive(Default)]
struct Shared {
    spare: Mutex<Vec<Vec<u8>>>,
    /// Whether the sink is done with a buffer when its write returns (said up front).
    sink_lets_go: bool,
}

impl ByteBuffers {
    /// Spares for a blob written to a sink that is (`sink_lets_go`) or may not be done with a
    /// buffer when its write returns ([`crate::sink::SinkWriter::holds_written_bytes`]).
    pub fn for_sink(sink_lets_go: bool) -> Self {
        ByteBuffers {
            shared: Arc::new(Shared {
                sink_lets_go,
                ..Default::default()
            }),
        }
    }

    /// Whether the sink said it is done with a buffer when its write returns.
    pub fn sink_lets_go(&self) -> bool {
        self.shared.sink_lets_go
    }

    /// An empty buffer with room for at least `room` bytes: a spare one if there is one.
    pub fn take(&self, room: usize) -> Vec<u8> {
        let spare = self.lock().pop();
        match spare {
            Some(mut buf) => {
                buf.clear();
                buf.reserve(room);
                buf
            }
            None => Vec::with_capacity(room),
        }
    }

    /// Keeps `buf` for a later batch (or frees it, if enough are kept).
    pub fn give(&self, buf: Vec<u8>) {
        let mut spare = self.lock();
        if spare.len() < SPARE_MAX && buf.capacity() > 0 {
            spare.push(buf);
        }
    }

    /// Trims a filled buffer to its content unless the sink is done with what it is written:
    /// a sink that keeps it (an upload part, until sent) should hold no slack.
    pub fn fit_for_sink(&self, buf: &mut Vec<u8>) {
        if !self.sink_lets_go() {
            buf.shrink_to_fit();
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Vec<u8>>> {
        self.shared.spare.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ROOM: usize = 64 << 10;

    #[test]
    fn a_buffer_given_back_is_taken_again_empty_with_its_room() {
        let buffers = ByteBuffers::for_sink(true);
        let mut buf = buffers.take(ROOM);
        buf.extend_from_slice(&[7; 900]);
        let at = buf.as_ptr();
        buffers.clone().give(buf);
        let again = buffers.take(500);
        assert!(again.is_empty());
        assert!(again.capacity() >= ROOM);
        assert_eq!(again.as_ptr(), at, "the same allocation");
    }

    #[test]
    fn a_filled_buffer_is_trimmed_only_for_a_sink_that_may_hold_it() {
        for (lets_go, trimmed) in [(false, true), (true, false)] {
            let buffers = ByteBuffers::for_sink(lets_go);
            let mut buf = Vec::with_capacity(4 * ROOM);
            buf.extend_from_slice(&[1; 10]);
            buffers.fit_for_sink(&mut buf);
            assert_eq!(buf.capacity() < ROOM, trimmed, "sink lets go: {lets_go}");
        }
        assert!(!ByteBuffers::default().sink_lets_go(), "unknown: may hold");
    }

    #[test]
    fn only_a_few_spares_are_kept() {
        let buffers = ByteBuffers::default();
        buffers.give(Vec::new());
        assert!(
            buffers.lock().is_empty(),
            "a buffer without room is not kept"
        );
        for _ in 0..SPARE_MAX + 3 {
            buffers.give(Vec::with_capacity(ROOM));
        }
        assert_eq!(buffers.lock().len(), SPARE_MAX);
    }
}
