//! Splitting a byte stream into lines with a hard cap on line length.
//!
//! Every source (file, stdin) and the `enrich` filter use this one splitter, so a line is a line
//! everywhere: terminated by LF, with a trailing CR and blank lines ignored, and a line longer
//! than the cap reported as too long (with its first bytes kept for the dead-letter file)
//! without ever buffering more than the cap.

use std::ops::Range;

/// A batch of complete lines, stored back to back in one owned buffer (so a batch can cross
/// threads).
#[derive(Debug, Default)]
pub struct LineBatch {
    data: Vec<u8>,
    spans: Vec<Span>,
}

#[derive(Debug)]
enum Span {
    Line(Range<usize>),
    /// `prefix` is at most the cap; `len` is the line's full length.
    TooLong {
        prefix: Range<usize>,
        len: u64,
    },
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

    /// Copies `line` into the batch.
    pub fn push(&mut self, line: Line<'_>) {
        let start = self.data.len();
        match line {
            Line::Complete(bytes) => {
                self.data.extend_from_slice(bytes);
                self.spans.push(Span::Line(start..self.data.len()));
            }
            Line::TooLong { prefix, len } => {
                self.data.extend_from_slice(prefix);
                self.spans.push(Span::TooLong {
                    prefix: start..self.data.len(),
                    len,
                });
            }
        }
    }
}

/// Splits chunks of bytes into lines, carrying an unfinished line over to the next chunk.
#[derive(Debug)]
pub struct LineSplitter {
    max_line_bytes: usize,
    /// The start of the unfinished line (at most `max_line_bytes + 1` bytes of it: enough to
    /// tell a line that is one byte too long, CR aside).
    partial: Vec<u8>,
    /// Length of the unfinished line so far, including bytes not kept.
    partial_len: u64,
    /// Whether the unfinished line so far ends with CR.
    partial_ends_with_cr: bool,
}

impl LineSplitter {
    pub fn new(max_line_bytes: usize) -> Self {
        LineSplitter {
            max_line_bytes,
            partial: Vec::new(),
            partial_len: 0,
            partial_ends_with_cr: false,
        }
    }

    /// Bytes of the current unfinished line: consumed from the input but not yet emitted.
    pub fn pending_bytes(&self) -> u64 {
        self.partial_len
    }

    /// Forgets the unfinished line (the input it came from was truncated or replaced).
    pub fn reset(&mut self) {
        self.partial.clear();
        self.partial_len = 0;
        self.partial_ends_with_cr = false;
    }

    /// Appends every line completed by `chunk` to `batch`.
    pub fn push(&mut self, chunk: &[u8], batch: &mut LineBatch) {
        self.split(chunk, |line| batch.push(line));
    }

    /// Ends the input: an unfinished last line (no final newline) is appended as a line.
    pub fn finish(&mut self, batch: &mut LineBatch) {
        self.finish_with(|line| batch.push(line));
    }

    /// Calls `emit` with every line completed by `chunk`, in order. Lines that lie wholly in
    /// `chunk` are lent out without copying.
    pub fn split(&mut self, mut chunk: &[u8], mut emit: impl FnMut(Line<'_>)) {
        while let Some(newline) = memchr::memchr(b'\n', chunk) {
            let (head, rest) = (&chunk[..newline], &chunk[newline + 1..]);
            if self.partial_len == 0 {
                self.emit_line(
                    head,
                    head.len() as u64,
                    head.last() == Some(&b'\r'),
                    &mut emit,
                );
            } else {
                self.extend_partial(head);
                self.emit_partial(&mut emit);
            }
            chunk = rest;
        }
        self.extend_partial(chunk);
    }

    /// Ends the input, emitting an unfinished last line.
    pub fn finish_with(&mut self, mut emit: impl FnMut(Line<'_>)) {
        if self.partial_len > 0 {
            self.emit_partial(&mut emit);
        }
    }

    /// Emits the line collected in `partial` and starts a new one.
    fn emit_partial(&mut self, emit: &mut impl FnMut(Line<'_>)) {
        let partial = std::mem::take(&mut self.partial);
        self.emit_line(&partial, self.partial_len, self.partial_ends_with_cr, emit);
        self.partial = partial;
        self.reset();
    }

    /// Emits one line: `kept` is its start (all of it unless it is too long), `len` its full
    /// length. A trailing CR is dropped; blank lines are skipped.
    fn emit_line(
        &self,
        kept: &[u8],
        len: u64,
        ends_with_cr: bool,
        emit: &mut impl FnMut(Line<'_>),
    ) {
        let (kept, len) = match (ends_with_cr, len as usize == kept.len()) {
            (true, true) => (&kept[..kept.len() - 1], len - 1),
            (true, false) => (kept, len - 1),
            (false, _) => (kept, len),
        };
        if len > self.max_line_bytes as u64 {
            let prefix = &kept[..kept.len().min(self.max_line_bytes)];
            emit(Line::TooLong { prefix, len });
        } else if !kept.iter().all(u8::is_ascii_whitespace) {
            emit(Line::Complete(kept));
        }
    }

    fn extend_partial(&mut self, tail: &[u8]) {
        let room = (self.max_line_bytes + 2).saturating_sub(self.partial.len());
        self.partial
            .extend_from_slice(&tail[..room.min(tail.len())]);
        self.partial_len += tail.len() as u64;
        if let Some(&last) = tail.last() {
            self.partial_ends_with_cr = last == b'\r';
        }
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
        check(
            &[b"1234", b"5678", b"9\nok\n"],
            5,
            &["TOO_LONG(9):12345", "ok"],
        );
        check(&[b"12345\r\n"], 5, &["12345"]);
        check(&[b"123", b"45", b"\r", b"\n"], 5, &["12345"]);
        check(&[b"123", b"456\r", b"\n"], 5, &["TOO_LONG(6):12345"]);
        check(&[b"1234567", b"89\r\n"], 5, &["TOO_LONG(9):12345"]);
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
