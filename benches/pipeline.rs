//! The flow path on one core: split lines -> parse Calico JSON -> enrich from the inventory ->
//! encode CEF, over 1M generated records. Run with `cargo bench --bench pipeline`; criterion
//! prints the median time per 1M records and the records/s throughput. The `checkpoint` group
//! measures saving a file source's position per delivered batch.

use criterion::{criterion_group, criterion_main, Criterion, Throughput};

use std::sync::Arc;
use threatflow::config::Config;

use threatflow::cluster::Inventory;
use threatflow::enrich::{EndpointIndex, Enricher, ThreatFeed, ThreatMatcher};
use threatflow::flow::calico;
use threatflow::flow::lines::{Line, LineBatch, LineSplitter};
use threatflow::flow::{FlowFormat, FlowRecord, Rejection};
use threatflow::netset::NetSet;
use threatflow::pipeline::Processor;
use threatflow::sink::cef::{CefConfig, CefEncoder};
use threatflow::sink::json::JsonEncoder;

#[path = "flowgen.rs"]
mod flowgen;

const RECORDS: usize = 1_000_000;

fn pipeline(c: &mut Criterion) {
    let input = flowgen::flows(RECORDS);
    let inventory = Inventory::load("deploy/local/inventory.json".as_ref())
        .expect("run from the repository root");
    let processor = Processor::new(
        Enricher::default(),
        EndpointIndex::from_inventory(&inventory),
    );
    let index = processor.index.read();
    let config =
        Config::load_valid("deploy/local/threatflow.yaml".as_ref()).expect("quickstart config");
    let cef = CefEncoder::new(&CefConfig::default(), config.cluster_name.as_deref());
    let json = JsonEncoder::new(config.cluster_name.as_deref());

    let mut batch = LineBatch::default();
    let mut splitter = LineSplitter::new(64 * 1024);
    splitter.push(&input, &mut batch);
    splitter.finish(&mut batch);
    assert_eq!(batch.len(), RECORDS);

    let mut group = c.benchmark_group("flow_path_1m");
    group.sample_size(10);
    group.throughput(Throughput::Elements(RECORDS as u64));
    let mut out = Vec::with_capacity(input.len() * 2);
    group.bench_function("split+parse+enrich+cef", |b| {
        b.iter(|| {
            out.clear();
            let mut splitter = LineSplitter::new(64 * 1024);
            splitter.split(&input, |line| {
                let record = processor
                    .process(&index, FlowFormat::Calico, line, 64 * 1024)
                    .expect("generated lines are valid");
                cef.encode(&record, &mut out);
                out.push(b'\n');
            });
            out.len()
        })
    });
    // The same path with three threat feeds totalling 1M entries loaded; some sample
    // addresses are listed, so matching records take the threat class.
    let threats = ThreatMatcher::default();
    for (feed, count, base) in [
        ("feed-a", 600_000u32, 0x0b00_0000u32),
        ("feed-b", 300_000, 0x2d00_0000),
        ("feed-c", 100_000, 0xc633_6400),
    ] {
        let ranges = (0..count).map(|i| (base + 2 * i, base + 2 * i)).collect();
        threats.update(
            ThreatFeed {
                name: feed.into(),
                severity: None,
            },
            Arc::new(NetSet::from_ranges(ranges, vec![])),
        );
    }
    let with_threats = Processor::new(
        Enricher {
            threats,
            ..Enricher::default()
        },
        EndpointIndex::from_inventory(&inventory),
    );
    group.bench_function("split+parse+enrich+cef, 3 feeds / 1M entries", |b| {
        b.iter(|| {
            out.clear();
            let mut splitter = LineSplitter::new(64 * 1024);
            splitter.split(&input, |line| {
                let record = with_threats
                    .process(&index, FlowFormat::Calico, line, 64 * 1024)
                    .expect("generated lines are valid");
                cef.encode(&record, &mut out);
                out.push(b'\n');
            });
            out.len()
        })
    });
    // The two Calico readers on their own, in the same run: the scanner, and serde_json
    // (which reads what the scanner leaves).
    let texts: Vec<&str> = batch
        .iter()
        .map(|line| match line {
            Line::Complete(bytes) => std::str::from_utf8(bytes).expect("generated lines are UTF-8"),
            Line::TooLong { .. } => unreachable!("generated lines are short"),
        })
        .collect();
    type Parse = fn(&str) -> Result<FlowRecord, Rejection>;
    let readers: [(&str, Parse); 2] = [
        ("parse", calico::parse_str),
        ("parse with serde_json", calico::parse_str_with_serde_json),
    ];
    for (name, parse) in readers {
        group.bench_function(name, |b| {
            b.iter(|| texts.iter().filter(|text| parse(text).is_ok()).count())
        });
    }
    group.bench_function("parse+enrich", |b| {
        b.iter(|| {
            batch
                .iter()
                .map(|line| {
                    processor
                        .process(&index, FlowFormat::Calico, line, 64 * 1024)
                        .is_ok() as usize
                })
                .sum::<usize>()
        })
    });
    let records: Vec<_> = batch
        .iter()
        .map(|line| {
            processor
                .process(&index, FlowFormat::Calico, line, 64 * 1024)
                .expect("valid")
        })
        .collect();
    group.bench_function("cef_encode", |b| {
        b.iter(|| {
            out.clear();
            for record in &records {
                cef.encode(record, &mut out);
                out.push(b'\n');
            }
            out.len()
        })
    });
    group.bench_function("json_encode", |b| {
        b.iter(|| {
            out.clear();
            for record in &records {
                json.encode(record, &mut out);
                out.push(b'\n');
            }
            out.len()
        })
    });
    group.finish();
}

/// What saving a file source's position on every delivered batch costs: one checkpoint write
/// (a temporary file renamed over the checkpoint, no fsync), and the fsync the timer adds once
/// a second.
fn checkpoint(c: &mut Criterion) {
    use threatflow::flow::source::{CheckpointStore, Position};
    let dir = tempfile::tempdir_in("target").expect("run from the repository root");
    let store = CheckpointStore::new(dir.path().join("flows.checkpoint"));
    let mut position = Position {
        path: "/var/log/calico/flowlogs/flows.log".into(),
        dev: 2049,
        ino: 1_234_567,
        offset: 0,
    };
    let mut group = c.benchmark_group("checkpoint");
    group.bench_function("write_per_delivered_batch", |b| {
        b.iter(|| {
            position.offset += 1024 * 700;
            store.delivered(position.clone());
        })
    });
    group.bench_function("fsync_per_second", |b| {
        b.iter(|| {
            position.offset += 1024 * 700;
            store.delivered(position.clone());
            store.persist().expect("the checkpoint flushes")
        })
    });
    group.finish();
}

criterion_group!(benches, pipeline, checkpoint);
criterion_main!(benches);
