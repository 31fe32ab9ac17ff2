//! Property tests over whole repositories of forged sidecars: parent links that form cycles,
//! name themselves, point nowhere or contradict the type; creation times of zero, past year
//! 9999 or `u64::MAX`; sidecars replaced by garbage. Listing, retention planning, verify,
//! delete and the CLI's renderers must end, never panic, and retention must still never
//! plan to delete an ancestor of a snapshot it keeps. Cases per property: 200, or
//! `DAKERA_FUZZ_CASES`.

mod common;

use common::store_with;
use dakera_snapshot::{
    CreateOptions, RetentionPolicy, SnapshotConfig, SnapshotManager, SnapshotMetadata,
};
use proptest::prelude::*;
use serde_json::{json, Value};
use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::Duration;

const SNAPSHOTS: usize = 5;
/// Every operation here ends in milliseconds on a healthy repository; this is a hang.
const PATIENCE: Duration = Duration::from_secs(20);

fn cases() -> u32 {
    std::env::var("DAKERA_FUZZ_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(200)
}

/// A repository of five snapshots (two fulls, incrementals on them), made once; each case
/// copies its files.
fn template() -> &'static (tempfile::TempDir, Vec<String>) {
    static TEMPLATE: OnceLock<(tempfile::TempDir, Vec<String>)> = OnceLock::new();
    TEMPLATE.get_or_init(|| {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let dir = tempfile::tempdir().unwrap();
            let m =
                SnapshotManager::local(dir.path(), SnapshotConfig::default().with_max_snapshots(0))
                    .unwrap();
            let store = store_with(&[("a", 6, 3), ("b", 4, 2)]).await;
            let mut ids = Vec::new();
            let mut last: Option<SnapshotMetadata> = None;
            for i in 0..SNAPSHOTS {
                let s = match (&last, i % 3) {
                    (Some(p), 1 | 2) => {
                        m.create_incremental_snapshot(
                            &store,
                            p.id.as_str(),
                            None,
                            CreateOptions::default(),
                        )
                        .await
                    }
                    _ => m.create_snapshot(&store, CreateOptions::default()).await,
                }
                .unwrap();
                ids.push(s.id.to_string());
                last = Some(s);
            }
            (dir, ids)
        })
    })
}

fn copy_dir(from: &Path, to: &Path) {
    for entry in walk(from) {
        let rel = entry.strip_prefix(from).unwrap();
        let dest = to.join(rel);
        std::fs::create_dir_all(dest.parent().unwrap()).unwrap();
        std::fs::copy(&entry, &dest).unwrap();
    }
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out
}

/// How one sidecar is forged.
#[derive(Debug, Clone)]
enum Parent {
    Keep,
    None,
    /// The snapshot at this index (itself included).
    Index(usize),
    Unknown,
}

#[derive(Debug, Clone)]
struct Forgery {
    parent: Parent,
    /// Also flip the type between full and incremental.
    flip_type: bool,
    created_at: Option<u64>,
    garbage: bool,
}

fn arb_forgery() -> impl Strategy<Value = Forgery> {
    let parent = prop_oneof![
        3 => Just(Parent::Keep),
        1 => Just(Parent::None),
        4 => (0..SNAPSHOTS).prop_map(Parent::Index),
        1 => Just(Parent::Unknown),
    ];
    let time = prop_oneof![
        4 => Just(None),
        1 => Just(Some(0)),
        1 => Just(Some(300_000_000_000)),
        1 => Just(Some(u64::MAX)),
    ];
    (parent, any::<bool>(), time, prop::bool::weighted(0.1)).prop_map(
        |(parent, flip_type, created_at, garbage)| Forgery {
            parent,
            flip_type,
            created_at,
            garbage,
        },
    )
}

fn forge(dir: &Path, ids: &[String], i: usize, f: &Forgery) {
    let path = dir.join(format!("snapshots/{}.meta.json", ids[i]));
    if f.garbage {
        std::fs::write(&path, b"{\"format\": \"dakera-snapshot\", garbage").unwrap();
        return;
    }
    let mut v: Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    let parent = match &f.parent {
        Parent::Keep => v["parent_id"].clone(),
        Parent::None => Value::Null,
        Parent::Index(p) => json!(ids[*p]),
        Parent::Unknown => json!("20200101T000000000Z-00000000000000ff"),
    };
    let incremental = v["snapshot_type"] == "incremental";
    let incremental = if f.flip_type {
        !incremental
    } else {
        incremental
    };
    v["parent_id"] = parent;
    v["snapshot_type"] = json!(if incremental { "incremental" } else { "full" });
    if let Some(t) = f.created_at {
        v["created_at"] = json!(t);
        v["created_at_ms"] = json!(t);
    }
    std::fs::write(&path, serde_json::to_vec(&v).unwrap()).unwrap();
}

async fn within<T>(what: &str, f: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(PATIENCE, f)
        .await
        .unwrap_or_else(|_| panic!("{what} did not end"))
}

/// Runs every read-side operation and one delete on the forged repository.
async fn exercise(
    dir: &Path,
    ids: &[String],
    policy: &RetentionPolicy,
    victim: usize,
    force: bool,
) {
    let m = SnapshotManager::local(dir, SnapshotConfig::default().with_max_snapshots(0)).unwrap();
    let catalog = within("list", m.list_catalog()).await.unwrap();
    assert_eq!(catalog.snapshots.len() + catalog.damaged.len(), SNAPSHOTS);
    let _ = within("strict list", m.list_snapshots()).await;
    if let Ok(report) = within("retention", m.apply_retention(policy, true)).await {
        retention_keeps_every_ancestor(&catalog.snapshots, &report.plan.keep, &report.plan.remove);
    }
    let _ = within("verify --all", m.verify_all()).await.unwrap();
    let _ = within("latest", m.find_snapshot("latest")).await;
    for id in ids {
        let _ = within("lineage", m.lineage(id)).await;
    }
    let _ = within("delete", m.delete_snapshot(&ids[victim], force)).await;
    within("list after delete", m.list_catalog()).await.unwrap();
}

/// The plan partitions the readable snapshots, and no removed one is an ancestor of a kept
/// one (following the forged links as far as they go).
fn retention_keeps_every_ancestor(
    all: &[SnapshotMetadata],
    keep: &[(dakera_snapshot::SnapshotId, Vec<String>)],
    remove: &[dakera_snapshot::SnapshotId],
) {
    let parent: HashMap<_, _> = all
        .iter()
        .filter_map(|m| m.parent_id.as_ref().map(|p| (&m.id, p)))
        .collect();
    let kept: BTreeSet<_> = keep.iter().map(|(id, _)| id).collect();
    let removed: BTreeSet<_> = remove.iter().collect();
    assert!(kept.is_disjoint(&removed));
    assert_eq!(kept.len() + removed.len(), all.len());
    for k in &kept {
        let mut seen = BTreeSet::new();
        let mut cur = *k;
        while let Some(p) = parent.get(cur) {
            if !seen.insert(*p) {
                break;
            }
            assert!(
                !removed.contains(p),
                "ancestor {p} of kept {k} planned for removal"
            );
            cur = p;
        }
    }
}

/// The CLI's renderers over the same repository: they end, exit 0 or 1, and never panic.
#[cfg(feature = "cli")]
fn cli_renders(dir: &Path) {
    let bin = env!("CARGO_BIN_EXE_dakera-snapshot");
    let repo = dir.to_str().unwrap();
    for args in [
        &["list"][..],
        &["--json", "list"],
        &["verify", "--all"],
        &["--json", "verify", "--all"],
        &["prune", "--keep-last", "1", "--dry-run"],
        &["show", "latest"],
    ] {
        let out = std::process::Command::new(bin)
            .args(["--repo", repo])
            .args(args)
            .env_remove("DAKERA_SNAPSHOT_URL")
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!stderr.contains("panicked"), "{args:?} panicked: {stderr}");
        assert!(
            matches!(out.status.code(), Some(0 | 1)),
            "{args:?}: {:?} {stderr}",
            out.status
        );
    }
}

fn arb_policy() -> impl Strategy<Value = RetentionPolicy> {
    (
        prop::option::of(0usize..4),
        prop::option::of(0u64..3),
        prop::option::of(0usize..3),
    )
        .prop_map(|(keep_last, days, keep_daily)| RetentionPolicy {
            keep_last,
            keep_within: days.map(|d| Duration::from_secs(d * 86_400)),
            keep_daily,
            ..Default::default()
        })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: cases(), ..ProptestConfig::default() })]

    #[test]
    fn forged_repositories_never_hang_panic_or_lose_a_kept_chain(
        forgeries in prop::collection::vec(arb_forgery(), SNAPSHOTS),
        policy in arb_policy(),
        victim in 0..SNAPSHOTS,
        force in any::<bool>(),
        render in prop::bool::weighted(0.25),
    ) {
        let (template_dir, ids) = template();
        let dir = tempfile::tempdir().unwrap();
        copy_dir(template_dir.path(), dir.path());
        for (i, f) in forgeries.iter().enumerate() {
            forge(dir.path(), ids, i, f);
        }
        #[cfg(feature = "cli")]
        if render {
            cli_renders(dir.path());
        }
        #[cfg(not(feature = "cli"))]
        let _ = render;
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(exercise(dir.path(), ids, &policy, victim, force));
    }
}
