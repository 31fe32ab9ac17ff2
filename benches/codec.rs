//! Criterion micro-benchmarks of the blob codec: encoding and decoding one chunk of
//! 768-dimension embeddings (about 4 MiB raw), with and without the shuffle filter, so a
//! regression in the hot loop shows up. Run with `cargo bench --bench codec`.

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use dakera_snapshot::testing::codec::{decode_chunk, encode_chunk, Filter};
use dakera_snapshot::Vector;
use serde_json::json;

fn embeddings(n: usize, dim: usize) -> Vec<Vector> {
    let mut s = 0x9E37_79B9_7F4A_7C15u64;
    (0..n)
        .map(|i| {
            let raw: Vec<f32> = (0..dim)
                .map(|_| {
                    s = s.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
                    ((s >> 40) as f32 / (1u64 << 24) as f32) - 0.5
                })
                .collect();
            let norm = raw.iter().map(|x| x * x).sum::<f32>().sqrt();
            Vector::new(format!("doc-{i:08}"), raw.into_iter().map(|x| x / norm).collect())
                .with_metadata(json!({"source": "bench", "chunk": i, "text": "about a hundred bytes of metadata for each vector"}))
        })
        .collect()
}

fn codec(c: &mut Criterion) {
    let dim = 768;
    let vectors = embeddings(1300, dim);
    let raw: u64 = vectors
        .iter()
        .map(|v| (4 * v.values.len() + v.id.len() + 100) as u64)
        .sum();
    let mut g = c.benchmark_group("chunk");
    g.throughput(Throughput::Bytes(raw));
    g.sample_size(20);
    for (name, filter) in [("shuffle", Filter::Shuffle), ("plain", Filter::None)] {
        g.bench_function(format!("encode/{name}/fast"), |b| {
            b.iter(|| encode_chunk(&vectors, dim as u32, true, filter, Some(2)).unwrap())
        });
        let encoded = encode_chunk(&vectors, dim as u32, true, filter, Some(2)).unwrap();
        g.bench_function(format!("decode/{name}/fast"), |b| {
            b.iter_batched(
                || encoded.bytes.clone(),
                |bytes| decode_chunk(&bytes[..], dim as u32, filter).unwrap(),
                BatchSize::LargeInput,
            )
        });
    }
    g.bench_function("digest-only", |b| {
        b.iter(|| encode_chunk(&vectors, dim as u32, true, Filter::Shuffle, None).unwrap())
    });
    g.finish();
}

criterion_group!(benches, codec);
criterion_main!(benches);
