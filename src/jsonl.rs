//! JSON Lines export and import: one vector per line,
//! `{"namespace","id","values","metadata","ttl_seconds","expires_at"}`.
//!
//! [`export_jsonl`] writes a snapshot's vectors (incremental chains resolved), checked as
//! they are read. [`import_jsonl`] builds a full snapshot from such a file in one pass over
//! the input with bounded memory: lines are validated as they are read (every error names
//! the line), then sorted by namespace and id on disk ([`extsort`]) and fed to the normal
//! snapshot writer. Together they move data in and out of repositories without a running
//! store.

use crate::config::CreateOptions;
use crate::error::{Error, Result};
use crate::format::blob::MAX_DIMENSION;
use crate::format::sidecar::SnapshotMetadata;
use crate::manager::pipeline::outside_the_runtime;
use crate::manager::{ExportReport, SnapshotManager};
use crate::paths::validate_namespace;
use crate::storage::{NamespaceId, Vector, VectorStorage};
use async_trait::async_trait;
use extsort::{ExternalSorter, Sortable, SortedIterator};
use serde::{Deserialize, Serialize};
use std::cmp::Ordering;
use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::sync::{Arc, Mutex};

/// One line of a JSON Lines export or import.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JsonlRecord {
    /// The namespace the vector belongs to.
    pub namespace: String,
    /// The vector's id, unique in its namespace.
    pub id: String,
    /// The embedding.
    pub values: Vec<f32>,
    /// JSON metadata, or null.
    #[serde(default)]
    pub metadata: Option<serde_json::Value>,
    /// The TTL the vector was upserted with, or null.
    #[serde(default)]
    pub ttl_seconds: Option<u64>,
    /// Absolute expiry in unix seconds, or null. On import, a record with `ttl_seconds` but
    /// no `expires_at` expires `ttl_seconds` after the import, as an upsert would.
    #[serde(default)]
    pub expires_at: Option<u64>,
}

/// Borrowing twin of [`JsonlRecord`] for writing without copies.
#[derive(Serialize)]
struct Line<'a> {
    namespace: &'a str,
    id: &'a str,
    values: &'a [f32],
    metadata: &'a Option<serde_json::Value>,
    ttl_seconds: Option<u64>,
    expires_at: Option<u64>,
}

/// Writes snapshot `id`'s vectors to `out` as JSON Lines (namespaces in name order, vectors
/// in id order); `only` limits the namespaces. Values that JSON cannot represent (NaN,
/// infinities) are refused rather than written as something else. `out` should be
/// buffered.
pub async fn export_jsonl(
    manager: &SnapshotManager,
    id: &str,
    only: Option<&[String]>,
    out: &mut (dyn Write + Send),
) -> Result<ExportReport> {
    manager
        .read_vectors(id, only, |ns, batch| {
            outside_the_runtime(|| write_batch(&mut *out, ns, &batch))
        })
        .await
}

/// One batch of vectors as JSON Lines.
fn write_batch(out: &mut (dyn Write + Send), ns: &str, batch: &[Vector]) -> Result<()> {
    for v in batch {
        if let Some(bad) = v.values.iter().find(|x| !x.is_finite()) {
            return Err(Error::invalid(
                "vector",
                format!(
                    "{:?} in namespace {ns:?} holds {bad}, which JSON cannot represent",
                    v.id
                ),
            ));
        }
        let line = Line {
            namespace: ns,
            id: &v.id,
            values: &v.values,
            metadata: &v.metadata,
            ttl_seconds: v.ttl_seconds,
            expires_at: v.expires_at,
        };
        serde_json::to_writer(&mut *out, &line)
            .map_err(|e| Error::io("writing the export", e.into()))?;
        out.write_all(b"\n")
            .map_err(|e| Error::io("writing the export", e))?;
    }
    Ok(())
}

/// What [`import_jsonl`] built.
#[derive(Debug, Clone, Serialize)]
pub struct ImportReport {
    /// The new snapshot.
    pub snapshot: SnapshotMetadata,
    /// Records (non-blank lines) read.
    pub records: u64,
}

/// Wraps `input` so that gzip-compressed JSON Lines (recognised by the gzip magic bytes)
/// are decompressed transparently.
pub fn maybe_gunzip<R: Read + Send + 'static>(input: R) -> Result<Box<dyn BufRead + Send>> {
    let mut buffered = BufReader::with_capacity(1 << 16, input);
    let head = buffered
        .fill_buf()
        .map_err(|e| Error::io("reading the input", e))?;
    if head.starts_with(&[0x1f, 0x8b]) {
        Ok(Box::new(BufReader::with_capacity(
            1 << 16,
            flate2::bufread::MultiGzDecoder::new(buffered),
        )))
    } else {
        Ok(Box::new(buffered))
    }
}

/// Builds a full snapshot from JSON Lines read from `input` (plain or gzip), named `name`
/// in errors ("stdin", a path). Blank lines are skipped. Every record is checked as it is
/// read: valid JSON with exactly the known fields, a valid namespace name, a non-empty id,
/// non-empty values, and the same dimension as the namespace's first record; a violation
/// fails the import with [`Error::BadInput`] naming the line, and nothing is written. An id
/// that appears twice in a namespace is also refused (naming both lines). Memory stays
/// bounded: records are sorted on disk in the temporary directory.
pub async fn import_jsonl<R: Read + Send + 'static>(
    manager: &SnapshotManager,
    input: R,
    name: &str,
    options: CreateOptions,
) -> Result<ImportReport> {
    import_jsonl_with_buffer(manager, input, name, options, SORT_BUFFER_BYTES).await
}

/// [`import_jsonl`] with the memory for in-memory sorting set to about `sort_buffer_bytes`
/// (default 64 MiB); beyond it, sorted runs go to temporary files and are merged.
pub async fn import_jsonl_with_buffer<R: Read + Send + 'static>(
    manager: &SnapshotManager,
    input: R,
    name: &str,
    options: CreateOptions,
    sort_buffer_bytes: usize,
) -> Result<ImportReport> {
    import_staged(manager, input, name, None, options, sort_buffer_bytes).await
}

/// [`import_jsonl`] as an incremental snapshot on `parent_id`: the input is the whole store
/// at a later point in time. Namespaces whose content equals the parent's are recorded
/// unchanged, changed ones store only the chunks their parent's chain does not already
/// hold (chunk-level dedup), and namespaces the parent has but the input lacks are
/// recorded deleted. The parent is checked before the input is read.
pub async fn import_jsonl_incremental<R: Read + Send + 'static>(
    manager: &SnapshotManager,
    input: R,
    name: &str,
    parent_id: &str,
    options: CreateOptions,
) -> Result<ImportReport> {
    manager.get_snapshot_metadata(parent_id).await?;
    let parent = Some(parent_id);
    import_staged(manager, input, name, parent, options, SORT_BUFFER_BYTES).await
}

async fn import_staged<R: Read + Send + 'static>(
    manager: &SnapshotManager,
    input: R,
    name: &str,
    parent_id: Option<&str>,
    options: CreateOptions,
    sort_buffer_bytes: usize,
) -> Result<ImportReport> {
    options.validate()?;
    let name = name.to_string();
    // TTLs become expiry times on the manager's clock, like the store's own expiry.
    let now = manager.clock().now_secs();
    let staged =
        tokio::task::spawn_blocking(move || stage(input, name, now, sort_buffer_bytes)).await??;
    let records = staged.records;
    let snapshot = match parent_id {
        None => manager.create_snapshot(&staged, options).await?,
        Some(parent) => {
            manager
                .create_incremental_snapshot(&staged, parent, None, options)
                .await?
        }
    };
    Ok(ImportReport { snapshot, records })
}

/// Approximate memory for the records sorted in memory at once (the default).
pub const SORT_BUFFER_BYTES: usize = 64 << 20;

fn stage<R: Read + Send + 'static>(
    input: R,
    name: String,
    now: u64,
    sort_buffer_bytes: usize,
) -> Result<StagedStore> {
    let mut reader = maybe_gunzip(input)?;
    let mut stager = Stager {
        name,
        now,
        sort_buffer_bytes,
        dims: BTreeMap::new(),
        counts: BTreeMap::new(),
        sorter: None,
        records: 0,
    };
    let mut buf = Vec::new();
    let mut line_no = 0u64;
    loop {
        buf.clear();
        let n = reader
            .read_until(b'\n', &mut buf)
            .map_err(|e| Error::io(format!("reading {}", stager.name), e))?;
        if n == 0 {
            break;
        }
        line_no += 1;
        if buf.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        let text = buf.strip_suffix(b"\n").unwrap_or(&buf);
        let text = text.strip_suffix(b"\r").unwrap_or(text);
        stager.line(line_no, text)?;
    }
    stager.finish()
}

type Sorter = extsort::PushExternalSorter<Staged, fn(&Staged, &Staged) -> Ordering>;

/// Checks records line by line and feeds them to the on-disk sort.
struct Stager {
    name: String,
    now: u64,
    sort_buffer_bytes: usize,
    /// Per namespace: its dimension and the line that set it.
    dims: BTreeMap<String, (u32, u64)>,
    counts: BTreeMap<String, u64>,
    sorter: Option<Sorter>,
    records: u64,
}

impl Stager {
    fn bad(&self, line: u64, reason: String) -> Error {
        Error::BadInput {
            input: self.name.clone(),
            line,
            reason,
        }
    }

    /// One non-blank line: parsed, checked, staged.
    fn line(&mut self, line_no: u64, text: &[u8]) -> Result<()> {
        let rec: JsonlRecord = serde_json::from_slice(text).map_err(|e| {
            if text.trim_ascii_start().starts_with(b"[") {
                let why = "a JSON array, but the input must be JSON Lines: one record object per line (convert with `jq -c '.[]' FILE`)";
                return self.bad(line_no, why.into());
            }
            self.bad(line_no, json_reason(&e))
        })?;
        self.check(line_no, &rec)?;
        *self.counts.entry(rec.namespace.clone()).or_default() += 1;
        self.records += 1;
        let expires_at = rec
            .expires_at
            .or_else(|| rec.ttl_seconds.map(|t| self.now.saturating_add(t)));
        let item = Staged {
            namespace: rec.namespace,
            line: line_no,
            vector: Vector {
                id: rec.id,
                values: rec.values,
                metadata: rec.metadata,
                ttl_seconds: rec.ttl_seconds,
                expires_at,
            },
        };
        let buffer = self.sort_buffer_bytes;
        let sorter = self.sorter.get_or_insert_with(|| {
            let size = 4 * item.vector.values.len() + item.vector.id.len() + 256;
            ExternalSorter::new()
                .with_segment_size((buffer / size).clamp(16, 1 << 20))
                .pushed_by(staged_order as fn(&Staged, &Staged) -> Ordering)
        });
        sorter
            .push(item)
            .map_err(|e| Error::io("sorting the import on disk", e))
    }

    /// A record's namespace, id and values are valid, and its dimension is its namespace's.
    fn check(&mut self, line_no: u64, rec: &JsonlRecord) -> Result<()> {
        validate_namespace(&rec.namespace).map_err(|e| self.bad(line_no, e.to_string()))?;
        if rec.id.is_empty() {
            return Err(self.bad(line_no, "empty id".into()));
        }
        if rec.values.is_empty() {
            return Err(self.bad(line_no, format!("vector {:?} has no values", rec.id)));
        }
        if rec.values.len() > MAX_DIMENSION as usize {
            let why = format!(
                "vector {:?} has {} values, more than the supported {MAX_DIMENSION}",
                rec.id,
                rec.values.len()
            );
            return Err(self.bad(line_no, why));
        }
        let dim = rec.values.len() as u32;
        let (want, first) = *self
            .dims
            .entry(rec.namespace.clone())
            .or_insert((dim, line_no));
        if want != dim {
            let why = format!(
                "vector {:?} has dimension {dim}, but namespace {:?} has dimension {want} (set by line {first})",
                rec.id, rec.namespace
            );
            return Err(self.bad(line_no, why));
        }
        Ok(())
    }

    fn finish(self) -> Result<StagedStore> {
        if self.records == 0 {
            let why = "no records (the input is empty or blank); nothing was imported";
            return Err(self.bad(0, why.into()));
        }
        let sorted = match self.sorter {
            Some(s) => Some(
                s.done()
                    .map_err(|e| Error::io("sorting the import on disk", e))?,
            ),
            None => None,
        };
        Ok(StagedStore {
            name: self.name,
            dims: self.dims.into_iter().map(|(k, (d, _))| (k, d)).collect(),
            counts: self.counts,
            records: self.records,
            cursor: Arc::new(Mutex::new(Cursor {
                sorted,
                head: None,
                last: None,
            })),
        })
    }
}

/// serde_json's message without its "at line 1 column N" (the line is ours to name).
fn json_reason(e: &serde_json::Error) -> String {
    let msg = e.to_string();
    let msg = msg
        .rsplit_once(" at line ")
        .map_or(msg.as_str(), |(m, _)| m);
    match e.column() {
        0 => format!("not a valid record: {msg}"),
        c => format!("not a valid record (column {c}): {msg}"),
    }
}

/// A record on its way through the on-disk sort.
struct Staged {
    namespace: String,
    line: u64,
    vector: Vector,
}

fn staged_order(a: &Staged, b: &Staged) -> Ordering {
    (a.namespace.as_bytes(), a.vector.id.as_bytes(), a.line).cmp(&(
        b.namespace.as_bytes(),
        b.vector.id.as_bytes(),
        b.line,
    ))
}

fn put_bytes<W: Write>(w: &mut W, b: &[u8]) -> std::io::Result<()> {
    w.write_all(&(b.len() as u64).to_le_bytes())?;
    w.write_all(b)
}

fn get_u64<R: Read>(r: &mut R) -> std::io::Result<u64> {
    let mut b = [0u8; 8];
    r.read_exact(&mut b)?;
    Ok(u64::from_le_bytes(b))
}

fn get_bytes<R: Read>(r: &mut R) -> std::io::Result<Vec<u8>> {
    let n = get_u64(r)? as usize;
    let mut b = vec![0u8; n];
    r.read_exact(&mut b)?;
    Ok(b)
}

fn get_string<R: Read>(r: &mut R) -> std::io::Result<String> {
    String::from_utf8(get_bytes(r)?)
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))
}

fn put_opt<W: Write>(w: &mut W, v: Option<u64>) -> std::io::Result<()> {
    w.write_all(&[v.is_some() as u8])?;
    w.write_all(&v.unwrap_or(0).to_le_bytes())
}

fn get_opt<R: Read>(r: &mut R) -> std::io::Result<Option<u64>> {
    let mut flag = [0u8; 1];
    r.read_exact(&mut flag)?;
    let v = get_u64(r)?;
    Ok((flag[0] != 0).then_some(v))
}

/// The temporary on-disk encoding: length-prefixed fields, values as raw f32 bits, so the
/// sort never changes a value.
impl Sortable for Staged {
    fn encode<W: Write>(&self, w: &mut W) -> std::io::Result<()> {
        put_bytes(w, self.namespace.as_bytes())?;
        w.write_all(&self.line.to_le_bytes())?;
        put_bytes(w, self.vector.id.as_bytes())?;
        put_bytes(w, bytemuck::cast_slice(&self.vector.values))?;
        let meta = match &self.vector.metadata {
            Some(m) => serde_json::to_vec(m)?,
            None => Vec::new(),
        };
        put_bytes(w, &meta)?;
        put_opt(w, self.vector.ttl_seconds)?;
        put_opt(w, self.vector.expires_at)
    }

    fn decode<R: Read>(r: &mut R) -> std::io::Result<Self> {
        let namespace = get_string(r)?;
        let line = get_u64(r)?;
        let id = get_string(r)?;
        let raw = get_bytes(r)?;
        let values = raw
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        let meta = get_bytes(r)?;
        let metadata = if meta.is_empty() {
            None
        } else {
            Some(serde_json::from_slice(&meta)?)
        };
        Ok(Staged {
            namespace,
            line,
            vector: Vector {
                id,
                values,
                metadata,
                ttl_seconds: get_opt(r)?,
                expires_at: get_opt(r)?,
            },
        })
    }
}

type SortedRecords = SortedIterator<Staged, fn(&Staged, &Staged) -> Ordering>;

struct Cursor {
    sorted: Option<SortedRecords>,
    /// The next record, read ahead.
    head: Option<Staged>,
    /// Namespace, id and line of the last record handed out.
    last: Option<(String, String, u64)>,
}

/// The sorted import, served as a read-only [`VectorStorage`] to the snapshot writer.
///
/// It supports exactly the access the writer makes: namespaces in name order, each scanned
/// once from the start with `after` = the last id of the previous page. Anything else is an
/// internal error, never wrong data.
struct StagedStore {
    name: String,
    dims: BTreeMap<String, u32>,
    counts: BTreeMap<String, u64>,
    records: u64,
    cursor: Arc<Mutex<Cursor>>,
}

impl std::fmt::Debug for StagedStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StagedStore")
            .field("input", &self.name)
            .field("records", &self.records)
            .finish()
    }
}

impl StagedStore {
    fn read_only() -> Error {
        Error::Internal("the import staging area is read-only".into())
    }

    fn known(&self, namespace: &str) -> Result<u32> {
        self.dims
            .get(namespace)
            .copied()
            .ok_or_else(|| Error::NamespaceNotFound {
                namespace: namespace.to_string(),
                context: format!("in {}", self.name),
            })
    }
}

impl Cursor {
    fn next_record(&mut self) -> std::io::Result<Option<Staged>> {
        if let Some(h) = self.head.take() {
            return Ok(Some(h));
        }
        match self.sorted.as_mut().and_then(Iterator::next) {
            Some(r) => r.map(Some),
            None => Ok(None),
        }
    }

    fn page(
        &mut self,
        input: &str,
        namespace: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<Vector>> {
        let expected = match &self.last {
            Some((ns, id, _)) if ns == namespace => Some(id.as_str()),
            _ => None,
        };
        if expected != after {
            return Err(Error::Internal(format!(
                "the import staging area is read once in order (namespace {namespace:?})"
            )));
        }
        let io = |e: std::io::Error| Error::io("reading the sorted import back", e);
        let mut out = Vec::new();
        while out.len() < limit {
            let Some(rec) = self.next_record().map_err(io)? else {
                break;
            };
            if rec.namespace != namespace {
                if rec.namespace.as_str() < namespace {
                    return Err(Error::Internal(format!(
                        "namespace {:?} of the import was skipped",
                        rec.namespace
                    )));
                }
                self.head = Some(rec);
                break;
            }
            if let Some((ns, id, line)) = &self.last {
                if ns == namespace && *id == rec.vector.id {
                    return Err(Error::BadInput {
                        input: input.to_string(),
                        line: rec.line,
                        reason: format!(
                            "duplicate id {id:?} in namespace {ns:?} (also on line {line})"
                        ),
                    });
                }
            }
            self.last = Some((rec.namespace, rec.vector.id.clone(), rec.line));
            out.push(rec.vector);
        }
        Ok(out)
    }
}

#[async_trait]
impl VectorStorage for StagedStore {
    async fn upsert(&self, _: &str, _: Vec<Vector>) -> Result<usize> {
        Err(Self::read_only())
    }

    async fn get(&self, _: &str, _: &[String]) -> Result<Vec<Vector>> {
        Err(Self::read_only())
    }

    async fn delete(&self, _: &str, _: &[String]) -> Result<usize> {
        Err(Self::read_only())
    }

    async fn namespace_exists(&self, namespace: &str) -> Result<bool> {
        Ok(self.dims.contains_key(namespace))
    }

    async fn ensure_namespace(&self, _: &str) -> Result<()> {
        Err(Self::read_only())
    }

    async fn list_namespaces(&self) -> Result<Vec<NamespaceId>> {
        Ok(self.dims.keys().cloned().collect())
    }

    async fn dimension(&self, namespace: &str) -> Result<Option<usize>> {
        Ok(Some(self.known(namespace)? as usize))
    }

    async fn count(&self, namespace: &str) -> Result<usize> {
        self.known(namespace)?;
        Ok(self.counts[namespace] as usize)
    }

    async fn delete_namespace(&self, _: &str) -> Result<bool> {
        Err(Self::read_only())
    }

    async fn scan(
        &self,
        namespace: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<Vector>> {
        self.known(namespace)?;
        let (cursor, input) = (self.cursor.clone(), self.name.clone());
        let (namespace, after) = (namespace.to_string(), after.map(str::to_string));
        tokio::task::spawn_blocking(move || {
            let mut c = cursor
                .lock()
                .map_err(|_| Error::Internal("import cursor poisoned".into()))?;
            c.page(&input, &namespace, after.as_deref(), limit)
        })
        .await?
    }
}
