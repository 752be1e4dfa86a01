//! A syslog receiver for the benchmarks: counts octet-counted frames on loopback and does
//! nothing else, so it is never the bottleneck.

#![allow(dead_code)]

use std::io::Read;
use std::net::TcpListener;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// Counts octet-counted frames in a byte stream.
#[derive(Default)]
struct FrameCounter {
    /// Bytes still to skip of the current frame's message.
    remaining: usize,
    /// Digits of the next frame's length read so far.
    length: usize,
}

impl FrameCounter {
    fn feed(&mut self, mut bytes: &[u8], frames: &AtomicU64) {
        while !bytes.is_empty() {
            if self.remaining > 0 {
                let skip = self.remaining.min(bytes.len());
                self.remaining -= skip;
                bytes = &bytes[skip..];
                if self.remaining == 0 {
                    frames.fetch_add(1, Ordering::Relaxed);
                }
                continue;
            }
            let byte = bytes[0];
            bytes = &bytes[1..];
            match byte {
                b'0'..=b'9' => self.length = self.length * 10 + usize::from(byte - b'0'),
                b' ' => {
                    self.remaining = std::mem::take(&mut self.length);
                }
                other => panic!("not an octet-counted frame: byte {other}"),
            }
        }
    }
}

/// A receiver on loopback that counts frames; with `tls`, over TLS with that certificate.
pub fn start(tls: Option<Arc<rustls::ServerConfig>>) -> (u16, Arc<AtomicU64>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let frames = Arc::new(AtomicU64::new(0));
    let counted = frames.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let mut stream = stream.unwrap();
            let frames = counted.clone();
            let tls = tls.clone();
            std::thread::spawn(move || {
                let mut counter = FrameCounter::default();
                let mut buffer = vec![0u8; 256 * 1024];
                let mut read = |reader: &mut dyn Read| loop {
                    match reader.read(&mut buffer) {
                        Ok(0) | Err(_) => return,
                        Ok(n) => counter.feed(&buffer[..n], &frames),
                    }
                };
                match tls {
                    None => read(&mut stream),
                    Some(config) => {
                        let connection = rustls::ServerConnection::new(config).unwrap();
                        read(&mut rustls::StreamOwned::new(connection, stream))
                    }
                }
            });
        }
    });
    (port, frames)
}
