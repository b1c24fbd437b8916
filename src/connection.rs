//! How long a client connection may hold a socket without doing its part: a request head must
//! arrive within `server.header_timeout_secs` of the connection opening (or of the head's first
//! byte), and a keep-alive connection without a call is closed after `server.idle_timeout_secs`.
//! Without these, clients that send half a head or nothing keep descriptors until the process runs
//! out of them and legitimate callers go unanswered.
//!
//! hyper's own header timeout also runs while a connection is idle between calls, so it cannot
//! tell the two limits apart; here the socket's reads and writes and the calls in flight are
//! watched instead, and a watchdog sleeps until the nearest deadline. Reading the clock is left to
//! the few moments that need it (a head's first byte, a call's end, the watchdog waking), not
//! every read and write.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Instant;

/// The limits of one listener.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub header: Duration,
    pub idle: Duration,
}

/// What a connection's watchdog knows about it; shared by its socket, its calls and the watchdog.
#[derive(Debug)]
pub struct Activity {
    opened: Instant,
    /// Calls whose answer has not been handed to hyper yet.
    calls: AtomicUsize,
    /// Reads and writes so far: the watchdog tells activity from silence by it changing.
    io_events: AtomicU64,
    /// Milliseconds since `opened` when the connection last became idle (or was seen busy).
    idle_since: AtomicU64,
    /// Milliseconds since `opened` (+1, 0 = none) of the first byte of a head not yet complete.
    head_started: AtomicU64,
    /// Whether a call was made on this connection (then the idle limit applies between calls).
    served: AtomicBool,
}

impl Activity {
    pub fn new() -> Arc<Self> {
        Arc::new(Self {
            opened: Instant::now(),
            calls: AtomicUsize::new(0),
            io_events: AtomicU64::new(0),
            idle_since: AtomicU64::new(0),
            head_started: AtomicU64::new(0),
            served: AtomicBool::new(false),
        })
    }

    fn now_ms(&self) -> u64 {
        self.opened.elapsed().as_millis() as u64
    }

    fn at(&self, ms: u64) -> Instant {
        self.opened + Duration::from_millis(ms)
    }

    fn io(&self, read: bool) {
        self.io_events.fetch_add(1, Ordering::Relaxed);
        if read
            && self.calls.load(Ordering::Relaxed) == 0
            && self.head_started.load(Ordering::Relaxed) == 0
        {
            self.head_started
                .store(self.now_ms() + 1, Ordering::Relaxed);
        }
    }

    /// A call's head arrived; the returned guard marks its end when dropped (answered or not).
    pub fn call(self: &Arc<Self>) -> CallGuard {
        self.calls.fetch_add(1, Ordering::Relaxed);
        self.head_started.store(0, Ordering::Relaxed);
        self.served.store(true, Ordering::Relaxed);
        CallGuard(self.clone())
    }

    /// When the connection is due to be closed if nothing happens before, or None while a call
    /// is being served.
    fn deadline(&self, limits: Limits) -> Option<Instant> {
        if self.calls.load(Ordering::Relaxed) > 0 {
            return None;
        }
        let head_started = self.head_started.load(Ordering::Relaxed);
        if head_started > 0 {
            return Some(self.at(head_started - 1) + limits.header);
        }
        let limit = if self.served.load(Ordering::Relaxed) {
            limits.idle
        } else {
            limits.header
        };
        Some(self.at(self.idle_since.load(Ordering::Relaxed)) + limit)
    }

    /// Resolves when the connection has overstayed a limit: a head that took too long, or no call
    /// for too long.
    pub async fn overstayed(self: Arc<Self>, limits: Limits) {
        let mut seen = self.io_events.load(Ordering::Relaxed);
        loop {
            let events = self.io_events.load(Ordering::Relaxed);
            if events != seen {
                seen = events;
                // Bytes moved without a head being read (an answer still streaming out): the
                // connection is not idle.
                if self.head_started.load(Ordering::Relaxed) == 0 {
                    self.idle_since.store(self.now_ms(), Ordering::Relaxed);
                }
            }
            match self.deadline(limits) {
                // A call is being served: its own deadlines (upstream timeout) bound it.
                None => tokio::time::sleep(limits.idle.min(limits.header)).await,
                Some(deadline) if deadline <= Instant::now() => return,
                Some(deadline) => tokio::time::sleep_until(deadline).await,
            }
        }
    }
}

/// Marks the end of a call on its connection.
pub struct CallGuard(Arc<Activity>);

impl Drop for CallGuard {
    fn drop(&mut self) {
        let activity = &self.0;
        activity
            .idle_since
            .store(activity.now_ms(), Ordering::Relaxed);
        activity.calls.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A socket whose reads and writes are noted in its connection's [`Activity`].
pub struct Watched<T> {
    inner: T,
    activity: Arc<Activity>,
}

impl<T> Watched<T> {
    pub fn new(inner: T, activity: Arc<Activity>) -> Self {
        Self { inner, activity }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Watched<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        if matches!(polled, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.activity.io(true);
        }
        polled
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Watched<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write(cx, data);
        if matches!(polled, Poll::Ready(Ok(n)) if n > 0) {
            self.activity.io(false);
        }
        polled
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        if matches!(polled, Poll::Ready(Ok(n)) if n > 0) {
            self.activity.io(false);
        }
        polled
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// Logs failed accepts (out of descriptors, say) at most once a second, with how many there were:
/// a flood of identical lines would bury everything else.
#[derive(Debug, Default)]
pub struct AcceptErrors {
    last_logged: Option<std::time::Instant>,
    suppressed: u64,
}

impl AcceptErrors {
    pub fn failed(&mut self, error: &io::Error) {
        let now = std::time::Instant::now();
        if self
            .last_logged
            .is_some_and(|at| now.duration_since(at) < Duration::from_secs(1))
        {
            self.suppressed += 1;
            return;
        }
        tracing::warn!(
            %error,
            failures_since_last_line = self.suppressed + 1,
            "accept failed; new connections wait in the backlog"
        );
        self.last_logged = Some(now);
        self.suppressed = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn deadlines_follow_heads_calls_and_idleness() {
        let limits = Limits {
            header: Duration::from_secs(10),
            idle: Duration::from_secs(60),
        };
        let activity = Activity::new();
        let opened = activity.opened;
        // Silent from the start: the header limit.
        assert_eq!(activity.deadline(limits), Some(opened + limits.header));
        tokio::time::advance(Duration::from_secs(2)).await;
        activity.io(true);
        assert_eq!(
            activity.deadline(limits),
            Some(opened + Duration::from_secs(12))
        );
        // More bytes of the same head do not move it.
        tokio::time::advance(Duration::from_secs(5)).await;
        activity.io(true);
        assert_eq!(
            activity.deadline(limits),
            Some(opened + Duration::from_secs(12))
        );
        let call = activity.call();
        assert_eq!(activity.deadline(limits), None);
        tokio::time::advance(Duration::from_secs(1)).await;
        drop(call);
        // Between calls: the idle limit from the end of the call.
        assert_eq!(
            activity.deadline(limits),
            Some(opened + Duration::from_secs(8 + 60))
        );
    }
}
