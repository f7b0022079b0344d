//! Finding the end of a chunked message body (RFC 9112 §7.1) without
//! decoding it, so the fast path can pass the bytes through unchanged and
//! still know when the upstream connection is free again (and, for a
//! receiver that needs the data without its framing, where the data is).

use std::ops::Range;

/// The framing was invalid.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("invalid chunked framing")]
pub struct InvalidChunk;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Reading the hex chunk size; `digits` seen so far.
    Size { digits: u8 },
    /// Skipping a chunk extension (or whitespace) up to CR.
    Ext,
    /// Expecting the LF of the size line.
    SizeLf,
    /// Inside chunk data.
    Data,
    /// Expecting CR after chunk data.
    DataCr,
    /// Expecting LF after chunk data.
    DataLf,
    /// At the start of a trailer line (or the final CRLF).
    TrailerStart,
    /// Inside a trailer field line, up to CR.
    TrailerLine,
    /// Expecting the LF of a trailer line.
    TrailerLf,
    /// Expecting the LF of the final empty line.
    FinalLf,
    /// The body has ended.
    Done,
}

/// Incremental scanner over a chunked body.
#[derive(Debug, Clone)]
pub struct ChunkedScanner {
    state: State,
    remaining: u64,
}

impl Default for ChunkedScanner {
    fn default() -> Self {
        Self::new()
    }
}

impl ChunkedScanner {
    /// A scanner at the start of a body.
    pub fn new() -> Self {
        Self {
            state: State::Size { digits: 0 },
            remaining: 0,
        }
    }

    /// Whether the whole body (last chunk and trailers) has been seen.
    pub fn is_done(&self) -> bool {
        self.state == State::Done
    }

    /// Scans the next bytes of the body. Returns how many of them belong to
    /// it: all of `buf` unless the body ends inside `buf`.
    pub fn scan(&mut self, buf: &[u8]) -> Result<usize, InvalidChunk> {
        let mut i = 0;
        while i < buf.len() {
            let b = buf[i];
            self.state = match self.state {
                State::Done => return Ok(i),
                State::Size { digits } => match hex(b) {
                    Some(d) => {
                        // 16 hex digits fill a u64; more is an attack.
                        if digits >= 16 {
                            return Err(InvalidChunk);
                        }
                        self.remaining = self.remaining << 4 | u64::from(d);
                        State::Size { digits: digits + 1 }
                    }
                    None if digits == 0 => return Err(InvalidChunk),
                    None => match b {
                        b';' | b' ' | b'\t' => State::Ext,
                        b'\r' => State::SizeLf,
                        _ => return Err(InvalidChunk),
                    },
                },
                State::Ext => match b {
                    b'\r' => State::SizeLf,
                    b'\n' => return Err(InvalidChunk),
                    _ => State::Ext,
                },
                State::SizeLf => match b {
                    b'\n' if self.remaining == 0 => State::TrailerStart,
                    b'\n' => State::Data,
                    _ => return Err(InvalidChunk),
                },
                State::Data => {
                    let avail = (buf.len() - i) as u64;
                    let take = avail.min(self.remaining);
                    self.remaining -= take;
                    // `take` ≤ what is left of `buf`, so it fits a usize.
                    i += take as usize;
                    if self.remaining == 0 {
                        self.state = State::DataCr;
                    }
                    continue;
                }
                State::DataCr => match b {
                    b'\r' => State::DataLf,
                    _ => return Err(InvalidChunk),
                },
                State::DataLf => match b {
                    b'\n' => State::Size { digits: 0 },
                    _ => return Err(InvalidChunk),
                },
                State::TrailerStart => match b {
                    b'\r' => State::FinalLf,
                    b'\n' => return Err(InvalidChunk),
                    _ => State::TrailerLine,
                },
                State::TrailerLine => match b {
                    b'\r' => State::TrailerLf,
                    b'\n' => return Err(InvalidChunk),
                    _ => State::TrailerLine,
                },
                State::TrailerLf => match b {
                    b'\n' => State::TrailerStart,
                    _ => return Err(InvalidChunk),
                },
                State::FinalLf => match b {
                    b'\n' => State::Done,
                    _ => return Err(InvalidChunk),
                },
            };
            i += 1;
        }
        Ok(i)
    }
}

impl ChunkedScanner {
    /// Decodes the front of `buf`: consumes framing up to the next run of
    /// chunk data and that run. Returns how many bytes of `buf` it consumed
    /// and where the data is among them (empty when they were all framing,
    /// or the body ended: see [`ChunkedScanner::is_done`]). For a receiver
    /// that needs the data without its framing (an HTTP/2 client).
    pub fn scan_data(&mut self, buf: &[u8]) -> Result<(usize, Range<usize>), InvalidChunk> {
        let mut i = 0;
        while i < buf.len() && !matches!(self.state, State::Data | State::Done) {
            i += self.scan(&buf[i..=i])?;
        }
        if self.state != State::Data {
            return Ok((i, i..i));
        }
        // What is left of the chunk, or of `buf` (so it fits a usize).
        let take = (buf.len() - i).min(usize::try_from(self.remaining).unwrap_or(usize::MAX));
        let n = self.scan(&buf[i..i + take])?;
        Ok((i + n, i..i + n))
    }
}

fn hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feeds `body` in pieces of `step` bytes; returns the body length found.
    fn scan_in_steps(body: &[u8], step: usize) -> Result<Option<usize>, InvalidChunk> {
        let mut s = ChunkedScanner::new();
        let mut total = 0;
        for piece in body.chunks(step) {
            let n = s.scan(piece)?;
            total += n;
            if s.is_done() {
                return Ok(Some(total));
            }
            assert_eq!(n, piece.len());
        }
        Ok(None)
    }

    #[test]
    fn finds_the_end_whatever_the_split() {
        let body =
            b"5\r\nhello\r\n1A;ext=1\r\nabcdefghijklmnopqrstuvwxyz\r\n0\r\nx-trailer: 1\r\n\r\n";
        for step in 1..=body.len() {
            assert_eq!(
                scan_in_steps(body, step),
                Ok(Some(body.len())),
                "step {step}"
            );
        }
    }

    #[test]
    fn stops_at_the_end_of_the_body() {
        let mut s = ChunkedScanner::new();
        let data = b"3\r\nabc\r\n0\r\n\r\nHTTP/1.1 200 OK\r\n";
        assert_eq!(s.scan(data), Ok(13));
        assert!(s.is_done());
    }

    #[test]
    fn incomplete_bodies_are_not_done() {
        for body in [
            &b"5\r\nhel"[..],
            b"0\r\n",
            b"0\r\nx: y\r\n",
            b"5\r\nhello\r\n",
        ] {
            assert_eq!(scan_in_steps(body, 1), Ok(None), "{body:?}");
        }
    }

    #[test]
    fn rejects_bad_framing() {
        for body in [
            &b"x\r\n"[..],
            b"\r\n",
            b"5\nhello\r\n",
            b"5\r\nhelloX\r\n",
            b"5\r\nhello\rX",
            b"11111111111111111\r\n",
            b"0\r\n\n",
            b"0\r\nx: y\n",
            b"0\r\n\rX",
        ] {
            assert_eq!(scan_in_steps(body, 1), Err(InvalidChunk), "{body:?}");
        }
    }

    #[test]
    fn data_is_found_whatever_the_split() {
        let body =
            b"5\r\nhello\r\n1A;ext=1\r\nabcdefghijklmnopqrstuvwxyz\r\n0\r\nx-t: 1\r\n\r\nNEXT";
        for step in 1..=body.len() {
            let mut s = ChunkedScanner::new();
            let (mut data, mut at) = (Vec::new(), 0);
            let mut buf = Vec::new();
            for piece in body.chunks(step) {
                buf.extend_from_slice(piece);
                while at < buf.len() && !s.is_done() {
                    let (n, run) = s.scan_data(&buf[at..]).unwrap();
                    data.extend_from_slice(&buf[at..][run]);
                    at += n;
                    if n == 0 {
                        break;
                    }
                }
            }
            assert!(s.is_done(), "step {step}");
            assert_eq!(&buf[at..], b"NEXT", "step {step}");
            assert_eq!(data, b"helloabcdefghijklmnopqrstuvwxyz", "step {step}");
        }
    }

    #[test]
    fn the_largest_size_fits() {
        let mut s = ChunkedScanner::new();
        assert_eq!(s.scan(b"ffffffffffffffff\r\n"), Ok(18));
        assert_eq!(s.remaining, u64::MAX);
    }
}
