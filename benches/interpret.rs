//! The interpreter against plain JSON parsing of the same bytes: how much
//! turning events into rows costs beyond parsing them; and the batcher
//! (interpretation and batching, what `load` and `run` do before the
//! database) with and without drift counting. Run:
//! `cargo bench --bench interpret`; compare the throughputs (rows/s).

use std::hint::black_box;
use std::path::Path;

use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use martmap::catalog::Catalog;
use martmap::diagnostic::SourceFile;
use martmap::mapping;
use martmap::pipeline::{Batcher, DRIFT_SAMPLE, Message};

/// The allocator the martmap binary runs with, so that both sides are
/// measured as shipped.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn interpret(c: &mut Criterion) {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let catalog = Catalog::load(&root.join("schemas")).expect("catalog");
    let text = std::fs::read_to_string(root.join("mappings/COBROWSE.yaml")).expect("mapping");
    let plan = mapping::load_plan(&SourceFile::new("COBROWSE.yaml", text), &catalog)
        .expect("valid mapping");
    let sample = std::fs::read(root.join("samples/cobrowse-sessions.jsonl")).expect("sample");
    let events: Vec<&[u8]> = sample
        .split(|&b| b == b'\n')
        .filter(|line| !line.is_empty())
        .collect();
    let rows: usize = events
        .iter()
        .filter_map(|event| plan.apply(event).ok())
        .map(|rows| rows.len())
        .sum();

    let mut group = c.benchmark_group("sample");
    group.throughput(Throughput::Elements(rows as u64));
    group.bench_function("serde_json parse only", |b| {
        b.iter(|| {
            for event in &events {
                black_box(serde_json::from_slice::<serde_json::Value>(event).ok());
            }
        })
    });
    group.bench_function("martmap interpret (parse included)", |b| {
        b.iter(|| {
            for event in &events {
                black_box(plan.apply(event).ok());
            }
        })
    });
    group.finish();

    // Drift counting's cost, against the part of a load it adds to (the
    // database's share would only make it smaller).
    let messages: Vec<Message> = events
        .iter()
        .enumerate()
        .map(|(at, event)| Message {
            source: "sample".into(),
            partition: None,
            position: at as i64,
            key: None,
            payload: event.to_vec(),
        })
        .collect();
    let mut group = c.benchmark_group("batcher");
    group.throughput(Throughput::Elements(rows as u64));
    for (name, every) in [
        ("drift off", 0),
        ("drift on (default sampling)", DRIFT_SAMPLE),
    ] {
        group.bench_function(name, |b| {
            b.iter_batched(
                || messages.clone(),
                |messages| {
                    let mut batcher = Batcher::new(plan.clone()).counting_drift(every);
                    for message in messages {
                        batcher.push(message);
                        if batcher.len() >= 1000 {
                            black_box(batcher.take());
                        }
                    }
                    black_box(batcher.take())
                },
                BatchSize::LargeInput,
            )
        });
    }
    group.finish();
}

criterion_group!(benches, interpret);
criterion_main!(benches);
