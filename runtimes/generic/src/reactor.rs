//! Building blocks for runtimes driven by the `async-io` reactor (async-std, smol): a timer
//! future and the split of a clonable socket into the two connection halves.
//!
//! Only with the `async-io` feature.

use crate::{BoxReader, BoxWriter};
use futures_lite::{AsyncRead, AsyncWrite};
use std::future::Future;
use std::io;
use std::net::Shutdown;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Instant;

/// An `async-io` timer completing with `()` at its deadline (the
/// [`Runtime::Sleep`](crate::Runtime::Sleep) of async-io based runtimes).
#[derive(Debug)]
#[must_use = "a timer does nothing unless awaited"]
pub struct Sleep {
    timer: async_io::Timer,
}

/// A timer firing at `deadline` (at once when it has passed).
pub fn sleep_until(deadline: Instant) -> Sleep {
    Sleep {
        timer: async_io::Timer::at(deadline),
    }
}

impl Future for Sleep {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        Pin::new(&mut self.timer).poll(cx).map(|_| ())
    }
}

/// Shuts down one direction of a socket (`UnixStream::shutdown`, `TcpStream::shutdown`).
pub type ShutdownFn<S> = fn(&S, Shutdown) -> io::Result<()>;

/// Splits a socket whose clones share one descriptor (async-std's and smol's streams) into the
/// two halves of a connection.
///
/// Closing the write half shuts the socket down for writing, as tokio's write halves do, so the
/// peer sees the end of the stream even while the read half lives on (`async-io` itself only
/// flushes on close). The descriptor is released when both halves are dropped.
pub fn split_cloned<S>(stream: S, shutdown: ShutdownFn<S>) -> (BoxReader, BoxWriter)
where
    S: AsyncRead + AsyncWrite + Clone + Unpin + Send + 'static,
{
    let reader = stream.clone();
    (
        Box::pin(reader),
        Box::pin(WriteHalf {
            stream,
            shutdown,
            shut: false,
        }),
    )
}

struct WriteHalf<S> {
    stream: S,
    shutdown: ShutdownFn<S>,
    shut: bool,
}

impl<S: AsyncWrite + Unpin> AsyncWrite for WriteHalf<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_close(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        std::task::ready!(Pin::new(&mut self.stream).poll_flush(cx))?;
        if !self.shut {
            self.shut = true;
            match (self.shutdown)(&self.stream, Shutdown::Write) {
                // The peer may already be gone: the half is closed either way.
                Err(e) if e.kind() != io::ErrorKind::NotConnected => return Poll::Ready(Err(e)),
                _ => {}
            }
        }
        Poll::Ready(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_lite::{AsyncReadExt, AsyncWriteExt};
    use std::time::Duration;

    #[test]
    fn sleep_waits_for_its_deadline() {
        let start = Instant::now();
        futures_lite::future::block_on(sleep_until(start + Duration::from_millis(30)));
        assert!(start.elapsed() >= Duration::from_millis(30));
    }

    #[test]
    fn closing_the_write_half_ends_the_peers_stream_while_the_read_half_lives() {
        let (a, b) = std::os::unix::net::UnixStream::pair().unwrap();
        let a = async_io::Async::new(a).unwrap();
        let a = std::sync::Arc::new(a);
        let mut b = async_io::Async::new(b).unwrap();
        let (_reader, mut writer) =
            split_cloned(ArcStream(a), |s, how| s.0.get_ref().shutdown(how));
        futures_lite::future::block_on(async {
            writer.write_all(b"bye").await.unwrap();
            writer.close().await.unwrap();
            let mut got = Vec::new();
            b.read_to_end(&mut got).await.unwrap();
            assert_eq!(got, b"bye");
        });
    }

    #[derive(Clone)]
    struct ArcStream(std::sync::Arc<async_io::Async<std::os::unix::net::UnixStream>>);

    impl AsyncRead for ArcStream {
        fn poll_read(
            self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            buf: &mut [u8],
        ) -> Poll<io::Result<usize>> {
            Pin::new(&mut &*self.0).poll_read(cx, buf)
        }
    }

    impl AsyncWrite for ArcStream {
        fn poll_write(
            self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            buf: &[u8],
        ) -> Poll<io::Result<usize>> {
            Pin::new(&mut &*self.0).poll_write(cx, buf)
        }
        fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
            Pin::new(&mut &*self.0).poll_flush(cx)
        }
        fn poll_close(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
            Pin::new(&mut &*self.0).poll_close(cx)
        }
    }
}
