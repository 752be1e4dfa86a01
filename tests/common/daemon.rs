//! A threatflow process started by a test. Its standard error is collected as it runs (so a
//! test can read the telemetry port a `127.0.0.1:0` listener got, or wait for a log line), and
//! it is killed when the handle is dropped: a test that fails half-way leaves no daemon behind.

use std::io::{BufRead, BufReader};
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;

/// A running `threatflow` process.
pub struct Daemon {
    child: Child,
    stderr: Arc<Mutex<String>>,
    reader: Option<std::thread::JoinHandle<()>>,
}

impl Daemon {
    /// Starts `threatflow <args>` in the repository root, standard input closed, standard
    /// output discarded; `configure` may change that or set the environment.
    pub fn spawn(args: &[&str], configure: impl FnOnce(&mut Command)) -> Daemon {
        let mut command = Command::new(super::binary());
        command
            .args(args)
            .current_dir(super::root())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        configure(&mut command);
        let mut child = command.spawn().expect("the threatflow binary starts");
        let stderr = Arc::new(Mutex::new(String::new()));
        let pipe = child.stderr.take().expect("stderr is piped");
        let collected = stderr.clone();
        let reader = std::thread::spawn(move || {
            for line in BufReader::new(pipe).lines() {
                let Ok(line) = line else { return };
                let mut text = collected.lock();
                text.push_str(&line);
                text.push('\n');
            }
        });
        Daemon {
            child,
            stderr,
            reader: Some(reader),
        }
    }

    /// `threatflow run --config <config>`.
    pub fn run(config: &std::path::Path) -> Daemon {
        Daemon::spawn(&["run", "--config", config.to_str().unwrap()], |_| {})
    }

    pub fn id(&self) -> u32 {
        self.child.id()
    }

    /// Standard input, when `configure` piped it.
    pub fn stdin(&mut self) -> ChildStdin {
        self.child.stdin.take().expect("stdin is piped")
    }

    /// What the process has written to standard error so far.
    pub fn stderr(&self) -> String {
        self.stderr.lock().clone()
    }

    /// Waits (30 s at most) for a log line containing `text`.
    pub fn wait_for_log(&self, text: &str) -> String {
        super::wait_for(
            &format!("the log line `{text}`"),
            Duration::from_secs(30),
            || self.stderr().contains(text),
        );
        self.stderr()
    }

    /// The port its telemetry listener bound (a config may ask for port 0), read from its log.
    pub fn telemetry_port(&self) -> u16 {
        let log = self.wait_for_log("serving /metrics");
        let line = log
            .lines()
            .find(|line| line.contains("serving /metrics"))
            .unwrap();
        let addr = line
            .split_whitespace()
            .find_map(|field| field.strip_prefix("addr="))
            .unwrap_or_else(|| panic!("no addr= in {line}"));
        addr.rsplit_once(':').unwrap().1.parse().unwrap()
    }

    /// Sends SIGTERM (a graceful shutdown).
    pub fn signal_terminate(&self) {
        let status = Command::new("kill")
            .args(["-TERM", &self.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
    }

    /// SIGKILL: the process dies without draining.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Waits for the process to end on its own; its exit status and standard error.
    pub fn wait(mut self) -> (ExitStatus, String) {
        let status = self.child.wait().unwrap();
        if let Some(reader) = self.reader.take() {
            let _ = reader.join();
        }
        (status, self.stderr())
    }

    /// Waits up to `timeout` for the process to end on its own; kills it and fails the test
    /// if it does not.
    pub fn wait_within(mut self, timeout: Duration) -> (ExitStatus, String) {
        let deadline = std::time::Instant::now() + timeout;
        while matches!(self.child.try_wait(), Ok(None)) {
            if std::time::Instant::now() > deadline {
                self.kill();
                panic!(
                    "the daemon did not end within {timeout:?}: {}",
                    self.stderr()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        self.wait()
    }

    /// SIGTERM, then the exit status and standard error.
    pub fn stop(self) -> (ExitStatus, String) {
        self.signal_terminate();
        self.wait()
    }

    /// Stops with SIGTERM, checks that it drained and exited 0, and returns its stderr.
    pub fn terminate(self) -> String {
        let (status, stderr) = self.stop();
        assert!(status.success(), "exit {status}: {stderr}");
        stderr
    }

    /// Stops with SIGTERM a daemon whose sink cannot deliver: it gives up after the drain
    /// timeout and exits 1.
    pub fn terminate_undelivered(self) -> String {
        let (status, stderr) = self.stop();
        assert_eq!(status.code(), Some(1), "{stderr}");
        stderr
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// A daemon run inside the test's own process (`app::run`): telemetry on a port of its own,
/// and, when given, the Kubernetes API double's client instead of `KUBECONFIG`. Stopped (and
/// drained) by [`InProcess::stop`]; told to stop when dropped.
pub struct InProcess {
    pub port: u16,
    stop: tokio_util::sync::CancellationToken,
    task: Option<tokio::task::JoinHandle<anyhow::Result<threatflow::app::RunReport>>>,
}

impl InProcess {
    pub async fn start(config: &str, kube: Option<kube::Client>) -> InProcess {
        let config = threatflow::config::Config::from_yaml(config).unwrap();
        let problems = config.validate();
        assert!(problems.is_empty(), "{problems}");
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let options = threatflow::app::Options {
            listener: Some(listener),
            kube,
            ..threatflow::app::Options::default()
        };
        let stop = tokio_util::sync::CancellationToken::new();
        let task = tokio::spawn(threatflow::app::run(config, options, stop.clone()));
        InProcess {
            port,
            stop,
            task: Some(task),
        }
    }

    /// Stops the daemon as a stop signal would, and waits for its drain.
    pub async fn stop(mut self) -> threatflow::app::RunReport {
        self.stop.cancel();
        self.task
            .take()
            .unwrap()
            .await
            .expect("the daemon task")
            .expect("the daemon ran")
    }
}

impl Drop for InProcess {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}
