//! Progress reporting for long operations (downloads, uploads, exports, imports).
//!
//! The library reports bytes moved through a [`Progress`]; what to show is the caller's
//! business (the CLI draws indicatif bars on stderr). The default, [`NoProgress`], does
//! nothing.

/// Receives progress of long operations. Calls may come from several tasks at once.
pub trait Progress: Send + Sync + std::fmt::Debug {
    /// A new phase begins: `what` names it ("verify 20261125T...", "copy ..."), `total` is the
    /// number of bytes it will move when known.
    fn begin(&self, what: &str, total: Option<u64>) {
        let _ = (what, total);
    }

    /// `bytes` more bytes were moved in the current phase.
    fn advance(&self, bytes: u64) {
        let _ = bytes;
    }

    /// The current phase ended (successfully or not).
    fn end(&self) {}
}

/// Reports nothing.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoProgress;

impl Progress for NoProgress {}
