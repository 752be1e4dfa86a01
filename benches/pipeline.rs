//! The flow path on one core: split lines -> parse Calico JSON -> enrich from the inventory ->
//! encode CEF, over 1M generated records. Run with `cargo bench --bench pipeline`; criterion
//! prints the median time per 1M records and the records/s throughput.

use criterion::{criterion_group, criterion_main, Criterion, Throughput};

use threatflow::config::Config;
use threatflow::enrich::{EndpointIndex, Enricher, Inventory};
use threatflow::flow::lines::{LineBatch, LineSplitter};
use threatflow::flow::FlowFormat;
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
    let processor = Processor {
        enricher: Enricher::default(),
        index: EndpointIndex::from_inventory(&inventory).into(),
    };
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
                    .process(FlowFormat::Calico, line, 64 * 1024)
                    .expect("generated lines are valid");
                cef.encode(&record, &mut out);
                out.push(b'\n');
            });
            out.len()
        })
    });
    group.bench_function("parse+enrich", |b| {
        b.iter(|| {
            batch
                .iter()
                .map(|line| {
                    processor
                        .process(FlowFormat::Calico, line, 64 * 1024)
                        .is_ok() as usize
                })
                .sum::<usize>()
        })
    });
    let records: Vec<_> = batch
        .iter()
        .map(|line| {
            processor
                .process(FlowFormat::Calico, line, 64 * 1024)
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

criterion_group!(benches, pipeline);
criterion_main!(benches);
