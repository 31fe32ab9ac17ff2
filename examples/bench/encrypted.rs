//! `--encrypt`: the same create and restore into an encrypted repository beside the
//! plain one, and what opening it costs (one Argon2id derivation per process).

use dakera_snapshot::{KdfParams, KeySource, SinkOptions, SnapshotConfig, SnapshotManager};
use serde_json::{json, Value};
use std::time::Instant;

/// The password of the benchmark's encrypted repository.
fn key() -> KeySource {
    KeySource::password("bench passphrase").expect("a password")
}

/// The encrypted repository beside `sink`.
pub fn sink_of(sink: &str) -> String {
    format!("{}-encrypted", sink.trim_end_matches('/'))
}

/// A manager of the encrypted repository, opened (the key derived) before it is returned,
/// so a phase's timer measures encryption, not the key derivation.
pub async fn opened(
    sink: &str,
    options: &SinkOptions,
    config: SnapshotConfig,
) -> Result<SnapshotManager, String> {
    let m = SnapshotManager::from_url(&sink_of(sink), options, config)
        .map_err(|e| e.to_string())?
        .with_key(key());
    m.is_encrypted().await.map_err(|e| e.to_string())?;
    Ok(m)
}

/// Phase `encrypted-init`: makes the encrypted repository with the default Argon2id
/// parameters, then times opening it (what every process pays once).
pub async fn init(sink: &str, options: &SinkOptions) -> Result<Value, String> {
    let config = SnapshotConfig::default();
    SnapshotManager::from_url(&sink_of(sink), options, config.clone())
        .map_err(|e| e.to_string())?
        .with_key(key())
        .init(KdfParams::default())
        .await
        .map_err(|e| e.to_string())?;
    let started = Instant::now();
    opened(sink, options, config).await?;
    Ok(json!({ "secs": 0.0, "open_secs": started.elapsed().as_secs_f64() }))
}
