//! Edge-to-edge forwarding: a publish received on one edge reaches the
//! sessions online on other edges over long-lived streams, one per lane
//! ([`ForwardSettings::lanes`]) and edge, many publishes per batch. A
//! publisher's publishes all take one lane, which keeps their order.
//!
//! The sender batches whatever is queued for a link when the stream is free;
//! the receiver hands each batch to its sessions and acknowledges it, and a
//! QoS 1/2 publisher's acknowledgement waits for that. When an edge cannot be
//! reached its deliveries are dropped and counted: its sessions are gone with
//! it (a persistent session's QoS 1/2 copy is in the store, not here).
//!
//! What one link holds, queued or sent and not yet acknowledged, is bounded
//! in bytes (its share of [`ForwardSettings::queue_bytes`]). Its publishers are
//! paused before it is full ([`Congested`]), and the receiving edge reads
//! no further batch while the sessions it delivered to are full, so a slow
//! subscriber on another edge holds its publishers back as one on their own
//! edge does. A publish that would still go over is not queued: a QoS 1/2
//! publisher waiting for it is told it was not delivered (it is not
//! acknowledged, and sends it again), anything else (QoS 0) is dropped; both
//! are counted in `rookery_forward_queue_full_total{outcome}`.

use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use futures::Stream;
use parking_lot::Mutex;
use rookery_store::ClusterSecurity;
use rookery_store::proto::Message;
use tokio::sync::{mpsc, oneshot};
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;
use tonic::{Request, Response, Status};

use crate::link_budget::{Congested, LinkBudget, Reserved};
use crate::proto::forward_client::ForwardClient;
use crate::proto::forward_server::{self, ForwardServer};
use crate::proto::{DeliverAck, DeliverBatch, Delivery, InspectRequest, InspectResponse};

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
/// What a link may hold for one edge when nothing else is configured.
pub const DEFAULT_QUEUE_BYTES: usize = 64 * 1024 * 1024;
/// What a message costs in a link besides its variable parts (the protobuf
/// message, its place in the queue), and each of its deliveries.
const MESSAGE_OVERHEAD: usize = 96;
const DELIVERY_OVERHEAD: usize = 48;

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

/// Resolves once the sessions a batch went to have room again (or waited
/// as long as they may): the stream reads its next batch then.
pub type Holdback = Pin<Box<dyn std::future::Future<Output = ()> + Send>>;

/// Where forwarded deliveries go on the receiving edge.
pub trait DeliverySink: Send + Sync + 'static {
    /// Hands one batch to the sessions it names; with a [`Holdback`] when some of
    /// them are full, so that the sender's publishers are held back.
    fn deliver(&self, messages: Vec<Message>, deliveries: Vec<Delivery>) -> Option<Holdback>;

    /// What the edge knows of a client's connection (`Forward.Inspect`);
    /// by default nothing (not online here).
    fn inspect(&self, client_id: &str) -> InspectResponse {
        let _ = client_id;
        InspectResponse::default()
    }
}

/// Asks the edge whose forwarding service is at `address` what it knows of
/// a client's connection, within `timeout`.
pub async fn inspect(
    address: &str,
    settings: &ForwardSettings,
    client_id: &str,
    timeout: Duration,
) -> Result<InspectResponse, String> {
    let endpoint = settings
        .security
        .endpoint(address)
        .map_err(|error| format!("bad edge address {address:?}: {error}"))?
        .connect_timeout(CONNECT_TIMEOUT)
        .timeout(timeout)
        .local_address(settings.local_address);
    let asked = async {
        let channel = endpoint
            .connect()
            .await
            .map_err(|error| format!("cannot reach the edge at {address}: {error}"))?;
        ForwardClient::new(channel)
            .inspect(InspectRequest {
                client_id: client_id.to_owned(),
            })
            .await
            .map(tonic::Response::into_inner)
            .map_err(|status| format!("the edge at {address} did not answer: {}", status.message()))
    };
    tokio::time::timeout(timeout, asked)
        .await
        .map_err(|_| format!("the edge at {address} did not answer within {timeout:?}"))?
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
                        let holdback = sink.deliver(batch.messages, batch.deliveries);
                        // Acknowledged at once (its QoS 1/2 publishers are
                        // answered), but the next batch waits for the room:
                        // the sender's link fills and pauses its publishers.
                        if acks.send(Ok(DeliverAck { seq })).await.is_err() {
                            return;
                        }
                        if let Some(holdback) = holdback {
                            holdback.await;
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

    async fn inspect(
        &self,
        request: Request<InspectRequest>,
    ) -> Result<Response<InspectResponse>, Status> {
        Ok(Response::new(
            self.sink.inspect(&request.get_ref().client_id),
        ))
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
    /// Which of the edge's streams carries it (modulo their number): the
    /// same for every publish of one publisher, whose order it keeps
    /// (MQTT-4.6.0-6), while the streams of different publishers are
    /// received in parallel.
    pub lane: u64,
}

impl Outbound {
    /// What it holds of a link's byte budget: the message's variable parts
    /// and each delivery's, with a fixed cost for each.
    pub fn size(&self) -> usize {
        let message = &self.message;
        let deliveries: usize = self
            .deliveries
            .iter()
            .map(|delivery| {
                DELIVERY_OVERHEAD
                    + delivery.client_id.len()
                    + delivery.shared_group.len()
                    + 4 * delivery.subscription_ids.len()
            })
            .sum();
        MESSAGE_OVERHEAD
            + message.topic.len()
            + message.payload.len()
            + message.properties.len()
            + message.origin_client_id.len()
            + deliveries
    }

    /// Tells whoever waits for it that it did not reach the edge.
    fn fail(self) {
        if let Some(done) = self.done {
            let _ = done.send(false);
        }
    }
}

/// How the streams to other edges are made.
#[derive(Debug, Clone)]
pub struct ForwardSettings {
    /// The source address of connections to other edges (`None`: the
    /// system picks).
    pub local_address: Option<IpAddr>,
    /// TLS for the streams (the cluster's certificate and CA).
    pub security: ClusterSecurity,
    /// The bytes one edge's links may hold together, queued or sent and not
    /// yet acknowledged ([`Outbound::size`]), shared evenly by its lanes. A
    /// publish that finds its lane empty is taken whatever its size.
    pub queue_bytes: usize,
    /// Streams to each edge ([`Outbound::lane`]): one receiving edge's
    /// stream is read by one task, which bounded cross-edge throughput at
    /// what one core hands to sessions.
    pub lanes: usize,
}

impl Default for ForwardSettings {
    fn default() -> Self {
        ForwardSettings {
            local_address: None,
            security: ClusterSecurity::default(),
            queue_bytes: DEFAULT_QUEUE_BYTES,
            lanes: default_lanes(),
        }
    }
}

/// One lane per core, at most four: more streams than cores to receive them
/// only add connections.
pub fn default_lanes() -> usize {
    std::thread::available_parallelism().map_or(1, |cores| cores.get().min(4))
}

/// Streams to other edges, `lanes` per edge, each opened on first use.
#[derive(Debug, Clone, Default)]
pub struct Forwarder {
    links: Links,
    settings: Arc<ForwardSettings>,
}

/// The way into one edge's stream, and what it holds.
#[derive(Debug, Clone)]
struct Link {
    queue: mpsc::UnboundedSender<Queued>,
    budget: LinkBudget,
}

/// A publish in a link, with its share of the budget.
#[derive(Debug)]
struct Queued {
    outbound: Outbound,
    reserved: Reserved,
}

/// Each edge's links by lane; `None` until a publish needs the lane.
type Links = Arc<Mutex<HashMap<String, Vec<Option<Link>>>>>;

impl Forwarder {
    /// Streams made as `settings` say.
    pub fn new(settings: ForwardSettings) -> Self {
        Forwarder {
            links: Arc::default(),
            settings: Arc::new(settings),
        }
    }

    /// Queues a publish for the edge at `address`; refused (or, without a
    /// publisher waiting, dropped) when that edge's link is full. The link
    /// is returned when its publishers should pause.
    pub fn send(&self, address: &str, outbound: Outbound) -> Option<Congested> {
        let lanes = self.settings.lanes.max(1);
        let lane = usize::try_from(outbound.lane % lanes as u64).unwrap_or(0);
        let mut links = self.links.lock();
        let edge = match links.get_mut(address) {
            Some(edge) => edge,
            None => links
                .entry(address.to_owned())
                .or_insert_with(|| vec![None; lanes]),
        };
        let link = match &edge[lane] {
            Some(link) if !link.queue.is_closed() => link.clone(),
            _ => {
                let link = self.open(address, lane);
                edge[lane] = Some(link.clone());
                link
            }
        };
        drop(links);
        let Some(reserved) = link.budget.reserve(outbound.size()) else {
            over_cap(address, outbound, self.settings.queue_bytes);
            return link.budget.congested();
        };
        if let Err(mpsc::error::SendError(queued)) = link.queue.send(Queued { outbound, reserved })
        {
            // The link ended between the look-up and the send.
            metrics::counter!("rookery_forward_dropped_total")
                .increment(queued.outbound.deliveries.len() as u64);
            queued.outbound.fail();
            return None;
        }
        link.budget.congested()
    }

    /// Starts the task of a new link to `address` for `lane`.
    fn open(&self, address: &str, lane: usize) -> Link {
        let (queue, receiver) = mpsc::unbounded_channel();
        let budget = LinkBudget::new(self.settings.queue_bytes / self.settings.lanes.max(1));
        tokio::spawn(run_link(
            Lane {
                address: address.to_owned(),
                lane,
            },
            self.settings.clone(),
            receiver,
            self.links.clone(),
            budget.clone(),
        ));
        Link { queue, budget }
    }
}

/// Which link a task serves.
#[derive(Debug)]
struct Lane {
    address: String,
    lane: usize,
}

/// A publish that does not fit in a full link: the publisher waiting for it
/// is told it did not get there (it is not acknowledged), or it is dropped.
fn over_cap(address: &str, outbound: Outbound, cap: usize) {
    let deliveries = outbound.deliveries.len() as u64;
    let outcome = if outbound.done.is_some() {
        "refused"
    } else {
        "dropped"
    };
    metrics::counter!("rookery_forward_queue_full_total", "outcome" => outcome)
        .increment(deliveries);
    if rookery_store::once::first_time("rookery_forward_queue_full_total", outcome) {
        tracing::warn!(
            edge = %address,
            cap,
            outcome,
            "the forwarding queue to an edge is full: QoS 1/2 publishes are refused (not \
             acknowledged), others dropped (logged once; counted in \
             rookery_forward_queue_full_total)"
        );
    } else {
        tracing::debug!(edge = %address, outcome, "the forwarding queue to an edge is full");
    }
    outbound.fail();
}

/// Sends one edge's queue, batch by batch, until the stream fails; then
/// drops what is queued and lets the next publish open a new link.
async fn run_link(
    Lane { address, lane }: Lane,
    settings: Arc<ForwardSettings>,
    mut queue: mpsc::UnboundedReceiver<Queued>,
    links: Links,
    budget: LinkBudget,
) {
    let why = match stream_to(&address, &settings, &mut queue).await {
        Ok(()) => "no more publishes".to_owned(),
        Err(why) => why.to_string(),
    };
    // The entry is this link's: a link is only replaced once its queue is
    // closed, which happens here, after the entry is gone.
    {
        let mut links = links.lock();
        if let Some(edge) = links.get_mut(&address) {
            if let Some(entry) = edge.get_mut(lane) {
                *entry = None;
            }
            if edge.iter().all(Option::is_none) {
                links.remove(&address);
            }
        }
    }
    queue.close();
    budget.close();
    let mut dropped = 0u64;
    while let Ok(queued) = queue.try_recv() {
        dropped += queued.outbound.deliveries.len() as u64;
        queued.outbound.fail();
    }
    if dropped > 0 {
        metrics::counter!("rookery_forward_dropped_total").increment(dropped);
    }
    tracing::warn!(edge = %address, lane, %why, dropped, "forwarding to an edge stopped");
}

/// A batch's sequence number, who waits for its acknowledgement, its share
/// of the link's budget (given back with the acknowledgement) and when it
/// was handed to the stream.
type SentBatch = (
    u64,
    Vec<oneshot::Sender<bool>>,
    Vec<Reserved>,
    std::time::Instant,
);

/// Sends the queue to the edge at `address` on one stream until the queue
/// closes (`Ok`) or the stream fails; whatever was sent and not yet
/// acknowledged is reported unconfirmed.
async fn stream_to(
    address: &str,
    settings: &ForwardSettings,
    queue: &mut mpsc::UnboundedReceiver<Queued>,
) -> Result<(), LinkFailed> {
    let channel: Channel = settings
        .security
        .endpoint(address)
        .map_err(LinkFailed::BadAddress)?
        .connect_timeout(CONNECT_TIMEOUT)
        .tcp_nodelay(true)
        .http2_keep_alive_interval(KEEPALIVE_INTERVAL)
        .keep_alive_timeout(KEEPALIVE_TIMEOUT)
        .keep_alive_while_idle(true)
        .local_address(settings.local_address)
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
    let batch_duration = metrics::histogram!("rookery_forward_batch_duration_seconds");
    let batch_deliveries = metrics::histogram!("rookery_forward_batch_deliveries");
    let sent = metrics::counter!("rookery_forward_sent_total");
    let mut acknowledger = tokio::spawn(async move {
        while let Ok(Some(ack)) = acks.message().await {
            let mut waiting = ack_waiting.lock();
            while let Some((seq, _, _, _)) = waiting.front() {
                if *seq > ack.seq {
                    break;
                }
                if let Some((_, done, _reserved, sent_at)) = waiting.pop_front() {
                    batch_duration.record(sent_at.elapsed().as_secs_f64());
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
        let (batch, done, reserved) = fill_batch(seq, first, queue);
        sent.increment(batch.deliveries.len() as u64);
        batch_deliveries.record(batch.deliveries.len() as f64);
        waiting
            .lock()
            .push_back((seq, done, reserved, std::time::Instant::now()));
        if batches.send(batch).await.is_err() {
            break Err(LinkFailed::Closed);
        }
    };
    acknowledger.abort();
    // Batches never acknowledged: the edge may or may not have them.
    let mut unconfirmed = 0u64;
    for (_, done, _reserved, _) in waiting.lock().drain(..) {
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

/// Batch `seq`: `first` and whatever else is queued now, up to the batch
/// limits; with who waits for it and its share of the budget.
fn fill_batch(
    seq: u64,
    first: Queued,
    queue: &mut mpsc::UnboundedReceiver<Queued>,
) -> (DeliverBatch, Vec<oneshot::Sender<bool>>, Vec<Reserved>) {
    // Sized for what is queued now: growing a batch of a thousand
    // publishes step by step copies it about ten times.
    let expected = (queue.len() + 1).min(MAX_BATCH);
    let mut batch = DeliverBatch {
        seq,
        messages: Vec::with_capacity(expected),
        deliveries: Vec::with_capacity(expected),
    };
    let mut done = Vec::with_capacity(expected);
    let mut reserved = Vec::with_capacity(expected);
    let mut bytes = 0usize;
    let mut next = Some(first);
    while let Some(Queued {
        outbound,
        reserved: share,
    }) = next.take()
    {
        let index = u32::try_from(batch.messages.len()).unwrap_or(u32::MAX);
        bytes += outbound.message.payload.len() + outbound.message.topic.len();
        batch.messages.push(outbound.message);
        for mut delivery in outbound.deliveries {
            delivery.message = index;
            batch.deliveries.push(delivery);
        }
        done.extend(outbound.done);
        reserved.push(share);
        if batch.deliveries.len() < MAX_BATCH && bytes < MAX_BATCH_BYTES {
            next = queue.try_recv().ok();
        }
    }
    (batch, done, reserved)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Collects what is delivered, in order.
    #[derive(Default)]
    struct Collect(Mutex<Vec<(String, bytes::Bytes)>>);

    impl DeliverySink for Collect {
        fn deliver(&self, messages: Vec<Message>, deliveries: Vec<Delivery>) -> Option<Holdback> {
            let mut seen = self.0.lock();
            for delivery in deliveries {
                let payload = messages[delivery.message as usize].payload.clone();
                seen.push((delivery.client_id, payload));
            }
            None
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
            lane: 0,
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

    /// Publishes on different lanes go on links of their own, and each
    /// lane keeps its order (a publisher's publishes all take one lane).
    #[tokio::test]
    async fn each_lane_is_a_link_of_its_own_and_keeps_its_order() {
        let sink = Arc::new(Collect::default());
        let address = serve(sink.clone()).await;
        let forwarder = Forwarder::new(ForwardSettings {
            lanes: 2,
            ..ForwardSettings::default()
        });
        let mut confirmations = Vec::new();
        for n in 0..400 {
            let (mut outbound, confirmed) = outbound(n, &[if n % 2 == 0 { "even" } else { "odd" }]);
            outbound.lane = u64::from(n % 2) + 2;
            forwarder.send(&address, outbound);
            confirmations.push(confirmed);
        }
        let open: Vec<bool> = forwarder.links.lock()[&address]
            .iter()
            .map(Option::is_some)
            .collect();
        assert_eq!(
            open,
            vec![true, true],
            "lanes 2 and 3 of 2 are lanes 0 and 1"
        );
        for confirmed in confirmations {
            let confirmed = tokio::time::timeout(Duration::from_secs(10), confirmed).await;
            assert_eq!(confirmed.ok().and_then(Result::ok), Some(true));
        }
        let seen = sink.0.lock();
        for (client, parity) in [("even", 0), ("odd", 1)] {
            let got: Vec<String> = seen
                .iter()
                .filter(|(to, _)| to == client)
                .map(|(_, payload)| String::from_utf8_lossy(payload).into_owned())
                .collect();
            let expected: Vec<String> = (0..400u32)
                .filter(|n| n % 2 == parity)
                .map(|n| n.to_string())
                .collect();
            assert_eq!(got, expected, "{client}: in the order sent");
        }
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
        let settings = ForwardSettings::default();
        let failed = stream_to(&unreachable, &settings, &mut queue).await;
        assert!(matches!(failed, Err(LinkFailed::Connect(_))), "{failed:?}");
        let failed = stream_to("not an address", &settings, &mut queue).await;
        assert!(
            matches!(failed, Err(LinkFailed::BadAddress(_))),
            "{failed:?}"
        );
    }

    fn sized(payload: usize, done: bool) -> (Outbound, Option<oneshot::Receiver<bool>>) {
        let (sender, confirmed) = oneshot::channel();
        let outbound = Outbound {
            message: Message {
                topic: "t".into(),
                payload: bytes::Bytes::from(vec![0u8; payload]),
                qos: u32::from(done),
                ..Message::default()
            },
            deliveries: vec![Delivery {
                client_id: "a".into(),
                qos: u32::from(done),
                ..Delivery::default()
            }],
            done: done.then_some(sender),
            lane: 0,
        };
        (outbound, done.then_some(confirmed))
    }

    /// An edge that accepts the connection and never acknowledges: what is
    /// sent to it stays held, the link fills, and a QoS 1/2 publish beyond
    /// the cap is refused at once (its publisher is not acknowledged), not
    /// queued without bound.
    #[tokio::test]
    async fn a_full_link_refuses_a_confirmed_publish_at_once() {
        let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let address = silent.local_addr().unwrap().to_string();
        let forwarder = Forwarder::new(ForwardSettings {
            queue_bytes: 10_000,
            ..ForwardSettings::default()
        });
        let (first, first_confirmed) = sized(6_000, true);
        forwarder.send(&address, first);
        let (second, second_confirmed) = sized(6_000, true);
        forwarder.send(&address, second);
        let refused = tokio::time::timeout(Duration::from_millis(500), second_confirmed.unwrap())
            .await
            .expect("refused at once, not held");
        assert_eq!(refused.ok(), Some(false));
        let (qos0, _) = sized(6_000, false);
        forwarder.send(&address, qos0);
        let mut first_confirmed = first_confirmed.unwrap();
        assert!(
            first_confirmed.try_recv().is_err(),
            "the publish within the cap waits for the edge"
        );
        drop(silent);
    }

    /// Acknowledged batches give their bytes back: many more publishes than
    /// the cap holds all arrive when each waits for the previous.
    #[tokio::test]
    async fn acknowledged_publishes_give_their_budget_back() {
        let sink = Arc::new(Collect::default());
        let address = serve(sink.clone()).await;
        let forwarder = Forwarder::new(ForwardSettings {
            queue_bytes: 3_000,
            ..ForwardSettings::default()
        });
        for _ in 0..20 {
            let (outbound, confirmed) = sized(1_000, true);
            forwarder.send(&address, outbound);
            let confirmed = tokio::time::timeout(Duration::from_secs(10), confirmed.unwrap()).await;
            assert_eq!(confirmed.ok().and_then(Result::ok), Some(true));
        }
        assert_eq!(sink.0.lock().len(), 20);
    }
}
