//! The access log's building blocks: one line per finished request, as JSON
//! or in a combined-log-style text format, written by one writer thread.
//!
//! Workers never block on the sink: each writes lines into its own reused
//! buffer ([`WorkerLog`]) and hands full (or due) buffers over a bounded
//! channel to the writer thread ([`AccessLog`]). When the channel is full the
//! batch is dropped and its lines counted in
//! `roundhouse_access_log_dropped_total`; lines handed over are counted in
//! `roundhouse_access_log_lines_total`. [`AccessLog::shutdown`] closes the
//! channel and waits for the writer to write and flush everything queued.
//!
//! This module depends on `metrics` only (no other `proxy` module).

use std::cell::RefCell;
use std::collections::hash_map::RandomState;
use std::fmt::Write as _;
use std::hash::{BuildHasher, Hasher};
use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::mpsc::{self, Receiver, SyncSender, TrySendError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::metrics::Metrics;

/// Batches that may wait for the writer thread before new ones are dropped.
pub const QUEUE_BATCHES: usize = 64;
/// A worker's buffer is handed over once it holds this many bytes.
pub const BATCH_BYTES: usize = 64 * 1024;
/// A worker's buffer is handed over at the latest this long after its
/// first line ([`WorkerLog::flush_if_due`]).
pub const FLUSH_INTERVAL: Duration = Duration::from_millis(200);

/// The line format (`--access-log-format`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Format {
    /// One JSON object per line.
    #[default]
    Json,
    /// Apache/nginx combined-log-style text with extra fields.
    Combined,
}

impl std::str::FromStr for Format {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "json" => Ok(Format::Json),
            "combined" => Ok(Format::Combined),
            other => Err(format!(
                "unknown access log format {other:?} (expected json or combined)"
            )),
        }
    }
}

/// Where lines go (`--access-log`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// The process's standard error.
    Stderr,
    /// A file, opened for appending (created if missing).
    Path(PathBuf),
}

impl std::str::FromStr for Target {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "" => Err("empty access log target (expected stderr or a path)".into()),
            "stderr" => Ok(Target::Stderr),
            path => Ok(Target::Path(PathBuf::from(path))),
        }
    }
}

/// The upstream side of a proxied request.
#[derive(Debug, Clone, Copy)]
pub struct UpstreamSide {
    /// The endpoint that answered (or the last one tried).
    pub addr: SocketAddr,
    /// Its response status, if a response head came back.
    pub status: Option<u16>,
    /// Time from the first attempt to the upstream response head.
    pub duration: Duration,
}

/// The upstream side of a request, as `Worker::forward` returns it: the
/// endpoint tried last (none when no endpoint was picked) and the retries.
#[derive(Debug, Clone, Copy, Default)]
pub struct Forwarded {
    /// The endpoint that answered or was tried last; `None` when none was
    /// picked (a local response).
    pub upstream: Option<UpstreamSide>,
    /// Attempts beyond the first.
    pub retries: u32,
}

/// One finished request, as the transport that served it saw it: the one
/// record an access log line is made of (the line adds the time it is
/// written and the request's duration, [`WorkerLog::record`]).
#[derive(Debug, Clone, Copy)]
pub struct Record<'a> {
    /// When the request head was complete.
    pub start: Instant,
    /// The client's address.
    pub client: SocketAddr,
    /// Request method.
    pub method: &'a str,
    /// Request target as sent (path and query).
    pub path: &'a str,
    /// `HTTP/1.1` or `HTTP/2` (or `HTTP/1.0`).
    pub protocol: &'a str,
    /// Status sent to the client.
    pub status: u16,
    /// Response body bytes sent to the client (see docs/access-log.md).
    pub bytes: u64,
    /// The rule's name, when a route matched.
    pub route: Option<&'a str>,
    /// The request id.
    pub request_id: &'a str,
    /// The upstream side.
    pub forwarded: Forwarded,
}

/// When a line's request finished, and how long it took (from
/// [`Record::start`]).
#[derive(Debug, Clone, Copy)]
pub struct Finish {
    /// When the request finished.
    pub time: SystemTime,
    /// Time from request head to the end of the response.
    pub duration: Duration,
}

/// Appends `record`, finished at `finish`, as one line (ending in `\n`) to
/// `out`, formatted in `line` (cleared first; a caller's reused buffer, so
/// no allocation per line once it has grown to the longest line).
pub fn format_line(
    format: Format,
    record: &Record<'_>,
    finish: Finish,
    line: &mut String,
    out: &mut Vec<u8>,
) {
    line.clear();
    match format {
        Format::Json => json_line(record, finish, line),
        Format::Combined => combined_line(record, finish, line),
    }
    line.push('\n');
    out.extend_from_slice(line.as_bytes());
}

fn json_line(r: &Record<'_>, f: Finish, s: &mut String) {
    s.push_str("{\"time\":\"");
    rfc3339(f.time, s);
    let _ = write!(s, "\",\"client\":\"{}\",\"method\":", r.client);
    json_str(r.method, s);
    s.push_str(",\"path\":");
    json_str(r.path, s);
    s.push_str(",\"protocol\":");
    json_str(r.protocol, s);
    let _ = write!(
        s,
        ",\"status\":{},\"bytes\":{},\"duration_ms\":{:.3}",
        r.status,
        r.bytes,
        millis(f.duration)
    );
    match r.forwarded.upstream {
        Some(u) => {
            let _ = write!(s, ",\"upstream_addr\":\"{}\",\"upstream_status\":", u.addr);
            match u.status {
                Some(code) => {
                    let _ = write!(s, "{code}");
                }
                None => s.push_str("null"),
            }
            let _ = write!(s, ",\"upstream_duration_ms\":{:.3}", millis(u.duration));
        }
        None => s.push_str(
            ",\"upstream_addr\":null,\"upstream_status\":null,\"upstream_duration_ms\":null",
        ),
    }
    let _ = write!(s, ",\"retries\":{},\"route\":", r.forwarded.retries);
    match r.route {
        Some(route) => json_str(route, s),
        None => s.push_str("null"),
    }
    s.push_str(",\"request_id\":");
    json_str(r.request_id, s);
    s.push('}');
}

/// `client - - [time] "METHOD path PROTO" status bytes "-" "-" rt=… ua=…
/// us=… ut=… retries=… route="…" rid="…"`: the combined log's shape
/// (referer and user agent are not kept, so `"-"`), then key=value fields.
fn combined_line(r: &Record<'_>, f: Finish, s: &mut String) {
    let _ = write!(s, "{} - - [", r.client.ip());
    rfc3339(f.time, s);
    s.push_str("] \"");
    text_escaped(r.method, s);
    s.push(' ');
    text_escaped(r.path, s);
    s.push(' ');
    text_escaped(r.protocol, s);
    let _ = write!(
        s,
        "\" {} {} \"-\" \"-\" rt={:.3}",
        r.status,
        r.bytes,
        f.duration.as_secs_f64()
    );
    match r.forwarded.upstream {
        Some(u) => {
            let _ = write!(s, " ua={}", u.addr);
            match u.status {
                Some(code) => {
                    let _ = write!(s, " us={code}");
                }
                None => s.push_str(" us=-"),
            }
            let _ = write!(s, " ut={:.3}", u.duration.as_secs_f64());
        }
        None => s.push_str(" ua=- us=- ut=-"),
    }
    let _ = write!(s, " retries={} route=\"", r.forwarded.retries);
    text_escaped(r.route.unwrap_or("-"), s);
    s.push_str("\" rid=\"");
    text_escaped(r.request_id, s);
    s.push('"');
}

fn millis(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// A JSON string literal: quotes, backslashes and control characters escaped.
fn json_str(v: &str, s: &mut String) {
    s.push('"');
    for c in v.chars() {
        match c {
            '"' => s.push_str("\\\""),
            '\\' => s.push_str("\\\\"),
            '\n' => s.push_str("\\n"),
            '\r' => s.push_str("\\r"),
            '\t' => s.push_str("\\t"),
            c if (c as u32) < 0x20 || c == '\u{7f}' => {
                let _ = write!(s, "\\u{:04x}", c as u32);
            }
            c => s.push(c),
        }
    }
    s.push('"');
}

/// Text for a quoted field of the combined format: `"` and `\` are
/// backslash-escaped, control and non-ASCII characters written as `\xHH`
/// (per UTF-8 byte), so one request is always one line.
fn text_escaped(v: &str, s: &mut String) {
    for b in v.bytes() {
        match b {
            b'"' => s.push_str("\\\""),
            b'\\' => s.push_str("\\\\"),
            0x20..=0x7e => s.push(b as char),
            b => {
                let _ = write!(s, "\\x{b:02x}");
            }
        }
    }
}

/// `YYYY-MM-DDTHH:MM:SS.mmmZ` (RFC 3339, UTC).
fn rfc3339(t: SystemTime, s: &mut String) {
    let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = d.as_secs();
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    let (y, m, dd) = civil_from_days(days);
    let _ = write!(
        s,
        "{y:04}-{m:02}-{dd:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        d.subsec_millis()
    );
}

/// Days since 1970-01-01 to (year, month, day) (Howard Hinnant's algorithm).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

/// Whether a client's `X-Request-Id` is passed through: 1 to 128 visible
/// ASCII characters (`!` to `~`).
pub fn valid_request_id(v: &[u8]) -> bool {
    (1..=128).contains(&v.len()) && v.iter().all(|b| (0x21..=0x7e).contains(b))
}

/// Generates request ids `<12 hex of a per-process random>-<worker>-<counter>`
/// without a system call per id.
#[derive(Debug, Clone)]
pub struct RequestIds {
    prefix: u64,
    worker: usize,
    counter: u64,
}

impl RequestIds {
    /// Ids for `worker`, with a per-process random prefix.
    pub fn new(worker: usize) -> Self {
        Self {
            prefix: process_random() & 0xffff_ffff_ffff,
            worker,
            counter: 0,
        }
    }

    /// Writes the next id into `out` (cleared first).
    pub fn next_into(&mut self, out: &mut String) {
        self.counter += 1;
        out.clear();
        let _ = write!(out, "{:012x}-{}-{}", self.prefix, self.worker, self.counter);
    }
}

/// A random number fixed for the process (std's hash seed, drawn once).
fn process_random() -> u64 {
    static SEED: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    *SEED.get_or_init(|| {
        let mut h = RandomState::new().build_hasher();
        h.write_u64(u64::from(std::process::id()));
        h.finish()
    })
}

/// A batch of lines for the writer thread.
struct Batch {
    bytes: Vec<u8>,
}

/// The writer thread and the channel to it. Cheap to clone the sender side
/// with [`AccessLog::worker`].
pub struct AccessLog {
    tx: Option<SyncSender<Batch>>,
    thread: Option<JoinHandle<()>>,
    format: Format,
    metrics: Arc<Metrics>,
}

impl std::fmt::Debug for AccessLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AccessLog")
            .field("format", &self.format)
            .finish_non_exhaustive()
    }
}

impl AccessLog {
    /// Opens `target` and starts the writer thread. The error names the path
    /// that could not be opened.
    pub fn start(target: &Target, format: Format, metrics: Arc<Metrics>) -> std::io::Result<Self> {
        let sink: Box<dyn Write + Send> = match target {
            Target::Stderr => Box::new(std::io::stderr()),
            Target::Path(path) => Box::new(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(path)
                    .map_err(|e| {
                        std::io::Error::new(
                            e.kind(),
                            format!("cannot open --access-log {}: {e}", path.display()),
                        )
                    })?,
            ),
        };
        Ok(Self::with_sink(sink, format, metrics))
    }

    /// Starts the writer thread on any sink (used by tests).
    pub fn with_sink(sink: Box<dyn Write + Send>, format: Format, metrics: Arc<Metrics>) -> Self {
        let (tx, rx) = mpsc::sync_channel(QUEUE_BATCHES);
        let thread = std::thread::Builder::new()
            .name("access-log".into())
            .spawn(move || writer(rx, sink))
            .expect("spawn the access-log writer thread");
        Self {
            tx: Some(tx),
            thread: Some(thread),
            format,
            metrics,
        }
    }

    /// A worker's handle: its own buffer and request-id generator.
    pub fn worker(&self, worker: usize) -> WorkerLog {
        WorkerLog {
            tx: self.tx.clone(),
            format: self.format,
            metrics: self.metrics.clone(),
            buf: Vec::with_capacity(BATCH_BYTES + 1024),
            line: String::with_capacity(256),
            lines: 0,
            first_line: None,
            ids: RequestIds::new(worker),
        }
    }

    /// Closes the channel (once every [`WorkerLog`] is dropped or flushed)
    /// and waits for the writer to write and flush all queued batches.
    pub fn shutdown(mut self) {
        self.tx = None;
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn writer(rx: Receiver<Batch>, mut sink: Box<dyn Write + Send>) {
    while let Ok(batch) = rx.recv() {
        let _ = sink.write_all(&batch.bytes);
        // Write whatever else is queued, then flush so lines appear promptly.
        while let Ok(more) = rx.try_recv() {
            let _ = sink.write_all(&more.bytes);
        }
        let _ = sink.flush();
    }
    let _ = sink.flush();
}

/// A worker's side of the access log: a reused line buffer and the
/// request-id generator. Dropping it hands over what it holds.
pub struct WorkerLog {
    tx: Option<SyncSender<Batch>>,
    format: Format,
    metrics: Arc<Metrics>,
    buf: Vec<u8>,
    /// Where one line is formatted before it is appended to `buf`.
    line: String,
    lines: u64,
    first_line: Option<Instant>,
    ids: RequestIds,
}

impl std::fmt::Debug for WorkerLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WorkerLog")
            .field("lines", &self.lines)
            .finish_non_exhaustive()
    }
}

impl WorkerLog {
    /// The request-id generator.
    pub fn ids(&mut self) -> &mut RequestIds {
        &mut self.ids
    }

    /// Writes `record`'s line, finished now; hands the buffer over when it
    /// is full.
    pub fn record(&mut self, record: &Record<'_>) {
        let finish = Finish {
            time: SystemTime::now(),
            duration: record.start.elapsed(),
        };
        format_line(self.format, record, finish, &mut self.line, &mut self.buf);
        self.lines += 1;
        let now = Instant::now();
        let first = *self.first_line.get_or_insert(now);
        if self.buf.len() >= BATCH_BYTES || now.duration_since(first) >= FLUSH_INTERVAL {
            self.flush();
        }
    }

    /// Hands the buffer over if its first line is older than
    /// [`FLUSH_INTERVAL`] (call on a timer so a quiet LB writes promptly).
    pub fn flush_if_due(&mut self) {
        if self
            .first_line
            .is_some_and(|t| t.elapsed() >= FLUSH_INTERVAL)
        {
            self.flush();
        }
    }

    /// Hands the buffer over now; drops it (and counts the lines) if the
    /// writer's queue is full.
    pub fn flush(&mut self) {
        if self.lines == 0 {
            return;
        }
        let lines = std::mem::take(&mut self.lines);
        self.first_line = None;
        let bytes = std::mem::replace(&mut self.buf, Vec::with_capacity(BATCH_BYTES + 1024));
        let Some(tx) = &self.tx else { return };
        match tx.try_send(Batch { bytes }) {
            Ok(()) => {
                self.metrics.access_log_lines.inc_by(lines);
            }
            Err(TrySendError::Full(batch)) => {
                self.metrics.access_log_dropped.inc_by(lines);
                // Reuse the dropped batch's allocation.
                self.buf = batch.bytes;
                self.buf.clear();
            }
            Err(TrySendError::Disconnected(_)) => {
                self.metrics.access_log_dropped.inc_by(lines);
            }
        }
    }
}

impl Drop for WorkerLog {
    fn drop(&mut self) {
        self.flush();
    }
}

/// A worker's handle on the access log: off, or the worker's side of it.
/// Dropping it (when the worker's thread ends) hands over what it holds.
#[derive(Debug, Default)]
pub struct Log(Option<RefCell<WorkerLog>>);

impl Log {
    /// A handle on `log`, or an off one.
    pub fn new(log: Option<WorkerLog>) -> Self {
        Self(log.map(RefCell::new))
    }

    /// Whether lines are written (transports then keep what a line needs).
    pub fn is_on(&self) -> bool {
        self.0.is_some()
    }

    /// Writes `record`'s line; a no-op when the log is off.
    pub fn record(&self, record: &Record<'_>) {
        if let Some(log) = &self.0 {
            log.borrow_mut().record(record);
        }
    }

    /// The request id of a request whose client sent `given` (its
    /// `X-Request-Id` values), written into `out`: the one value when it is
    /// valid, else a new one (empty when the log is off).
    pub fn request_id<'v>(&self, mut given: impl Iterator<Item = &'v [u8]>, out: &mut String) {
        out.clear();
        if let (Some(v), None) = (given.next(), given.next())
            && valid_request_id(v)
        {
            // Visible ASCII only, so this is valid UTF-8.
            out.push_str(std::str::from_utf8(v).unwrap_or_default());
            return;
        }
        if let Some(log) = &self.0 {
            log.borrow_mut().ids().next_into(out);
        }
    }

    /// Hands the buffer over if its first line is older than
    /// [`FLUSH_INTERVAL`].
    pub fn flush_if_due(&self) {
        if let Some(log) = &self.0 {
            log.borrow_mut().flush_if_due();
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;

    fn record<'a>(path: &'a str, id: &'a str) -> Record<'a> {
        Record {
            start: Instant::now(),
            client: "127.0.0.1:40000".parse().unwrap(),
            method: "GET",
            path,
            protocol: "HTTP/1.1",
            status: 200,
            bytes: 42,
            route: Some("web"),
            request_id: id,
            forwarded: Forwarded {
                upstream: Some(UpstreamSide {
                    addr: "127.0.0.1:9001".parse().unwrap(),
                    status: Some(200),
                    duration: Duration::from_micros(1200),
                }),
                retries: 1,
            },
        }
    }

    /// The line of `r`, finished at a fixed time after 1.5 ms.
    fn line(format: Format, r: &Record<'_>) -> String {
        let finish = Finish {
            time: UNIX_EPOCH + Duration::from_millis(1_764_680_000_123),
            duration: Duration::from_micros(1500),
        };
        let mut out = Vec::new();
        format_line(format, r, finish, &mut String::new(), &mut out);
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn json_line_has_every_field() {
        let l = line(Format::Json, &record("/a?b=1", "abc"));
        assert!(l.ends_with('\n') && l.matches('\n').count() == 1);
        let v: serde_json::Value = serde_json::from_str(&l).unwrap();
        assert_eq!(v["time"], "2025-12-02T12:53:20.123Z");
        assert_eq!(v["client"], "127.0.0.1:40000");
        assert_eq!(v["method"], "GET");
        assert_eq!(v["path"], "/a?b=1");
        assert_eq!(v["protocol"], "HTTP/1.1");
        assert_eq!(v["status"], 200);
        assert_eq!(v["bytes"], 42);
        assert_eq!(v["duration_ms"], 1.5);
        assert_eq!(v["upstream_addr"], "127.0.0.1:9001");
        assert_eq!(v["upstream_status"], 200);
        assert_eq!(v["upstream_duration_ms"], 1.2);
        assert_eq!(v["retries"], 1);
        assert_eq!(v["route"], "web");
        assert_eq!(v["request_id"], "abc");
    }

    #[test]
    fn json_local_response_has_null_upstream() {
        let mut r = record("/", "x");
        r.forwarded.upstream = None;
        r.route = None;
        r.status = 404;
        let v: serde_json::Value = serde_json::from_str(&line(Format::Json, &r)).unwrap();
        assert!(v["upstream_addr"].is_null());
        assert!(v["upstream_status"].is_null());
        assert!(v["upstream_duration_ms"].is_null());
        assert!(v["route"].is_null());
        assert_eq!(v["status"], 404);
    }

    #[test]
    fn json_escapes_quotes_and_control_characters() {
        let path = "/a\"b\\c\n\r\t\u{1}\u{7f}é";
        let l = line(Format::Json, &record(path, "i\"d"));
        assert_eq!(l.matches('\n').count(), 1);
        assert!(l.contains(r#""/a\"b\\c\n\r\t\u0001\u007fé""#), "{l}");
        let v: serde_json::Value = serde_json::from_str(&l).unwrap();
        assert_eq!(v["path"], path);
        assert_eq!(v["request_id"], "i\"d");
    }

    #[test]
    fn combined_line_shape() {
        let l = line(Format::Combined, &record("/p", "rid-1"));
        assert_eq!(
            l,
            "127.0.0.1 - - [2025-12-02T12:53:20.123Z] \"GET /p HTTP/1.1\" 200 42 \"-\" \"-\" \
             rt=0.002 ua=127.0.0.1:9001 us=200 ut=0.001 retries=1 route=\"web\" rid=\"rid-1\"\n"
        );
        let mut r = record("/", "x");
        r.forwarded.upstream = None;
        r.route = None;
        assert!(line(Format::Combined, &r).contains(" ua=- us=- ut=- retries=1 route=\"-\""));
    }

    #[test]
    fn combined_escapes_quotes_and_control_characters() {
        let l = line(Format::Combined, &record("/a\"b\\\n\u{1}é", "x"));
        assert!(
            l.contains(r#""GET /a\"b\\\x0a\x01\xc3\xa9 HTTP/1.1""#),
            "{l}"
        );
        assert_eq!(l.matches('\n').count(), 1);
    }

    #[test]
    fn rfc3339_dates() {
        let mut s = String::new();
        rfc3339(UNIX_EPOCH, &mut s);
        assert_eq!(s, "1970-01-01T00:00:00.000Z");
        s.clear();
        // 2000-02-29 (leap day) 23:59:59.
        rfc3339(UNIX_EPOCH + Duration::from_secs(951_868_799), &mut s);
        assert_eq!(s, "2000-02-29T23:59:59.000Z");
    }

    #[test]
    fn request_id_validation() {
        assert!(valid_request_id(b"a"));
        assert!(valid_request_id(&[b'~'; 128]));
        assert!(valid_request_id(b"0f3a-1-2_x.y!"));
        assert!(!valid_request_id(b""));
        assert!(!valid_request_id(&[b'a'; 129]));
        assert!(!valid_request_id(b"a b"));
        assert!(!valid_request_id(b"a\tb"));
        assert!(!valid_request_id(b"a\x7f"));
        assert!(!valid_request_id("é".as_bytes()));
    }

    #[test]
    fn generated_ids_are_valid_and_distinct() {
        let mut ids = RequestIds::new(3);
        let (mut a, mut b) = (String::new(), String::new());
        ids.next_into(&mut a);
        ids.next_into(&mut b);
        assert_ne!(a, b);
        assert!(valid_request_id(a.as_bytes()));
        let parts: Vec<&str> = a.split('-').collect();
        assert_eq!(parts.len(), 3);
        assert_eq!(parts[0].len(), 12);
        assert!(parts[0].bytes().all(|c| c.is_ascii_hexdigit()));
        assert_eq!(parts[1], "3");
        assert_eq!(parts[2], "1");
        assert_eq!(b.split('-').nth(2), Some("2"));
        assert_eq!(RequestIds::new(0).prefix, ids.prefix);
    }

    /// A sink that shares what was written.
    #[derive(Clone, Default)]
    struct Shared(Arc<Mutex<Vec<u8>>>);

    impl Write for Shared {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn shutdown_writes_everything_queued() {
        let metrics = Arc::new(Metrics::default());
        let sink = Shared::default();
        let log = AccessLog::with_sink(Box::new(sink.clone()), Format::Json, metrics.clone());
        let mut w = log.worker(0);
        for _ in 0..10 {
            w.record(&record("/", "x"));
        }
        drop(w);
        log.shutdown();
        let text = String::from_utf8(sink.0.lock().unwrap().clone()).unwrap();
        assert_eq!(text.lines().count(), 10);
        assert_eq!(metrics.access_log_lines.get(), 10);
        assert_eq!(metrics.access_log_dropped.get(), 0);
    }

    /// A sink that blocks until released.
    struct Blocked(Arc<(Mutex<bool>, std::sync::Condvar)>);

    impl Write for Blocked {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            let (lock, cv) = &*self.0;
            let mut open = lock.lock().unwrap();
            while !*open {
                open = cv.wait(open).unwrap();
            }
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn blocked_sink_drops_and_counts_without_blocking_the_worker() {
        let metrics = Arc::new(Metrics::default());
        let gate = Arc::new((Mutex::new(false), std::sync::Condvar::new()));
        let log = AccessLog::with_sink(
            Box::new(Blocked(gate.clone())),
            Format::Json,
            metrics.clone(),
        );
        let mut w = log.worker(0);
        let start = Instant::now();
        // More batches than the queue holds (plus the one being written).
        for _ in 0..QUEUE_BATCHES + 10 {
            w.record(&record("/", "x"));
            w.flush();
        }
        assert!(start.elapsed() < Duration::from_secs(5));
        assert!(metrics.access_log_dropped.get() >= 9);
        assert_eq!(
            metrics.access_log_dropped.get() + metrics.access_log_lines.get(),
            (QUEUE_BATCHES + 10) as u64
        );
        drop(w);
        *gate.0.lock().unwrap() = true;
        gate.1.notify_all();
        log.shutdown();
    }
}
