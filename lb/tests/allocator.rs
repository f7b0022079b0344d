//! The `lb` binary's allocator: jemalloc, with the options built in through
//! `JEMALLOC_SYS_WITH_MALLOC_CONF` in `.cargo/config.toml`. The binary reads
//! them back from jemalloc and logs them on one line once it has started;
//! these tests run the real binary and read that line.

use std::io::BufRead;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// The `lb serve` process, killed when the test ends.
struct Lb(Child);

impl Drop for Lb {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Drops ANSI escape sequences (`ESC [ … letter`), which the human log
/// format puts around field names.
fn strip_ansi(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// Starts `lb serve` with a static backend (nothing listens there: it is
/// never asked) and `env` set, and returns the fields of its allocator line
/// (`allocator="jemalloc"`, `dirty_decay_ms=0`, …), awaited on stderr. Any
/// `_RJEM_MALLOC_CONF` (the run-time override of the prefixed jemalloc the
/// binary links) in the test's own environment is removed.
fn allocator_fields(env: &[(&str, &str)]) -> Vec<String> {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_lb"));
    cmd.args(["serve", "--listen", "127.0.0.1:0"])
        .args(["--admin-listen", "127.0.0.1:0"])
        .args(["--backend", "127.0.0.1:9", "--workers", "1"])
        .env("RUST_LOG", "info")
        .env_remove("_RJEM_MALLOC_CONF")
        .env_remove("MALLOC_CONF")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().unwrap();
    let err = child.stderr.take().unwrap();
    let _lb = Lb(child);
    let (tx, rx) = mpsc::channel::<String>();
    std::thread::spawn(move || {
        for l in std::io::BufReader::new(err).lines().map_while(Result::ok) {
            if tx.send(l).is_err() {
                return;
            }
        }
    });
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut seen = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let line = match rx.recv_timeout(left) {
            Ok(l) => strip_ansi(&l),
            Err(e) => panic!(
                "no allocator line ({e}); stderr so far:\n{}",
                seen.join("\n")
            ),
        };
        if line.contains("memory allocator") {
            return line.split_whitespace().map(str::to_owned).collect();
        }
        seen.push(line);
    }
}

/// The built-in options are in the binary: freed pages go back at once
/// (dirty and muzzy decay 0), with jemalloc's background threads on.
#[test]
fn startup_log_shows_jemalloc_with_zero_decay() {
    let fields = allocator_fields(&[]);
    let line = fields.join(" ");
    for want in [
        "allocator=\"jemalloc\"",
        "dirty_decay_ms=0",
        "muzzy_decay_ms=0",
        "background_thread=true",
    ] {
        assert!(fields.iter().any(|f| f == want), "no {want} in: {line}");
    }
}

/// The line shows the options jemalloc runs with, not the built-in string:
/// a run-time override shows.
#[test]
fn startup_log_shows_a_run_time_override() {
    let fields = allocator_fields(&[("_RJEM_MALLOC_CONF", "dirty_decay_ms:5000")]);
    let line = fields.join(" ");
    for want in ["dirty_decay_ms=5000", "muzzy_decay_ms=0"] {
        assert!(fields.iter().any(|f| f == want), "no {want} in: {line}");
    }
}
