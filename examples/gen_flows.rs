//! Writes generated Calico flow-log lines to standard output, for benchmarks:
//! `cargo run --release --example gen_flows -- 1000000 > flows-1m.log`

#[path = "../benches/flowgen.rs"]
mod flowgen;

fn main() -> std::io::Result<()> {
    let count = std::env::args()
        .nth(1)
        .map(|arg| arg.parse().expect("usage: gen_flows COUNT"))
        .unwrap_or(1_000_000);
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    flowgen::write_flows(count, &mut out)
}
