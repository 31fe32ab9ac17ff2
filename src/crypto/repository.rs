//! The repository config object (`config.json` at the repository's root): the repository's
//! id, where its blobs live (the config's version) and whether, and how, it is encrypted.
//! Written once, by `init` or by the first snapshot of an empty repository; a repository
//! without one is an unencrypted repository of any format with its blobs beside the sidecars.
//!
//! An encrypted repository's config carries a check sealed under the master key over every
//! field, so a config altered by someone without the key is refused once a key opens it. A
//! config replaced by one claiming "unencrypted" is refused while `keys/` holds keys.

use super::kdf::KdfParams;
use super::RepoKeys;
use crate::error::{Error, Result};
use crate::paths::BlobPlace;
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use serde::{Deserialize, Serialize};

const FORMAT: &str = "dakera-snapshot-repository";
/// Version 1: blobs beside the sidecars under `snapshots/`. Version 2: blobs under `data/`,
/// so that listing `snapshots/` lists sidecars only. Code that knows only version 1 refuses
/// a version 2 config, so it never looks for blobs in the wrong place.
const VERSION_BESIDE_SIDECARS: u32 = 1;
const VERSION_DATA: u32 = 2;
/// The one cipher format 4.0 defines.
pub const CIPHER: &str = "aes-256-gcm";
/// Largest config read.
pub const MAX_CONFIG_LEN: usize = 64 * 1024;

/// The config object.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RepositoryConfig {
    format: String,
    version: u32,
    /// 32 hex digits, random.
    pub repository_id: String,
    pub created_at_ms: u64,
    /// `None`: not encrypted.
    pub encryption: Option<Encryption>,
}

/// How an encrypted repository is encrypted.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Encryption {
    /// `aes-256-gcm`.
    pub cipher: String,
    /// Argon2id's parameters for new passphrase keys.
    pub kdf: KdfParams,
    /// Base64 of an empty message sealed under the metadata key, with every other field of
    /// the config as its associated data.
    check: String,
}

impl RepositoryConfig {
    /// A new repository's config, its blobs in `blobs`; with `keys`, encrypted.
    pub fn new(
        repository_id: String,
        created_at_ms: u64,
        blobs: BlobPlace,
        keys: Option<(&RepoKeys, KdfParams)>,
    ) -> Self {
        let mut config = RepositoryConfig {
            format: FORMAT.into(),
            version: match blobs {
                BlobPlace::BesideSidecars => VERSION_BESIDE_SIDECARS,
                BlobPlace::Data => VERSION_DATA,
            },
            repository_id,
            created_at_ms,
            encryption: None,
        };
        if let Some((keys, kdf)) = keys {
            config.encryption = Some(Encryption {
                cipher: CIPHER.into(),
                kdf,
                check: String::new(),
            });
            let check = keys.seal_meta(b"", &config.checked_fields());
            if let Some(e) = config.encryption.as_mut() {
                e.check = B64.encode(check);
            }
        }
        config
    }

    pub fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec_pretty(self).expect("a config serializes")
    }

    pub fn from_json(bytes: &[u8]) -> Result<RepositoryConfig> {
        let bad = |why: String| Error::RepositoryConfig {
            reason: format!("config.json is unreadable: {why}"),
        };
        if bytes.len() > MAX_CONFIG_LEN {
            return Err(bad(format!("{} bytes long", bytes.len())));
        }
        let config: RepositoryConfig =
            serde_json::from_slice(bytes).map_err(|e| bad(e.to_string()))?;
        if config.format != FORMAT {
            return Err(bad(format!("format {:?}", config.format)));
        }
        if ![VERSION_BESIDE_SIDECARS, VERSION_DATA].contains(&config.version) {
            return Err(Error::UnsupportedVersion {
                what: "repository config".into(),
                found: config.version.to_string(),
                supported: VERSION_DATA as u16,
            });
        }
        if config.repository_id.len() != 32
            || !config.repository_id.bytes().all(|b| b.is_ascii_hexdigit())
        {
            return Err(bad("its repository id is not 32 hex digits".into()));
        }
        if let Some(e) = &config.encryption {
            if e.cipher != CIPHER {
                return Err(bad(format!("unknown cipher {:?}", e.cipher)));
            }
            e.kdf.validate()?;
        }
        Ok(config)
    }

    /// Where the repository's blobs live.
    pub fn blobs(&self) -> BlobPlace {
        if self.version == VERSION_DATA {
            BlobPlace::Data
        } else {
            BlobPlace::BesideSidecars
        }
    }

    /// Checks, with the master key a user key gave, that no field was altered.
    pub fn check(&self, keys: &RepoKeys) -> Result<()> {
        let sealed = self
            .encryption
            .as_ref()
            .and_then(|e| B64.decode(&e.check).ok());
        match sealed.map(|s| keys.open_meta(&s, &self.checked_fields())) {
            Some(Ok(plain)) if plain.is_empty() => Ok(()),
            _ => Err(Error::RepositoryConfig {
                reason: "config.json fails its check under the repository's key: it was altered or replaced".into(),
            }),
        }
    }

    fn checked_fields(&self) -> Vec<u8> {
        let (cipher, kdf) = self
            .encryption
            .as_ref()
            .map_or(("-", None), |e| (e.cipher.as_str(), Some(e.kdf)));
        let kdf = kdf.map_or("-".to_string(), |k| {
            format!(
                "argon2id m={} t={} p={}",
                k.memory_kib, k.iterations, k.parallelism
            )
        });
        format!(
            "config {FORMAT} {}\nrepository {}\ncreated {}\ncipher {cipher}\nkdf {kdf}",
            self.version, self.repository_id, self.created_at_ms
        )
        .into_bytes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use zeroize::Zeroizing;

    #[test]
    fn the_version_says_where_blobs_live() {
        let id = || "0123456789abcdef0123456789abcdef".to_string();
        for place in [BlobPlace::BesideSidecars, BlobPlace::Data] {
            let config = RepositoryConfig::new(id(), 7, place, None);
            let back = RepositoryConfig::from_json(&config.to_json()).unwrap();
            assert_eq!(back.blobs(), place);
        }
        let text =
            String::from_utf8(RepositoryConfig::new(id(), 7, BlobPlace::Data, None).to_json())
                .unwrap();
        let newer = text.replace("\"version\": 2", "\"version\": 3");
        let err = RepositoryConfig::from_json(newer.as_bytes()).unwrap_err();
        assert!(matches!(err, Error::UnsupportedVersion { .. }), "{err}");
    }

    #[test]
    fn an_encrypted_config_is_checked_under_its_key() {
        let keys = RepoKeys::new(Zeroizing::new([1; 32]));
        let id = "0123456789abcdef0123456789abcdef".to_string();
        let config =
            RepositoryConfig::new(id, 7, BlobPlace::Data, Some((&keys, KdfParams::default())));
        let back = RepositoryConfig::from_json(&config.to_json()).unwrap();
        back.check(&keys).unwrap();
        let other = RepoKeys::new(Zeroizing::new([2; 32]));
        assert!(back.check(&other).is_err());
        let text = String::from_utf8(config.to_json()).unwrap();
        let weaker = text.replace("\"memory_kib\": 65536", "\"memory_kib\": 1024");
        let forged = RepositoryConfig::from_json(weaker.as_bytes()).unwrap();
        let err = forged.check(&keys).unwrap_err().to_string();
        assert!(err.contains("altered or replaced"), "{err}");
        let moved = text.replace("\"version\": 2", "\"version\": 1");
        let moved = RepositoryConfig::from_json(moved.as_bytes()).unwrap();
        assert_eq!(moved.blobs(), BlobPlace::BesideSidecars);
        assert!(
            moved.check(&keys).is_err(),
            "the blob place is covered by the check"
        );
        for bad in [
            text.replace(CIPHER, "rot13"),
            text.replace("0123456789abcdef0123456789abcdef", "x"),
            text.replace("\"version\": 2", "\"version\": 3"),
            "{".to_string(),
        ] {
            assert!(
                RepositoryConfig::from_json(bad.as_bytes()).is_err(),
                "{bad}"
            );
        }
    }
}
