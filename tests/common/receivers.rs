//! Real syslog receivers for the delivery tests: rsyslog (Debian's package, with its GnuTLS
//! driver) and syslog-ng (Debian's `syslog-ng-core`, unpacked by `tests/run.sh` under
//! `target/syslog-ng`, since the two packages conflict). Each runs in the foreground in its
//! own temporary directory, listens on loopback only, and writes every message it receives,
//! one per line, to a file.
//!
//! Ports: rsyslog takes both framings on one TCP port (it detects octet counting per frame);
//! syslog-ng's `syslog()` driver takes octet counting (TCP, TLS) and datagrams, its
//! `network()` driver LF framing.

use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Rsyslog,
    SyslogNg,
}

/// The ports a receiver listens on.
#[derive(Clone, Copy, Debug)]
pub struct Ports {
    /// Octet-counted TCP (rsyslog: LF-framed too).
    pub tcp_octet: u16,
    /// LF-framed TCP.
    pub tcp_lf: u16,
    pub udp: u16,
    /// TLS, octet-counted.
    pub tls: u16,
    /// TLS that requires a client certificate signed by the test CA (rsyslog only).
    pub tls_mutual: u16,
}

/// A running receiver.
pub struct Receiver {
    pub kind: Kind,
    pub ports: Ports,
    pub dir: tempfile::TempDir,
    child: Option<Child>,
}

/// A free loopback port (TCP and UDP).
fn free_port() -> u16 {
    loop {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        if std::net::UdpSocket::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

/// Where `tests/run.sh` unpacked syslog-ng.
fn syslog_ng_root() -> PathBuf {
    let root = super::root().join("target/syslog-ng");
    assert!(
        root.join("usr/sbin/syslog-ng").exists(),
        "syslog-ng is not unpacked under {}: run the tests through `bash tests/run.sh`, which installs it",
        root.display()
    );
    root
}

impl Receiver {
    pub fn start(kind: Kind) -> Receiver {
        let dir = tempfile::tempdir().unwrap();
        super::pki::make(dir.path());
        let ports = Ports {
            tcp_octet: free_port(),
            tcp_lf: free_port(),
            udp: free_port(),
            tls: free_port(),
            tls_mutual: free_port(),
        };
        let d = dir.path().display();
        let config = match kind {
            Kind::Rsyslog => format!(
                r#"global(maxMessageSize="64k" workDirectory="{d}"
       DefaultNetstreamDriverCAFile="{d}/ca.pem"
       DefaultNetstreamDriverCertFile="{d}/server.pem"
       DefaultNetstreamDriverKeyFile="{d}/server.key")
module(load="imtcp")
module(load="imudp")
input(type="imtcp" address="127.0.0.1" port="{tcp}")
input(type="imtcp" address="127.0.0.1" port="{lf}")
input(type="imudp" address="127.0.0.1" port="{udp}" rcvbufSize="8m")
input(type="imtcp" address="127.0.0.1" port="{tls}" streamDriver.name="gtls" streamDriver.mode="1" streamDriver.authMode="anon")
input(type="imtcp" address="127.0.0.1" port="{mutual}" streamDriver.name="gtls" streamDriver.mode="1" streamDriver.authMode="x509/certvalid")
template(name="message" type="string" string="%msg%\n")
action(type="omfile" file="{d}/received.log" template="message" asyncWriting="off" flushOnTXEnd="on")
"#,
                tcp = ports.tcp_octet,
                lf = ports.tcp_lf,
                udp = ports.udp,
                tls = ports.tls,
                mutual = ports.tls_mutual,
            ),
            Kind::SyslogNg => format!(
                r#"@version: 3.38
options {{ keep-hostname(yes); log-msg-size(65536); flush-lines(1); }};
source s_octet {{ syslog(ip(127.0.0.1) port({tcp}) transport("tcp") max-connections(100)); }};
source s_lf {{ network(ip(127.0.0.1) port({lf}) transport("tcp") flags(syslog-protocol) max-connections(100)); }};
source s_udp {{ syslog(ip(127.0.0.1) port({udp}) transport("udp") so-rcvbuf(8388608)); }};
source s_tls {{ syslog(ip(127.0.0.1) port({tls}) transport("tls") max-connections(100)
    tls(key-file("{d}/server.key") cert-file("{d}/server.pem") peer-verify(optional-untrusted))); }};
destination d_file {{ file("{d}/received.log" template("${{MSG}}\n")); }};
log {{ source(s_octet); source(s_lf); source(s_udp); source(s_tls); destination(d_file); }};
"#,
                tcp = ports.tcp_octet,
                lf = ports.tcp_lf,
                udp = ports.udp,
                tls = ports.tls,
            ),
        };
        std::fs::write(dir.path().join("receiver.conf"), config).unwrap();
        let mut receiver = Receiver {
            kind,
            ports,
            dir,
            child: None,
        };
        receiver.spawn();
        receiver
    }

    fn spawn(&mut self) {
        let dir = self.dir.path();
        let log = std::fs::File::create(dir.join("receiver.out")).unwrap();
        let mut command = match self.kind {
            Kind::Rsyslog => {
                let mut command = Command::new("rsyslogd");
                command.args(["-n", "-f"]).arg(dir.join("receiver.conf"));
                command.arg("-i").arg(dir.join("rsyslog.pid"));
                command
            }
            Kind::SyslogNg => {
                let root = syslog_ng_root();
                let mut command = Command::new(root.join("usr/sbin/syslog-ng"));
                command
                    .env("LD_LIBRARY_PATH", root.join("usr/lib/syslog-ng"))
                    .args(["-F", "--no-caps"])
                    .arg(format!(
                        "--module-path={}",
                        root.join("usr/lib/syslog-ng/3.38").display()
                    ))
                    .arg("-f")
                    .arg(dir.join("receiver.conf"))
                    .arg("-p")
                    .arg(dir.join("syslog-ng.pid"))
                    .arg("-R")
                    .arg(dir.join("syslog-ng.persist"))
                    .arg("-c")
                    .arg(dir.join("syslog-ng.ctl"));
                command
            }
        };
        let child = command
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|error| {
                panic!(
                    "cannot start {:?} ({error}); `bash tests/run.sh` installs it",
                    self.kind
                )
            });
        self.child = Some(child);
        // Ready when its TCP ports accept.
        let deadline = Instant::now() + Duration::from_secs(20);
        for port in [self.ports.tcp_octet, self.ports.tcp_lf, self.ports.tls] {
            while TcpStream::connect(("127.0.0.1", port)).is_err() {
                assert!(
                    Instant::now() < deadline,
                    "{:?} did not start listening: {}",
                    self.kind,
                    std::fs::read_to_string(dir.join("receiver.out")).unwrap_or_default()
                );
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        // UDP has no handshake; give the input a moment.
        std::thread::sleep(Duration::from_millis(200));
    }

    /// A file of the test PKI: `ca.pem`, `client.pem`, `client.key`.
    pub fn pki(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Every message received so far, one per line (RFC 3164 messages keep no leading space).
    /// A last line the receiver is still writing is left for the next call.
    pub fn received(&self) -> Vec<String> {
        let text =
            std::fs::read_to_string(self.dir.path().join("received.log")).unwrap_or_default();
        let complete = text.rfind('\n').map_or("", |end| &text[..end]);
        complete
            .lines()
            .map(|line| line.trim_start().to_owned())
            .collect()
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().unwrap().id()
    }

    fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .args([signal, &self.pid().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
    }

    /// Stops reading, as a hung receiver does (SIGSTOP).
    pub fn stall(&self) {
        self.signal("-STOP");
    }

    pub fn resume(&self) {
        self.signal("-CONT");
    }

    /// Stops the receiver (SIGTERM) and starts it again on the same ports.
    pub fn restart(&mut self) {
        self.stop();
        self.spawn();
    }

    fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = Command::new("kill")
                .args(["-CONT", &child.id().to_string()])
                .status();
            let _ = Command::new("kill")
                .args(["-TERM", &child.id().to_string()])
                .status();
            let deadline = Instant::now() + Duration::from_secs(10);
            while child.try_wait().unwrap().is_none() {
                if Instant::now() > deadline {
                    let _ = child.kill();
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.stop();
    }
}
