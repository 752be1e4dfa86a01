//! Syslog delivery on one core: CEF-encode, add the RFC 5424 header, frame with octet counting
//! and write to a local receiver, over plain TCP and over TLS, 100k records per iteration. The
//! receiver is a minimal thread that only counts frames, so it is not the bottleneck. Run with
//! `cargo bench --bench syslog` (needs the `openssl` command for the TLS certificate);
//! criterion prints records/s, and the bench prints the bytes per framed record.

use std::io::Read;
use std::net::TcpListener;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use threatflow::enrich::{EndpointIndex, EnrichedRecord, Inventory};
use threatflow::flow::lines::{LineBatch, LineSplitter};
use threatflow::flow::FlowFormat;
use threatflow::pipeline::Processor;
use threatflow::sink::cef::{CefConfig, CefEncoder};
use threatflow::sink::syslog::{SyslogClient, SyslogConfig, SyslogFramer, Timestamps};

#[path = "flowgen.rs"]
mod flowgen;
#[path = "../tests/common/pki.rs"]
mod pki;

const RECORDS: usize = 100_000;
const BATCH: usize = 1_024;

/// Counts octet-counted frames in a byte stream.
#[derive(Default)]
struct FrameCounter {
    /// Bytes still to skip of the current frame's message.
    remaining: usize,
    /// Digits of the next frame's length read so far.
    length: usize,
}

impl FrameCounter {
    fn feed(&mut self, mut bytes: &[u8], frames: &AtomicU64) {
        while !bytes.is_empty() {
            if self.remaining > 0 {
                let skip = self.remaining.min(bytes.len());
                self.remaining -= skip;
                bytes = &bytes[skip..];
                if self.remaining == 0 {
                    frames.fetch_add(1, Ordering::Relaxed);
                }
                continue;
            }
            let byte = bytes[0];
            bytes = &bytes[1..];
            match byte {
                b'0'..=b'9' => self.length = self.length * 10 + usize::from(byte - b'0'),
                b' ' => {
                    self.remaining = std::mem::take(&mut self.length);
                }
                other => panic!("not an octet-counted frame: byte {other}"),
            }
        }
    }
}

/// A receiver on loopback that counts frames; with `tls`, over TLS with that certificate.
fn receiver(tls: Option<Arc<rustls::ServerConfig>>) -> (u16, Arc<AtomicU64>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let frames = Arc::new(AtomicU64::new(0));
    let counted = frames.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let mut stream = stream.unwrap();
            let frames = counted.clone();
            let tls = tls.clone();
            std::thread::spawn(move || {
                let mut counter = FrameCounter::default();
                let mut buffer = vec![0u8; 256 * 1024];
                let mut read = |reader: &mut dyn Read| loop {
                    match reader.read(&mut buffer) {
                        Ok(0) | Err(_) => return,
                        Ok(n) => counter.feed(&buffer[..n], &frames),
                    }
                };
                match tls {
                    None => read(&mut stream),
                    Some(config) => {
                        let connection = rustls::ServerConnection::new(config).unwrap();
                        read(&mut rustls::StreamOwned::new(connection, stream))
                    }
                }
            });
        }
    });
    (port, frames)
}

fn records() -> Vec<EnrichedRecord> {
    let input = flowgen::flows(RECORDS);
    let inventory = Inventory::load("deploy/local/inventory.json".as_ref())
        .expect("run from the repository root");
    let processor = Processor::new(
        Default::default(),
        EndpointIndex::from_inventory(&inventory),
    );
    let index = processor.index.read().unwrap();
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
        let (port, frames) = receiver(tls.clone());
        let yaml = match tls {
            None => format!("{{host: 127.0.0.1, port: {port}}}"),
            Some(_) => format!(
                "{{host: localhost, port: {port}, transport: tls, tls: {{ca_file: {}}}}}",
                dir.path().join("ca.pem").display()
            ),
        };
        let config: SyslogConfig = serde_yaml::from_str(&yaml).unwrap();
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
