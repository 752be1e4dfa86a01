//! `threatflow enrich`: a Unix filter for offline forensics. Flow records on standard input,
//! one enriched record per line on standard output, in input order, using the daemon's own
//! line splitting, parsing, enrichment and encoders.

use std::io::{BufWriter, Read, Write};

use crate::config::{Config, OutputFormat};
use crate::enrich::EndpointIndex;
use crate::flow::lines::{Line, LineSplitter};
use crate::flow::{FlowFormat, RejectCounts};
use crate::pipeline::Processor;
use crate::sink::Encoder;

const CHUNK_BYTES: usize = 1024 * 1024;

/// What `enrich` did.
#[derive(Clone, Debug, Default)]
pub struct EnrichSummary {
    pub records: u64,
    pub rejected: RejectCounts,
    /// Field values shortened to their CEF key's maximum length.
    pub truncated_fields: u64,
    /// Standard output was closed (`| head`) before the input ended.
    pub output_closed: bool,
}

impl std::fmt::Display for EnrichSummary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} records, {} rejected",
            self.records,
            self.rejected.total()
        )?;
        if self.rejected.total() > 0 {
            write!(f, ": {}", self.rejected)?;
        }
        if self.output_closed {
            write!(f, " before the output was closed")?;
        }
        if self.truncated_fields > 0 {
            write!(
                f,
                "; {} field values shortened to their CEF key's limit",
                self.truncated_fields
            )?;
        }
        Ok(())
    }
}

/// Settings of one `enrich` run.
pub struct EnrichOptions<'a> {
    pub format: FlowFormat,
    pub output: OutputFormat,
    pub max_line_bytes: usize,
    /// CEF settings and the cluster name come from here.
    pub config: &'a Config,
    pub index: EndpointIndex,
    /// Report progress on standard error every few seconds (for a terminal).
    pub show_progress: bool,
    /// Threat feeds to match flows against.
    pub threats: crate::enrich::ThreatMatcher,
}

/// Progress lines for long runs: `... 12000000 records read (2.4M/s)`.
struct Progress {
    enabled: bool,
    started: std::time::Instant,
    last: std::cell::Cell<std::time::Instant>,
}

impl Progress {
    fn new(enabled: bool) -> Progress {
        let now = std::time::Instant::now();
        Progress {
            enabled,
            started: now,
            last: std::cell::Cell::new(now),
        }
    }

    fn report(&self, records: u64) {
        let now = std::time::Instant::now();
        if !self.enabled || now.duration_since(self.last.get()).as_secs() < 5 {
            return;
        }
        self.last.set(now);
        let rate = records as f64 / now.duration_since(self.started).as_secs_f64();
        eprintln!("... {records} records read ({:.0}k/s)", rate / 1000.0);
    }
}

/// Reads `input` to its end and writes one encoded record per accepted line to `output`.
/// Rejected lines are reported on `errors` with their line number and reason.
pub fn run(
    options: EnrichOptions<'_>,
    mut input: impl Read,
    output: impl Write,
    mut errors: impl Write,
) -> std::io::Result<EnrichSummary> {
    let processor = Processor::new(
        crate::enrich::Enricher {
            node_name: options.config.node_name().map(Into::into),
            threats: options.threats,
            labels: options.config.enrichment.labels.clone(),
        },
        options.index,
    );
    // No writer runs beside `enrich`: one read for the whole run.
    let index = processor.index.read().expect("index lock");
    let encoder = Encoder::new(options.output, options.config);
    let mut output = BufWriter::with_capacity(CHUNK_BYTES, output);
    let mut splitter = LineSplitter::new(options.max_line_bytes);
    let mut chunk = vec![0u8; CHUNK_BYTES];
    let mut summary = EnrichSummary::default();
    let mut line_number = 0u64;
    let mut encoded = Vec::with_capacity(4096);
    let mut write_error = None;
    // Set on the first write error: reading stops there.
    let stopped = std::cell::Cell::new(false);
    let progress = Progress::new(options.show_progress);
    let mut handle = |line: Line<'_>| {
        if write_error.is_some() {
            return;
        }
        line_number += 1;
        if line_number % 65_536 == 0 {
            progress.report(line_number);
        }
        let result = match processor.process(&index, options.format, line, options.max_line_bytes) {
            Ok(record) => {
                encoded.clear();
                summary.truncated_fields +=
                    u64::from(encoder.encode(&record, &mut encoded).truncated_fields);
                encoded.push(b'\n');
                summary.records += 1;
                output.write_all(&encoded)
            }
            Err(rejection) => {
                summary.rejected.add(rejection.reason);
                writeln!(
                    errors,
                    "record {line_number}: rejected ({}): {}",
                    rejection.reason, rejection.detail
                )
            }
        };
        if let Err(error) = result {
            write_error = Some(error);
            stopped.set(true);
        }
    };
    while !stopped.get() {
        match input.read(&mut chunk) {
            Ok(0) => {
                splitter.finish_with(&mut handle);
                break;
            }
            Ok(read) => splitter.split(&chunk[..read], &mut handle),
            Err(error) if error.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(error) => return Err(error),
        }
    }
    let written = match write_error {
        Some(error) => Err(error),
        None => output.flush(),
    };
    match written {
        Ok(()) => Ok(summary),
        // `threatflow enrich ... | head`: the reader has what it wanted.
        Err(error) if error.kind() == std::io::ErrorKind::BrokenPipe => {
            summary.output_closed = true;
            Ok(summary)
        }
        Err(error) => Err(error),
    }
}
