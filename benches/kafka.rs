//! The Kafka path end to end: 300k generated Calico records in a 3-partition topic on a local
//! tansu broker, consumed by the daemon's pipeline (Kafka source -> parse -> enrich from the
//! quickstart inventory -> CEF -> RFC 5424 over TCP) into a local receiver that counts frames.
//! Each iteration is a fresh consumer group reading the topic from the start; the time is
//! from the first record's arrival at the receiver until it has every record (offsets
//! committed as they are delivered), so joining the group is not counted. It runs with one
//! processing worker (`to_syslog_tcp/workers_1`) and with one per core (the default).
//!
//! `broker_read` is the same topic read by a bare librdkafka consumer that does nothing with
//! the records: how fast the broker serves them, to tell where the bottleneck is. Both set
//! `fetch.wait.max.ms` to 10 ms: tansu holds every fetch for that long even when it has data
//! (Kafka answers as soon as it has), which at librdkafka's default of 500 ms caps reading at
//! about 22k records/s.
//!
//! Needs tansu (`bash tests/run.sh` installs it). Run with `cargo bench --bench kafka`.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use rdkafka::consumer::{BaseConsumer, Consumer};
use threatflow::app;
use threatflow::config::Config;
use tokio_util::sync::CancellationToken;

#[path = "flowgen.rs"]
mod flowgen;
#[allow(dead_code)]
#[path = "../tests/common/kafka.rs"]
mod kafka;
#[allow(dead_code)]
#[path = "../tests/common/pki.rs"]
mod pki;
#[path = "receiver.rs"]
mod receiver;

const RECORDS: usize = 300_000;

/// CPU time this process (the pipeline, librdkafka's threads, the receiver) has used.
fn cpu_time() -> Duration {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap();
    // Fields after the command name: state is field 3; utime and stime are 14 and 15.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .unwrap()
        .1
        .split_whitespace()
        .collect();
    let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
    Duration::from_millis(ticks * 10)
}
const PARTITIONS: i32 = 3;

fn kafka(c: &mut Criterion) {
    let broker = kafka::Broker::start();
    broker.create_topic("flows", PARTITIONS as u32);
    let mut input = Vec::new();
    flowgen::write_flows(RECORDS, &mut input).unwrap();
    let lines: Vec<Vec<u8>> = input
        .split(|&b| b == b'\n')
        .filter(|line| !line.is_empty())
        .map(<[u8]>::to_vec)
        .collect();
    let bytes: usize = lines.iter().map(Vec::len).sum();
    let started = Instant::now();
    broker.produce_batched("flows", PARTITIONS, &lines);
    println!(
        "produced {RECORDS} records ({} bytes each on average) in {:.1} s",
        bytes / RECORDS,
        started.elapsed().as_secs_f64()
    );
    let (port, frames) = receiver::start(None);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();

    let mut group = c.benchmark_group("kafka_300k");
    group.sample_size(10);
    group.measurement_time(Duration::from_secs(30));
    group.throughput(Throughput::Elements(RECORDS as u64));
    let mut run = 0;
    // One worker, and one per core (the default).
    for workers in [1, threatflow::pipeline::available_cores()] {
        group.bench_function(format!("to_syslog_tcp/workers_{workers}"), |b| {
            b.iter_custom(|iterations| {
                let mut total = Duration::ZERO;
                for _ in 0..iterations {
                    run += 1;
                    let config = Config::from_yaml(&format!(
                        "sources: [{{name: kafka, type: kafka, kafka: {{brokers: [\"{}\"], \
                     topics: [{{name: flows}}], group_id: bench-{run}, \
                     properties: {{fetch.wait.max.ms: \"10\"}}}}}}]\n\
                     enrichment: {{inventory_path: deploy/local/inventory.json}}\n\
                     sinks: [{{name: siem, type: syslog, \
                     syslog: {{host: 127.0.0.1, port: {port}}}}}]\n\
                     pipeline: {{workers: {workers}}}\n\
                     telemetry: {{log_level: warn}}\n",
                        broker.address()
                    ))
                    .unwrap();
                    let before = frames.load(Ordering::Relaxed);
                    let stop = CancellationToken::new();
                    let pipeline =
                        runtime.spawn(app::run(config, app::Options::default(), stop.clone()));
                    // Timed from the first record out, so joining the group (the broker's
                    // initial rebalance delay) is not counted.
                    while frames.load(Ordering::Relaxed) == before {
                        std::thread::sleep(Duration::from_micros(200));
                    }
                    let (started, cpu) = (Instant::now(), cpu_time());
                    while frames.load(Ordering::Relaxed) - before < RECORDS as u64 {
                        std::thread::sleep(Duration::from_millis(1));
                    }
                    total += started.elapsed();
                    let cpu = cpu_time() - cpu;
                    println!(
                        "  {:.2} µs of CPU per record (all threads): \
                     {:.0}k records/s per core if the broker kept up",
                        cpu.as_secs_f64() * 1e6 / RECORDS as f64,
                        RECORDS as f64 / cpu.as_secs_f64() / 1e3
                    );
                    stop.cancel();
                    runtime.block_on(pipeline).unwrap().unwrap();
                }
                total
            });
        });
    }
    group.bench_function("broker_read", |b| {
        b.iter_custom(|iterations| {
            let mut total = Duration::ZERO;
            for _ in 0..iterations {
                run += 1;
                let consumer: BaseConsumer = rdkafka::ClientConfig::new()
                    .set("bootstrap.servers", broker.address())
                    .set("group.id", format!("bench-{run}"))
                    .set("auto.offset.reset", "earliest")
                    .set("fetch.wait.max.ms", "10")
                    .create()
                    .unwrap();
                consumer.subscribe(&["flows"]).unwrap();
                while !matches!(consumer.poll(Duration::from_millis(100)), Some(Ok(_))) {}
                let started = Instant::now();
                let mut read = 1;
                while read < RECORDS {
                    if let Some(Ok(_)) = consumer.poll(Duration::from_millis(100)) {
                        read += 1;
                    }
                }
                total += started.elapsed();
            }
            total
        });
    });
    group.finish();
}

criterion_group!(benches, kafka);
criterion_main!(benches);
