//! Opening a repository: its config object, and for an encrypted one the user key that
//! gives the master key; `init`, and adding, listing and removing user keys.

use super::SnapshotManager;
use crate::crypto::keyfile::{KeyKind, KeyRecord};
use crate::crypto::repository::RepositoryConfig;
use crate::crypto::{random, KdfParams, KeyInfo, KeySource, RepoKeys};
use crate::error::{Error, Result};
use crate::id::SnapshotId;
use crate::paths::{BlobPlace, Key};
use crate::sink::{PutMode, SinkExt};
use futures::StreamExt;
use std::sync::{Arc, OnceLock};
use zeroize::Zeroizing;

/// What opening the repository found.
#[derive(Debug, Default)]
pub(crate) struct Access {
    /// The master key's derived keys (encrypted repositories).
    pub keys: Option<Arc<RepoKeys>>,
    pub config: Option<RepositoryConfig>,
    /// The user key that opened it.
    pub key_id: Option<String>,
    /// Where the blobs are: set from the config; unset while a repository without a config
    /// has not been written to by this manager (it keeps its blobs beside the sidecars, or
    /// is empty and gets a config with its first snapshot).
    blobs: OnceLock<BlobPlace>,
}

/// What `init` made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RepositoryInfo {
    /// The repository's random id.
    pub repository_id: String,
    /// Whether it is encrypted.
    pub encrypted: bool,
    /// The first user key (encrypted repositories).
    pub key: Option<KeyInfo>,
}

impl SnapshotManager {
    /// Opens the repository with `key`: an encrypted repository needs one, and an
    /// unencrypted one refuses one (so nobody believes they are encrypting when they are
    /// not).
    pub fn with_key(mut self, key: KeySource) -> Self {
        self.key = Some(key);
        self.access = Arc::default();
        self
    }

    /// Whether the repository is encrypted (opening it, with the key if it is).
    pub async fn is_encrypted(&self) -> Result<bool> {
        Ok(self.access().await?.keys.is_some())
    }

    /// The repository as opened, opening it on first use.
    pub(crate) async fn access(&self) -> Result<&Access> {
        self.access.get_or_try_init(|| self.open_repository()).await
    }

    /// The keys of the opened repository; `None` when it is unencrypted, or not opened yet
    /// (every entry point opens it before it reads or writes a snapshot).
    pub(crate) fn opened_keys(&self) -> Option<Arc<RepoKeys>> {
        self.access.get().and_then(|a| a.keys.clone())
    }

    async fn open_repository(&self) -> Result<Access> {
        let config = self.read_config().await?;
        let blobs = config
            .as_ref()
            .map_or_else(OnceLock::new, |c| OnceLock::from(c.blobs()));
        let keys = self.list_key_ids().await?;
        let encrypted = config.as_ref().is_some_and(|c| c.encryption.is_some());
        if !encrypted && !keys.is_empty() {
            let what = if config.is_some() {
                "config.json says the repository is unencrypted"
            } else {
                "config.json is missing"
            };
            return Err(Error::RepositoryConfig {
                reason: format!(
                    "{what}, but keys/ holds {} key(s): the config may have been removed or replaced so that writers store plaintext; nothing was written (restore config.json from a copy, or remove keys/ if the repository was never encrypted)",
                    keys.len()
                ),
            });
        }
        let Some(config) = config.filter(|_| encrypted) else {
            if self.key.is_some() {
                return Err(Error::NotEncrypted {
                    repository: self.sink.describe(),
                });
            }
            return Ok(Access {
                blobs,
                ..Access::default()
            });
        };
        let Some(source) = &self.key else {
            return Err(Error::KeyRequired {
                repository: self.sink.describe(),
            });
        };
        let (key_id, master) = self.unlock(&config, source, &keys).await?;
        let repo_keys = RepoKeys::new(master);
        config.check(&repo_keys)?;
        tracing::debug!(key = %key_id, "repository opened");
        Ok(Access {
            keys: Some(Arc::new(repo_keys)),
            config: Some(config),
            key_id: Some(key_id),
            blobs,
        })
    }

    /// The key of a snapshot's blob (opening the repository on first use).
    pub(crate) async fn blob_key(&self, id: &SnapshotId) -> Result<Key> {
        Ok(self.blob_place().await?.key(id))
    }

    /// Where the blobs are, for reading. A repository that had no config when this manager
    /// opened it may have got one since (another writer's first snapshot): the config is
    /// read again. Still none, with something under `snapshots/`, means the blobs lie
    /// beside the sidecars for good (a writer only writes a config into a repository with
    /// nothing there); an empty repository stays undecided, so this manager's first
    /// snapshot still gives it the new layout.
    pub(crate) async fn blob_place(&self) -> Result<BlobPlace> {
        let access = self.access().await?;
        if let Some(place) = access.blobs.get() {
            return Ok(*place);
        }
        let place = match self.read_config().await? {
            Some(config) if config.encryption.is_some() => {
                return Err(Error::RepositoryConfig {
                    reason: "config.json appeared after this command opened the repository and makes it encrypted; run the command again with the repository's key".into(),
                })
            }
            Some(config) => config.blobs(),
            None if self.holds_objects_under(&self.layout.snapshots_dir()).await? => {
                BlobPlace::BesideSidecars
            }
            None => return Ok(BlobPlace::BesideSidecars),
        };
        Ok(*access.blobs.get_or_init(|| place))
    }

    /// Where this manager writes new blobs. A repository without a config that holds nothing
    /// under `snapshots/` gets one now, with create-if-absent: version 2, blobs under
    /// `data/`. One that holds snapshots keeps its blobs beside the sidecars, as the code
    /// that wrote them expects.
    pub(crate) async fn blob_place_for_writing(&self) -> Result<BlobPlace> {
        let access = self.access().await?;
        if let Some(place) = access.blobs.get() {
            return Ok(*place);
        }
        let place = self.settle_blob_place().await?;
        Ok(*access.blobs.get_or_init(|| place))
    }

    async fn settle_blob_place(&self) -> Result<BlobPlace> {
        if self
            .holds_objects_under(&self.layout.snapshots_dir())
            .await?
        {
            return Ok(BlobPlace::BesideSidecars);
        }
        let config = RepositoryConfig::new(
            new_repository_id(),
            self.clock.now_ms(),
            BlobPlace::Data,
            None,
        );
        match self.put_new(&self.layout.config_key(), config.to_json()).await {
            Ok(()) => {
                tracing::info!(repo = %self.sink.describe(), "new repository: blobs under data/ (config.json version 2)");
                Ok(BlobPlace::Data)
            }
            // Another writer's first snapshot made it meanwhile.
            Err(Error::Conflict { .. }) => match self.read_config().await? {
                Some(c) if c.encryption.is_none() => Ok(c.blobs()),
                _ => Err(Error::RepositoryConfig {
                    reason: "config.json appeared while this snapshot was being written and makes the repository encrypted; nothing was written (run the command again with the repository's key)".into(),
                }),
            },
            Err(e) => Err(e),
        }
    }

    async fn read_config(&self) -> Result<Option<RepositoryConfig>> {
        match self.sink.get_bytes(&self.layout.config_key(), None).await {
            Ok(bytes) => RepositoryConfig::from_json(&bytes).map(Some),
            Err(e) if e.is_not_found() => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// The ids of the user keys under `keys/`, sorted.
    async fn list_key_ids(&self) -> Result<Vec<String>> {
        let listed = self.sink.list_all(&self.layout.keys_dir()).await?;
        let mut ids: Vec<String> = listed
            .iter()
            .filter_map(|o| self.layout.parse_key_id(&o.key).map(str::to_string))
            .collect();
        ids.sort();
        Ok(ids)
    }

    async fn read_key(&self, id: &str) -> Result<KeyRecord> {
        let key = self.layout.key_key(id);
        let bytes = self.sink.get_bytes(&key, None).await?;
        KeyRecord::from_json(&bytes, id)
    }

    /// The master key from the first user key `source` opens.
    async fn unlock(
        &self,
        config: &RepositoryConfig,
        source: &KeySource,
        ids: &[String],
    ) -> Result<(String, Zeroizing<[u8; 32]>)> {
        for id in ids {
            let record = match self.read_key(id).await {
                Ok(r) => r,
                Err(e) => {
                    tracing::warn!(key = %id, error = %e, "skipping an unreadable user key");
                    continue;
                }
            };
            if let Some(master) = record.unwrap(source, (&config.repository_id, id))? {
                return Ok((id.clone(), master));
            }
        }
        Err(Error::WrongKey {
            repository: self.sink.describe(),
            given: match source.kind() {
                KeyKind::Password => "password",
                KeyKind::KeyFile => "key file",
            },
        })
    }

    /// Makes this repository: writes its config object, and with a key (see
    /// [`Self::with_key`]) makes it encrypted: a new random master key, wrapped by that key
    /// under `keys/` (passphrases stretched with `kdf`). Refused if the repository has a
    /// config already, or (to encrypt) already holds snapshots.
    pub async fn init(&self, kdf: KdfParams) -> Result<RepositoryInfo> {
        kdf.validate()?;
        let already = |why: &str| Error::Conflict {
            key: self.layout.config_key().to_string(),
            reason: why.to_string(),
        };
        let config = self.read_config().await?;
        let holds_snapshots = self
            .holds_objects_under(&self.layout.snapshots_dir())
            .await?
            || self.holds_objects_under(&BlobPlace::Data.dir()).await?;
        if let Some(config) = config {
            return Err(already(init_refusal(
                &config,
                self.key.is_some(),
                holds_snapshots,
            )));
        }
        if !self.list_key_ids().await?.is_empty() {
            return Err(already(
                "keys/ holds keys but there is no config.json (an interrupted init?): remove keys/ and run init again",
            ));
        }
        if self.key.is_some() && holds_snapshots {
            return Err(already(UNENCRYPTED_SNAPSHOTS));
        }
        let repository_id = new_repository_id();
        let now = self.clock.now_ms();
        let Some(source) = &self.key else {
            // Snapshots written before stay where the code that wrote them put their blobs.
            let blobs = if holds_snapshots {
                BlobPlace::BesideSidecars
            } else {
                BlobPlace::Data
            };
            let config = RepositoryConfig::new(repository_id.clone(), now, blobs, None);
            self.put_new(&self.layout.config_key(), config.to_json())
                .await?;
            return Ok(RepositoryInfo {
                repository_id,
                encrypted: false,
                key: None,
            });
        };
        let mut master = Zeroizing::new([0u8; 32]);
        random(&mut master[..]);
        let keys = RepoKeys::new(master.clone());
        let key = self.write_key(source, kdf, &master, &repository_id).await?;
        let config = RepositoryConfig::new(
            repository_id.clone(),
            now,
            BlobPlace::Data,
            Some((&keys, kdf)),
        );
        self.put_new(&self.layout.config_key(), config.to_json())
            .await?;
        Ok(RepositoryInfo {
            repository_id,
            encrypted: true,
            key: Some(key),
        })
    }

    /// True if anything lies under `prefix` (reads the first listed object only).
    async fn holds_objects_under(&self, prefix: &Key) -> Result<bool> {
        match self.sink.list(prefix).next().await {
            None => Ok(false),
            Some(listed) => listed.map(|_| true),
        }
    }

    async fn put_new(&self, key: &Key, bytes: Vec<u8>) -> Result<()> {
        self.sink.put(key, bytes.into(), PutMode::Create).await
    }

    /// Wraps `master` for `source` as a new user key.
    async fn write_key(
        &self,
        source: &KeySource,
        kdf: KdfParams,
        master: &[u8; 32],
        repository_id: &str,
    ) -> Result<KeyInfo> {
        let mut raw = [0u8; 8];
        random(&mut raw);
        let id = hex::encode(raw);
        let now = self.clock.now_ms();
        let record = KeyRecord::wrap(source, kdf, master, (repository_id, &id), now)?;
        self.put_new(&self.layout.key_key(&id), record.to_json())
            .await?;
        Ok(record.info(&id, false))
    }

    /// The opened encrypted repository's config and keys, or an error saying it is not
    /// encrypted.
    async fn encrypted(&self) -> Result<(&RepositoryConfig, &Arc<RepoKeys>, &str)> {
        let access = self.access().await?;
        match (&access.config, &access.keys, &access.key_id) {
            (Some(c), Some(k), Some(id)) => Ok((c, k, id)),
            _ => Err(Error::invalid(
                "repository",
                format!("{} is not encrypted: it has no keys", self.sink.describe()),
            )),
        }
    }

    /// Adds a user key: `new` opens the repository from now on, beside the keys it has.
    pub async fn add_key(&self, new: &KeySource) -> Result<KeyInfo> {
        let (config, keys, _) = self.encrypted().await?;
        let kdf = config
            .encryption
            .as_ref()
            .map(|e| e.kdf)
            .unwrap_or_default();
        self.write_key(new, kdf, keys.master(), &config.repository_id)
            .await
    }

    /// The repository's user keys (nothing secret).
    pub async fn list_keys(&self) -> Result<Vec<KeyInfo>> {
        let (_, _, current) = self.encrypted().await?;
        let mut out = Vec::new();
        for id in self.list_key_ids().await? {
            let record = self.read_key(&id).await?;
            out.push(record.info(&id, id == current));
        }
        Ok(out)
    }

    /// Removes user key `id`. Never the last key, nor the one this process opened the
    /// repository with (open with another key to remove it).
    pub async fn remove_key(&self, id: &str) -> Result<()> {
        let (_, _, current) = self.encrypted().await?;
        let ids = self.list_key_ids().await?;
        if !ids.iter().any(|k| k == id) {
            return Err(Error::ObjectNotFound {
                key: self.layout.key_key(id).to_string(),
            });
        }
        if id == current {
            return Err(Error::invalid(
                "key",
                format!("{id} is the key this repository was opened with; open it with another key to remove this one"),
            ));
        }
        if ids.len() < 2 {
            return Err(Error::invalid("key", "the last key cannot be removed"));
        }
        self.sink.delete(&self.layout.key_key(id)).await
    }
}

/// A new repository's id: 32 random hex digits.
fn new_repository_id() -> String {
    let mut id = [0u8; 16];
    random(&mut id);
    hex::encode(id)
}

const UNENCRYPTED_SNAPSHOTS: &str = "the repository holds unencrypted snapshots; encryption is decided when a repository is made: init an empty one and `copy` the snapshots into it";

/// Why `init` refuses a repository that has a config already.
fn init_refusal(
    config: &RepositoryConfig,
    to_encrypt: bool,
    holds_snapshots: bool,
) -> &'static str {
    match (config.encryption.is_some(), to_encrypt, holds_snapshots) {
        (false, true, true) => UNENCRYPTED_SNAPSHOTS,
        (false, true, false) => "the repository is initialized already, unencrypted (by `init` without a key or by its first snapshot), and holds no snapshots: delete its config.json and run init again",
        _ => "the repository is initialized already",
    }
}
