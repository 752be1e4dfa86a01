//! Generates realistic Calico flow-log lines for benchmarks: the quickstart's sample records
//! (every shape Felix writes: level 0/1/2 aggregation, IPv6, host endpoints, network sets),
//! repeated with varying ports, times and counters.

use std::io::Write;

const TEMPLATES: &str = include_str!("../deploy/local/flows.log");

/// Writes `count` lines to `out`.
pub fn write_flows(count: usize, out: &mut impl Write) -> std::io::Result<()> {
    let templates: Vec<serde_json::Value> = TEMPLATES
        .lines()
        .map(|line| serde_json::from_str(line).expect("the sample flow log is valid JSON"))
        .collect();
    for i in 0..count {
        let mut record = templates[i % templates.len()].clone();
        let object = record.as_object_mut().expect("records are objects");
        let step = (i / templates.len()) as u64;
        if object["source_port"].is_number() {
            object.insert("source_port".into(), (1024 + step % 60_000).into());
        }
        object.insert("start_time".into(), (1_764_230_400 + step / 100).into());
        object.insert("end_time".into(), (1_764_230_700 + step / 100).into());
        object.insert("bytes_out".into(), (step % 100_000).into());
        serde_json::to_writer(&mut *out, &record)?;
        out.write_all(b"\n")?;
    }
    Ok(())
}

/// `count` lines in memory.
#[allow(dead_code)]
pub fn flows(count: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(count * 1100);
    write_flows(count, &mut out).expect("writing to memory cannot fail");
    out
}
