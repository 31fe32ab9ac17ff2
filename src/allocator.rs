//! An allocator setting for applications that run large snapshots: glibc's mmap threshold
//! pinned at 1 MiB.
//!
//! glibc serves allocations above its mmap threshold with their own mappings, returned to
//! the system when freed. After such a block is freed it raises the threshold to that
//! block's size (up to 32 MiB), and from then on the multi-megabyte batch and part buffers
//! of an upload come from the heap arenas of whichever threads made them. Freed from other
//! threads, they fragment there and are not returned: a 200,000 × 768 create to S3 peaked
//! at +92 MiB with the threshold dynamic, and at +59 MiB with it pinned
//! (docs/PERFORMANCE.md), in about the same time.
//!
//! On the local sink a batch is written and freed by the threads that made it, and the create
//! peak stays near +31 MiB either way; there, fresh mappings for every batch buffer cost about
//! 3% of create speed. So the setting is for object storage.
//!
//! It is a process-wide setting, so the library never makes it on its own: the
//! `dakera-snapshot` CLI and the benchmark call [`pin_mmap_threshold_for`] with the repository
//! they upload to, the S3 examples call [`pin_mmap_threshold`], and an application embedding
//! the library may do the same (or use an allocator without a dynamic threshold).

/// The threshold pinned by [`pin_mmap_threshold`].
pub const MMAP_THRESHOLD: usize = 1 << 20;

/// Pins glibc's mmap threshold at [`MMAP_THRESHOLD`], which also stops glibc from moving
/// it. Returns whether the setting was made: false on other C libraries and systems, where
/// it does not apply, or if glibc refused it.
pub fn pin_mmap_threshold() -> bool {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes the allocator's parameters; glibc takes its own lock.
    let pinned =
        unsafe { libc::mallopt(libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD as libc::c_int) == 1 };
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    let pinned = false;
    pinned
}

/// Pins the threshold if `url` names object storage (anything but a local directory or a
/// `file://` URL), where uploads hold many large buffers at once; returns whether it did.
pub fn pin_mmap_threshold_for(url: &str) -> bool {
    wanted_for(url) && pin_mmap_threshold()
}

/// Whether [`pin_mmap_threshold_for`] pins the threshold for repository `url`.
fn wanted_for(url: &str) -> bool {
    url.contains("://") && !url.starts_with("file://")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_object_storage_urls_ask_for_the_setting() {
        for url in [
            "s3://b/p",
            "gs://b/p",
            "az://c/p",
            "https://a.blob.core.windows.net/c",
        ] {
            assert!(wanted_for(url), "{url}");
        }
        for url in ["./backups", "/var/backups", "file:///var/backups"] {
            assert!(!wanted_for(url), "{url}");
        }
    }
}

#[cfg(all(test, target_os = "linux", target_env = "gnu"))]
mod glibc_tests {
    use super::*;

    /// Bytes glibc holds in blocks it mapped on their own.
    fn mapped_bytes() -> usize {
        // SAFETY: mallinfo2 only reads the allocator's statistics.
        unsafe { libc::mallinfo2() }.hblkhd
    }

    /// With the threshold pinned, a 2 MiB allocation made after a 16 MiB block was freed
    /// (which would raise a dynamic threshold past it) is still mapped on its own, and so
    /// goes back to the system when freed.
    #[test]
    fn after_pinning_large_blocks_stay_mapped_even_after_a_larger_one_is_freed() {
        assert!(pin_mmap_threshold());
        drop(std::hint::black_box(vec![1u8; 16 << 20]));
        let before = mapped_bytes();
        let block = std::hint::black_box(vec![1u8; 2 << 20]);
        let during = mapped_bytes();
        assert!(
            during >= before + (2 << 20),
            "a 2 MiB block was not mapped on its own: {before} -> {during} mapped bytes"
        );
        drop(block);
        assert!(mapped_bytes() < during);
    }
}
