//! Syslog delivery on one core: CEF-encode, add the RFC 5424 header, frame with octet counting
//! and write to a local receiver, over plain TCP and over TLS, 100k records per iteration. The
//! receiver is a minimal thread that only counts frames, so it is not the bottleneck. Run with
//! `cargo bench --bench syslog` (needs the `openssl` command for the TLS certificate);
//! criterion prints records/s, and the bench prints the bytes per framed record.

use std::sync::atomic::Ordering;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use threatflow::cluster::Inventory;
use threatflow::enrich::{EndpointIndex, EnrichedRecord};
use threatflow::flow::lines::{LineBatch, LineSplitter};
use threatflow::flow::FlowFormat;
use threatflow::pipeline::Processor;
use threatflow::sink::cef::{CefConfig, CefEncoder};
use threatflow::sink::syslog::{SyslogClient, SyslogConfig, SyslogFramer, Timestamps};

#[path = "flowgen.rs"]
mod flowgen;
#[path = "../tests/common/pki.rs"]
mod pki;
#[path = "receiver.rs"]
mod receiver;

const RECORDS: usize = 100_000;
const BATCH: usize = 1_024;

fn records() -> Vec<EnrichedRecord> {
    let input = flowgen::flows(RECORDS);
    let inventory = Inventory::load("deploy/local/inventory.json".as_ref())
        .expect("run from the repository root");
    let processor = Processor::new(
        Default::default(),
        EndpointIndex::from_inventory(&inventory),
    );
    let index = processor.index.read();
    let mut batch = LineBatch::default();
    let mut splitter = LineSplitter::new(64 * 1024);
    splitter.push(&input, &mut batch);
    splitter.finish(&mut batch);
    batch
        .iter()
        .map(|line| {
            processor
                .process(&index, FlowFormat::Calico, line, 64 * 1024)
                .unwrap()
        })
        .collect()
}

fn syslog(c: &mut Criterion) {
    let records = records();
    let cef = CefEncoder::new(&CefConfig::default(), Some("bench"));
    let dir = tempfile::tempdir().unwrap();
    pki::make(dir.path());
    let server = pki::server_config(dir.path());
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();

    let mut group = c.benchmark_group("syslog_100k");
    group.sample_size(10);
    group.throughput(Throughput::Elements(RECORDS as u64));
    for (name, tls) in [("tcp", None), ("tls", Some(server))] {
        let (port, frames) = receiver::start(tls.clone());
        let yaml = match tls {
            None => format!("{{host: 127.0.0.1, port: {port}}}"),
            Some(_) => format!(
                "{{host: localhost, port: {port}, transport: tls, tls: {{ca_file: {}}}}}",
                dir.path().join("ca.pem").display()
            ),
        };
        let config: SyslogConfig = yaml_serde::from_str(&yaml).unwrap();
        let framer = SyslogFramer::new(&config, "node-a");
        let mut client = SyslogClient::new(&config).unwrap();
        let (mut out, mut message, mut ends) = (Vec::new(), Vec::new(), Vec::new());
        let mut sent_bytes = 0usize;
        group.bench_function(format!("cef+rfc5424+octet_counting over {name}"), |b| {
            b.iter(|| {
                let before = frames.load(Ordering::Relaxed);
                sent_bytes = 0;
                for batch in records.chunks(BATCH) {
                    out.clear();
                    ends.clear();
                    let time = Timestamps::now();
                    for record in batch {
                        message.clear();
                        framer.header(record, &time, &mut message);
                        cef.encode(record, &mut message);
                        framer.frame(&message, &mut out);
                        ends.push(out.len());
                    }
                    sent_bytes += out.len();
                    runtime.block_on(client.write(&out, &ends)).unwrap();
                }
                while frames.load(Ordering::Relaxed) - before < RECORDS as u64 {
                    std::hint::spin_loop();
                }
            })
        });
        println!("{name}: {} bytes per framed record", sent_bytes / RECORDS);
        runtime.block_on(client.close());
    }
    group.finish();
}

criterion_group!(benches, syslog);
criterion_main!(benches);
