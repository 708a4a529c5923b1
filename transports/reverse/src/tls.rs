//! TLS and mTLS over any runtime's split stream halves, with `futures-rustls`.

use agentwire_runtime::{BoxReader, BoxWriter};
use futures_lite::{AsyncRead, AsyncWrite};
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

pub use futures_rustls::rustls;

/// The two halves of a runtime stream joined back into one, as TLS needs.
struct Joined {
    reader: BoxReader,
    writer: BoxWriter,
}

impl AsyncRead for Joined {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<io::Result<usize>> {
        self.reader.as_mut().poll_read(cx, buf)
    }
}

impl AsyncWrite for Joined {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.writer.as_mut().poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.writer.as_mut().poll_flush(cx)
    }

    fn poll_close(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.writer.as_mut().poll_close(cx)
    }
}

fn split<S>(stream: S) -> (BoxReader, BoxWriter)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    // The TLS state is shared by both halves behind a lock held only during each poll; reads
    // and writes use the two original halves underneath, so neither half's waker is lost.
    let (r, w) = futures_lite::io::split(stream);
    (Box::pin(r), Box::pin(w))
}

/// Runs the server side of a TLS handshake; returns the plaintext halves and the client's
/// certificate chain (DER, end entity first) when it presented one.
pub(crate) async fn accept(
    config: Arc<rustls::ServerConfig>,
    reader: BoxReader,
    writer: BoxWriter,
) -> io::Result<(BoxReader, BoxWriter, Option<Vec<Vec<u8>>>)> {
    let acceptor = futures_rustls::TlsAcceptor::from(config);
    let stream = acceptor.accept(Joined { reader, writer }).await?;
    let certs = stream
        .get_ref()
        .1
        .peer_certificates()
        .map(|chain| chain.iter().map(|c| c.as_ref().to_vec()).collect());
    let (r, w) = split(stream);
    Ok((r, w, certs))
}

/// Runs the client side of a TLS handshake with `server_name` (a DNS name or an IP address).
pub(crate) async fn connect(
    config: Arc<rustls::ClientConfig>,
    server_name: &str,
    reader: BoxReader,
    writer: BoxWriter,
) -> io::Result<(BoxReader, BoxWriter)> {
    let name = rustls::pki_types::ServerName::try_from(server_name.to_owned())
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
    let connector = futures_rustls::TlsConnector::from(config);
    let stream = connector.connect(name, Joined { reader, writer }).await?;
    Ok(split(stream))
}
