//! Format 4.0 sidecars: a public part, which is all a reader without the key learns of a
//! snapshot (its id, times, type, parent and sizes), and the snapshot's format 3.0 sidecar
//! sealed under the metadata key (description, labels, counts, layout, the directory's
//! checksum). The public fields are repeated inside the sealed part and must match it, so
//! none of them can be altered unnoticed.

use super::RepoKeys;
use crate::error::{Error, Result};
use crate::format::sidecar::{SnapshotMetadata, SnapshotType, FORMAT_NAME};
use crate::id::SnapshotId;
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use serde::{Deserialize, Serialize};
use std::sync::Arc;

/// The sidecar version of snapshots in encrypted repositories.
pub const SEALED_VERSION: &str = "4.0";

#[derive(Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
struct Envelope {
    format: String,
    format_version: String,
    id: SnapshotId,
    created_at: u64,
    created_at_ms: u64,
    snapshot_type: SnapshotType,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    parent_id: Option<SnapshotId>,
    size_bytes: u64,
    blob_sha256: String,
    /// Base64 of the sealed format 3.0 sidecar.
    sealed: String,
}

impl Envelope {
    fn public(meta: &SnapshotMetadata, sealed: String) -> Envelope {
        Envelope {
            format: FORMAT_NAME.into(),
            format_version: SEALED_VERSION.into(),
            id: meta.id.clone(),
            created_at: meta.created_at,
            created_at_ms: meta.created_at_ms,
            snapshot_type: meta.snapshot_type,
            parent_id: meta.parent_id.clone(),
            size_bytes: meta.size_bytes,
            blob_sha256: meta.blob_sha256.clone(),
            sealed,
        }
    }
}

fn associated_data(id: &SnapshotId) -> Vec<u8> {
    [b"sidecar\0", id.as_str().as_bytes()].concat()
}

/// The stored sidecar of `meta` in an encrypted repository.
pub(crate) fn seal(meta: &SnapshotMetadata, keys: &RepoKeys) -> Vec<u8> {
    let sealed = keys.seal_meta(&meta.to_json(), &associated_data(&meta.id));
    let envelope = Envelope::public(meta, B64.encode(sealed));
    serde_json::to_vec_pretty(&envelope).expect("an envelope serializes")
}

/// True if `bytes` are a format 4.0 sidecar (checked no further).
pub(crate) fn is_sealed(bytes: &[u8]) -> bool {
    #[derive(Deserialize)]
    struct Probe {
        format_version: Option<String>,
    }
    serde_json::from_slice::<Probe>(bytes)
        .ok()
        .and_then(|p| p.format_version)
        .is_some_and(|v| v.split('.').next() == Some("4"))
}

/// Opens a format 4.0 sidecar read from `id`'s key with the repository's keys.
pub(crate) fn open(
    bytes: &[u8],
    id: &SnapshotId,
    keys: &Arc<RepoKeys>,
) -> Result<SnapshotMetadata> {
    let corrupt = |why: String| Error::corrupt(id.as_str(), None, None, format!("sidecar: {why}"));
    let envelope: Envelope = serde_json::from_slice(bytes).map_err(|e| corrupt(e.to_string()))?;
    if envelope.format_version != SEALED_VERSION {
        return Err(Error::UnsupportedVersion {
            what: format!("sidecar of snapshot {id}"),
            found: envelope.format_version,
            supported: 4,
        });
    }
    let sealed = B64
        .decode(&envelope.sealed)
        .map_err(|_| corrupt("its sealed part is not base64".into()))?;
    let inner = keys.open_meta(&sealed, &associated_data(id)).map_err(|_| {
        corrupt(
            "its sealed part fails authentication (altered, truncated, or not this snapshot's)"
                .into(),
        )
    })?;
    let mut meta = SnapshotMetadata::from_json(&inner, id)?;
    if Envelope::public(&meta, envelope.sealed.clone()) != envelope {
        return Err(corrupt(
            "its public fields differ from the sealed ones (altered)".into(),
        ));
    }
    meta.sealed_by = super::SealedBy(Some(keys.clone()));
    Ok(meta)
}
