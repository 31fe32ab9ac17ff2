//! Options: one struct that works from code, a config file and the CLI alike.

use crate::error::{Error, Result};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// How the [`crate::SnapshotManager`] writes and restores snapshots.
///
/// Every field is honoured (the original module ignored `compression_enabled` and
/// `include_metadata`). Deserializes with defaults for missing fields and rejects unknown
/// ones, so a typo in a config file is an error rather than a silent default.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SnapshotConfig {
    /// Keep at most this many snapshots: after each create, older ones that no kept snapshot
    /// depends on are deleted. `0` keeps everything. Default 10.
    pub max_snapshots: usize,
    /// Deflate the blob. When off, chunks are written as stored (level 0) gzip, which
    /// `zcat` still reads. Default on.
    pub compression_enabled: bool,
    /// How hard to deflate: `fast` (deflate level 2, the default), `default` (6) or `best`
    /// (9). See docs/PERFORMANCE.md: with the shuffle filter, `fast` is within half a percent
    /// of `best` at several times the speed.
    pub compression_level: CompressionLevel,
    /// Byte-shuffle vector values so their exponent bytes compress and their mantissa
    /// bytes are stored (see [`crate::format::blob::Filter::Shuffle`]). Default on: smaller
    /// and faster. Off writes one plain VECTOR frame per vector.
    pub shuffle: bool,
    /// Store each vector's JSON metadata. Default on.
    pub include_metadata: bool,
    /// Uncompressed bytes per chunk (the unit of parallel compression). Larger chunks
    /// compress slightly better; smaller ones bound memory and make corruption reports more
    /// precise. 4 KiB to 32 MiB, default 4 MiB.
    pub chunk_size: usize,
    /// Target uncompressed bytes of a content-defined chunk, the unit of deduplication
    /// between snapshots: an incremental stores only the chunks its parent's chain does not
    /// hold. Smaller chunks store less per change but make the chunk index larger (about 60
    /// bytes a chunk). 1 KiB to 1 MiB, default 16 KiB. See docs/PERFORMANCE.md.
    pub dedup_chunk_size: usize,
    /// Vectors read from the store per scan call. Default 1000.
    pub scan_page_size: usize,
    /// Vectors per upsert call on restore. Default 1000.
    pub restore_batch_size: usize,
    /// Chunks compressed or decompressed at once; `0` means one per CPU core. Default 0.
    pub parallelism: usize,
}

impl Default for SnapshotConfig {
    fn default() -> Self {
        SnapshotConfig {
            max_snapshots: 10,
            compression_enabled: true,
            compression_level: CompressionLevel::Fast,
            shuffle: true,
            include_metadata: true,
            chunk_size: 4 << 20,
            dedup_chunk_size: crate::format::chunker::DEFAULT_TARGET,
            scan_page_size: 1000,
            restore_batch_size: 1000,
            parallelism: 0,
        }
    }
}

impl SnapshotConfig {
    /// The defaults.
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets [`Self::max_snapshots`].
    pub fn with_max_snapshots(mut self, n: usize) -> Self {
        self.max_snapshots = n;
        self
    }

    /// Sets [`Self::compression_enabled`].
    pub fn with_compression(mut self, enabled: bool) -> Self {
        self.compression_enabled = enabled;
        self
    }

    /// Sets [`Self::compression_level`].
    pub fn with_compression_level(mut self, level: CompressionLevel) -> Self {
        self.compression_level = level;
        self
    }

    /// Sets [`Self::shuffle`].
    pub fn with_shuffle(mut self, shuffle: bool) -> Self {
        self.shuffle = shuffle;
        self
    }

    /// Sets [`Self::include_metadata`].
    pub fn with_include_metadata(mut self, include: bool) -> Self {
        self.include_metadata = include;
        self
    }

    /// Sets [`Self::chunk_size`].
    pub fn with_chunk_size(mut self, bytes: usize) -> Self {
        self.chunk_size = bytes;
        self
    }

    /// Sets [`Self::dedup_chunk_size`].
    pub fn with_dedup_chunk_size(mut self, bytes: usize) -> Self {
        self.dedup_chunk_size = bytes;
        self
    }

    /// Sets [`Self::scan_page_size`].
    pub fn with_scan_page_size(mut self, n: usize) -> Self {
        self.scan_page_size = n;
        self
    }

    /// Sets [`Self::restore_batch_size`].
    pub fn with_restore_batch_size(mut self, n: usize) -> Self {
        self.restore_batch_size = n;
        self
    }

    /// Sets [`Self::parallelism`].
    pub fn with_parallelism(mut self, n: usize) -> Self {
        self.parallelism = n;
        self
    }

    /// Checks ranges; the manager calls it on construction.
    pub fn validate(&self) -> Result<()> {
        if !(4096..=(32 << 20)).contains(&self.chunk_size) {
            return Err(Error::Config(format!(
                "chunk_size must be 4 KiB to 32 MiB, got {}",
                self.chunk_size
            )));
        }
        if !crate::format::chunker::TARGET_RANGE.contains(&self.dedup_chunk_size) {
            return Err(Error::Config(format!(
                "dedup_chunk_size must be 1 KiB to 1 MiB, got {}",
                self.dedup_chunk_size
            )));
        }
        if self.scan_page_size == 0 || self.restore_batch_size == 0 {
            return Err(Error::Config(
                "scan_page_size and restore_batch_size must be at least 1".to_string(),
            ));
        }
        Ok(())
    }

    /// The deflate level actually used.
    pub fn effective_level(&self) -> u32 {
        if !self.compression_enabled {
            return 0;
        }
        match self.compression_level {
            CompressionLevel::Fast => 2,
            CompressionLevel::Default => 6,
            CompressionLevel::Best => 9,
        }
    }

    /// The value filter actually used.
    pub fn effective_filter(&self) -> crate::format::blob::Filter {
        if self.shuffle {
            crate::format::blob::Filter::Shuffle
        } else {
            crate::format::blob::Filter::None
        }
    }

    /// Compression jobs in flight.
    pub fn effective_parallelism(&self) -> usize {
        match self.parallelism {
            0 => available_cpus(),
            n => n,
        }
    }
}

/// The CPUs this process may use, asked once: `available_parallelism` reads the cgroup
/// files on every call (three opens), which cost about a fifth of a restore of 10,000 small
/// namespaces when it was asked per namespace.
fn available_cpus() -> usize {
    static CPUS: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    *CPUS.get_or_init(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
}

/// How hard to compress. (Turn compression off with `compression_enabled = false`.)
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CompressionLevel {
    /// Deflate level 2: the default. (zlib-rs's level 1 uses a "quick" strategy that does
    /// poorly on float data, so level 2 is the fast end.)
    #[default]
    Fast,
    /// Deflate level 6.
    Default,
    /// Deflate level 9.
    Best,
}

/// Per-snapshot information supplied by the caller.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CreateOptions {
    /// Free text shown in listings.
    pub description: Option<String>,
    /// Key-value labels (e.g. `env=prod`).
    pub labels: BTreeMap<String, String>,
}

impl CreateOptions {
    /// Options with a description.
    pub fn described(description: impl Into<String>) -> Self {
        CreateOptions {
            description: Some(description.into()),
            labels: BTreeMap::new(),
        }
    }

    /// Adds a label.
    pub fn with_label(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.labels.insert(key.into(), value.into());
        self
    }

    pub(crate) fn validate(&self) -> Result<()> {
        if self.description.as_ref().is_some_and(|d| d.len() > 4096) {
            return Err(Error::invalid("description", "longer than 4096 bytes"));
        }
        for (k, v) in &self.labels {
            if k.is_empty() || k.len() > 128 || k.chars().any(|c| c.is_control() || c == '=') {
                return Err(Error::invalid(
                    "label",
                    format!(
                        "key {k:?} must be 1 to 128 characters without '=' or control characters"
                    ),
                ));
            }
            if v.len() > 1024 || v.chars().any(char::is_control) {
                return Err(Error::invalid(
                    "label",
                    format!("value of {k:?} must be at most 1024 bytes without control characters"),
                ));
            }
        }
        Ok(())
    }
}

/// Whether a restore replaces target namespaces or merges into them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RestoreMode {
    /// The restored namespace equals the snapshot: vectors added after it are removed, and a
    /// namespace of another dimension is recreated. The default.
    #[default]
    Replace,
    /// Upsert the snapshot's vectors and leave others alone. Fails before any change if a
    /// target namespace has another dimension.
    Merge,
}

/// What to restore, and how.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RestoreOptions {
    /// Restore only these namespaces (`None`: all of them).
    pub namespaces: Option<Vec<String>>,
    /// Restore namespace `key` under the name `value`.
    pub rename: BTreeMap<String, String>,
    /// Replace (default) or merge.
    pub mode: RestoreMode,
    /// Also restore vectors whose expiry has passed. Off by default: a restore never
    /// resurrects data that had already expired.
    pub include_expired: bool,
}

impl RestoreOptions {
    /// Restore everything, replacing.
    pub fn new() -> Self {
        Self::default()
    }

    /// Only these namespaces.
    pub fn only<I, S>(mut self, namespaces: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.namespaces = Some(namespaces.into_iter().map(Into::into).collect());
        self
    }

    /// Restore `from` as `to`.
    pub fn rename(mut self, from: impl Into<String>, to: impl Into<String>) -> Self {
        self.rename.insert(from.into(), to.into());
        self
    }

    /// Sets the mode.
    pub fn mode(mut self, mode: RestoreMode) -> Self {
        self.mode = mode;
        self
    }

    /// Restore already-expired vectors too.
    pub fn include_expired(mut self, include: bool) -> Self {
        self.include_expired = include;
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_file_defaults_and_typos() {
        let c: SnapshotConfig = serde_json::from_str(r#"{"max_snapshots": 3}"#).unwrap();
        assert_eq!(c, SnapshotConfig::new().with_max_snapshots(3));
        let err = serde_json::from_str::<SnapshotConfig>(r#"{"max_snapshot": 3}"#).unwrap_err();
        assert!(err.to_string().contains("unknown field"), "{err}");
    }

    #[test]
    fn validation() {
        assert!(SnapshotConfig::new().validate().is_ok());
        assert!(SnapshotConfig::new()
            .with_chunk_size(64 << 20)
            .validate()
            .is_err());
        let c: SnapshotConfig =
            serde_json::from_str(r#"{"compression_level": "best", "shuffle": false}"#).unwrap();
        assert_eq!(
            (c.effective_level(), c.effective_filter()),
            (9, crate::format::blob::Filter::None)
        );
        assert!(serde_json::from_str::<SnapshotConfig>(r#"{"compression_level": 4}"#).is_err());
        assert!(SnapshotConfig::new()
            .with_chunk_size(10)
            .validate()
            .is_err());
        assert!(SnapshotConfig::new()
            .with_scan_page_size(0)
            .validate()
            .is_err());
        assert_eq!(
            SnapshotConfig::new()
                .with_compression(false)
                .effective_level(),
            0
        );
        assert!(CreateOptions::default()
            .with_label("a=b", "x")
            .validate()
            .is_err());
        assert!(CreateOptions::default()
            .with_label("env", "prod")
            .validate()
            .is_ok());
    }
}
