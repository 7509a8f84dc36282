//! MQTT over WebSocket (MQTT 5.0 section 6, 3.1.1 section 6): the HTTP
//! upgrade with the `mqtt` subprotocol, and [`WsStream`], which turns the
//! WebSocket's binary messages back into a plain byte stream.
//!
//! Bytes are bytes: an MQTT packet may span several WebSocket frames and one
//! frame may hold several packets [MQTT-6.0.0-2], so the adapter keeps no
//! packet boundaries at all. Text frames end the connection [MQTT-6.0.0-1].
//!
//! A frame or message larger than the largest MQTT packet accepted is
//! refused as soon as its size is known (a frame's header; an unfinished
//! message's fragments as they arrive), so a client cannot make the server
//! hold more than that for it.

use std::fmt;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::Bytes;
use futures::{Sink, Stream};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tokio_tungstenite::tungstenite::http::{HeaderMap, HeaderValue, StatusCode, header};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, WebSocketConfig};
use tokio_tungstenite::tungstenite::{Error as WsError, Message};

/// Subprotocols accepted, best first: `mqtt` is the standard name,
/// `mqttv3.1` what some 3.1 clients still send (Mosquitto accepts both).
const SUBPROTOCOLS: [&str; 2] = ["mqtt", "mqttv3.1"];

/// The WebSocket settings of a listener whose clients send MQTT packets of
/// at most `max_message` bytes: no frame and no message (however it is
/// fragmented) larger than that.
pub(super) fn config(max_message: usize) -> WebSocketConfig {
    WebSocketConfig::default()
        .max_message_size(Some(max_message))
        .max_frame_size(Some(max_message))
}

/// Runs the server side of the WebSocket upgrade over `stream`: the request
/// must be for `path`; the subprotocol chosen is echoed. A request for
/// another path is answered 404, one offering only foreign subprotocols 400.
/// Frames and messages larger than `max_message` bytes end the connection.
pub(super) async fn accept<S>(
    stream: S,
    path: &str,
    max_message: usize,
) -> Result<WsStream<S>, WsError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    #[allow(clippy::result_large_err)] // tungstenite's callback signature
    let check = |request: &Request, mut response: Response| {
        if request.uri().path() != path {
            return Err(refusal(StatusCode::NOT_FOUND));
        }
        match choose_subprotocol(request.headers()) {
            Ok(Some(chosen)) => {
                response.headers_mut().insert(
                    header::SEC_WEBSOCKET_PROTOCOL,
                    HeaderValue::from_static(chosen),
                );
            }
            // A client that names no subprotocol at all is let in: some
            // older ones do not, and nothing else could be meant here.
            Ok(None) => {}
            Err(()) => return Err(refusal(StatusCode::BAD_REQUEST)),
        }
        Ok(response)
    };
    let inner =
        tokio_tungstenite::accept_hdr_async_with_config(stream, check, Some(config(max_message)))
            .await?;
    Ok(WsStream::new(inner))
}

fn refusal(status: StatusCode) -> ErrorResponse {
    let mut response = ErrorResponse::new(None);
    *response.status_mut() = status;
    response
}

/// The subprotocol to answer with: `Ok(None)` when the client offered none,
/// `Err(())` when it offered only ones we do not speak.
fn choose_subprotocol(headers: &HeaderMap) -> Result<Option<&'static str>, ()> {
    let offered: Vec<&str> = headers
        .get_all(header::SEC_WEBSOCKET_PROTOCOL)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|list| list.split(','))
        .map(str::trim)
        .filter(|name| !name.is_empty())
        .collect();
    if offered.is_empty() {
        return Ok(None);
    }
    SUBPROTOCOLS
        .into_iter()
        .find(|ours| offered.contains(ours))
        .map(Some)
        .ok_or(())
}

/// A WebSocket connection read and written as a byte stream.
///
/// Reading yields the payloads of binary messages back to back; ping and
/// pong are answered by tungstenite underneath; a close frame (or the end
/// of the socket) reads as end of file; a text frame is an error and starts
/// the closing handshake. Each write is sent as one binary message (it is
/// buffered by tungstenite until a flush or until its buffer fills).
pub(super) struct WsStream<S> {
    inner: WebSocketStream<S>,
    /// The unread rest of the last binary message.
    pending: Bytes,
    /// No more messages will be read: closed by the peer, or failed.
    read_done: bool,
}

impl<S> fmt::Debug for WsStream<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WsStream")
            .field("pending", &self.pending.len())
            .field("read_done", &self.read_done)
            .finish_non_exhaustive()
    }
}

impl<S> WsStream<S>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    pub(super) fn new(inner: WebSocketStream<S>) -> Self {
        WsStream {
            inner,
            pending: Bytes::new(),
            read_done: false,
        }
    }

    /// Best effort: queue a close frame and try to send it now. The caller
    /// reports an error, after which the connection is dropped anyway.
    fn start_close(&mut self, cx: &mut Context<'_>, code: CloseCode, reason: &'static str) {
        let mut inner = Pin::new(&mut self.inner);
        if let Poll::Ready(Ok(())) = inner.as_mut().poll_ready(cx) {
            let frame = CloseFrame {
                code,
                reason: reason.into(),
            };
            if inner
                .as_mut()
                .start_send(Message::Close(Some(frame)))
                .is_ok()
            {
                let _ = inner.poll_flush(cx);
            }
        }
    }
}

/// tungstenite's errors as the I/O errors a byte stream has.
fn io_error(error: WsError) -> io::Error {
    match error {
        WsError::Io(e) => e,
        WsError::ConnectionClosed | WsError::AlreadyClosed => {
            io::Error::new(io::ErrorKind::BrokenPipe, "WebSocket closed")
        }
        other => io::Error::new(io::ErrorKind::InvalidData, other),
    }
}

impl<S> AsyncRead for WsStream<S>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        loop {
            if !this.pending.is_empty() {
                let n = this.pending.len().min(buf.remaining());
                buf.put_slice(&this.pending.split_to(n));
                return Poll::Ready(Ok(()));
            }
            if this.read_done || buf.remaining() == 0 {
                return Poll::Ready(Ok(()));
            }
            match ready!(Pin::new(&mut this.inner).poll_next(cx)) {
                // An empty message leaves `pending` empty: read on.
                Some(Ok(Message::Binary(data))) => this.pending = data,
                Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_))) => {}
                Some(Ok(Message::Close(_))) | None => this.read_done = true,
                Some(Ok(Message::Text(_))) => {
                    this.read_done = true;
                    this.start_close(cx, CloseCode::Unsupported, "MQTT needs binary frames");
                    return Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        "text frame on an MQTT WebSocket",
                    )));
                }
                Some(Err(e)) => {
                    this.read_done = true;
                    if let WsError::Capacity(_) = e {
                        // A frame or message over the limit: say so (1009).
                        this.start_close(
                            cx,
                            CloseCode::Size,
                            "larger than the maximum packet size",
                        );
                    }
                    return Poll::Ready(Err(io_error(e)));
                }
            }
        }
    }
}

impl<S> AsyncWrite for WsStream<S>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        if buf.is_empty() {
            return Poll::Ready(Ok(0));
        }
        let mut inner = Pin::new(&mut self.get_mut().inner);
        ready!(inner.as_mut().poll_ready(cx)).map_err(io_error)?;
        inner
            .start_send(Message::Binary(Bytes::copy_from_slice(buf)))
            .map_err(io_error)?;
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner)
            .poll_flush(cx)
            .map_err(io_error)
    }

    /// Sends a close frame, then shuts the socket's write side.
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(Pin::new(&mut this.inner).poll_close(cx)).map_err(io_error)?;
        Pin::new(this.inner.get_mut()).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    use super::*;
    use futures::SinkExt;
    use futures::StreamExt;
    use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};
    use tokio_tungstenite::tungstenite::protocol::Role;

    /// A server-side adapter and the raw client WebSocket talking to it.
    async fn pair() -> (WsStream<DuplexStream>, WebSocketStream<DuplexStream>) {
        pair_with(None).await
    }

    async fn pair_with(
        config: Option<WebSocketConfig>,
    ) -> (WsStream<DuplexStream>, WebSocketStream<DuplexStream>) {
        let (server, client) = tokio::io::duplex(64 * 1024);
        let server = WebSocketStream::from_raw_socket(server, Role::Server, config).await;
        let client = WebSocketStream::from_raw_socket(client, Role::Client, None).await;
        (WsStream::new(server), client)
    }

    fn binary(bytes: &[u8]) -> Message {
        Message::Binary(Bytes::copy_from_slice(bytes))
    }

    #[tokio::test]
    async fn a_packet_split_across_frames_reads_whole() {
        let (mut server, mut client) = pair().await;
        // PINGREQ then a 4-byte PUBLISH body, cut at awkward places.
        client.send(binary(&[0xc0])).await.unwrap();
        client.send(binary(&[0x00, 0x30])).await.unwrap();
        client.send(binary(&[])).await.unwrap();
        client
            .send(binary(&[0x04, 0x00, 0x01, b't', b'x']))
            .await
            .unwrap();
        let mut got = [0u8; 8];
        server.read_exact(&mut got).await.unwrap();
        assert_eq!(got, [0xc0, 0x00, 0x30, 0x04, 0x00, 0x01, b't', b'x']);
    }

    #[tokio::test]
    async fn several_packets_in_one_frame_read_in_order_with_small_buffers() {
        let (mut server, mut client) = pair().await;
        let packets = [0xc0, 0x00, 0xc0, 0x00, 0xe0, 0x00];
        client.send(binary(&packets)).await.unwrap();
        let mut got = Vec::new();
        let mut two = [0u8; 2];
        for _ in 0..3 {
            server.read_exact(&mut two).await.unwrap();
            got.extend_from_slice(&two);
        }
        assert_eq!(got, packets);
    }

    #[tokio::test]
    async fn pings_are_invisible_and_answered() {
        let (mut server, mut client) = pair().await;
        client
            .send(Message::Ping(Bytes::from_static(b"hi")))
            .await
            .unwrap();
        client.send(binary(&[0xd0, 0x00])).await.unwrap();
        let mut got = [0u8; 2];
        server.read_exact(&mut got).await.unwrap();
        assert_eq!(got, [0xd0, 0x00]);
        // The pong goes out with the server's next write.
        server.write_all(&[0x20, 0x02, 0x00, 0x00]).await.unwrap();
        server.flush().await.unwrap();
        assert_eq!(
            client.next().await.unwrap().unwrap(),
            Message::Pong(Bytes::from_static(b"hi"))
        );
    }

    #[tokio::test]
    async fn each_write_is_one_binary_message() {
        let (mut server, mut client) = pair().await;
        server.write_all(&[0x20, 0x02, 0x00, 0x00]).await.unwrap();
        server.write_all(&[0xd0, 0x00]).await.unwrap();
        server.flush().await.unwrap();
        assert_eq!(
            client.next().await.unwrap().unwrap(),
            binary(&[0x20, 0x02, 0x00, 0x00])
        );
        assert_eq!(client.next().await.unwrap().unwrap(), binary(&[0xd0, 0x00]));
    }

    #[tokio::test]
    async fn a_close_frame_reads_as_end_of_file() {
        let (mut server, mut client) = pair().await;
        client.send(binary(&[0xe0, 0x00])).await.unwrap();
        client.close(None).await.unwrap();
        let mut all = Vec::new();
        server.read_to_end(&mut all).await.unwrap();
        assert_eq!(all, [0xe0, 0x00]);
    }

    #[tokio::test]
    async fn a_text_frame_is_an_error_and_closes() {
        // [MQTT-6.0.0-1] data not sent in binary frames closes the connection.
        let (mut server, mut client) = pair().await;
        client.send(Message::text("CONNECT")).await.unwrap();
        let mut buf = [0u8; 8];
        let err = server.read(&mut buf).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
        match client.next().await.unwrap().unwrap() {
            Message::Close(Some(frame)) => assert_eq!(frame.code, CloseCode::Unsupported),
            other => panic!("expected a close frame, got {other:?}"),
        }
        // Later reads see the end, not another error.
        assert_eq!(server.read(&mut buf).await.unwrap(), 0);
    }

    /// A frame announcing more than the limit is refused from its header,
    /// before its payload is read, with close code 1009.
    #[tokio::test]
    async fn a_frame_over_the_limit_is_refused_at_its_header() {
        let (mut server, client) = pair_with(Some(config(1024))).await;
        let mut raw = client.into_inner();
        // FIN + binary, masked, 64-bit length 10 MiB, mask key 0; no payload.
        let mut header = vec![0x82, 0xff];
        header.extend_from_slice(&(10u64 << 20).to_be_bytes());
        header.extend_from_slice(&[0, 0, 0, 0]);
        raw.write_all(&header).await.unwrap();
        let mut buf = [0u8; 8];
        let err = server.read(&mut buf).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
        // The close frame: 0x88, length, then code 1009.
        let mut close = [0u8; 4];
        raw.read_exact(&mut close).await.unwrap();
        assert_eq!(close[0], 0x88);
        assert_eq!(u16::from_be_bytes([close[2], close[3]]), 1009);
    }

    /// Fragments of one message count together: an unfinished message over
    /// the limit is refused while it is still arriving.
    #[tokio::test]
    async fn an_unfinished_message_over_the_limit_is_refused() {
        let (mut server, mut client) = pair_with(Some(config(1024))).await;
        let fragment = |first: bool, payload: Vec<u8>| {
            use tokio_tungstenite::tungstenite::protocol::frame::{
                Frame,
                coding::{Data, OpCode},
            };
            let opcode = if first {
                OpCode::Data(Data::Binary)
            } else {
                OpCode::Data(Data::Continue)
            };
            Message::Frame(Frame::message(payload, opcode, false))
        };
        client.send(fragment(true, vec![0x30; 600])).await.unwrap();
        client.send(fragment(false, vec![0; 600])).await.unwrap();
        let mut buf = [0u8; 8];
        let err = server.read(&mut buf).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
    }

    #[tokio::test]
    async fn shutdown_sends_a_close_frame() {
        let (mut server, mut client) = pair().await;
        server.shutdown().await.unwrap();
        assert!(matches!(
            client.next().await.unwrap().unwrap(),
            Message::Close(_)
        ));
    }

    fn offered(values: &[&str]) -> HeaderMap {
        let mut headers = HeaderMap::new();
        for value in values {
            headers.append(
                header::SEC_WEBSOCKET_PROTOCOL,
                HeaderValue::from_str(value).unwrap(),
            );
        }
        headers
    }

    #[test]
    fn subprotocol_choice() {
        assert_eq!(choose_subprotocol(&offered(&[])), Ok(None));
        assert_eq!(choose_subprotocol(&offered(&["mqtt"])), Ok(Some("mqtt")));
        assert_eq!(
            choose_subprotocol(&offered(&["mqttv3.1"])),
            Ok(Some("mqttv3.1"))
        );
        assert_eq!(
            choose_subprotocol(&offered(&["mqttv3.1, mqtt"])),
            Ok(Some("mqtt"))
        );
        assert_eq!(
            choose_subprotocol(&offered(&["chat", "mqtt"])),
            Ok(Some("mqtt"))
        );
        assert_eq!(choose_subprotocol(&offered(&["chat, superchat"])), Err(()));
    }
}
