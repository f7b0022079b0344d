//! Idle keep-alive connections parked outside tokio.
//!
//! A plain HTTP/1.1 client connection waiting for its next request in its
//! own tokio task costs about 860 bytes of heap: the task cell, tokio's I/O
//! registration (`ScheduledIo`), the header-read timer and the client's
//! address (docs/benchmarks.md, "Idle keep-alive client connections"). Most
//! of an edge balancer's connections are idle most of the time, so after
//! `--idle-park-after` without a byte the fast path hands the socket here
//! instead: it leaves tokio's reactor, its task ends, and it waits in this
//! worker's table as one slab slot plus one deadline-heap entry (about 100
//! bytes), watched by an epoll instance of the worker's own (`mio::Poll`)
//! whose file descriptor is itself in tokio's reactor.
//!
//! When the client sends (or closes), the socket is taken out and handed
//! back ([`Poller::run`]'s `wake`): the fast path serves it in a new task,
//! which has the header-read timeout from then for the request head (the
//! idle wait and the head are timed separately, as nginx's
//! `keepalive_timeout` and `client_header_timeout` are). When the idle
//! deadline passes first, the socket is closed; one whose client has sent
//! by then is served instead (the poll is asked before anything is
//! closed, as a connection's own task reads before it looks at its timer). On drain every parked connection is closed (an
//! idle connection has no request to finish). One task per worker runs the
//! lot; the deadlines are a min-heap under one timer.
//!
//! A connection that is served again within `--idle-park-after` never comes
//! here, so busy keep-alive traffic keeps the fast path's property of no
//! allocation and no timer-wheel operation per request.

use std::cell::{Cell, RefCell};
use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::io;
use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::time::Duration;

use crate::proxy::drain::Drain;
use mio::unix::SourceFd;
use mio::{Events, Interest, Token};
use prometheus_client::metrics::gauge::Gauge;
use slab::Slab;
use tokio::io::unix::AsyncFd;
use tokio::sync::Notify;
use tokio::time::Instant;
use tracing::warn;

/// Readiness events taken from the worker's poll at a time.
const EVENTS: usize = 256;

/// A connection going into, or coming out of, the table.
#[derive(Debug)]
pub(crate) struct Parked {
    /// The socket (non-blocking, in no reactor while parked).
    pub(crate) stream: std::net::TcpStream,
    /// The client's address.
    pub(crate) peer: SocketAddr,
    /// When it is closed if the client sends nothing (its header-read
    /// deadline as an idle connection). A woken connection is timed afresh
    /// by the fast path, as a new one is.
    pub(crate) due: Instant,
    /// Nothing was read on it yet, so it may still open with the HTTP/2
    /// preface.
    pub(crate) h2c: bool,
}

/// One parked connection, and the generation that tells its deadline-heap
/// entry from those of earlier occupants of the same slot.
#[derive(Debug)]
struct Slot {
    parked: Parked,
    generation: u32,
}

/// The parked connections of one worker.
#[derive(Debug, Default)]
struct Table {
    slots: Slab<Slot>,
    /// (deadline, slot, generation), soonest first. An entry whose slot has
    /// been emptied or reused stays until it comes up (or a compaction).
    deadlines: BinaryHeap<Reverse<(Instant, usize, u32)>>,
    generation: u32,
}

impl Table {
    /// Whether heap entry `(key, generation)` still names a parked
    /// connection.
    fn live(&self, key: usize, generation: u32) -> bool {
        self.slots
            .get(key)
            .is_some_and(|s| s.generation == generation)
    }
}

/// The worker's side of the table: where the fast path parks connections.
#[derive(Debug)]
pub(crate) struct Parking {
    registry: mio::Registry,
    table: RefCell<Table>,
    /// Wakes the poller when the first deadline appears.
    first: Notify,
    /// `roundhouse_parked_connections` (all workers).
    gauge: Gauge,
    /// The poller has stopped (drain): nothing more is parked.
    stopped: Cell<bool>,
}

/// The task side: the worker's poll, which only [`Poller::run`] waits on.
#[derive(Debug)]
pub(crate) struct Poller {
    poll: AsyncFd<mio::Poll>,
    events: Events,
}

/// A worker's table and its poller; must be called inside the worker's
/// runtime (the poll's descriptor joins its reactor).
#[allow(unsafe_code)]
pub(crate) fn new(gauge: Gauge) -> io::Result<(Parking, Poller)> {
    let poll = mio::Poll::new()?;
    let registry = poll.registry().try_clone()?;
    // SAFETY: `AsyncFd` requires the descriptor to stay open and the same
    // for as long as the `AsyncFd` owns `poll`. It does: a `mio::Poll` owns
    // its epoll descriptor from `Poll::new` until it is dropped and never
    // replaces it, and the `AsyncFd` owns the `Poll` (only `&mut Poll` is
    // handed out, to wait on it). The registry clone is a `dup` of its own.
    let poll = unsafe { AsyncFd::register_with_interest(poll, tokio::io::Interest::READABLE) }
        .map_err(|e| e.into_parts().1)?;
    let parking = Parking {
        registry,
        table: RefCell::default(),
        first: Notify::new(),
        gauge,
        stopped: Cell::new(false),
    };
    let poller = Poller {
        poll,
        events: Events::with_capacity(EVENTS),
    };
    Ok((parking, poller))
}

impl Parking {
    /// Parks `p` until its client sends or its deadline passes. On an error
    /// (the kernel refused the registration, or the worker is draining) the
    /// connection is closed and the caller counts it out.
    pub(crate) fn park(&self, p: Parked) -> io::Result<()> {
        if self.stopped.get() {
            return Err(io::Error::other("the worker is draining"));
        }
        let mut guard = self.table.borrow_mut();
        let table = &mut *guard;
        let entry = table.slots.vacant_entry();
        let key = entry.key();
        let fd = p.stream.as_raw_fd();
        self.registry
            .register(&mut SourceFd(&fd), Token(key), Interest::READABLE)?;
        table.generation = table.generation.wrapping_add(1);
        let (due, generation) = (p.due, table.generation);
        entry.insert(Slot {
            parked: p,
            generation,
        });
        let was_empty = table.deadlines.is_empty();
        table.deadlines.push(Reverse((due, key, generation)));
        // Entries of connections served again since pile up when clients
        // come back often; drop them once they outnumber the live ones.
        if table.deadlines.len() > 2 * table.slots.len() + 1024 {
            let Table {
                slots, deadlines, ..
            } = table;
            deadlines
                .retain(|Reverse((_, k, g))| slots.get(*k).is_some_and(|s| s.generation == *g));
        }
        self.gauge.inc();
        drop(guard);
        if was_empty {
            self.first.notify_one();
        }
        Ok(())
    }

    /// Connections parked now.
    pub(crate) fn len(&self) -> usize {
        self.table.borrow().slots.len()
    }

    /// Takes slot `key` out of the table and the poll, to be served again.
    fn take(&self, key: usize) -> Option<Parked> {
        let parked = self.remove(key)?;
        // The socket stays open, so it must leave the poll explicitly.
        let _ = self
            .registry
            .deregister(&mut SourceFd(&parked.stream.as_raw_fd()));
        Some(parked)
    }

    /// Takes slot `key` out of the table and closes its socket (which
    /// takes it out of the poll too: no descriptor shares the socket).
    fn close(&self, key: usize) -> bool {
        self.remove(key).is_some()
    }

    fn remove(&self, key: usize) -> Option<Parked> {
        let slot = self.table.borrow_mut().slots.try_remove(key)?;
        self.gauge.dec();
        Some(slot.parked)
    }

    /// The soonest deadline in the heap (possibly a stale entry's).
    fn next_deadline(&self) -> Option<Instant> {
        self.table
            .borrow()
            .deadlines
            .peek()
            .map(|Reverse((d, ..))| *d)
    }

    /// Closes the connections whose deadline is `now` or earlier.
    fn expire(&self, now: Instant, closed: &mut impl FnMut()) {
        loop {
            let key = {
                let mut table = self.table.borrow_mut();
                match table.deadlines.peek() {
                    Some(Reverse((due, ..))) if *due <= now => {}
                    _ => return,
                }
                let Some(Reverse((_, key, generation))) = table.deadlines.pop() else {
                    return;
                };
                if !table.live(key, generation) {
                    continue;
                }
                key
            };
            if self.close(key) {
                closed();
            }
        }
    }

    /// Closes every parked connection (the worker is draining).
    fn close_all(&self, closed: &mut impl FnMut()) {
        let keys: Vec<usize> = self.table.borrow().slots.iter().map(|(k, _)| k).collect();
        for key in keys {
            if self.close(key) {
                closed();
            }
        }
        self.table.borrow_mut().deadlines.clear();
    }
}

impl Poller {
    /// Runs the table until `drain`: hands each connection whose client
    /// sent something (or closed) to `wake`, closes those whose deadline
    /// passed and then all of them at drain, calling `closed` once for
    /// each connection it closed.
    pub(crate) async fn run(
        mut self,
        parking: &Parking,
        drain: &Drain,
        mut wake: impl FnMut(Parked),
        mut closed: impl FnMut(),
    ) {
        let timer = tokio::time::sleep(Duration::ZERO);
        tokio::pin!(timer);
        loop {
            let next = parking.next_deadline();
            if let Some(due) = next
                && timer.deadline() != due
            {
                timer.as_mut().reset(due);
            }
            tokio::select! {
                biased;
                () = drain.cancelled() => break,
                ready = self.poll.readable_mut() => {
                    let mut guard = match ready {
                        Ok(guard) => guard,
                        Err(e) => {
                            warn!(error = %e, "the idle-connection poll failed; closing parked connections");
                            break;
                        }
                    };
                    if wake_ready(guard.get_inner_mut(), &mut self.events, parking, &mut wake) {
                        // Readiness that arrived since the guard was taken
                        // is not cleared (tokio compares ticks).
                        guard.clear_ready();
                    }
                }
                () = &mut timer, if next.is_some() => {
                    self.expire(parking, Instant::now(), &mut wake, &mut closed);
                }
                () = parking.first.notified(), if next.is_none() => {}
            }
        }
        parking.stopped.set(true);
        parking.close_all(&mut closed);
    }

    /// Closes the connections whose deadline is `now` or earlier, except
    /// those whose client has sent something (or closed) by then: those go
    /// to `wake`, as in a connection's own task, where bytes that arrived
    /// are read before its timer is looked at. tokio learns that the poll
    /// is readable only at its next turn of the reactor, which may come
    /// after the timer that brought us here, so the poll is asked itself.
    fn expire(
        &mut self,
        parking: &Parking,
        now: Instant,
        wake: &mut impl FnMut(Parked),
        closed: &mut impl FnMut(),
    ) {
        wake_ready(self.poll.get_mut(), &mut self.events, parking, wake);
        parking.expire(now, closed);
    }
}

/// Takes every connection that `poll` reports readable out of the table and
/// hands it to `wake`; true once the poll has nothing more to report (false
/// when polling failed).
fn wake_ready(
    poll: &mut mio::Poll,
    events: &mut Events,
    parking: &Parking,
    wake: &mut impl FnMut(Parked),
) -> bool {
    loop {
        match poll.poll(events, Some(Duration::ZERO)) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => {
                warn!(error = %e, "polling idle connections failed");
                return false;
            }
        }
        if events.is_empty() {
            return true;
        }
        for event in &*events {
            if let Some(p) = parking.take(event.token().0) {
                wake(p);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::io::{Read, Write};
    use std::net::{TcpListener, TcpStream};

    use super::*;

    /// A connected pair: the client end, and the accepted end as a parked
    /// connection due at `due`.
    fn pair(l: &TcpListener, due: Instant) -> (TcpStream, Parked) {
        let client = TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let (stream, peer) = l.accept().unwrap();
        stream.set_nonblocking(true).unwrap();
        (
            client,
            Parked {
                stream,
                peer,
                due,
                h2c: false,
            },
        )
    }

    fn closed_by_peer(c: &mut TcpStream) -> bool {
        c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        matches!(c.read(&mut [0u8; 8]), Ok(0))
    }

    #[tokio::test(start_paused = true)]
    async fn parked_connections_are_woken_by_bytes_and_closed_at_their_deadline() {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let gauge = Gauge::default();
        let (parking, poller) = new(gauge.clone()).unwrap();
        let start = Instant::now();
        let (mut talker, p1) = pair(&l, start + Duration::from_secs(10));
        let (mut quiet, p2) = pair(&l, start + Duration::from_secs(20));
        let (mut later, p3) = pair(&l, start + Duration::from_secs(30));
        for p in [p1, p2, p3] {
            parking.park(p).unwrap();
        }
        assert_eq!((parking.len(), gauge.get()), (3, 3));
        let drain = Drain::new();
        let (woken_tx, mut woken) = tokio::sync::mpsc::unbounded_channel();
        let closes = std::cell::Cell::new(0);
        let run = poller.run(
            &parking,
            &drain,
            |p| woken_tx.send((p, Instant::now())).unwrap(),
            || closes.set(closes.get() + 1),
        );
        tokio::pin!(run);
        talker.write_all(b"GET /").unwrap();
        // Bytes wake their connection before its deadline, with its state.
        let (mut p, at) = tokio::select! {
            w = woken.recv() => w.unwrap(),
            () = &mut run => unreachable!(),
        };
        assert!(at < start + Duration::from_secs(10));
        assert_eq!(p.due, start + Duration::from_secs(10));
        let mut got = [0u8; 5];
        p.stream.read_exact(&mut got).unwrap();
        assert_eq!(&got, b"GET /");
        assert_eq!(parking.len(), 2);
        // The quiet one is closed at its deadline, not before; the
        // woken one's deadline (10 s) closes nothing.
        let just_before = start + Duration::from_secs(20) - Duration::from_millis(1);
        tokio::select! {
            () = tokio::time::sleep_until(just_before) => {}
            () = &mut run => unreachable!(),
        }
        assert_eq!(closes.get(), 0);
        tokio::select! {
            () = tokio::time::sleep(Duration::from_millis(6)) => {}
            () = &mut run => unreachable!(),
        }
        assert_eq!((closes.get(), parking.len(), gauge.get()), (1, 1, 1));
        assert!(closed_by_peer(&mut quiet));
        // Draining closes the rest at once.
        drain.cancel();
        run.await;
        assert_eq!((closes.get(), parking.len(), gauge.get()), (2, 0, 0));
        assert!(closed_by_peer(&mut later));
        assert!(woken.try_recv().is_err());
    }

    /// Bytes that arrived by a connection's deadline are served, not
    /// dropped with the connection, even when the deadline is handled before
    /// tokio has seen the poll turn readable (the timer and the bytes in the
    /// same turn of the reactor, or the bytes just after its last look).
    /// Until this, such a request was lost: the client saw its connection
    /// close without an answer.
    #[test]
    fn a_connection_whose_client_sent_by_its_deadline_is_woken_not_closed() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .start_paused(true)
            .build()
            .unwrap();
        let _guard = rt.enter();
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let (parking, mut poller) = new(Gauge::default()).unwrap();
        let start = Instant::now();
        let (mut client, p1) = pair(&l, start + Duration::from_secs(10));
        let (mut quiet, p2) = pair(&l, start + Duration::from_secs(10));
        // The request has reached the server's socket before its deadline
        // (a blocking peek waits for it: no timing involved).
        client.write_all(b"GET / HTTP/1.1\r\n\r\n").unwrap();
        p1.stream.set_nonblocking(false).unwrap();
        p1.stream.peek(&mut [0u8; 1]).unwrap();
        p1.stream.set_nonblocking(true).unwrap();
        for p in [p1, p2] {
            parking.park(p).unwrap();
        }
        // The deadline is handled with nothing else run in between: no
        // turn of the reactor, so tokio does not know the poll is readable.
        let (mut woken, mut closes) = (Vec::new(), 0);
        poller.expire(
            &parking,
            start + Duration::from_secs(10),
            &mut |p| woken.push(p),
            &mut || closes += 1,
        );
        assert_eq!((woken.len(), closes, parking.len()), (1, 1, 0));
        let mut got = [0u8; 5];
        woken[0].stream.read_exact(&mut got).unwrap();
        assert_eq!(&got, b"GET /");
        assert!(closed_by_peer(&mut quiet));
    }

    #[tokio::test]
    async fn a_client_that_closes_while_parked_is_handed_back_to_see_the_close() {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let (parking, poller) = new(Gauge::default()).unwrap();
        let (client, p) = pair(&l, Instant::now() + Duration::from_secs(60));
        parking.park(p).unwrap();
        drop(client);
        let drain = Drain::new();
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let run = poller.run(&parking, &drain, |p| tx.send(p).unwrap(), || {});
        tokio::pin!(run);
        let mut p = tokio::select! {
            p = rx.recv() => p.unwrap(),
            () = &mut run => unreachable!(),
        };
        assert_eq!(p.stream.read(&mut [0u8; 8]).unwrap(), 0);
        assert_eq!(parking.len(), 0);
    }

    /// What a parked connection costs in the table (besides the slab's and
    /// heap's spare capacity, at most as much again): the figure
    /// docs/benchmarks.md gives. A connection waiting in its own task costs
    /// about 860 bytes (`conn::tests::connection_task_stays_small` and the
    /// DHAT breakdown there).
    #[test]
    fn a_parked_connection_costs_under_a_hundred_bytes() {
        let slot = std::mem::size_of::<Slot>();
        let deadline = std::mem::size_of::<Reverse<(Instant, usize, u32)>>();
        assert!(
            slot + deadline <= 100,
            "slot {slot} + deadline {deadline} bytes"
        );
    }

    #[test]
    fn stale_deadlines_are_compacted() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let _guard = rt.enter();
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let (parking, _poller) = new(Gauge::default()).unwrap();
        let (_client, mut p) = pair(&l, Instant::now() + Duration::from_secs(60));
        // One connection parked and taken back 5,000 times: its old
        // deadlines are dropped once they outnumber the live ones.
        for _ in 0..5_000 {
            parking.park(p).unwrap();
            p = parking.take(0).unwrap();
        }
        assert!(parking.table.borrow().deadlines.len() <= 1024 + 1);
    }
}
