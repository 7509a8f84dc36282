//! MQTT over WebSocket from the client's side (MQTT 5.0 section 6): the
//! handshake offering the `mqtt` subprotocol, and [`WsIo`], which reads and
//! writes a WebSocket as the byte stream MQTT expects.
//!
//! The broker has its own server-side adapter (`crates/broker`); this one is
//! for whatever talks to a broker from outside: the tests' raw client and
//! rookery-bench.

use std::fmt;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::Bytes;
use futures::{SinkExt, StreamExt};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::handshake::client::{Request, Response};
use tokio_tungstenite::tungstenite::http::{HeaderValue, header};
use tokio_tungstenite::tungstenite::{Error as WsError, Message};

/// A WebSocket upgrade request for `url` (`ws://host:port/mqtt`) that offers
/// the `mqtt` subprotocol [MQTT-6.0.0-3].
pub fn mqtt_ws_request(url: &str) -> Result<Request, WsError> {
    let mut request = url.into_client_request()?;
    request.headers_mut().insert(
        header::SEC_WEBSOCKET_PROTOCOL,
        HeaderValue::from_static("mqtt"),
    );
    Ok(request)
}

/// Runs the client side of the WebSocket handshake for `url` over `stream`
/// (TCP, or TLS for `wss`), offering the `mqtt` subprotocol; returns the
/// WebSocket as a byte stream and the server's answer (whose subprotocol a
/// test may check).
pub async fn ws_connect<S>(stream: S, url: &str) -> Result<(WsIo<S>, Response), WsError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let (socket, response) = tokio_tungstenite::client_async(mqtt_ws_request(url)?, stream).await?;
    Ok((WsIo::new(socket), response))
}

/// A WebSocket as a byte stream. Reads return the payloads of binary
/// messages back to back, with no boundaries: an MQTT packet may span
/// messages and a message may hold several packets [MQTT-6.0.0-2]. A close
/// message, or the end of the socket, reads as the end of the stream; a
/// text message is an error [MQTT-6.0.0-1]; pings are answered by
/// tungstenite underneath. Each write is one binary message, sent on flush.
pub struct WsIo<S> {
    socket: WebSocketStream<S>,
    /// What the last binary message still holds for the reader.
    unread: Bytes,
    /// Nothing more will be read: the peer closed, or reading failed.
    at_end: bool,
}

impl<S> fmt::Debug for WsIo<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "WsIo({} bytes unread", self.unread.len())?;
        f.write_str(if self.at_end { ", at end)" } else { ")" })
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> WsIo<S> {
    /// Reads and writes `socket`, a WebSocket whose handshake is done.
    pub fn new(socket: WebSocketStream<S>) -> WsIo<S> {
        WsIo {
            socket,
            unread: Bytes::new(),
            at_end: false,
        }
    }

    /// The payload of the next binary message; `None` at the end of the
    /// WebSocket.
    fn poll_payload(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<Option<Bytes>>> {
        loop {
            let message = match ready!(self.socket.poll_next_unpin(cx)) {
                None => return Poll::Ready(Ok(None)),
                Some(Err(error)) => return Poll::Ready(Err(io::Error::other(error))),
                Some(Ok(message)) => message,
            };
            let payload = match message {
                Message::Binary(payload) => Some(payload),
                Message::Close(_) => None,
                Message::Text(_) => {
                    return Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        "a text message: MQTT travels in binary messages only",
                    )));
                }
                Message::Ping(_) | Message::Pong(_) | Message::Frame(_) => continue,
            };
            return Poll::Ready(Ok(payload));
        }
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for WsIo<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        // An empty binary message carries nothing: read on.
        while this.unread.is_empty() && !this.at_end {
            match ready!(this.poll_payload(cx)) {
                Ok(Some(payload)) => this.unread = payload,
                Ok(None) => this.at_end = true,
                Err(error) => {
                    this.at_end = true;
                    return Poll::Ready(Err(error));
                }
            }
        }
        let n = this.unread.len().min(buf.remaining());
        buf.put_slice(&this.unread.split_to(n));
        Poll::Ready(Ok(()))
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for WsIo<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let socket = &mut self.get_mut().socket;
        // An empty write would reach the peer as nothing: send no message.
        if !buf.is_empty() {
            ready!(socket.poll_ready_unpin(cx)).map_err(io::Error::other)?;
            let message = Message::Binary(Bytes::copy_from_slice(buf));
            socket.start_send_unpin(message).map_err(io::Error::other)?;
        }
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let socket = &mut self.get_mut().socket;
        socket.poll_flush_unpin(cx).map_err(io::Error::other)
    }

    /// Sends a close message and flushes it.
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let socket = &mut self.get_mut().socket;
        socket.poll_close_unpin(cx).map_err(io::Error::other)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};
    use tokio_tungstenite::tungstenite::handshake::server::{
        Request as ServerRequest, Response as ServerResponse,
    };

    use super::*;

    /// A client [`WsIo`] connected through [`ws_connect`] to a server that
    /// echoes the offered subprotocol, and that server's WebSocket.
    async fn connected() -> (WsIo<DuplexStream>, Response, WebSocketStream<DuplexStream>) {
        let (near, far) = tokio::io::duplex(64 * 1024);
        #[allow(clippy::result_large_err)] // tungstenite's callback signature
        let echo_subprotocol = |request: &ServerRequest, mut response: ServerResponse| {
            if let Some(offered) = request.headers().get(header::SEC_WEBSOCKET_PROTOCOL) {
                let offered = offered.clone();
                response
                    .headers_mut()
                    .insert(header::SEC_WEBSOCKET_PROTOCOL, offered);
            }
            Ok(response)
        };
        let server = tokio::spawn(tokio_tungstenite::accept_hdr_async(far, echo_subprotocol));
        let (client, response) = ws_connect(near, "ws://localhost/mqtt").await.unwrap();
        (client, response, server.await.unwrap().unwrap())
    }

    #[tokio::test]
    async fn the_handshake_offers_the_mqtt_subprotocol() {
        let (_client, response, _server) = connected().await;
        assert_eq!(
            response.headers().get(header::SEC_WEBSOCKET_PROTOCOL),
            Some(&HeaderValue::from_static("mqtt"))
        );
    }

    #[tokio::test]
    async fn bytes_read_back_to_back_whatever_the_message_boundaries() {
        // [MQTT-6.0.0-2] a packet may span messages, a message may hold
        // several packets; pings and empty messages carry no bytes.
        let (mut client, _, mut server) = connected().await;
        for part in [
            &[0x30, 0x04][..],
            &[],
            &[0x00, 0x01, b't'],
            &[b'x', 0xd0, 0x00],
        ] {
            server
                .send(Message::Binary(Bytes::copy_from_slice(part)))
                .await
                .unwrap();
        }
        server.send(Message::Ping(Bytes::new())).await.unwrap();
        server.close(None).await.unwrap();
        let mut all = Vec::new();
        client.read_to_end(&mut all).await.unwrap();
        assert_eq!(all, [0x30, 0x04, 0x00, 0x01, b't', b'x', 0xd0, 0x00]);
    }

    #[tokio::test]
    async fn every_write_is_one_binary_message_sent_on_flush() {
        let (mut client, _, mut server) = connected().await;
        client.write_all(&[0xc0, 0x00]).await.unwrap();
        client.write_all(&[0xe0, 0x00]).await.unwrap();
        client.flush().await.unwrap();
        for expected in [[0xc0, 0x00], [0xe0, 0x00]] {
            let message = server.next().await.unwrap().unwrap();
            assert_eq!(message, Message::Binary(Bytes::copy_from_slice(&expected)));
        }
        client.shutdown().await.unwrap();
        assert!(matches!(
            server.next().await.unwrap().unwrap(),
            Message::Close(_)
        ));
    }

    #[tokio::test]
    async fn a_text_message_fails_the_read_and_ends_the_stream() {
        // [MQTT-6.0.0-1] MQTT is carried in binary messages only.
        let (mut client, _, mut server) = connected().await;
        server.send(Message::text("PINGRESP")).await.unwrap();
        let mut buf = [0u8; 4];
        let error = client.read(&mut buf).await.unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::InvalidData);
        assert_eq!(client.read(&mut buf).await.unwrap(), 0);
    }
}
