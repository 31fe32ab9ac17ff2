//! The snapshot format: the gzip blob codec and the sidecar metadata schema.
//!
//! Both are versioned (`MAJOR.MINOR`, see `docs/FORMAT.md`). This layer knows nothing about
//! where bytes go: it turns vectors into bytes and back, synchronously, so it can be tested
//! and fuzzed on plain byte slices.

pub mod blob;
pub mod chunker;
pub mod directory;
pub mod framed;
pub mod gzip;
mod huffman;
pub mod index;
pub mod sidecar;

/// The format major version this build writes. Readers reject majors they do not know.
pub const FORMAT_MAJOR: u16 = 3;
/// Every major this build reads: format 1 and 2 repositories stay readable.
pub const SUPPORTED_MAJORS: [u16; 3] = [1, 2, 3];
/// The format minor version this build writes. Readers accept any minor of their major:
/// minors only add things older readers may ignore.
pub const FORMAT_MINOR: u16 = 0;

/// `"MAJOR.MINOR"` as written into sidecars.
pub fn format_version() -> String {
    format!("{FORMAT_MAJOR}.{FORMAT_MINOR}")
}
