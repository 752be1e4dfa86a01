//! STIX 2.1 bundles read into an address set: 1M indicators (about 400 MB of JSON), generated
//! while they are read (no copy of the document in memory), read object by object on one core.
//! Prints the median of five runs in MB/s and indicators/s, and the peak memory the read added
//! (`VmHWM`) next to the size of the resulting set.
//!
//! `cargo bench --bench stix` (`STIX_INDICATORS=N` for another size).

use std::io::Read;
use std::time::Instant;

use threatflow::feeds::stix;

/// A bundle of `count` indicators, written on demand: one object per `read` refill.
struct Bundle {
    count: u64,
    next: u64,
    buffer: Vec<u8>,
    at: usize,
    done: bool,
}

impl Bundle {
    fn new(count: u64) -> Bundle {
        let mut buffer = Vec::new();
        buffer.extend_from_slice(
            br#"{"type": "bundle", "id": "bundle--5d0092c5-5f74-4287-9642-33f4c354e56d", "objects": ["#,
        );
        Bundle {
            count,
            next: 0,
            buffer,
            at: 0,
            done: false,
        }
    }

    fn refill(&mut self) {
        self.buffer.clear();
        self.at = 0;
        if self.next == self.count {
            self.buffer.extend_from_slice(b"]}");
            self.done = true;
            return;
        }
        let i = self.next;
        self.next += 1;
        let separator = if i == 0 { "" } else { ", " };
        // A realistic indicator: about 400 bytes, with the fields feeds carry.
        let address = format!(
            "{}.{}.{}.{}",
            1 + (i >> 24) % 223,
            (i >> 16) & 255,
            (i >> 8) & 255,
            i & 255
        );
        let object = format!(
            r#"{separator}{{"type": "indicator", "spec_version": "2.1", "id": "indicator--{i:08x}-8c5a-4b8e-9d1e-6a1f0b7c2d10", "created_by_ref": "identity--3f2d0c4e-8c5a-4b8e-9d1e-6a1f0b7c2d10", "created": "2026-11-01T00:00:00.000Z", "modified": "2026-11-01T00:00:00.000Z", "name": "Malicious IP", "indicator_types": ["malicious-activity"], "pattern": "[ipv4-addr:value = '{address}']", "pattern_type": "stix", "valid_from": "2026-11-01T00:00:00Z", "labels": ["botnet"]}}"#
        );
        self.buffer.extend_from_slice(object.as_bytes());
    }
}

impl Read for Bundle {
    fn read(&mut self, out: &mut [u8]) -> std::io::Result<usize> {
        if self.at == self.buffer.len() {
            if self.done {
                return Ok(0);
            }
            self.refill();
        }
        let n = out.len().min(self.buffer.len() - self.at);
        out[..n].copy_from_slice(&self.buffer[self.at..self.at + n]);
        self.at += n;
        Ok(n)
    }
}

/// Counts bytes as they pass.
struct Counted<R> {
    inner: R,
    bytes: u64,
}

impl<R: Read> Read for Counted<R> {
    fn read(&mut self, out: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(out)?;
        self.bytes += n as u64;
        Ok(n)
    }
}

fn peak_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find_map(|line| line.strip_prefix("VmHWM:"))
                .and_then(|value| value.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or(0)
}

fn main() {
    let count: u64 = std::env::var("STIX_INDICATORS")
        .ok()
        .and_then(|value| value.parse().ok())
        .unwrap_or(1_000_000);
    let now = 1_796_000_000_000;
    let before = peak_kib();
    let mut runs = Vec::new();
    let mut set_bytes = 0;
    let mut bytes = 0;
    for _ in 0..5 {
        let mut reader = Counted {
            inner: std::io::BufReader::with_capacity(64 * 1024, Bundle::new(count)),
            bytes: 0,
        };
        let started = Instant::now();
        let read = stix::read_bundle(&mut reader, now).expect("a valid bundle");
        let elapsed = started.elapsed().as_secs_f64();
        assert_eq!(read.feed.v4.len() as u64, count);
        set_bytes = read.feed.v4.len() * std::mem::size_of::<threatflow::netset::Range4>();
        bytes = reader.bytes;
        runs.push(elapsed);
    }
    runs.sort_by(f64::total_cmp);
    let median = runs[runs.len() / 2];
    let added = peak_kib().saturating_sub(before);
    println!(
        "stix: {count} indicators, {:.0} MB of JSON: median {:.3} s = {:.0} MB/s, {:.0} indicators/s (runs: {:?})",
        bytes as f64 / 1e6,
        median,
        bytes as f64 / 1e6 / median,
        count as f64 / median,
        runs.iter().map(|run| format!("{run:.3}")).collect::<Vec<_>>()
    );
    println!(
        "stix: peak memory added {:.1} MiB; resulting ranges {:.1} MiB (ratio {:.2})",
        added as f64 / 1024.0,
        set_bytes as f64 / (1024.0 * 1024.0),
        added as f64 * 1024.0 / set_bytes.max(1) as f64
    );
}
