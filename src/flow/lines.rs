//! Splitting a byte stream into lines with a hard cap on line length.
//!
//! Every source (file, stdin) and the `enrich` filter use this one splitter, so a line is a line
//! everywhere: terminated by LF, with a trailing CR and blank lines ignored, and a line longer
//! than the cap reported as too long (with its first bytes kept for the dead-letter file)
//! without ever buffering more than the cap.

use std::ops::Range;

/// A batch of complete lines, stored back to back in one buffer.
#[derive(Debug, Default)]
pub struct LineBatch {
    data: Vec<u8>,
    spans: Vec<Span>,
}

#[derive(Debug)]
enum Span {
    Line(Range<usize>),
    /// `prefix` is at most the cap; `len` is the line's full length.
    TooLong { prefix: Range<usize>, len: u64 },
}

/// One item of a batch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Line<'a> {
    Complete(&'a [u8]),
    TooLong { prefix: &'a [u8], len: u64 },
}

impl LineBatch {
    pub fn len(&self) -> usize {
        self.spans.len()
    }

    pub fn is_empty(&self) -> bool {
        self.spans.is_empty()
    }

    /// Bytes held by the batch.
    pub fn bytes(&self) -> usize {
        self.data.len()
    }

    pub fn iter(&self) -> impl Iterator<Item = Line<'_>> {
        self.spans.iter().map(|span| match span {
            Span::Line(range) => Line::Complete(&self.data[range.clone()]),
            Span::TooLong { prefix, len } => Line::TooLong {
                prefix: &self.data[prefix.clone()],
                len: *len,
            },
        })
    }

    pub fn clear(&mut self) {
        self.data.clear();
        self.spans.clear();
    }

    fn push_line(&mut self, parts: [&[u8]; 2]) {
        let start = self.data.len();
        self.data.extend_from_slice(parts[0]);
        self.data.extend_from_slice(parts[1]);
        let mut end = self.data.len();
        if end > start && self.data[end - 1] == b'\r' {
            end -= 1;
        }
        if self.data[start..end].iter().all(u8::is_ascii_whitespace) {
            self.data.truncate(start);
            return;
        }
        self.spans.push(Span::Line(start..end));
    }

    fn push_too_long(&mut self, prefix: &[u8], len: u64) {
        let start = self.data.len();
        self.data.extend_from_slice(prefix);
        self.spans.push(Span::TooLong {
            prefix: start..self.data.len(),
            len,
        });
    }
}

/// Splits chunks of bytes into lines, carrying an unfinished line over to the next chunk.
#[derive(Debug)]
pub struct LineSplitter {
    max_line_bytes: usize,
    /// The start of the unfinished line (at most `max_line_bytes` of it).
    partial: Vec<u8>,
    /// Length of the unfinished line so far, including bytes not kept.
    partial_len: u64,
}

impl LineSplitter {
    pub fn new(max_line_bytes: usize) -> Self {
        LineSplitter {
            max_line_bytes,
            partial: Vec::new(),
            partial_len: 0,
        }
    }

    /// Bytes of the current unfinished line: consumed from the input but not yet in a batch.
    pub fn pending_bytes(&self) -> u64 {
        self.partial_len
    }

    /// Forgets the unfinished line (the input it came from was truncated or replaced).
    pub fn reset(&mut self) {
        self.partial.clear();
        self.partial_len = 0;
    }

    /// Appends every line completed by `chunk` to `batch`.
    pub fn push(&mut self, mut chunk: &[u8], batch: &mut LineBatch) {
        while let Some(newline) = memchr::memchr(b'\n', chunk) {
            let (head, rest) = (&chunk[..newline], &chunk[newline + 1..]);
            self.complete(head, batch);
            chunk = rest;
        }
        self.extend_partial(chunk);
    }

    /// Ends the input: an unfinished last line (no final newline) is emitted as a line.
    pub fn finish(&mut self, batch: &mut LineBatch) {
        if self.partial_len > 0 {
            self.complete(&[], batch);
        }
    }

    fn complete(&mut self, head: &[u8], batch: &mut LineBatch) {
        let len = self.partial_len + head.len() as u64;
        // A trailing CR does not count against the cap.
        let content_len = if head.last() == Some(&b'\r') || (head.is_empty() && self.partial.last() == Some(&b'\r')) {
            len - 1
        } else {
            len
        };
        if content_len > self.max_line_bytes as u64 {
            let keep = self.max_line_bytes.saturating_sub(self.partial.len()).min(head.len());
            self.partial.extend_from_slice(&head[..keep]);
            self.partial.truncate(self.max_line_bytes);
            batch.push_too_long(&self.partial, content_len);
            self.partial.clear();
        } else {
            batch.push_line([&self.partial, head]);
            self.partial.clear();
        }
        self.partial_len = 0;
    }

    fn extend_partial(&mut self, tail: &[u8]) {
        let room = (self.max_line_bytes + 1).saturating_sub(self.partial.len());
        self.partial.extend_from_slice(&tail[..room.min(tail.len())]);
        self.partial_len += tail.len() as u64;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn split(chunks: &[&[u8]], max: usize) -> Vec<String> {
        let mut splitter = LineSplitter::new(max);
        let mut batch = LineBatch::default();
        for chunk in chunks {
            splitter.push(chunk, &mut batch);
        }
        splitter.finish(&mut batch);
        batch
            .iter()
            .map(|line| match line {
                Line::Complete(bytes) => String::from_utf8_lossy(bytes).into_owned(),
                Line::TooLong { prefix, len } => {
                    format!("TOO_LONG({len}):{}", String::from_utf8_lossy(prefix))
                }
            })
            .collect()
    }

    #[test]
    fn lines_across_chunks() {
        let check = |chunks: &[&[u8]], max: usize, expected: &[&str]| {
            assert_eq!(split(chunks, max), expected, "{chunks:?}");
        };
        check(&[b"a\nb\n"], 10, &["a", "b"]);
        check(&[b"ab", b"c\nd", b"e\n"], 10, &["abc", "de"]);
        check(&[b"a\r\n\r\n  \nb"], 10, &["a", "b"]);
        check(&[b"no newline at end"], 100, &["no newline at end"]);
        check(&[b"12345\n123456\n"], 5, &["12345", "TOO_LONG(6):12345"]);
        check(&[b"1234", b"5678", b"9\nok\n"], 5, &["TOO_LONG(9):12345", "ok"]);
        check(&[b"12345\r\n"], 5, &["12345"]);
        check(&[b"123", b"45", b"\r", b"\n"], 5, &["12345"]);
    }

    #[test]
    fn pending_bytes_tracks_the_unfinished_line() {
        let mut splitter = LineSplitter::new(4);
        let mut batch = LineBatch::default();
        splitter.push(b"ab\ncdefgh", &mut batch);
        assert_eq!(splitter.pending_bytes(), 6);
        assert_eq!(batch.len(), 1);
        splitter.push(b"\n", &mut batch);
        assert_eq!(splitter.pending_bytes(), 0);
        assert_eq!(batch.len(), 2);
    }
}
