//! Sources: reading collector output into batches of lines.
//!
//! `file` tails a flow-log file the way Felix writes it: it follows rotation by rename (the old
//! file is read to its end before the new one is opened) and by copy-truncate (a file that
//! shrinks is read again from its start), and saves its position in a checkpoint file as soon as
//! the lines before it are delivered. `stdin` reads until end of input. Both split lines with the
//! same [`LineSplitter`], and hand batches on through a bounded queue, so a slow pipeline
//! slows reading instead of filling memory. Parsing happens downstream.

use std::collections::VecDeque;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use parking_lot::Mutex;
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncSeekExt};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::config::{FileSourceConfig, StartAt};
use super::lines::{LineBatch, LineSplitter};
use super::FlowFormat;
use crate::ack::AckToken;
use crate::telemetry;

const READ_CHUNK_BYTES: usize = 256 * 1024;
/// A batch is handed on once it holds this many bytes, whatever its line count.
pub(crate) const BATCH_MAX_BYTES: usize = 4 * 1024 * 1024;
/// A partial batch is handed on after input has been idle this long.
pub(crate) const IDLE_FLUSH: Duration = Duration::from_millis(100);

/// Lines from one source, with the acknowledgement that saves their position once delivered.
#[derive(Debug)]
pub struct SourceBatch {
    pub source: Arc<str>,
    pub format: FlowFormat,
    pub lines: LineBatch,
    pub ack: AckToken,
}

/// What every source needs besides its own settings.
#[derive(Clone, Debug)]
pub struct SourceContext {
    pub name: Arc<str>,
    pub format: FlowFormat,
    pub max_line_bytes: usize,
    pub batch_max_records: usize,
    pub output: mpsc::Sender<SourceBatch>,
    pub metrics: SourceMetrics,
    pub shutdown: CancellationToken,
}

/// A source could not run.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error("cannot read {path}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot read standard input")]
    Stdin(#[source] std::io::Error),
    #[error("cannot set up the Kafka consumer")]
    Kafka(#[from] crate::kafka::KafkaSetupError),
    #[error("no partition was assigned within {secs} s: check the brokers, the topics and the credentials (see the errors above)")]
    NoAssignment { secs: u64 },
}

impl SourceError {
    pub fn kind(&self) -> &'static str {
        match self {
            SourceError::Read { .. } => "read",
            SourceError::Stdin(_) => "stdin",
            SourceError::Kafka(error) => error.kind(),
            SourceError::NoAssignment { .. } => "no_assignment",
        }
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct SourceLabels {
    pub(crate) source: String,
}

/// Per-source counters.
#[derive(Clone, Debug, Default)]
pub struct SourceMetrics {
    bytes: Family<SourceLabels, Counter>,
    lines: Family<SourceLabels, Counter>,
    rotations: Family<SourceLabels, Counter>,
    truncations: Family<SourceLabels, Counter>,
    pub(crate) kafka: super::kafka::KafkaMetrics,
}

impl SourceMetrics {
    pub fn register(registry: &mut Registry) -> SourceMetrics {
        SourceMetrics {
            bytes: telemetry::family(registry, "bytes", "Bytes read", []),
            lines: telemetry::family(registry, "lines", "Lines read (before parsing)", []),
            rotations: telemetry::family(
                registry,
                "rotations",
                "Files followed through a rename rotation",
                [],
            ),
            truncations: telemetry::family(
                registry,
                "truncations",
                "Files that shrank (copy-truncate) and were read again from the start",
                [],
            ),
            kafka: super::kafka::KafkaMetrics::register(registry.sub_registry_with_prefix("kafka")),
        }
    }

    /// Creates the series of `source` at zero.
    pub fn init_source(&self, source: &str) {
        let labels = Self::labels(source);
        for family in [&self.bytes, &self.lines, &self.rotations, &self.truncations] {
            drop(family.get_or_create(&labels));
        }
    }

    pub(crate) fn labels(source: &str) -> SourceLabels {
        SourceLabels {
            source: source.to_owned(),
        }
    }

    pub(crate) fn batch_read(&self, source: &str, lines: usize, bytes: u64) {
        let labels = Self::labels(source);
        self.lines.get_or_create(&labels).inc_by(lines as u64);
        self.bytes.get_or_create(&labels).inc_by(bytes);
    }
}

/// Which file and how far into it: enough to resume after a restart, even across a rotation.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Position {
    pub path: PathBuf,
    pub dev: u64,
    pub ino: u64,
    pub offset: u64,
}

/// The checkpoint file of one source: the latest delivered position.
///
/// The position is written as soon as its batch is delivered (to a temporary file renamed over
/// the checkpoint, so a reader never sees half a position), which a crash of the process cannot
/// undo: after a `kill -9` only what was delivered but not yet acknowledged is read again. The
/// timer's [`CheckpointStore::persist`] adds the `fsync` a power loss needs, and writes again a
/// position whose write failed.
#[derive(Clone, Debug)]
pub struct CheckpointStore {
    path: PathBuf,
    state: Arc<Mutex<CheckpointState>>,
}

#[derive(Debug, Default)]
struct CheckpointState {
    /// The latest delivered position.
    latest: Option<Position>,
    /// The position in the file, and whether it has reached the disk.
    written: Option<Position>,
    synced: bool,
    /// The last write failed (logged once until one succeeds).
    failing: bool,
}

impl CheckpointStore {
    pub fn new(path: PathBuf) -> CheckpointStore {
        CheckpointStore {
            path,
            state: Arc::default(),
        }
    }

    /// The saved position, if the checkpoint file exists and is readable.
    pub fn load(&self) -> Option<Position> {
        let text = std::fs::read(&self.path).ok()?;
        match serde_json::from_slice::<Position>(&text) {
            Ok(position) => {
                let mut state = self.state.lock();
                state.written = Some(position.clone());
                state.synced = true;
                Some(position)
            }
            Err(error) => {
                tracing::warn!(checkpoint = %self.path.display(), %error, "ignoring an unreadable checkpoint file");
                None
            }
        }
    }

    /// Notes that everything before `position` was delivered, and writes it (without fsync).
    pub fn delivered(&self, position: Position) {
        let mut state = self.state.lock();
        state.latest = Some(position);
        self.write_or_report(&mut state);
    }

    /// Writes the latest position; a failure is logged once until a write succeeds.
    fn write_or_report(&self, state: &mut CheckpointState) {
        if let Err(error) = self.write_latest(state) {
            if !std::mem::replace(&mut state.failing, true) {
                tracing::error!(checkpoint = %self.path.display(), %error, "cannot save a checkpoint; a restart may re-send lines (retried with each delivered batch and every second)");
            }
        }
    }

    /// Writes the latest delivered position if the file does not hold it yet.
    fn write_latest(&self, state: &mut CheckpointState) -> std::io::Result<()> {
        if state.latest.is_none() || state.written == state.latest {
            return Ok(());
        }
        let mut temporary = self.path.clone().into_os_string();
        temporary.push(".tmp");
        std::fs::write(
            &temporary,
            serde_json::to_vec(&state.latest).expect("a position serializes"),
        )?;
        std::fs::rename(&temporary, &self.path)?;
        state.written = state.latest.clone();
        state.synced = false;
        state.failing = false;
        Ok(())
    }

    /// Writes the latest position if a write failed, then flushes the checkpoint (and the
    /// rename, through its directory) to disk if it changed since the last flush.
    pub fn persist(&self) -> std::io::Result<()> {
        {
            let mut state = self.state.lock();
            self.write_or_report(&mut state);
            // After a failed write (reported once) the file holds no newer position to flush.
            if state.synced || state.written != state.latest || state.written.is_none() {
                return Ok(());
            }
            // Deliveries go on during the flush; one that writes meanwhile clears this again.
            state.synced = true;
        }
        let flushed = std::fs::File::open(&self.path)
            .and_then(|file| file.sync_all())
            .and_then(|()| match self.path.parent() {
                Some(dir) if !dir.as_os_str().is_empty() => std::fs::File::open(dir)?.sync_all(),
                _ => Ok(()),
            });
        if flushed.is_err() {
            self.state.lock().synced = false;
        }
        flushed
    }
}

/// An open file and how far it has been read.
struct OpenFile {
    path: PathBuf,
    file: tokio::fs::File,
    dev: u64,
    ino: u64,
    offset: u64,
}

impl OpenFile {
    async fn open(path: &Path, offset: u64) -> std::io::Result<OpenFile> {
        let mut file = tokio::fs::File::open(path).await?;
        let metadata = file.metadata().await?;
        let offset = if metadata.len() < offset { 0 } else { offset };
        file.seek(std::io::SeekFrom::Start(offset)).await?;
        Ok(OpenFile {
            path: path.to_owned(),
            file,
            dev: metadata.dev(),
            ino: metadata.ino(),
            offset,
        })
    }
}

/// Collects lines into batches and hands them on.
struct Emitter {
    context: SourceContext,
    batch: LineBatch,
    batch_bytes: u64,
}

impl Emitter {
    fn new(context: SourceContext) -> Emitter {
        Emitter {
            context,
            batch: LineBatch::default(),
            batch_bytes: 0,
        }
    }

    fn full(&self) -> bool {
        self.batch.len() >= self.context.batch_max_records || self.batch.bytes() >= BATCH_MAX_BYTES
    }

    /// Hands on the current batch, if it has lines. Returns false when the pipeline is gone.
    async fn emit(&mut self, ack: AckToken) -> bool {
        if self.batch.is_empty() {
            // Nothing to deliver, so nothing to acknowledge: running the action now could save
            // a position ahead of batches still in flight.
            drop(ack);
            return true;
        }
        let lines = std::mem::take(&mut self.batch);
        self.context.metrics.batch_read(
            &self.context.name,
            lines.len(),
            std::mem::take(&mut self.batch_bytes),
        );
        let batch = SourceBatch {
            source: self.context.name.clone(),
            format: self.context.format,
            lines,
            ack,
        };
        self.context.output.send(batch).await.is_ok()
    }
}

/// The running sources of a run, and the checkpoint files their positions go to.
pub struct Sources {
    tasks: Vec<(String, tokio::task::JoinHandle<Result<(), SourceError>>)>,
    /// The names of the sources that failed so far.
    failures: Vec<String>,
    checkpoints: Vec<CheckpointStore>,
    persister: tokio::task::JoinHandle<()>,
    persister_stop: CancellationToken,
}

/// How a run's sources read.
#[derive(Clone, Debug)]
pub struct SourceSettings {
    pub batch_max_records: usize,
    /// Read what exists now, then end.
    pub once: bool,
    /// How long a Kafka source waits at shutdown for its records in the pipeline.
    pub drain_timeout: Duration,
}

impl Sources {
    /// Starts every source; each sends its batches to `output` until it ends (`once`,
    /// standard input closing) or `shutdown`. Positions are written as batches are delivered
    /// and flushed to disk every second.
    pub fn start(
        sources: &[super::config::SourceConfig],
        settings: &SourceSettings,
        output: &mpsc::Sender<SourceBatch>,
        metrics: &SourceMetrics,
        shutdown: &CancellationToken,
    ) -> Sources {
        use super::config::SourceKind;
        let mut checkpoints = Vec::new();
        let mut tasks = Vec::new();
        for source in sources {
            metrics.init_source(&source.name);
            let context = SourceContext {
                name: Arc::from(source.name.as_str()),
                format: source.format,
                max_line_bytes: source.max_line_bytes,
                batch_max_records: settings.batch_max_records,
                output: output.clone(),
                metrics: metrics.clone(),
                shutdown: shutdown.clone(),
            };
            let task = match (source.kind, &source.file, &source.kafka) {
                (SourceKind::Kafka, _, Some(kafka)) => {
                    let run = super::kafka::KafkaRun {
                        once: settings.once,
                        drain_timeout: settings.drain_timeout,
                    };
                    let kafka = kafka.clone();
                    tokio::task::spawn_blocking(move || super::kafka::run(kafka, run, context))
                }
                (SourceKind::File, Some(file), _) => {
                    let store = file.checkpoint_path.clone().map(CheckpointStore::new);
                    checkpoints.extend(store.clone());
                    tokio::spawn(run_file(file.clone(), store, settings.once, context))
                }
                _ => tokio::spawn(run_reader(tokio::io::stdin(), context)),
            };
            tasks.push((source.name.clone(), task));
        }
        let persister_stop = CancellationToken::new();
        let persister = tokio::spawn({
            let (stores, stop) = (checkpoints.clone(), persister_stop.clone());
            async move {
                let mut tick = tokio::time::interval(Duration::from_secs(1));
                loop {
                    tokio::select! {
                        _ = tick.tick() => persist(&stores),
                        _ = stop.cancelled() => return,
                    }
                }
            }
        });
        Sources {
            tasks,
            failures: Vec::new(),
            checkpoints,
            persister,
            persister_stop,
        }
    }

    /// Waits for every source to end; returns the names of those that failed (logged).
    /// Cancel-safe: what has ended stays noted.
    pub async fn join(&mut self) -> Vec<String> {
        while let Some((_, task)) = self.tasks.last_mut() {
            let result = task.await;
            let (name, _) = self.tasks.pop().expect("the task just awaited");
            let failed = match result {
                Ok(Ok(())) => continue,
                Ok(Err(error)) => crate::telemetry::ErrorChain(&error).to_string(),
                Err(join_error) => join_error.to_string(),
            };
            tracing::error!(source = %name, error = %failed, "source failed");
            self.failures.push(name);
        }
        self.failures.clone()
    }

    /// Saves the positions one last time (once everything delivered has been acknowledged).
    pub async fn finish(self) {
        self.persister_stop.cancel();
        let _ = self.persister.await;
        persist(&self.checkpoints);
    }
}

fn persist(stores: &[CheckpointStore]) {
    for store in stores {
        if let Err(error) = store.persist() {
            tracing::error!(%error, "cannot save a checkpoint; a restart may re-send lines");
        }
    }
}

/// Reads standard input (or any reader) to its end.
pub async fn run_reader(
    mut reader: impl AsyncRead + Unpin,
    context: SourceContext,
) -> Result<(), SourceError> {
    let mut splitter = LineSplitter::new(context.max_line_bytes);
    let shutdown = context.shutdown.clone();
    let mut emitter = Emitter::new(context);
    let mut chunk = vec![0u8; READ_CHUNK_BYTES];
    loop {
        // A partial batch goes on once input pauses, so records never wait for more input.
        // (`read` is cancel-safe: data is not lost when the flush wins the race.)
        let pending = !emitter.batch.is_empty();
        let read = tokio::select! {
            read = reader.read(&mut chunk) => read.map_err(SourceError::Stdin)?,
            _ = tokio::time::sleep(IDLE_FLUSH), if pending => {
                if !emitter.emit(AckToken::none()).await {
                    return Ok(());
                }
                continue;
            }
            _ = shutdown.cancelled() => break,
        };
        if read == 0 {
            splitter.finish(&mut emitter.batch);
            break;
        }
        emitter.batch_bytes += read as u64;
        splitter.push(&chunk[..read], &mut emitter.batch);
        if emitter.full() && !emitter.emit(AckToken::none()).await {
            return Ok(());
        }
    }
    emitter.emit(AckToken::none()).await;
    Ok(())
}

/// Tails a file until shutdown or, with `once`, until its current end.
pub async fn run_file(
    settings: FileSourceConfig,
    checkpoints: Option<CheckpointStore>,
    once: bool,
    context: SourceContext,
) -> Result<(), SourceError> {
    let name = context.name.clone();
    let shutdown = context.shutdown.clone();
    let metrics = context.metrics.clone();
    let poll = Duration::from_millis(settings.poll_interval_ms);
    let path = settings.path.clone();
    let read_error = |source| SourceError::Read {
        path: path.display().to_string(),
        source,
    };

    // Files to read in order: a rotated file to finish first (after a restart), then the file.
    let mut files: VecDeque<OpenFile> = VecDeque::new();
    let saved = checkpoints.as_ref().and_then(CheckpointStore::load);
    let mut waiting_logged = false;
    loop {
        match std::fs::metadata(&path) {
            Ok(metadata) => {
                match &saved {
                    Some(position)
                        if (position.dev, position.ino) == (metadata.dev(), metadata.ino()) =>
                    {
                        if metadata.len() < position.offset {
                            tracing::warn!(source = %name, "the file is shorter than its checkpoint (truncated while stopped); reading it from the start");
                        }
                        files.push_back(
                            OpenFile::open(&path, position.offset)
                                .await
                                .map_err(read_error)?,
                        );
                    }
                    Some(position) => {
                        match find_rotated(&path, position) {
                            Some(rotated) => {
                                tracing::info!(source = %name, rotated = %rotated.display(), "finishing the rotated file named in the checkpoint first");
                                files.push_back(
                                    OpenFile::open(&rotated, position.offset)
                                        .await
                                        .map_err(read_error)?,
                                );
                            }
                            None => {
                                tracing::warn!(source = %name, "the checkpointed file is gone; lines written to it after the checkpoint cannot be read")
                            }
                        }
                        files.push_back(OpenFile::open(&path, 0).await.map_err(read_error)?);
                    }
                    None => {
                        let offset = match settings.start_at {
                            StartAt::Beginning => 0,
                            StartAt::End => metadata.len(),
                        };
                        files.push_back(OpenFile::open(&path, offset).await.map_err(read_error)?);
                    }
                }
                break;
            }
            Err(error) if error.kind() == std::io::ErrorKind::NotFound && !once => {
                if !waiting_logged {
                    tracing::info!(source = %name, path = %path.display(), "waiting for the file to appear");
                    waiting_logged = true;
                }
                tokio::select! {
                    _ = tokio::time::sleep(poll) => continue,
                    _ = shutdown.cancelled() => return Ok(()),
                }
            }
            Err(error) => return Err(read_error(error)),
        }
    }

    let mut splitter = LineSplitter::new(context.max_line_bytes);
    let mut emitter = Emitter::new(context);
    let mut chunk = vec![0u8; READ_CHUNK_BYTES];
    let position_ack = |file: &OpenFile, pending: u64| match &checkpoints {
        Some(store) => {
            let store = store.clone();
            let position = Position {
                path: file.path.clone(),
                dev: file.dev,
                ino: file.ino,
                offset: file.offset - pending,
            };
            AckToken::new(move || store.delivered(position))
        }
        None => AckToken::none(),
    };

    while !files.is_empty() {
        let finishing_rotated = files.len() > 1;
        let active = files.front_mut().expect("checked by the loop");
        if shutdown.is_cancelled() {
            break;
        }
        let read = active.file.read(&mut chunk).await.map_err(read_error)?;
        if read > 0 {
            active.offset += read as u64;
            emitter.batch_bytes += read as u64;
            splitter.push(&chunk[..read], &mut emitter.batch);
            if emitter.full() {
                let ack = position_ack(active, splitter.pending_bytes());
                if !emitter.emit(ack).await {
                    return Ok(());
                }
            }
            continue;
        }

        // At the end of the file.
        if finishing_rotated {
            // A rotated file does not grow: its last line is complete even without a newline.
            splitter.finish(&mut emitter.batch);
            let finished = files.pop_front().expect("checked above");
            let ack = position_ack(&finished, 0);
            if !emitter.emit(ack).await {
                return Ok(());
            }
            metrics
                .rotations
                .get_or_create(&SourceMetrics::labels(&name))
                .inc();
            continue;
        }
        if once {
            splitter.finish(&mut emitter.batch);
            let ack = position_ack(active, 0);
            emitter.emit(ack).await;
            return Ok(());
        }
        let ack = position_ack(active, splitter.pending_bytes());
        if !emitter.emit(ack).await {
            return Ok(());
        }
        match std::fs::metadata(&path) {
            Ok(metadata) if (metadata.dev(), metadata.ino()) != (active.dev, active.ino) => {
                // Renamed away and replaced: finish the old file (the writer may have added to
                // it after our last read), then continue with the new one.
                tracing::info!(source = %name, "file rotated; following the new file");
                match OpenFile::open(&path, 0).await {
                    Ok(new_file) => {
                        files.push_back(new_file);
                        continue;
                    }
                    Err(error) => {
                        tracing::warn!(source = %name, %error, "cannot open the new file yet; retrying")
                    }
                }
            }
            Ok(metadata) if metadata.len() < active.offset => {
                tracing::warn!(source = %name, size = metadata.len(), offset = active.offset, "file truncated (copy-truncate); reading it again from the start");
                metrics
                    .truncations
                    .get_or_create(&SourceMetrics::labels(&name))
                    .inc();
                splitter.reset();
                active
                    .file
                    .seek(std::io::SeekFrom::Start(0))
                    .await
                    .map_err(read_error)?;
                active.offset = 0;
                continue;
            }
            _ => {}
        }
        tokio::select! {
            _ = tokio::time::sleep(poll) => {}
            _ = shutdown.cancelled() => break,
        }
    }
    // Shutdown: hand on what is complete; the unfinished line stays unsaved and is read again.
    if let Some(active) = files.front() {
        let ack = position_ack(active, splitter.pending_bytes());
        emitter.emit(ack).await;
    }
    Ok(())
}

/// A file in the same directory with the checkpoint's device and inode: where a rotation
/// moved the file that was being read.
fn find_rotated(path: &Path, position: &Position) -> Option<PathBuf> {
    let directory = path
        .parent()
        .filter(|dir| !dir.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    std::fs::read_dir(directory)
        .ok()?
        .filter_map(Result::ok)
        .find(|entry| {
            entry.metadata().is_ok_and(|metadata| {
                (metadata.dev(), metadata.ino()) == (position.dev, position.ino)
            })
        })
        .map(|entry| entry.path())
}
