//! Client-side encryption of a repository (format 4.0).
//!
//! A repository is encrypted when it is created ([`crate::SnapshotManager::init`] with a key):
//! a random 256-bit master key is made, stored only wrapped by user keys under `keys/`
//! (`keyfile.rs`), and a repository config object records that the repository is encrypted
//! (`repository.rs`). Everything else is derived from the master key with HKDF-SHA256:
//!
//! - a data key per snapshot, which seals each chunk of its blob with AES-256-GCM (a random
//!   nonce per chunk; associated data binding the chunk to the snapshot, the namespace, its
//!   kind and its identity; see docs/FORMAT.md);
//! - a metadata key, which seals the private part of each sidecar and checks the config;
//! - an identity key: chunk identities are HMAC-SHA256s under it, so equal content in two
//!   repositories, or guessed content, cannot be confirmed from the outside.
//!
//! `docs/RELIABILITY.md` says what this protects against and what it does not.

pub(crate) mod kdf;
pub(crate) mod keyfile;
pub(crate) mod repository;
pub(crate) mod seal;
pub(crate) mod sidecar;

pub use kdf::KdfParams;
pub use keyfile::KeyInfo;

use crate::error::{Error, Result};
use aws_lc_rs::hkdf::{Salt, HKDF_SHA256};
use aws_lc_rs::hmac;
use seal::{OpenFailed, SealKey};
use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use zeroize::Zeroizing;

/// What opens an encrypted repository: a passphrase or a 256-bit key. `Debug` never shows
/// the secret.
#[derive(Clone)]
pub enum KeySource {
    /// A passphrase, stretched with Argon2id.
    Password(Zeroizing<String>),
    /// A raw 256-bit key (a key file).
    Key(Zeroizing<[u8; 32]>),
}

impl std::fmt::Debug for KeySource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            KeySource::Password(_) => "KeySource::Password(..)",
            KeySource::Key(_) => "KeySource::Key(..)",
        })
    }
}

impl KeySource {
    /// A passphrase; refused if empty.
    pub fn password(passphrase: impl Into<String>) -> Result<KeySource> {
        let p = Zeroizing::new(passphrase.into());
        if p.is_empty() {
            return Err(Error::invalid("password", "it is empty"));
        }
        Ok(KeySource::Password(p))
    }

    /// The passphrase in the first line of `path` (a trailing newline is not part of it).
    pub fn password_file(path: impl AsRef<Path>) -> Result<KeySource> {
        let path = path.as_ref();
        let text = Zeroizing::new(
            std::fs::read_to_string(path)
                .map_err(|e| Error::io(format!("reading password file {}", path.display()), e))?,
        );
        let line = text.lines().next().unwrap_or("");
        Self::password(line)
            .map_err(|_| Error::invalid("password file", format!("{} is empty", path.display())))
    }

    /// The 256-bit key in `path`: 32 raw bytes, or 64 hex digits (and a newline).
    pub fn key_file(path: impl AsRef<Path>) -> Result<KeySource> {
        let path = path.as_ref();
        let bytes = Zeroizing::new(
            std::fs::read(path)
                .map_err(|e| Error::io(format!("reading key file {}", path.display()), e))?,
        );
        let mut key = Zeroizing::new([0u8; 32]);
        if bytes.len() == 32 {
            key.copy_from_slice(&bytes);
            return Ok(KeySource::Key(key));
        }
        let text = std::str::from_utf8(&bytes).unwrap_or("").trim_end();
        if text.len() == 64 && hex::decode_to_slice(text, &mut key[..]).is_ok() {
            return Ok(KeySource::Key(key));
        }
        Err(Error::invalid(
            "key file",
            format!(
                "{} holds {} bytes; a key file is 32 random bytes or 64 hex digits (make one with `dakera-snapshot key generate FILE`)",
                path.display(),
                bytes.len()
            ),
        ))
    }

    /// A new random key, written to `path` as 64 hex digits (refused if `path` exists;
    /// readable by its owner only).
    pub fn generate_key_file(path: impl AsRef<Path>) -> Result<KeySource> {
        use std::io::Write;
        let path = path.as_ref();
        let mut key = Zeroizing::new([0u8; 32]);
        random(&mut key[..]);
        let mut options = std::fs::OpenOptions::new();
        options.write(true).create_new(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
        let what = || format!("writing key file {}", path.display());
        let mut file = options.open(path).map_err(|e| Error::io(what(), e))?;
        let text = Zeroizing::new(format!("{}\n", hex::encode(&key[..])));
        file.write_all(text.as_bytes())
            .and_then(|_| file.sync_all())
            .map_err(|e| Error::io(what(), e))?;
        Ok(KeySource::Key(key))
    }

    pub(crate) fn kind(&self) -> keyfile::KeyKind {
        match self {
            KeySource::Password(_) => keyfile::KeyKind::Password,
            KeySource::Key(_) => keyfile::KeyKind::KeyFile,
        }
    }
}

/// Fills `buf` from the system's CSPRNG.
pub(crate) fn random(buf: &mut [u8]) {
    aws_lc_rs::rand::fill(buf).expect("the system random source works");
}

/// 32 bytes HKDF-SHA256 derives from `ikm` for `purpose`.
pub(crate) fn derive(ikm: &[u8], salt: &[u8], purpose: &[u8]) -> Zeroizing<[u8; 32]> {
    struct Len32;
    impl aws_lc_rs::hkdf::KeyType for Len32 {
        fn len(&self) -> usize {
            32
        }
    }
    let prk = Salt::new(HKDF_SHA256, salt).extract(ikm);
    let mut out = Zeroizing::new([0u8; 32]);
    prk.expand(&[purpose], Len32)
        .and_then(|okm| okm.fill(&mut out[..]))
        .expect("32 bytes are within HKDF's output limit");
    out
}

/// The keys of an opened encrypted repository, all derived from its master key.
pub(crate) struct RepoKeys {
    master: Zeroizing<[u8; 32]>,
    meta: SealKey,
    ids: hmac::Key,
    snapshots: Mutex<HashMap<String, Arc<SnapshotCipher>>>,
}

impl std::fmt::Debug for RepoKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RepoKeys(..)")
    }
}

/// Snapshot ciphers kept per process.
const MAX_CACHED_CIPHERS: usize = 1024;

/// Prefix of every HKDF purpose and associated data of format 4.0.
const DOMAIN: &[u8] = b"dakera-snapshot 4.0 ";

impl RepoKeys {
    pub fn new(master: Zeroizing<[u8; 32]>) -> RepoKeys {
        let meta = SealKey::new(&derive(&master[..], b"", &[DOMAIN, b"metadata"].concat()));
        let ids = hmac::Key::new(
            hmac::HMAC_SHA256,
            &derive(&master[..], b"", &[DOMAIN, b"chunk identity"].concat())[..],
        );
        RepoKeys {
            master,
            meta,
            ids,
            snapshots: Mutex::new(HashMap::new()),
        }
    }

    pub fn master(&self) -> &[u8; 32] {
        &self.master
    }

    /// The cipher of snapshot `id`'s blob (derived once per process and snapshot).
    pub fn snapshot(&self, id: &str) -> Arc<SnapshotCipher> {
        let mut known = self.snapshots.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(cipher) = known.get(id) {
            return cipher.clone();
        }
        // A long-lived process may read thousands of snapshots: keep the table small (a
        // cipher is derived again in microseconds).
        if known.len() >= MAX_CACHED_CIPHERS {
            known.clear();
        }
        known
            .entry(id.to_string())
            .or_insert_with(|| {
                let purpose = [DOMAIN, b"data\0", id.as_bytes()].concat();
                Arc::new(SnapshotCipher {
                    key: SealKey::new(&derive(&self.master[..], b"", &purpose)),
                    snapshot: id.to_string(),
                })
            })
            .clone()
    }

    /// A keyed chunk identity: HMAC-SHA256 over `parts` (what an unkeyed identity hashes).
    pub fn identity<P: AsRef<[u8]>>(&self, parts: impl IntoIterator<Item = P>) -> [u8; 32] {
        let mut ctx = hmac::Context::with_key(&self.ids);
        for p in parts {
            ctx.update(p.as_ref());
        }
        let tag = ctx.sign();
        let mut out = [0u8; 32];
        out.copy_from_slice(tag.as_ref());
        out
    }

    /// Seals metadata (a sidecar's private part, the config check) for `what`.
    pub fn seal_meta(&self, plain: &[u8], what: &[u8]) -> Vec<u8> {
        self.meta.seal(plain, &[DOMAIN, what].concat())
    }

    /// Opens what [`Self::seal_meta`] sealed for `what`.
    pub fn open_meta(&self, sealed: &[u8], what: &[u8]) -> Result<Vec<u8>, OpenFailed> {
        self.meta.open_to_vec(sealed, &[DOMAIN, what].concat())
    }
}

/// The keys a snapshot's blob is sealed with, carried by its [`crate::SnapshotMetadata`]
/// from the moment its sidecar was opened (`None`: an unencrypted snapshot). Never
/// serialized; two values compare equal whatever they hold, so metadata compares by its
/// content.
#[derive(Clone, Default)]
pub struct SealedBy(pub(crate) Option<Arc<RepoKeys>>);

impl SealedBy {
    pub(crate) fn keys(&self) -> Option<&Arc<RepoKeys>> {
        self.0.as_ref()
    }

    /// The cipher of snapshot `id`'s blob, if it is sealed.
    pub(crate) fn cipher(&self, id: &str) -> Option<Arc<SnapshotCipher>> {
        self.0.as_ref().map(|k| k.snapshot(id))
    }

    /// True for a snapshot of an encrypted repository.
    pub fn is_sealed(&self) -> bool {
        self.0.is_some()
    }
}

impl PartialEq for SealedBy {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}

impl std::fmt::Debug for SealedBy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.is_some() { "sealed" } else { "plain" })
    }
}

/// How the snapshot being written is sealed: the repository's keys and its blob's cipher.
#[derive(Debug, Clone)]
pub(crate) struct Sealing {
    pub keys: Arc<RepoKeys>,
    pub cipher: Arc<SnapshotCipher>,
}

impl Sealing {
    pub fn new(keys: Arc<RepoKeys>, snapshot: &str) -> Sealing {
        let cipher = keys.snapshot(snapshot);
        Sealing { keys, cipher }
    }

    /// A sealed copy of `member`, or `member` itself when there is no sealing.
    pub fn maybe_seal(sealing: Option<&Sealing>, member: Vec<u8>, what: Chunk<'_>) -> Vec<u8> {
        match sealing {
            Some(s) => s.cipher.seal(&member, what),
            None => member,
        }
    }
}

/// What a chunk of a blob is, which its associated data records: a chunk opens only as
/// what, and where, it was sealed.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Chunk<'a> {
    /// The blob's header chunk.
    Header,
    /// A data chunk of `namespace` with this (keyed) identity.
    Data {
        namespace: &'a str,
        identity: &'a [u8; 32],
    },
    /// The chunk index of `namespace`.
    Index { namespace: &'a str },
    /// The namespace directory.
    Directory,
    /// The footer chunk.
    Footer,
}

impl Chunk<'_> {
    fn associated_data(&self, snapshot: &str) -> Vec<u8> {
        let (kind, namespace, identity): (u8, &str, &[u8]) = match *self {
            Chunk::Header => (1, "", &[]),
            Chunk::Data {
                namespace,
                identity,
            } => (2, namespace, identity),
            Chunk::Index { namespace } => (3, namespace, &[]),
            Chunk::Directory => (4, "", &[]),
            Chunk::Footer => (5, "", &[]),
        };
        let mut ad = Vec::with_capacity(64 + snapshot.len() + namespace.len());
        ad.extend_from_slice(DOMAIN);
        ad.extend_from_slice(b"chunk\0");
        ad.push(kind);
        for part in [snapshot.as_bytes(), namespace.as_bytes()] {
            ad.extend_from_slice(&(part.len() as u32).to_le_bytes());
            ad.extend_from_slice(part);
        }
        ad.extend_from_slice(identity);
        ad
    }
}

/// Seals and opens the chunks of one snapshot's blob.
pub(crate) struct SnapshotCipher {
    key: SealKey,
    snapshot: String,
}

impl std::fmt::Debug for SnapshotCipher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SnapshotCipher({})", self.snapshot)
    }
}

impl SnapshotCipher {
    /// Seals the chunk that starts at `start` of `buf` (after a [`seal::reserve`]).
    pub fn seal_tail(&self, buf: &mut Vec<u8>, start: usize, what: Chunk<'_>) {
        self.key
            .seal_tail(buf, start, &what.associated_data(&self.snapshot));
    }

    /// A sealed copy of `member`.
    pub fn seal(&self, member: &[u8], what: Chunk<'_>) -> Vec<u8> {
        self.key.seal(member, &what.associated_data(&self.snapshot))
    }

    /// Opens a sealed chunk in place; its gzip members are the returned part.
    pub fn open<'b>(
        &self,
        sealed: &'b mut [u8],
        what: Chunk<'_>,
    ) -> Result<&'b mut [u8], OpenFailed> {
        self.key.open(sealed, &what.associated_data(&self.snapshot))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys(seed: u8) -> RepoKeys {
        RepoKeys::new(Zeroizing::new([seed; 32]))
    }

    #[test]
    fn a_chunk_opens_only_in_its_snapshot_namespace_kind_and_identity() {
        let k = keys(1);
        let (a, b) = (k.snapshot("snap-a"), k.snapshot("snap-b"));
        let id = [9u8; 32];
        let data = Chunk::Data {
            namespace: "docs",
            identity: &id,
        };
        let sealed = a.seal(b"members", data);
        assert_eq!(a.open(&mut sealed.clone(), data).unwrap(), b"members");
        let other_id = [8u8; 32];
        let elsewhere = [
            Chunk::Data {
                namespace: "faq",
                identity: &id,
            },
            Chunk::Data {
                namespace: "docs",
                identity: &other_id,
            },
            Chunk::Index { namespace: "docs" },
            Chunk::Header,
        ];
        for what in elsewhere {
            assert!(a.open(&mut sealed.clone(), what).is_err(), "{what:?}");
        }
        assert!(
            b.open(&mut sealed.clone(), data).is_err(),
            "another snapshot"
        );
        let k2 = keys(2);
        assert!(k2
            .snapshot("snap-a")
            .open(&mut sealed.clone(), data)
            .is_err());
    }

    #[test]
    fn identities_are_keyed_and_metadata_is_bound_to_its_purpose() {
        let (k1, k2) = (keys(1), keys(2));
        assert_eq!(k1.identity([&b"chu"[..], b"nk"]), k1.identity([b"chunk"]));
        assert_ne!(k1.identity([b"chunk"]), k2.identity([b"chunk"]));
        let sealed = k1.seal_meta(b"{}", b"sidecar x");
        assert_eq!(k1.open_meta(&sealed, b"sidecar x").unwrap(), b"{}");
        assert!(k1.open_meta(&sealed, b"sidecar y").is_err());
        assert!(k2.open_meta(&sealed, b"sidecar x").is_err());
        assert_eq!(format!("{k1:?}"), "RepoKeys(..)");
    }

    #[test]
    fn key_files_are_read_raw_or_hex_and_secrets_stay_out_of_debug() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("repo.key");
        let made = KeySource::generate_key_file(&path).unwrap();
        let read = KeySource::key_file(&path).unwrap();
        let (KeySource::Key(a), KeySource::Key(b)) = (&made, &read) else {
            panic!("key sources")
        };
        assert_eq!(a[..], b[..]);
        assert!(
            KeySource::generate_key_file(&path).is_err(),
            "never overwritten"
        );
        let raw = dir.path().join("raw.key");
        std::fs::write(&raw, [5u8; 32]).unwrap();
        assert!(
            matches!(KeySource::key_file(&raw).unwrap(), KeySource::Key(k) if k[..] == [5; 32])
        );
        std::fs::write(&raw, b"short").unwrap();
        let err = KeySource::key_file(&raw).unwrap_err().to_string();
        assert!(err.contains("32 random bytes"), "{err}");
        let pw = dir.path().join("pw");
        std::fs::write(&pw, "hunter2\n").unwrap();
        let source = KeySource::password_file(&pw).unwrap();
        assert!(matches!(&source, KeySource::Password(p) if p.as_str() == "hunter2"));
        assert!(!format!("{source:?}{made:?}").contains("hunter2"));
        std::fs::write(&pw, "\n").unwrap();
        assert!(KeySource::password_file(&pw).is_err());
    }
}
