//! Human and JSON renderings of library results. Formatting only: no decisions here.

use dakera_snapshot::{
    Catalog, CatalogEntry, DamagedSnapshot, DiffKind, GcReport, Lineage, RetentionReport,
    SnapshotDiff, SnapshotId, SnapshotMetadata, SnapshotType, VerifyOutcome,
};
use indicatif::HumanBytes;
use serde_json::{json, Value};
use std::fmt::Write;
use std::time::{Duration, UNIX_EPOCH};

/// Pads columns to their widest cell; the last column is not padded.
fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    let header: Vec<String> = header.iter().map(|h| h.to_string()).collect();
    for row in std::iter::once(&header).chain(rows) {
        let last = row.len().saturating_sub(1);
        let mut line = String::new();
        for (i, cell) in row.iter().enumerate() {
            if i == last {
                line.push_str(cell);
            } else {
                let _ = write!(line, "{cell:<w$}  ", w = widths[i]);
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

/// Seconds since the epoch as RFC 3339. A forged sidecar can claim any number: past
/// 9999-12-31 (where RFC 3339 ends) the raw number is shown instead.
fn time(secs: u64) -> String {
    const LAST_RFC3339_SECOND: u64 = 253_402_300_799;
    if secs > LAST_RFC3339_SECOND {
        return format!("{secs} s after 1970 (invalid)");
    }
    humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_secs(secs)).to_string()
}

fn kind(t: SnapshotType) -> &'static str {
    match t {
        SnapshotType::Full => "full",
        SnapshotType::Incremental => "incremental",
    }
}

fn labels(m: &SnapshotMetadata) -> String {
    m.labels
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",")
}

/// The fields `list --json` prints for one snapshot.
pub fn summary(m: &SnapshotMetadata) -> Value {
    json!({
        "id": m.id,
        "created_at": m.created_at,
        "created": time(m.created_at),
        "type": m.snapshot_type,
        "parent_id": m.parent_id,
        "namespace_count": m.namespace_count(),
        "vectors_stored": m.total_vectors,
        "size_bytes": m.size_bytes,
        "logical_bytes": m.logical_bytes,
        "raw_bytes": m.raw_bytes,
        "description": m.description,
        "labels": m.labels,
        "encrypted": m.sealed_by.is_sealed(),
        "damaged": false,
    })
}

/// Width `list` fits in: the last column (description and labels) is cut to fit.
const LIST_WIDTH: usize = 120;

/// `list`: newest first, one line each, at most [`LIST_WIDTH`] columns. The id carries the
/// creation time; a parent is shown by the last 8 hex digits of its id (`--json` and `show`
/// give full ids).
pub fn list(catalog: &Catalog) -> String {
    let rows: Vec<Vec<String>> = catalog
        .newest_first()
        .into_iter()
        .map(|e| match e {
            CatalogEntry::Readable(m) => list_row(m),
            CatalogEntry::Damaged(d) => damaged_row(d),
        })
        .collect();
    let text = table(
        &[
            "ID",
            "TYPE",
            "PARENT",
            "NS",
            "VECTORS",
            "STORED",
            "LOGICAL",
            "DESCRIPTION",
        ],
        &rows,
    );
    text.lines()
        .map(|l| format!("{}\n", cut(l, LIST_WIDTH)))
        .collect()
}

fn list_row(m: &SnapshotMetadata) -> Vec<String> {
    let mut about = m.description.clone().unwrap_or_default();
    if !m.labels.is_empty() {
        about = format!("{about} [{}]", labels(m)).trim_start().to_string();
    }
    vec![
        m.id.to_string(),
        kind(m.snapshot_type).to_string(),
        m.parent_id.as_ref().map_or("-".to_string(), short_id),
        m.namespace_count().to_string(),
        m.total_vectors.to_string(),
        HumanBytes(m.size_bytes).to_string(),
        m.logical_bytes
            .map_or("-".into(), |b| HumanBytes(b).to_string()),
        about,
    ]
}

/// `~` and the last 8 hex digits of an id: enough to tell a chain's snapshots apart.
pub fn short_id(id: &SnapshotId) -> String {
    let s = id.as_str();
    format!("~{}", &s[s.len().saturating_sub(8)..])
}

/// `line` cut to `width` characters, with `…` where it was cut.
fn cut(line: &str, width: usize) -> String {
    if line.chars().count() <= width {
        return line.to_string();
    }
    let mut out: String = line.chars().take(width - 1).collect();
    out.push('…');
    out
}

/// A row for a snapshot whose sidecar cannot be read: its id, DAMAGED, and why.
fn damaged_row(d: &DamagedSnapshot) -> Vec<String> {
    let mut row = vec![d.id.to_string(), "DAMAGED".to_string()];
    row.extend(["-", "-", "-", "-", "-"].map(String::from));
    row.push(d.problem.clone());
    row
}

/// `list --json`: every snapshot, newest first, with `damaged` true and the `problem` for
/// those whose sidecar cannot be read.
pub fn list_json(catalog: &Catalog) -> Vec<Value> {
    catalog
        .newest_first()
        .into_iter()
        .map(|e| match e {
            CatalogEntry::Readable(m) => summary(m),
            CatalogEntry::Damaged(d) => json!({"id": d.id, "damaged": true, "problem": d.problem}),
        })
        .collect()
}

pub fn show_json(l: &Lineage) -> Value {
    json!({
        "snapshot": l.chain[0],
        "chain": l.chain.iter().map(|m| &m.id).collect::<Vec<_>>(),
        "missing_ancestor": l.missing,
    })
}

pub fn show(l: &Lineage) -> String {
    let m = &l.chain[0];
    let mut out = show_fields(m);
    out.push_str(&show_namespaces(m));
    out.push_str(&show_chain(l));
    out
}

/// The snapshot's own fields, one per line.
fn show_fields(m: &SnapshotMetadata) -> String {
    let mut out = String::new();
    let mut field = |k: &str, v: String| {
        let _ = writeln!(out, "{k:<13}{v}");
    };
    field("snapshot", m.id.to_string());
    field("created", time(m.created_at));
    field(
        "type",
        match &m.parent_id {
            Some(p) => format!("incremental, parent {p}"),
            None => kind(m.snapshot_type).to_string(),
        },
    );
    field("description", m.description.clone().unwrap_or("-".into()));
    field(
        "labels",
        if m.labels.is_empty() {
            "-".into()
        } else {
            labels(m)
        },
    );
    field(
        "stored",
        format!(
            "{} vectors in {} namespace(s)",
            m.total_vectors,
            m.stored_namespace_count()
        ),
    );
    let ratio = if m.raw_bytes > 0 {
        format!(
            " ({:.1}%)",
            100.0 * m.size_bytes as f64 / m.raw_bytes as f64
        )
    } else {
        String::new()
    };
    field(
        "size",
        format!(
            "{} stored, {} raw{ratio}",
            HumanBytes(m.size_bytes),
            HumanBytes(m.raw_bytes)
        ),
    );
    if let Some(logical) = m.logical_bytes {
        field(
            "logical",
            format!(
                "{} (compressed data of every namespace at this point, ancestors' chunks included)",
                HumanBytes(logical)
            ),
        );
    }
    field(
        "compression",
        format!(
            "{} level {}, filter {:?}",
            m.compression.codec, m.compression.level, m.compression.filter
        ),
    );
    field("blob sha256", m.blob_sha256.clone());
    let version = if m.sealed_by.is_sealed() {
        // The sealed content's version, inside the 4.0 envelope.
        format!("4.0 (encrypted: AES-256-GCM, content {})", m.format_version)
    } else {
        m.format_version.clone()
    };
    field(
        "format",
        format!("{} {version}, written by {}", m.format, m.writer),
    );
    out
}

/// The namespaces the snapshot stores, and those it does not.
fn show_namespaces(m: &SnapshotMetadata) -> String {
    let mut out = String::from("\n");
    let rows: Vec<Vec<String>> = m
        .namespaces
        .iter()
        .map(|n| {
            vec![
                n.name.clone(),
                n.dimension.map_or("-".into(), |d| d.to_string()),
                n.vector_count.to_string(),
                HumanBytes(n.length).to_string(),
                HumanBytes(n.raw_length).to_string(),
            ]
        })
        .collect();
    out.push_str(&table(
        &["NAMESPACE", "DIMENSION", "VECTORS", "BYTES", "RAW"],
        &rows,
    ));
    if !m.unchanged_namespaces.is_empty() {
        let _ = writeln!(
            out,
            "unchanged since the parent (stored in an ancestor): {}",
            m.unchanged_namespaces.join(", ")
        );
    }
    if !m.deleted_namespaces.is_empty() {
        let _ = writeln!(
            out,
            "deleted since the parent: {}",
            m.deleted_namespaces.join(", ")
        );
    }
    out
}

/// The chain of ancestors, newest first, and a missing one.
fn show_chain(l: &Lineage) -> String {
    let mut out = String::new();
    out.push_str("\nchain (newest first):\n");
    for a in &l.chain {
        let _ = writeln!(
            out,
            "  {}  {}  {}",
            a.id,
            kind(a.snapshot_type),
            time(a.created_at)
        );
    }
    if let Some(missing) = &l.missing {
        let _ = writeln!(
            out,
            "  {missing}  MISSING: this snapshot cannot be fully restored"
        );
    }
    out
}

/// `verify`: one line per snapshot (`ok`, `BROKEN` with the reason and what it affects,
/// or `AFFECTED` for an intact snapshot that builds on a broken one), then a summary.
pub fn verify(outcomes: &[VerifyOutcome]) -> String {
    let mut out = String::new();
    for o in outcomes {
        let _ = writeln!(out, "{}", verify_line(o));
        if o.problem.is_some() && !o.affects.is_empty() {
            let ids: Vec<String> = o.affects.iter().map(|s| s.to_string()).collect();
            let _ = writeln!(
                out,
                "          affects the snapshots built on it: {}",
                ids.join(", ")
            );
        }
    }
    let count = |f: fn(&VerifyOutcome) -> bool| outcomes.iter().filter(|o| f(o)).count();
    let broken = count(|o| o.problem.is_some());
    let affected = count(|o| o.problem.is_none() && !o.ok);
    let _ = write!(out, "{} ok, {broken} broken", count(|o| o.ok));
    if affected > 0 {
        let _ = write!(out, ", {affected} affected by a broken ancestor");
    }
    out.push('\n');
    out
}

fn verify_line(o: &VerifyOutcome) -> String {
    match (&o.report, &o.problem, &o.broken_ancestor) {
        (_, Some(problem), _) => format!("BROKEN    {}  {problem}", o.snapshot_id),
        (_, None, Some(a)) => format!(
            "AFFECTED  {}  its own data verified, but it builds on BROKEN {a}",
            o.snapshot_id
        ),
        (Some(r), None, None) => format!(
            "ok        {}  {} vectors in {} namespace(s), {} checked, chain of {}",
            o.snapshot_id,
            r.vectors_checked,
            r.namespaces.len(),
            HumanBytes(r.bytes_checked),
            r.chain.len()
        ),
        (None, None, None) => format!("ok        {}", o.snapshot_id),
    }
}

pub fn prune(r: &RetentionReport, dry_run: bool) -> String {
    let mut out = String::new();
    for (id, why) in &r.plan.keep {
        let _ = writeln!(out, "{:<13}{id}  ({})", "keep", why.join("; "));
    }
    let verb = if dry_run { "would delete" } else { "delete" };
    for id in &r.plan.remove {
        let _ = writeln!(out, "{verb:<13}{id}  (no rule keeps it)");
    }
    let _ = writeln!(
        out,
        "{} kept, {} {}",
        r.plan.keep.len(),
        if dry_run {
            r.plan.remove.len()
        } else {
            r.deleted.len()
        },
        if dry_run {
            "would be deleted"
        } else {
            "deleted"
        }
    );
    out
}

pub fn gc(r: &GcReport, dry_run: bool) -> String {
    let mut out = String::new();
    for key in &r.orphan_blobs {
        let state = if dry_run || !r.removed.contains(key) {
            "orphan "
        } else {
            "removed"
        };
        let _ = writeln!(out, "{state} {key}");
    }
    if dry_run {
        let _ = writeln!(
            out,
            "{} orphan blob(s) would be removed",
            r.orphan_blobs.len()
        );
    } else {
        let _ = writeln!(
            out,
            "{} orphan blob(s) removed, {} incomplete upload(s) removed, {} expired pin(s) removed",
            r.removed.len(),
            r.incomplete_uploads_removed,
            r.stale_pins_removed
        );
    }
    out
}

pub fn diff(d: &SnapshotDiff) -> String {
    let count = |v: Option<u64>| v.map_or("-".to_string(), |n| n.to_string());
    let rows: Vec<Vec<String>> = d
        .namespaces
        .iter()
        .map(|e| {
            vec![
                e.namespace.clone(),
                format!("{:?}", e.kind).to_lowercase(),
                count(e.vectors_before),
                count(e.vectors_after),
            ]
        })
        .collect();
    let mut out = format!("{} -> {}\n", d.from, d.to);
    out.push_str(&table(&["NAMESPACE", "CHANGE", "BEFORE", "AFTER"], &rows));
    let n = |k: DiffKind| d.namespaces.iter().filter(|e| e.kind == k).count();
    let _ = writeln!(
        out,
        "{} added, {} removed, {} changed, {} unchanged",
        n(DiffKind::Added),
        n(DiffKind::Removed),
        n(DiffKind::Changed),
        n(DiffKind::Unchanged)
    );
    out
}

#[cfg(test)]
mod tests {
    use super::time;

    #[test]
    fn any_time_renders_without_panicking() {
        assert_eq!(time(0), "1970-01-01T00:00:00Z");
        assert_eq!(time(253_402_300_799), "9999-12-31T23:59:59Z");
        assert_eq!(time(300_000_000_000), "300000000000 s after 1970 (invalid)");
        assert!(time(u64::MAX).contains("invalid"));
    }
}
