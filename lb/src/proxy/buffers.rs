//! Per-worker free lists for connection buffers (the fast path's client
//! buffers, and the read buffer of every pooled upstream connection), and
//! for the boxes the fast path serves requests in ([`pooled`]).
//!
//! Every client connection needs a read buffer and two small write buffers,
//! and every new upstream connection a read buffer. The buffers of a closed
//! connection go to a free list and the next connection on the same worker
//! takes them from there: the same few kilobytes are reused instead of
//! returned and re-requested. With jemalloc this saves about 600
//! instructions per HTTP/1.1 request (4 %; measured without the lists,
//! docs/benchmarks.md, "Allocators"); under glibc's malloc it was also what
//! kept churn from spreading freed pages over the heap (docs/soak.md).
//!
//! Workers are single-threaded runtimes, so the lists are thread-locals: no
//! lock, no sharing between cores. Each list is bounded ([`MAX_FREE`]) and
//! keeps only buffers of ordinary size, so a burst of connections or one
//! huge response head does not pin memory for good.

use std::any::{Any, TypeId};
use std::cell::RefCell;
use std::mem;
use std::ops::{Deref, DerefMut};
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::BytesMut;
use reusable_box_future::ReusableLocalBoxFuture;

/// Initial and per-read capacity of a client read buffer.
pub(crate) const CLIENT_BUF: usize = 8 * 1024;
/// Per-read capacity of an upstream connection's buffer.
pub(crate) const UPSTREAM_BUF: usize = 16 * 1024;
/// Body bytes already read with a response head are sent in the same write
/// as the head up to this size.
pub(crate) const COALESCE: usize = 16 * 1024;

/// Most buffers (of each kind) a worker keeps for reuse.
pub(crate) const MAX_FREE: usize = 32;
/// Most boxes (of each output type) a worker keeps for [`pooled`] futures:
/// one per request in flight at once on the worker, ~1.7 KB each.
pub(crate) const MAX_FREE_FUTURES: usize = 256;
/// Initial capacity of the rewritten upstream request head.
const UP_HEAD: usize = 512;
/// Initial capacity of the response head written to the client.
const OUT: usize = 1024;
/// A read buffer or request head that grew beyond this many times its
/// initial capacity is freed rather than kept.
const MAX_GROWTH: usize = 8;
/// The response buffer also carries up to `COALESCE` body bytes with the
/// head; beyond this it is freed rather than kept.
const OUT_MAX: usize = 2 * COALESCE;

/// A bounded per-thread list of reusable values.
struct FreeList<T> {
    free: RefCell<Vec<T>>,
}

impl<T> FreeList<T> {
    const fn new() -> Self {
        Self {
            free: RefCell::new(Vec::new()),
        }
    }

    fn take(&self) -> Option<T> {
        self.free.borrow_mut().pop()
    }

    /// Keeps `value` unless the list is full (then it is dropped).
    fn give(&self, value: T) {
        let mut free = self.free.borrow_mut();
        if free.len() < MAX_FREE {
            free.push(value);
        }
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.free.borrow().len()
    }
}

thread_local! {
    static CLIENT: FreeList<ClientBufs> = const { FreeList::new() };
    static UPSTREAM: FreeList<BytesMut> = const { FreeList::new() };
    /// Boxes for [`pooled`] futures, one list per output type: each entry
    /// is `(TypeId::of::<T>(), Vec<ReusableLocalBoxFuture<T>>)`.
    static FUTURES: RefCell<Vec<(TypeId, Box<dyn Any>)>> = const { RefCell::new(Vec::new()) };
}

/// Empties `buf` and makes its whole allocation usable again from the
/// start (it may have been advanced); false when it should be freed
/// instead (shared, or grown far beyond `size`).
fn reset_bytes(buf: &mut BytesMut, size: usize) -> bool {
    buf.clear();
    buf.try_reclaim(size) && buf.capacity() <= size * MAX_GROWTH
}

/// Empties `buf`; false when its capacity is outside `min..=max`.
fn reset_vec(buf: &mut Vec<u8>, min: usize, max: usize) -> bool {
    buf.clear();
    (min..=max).contains(&buf.capacity())
}

/// A client connection's buffers: what was read from the client, the
/// rewritten request head for the endpoint and the response head (with the
/// first body bytes) for the client.
#[derive(Debug, Default)]
pub(crate) struct ClientBufs {
    /// Bytes read from the client and not yet consumed.
    pub(crate) inb: BytesMut,
    /// The rewritten upstream request head.
    pub(crate) up_head: Vec<u8>,
    /// What is written to the client next.
    pub(crate) out: Vec<u8>,
}

impl ClientBufs {
    fn fresh() -> Self {
        Self {
            inb: BytesMut::with_capacity(CLIENT_BUF),
            up_head: Vec::with_capacity(UP_HEAD),
            out: Vec::with_capacity(OUT),
        }
    }

    fn reset(&mut self) -> bool {
        reset_bytes(&mut self.inb, CLIENT_BUF)
            && reset_vec(&mut self.up_head, UP_HEAD, UP_HEAD * MAX_GROWTH)
            && reset_vec(&mut self.out, OUT, OUT_MAX)
    }
}

/// A client connection's buffers on loan from this worker's free list; they
/// go back to it when the loan is dropped.
#[derive(Debug)]
pub(crate) struct ClientLoan(ClientBufs);

impl ClientLoan {
    /// Recycled buffers when the worker has some, new ones otherwise.
    pub(crate) fn take() -> Self {
        let bufs = CLIENT
            .try_with(FreeList::take)
            .ok()
            .flatten()
            .unwrap_or_else(ClientBufs::fresh);
        Self(bufs)
    }
}

impl Deref for ClientLoan {
    type Target = ClientBufs;
    fn deref(&self) -> &ClientBufs {
        &self.0
    }
}

impl DerefMut for ClientLoan {
    fn deref_mut(&mut self) -> &mut ClientBufs {
        &mut self.0
    }
}

impl Drop for ClientLoan {
    fn drop(&mut self) {
        let mut bufs = mem::take(&mut self.0);
        if bufs.reset() {
            // Fails only while the thread is exiting: then just free them.
            let _ = CLIENT.try_with(|list| list.give(bufs));
        }
    }
}

/// An upstream connection's read buffer, from this worker's free list when
/// it has one; it goes back there when dropped.
#[derive(Debug)]
pub(crate) struct UpstreamBuf(BytesMut);

impl UpstreamBuf {
    /// A recycled buffer, or a new one.
    pub(crate) fn take() -> Self {
        Self(
            UPSTREAM
                .try_with(FreeList::take)
                .ok()
                .flatten()
                .unwrap_or_else(|| BytesMut::with_capacity(UPSTREAM_BUF)),
        )
    }
}

impl Deref for UpstreamBuf {
    type Target = BytesMut;
    fn deref(&self) -> &BytesMut {
        &self.0
    }
}

impl DerefMut for UpstreamBuf {
    fn deref_mut(&mut self) -> &mut BytesMut {
        &mut self.0
    }
}

impl Drop for UpstreamBuf {
    fn drop(&mut self) {
        recycle_upstream_buf(mem::take(&mut self.0));
    }
}

/// Gives an upstream read buffer back for reuse.
fn recycle_upstream_buf(mut buf: BytesMut) {
    if reset_bytes(&mut buf, UPSTREAM_BUF) {
        let _ = UPSTREAM.try_with(|list| list.give(buf));
    }
}

/// Runs `fut` in a box from this worker's free list: the box is allocated
/// only when the list is empty, and goes back to it when the future has
/// completed. A future dropped before completing (its connection's task
/// ended) is freed with its box, so nothing it holds outlives it.
///
/// The connection task of an idle keep-alive connection then holds only
/// what it needs to wait for the next request; the state of serving one
/// (attempts, relaying, the upstream connection) is in a box only while a
/// request is in flight, with no allocation per request once warm.
pub(crate) fn pooled<T: 'static, F: Future<Output = T> + 'static>(fut: F) -> Pooled<T> {
    let recycled = with_free_futures::<T, _>(Vec::pop).flatten();
    let boxed = match recycled {
        Some(mut boxed) => {
            // Reuses the allocation: the same future type has one layout.
            boxed.set(fut);
            boxed
        }
        None => ReusableLocalBoxFuture::new(fut),
    };
    Pooled {
        fut: Some(boxed),
        done: false,
    }
}

/// A future running in a recycled box ([`pooled`]).
pub(crate) struct Pooled<T: 'static> {
    fut: Option<ReusableLocalBoxFuture<T>>,
    done: bool,
}

impl<T: 'static> Future for Pooled<T> {
    type Output = T;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<T> {
        let this = &mut *self;
        let fut = this
            .fut
            .as_mut()
            .expect("a pooled future polled after completion");
        let poll = fut.poll(cx);
        this.done = poll.is_ready();
        poll
    }
}

impl<T: 'static> Drop for Pooled<T> {
    fn drop(&mut self) {
        let Some(boxed) = self.fut.take().filter(|_| self.done) else {
            return;
        };
        with_free_futures::<T, _>(|list| {
            if list.len() < MAX_FREE_FUTURES {
                list.push(boxed);
            }
        });
    }
}

/// Runs `f` on this thread's free list of boxes for futures with output
/// `T` (made empty on first use); `None` only while the thread is exiting.
fn with_free_futures<T: 'static, R>(
    f: impl FnOnce(&mut Vec<ReusableLocalBoxFuture<T>>) -> R,
) -> Option<R> {
    FUTURES
        .try_with(|lists| {
            let mut lists = lists.borrow_mut();
            let at = match lists.iter().position(|(id, _)| *id == TypeId::of::<T>()) {
                Some(at) => at,
                None => {
                    let list: Vec<ReusableLocalBoxFuture<T>> = Vec::new();
                    lists.push((TypeId::of::<T>(), Box::new(list)));
                    lists.len() - 1
                }
            };
            lists[at]
                .1
                .downcast_mut::<Vec<ReusableLocalBoxFuture<T>>>()
                .map(f)
        })
        .ok()
        .flatten()
}

#[cfg(test)]
mod tests {
    use bytes::Buf;

    use super::*;

    fn client_free() -> usize {
        CLIENT.with(FreeList::len)
    }

    #[test]
    fn client_buffers_are_reused_by_the_next_connection() {
        let first = ClientLoan::take();
        let ptr = first.inb.as_ptr();
        let before = client_free();
        drop(first);
        assert_eq!(client_free(), before + 1);
        let mut second = ClientLoan::take();
        assert_eq!(second.inb.as_ptr(), ptr, "the same allocation comes back");
        assert!(second.inb.is_empty() && second.up_head.is_empty() && second.out.is_empty());
        assert!(second.inb.capacity() >= CLIENT_BUF);
        second.inb.extend_from_slice(b"GET / HTTP/1.1\r\n\r\n");
        drop(second);
    }

    #[test]
    fn an_advanced_read_buffer_is_reclaimed_from_its_start() {
        let mut loan = ClientLoan::take();
        let start = loan.inb.as_ptr();
        loan.inb.extend_from_slice(&[b'x'; 3000]);
        loan.inb.advance(3000);
        loan.up_head.extend_from_slice(b"head");
        loan.out.extend_from_slice(b"out");
        drop(loan);
        let again = ClientLoan::take();
        assert_eq!(again.inb.as_ptr(), start);
        assert!(
            again.inb.capacity() >= CLIENT_BUF,
            "the whole allocation is usable again"
        );
        assert!(again.up_head.is_empty() && again.out.is_empty());
    }

    #[test]
    fn oversized_or_taken_buffers_are_freed_not_kept() {
        // Start from an empty list on this test's own thread.
        CLIENT.with(|l| l.free.borrow_mut().clear());
        let mut grown = ClientLoan::take();
        grown.out.reserve(OUT_MAX + 1);
        drop(grown);
        assert_eq!(client_free(), 0, "a buffer that grew far is freed");
        let mut fallback = ClientLoan::take();
        // The general path took the read buffer with the connection.
        let _inb = mem::take(&mut fallback.inb);
        drop(fallback);
        assert_eq!(client_free(), 0, "a set without its read buffer is freed");
    }

    #[test]
    fn the_lists_are_bounded() {
        let loans: Vec<_> = (0..MAX_FREE + 10).map(|_| ClientLoan::take()).collect();
        drop(loans);
        assert_eq!(client_free(), MAX_FREE);
        for _ in 0..MAX_FREE + 10 {
            recycle_upstream_buf(BytesMut::with_capacity(UPSTREAM_BUF));
        }
        assert_eq!(UPSTREAM.with(FreeList::len), MAX_FREE);
        let buf = UpstreamBuf::take();
        assert!(buf.is_empty() && buf.capacity() >= UPSTREAM_BUF);
        assert_eq!(UPSTREAM.with(FreeList::len), MAX_FREE - 1);
        drop(buf);
        assert_eq!(UPSTREAM.with(FreeList::len), MAX_FREE, "it came back");
    }

    fn futures_free<T: 'static>() -> usize {
        with_free_futures::<T, _>(|list| list.len()).unwrap_or(0)
    }

    #[tokio::test]
    async fn a_completed_pooled_future_gives_its_box_back_and_the_next_reuses_it() {
        struct Marker;
        let before = futures_free::<(Marker, u64)>();
        let held = std::rc::Rc::new(());
        let h = held.clone();
        let out = pooled(async move {
            tokio::task::yield_now().await;
            let _keep = h;
            (Marker, 7_u64)
        })
        .await;
        assert_eq!(out.1, 7);
        assert_eq!(std::rc::Rc::strong_count(&held), 1, "its state was dropped");
        assert_eq!(
            futures_free::<(Marker, u64)>(),
            before + 1,
            "the box came back"
        );
        let next = pooled(async { (Marker, 8_u64) });
        assert_eq!(
            futures_free::<(Marker, u64)>(),
            before,
            "and was taken again"
        );
        assert_eq!(next.await.1, 8);
        assert_eq!(futures_free::<(Marker, u64)>(), before + 1);
    }

    #[tokio::test]
    async fn a_pooled_future_dropped_unfinished_is_freed_with_what_it_holds() {
        struct Marker;
        let held = std::rc::Rc::new(());
        let h = held.clone();
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let mut fut = pooled(async move {
            let _keep = h;
            let _ = rx.await;
            Marker
        });
        // Started, now waiting on the channel.
        assert!(futures::poll!(&mut fut).is_pending());
        assert_eq!(std::rc::Rc::strong_count(&held), 2);
        drop(fut);
        assert_eq!(std::rc::Rc::strong_count(&held), 1, "nothing outlives it");
        assert_eq!(futures_free::<Marker>(), 0, "an unfinished box is not kept");
        drop(tx);
    }

    #[tokio::test]
    async fn the_pooled_boxes_are_bounded() {
        struct Marker;
        let many: Vec<_> = (0..MAX_FREE_FUTURES + 10)
            .map(|_| pooled(async { Marker }))
            .collect();
        for fut in many {
            fut.await;
        }
        assert_eq!(futures_free::<Marker>(), MAX_FREE_FUTURES);
    }

    #[test]
    fn a_shared_upstream_buffer_is_not_recycled() {
        UPSTREAM.with(|l| l.free.borrow_mut().clear());
        let mut buf = BytesMut::with_capacity(UPSTREAM_BUF);
        buf.extend_from_slice(b"HTTP/1.1 200 OK\r\n");
        let frozen = buf.split().freeze();
        recycle_upstream_buf(buf);
        drop(frozen);
        assert_eq!(UPSTREAM.with(FreeList::len), 0);
    }
}
