//! An IO wrapper that reports the bytes it moves: a connection's watchdog (`server`) and a
//! WebSocket tunnel's idle timer (`proxy::tunnel`) both learn "something happened" from it.

use std::io::IoSlice;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Told of every read or write that moved at least one byte.
pub(crate) trait Activity {
    fn read(&self);
    fn wrote(&self);
}

/// A plain counter of reads (writes follow reads through a tunnel, so reads suffice).
impl Activity for AtomicU64 {
    fn read(&self) {
        self.fetch_add(1, Ordering::Relaxed);
    }
    fn wrote(&self) {}
}

impl<A: Activity + ?Sized> Activity for std::sync::Arc<A> {
    fn read(&self) {
        (**self).read();
    }
    fn wrote(&self) {
        (**self).wrote();
    }
}

/// `inner`, reporting to `activity`.
pub(crate) struct Counted<T, A> {
    pub inner: T,
    pub activity: A,
}

impl<T: AsyncRead + Unpin, A: Activity + Unpin> AsyncRead for Counted<T, A> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let r = Pin::new(&mut this.inner).poll_read(cx, buf);
        if buf.filled().len() > before {
            this.activity.read();
        }
        r
    }
}

impl<T: AsyncWrite + Unpin, A: Activity + Unpin> AsyncWrite for Counted<T, A> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let this = self.get_mut();
        let r = Pin::new(&mut this.inner).poll_write(cx, data);
        if matches!(r, Poll::Ready(Ok(n)) if n > 0) {
            this.activity.wrote();
        }
        r
    }
    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let this = self.get_mut();
        let r = Pin::new(&mut this.inner).poll_write_vectored(cx, bufs);
        if matches!(r, Poll::Ready(Ok(n)) if n > 0) {
            this.activity.wrote();
        }
        r
    }
    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}
