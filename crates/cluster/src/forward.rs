//! Edge-to-edge forwarding: a publish received on one edge reaches the
//! sessions online on other edges over one long-lived stream per edge, many
//! publishes per batch.
//!
//! The sender batches whatever is queued for an edge when the stream is free;
//! the receiver hands each batch to its sessions and acknowledges it, and a
//! QoS 1/2 publisher's acknowledgement waits for that. When an edge cannot be
//! reached its deliveries are dropped and counted: its sessions are gone with
//! it (a persistent session's QoS 1/2 copy is in the store, not here).

use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use futures::Stream;
use parking_lot::Mutex;
use rookery_store::proto::Message;
use tokio::sync::{mpsc, oneshot};
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::{Channel, Endpoint};
use tonic::{Request, Response, Status};

use crate::proto::forward_client::ForwardClient;
use crate::proto::forward_server::{self, ForwardServer};
use crate::proto::{DeliverAck, DeliverBatch, Delivery};

/// How long connecting to another edge may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
/// Deliveries in one batch at most.
const MAX_BATCH: usize = 1024;
/// Payload bytes in one batch at most (a single larger message goes alone),
/// well below the 64 MiB a gRPC message may carry.
const MAX_BATCH_BYTES: usize = 8 * 1024 * 1024;
/// HTTP/2 pings on an idle stream, and how long one may go unanswered
/// before the edge counts as gone (its publishers are not held longer).
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(1);
const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(3);
/// Batches sent and not yet acknowledged on one stream.
const STREAM_WINDOW: usize = 64;

/// Why a stream to another edge ended (its queued deliveries are dropped).
#[derive(Debug, thiserror::Error)]
pub enum LinkFailed {
    /// The edge's address is not a usable `host:port`.
    #[error("bad edge address: {0}")]
    BadAddress(#[source] tonic::transport::Error),
    /// No connection to the edge within the connect timeout.
    #[error("connect: {0}")]
    Connect(#[source] tonic::transport::Error),
    /// The edge did not open the forwarding stream.
    #[error("the edge refused the stream: {}", .0.message())]
    Refused(tonic::Status),
    /// The edge ended the stream (its acknowledgements stopped).
    #[error("the edge closed the stream")]
    ClosedByEdge,
    /// The stream's sending side closed.
    #[error("the stream closed")]
    Closed,
}

/// Where forwarded deliveries go on the receiving edge.
pub trait DeliverySink: Send + Sync + 'static {
    /// Hands one batch to the sessions it names.
    fn deliver(&self, messages: Vec<Message>, deliveries: Vec<Delivery>);
}

/// The gRPC service other edges forward to.
pub fn service<S: DeliverySink>(sink: Arc<S>) -> ForwardServer<ForwardService<S>> {
    ForwardServer::new(ForwardService { sink })
        .max_decoding_message_size(64 * 1024 * 1024)
        .max_encoding_message_size(64 * 1024 * 1024)
}

/// The receiving side of forwarding: hands each batch to the sink and
/// acknowledges it.
pub struct ForwardService<S> {
    sink: Arc<S>,
}

impl<S> std::fmt::Debug for ForwardService<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ForwardService").finish_non_exhaustive()
    }
}

type AckStream = Pin<Box<dyn Stream<Item = Result<DeliverAck, Status>> + Send>>;

#[tonic::async_trait]
impl<S: DeliverySink> forward_server::Forward for ForwardService<S> {
    type DeliverStream = AckStream;

    async fn deliver(
        &self,
        request: Request<tonic::Streaming<DeliverBatch>>,
    ) -> Result<Response<AckStream>, Status> {
        let mut batches = request.into_inner();
        let sink = self.sink.clone();
        let (acks, receiver) = mpsc::channel(STREAM_WINDOW * 2);
        tokio::spawn(async move {
            loop {
                match batches.message().await {
                    Ok(Some(batch)) => {
                        let seq = batch.seq;
                        metrics::counter!("rookery_forward_received_total")
                            .increment(batch.deliveries.len() as u64);
                        sink.deliver(batch.messages, batch.deliveries);
                        if acks.send(Ok(DeliverAck { seq })).await.is_err() {
                            return;
                        }
                    }
                    Ok(None) => return,
                    Err(status) => {
                        tracing::debug!(%status, "a forwarding stream ended");
                        return;
                    }
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(receiver))))
    }
}

/// One publish for one edge: the message and its sessions there.
#[derive(Debug)]
pub struct Outbound {
    /// The publish, once for all its deliveries on that edge.
    pub message: Message,
    /// The sessions on that edge it goes to (each names the message by
    /// index once batched).
    pub deliveries: Vec<Delivery>,
    /// Told once the edge has the deliveries (true) or they were dropped.
    pub done: Option<oneshot::Sender<bool>>,
}

/// Streams to other edges, one per edge, opened on first use.
#[derive(Debug, Clone, Default)]
pub struct Forwarder {
    links: Arc<Mutex<HashMap<String, mpsc::UnboundedSender<Outbound>>>>,
    /// The source address of connections to other edges.
    local_address: Option<IpAddr>,
}

impl Forwarder {
    /// Streams leaving from `local_address` (`None`: the system picks).
    pub fn from_address(local_address: Option<IpAddr>) -> Self {
        Forwarder {
            links: Arc::default(),
            local_address,
        }
    }

    /// Queues a publish for the edge at `address`.
    pub fn send(&self, address: &str, outbound: Outbound) {
        let mut links = self.links.lock();
        let outbound = match links.get(address) {
            Some(link) => match link.send(outbound) {
                Ok(()) => return,
                Err(mpsc::error::SendError(outbound)) => outbound,
            },
            None => outbound,
        };
        let (link, queue) = mpsc::unbounded_channel();
        let _ = link.send(outbound);
        links.insert(address.to_owned(), link);
        tokio::spawn(run_link(
            address.to_owned(),
            self.local_address,
            queue,
            self.links.clone(),
        ));
    }
}

/// Sends one edge's queue, batch by batch, until the stream fails; then
/// drops what is queued and lets the next publish open a new link.
async fn run_link(
    address: String,
    local_address: Option<IpAddr>,
    mut queue: mpsc::UnboundedReceiver<Outbound>,
    links: Arc<Mutex<HashMap<String, mpsc::UnboundedSender<Outbound>>>>,
) {
    let why = match stream_to(&address, local_address, &mut queue).await {
        Ok(()) => "no more publishes".to_owned(),
        Err(why) => why.to_string(),
    };
    links.lock().remove(&address);
    queue.close();
    let mut dropped = 0u64;
    while let Ok(outbound) = queue.try_recv() {
        dropped += outbound.deliveries.len() as u64;
        if let Some(done) = outbound.done {
            let _ = done.send(false);
        }
    }
    if dropped > 0 {
        metrics::counter!("rookery_forward_dropped_total").increment(dropped);
    }
    tracing::warn!(edge = %address, %why, dropped, "forwarding to an edge stopped");
}

/// A batch's sequence number and who waits for its acknowledgement.
type SentBatch = (u64, Vec<oneshot::Sender<bool>>);

/// Sends the queue to the edge at `address` on one stream until the queue
/// closes (`Ok`) or the stream fails; whatever was sent and not yet
/// acknowledged is reported unconfirmed.
async fn stream_to(
    address: &str,
    local_address: Option<IpAddr>,
    queue: &mut mpsc::UnboundedReceiver<Outbound>,
) -> Result<(), LinkFailed> {
    let channel: Channel = Endpoint::from_shared(format!("http://{address}"))
        .map_err(LinkFailed::BadAddress)?
        .connect_timeout(CONNECT_TIMEOUT)
        .tcp_nodelay(true)
        .http2_keep_alive_interval(KEEPALIVE_INTERVAL)
        .keep_alive_timeout(KEEPALIVE_TIMEOUT)
        .keep_alive_while_idle(true)
        .local_address(local_address)
        .connect()
        .await
        .map_err(LinkFailed::Connect)?;
    let (batches, outgoing) = mpsc::channel::<DeliverBatch>(STREAM_WINDOW);
    let mut client = ForwardClient::new(channel)
        .max_decoding_message_size(64 * 1024 * 1024)
        .max_encoding_message_size(64 * 1024 * 1024);
    let mut acks = client
        .deliver(ReceiverStream::new(outgoing))
        .await
        .map_err(LinkFailed::Refused)?
        .into_inner();
    // Done-senders of each batch sent, oldest first; acks come in order.
    let waiting: Arc<Mutex<VecDeque<SentBatch>>> = Arc::default();
    let ack_waiting = waiting.clone();
    let mut acknowledger = tokio::spawn(async move {
        while let Ok(Some(ack)) = acks.message().await {
            let mut waiting = ack_waiting.lock();
            while let Some((seq, _)) = waiting.front() {
                if *seq > ack.seq {
                    break;
                }
                if let Some((_, done)) = waiting.pop_front() {
                    for done in done {
                        let _ = done.send(true);
                    }
                }
            }
        }
    });
    let mut seq = 0u64;
    let result = loop {
        let first = tokio::select! {
            first = queue.recv() => first,
            _ = &mut acknowledger => break Err(LinkFailed::ClosedByEdge),
        };
        let Some(first) = first else {
            break Ok(());
        };
        seq += 1;
        let mut batch = DeliverBatch {
            seq,
            messages: Vec::new(),
            deliveries: Vec::new(),
        };
        let mut done = Vec::new();
        let mut add = |outbound: Outbound, batch: &mut DeliverBatch| {
            let index = u32::try_from(batch.messages.len()).unwrap_or(u32::MAX);
            batch.messages.push(outbound.message);
            for mut delivery in outbound.deliveries {
                delivery.message = index;
                batch.deliveries.push(delivery);
            }
            if let Some(sender) = outbound.done {
                done.push(sender);
            }
        };
        add(first, &mut batch);
        let bytes = |batch: &DeliverBatch| -> usize {
            batch
                .messages
                .iter()
                .map(|m| m.payload.len() + m.topic.len())
                .sum()
        };
        while batch.deliveries.len() < MAX_BATCH && bytes(&batch) < MAX_BATCH_BYTES {
            match queue.try_recv() {
                Ok(outbound) => add(outbound, &mut batch),
                Err(_) => break,
            }
        }
        metrics::counter!("rookery_forward_sent_total").increment(batch.deliveries.len() as u64);
        waiting.lock().push_back((seq, done));
        if batches.send(batch).await.is_err() {
            break Err(LinkFailed::Closed);
        }
    };
    acknowledger.abort();
    // Batches never acknowledged: the edge may or may not have them.
    let mut unconfirmed = 0u64;
    for (_, done) in waiting.lock().drain(..) {
        for done in done {
            unconfirmed += 1;
            let _ = done.send(false);
        }
    }
    if unconfirmed > 0 {
        metrics::counter!("rookery_forward_unconfirmed_total").increment(unconfirmed);
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Collects what is delivered, in order.
    #[derive(Default)]
    struct Collect(Mutex<Vec<(String, bytes::Bytes)>>);

    impl DeliverySink for Collect {
        fn deliver(&self, messages: Vec<Message>, deliveries: Vec<Delivery>) {
            let mut seen = self.0.lock();
            for delivery in deliveries {
                let payload = messages[delivery.message as usize].payload.clone();
                seen.push((delivery.client_id, payload));
            }
        }
    }

    async fn serve(sink: Arc<Collect>) -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap().to_string();
        let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(service(sink))
                .serve_with_incoming(incoming),
        );
        address
    }

    fn outbound(n: u32, clients: &[&str]) -> (Outbound, oneshot::Receiver<bool>) {
        let (done, confirmed) = oneshot::channel();
        let outbound = Outbound {
            message: Message {
                topic: "t".into(),
                payload: bytes::Bytes::from(n.to_string()),
                qos: 1,
                ..Message::default()
            },
            deliveries: clients
                .iter()
                .map(|client| Delivery {
                    client_id: (*client).to_owned(),
                    qos: 1,
                    ..Delivery::default()
                })
                .collect(),
            done: Some(done),
        };
        (outbound, confirmed)
    }

    /// Every publish reaches the other edge once per session, in the order
    /// sent, and each sender is told once its batch is in.
    #[tokio::test]
    async fn publishes_arrive_in_order_and_are_confirmed() {
        let sink = Arc::new(Collect::default());
        let address = serve(sink.clone()).await;
        let forwarder = Forwarder::default();
        let mut confirmations = Vec::new();
        for n in 0..500 {
            let (outbound, confirmed) = outbound(n, &["a", "b"]);
            forwarder.send(&address, outbound);
            confirmations.push(confirmed);
        }
        for confirmed in confirmations {
            let confirmed = tokio::time::timeout(Duration::from_secs(10), confirmed).await;
            assert_eq!(confirmed.ok().and_then(Result::ok), Some(true));
        }
        let seen = sink.0.lock();
        let to_a: Vec<String> = seen
            .iter()
            .filter(|(client, _)| client == "a")
            .map(|(_, payload)| String::from_utf8_lossy(payload).into_owned())
            .collect();
        let expected: Vec<String> = (0..500).map(|n: u32| n.to_string()).collect();
        assert_eq!(to_a, expected);
        assert_eq!(seen.len(), 1000);
    }

    /// An edge that cannot be reached holds no publisher: its deliveries are
    /// dropped and the senders told so.
    #[tokio::test]
    async fn an_unreachable_edge_confirms_nothing_and_holds_no_one() {
        let forwarder = Forwarder::default();
        let (outbound, confirmed) = outbound(1, &["a"]);
        // A port nothing listens on (bound, then released).
        let address = {
            let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            listener.local_addr().unwrap().to_string()
        };
        forwarder.send(&address, outbound);
        let confirmed = tokio::time::timeout(Duration::from_secs(10), confirmed).await;
        assert_eq!(confirmed.ok().and_then(Result::ok), Some(false));
    }

    #[tokio::test]
    async fn a_link_says_why_it_could_not_start() {
        let (_queued, mut queue) = mpsc::unbounded_channel();
        let unreachable = {
            let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            listener.local_addr().unwrap().to_string()
        };
        let failed = stream_to(&unreachable, None, &mut queue).await;
        assert!(matches!(failed, Err(LinkFailed::Connect(_))), "{failed:?}");
        let failed = stream_to("not an address", None, &mut queue).await;
        assert!(
            matches!(failed, Err(LinkFailed::BadAddress(_))),
            "{failed:?}"
        );
    }
}
