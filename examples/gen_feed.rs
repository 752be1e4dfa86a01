//! Writes a generated IPv4 threat feed for benchmarks: `COUNT` lines, about two thirds bare
//! addresses and one third CIDRs (/16 to /31), scattered over the address space, with
//! duplicates and overlaps, in no order:
//! `cargo run --release --example gen_feed -- 1000000 > feed-1m.txt`

use std::io::Write;

fn main() -> std::io::Result<()> {
    let count: u64 = std::env::args()
        .nth(1)
        .map(|arg| arg.parse().expect("usage: gen_feed COUNT"))
        .unwrap_or(1_000_000);
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    // A fixed linear congruential sequence: the same file on every run.
    let mut state: u64 = 0x2545_f491_4f6c_dd1d;
    let mut next = || {
        state = state
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        (state >> 32) as u32
    };
    for _ in 0..count {
        let address = std::net::Ipv4Addr::from(next());
        match next() % 3 {
            0 => writeln!(out, "{address}/{}", 16 + next() % 16)?,
            _ => writeln!(out, "{address}")?,
        }
    }
    Ok(())
}
