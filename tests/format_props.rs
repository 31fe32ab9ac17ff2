//! Property tests of the blob codec: arbitrary vectors round-trip bit for bit, and arbitrary
//! or mutated bytes never panic the reader.

use dakera_snapshot::testing::codec::{
    compress_member, decode_chunk, decode_footer, decode_header, decode_namespace, encode_chunk,
    encode_ns_end, encode_ns_header, ContentDigest, Filter,
};
use dakera_snapshot::{
    CreateOptions, InMemoryStorage, SnapshotConfig, SnapshotId, SnapshotManager, SnapshotMetadata,
    Vector, VectorStorage,
};
use proptest::prelude::*;
use std::collections::BTreeMap;
use std::sync::OnceLock;

fn arb_metadata() -> impl Strategy<Value = Option<serde_json::Value>> {
    prop_oneof![
        Just(None),
        any::<i64>().prop_map(|i| Some(serde_json::json!({ "n": i }))),
        ".{0,40}".prop_map(|s| Some(serde_json::json!([s, null, true]))),
    ]
}

fn arb_namespace() -> impl Strategy<Value = (u32, Vec<Vector>)> {
    (1u32..24).prop_flat_map(|dim| {
        let vector = (
            ".{0,24}",
            prop::collection::vec(any::<u32>().prop_map(f32::from_bits), dim as usize),
            arb_metadata(),
            prop::option::of(any::<u64>()),
            prop::option::of(any::<u64>()),
        );
        prop::collection::vec(vector, 0..40).prop_map(move |vs| {
            // unique ids in ascending byte order, as `scan` delivers them
            let by_id: BTreeMap<String, Vector> = vs
                .into_iter()
                .map(|(id, values, metadata, ttl_seconds, expires_at)| {
                    (
                        id.clone(),
                        Vector {
                            id,
                            values,
                            metadata,
                            ttl_seconds,
                            expires_at,
                        },
                    )
                })
                .collect();
            let mut vs: Vec<Vector> = by_id.into_values().collect();
            vs.sort_by(|a, b| a.id.as_bytes().cmp(b.id.as_bytes()));
            (dim, vs)
        })
    })
}

/// A namespace section: header chunk, data chunks of about `chunk` vectors, end chunk.
fn encode(dim: u32, vs: &[Vector], chunk: usize, filter: Filter) -> Vec<u8> {
    let mut out = compress_member(&encode_ns_header("prop", dim, filter), 1);
    let mut h = ContentDigest::new(dim);
    for c in vs.chunks(chunk.max(1)) {
        let e = encode_chunk(c, dim, true, filter, Some(2)).unwrap();
        h.add(&e.vector_hashes);
        out.extend(e.bytes);
    }
    let digest = h.finish();
    out.extend(compress_member(&encode_ns_end(vs.len() as u64, &digest), 1));
    out
}

fn arb_filter() -> impl Strategy<Value = Filter> {
    prop_oneof![Just(Filter::None), Just(Filter::Shuffle)]
}

/// A vector with its floats as bit patterns, so NaNs compare equal to themselves.
type Bits = (
    String,
    Vec<u32>,
    Option<serde_json::Value>,
    Option<u64>,
    Option<u64>,
);

fn bits(vs: &[Vector]) -> Vec<Bits> {
    vs.iter()
        .map(|v| {
            (
                v.id.clone(),
                v.values.iter().map(|x| x.to_bits()).collect(),
                v.metadata.clone(),
                v.ttl_seconds,
                v.expires_at,
            )
        })
        .collect()
}

/// Cases per property: 200 in the normal suite; set `DAKERA_FUZZ_CASES` for a long run, e.g.
/// `DAKERA_FUZZ_CASES=200000 cargo test --release --test format_props`.
fn cases() -> u32 {
    std::env::var("DAKERA_FUZZ_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(200)
}

/// A real sidecar (and its id), made once.
fn sidecar() -> &'static (SnapshotId, String) {
    static SIDECAR: OnceLock<(SnapshotId, String)> = OnceLock::new();
    SIDECAR.get_or_init(|| {
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        rt.block_on(async {
            let dir = tempfile::tempdir().unwrap();
            let m =
                SnapshotManager::local(dir.path(), SnapshotConfig::default().with_chunk_size(4096))
                    .unwrap();
            let store = InMemoryStorage::new();
            for (ns, dim) in [("a", 8usize), ("b", 2)] {
                store.ensure_namespace(ns).await.unwrap();
                let vs = (0..40)
                    .map(|i| Vector::new(format!("{ns}{i:03}"), vec![i as f32; dim]))
                    .collect();
                store.upsert(ns, vs).await.unwrap();
            }
            let meta = m
                .create_snapshot(&store, CreateOptions::described("fuzz"))
                .await
                .unwrap();
            (meta.id.clone(), String::from_utf8(meta.to_json()).unwrap())
        })
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: cases(), ..ProptestConfig::default() })]

    #[test]
    fn the_sidecar_parser_never_panics_on_bytes(raw in prop::collection::vec(any::<u8>(), 0..4096)) {
        let (id, _) = sidecar();
        let _ = SnapshotMetadata::from_json(&raw, id);
    }

    #[test]
    fn mutated_sidecars_parse_only_into_consistent_layouts(edits in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..6)) {
        let (id, json) = sidecar();
        let mut bytes = json.clone().into_bytes();
        for (at, b) in edits {
            let i = at.index(bytes.len());
            bytes[i] = b;
        }
        if let Ok(meta) = SnapshotMetadata::from_json(&bytes, id) {
            // Whatever parses has a layout a reader can trust: ranges tile the blob.
            prop_assert!(meta.check_layout().is_ok());
            prop_assert_eq!(&meta.id, id);
        }
    }

    #[test]
    fn namespaces_round_trip_bit_exact((dim, vs) in arb_namespace(), chunk in 1usize..50, batch in 1usize..50, filter in arb_filter()) {
        let bytes = encode(dim, &vs, chunk, filter);
        let mut got = Vec::new();
        let summary = decode_namespace(&bytes[..], batch, |b| { got.extend(b); Ok(()) }).unwrap();
        prop_assert_eq!(summary.vectors as usize, vs.len());
        prop_assert_eq!(bits(&got), bits(&vs));
    }

    #[test]
    fn mutated_blobs_never_panic_or_decode_wrong((dim, vs) in arb_namespace(), at in any::<prop::sample::Index>(), xor in 1u8..=255, filter in arb_filter()) {
        let mut bytes = encode(dim, &vs, 8, filter);
        let i = at.index(bytes.len());
        bytes[i] ^= xor;
        let mut got = Vec::new();
        if decode_namespace(&bytes[..], 16, |b| { got.extend(b); Ok(()) }).is_ok() {
            // only bytes no check covers (gzip header mtime/OS fields) may change undetected
            prop_assert_eq!(bits(&got), bits(&vs));
        }
    }

    #[test]
    fn random_bytes_never_panic(raw in prop::collection::vec(any::<u8>(), 0..2048), gz in any::<bool>()) {
        let bytes = if gz { compress_member(&raw, 1) } else { raw };
        let _ = decode_namespace(&bytes[..], 8, |_| Ok(()));
        let _ = decode_header(&bytes[..]);
        let _ = decode_footer(&bytes[..]);
        let _ = decode_chunk(&bytes[..], 3, Filter::Shuffle);
        let _ = decode_chunk(&bytes[..], 3, Filter::None);
    }
}
