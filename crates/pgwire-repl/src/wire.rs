//! The byte level of a connection: the socket (TCP, Unix or TLS), message
//! framing, and the few backend messages the replication client reads.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Buf, Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpStream, UnixStream};

use crate::error::{Error, Result, ServerError};

/// How many bytes one read asks the kernel for; large reads keep system calls
/// per message far below one.
pub(crate) const READ_CHUNK: usize = 256 * 1024;

/// The longest message a server sends before the login is accepted
/// (authentication requests, errors, notices): a longer one is a protocol
/// violation, not a reason to reserve memory and wait. libpq draws its
/// line at 30,000 bytes for most message types.
pub(crate) const MAX_MESSAGE_BEFORE_LOGIN: usize = 64 * 1024;

/// The most buffer a message's declared length reserves at once; a longer
/// message grows the buffer as its bytes arrive, so a bogus length costs
/// nothing.
const MAX_RESERVE: usize = 64 << 20;

/// A connected socket of any of the kinds libpq supports.
pub(crate) enum Socket {
    Tcp(TcpStream),
    Unix(UnixStream),
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
}

impl AsyncRead for Socket {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Socket::Tcp(s) => Pin::new(s).poll_read(cx, buf),
            Socket::Unix(s) => Pin::new(s).poll_read(cx, buf),
            Socket::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Socket {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Socket::Tcp(s) => Pin::new(s).poll_write(cx, buf),
            Socket::Unix(s) => Pin::new(s).poll_write(cx, buf),
            Socket::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Socket::Tcp(s) => Pin::new(s).poll_flush(cx),
            Socket::Unix(s) => Pin::new(s).poll_flush(cx),
            Socket::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Socket::Tcp(s) => Pin::new(s).poll_shutdown(cx),
            Socket::Unix(s) => Pin::new(s).poll_shutdown(cx),
            Socket::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

/// One backend message: its type byte and its body (without the length).
#[derive(Debug)]
pub(crate) struct Frame {
    pub tag: u8,
    pub body: Bytes,
}

/// A socket with read and write buffers and the server's name for errors.
pub(crate) struct Wire {
    socket: Socket,
    read_buf: BytesMut,
    /// Messages waiting to be sent by [`Wire::flush`].
    pub out: BytesMut,
    /// `user@host:port/dbname`, for errors.
    pub server: String,
    /// The longest message accepted; [`MAX_MESSAGE_BEFORE_LOGIN`] until the
    /// login is accepted.
    max_message: usize,
}

impl Wire {
    pub fn new(socket: Socket, server: String) -> Wire {
        Wire {
            socket,
            read_buf: BytesMut::with_capacity(READ_CHUNK),
            out: BytesMut::with_capacity(1024),
            server,
            max_message: MAX_MESSAGE_BEFORE_LOGIN,
        }
    }

    /// Lifts the limit on message lengths once the login is accepted
    /// (a row of a large value may take up to 1 GB).
    pub fn logged_in(&mut self) {
        self.max_message = u32::MAX as usize;
    }

    /// The SCRAM channel binding data of this connection's TLS channel
    /// (`tls-server-end-point`), if it is TLS and the server's certificate
    /// allows one.
    pub fn tls_server_end_point(&self) -> Option<Vec<u8>> {
        match &self.socket {
            Socket::Tls(stream) => {
                let certificate = stream.get_ref().1.peer_certificates()?.first()?;
                crate::channel_binding::tls_server_end_point(certificate)
            }
            _ => None,
        }
    }

    /// Gives back the socket, and any bytes already read but not framed.
    pub fn into_parts(self) -> (Socket, BytesMut) {
        (self.socket, self.read_buf)
    }

    /// Sends everything in `out`.
    pub async fn flush(&mut self) -> Result<()> {
        let result = async {
            self.socket.write_all(&self.out).await?;
            self.socket.flush().await
        }
        .await;
        self.out.clear();
        result.map_err(|source| self.io_error(source))
    }

    /// Reads the next complete message.
    pub async fn read_frame(&mut self) -> Result<Frame> {
        loop {
            if let Some(frame) = take_frame(&mut self.read_buf, self.max_message)
                .map_err(|reason| self.protocol(reason))?
            {
                return Ok(frame);
            }
            self.read_once().await?;
        }
    }

    /// Waits until a complete message is in the buffer, without taking it
    /// (so a cancelled wait loses nothing).
    pub async fn wait_frame(&mut self) -> Result<()> {
        loop {
            if let Some(len) = declared_len(&self.read_buf) {
                if len < 4 || len > self.max_message || self.read_buf.len() > len {
                    // Complete (or malformed: taking it reports the error).
                    return Ok(());
                }
            }
            self.read_once().await?;
        }
    }

    /// One read from the socket into the buffer.
    async fn read_once(&mut self) -> Result<()> {
        if self.read_buf.capacity() - self.read_buf.len() < READ_CHUNK / 4 {
            self.read_buf.reserve(READ_CHUNK);
        }
        let n = self
            .socket
            .read_buf(&mut self.read_buf)
            .await
            .map_err(|source| self.io_error(source))?;
        if n == 0 {
            return Err(Error::Closed {
                server: self.server.clone(),
            });
        }
        Ok(())
    }

    /// When fewer than `enough` bytes wait in the buffer, lets more arrive
    /// for `patience` and then takes all of it at once, so that a reader
    /// faster than the server makes one system call per batch instead of
    /// one (or more) per message — CPU that, on a small machine, the server
    /// needs for decoding.
    pub async fn gather(&mut self, patience: std::time::Duration, enough: usize) -> Result<()> {
        if self.read_buf.len() >= enough {
            return Ok(());
        }
        tokio::time::sleep(patience).await;
        while self.read_buf.len() < enough {
            // Whatever is there already; never wait.
            match tokio::time::timeout(std::time::Duration::ZERO, self.read_once()).await {
                Ok(result) => result?,
                Err(_) => break,
            }
        }
        Ok(())
    }

    /// The next complete message already in the read buffer, without reading
    /// the socket.
    pub fn next_buffered_frame(&mut self) -> Result<Option<Frame>> {
        take_frame(&mut self.read_buf, self.max_message).map_err(|reason| self.protocol(reason))
    }

    /// An error response from the server, with what was being done.
    pub fn server_error(&self, frame: &Frame, context: &str) -> Error {
        Error::Server {
            context: format!("{context} ({})", self.server),
            source: Box::new(parse_error_fields(&frame.body)),
        }
    }

    /// Reads exactly one byte, which is how the server answers an SSLRequest.
    pub async fn read_byte(&mut self) -> Result<u8> {
        self.socket
            .read_u8()
            .await
            .map_err(|source| self.io_error(source))
    }

    pub fn io_error(&self, source: io::Error) -> Error {
        if source.kind() == io::ErrorKind::UnexpectedEof {
            return Error::Closed {
                server: self.server.clone(),
            };
        }
        Error::Io {
            server: self.server.clone(),
            source,
        }
    }

    pub fn protocol(&self, reason: impl Into<String>) -> Error {
        Error::Protocol {
            server: self.server.clone(),
            reason: reason.into(),
        }
    }
}

/// The length the message at the front of `buf` declares (its length
/// field counts itself, not the type byte), once its header is there.
fn declared_len(buf: &[u8]) -> Option<usize> {
    let header = buf.get(..5)?;
    Some(u32::from_be_bytes([header[1], header[2], header[3], header[4]]) as usize)
}

/// Splits the first complete message off `buf`; `None` until it is
/// complete. A declared length above `max_len` is an error.
pub(crate) fn take_frame(
    buf: &mut BytesMut,
    max_len: usize,
) -> std::result::Result<Option<Frame>, String> {
    let Some(len) = declared_len(buf) else {
        return Ok(None);
    };
    let tag = buf[0];
    if len < 4 {
        return Err(format!(
            "message {:?} has invalid length {len}",
            tag as char
        ));
    }
    if len > max_len {
        return Err(format!(
            "message {:?} claims {len} bytes, more than a server sends at this point ({max_len})",
            tag as char
        ));
    }
    if buf.len() < len + 1 {
        buf.reserve((len + 1 - buf.len()).min(MAX_RESERVE));
        return Ok(None);
    }
    let mut frame = buf.split_to(len + 1);
    frame.advance(5);
    Ok(Some(Frame {
        tag,
        body: frame.freeze(),
    }))
}

/// Reads the fields of an ErrorResponse or NoticeResponse body.
pub(crate) fn parse_error_fields(body: &[u8]) -> ServerError {
    let mut error = ServerError {
        severity: String::new(),
        code: String::new(),
        message: String::new(),
        detail: None,
        hint: None,
    };
    let mut localized_severity = String::new();
    let mut rest = body;
    while let Some((&kind, tail)) = rest.split_first() {
        if kind == 0 {
            break;
        }
        let end = tail.iter().position(|&b| b == 0).unwrap_or(tail.len());
        let value = String::from_utf8_lossy(&tail[..end]).into_owned();
        rest = tail.get(end + 1..).unwrap_or_default();
        match kind {
            b'V' => error.severity = value,
            b'S' => localized_severity = value,
            b'C' => error.code = value,
            b'M' => error.message = value,
            b'D' => error.detail = Some(value),
            b'H' => error.hint = Some(value),
            _ => {}
        }
    }
    if error.severity.is_empty() {
        error.severity = localized_severity;
    }
    error
}

/// Reads a NUL-terminated string from the front of `buf`.
pub(crate) fn read_cstr(buf: &mut Bytes) -> Option<String> {
    let end = buf.iter().position(|&b| b == 0)?;
    let text = String::from_utf8_lossy(&buf[..end]).into_owned();
    buf.advance(end + 1);
    Some(text)
}

/// The columns of a DataRow body, as text (`None` for NULL).
pub(crate) fn parse_data_row(mut body: Bytes) -> Option<Vec<Option<String>>> {
    if body.len() < 2 {
        return None;
    }
    let count = body.get_u16() as usize;
    let mut values = Vec::with_capacity(count.min(body.len() / 4));
    for _ in 0..count {
        if body.len() < 4 {
            return None;
        }
        let len = body.get_i32();
        if len < 0 {
            values.push(None);
            continue;
        }
        let len = len as usize;
        if body.len() < len {
            return None;
        }
        values.push(Some(
            String::from_utf8_lossy(&body.split_to(len)).into_owned(),
        ));
    }
    Some(values)
}

/// The column names of a RowDescription body.
pub(crate) fn parse_row_description(mut body: Bytes) -> Option<Vec<String>> {
    if body.len() < 2 {
        return None;
    }
    let count = body.get_u16() as usize;
    let mut names = Vec::with_capacity(count.min(body.len() / 19));
    for _ in 0..count {
        names.push(read_cstr(&mut body)?);
        if body.len() < 18 {
            return None;
        }
        body.advance(18);
    }
    Some(names)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_split_only_when_complete() {
        let mut buf = BytesMut::from(&b"Z\0\0\0\x05I"[..]);
        buf.extend_from_slice(b"C\0\0\0\x0aSEL");
        let frame = take_frame(&mut buf, usize::MAX).unwrap().unwrap();
        assert_eq!((frame.tag, &frame.body[..]), (b'Z', &b"I"[..]));
        assert!(take_frame(&mut buf, usize::MAX).unwrap().is_none());
        buf.extend_from_slice(b"CT\0");
        let frame = take_frame(&mut buf, usize::MAX).unwrap().unwrap();
        assert_eq!(&frame.body[..], b"SELCT\0");
        assert!(take_frame(&mut BytesMut::from(&b"Z\0\0\0\x02"[..]), usize::MAX).is_err());
        assert!(take_frame(&mut BytesMut::from(&b"R\0\x01\0\0"[..]), 1000).is_err());
    }

    #[test]
    fn error_fields() {
        let body = b"SFEHLER\0VERROR\0C42710\0Mreplication slot \"s\" already exists\0Hdrop it\0\0";
        let e = parse_error_fields(body);
        assert_eq!(e.severity, "ERROR");
        assert_eq!(e.code, "42710");
        assert_eq!(e.hint.as_deref(), Some("drop it"));
        assert_eq!(
            e.to_string(),
            "ERROR 42710: replication slot \"s\" already exists (hint: drop it)"
        );
    }

    #[test]
    fn data_rows_and_descriptions() {
        let row = Bytes::from_static(b"\0\x02\0\0\0\x02ab\xff\xff\xff\xff");
        assert_eq!(parse_data_row(row), Some(vec![Some("ab".to_owned()), None]));
        assert_eq!(
            parse_data_row(Bytes::from_static(b"\0\x02\0\0\0\x09ab")),
            None
        );
        let mut desc = b"\0\x01slot_name\0".to_vec();
        desc.extend_from_slice(&[0; 18]);
        assert_eq!(
            parse_row_description(Bytes::from(desc)),
            Some(vec!["slot_name".to_owned()])
        );
    }
}
