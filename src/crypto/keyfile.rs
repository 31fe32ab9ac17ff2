//! User keys: `keys/<key id>.json`, each the repository's master key wrapped (AES-256-GCM)
//! by a key-encryption key derived from a passphrase (Argon2id) or a 256-bit key file
//! (HKDF-SHA256). The wrapping's associated data binds it to the repository id, the key id
//! and every parameter the file records, so a key file copied from another repository, or
//! one whose parameters were altered, does not open.

use super::kdf::KdfParams;
use super::seal::SealKey;
use super::{derive, random, KeySource};
use crate::error::{Error, Result};
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

/// What a user key is opened with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum KeyKind {
    /// A passphrase.
    Password,
    /// A 256-bit key file.
    KeyFile,
}

impl std::fmt::Display for KeyKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            KeyKind::Password => "password",
            KeyKind::KeyFile => "key-file",
        })
    }
}

const FORMAT: &str = "dakera-snapshot-key";
const VERSION: u32 = 1;
/// Largest key file read (a real one is about 400 bytes).
pub const MAX_KEY_FILE_LEN: usize = 64 * 1024;

/// A stored user key, as JSON.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct KeyRecord {
    format: String,
    version: u32,
    kind: KeyKind,
    created_at_ms: u64,
    /// Argon2id's parameters (passphrase keys only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    kdf: Option<KdfParams>,
    /// Base64 of 16 random bytes.
    salt: String,
    /// Base64 of the sealed master key.
    master_key: String,
}

/// A user key as `key list` shows it: nothing secret.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct KeyInfo {
    /// The key's id (its object is `keys/<id>.json`).
    pub id: String,
    /// `password` or `key-file`.
    pub kind: String,
    /// When it was added, unix milliseconds.
    pub created_at_ms: u64,
    /// True for the key this process opened the repository with.
    pub current: bool,
}

impl KeyRecord {
    /// Wraps `master` for `source`, as key `key_id` of repository `repo_id`.
    pub fn wrap(
        source: &KeySource,
        kdf: KdfParams,
        master: &[u8; 32],
        (repo_id, key_id): (&str, &str),
        created_at_ms: u64,
    ) -> Result<KeyRecord> {
        let mut salt = [0u8; 16];
        random(&mut salt);
        let mut record = KeyRecord {
            format: FORMAT.into(),
            version: VERSION,
            kind: source.kind(),
            created_at_ms,
            kdf: (source.kind() == KeyKind::Password).then_some(kdf),
            salt: B64.encode(salt),
            master_key: String::new(),
        };
        let kek = record.key_encryption_key(source)?;
        let sealed = kek.seal(master, &record.associated_data(repo_id, key_id));
        record.master_key = B64.encode(sealed);
        Ok(record)
    }

    pub fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec_pretty(self).expect("a key record serializes")
    }

    /// Parses a stored key; `key` names it in errors.
    pub fn from_json(bytes: &[u8], key: &str) -> Result<KeyRecord> {
        let bad = |why: String| Error::RepositoryConfig {
            reason: format!("key {key} is unreadable: {why}"),
        };
        if bytes.len() > MAX_KEY_FILE_LEN {
            return Err(bad(format!("{} bytes long", bytes.len())));
        }
        let record: KeyRecord = serde_json::from_slice(bytes).map_err(|e| bad(e.to_string()))?;
        if record.format != FORMAT {
            return Err(bad(format!("format {:?}", record.format)));
        }
        if record.version != VERSION {
            return Err(Error::UnsupportedVersion {
                what: format!("key {key}"),
                found: record.version.to_string(),
                supported: VERSION as u16,
            });
        }
        if let Some(kdf) = &record.kdf {
            kdf.validate()?;
        }
        if (record.kind == KeyKind::Password) != record.kdf.is_some() {
            return Err(bad("key-derivation parameters do not match its kind".into()));
        }
        Ok(record)
    }

    pub fn info(&self, id: &str, current: bool) -> KeyInfo {
        KeyInfo {
            id: id.to_string(),
            kind: self.kind.to_string(),
            created_at_ms: self.created_at_ms,
            current,
        }
    }

    /// The master key, if `source` opens this key; `None` for a wrong passphrase or key
    /// (or a key file altered, or copied from another repository).
    pub fn unwrap(
        &self,
        source: &KeySource,
        (repo_id, key_id): (&str, &str),
    ) -> Result<Option<Zeroizing<[u8; 32]>>> {
        if source.kind() != self.kind {
            return Ok(None);
        }
        let Ok(sealed) = B64.decode(&self.master_key) else {
            return Ok(None);
        };
        let kek = self.key_encryption_key(source)?;
        let Ok(plain) = kek.open_to_vec(&sealed, &self.associated_data(repo_id, key_id)) else {
            return Ok(None);
        };
        let plain = Zeroizing::new(plain);
        if plain.len() != 32 {
            return Ok(None);
        }
        let mut master = Zeroizing::new([0u8; 32]);
        master.copy_from_slice(&plain);
        Ok(Some(master))
    }

    fn key_encryption_key(&self, source: &KeySource) -> Result<SealKey> {
        let salt = B64
            .decode(&self.salt)
            .ok()
            .filter(|s| s.len() >= 16)
            .ok_or_else(|| Error::RepositoryConfig {
                reason: "a key's salt is not 16 bytes of base64".into(),
            })?;
        let kek = match (source, &self.kdf) {
            (KeySource::Password(p), Some(kdf)) => kdf.derive(p.as_bytes(), &salt)?,
            (KeySource::Key(k), None) => derive(&k[..], &salt, b"dakera-snapshot key file"),
            _ => {
                return Err(Error::Internal("key source and key kind differ".into()));
            }
        };
        Ok(SealKey::new(&kek))
    }

    fn associated_data(&self, repo_id: &str, key_id: &str) -> Vec<u8> {
        let kdf = self.kdf.map_or("-".to_string(), |k| {
            format!(
                "argon2id m={} t={} p={}",
                k.memory_kib, k.iterations, k.parallelism
            )
        });
        format!(
            "{FORMAT} {VERSION}\nrepository {repo_id}\nkey {key_id}\nkind {}\ncreated {}\nkdf {kdf}\nsalt {}",
            self.kind, self.created_at_ms, self.salt
        )
        .into_bytes()
    }
}

#[cfg(test)]
mod tests {
    use super::super::kdf::CHEAP;
    use super::*;

    #[test]
    fn a_key_opens_with_its_secret_in_its_repository_only() {
        let master = [3u8; 32];
        let pw = KeySource::password("correct horse").unwrap();
        let rec = KeyRecord::wrap(&pw, CHEAP, &master, ("repo1", "k1"), 5).unwrap();
        let back = KeyRecord::from_json(&rec.to_json(), "k1").unwrap();
        assert_eq!(*back.unwrap(&pw, ("repo1", "k1")).unwrap().unwrap(), master);
        let wrong = KeySource::password("battery staple").unwrap();
        assert!(back.unwrap(&wrong, ("repo1", "k1")).unwrap().is_none());
        assert!(
            back.unwrap(&pw, ("repo2", "k1")).unwrap().is_none(),
            "another repository"
        );
        assert!(
            back.unwrap(&pw, ("repo1", "k2")).unwrap().is_none(),
            "renamed"
        );
        let file = KeySource::Key(Zeroizing::new([1; 32]));
        assert!(
            back.unwrap(&file, ("repo1", "k1")).unwrap().is_none(),
            "other kind"
        );
        let mut weaker = back.clone();
        weaker.kdf = Some(KdfParams {
            memory_kib: 128,
            ..CHEAP
        });
        assert!(
            weaker.unwrap(&pw, ("repo1", "k1")).unwrap().is_none(),
            "altered params"
        );
        assert!(!String::from_utf8(rec.to_json())
            .unwrap()
            .contains("correct horse"));
    }

    #[test]
    fn key_file_keys_and_bad_records() {
        let master = [4u8; 32];
        let file = KeySource::Key(Zeroizing::new([1; 32]));
        let rec = KeyRecord::wrap(&file, CHEAP, &master, ("r", "k"), 1).unwrap();
        assert_eq!(*rec.unwrap(&file, ("r", "k")).unwrap().unwrap(), master);
        let other = KeySource::Key(Zeroizing::new([2; 32]));
        assert!(rec.unwrap(&other, ("r", "k")).unwrap().is_none());
        for bad in [&b"{"[..], b"{}", &vec![b' '; MAX_KEY_FILE_LEN + 1]] {
            assert!(KeyRecord::from_json(bad, "k").is_err());
        }
        let text = String::from_utf8(rec.to_json()).unwrap();
        let future = text.replace("\"version\": 1", "\"version\": 9");
        assert!(matches!(
            KeyRecord::from_json(future.as_bytes(), "k"),
            Err(Error::UnsupportedVersion { .. })
        ));
    }
}
