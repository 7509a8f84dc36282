//! rumqttc, an independent MQTT client library, for 3.1.1 ([`V4Client`]) and
//! 5.0 ([`V5Client`]) behind the same small interface: connect and wait for
//! the CONNACK, then await what the broker sends, each wait bounded by
//! [`TIMEOUT`].
//!
//! The library's event loop runs in a task that forwards every incoming
//! packet to the test and stops at the first error instead of reconnecting,
//! so a test sees a disconnection rather than a silent retry. Dropping a
//! client aborts that task, which closes the socket without DISCONNECT.

use std::collections::VecDeque;
use std::fmt::Debug;
use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use rumqttc::v5::mqttbytes::QoS as QoS5;
use rumqttc::v5::mqttbytes::v5::{
    ConnAck as ConnAck5, Filter, Packet as Packet5, Publish as Publish5, PublishProperties,
};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::harness::{QUIET, TIMEOUT};

/// The packets (or the error that ended the connection) an event loop forwarded.
#[derive(Debug)]
struct Events<P> {
    rx: mpsc::UnboundedReceiver<Result<P, String>>,
    /// Packets read while waiting for another kind, in arrival order.
    pending: VecDeque<P>,
    /// The error that ended the connection, once seen.
    ended: Option<String>,
    task: JoinHandle<()>,
}

/// A rumqttc packet of either protocol version, as far as [`Events`] looks
/// into it.
trait Incoming: Debug + Send + 'static {
    /// The PUBLISH of this version.
    type Publish: Clone + Debug;

    /// The packet's PUBLISH, if it is one.
    fn publish(&self) -> Option<&Self::Publish>;
}

impl Incoming for Packet5 {
    type Publish = Publish5;

    fn publish(&self) -> Option<&Publish5> {
        match self {
            Packet5::Publish(publish) => Some(publish),
            _ => None,
        }
    }
}

impl Incoming for rumqttc::Packet {
    type Publish = rumqttc::Publish;

    fn publish(&self) -> Option<&rumqttc::Publish> {
        match self {
            rumqttc::Packet::Publish(publish) => Some(publish),
            _ => None,
        }
    }
}

/// A rumqttc event loop of either protocol version, stepped by
/// [`Events::forward`].
trait EventLoop: Send + 'static {
    /// The packets it reads.
    type Packet: Incoming;

    /// The next event: an incoming packet, `None` for an outgoing one, or
    /// the error that ended the connection.
    fn step(&mut self) -> impl Future<Output = Result<Option<Self::Packet>, String>> + Send;
}

impl EventLoop for rumqttc::v5::EventLoop {
    type Packet = Packet5;

    async fn step(&mut self) -> Result<Option<Packet5>, String> {
        match self.poll().await {
            Ok(rumqttc::v5::Event::Incoming(packet)) => Ok(Some(packet)),
            Ok(rumqttc::v5::Event::Outgoing(_)) => Ok(None),
            Err(error) => Err(error.to_string()),
        }
    }
}

impl EventLoop for rumqttc::EventLoop {
    type Packet = rumqttc::Packet;

    async fn step(&mut self) -> Result<Option<rumqttc::Packet>, String> {
        match self.poll().await {
            Ok(rumqttc::Event::Incoming(packet)) => Ok(Some(packet)),
            Ok(rumqttc::Event::Outgoing(_)) => Ok(None),
            Err(error) => Err(error.to_string()),
        }
    }
}

impl<P: Incoming> Events<P> {
    /// Runs `eventloop` in a task that forwards every incoming packet, and
    /// the error that ends it, to the returned receiver.
    fn forward(mut eventloop: impl EventLoop<Packet = P>) -> Events<P> {
        let (tx, rx) = mpsc::unbounded_channel();
        let task = tokio::spawn(async move {
            loop {
                match eventloop.step().await {
                    Ok(Some(packet)) => {
                        if tx.send(Ok(packet)).is_err() {
                            break;
                        }
                    }
                    Ok(None) => {}
                    Err(error) => {
                        let _ = tx.send(Err(error));
                        break;
                    }
                }
            }
        });
        Events {
            rx,
            pending: VecDeque::new(),
            ended: None,
            task,
        }
    }

    /// The first packet (pending or new) that `pick` accepts, within `wait`.
    async fn next_where<T>(
        &mut self,
        wait: Duration,
        mut pick: impl FnMut(&P) -> Option<T>,
    ) -> Option<T> {
        if let Some(i) = self.pending.iter().position(|p| pick(p).is_some()) {
            let packet = self.pending.remove(i).expect("index in range");
            return pick(&packet);
        }
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            if self.ended.is_some() {
                return None;
            }
            match tokio::time::timeout_at(deadline, self.rx.recv()).await {
                Err(_) => return None,
                Ok(None) => {
                    self.ended = Some("event loop ended".into());
                    return None;
                }
                Ok(Some(Err(error))) => {
                    self.ended = Some(error);
                    return None;
                }
                Ok(Some(Ok(packet))) => match pick(&packet) {
                    Some(found) => return Some(found),
                    None => self.pending.push_back(packet),
                },
            }
        }
    }

    async fn expect<T>(&mut self, what: &str, pick: impl FnMut(&P) -> Option<T>) -> T {
        match self.next_where(TIMEOUT, pick).await {
            Some(found) => found,
            None => panic!(
                "expected {what} within {TIMEOUT:?}; connection: {:?}; other packets: {:?}",
                self.ended, self.pending
            ),
        }
    }

    /// The next PUBLISH, within [`TIMEOUT`].
    async fn expect_publish(&mut self) -> P::Publish {
        self.expect("PUBLISH", |p| p.publish().cloned()).await
    }

    /// Checks that no PUBLISH arrives for [`QUIET`].
    async fn expect_no_publish(&mut self) {
        let got = self.next_where(QUIET, |p| p.publish().cloned()).await;
        assert!(got.is_none(), "expected no message, got {got:?}");
    }

    /// Waits until the event loop stops and returns its error.
    async fn ended(&mut self) -> String {
        while self.ended.is_none() {
            match tokio::time::timeout(TIMEOUT, self.rx.recv()).await {
                Err(_) => panic!("expected the connection to end within {TIMEOUT:?}"),
                Ok(None) => self.ended = Some("event loop ended".into()),
                Ok(Some(Err(error))) => self.ended = Some(error),
                Ok(Some(Ok(packet))) => self.pending.push_back(packet),
            }
        }
        self.ended.clone().unwrap_or_default()
    }
}

impl<P> Drop for Events<P> {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A 5.0 client of the rumqttc library.
#[derive(Debug)]
pub struct V5Client {
    /// The library's handle, for requests the helpers below do not cover.
    pub client: rumqttc::v5::AsyncClient,
    events: Events<Packet5>,
}

/// rumqttc's 5.0 options for `client_id` at `addr`, with a clean start.
pub fn v5_options(addr: SocketAddr, client_id: &str) -> rumqttc::v5::MqttOptions {
    let mut options = rumqttc::v5::MqttOptions::new(client_id, addr.ip().to_string(), addr.port());
    options.set_keep_alive(Duration::from_secs(30));
    options
}

impl V5Client {
    /// Connects a 5.0 client with a clean start and no other options.
    pub async fn connect(addr: SocketAddr, client_id: &str) -> V5Client {
        V5Client::connect_with(v5_options(addr, client_id)).await.0
    }

    /// Connects with `options` and returns the CONNACK.
    pub async fn connect_with(options: rumqttc::v5::MqttOptions) -> (V5Client, ConnAck5) {
        let (client, eventloop) = rumqttc::v5::AsyncClient::new(options, 64);
        let mut events = Events::forward(eventloop);
        let connack = events
            .expect("CONNACK", |p| match p {
                Packet5::ConnAck(c) => Some(c.clone()),
                _ => None,
            })
            .await;
        (V5Client { client, events }, connack)
    }

    /// Subscribes to `filter` at `qos` and waits for the SUBACK; returns its reason codes.
    pub async fn subscribe(&mut self, filter: &str, qos: QoS5) -> Vec<String> {
        self.subscribe_filter(Filter::new(filter, qos)).await
    }

    /// Subscribes with a fully specified filter (no local, retain handling, ...).
    pub async fn subscribe_filter(&mut self, filter: Filter) -> Vec<String> {
        self.client
            .subscribe_many(vec![filter])
            .await
            .expect("queue SUBSCRIBE");
        self.events
            .expect("SUBACK", |p| match p {
                Packet5::SubAck(s) => {
                    Some(s.return_codes.iter().map(|c| format!("{c:?}")).collect())
                }
                _ => None,
            })
            .await
    }

    /// Publishes and, for QoS 1 and 2, waits for the PUBACK or PUBCOMP.
    pub async fn publish(&mut self, topic: &str, qos: QoS5, retain: bool, payload: &[u8]) {
        self.publish_with(topic, qos, retain, payload, PublishProperties::default())
            .await;
    }

    /// Publishes with properties and waits for its acknowledgement as [`V5Client::publish`] does.
    pub async fn publish_with(
        &mut self,
        topic: &str,
        qos: QoS5,
        retain: bool,
        payload: &[u8],
        properties: PublishProperties,
    ) {
        self.client
            .publish_with_properties(topic, qos, retain, payload.to_vec(), properties)
            .await
            .expect("queue PUBLISH");
        match qos {
            QoS5::AtMostOnce => {}
            QoS5::AtLeastOnce => {
                self.events
                    .expect("PUBACK", |p| matches!(p, Packet5::PubAck(_)).then_some(()))
                    .await
            }
            QoS5::ExactlyOnce => {
                self.events
                    .expect("PUBCOMP", |p| {
                        matches!(p, Packet5::PubComp(_)).then_some(())
                    })
                    .await
            }
        }
    }

    /// The next message the broker delivers.
    pub async fn expect_publish(&mut self) -> Publish5 {
        self.events.expect_publish().await
    }

    /// Checks that no message arrives for [`QUIET`].
    pub async fn expect_no_publish(&mut self) {
        self.events.expect_no_publish().await;
    }
}

/// A 3.1.1 client of the rumqttc library.
#[derive(Debug)]
pub struct V4Client {
    /// The library's handle, for requests the helpers below do not cover.
    pub client: rumqttc::AsyncClient,
    events: Events<rumqttc::Packet>,
}

/// rumqttc's 3.1.1 options for `client_id` at `addr`, with a clean session.
pub fn v4_options(addr: SocketAddr, client_id: &str) -> rumqttc::MqttOptions {
    let mut options = rumqttc::MqttOptions::new(client_id, addr.ip().to_string(), addr.port());
    options.set_keep_alive(Duration::from_secs(30));
    options
}

impl V4Client {
    /// Connects a 3.1.1 client with a clean session and no other options.
    pub async fn connect(addr: SocketAddr, client_id: &str) -> V4Client {
        V4Client::connect_with(v4_options(addr, client_id)).await.0
    }

    /// Connects with `options` and returns the CONNACK.
    pub async fn connect_with(options: rumqttc::MqttOptions) -> (V4Client, rumqttc::ConnAck) {
        let (client, eventloop) = rumqttc::AsyncClient::new(options, 64);
        let mut events = Events::forward(eventloop);
        let connack = events
            .expect("CONNACK", |p| match p {
                rumqttc::Packet::ConnAck(c) => Some(c.clone()),
                _ => None,
            })
            .await;
        (V4Client { client, events }, connack)
    }

    /// Subscribes to `filter` at `qos` and waits for the SUBACK; returns its return codes.
    pub async fn subscribe(&mut self, filter: &str, qos: rumqttc::QoS) -> Vec<String> {
        self.client
            .subscribe(filter, qos)
            .await
            .expect("queue SUBSCRIBE");
        self.events
            .expect("SUBACK", |p| match p {
                rumqttc::Packet::SubAck(s) => {
                    Some(s.return_codes.iter().map(|c| format!("{c:?}")).collect())
                }
                _ => None,
            })
            .await
    }

    /// Publishes and, for QoS 1 and 2, waits for the PUBACK or PUBCOMP.
    pub async fn publish(&mut self, topic: &str, qos: rumqttc::QoS, retain: bool, payload: &[u8]) {
        self.client
            .publish(topic, qos, retain, payload.to_vec())
            .await
            .expect("queue PUBLISH");
        match qos {
            rumqttc::QoS::AtMostOnce => {}
            rumqttc::QoS::AtLeastOnce => {
                self.events
                    .expect("PUBACK", |p| {
                        matches!(p, rumqttc::Packet::PubAck(_)).then_some(())
                    })
                    .await
            }
            rumqttc::QoS::ExactlyOnce => {
                self.events
                    .expect("PUBCOMP", |p| {
                        matches!(p, rumqttc::Packet::PubComp(_)).then_some(())
                    })
                    .await
            }
        }
    }

    /// The next message the broker delivers.
    pub async fn expect_publish(&mut self) -> rumqttc::Publish {
        self.events.expect_publish().await
    }

    /// Checks that no message arrives for [`QUIET`].
    pub async fn expect_no_publish(&mut self) {
        self.events.expect_no_publish().await;
    }

    /// Sends a DISCONNECT and waits for the connection to end.
    pub async fn disconnect(mut self) {
        self.client.disconnect().await.expect("queue DISCONNECT");
        self.events.ended().await;
    }
}
