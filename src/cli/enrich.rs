//! `threatflow enrich`: a Unix filter for offline forensics. Flow records on standard input,
//! one enriched record per line on standard output (or, with `--syslog`, to a syslog
//! receiver), in input order, using the daemon's own line splitting, parsing, enrichment,
//! encoders and sinks.

use std::io::{Read, Write};
use std::path::PathBuf;

use clap::ValueEnum;

use crate::config::Config;
use crate::enrich::EndpointIndex;
use crate::enrich::EnrichedRecord;
use crate::flow::lines::{LineBatch, LineSplitter};
use crate::flow::{FlowFormat, RejectCounts, RejectReason};
use crate::identity::Identity;
use crate::pipeline::Processor;
use crate::sink::syslog::SyslogConfig;
use crate::sink::{
    Batch, Encoder, OutputFormat, Sink, SinkConfig, SinkContext, SinkKind, SinkMetrics, SinkReport,
};

/// What `enrich` did.
#[derive(Clone, Debug, Default)]
pub struct EnrichSummary {
    pub records: u64,
    pub rejected: RejectCounts,
    /// Field values shortened to their CEF key's maximum length.
    pub truncated_fields: u64,
    /// Standard output was closed (`| head`) before the input ended.
    pub output_closed: bool,
    /// With `--syslog`: where the records went, and what the sink did.
    pub syslog: Option<(String, SinkReport)>,
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
        if let Some((target, report)) = &self.syslog {
            write!(
                f,
                "; {} sent to {target} and acknowledged, {} dropped as too large, {} undelivered",
                report.records, report.dropped, report.undelivered
            )?;
        }
        Ok(())
    }
}

#[derive(clap::Args)]
pub struct EnrichArgs {
    /// The collector format of the input.
    #[arg(long, value_enum, default_value = "calico")]
    pub input_format: InputFormat,
    /// A `kubectl get pods,services,namespaces,nodes,jobs -A -o json` file.
    #[arg(long, value_name = "FILE")]
    pub inventory: Option<PathBuf>,
    #[arg(long, value_enum, default_value = "cef")]
    pub output_format: OutputFormatArg,
    /// Take CEF settings and the cluster name from this config file.
    #[arg(long, short, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Sent as the cluster name (CEF deviceExternalId); overrides the config's.
    #[arg(long)]
    pub cluster_name: Option<String>,
    /// Lines longer than this are rejected.
    #[arg(long, default_value_t = 64 * 1024)]
    pub max_line_bytes: usize,
    /// Exit with status 1 if any line was rejected.
    #[arg(long)]
    pub strict: bool,
    /// Match flows against a threat feed file (newline format: addresses, CIDRs, ranges);
    /// repeatable. Matches switch the event to the threat class and fill CEF `cs6`.
    #[arg(long, value_name = "NAME=FILE")]
    pub feed: Vec<String>,
    /// Send to a syslog receiver instead of standard output: `udp://HOST:PORT`,
    /// `tcp://HOST:PORT` or `tls://HOST:PORT`. Exits once every record is acknowledged (or
    /// given up on), with a report of what was sent and dropped.
    #[arg(long, value_name = "URL")]
    pub syslog: Option<String>,
    /// Stream framing for --syslog: octet counting (RFC 6587) or one message per line.
    #[arg(long, value_enum, default_value = "octet", requires = "syslog")]
    pub framing: FramingArg,
    /// Syslog header format for --syslog.
    #[arg(long, value_enum, default_value = "rfc5424", requires = "syslog")]
    pub syslog_format: SyslogFormatArg,
    /// CA certificates (PEM) to verify a tls:// receiver with; default: the system's.
    #[arg(long, value_name = "FILE", requires = "syslog")]
    pub ca: Option<PathBuf>,
    /// Give up on a batch the receiver has not taken after this many seconds.
    #[arg(long, default_value_t = 30, requires = "syslog")]
    pub syslog_timeout_secs: u64,
    /// Threads that parse, enrich and encode side by side; the output keeps the input's
    /// order. Default: the cores available to the process (its CPU limit included).
    #[arg(long)]
    pub workers: Option<usize>,
}

#[derive(Clone, Copy, ValueEnum)]
pub enum FramingArg {
    Octet,
    Lf,
}

#[derive(Clone, Copy, ValueEnum)]
pub enum SyslogFormatArg {
    Rfc5424,
    Rfc3164,
}

/// The `--syslog` options as a syslog sink's settings, checked like the config file's.
fn syslog_target(args: &EnrichArgs) -> anyhow::Result<Option<SyslogConfig>> {
    let Some(url) = &args.syslog else {
        return Ok(None);
    };
    let invalid = || {
        anyhow::anyhow!(
            "--syslog {url}: expected udp://HOST:PORT, tcp://HOST:PORT or tls://HOST:PORT"
        )
    };
    let (scheme, rest) = url.split_once("://").ok_or_else(invalid)?;
    let (host, port) = rest.rsplit_once(':').ok_or_else(invalid)?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let port: u16 = port.parse().map_err(|_| invalid())?;
    if !matches!(scheme, "udp" | "tcp" | "tls") {
        return Err(invalid());
    }
    let mut settings = serde_json::json!({
        "host": host,
        "port": port,
        "transport": scheme,
        "framing": match args.framing {
            FramingArg::Octet => "octet_counting",
            FramingArg::Lf => "lf",
        },
        "format": match args.syslog_format {
            SyslogFormatArg::Rfc5424 => "rfc5424",
            SyslogFormatArg::Rfc3164 => "rfc3164",
        },
    });
    if let Some(ca) = &args.ca {
        settings["tls"] = serde_json::json!({ "ca_file": ca });
    }
    let config: SyslogConfig = serde_json::from_value(settings)?;
    let mut problems = crate::problems::Problems::default();
    config.validate("--syslog", &mut problems);
    if !problems.is_empty() {
        anyhow::bail!("the --syslog options do not fit:\n{problems}");
    }
    Ok(Some(config))
}

#[derive(Clone, Copy, ValueEnum)]
pub enum InputFormat {
    Calico,
    Hubble,
}

#[derive(Clone, Copy, ValueEnum)]
pub enum OutputFormatArg {
    Cef,
    Leef,
    Json,
}

/// Runs `threatflow enrich` with its command-line arguments.
pub fn command(args: EnrichArgs) -> anyhow::Result<EnrichSummary> {
    let mut config = match &args.config {
        Some(path) => Config::load_valid(path)?,
        None => Config::from_yaml("{sources: [], sinks: []}")
            .map_err(|problem| anyhow::anyhow!("{problem}"))?,
    };
    if args.cluster_name.is_some() {
        config.cluster_name = args.cluster_name.clone();
    }
    let inventory = match &args.inventory {
        Some(path) => Some(crate::cluster::Inventory::load(path)?),
        None => None,
    };
    if args.max_line_bytes == 0 {
        anyhow::bail!("--max-line-bytes must be at least 1");
    }
    if args
        .workers
        .is_some_and(|workers| !crate::pipeline::WORKERS.contains(&workers))
    {
        anyhow::bail!("--workers must be between 1 and 256");
    }
    if args.syslog.is_some() {
        // Delivery retries and give-ups are reported on stderr as the daemon logs them.
        crate::telemetry::init_logging(&crate::telemetry::TelemetryConfig {
            log_level: "warn".into(),
            ..config.telemetry.clone()
        });
    }
    let options = EnrichOptions {
        format: match args.input_format {
            InputFormat::Calico => FlowFormat::Calico,
            InputFormat::Hubble => FlowFormat::Hubble,
        },
        output: match args.output_format {
            OutputFormatArg::Cef => OutputFormat::Cef,
            OutputFormatArg::Leef => OutputFormat::Leef,
            OutputFormatArg::Json => OutputFormat::Json,
        },
        max_line_bytes: args.max_line_bytes,
        config: &config,
        inventory,
        show_progress: std::io::IsTerminal::is_terminal(&std::io::stderr()),
        threats: threat_feeds(&args.feed)?,
        syslog: syslog_target(&args)?.map(|syslog| {
            (
                syslog,
                std::time::Duration::from_secs(args.syslog_timeout_secs),
            )
        }),
        workers: args
            .workers
            .unwrap_or_else(crate::pipeline::available_cores),
    };
    let summary = run(
        options,
        // Not locked for the whole run: workers read from their own threads.
        std::io::stdin(),
        // Not locked for the whole run: workers write from their own threads.
        std::io::stdout(),
        // Not locked for the whole run: the syslog sink logs on stderr from its own thread.
        std::io::stderr(),
    )?;
    Ok(summary)
}

/// `--feed NAME=FILE` arguments as a threat matcher.
fn threat_feeds(arguments: &[String]) -> anyhow::Result<crate::enrich::ThreatMatcher> {
    use crate::enrich::ThreatFeed;
    use crate::feeds::format::{self, FeedFormat};
    use crate::netset::NetSet;
    let matcher = crate::enrich::ThreatMatcher::default();
    for argument in arguments {
        let Some((name, path)) = argument
            .split_once('=')
            .filter(|(name, path)| !name.is_empty() && !path.is_empty())
        else {
            anyhow::bail!("--feed `{argument}` must be NAME=FILE");
        };
        let content = std::fs::read(path)
            .map_err(|error| anyhow::anyhow!("cannot read feed {name} from {path}: {error}"))?;
        let parsed = format::parse(&FeedFormat::default(), &content)?;
        if !parsed.rejected.is_empty() {
            eprintln!("feed {name}: rejected {}", parsed.rejected_summary());
        }
        let set = NetSet::from_ranges(parsed.v4, parsed.v6);
        matcher.update(
            ThreatFeed {
                name: name.into(),
                severity: None,
            },
            std::sync::Arc::new(set),
        );
    }
    Ok(matcher)
}

/// Settings of one `enrich` run.
pub struct EnrichOptions<'a> {
    pub format: FlowFormat,
    pub output: OutputFormat,
    pub max_line_bytes: usize,
    /// CEF settings and the cluster name come from here.
    pub config: &'a Config,
    /// The cluster to enrich from; without one, records keep only their own context.
    pub inventory: Option<crate::cluster::Inventory>,
    /// Report progress on standard error every few seconds (for a terminal).
    pub show_progress: bool,
    /// Threat feeds to match flows against.
    pub threats: crate::enrich::ThreatMatcher,
    /// Send to a syslog receiver instead of standard output, giving up on a batch that
    /// cannot be delivered within the duration.
    pub syslog: Option<(SyslogConfig, std::time::Duration)>,
    /// Threads that parse, enrich and encode side by side.
    pub workers: usize,
}

/// Records on their way to a syslog receiver through the daemon's sink, in batches.
struct SyslogDelivery {
    runtime: tokio::runtime::Runtime,
    sender: tokio::sync::mpsc::Sender<Batch>,
    task: tokio::task::JoinHandle<SinkReport>,
    batch: Vec<EnrichedRecord>,
    target: String,
    /// Records in a batch the sink no longer took.
    unsent: u64,
}

impl SyslogDelivery {
    const BATCH_RECORDS: usize = 512;

    fn start(
        config: &Config,
        context: &SinkContext,
        format: OutputFormat,
        syslog: SyslogConfig,
        timeout: std::time::Duration,
    ) -> anyhow::Result<SyslogDelivery> {
        let target = syslog.target();
        let sink = Sink::new(
            &SinkConfig {
                name: "syslog".into(),
                kind: SinkKind::Syslog,
                format,
                file: None,
                syslog: Some(syslog),
                kafka: None,
                when_full: None,
            },
            context,
        )?;
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()?;
        let (sender, receiver) = tokio::sync::mpsc::channel(config.pipeline.queue_batches);
        let task = runtime.spawn(sink.run(
            receiver,
            SinkMetrics::default(),
            tokio_util::sync::CancellationToken::new(),
            timeout,
            Some(timeout),
        ));
        Ok(SyslogDelivery {
            runtime,
            sender,
            task,
            batch: Vec::with_capacity(Self::BATCH_RECORDS),
            target,
            unsent: 0,
        })
    }

    /// Queues `record`; false once the sink has given up.
    fn push(&mut self, record: EnrichedRecord) -> bool {
        self.batch.push(record);
        self.batch.len() < Self::BATCH_RECORDS || self.send()
    }

    fn send(&mut self) -> bool {
        let records = std::mem::replace(&mut self.batch, Vec::with_capacity(Self::BATCH_RECORDS));
        let count = records.len() as u64;
        let batch = Batch {
            records: records.into(),
            ack: crate::ack::AckToken::none(),
        };
        let sent = self.sender.blocking_send(batch).is_ok();
        if !sent {
            self.unsent += count;
        }
        sent
    }

    /// Sends what is left and waits until the sink has acknowledged or given up on all of it.
    fn finish(mut self) -> (String, SinkReport) {
        if !self.batch.is_empty() {
            self.send();
        }
        drop(self.sender);
        let mut report = self.runtime.block_on(self.task).unwrap_or_default();
        report.undelivered += self.unsent;
        (self.target, report)
    }
}

/// Progress lines for long runs: `... 12000000 records read (2.4M/s)`.
struct Progress {
    enabled: bool,
    started: std::time::Instant,
    last: std::time::Instant,
}

impl Progress {
    fn new(enabled: bool) -> Progress {
        let now = std::time::Instant::now();
        Progress {
            enabled,
            started: now,
            last: now,
        }
    }

    fn report(&mut self, records: u64) {
        let now = std::time::Instant::now();
        if !self.enabled || now.duration_since(self.last).as_secs() < 5 {
            return;
        }
        self.last = now;
        let rate = records as f64 / now.duration_since(self.started).as_secs_f64();
        eprintln!("... {records} records read ({:.0}k/s)", rate / 1000.0);
    }
}

/// A batch of lines goes to a worker once it holds this many bytes.
const WORK_BATCH_BYTES: usize = 256 * 1024;

/// What a worker made of one batch of lines.
#[derive(Default)]
struct Worked {
    lines: u64,
    /// The accepted records encoded, one per line (standard output), or the records
    /// themselves (`--syslog`).
    encoded: Vec<u8>,
    records: Vec<EnrichedRecord>,
    accepted: u64,
    truncated_fields: u64,
    /// Rejected lines: their index in the batch, reason and detail.
    rejections: Vec<(u64, RejectReason, String)>,
}

/// Parses, enriches and (without `--syslog`) encodes one batch, into `encoded` (the worker's
/// buffer, cleared here: reused, so no batch pays for fresh pages).
fn work(
    processor: &Processor,
    index: &EndpointIndex,
    encoder: Option<&Encoder>,
    options: (FlowFormat, usize),
    batch: &LineBatch,
    mut encoded: Vec<u8>,
) -> Worked {
    let (format, max_line_bytes) = options;
    encoded.clear();
    encoded.reserve(batch.bytes());
    let mut worked = Worked {
        encoded,
        ..Worked::default()
    };
    for line in batch.iter() {
        match processor.process(index, format, line, max_line_bytes) {
            Ok(record) => {
                worked.accepted += 1;
                match encoder {
                    Some(encoder) => {
                        worked.truncated_fields += u64::from(
                            encoder
                                .encode(&record, &mut worked.encoded)
                                .truncated_fields,
                        );
                        worked.encoded.push(b'\n');
                    }
                    None => worked.records.push(record),
                }
            }
            Err(rejection) => {
                worked
                    .rejections
                    .push((worked.lines, rejection.reason, rejection.detail))
            }
        }
        worked.lines += 1;
    }
    worked
}

/// Reads `input` to its end and writes one encoded record per accepted line to `output`, in
/// input order. Rejected lines are reported on `errors` with their line number and reason.
///
/// The input is split into batches of lines; `workers` threads each read a batch (one at a
/// time, taking a ticket), parse, enrich and encode it, and write it when its ticket's turn
/// comes, so the output keeps the input's order. With one worker the calling thread does it.
pub fn run(
    options: EnrichOptions<'_>,
    input: impl Read + Send,
    output: impl Write + Send,
    mut errors: impl Write + Send,
) -> std::io::Result<EnrichSummary> {
    let identity = Identity::from_environment();
    let node_name = options.config.node_name(&identity);
    let processor = Processor::new(
        crate::enrich::Enricher {
            node_name: node_name.as_deref().map(Into::into),
            threats: options.threats,
            labels: options.config.enrichment.labels.clone(),
            // Offline, no egress mechanism is read.
            egress: Default::default(),
        },
        EndpointIndex::default(),
    );
    let workers = options.workers.max(1);
    // One index per worker: records hold reference-counted pod records from the index, and
    // workers sharing one index would contend on the counts of the busiest pods.
    let indexes: Vec<EndpointIndex> = (0..workers)
        .map(|_| match &options.inventory {
            Some(inventory) => EndpointIndex::build(inventory, &options.config.enrichment.labels),
            None => EndpointIndex::default(),
        })
        .collect();
    let context = SinkContext {
        cef: options.config.cef.clone(),
        cluster_name: options.config.cluster_name.clone(),
        hostname: node_name.unwrap_or(identity.hostname),
    };
    let encoder = Encoder::new(options.output, &context);
    let mut syslog = match options.syslog {
        Some((syslog, timeout)) => Some(
            SyslogDelivery::start(options.config, &context, options.output, syslog, timeout)
                .map_err(std::io::Error::other)?,
        ),
        None => None,
    };
    let encoder = syslog.is_none().then_some(&encoder);
    let settings = (options.format, options.max_line_bytes);
    // Each batch is encoded into one buffer of ~WORK_BATCH_BYTES and written whole.
    let mut output = output;
    let mut summary = EnrichSummary::default();
    let mut lines_before = 0u64;
    let mut progress = Progress::new(options.show_progress);
    // Takes one worked batch, in input order (its buffer is left for the worker to reuse);
    // false once nothing more can be written.
    let collect = |worked: &mut Worked| -> std::io::Result<bool> {
        summary.records += worked.accepted;
        summary.truncated_fields += worked.truncated_fields;
        for (line, reason, detail) in &worked.rejections {
            summary.rejected.add(*reason);
            writeln!(
                errors,
                "record {}: rejected ({reason}): {detail}",
                lines_before + line + 1
            )?;
        }
        lines_before += worked.lines;
        progress.report(lines_before);
        output.write_all(&worked.encoded)?;
        if let Some(syslog) = syslog.as_mut() {
            // A sink that gave up has said so in its report; stop reading.
            for record in std::mem::take(&mut worked.records) {
                if !syslog.push(record) {
                    return Ok(false);
                }
            }
        }
        Ok(true)
    };
    let reading = parking_lot::Mutex::new(Reading {
        input,
        splitter: LineSplitter::new(options.max_line_bytes),
        chunk: vec![0u8; WORK_BATCH_BYTES],
        next_ticket: 0,
        done: false,
        error: None,
    });
    let writing = parking_lot::Mutex::new(Writing {
        turn: 0,
        collect,
        stopped: false,
        error: None,
        abandoned: false,
    });
    let turns = parking_lot::Condvar::new();
    let worker = |index: &EndpointIndex| {
        // A panicking worker (its own locks released by then) stops the others instead of
        // leaving them waiting for its turn; the scope then reports the panic.
        let _on_panic = OnPanic(|| {
            reading.lock().done = true;
            writing.lock().abandoned = true;
            turns.notify_all();
        });
        let mut batch = LineBatch::default();
        let mut encoded = Vec::new();
        loop {
            // Read a batch, and take the ticket that orders its output.
            batch.clear();
            let ticket = {
                let mut reading = reading.lock();
                if reading.done {
                    return;
                }
                let Reading {
                    input,
                    splitter,
                    chunk,
                    ..
                } = &mut *reading;
                match fill(input, chunk, splitter, &mut batch) {
                    Ok(ended) => reading.done = ended,
                    Err(error) => {
                        reading.error = Some(error);
                        reading.done = true;
                        return;
                    }
                }
                reading.next_ticket += 1;
                reading.next_ticket - 1
            };
            let mut worked = work(&processor, index, encoder, settings, &batch, encoded);
            // Hand it on in ticket order.
            let mut writing = writing.lock();
            while writing.turn != ticket {
                if writing.abandoned {
                    return;
                }
                turns.wait(&mut writing);
            }
            if !writing.stopped {
                match (writing.collect)(&mut worked) {
                    Ok(true) => {}
                    Ok(false) => writing.stopped = true,
                    Err(error) => {
                        writing.error = Some(error);
                        writing.stopped = true;
                    }
                }
            }
            writing.turn += 1;
            turns.notify_all();
            encoded = worked.encoded;
            if writing.stopped {
                // Nothing more can be written: stop reading.
                drop(writing);
                reading.lock().done = true;
                return;
            }
        }
    };
    if workers == 1 {
        worker(&indexes[0]);
    } else {
        std::thread::scope(|scope| {
            for index in &indexes {
                scope.spawn(|| worker(index));
            }
        });
    }
    let Writing {
        error: write_error, ..
    } = writing.into_inner();
    let read_error = reading.into_inner().error;
    let collected = match (write_error, read_error) {
        (Some(error), _) | (None, Some(error)) => Err(error),
        (None, None) => Ok(()),
    };
    if let Some(syslog) = syslog {
        summary.syslog = Some(syslog.finish());
    }
    let written = collected.and_then(|()| output.flush());
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

/// The input, shared by the workers: each reads its own batch under the lock, so the lines
/// are parsed on the core that read them.
struct Reading<R> {
    input: R,
    splitter: LineSplitter,
    chunk: Vec<u8>,
    /// The ticket of the next batch read: batches are written in ticket order.
    next_ticket: u64,
    /// The input ended, failed, or nothing more can be written.
    done: bool,
    error: Option<std::io::Error>,
}

/// The output side: whose turn it is, and what takes the batches.
struct Writing<C> {
    turn: u64,
    collect: C,
    stopped: bool,
    error: Option<std::io::Error>,
    /// A worker panicked: its turn never comes, so nobody waits for it.
    abandoned: bool,
}

/// Runs `then` if the thread unwinds while this is alive.
struct OnPanic<F: FnMut()>(F);

impl<F: FnMut()> Drop for OnPanic<F> {
    fn drop(&mut self) {
        if std::thread::panicking() {
            (self.0)();
        }
    }
}

/// Reads into `batch` until it holds [`WORK_BATCH_BYTES`] or the input ends; true at the end
/// (with the last, unterminated line in the batch).
fn fill(
    input: &mut impl Read,
    chunk: &mut [u8],
    splitter: &mut LineSplitter,
    batch: &mut LineBatch,
) -> std::io::Result<bool> {
    while batch.bytes() < WORK_BATCH_BYTES {
        match input.read(chunk) {
            Ok(0) => {
                splitter.finish(batch);
                return Ok(true);
            }
            Ok(read) => splitter.push(&chunk[..read], batch),
            Err(error) if error.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(error) => return Err(error),
        }
    }
    Ok(false)
}
