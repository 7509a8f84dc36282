//! A fault-injecting TCP proxy in front of one store node: the address the
//! node advertises to its peers. Nodes call their peers from their own
//! loopback address (127.0.0.i), so the proxy knows who calls and can cut
//! one node off from the others without touching the host's firewall.

use std::collections::HashSet;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// Who may pass: nobody when cut, otherwise everyone but `blocked` callers;
/// `muted` callers' requests pass but the answers to them are dropped.
#[derive(Debug, Default, Clone)]
struct Rules {
    cut: bool,
    blocked: HashSet<IpAddr>,
    muted: HashSet<IpAddr>,
}

impl Rules {
    fn allows(&self, caller: IpAddr) -> bool {
        !self.cut && !self.blocked.contains(&caller)
    }
}

/// A running proxy; it stops with the runtime it was started on.
#[derive(Debug, Clone)]
pub struct Proxy {
    pub address: SocketAddr,
    rules: Arc<Mutex<Rules>>,
    changed: watch::Sender<u64>,
}

impl Proxy {
    /// Listens on `address` (port 0: a free one) and forwards to `target`,
    /// on the Tokio runtime of the caller (a multi-threaded one: the harness
    /// blocks a thread while nodes start).
    pub fn start(address: SocketAddr, target: SocketAddr) -> Proxy {
        let listener = std::net::TcpListener::bind(address).expect("bind the proxy");
        listener
            .set_nonblocking(true)
            .expect("non-blocking proxy socket");
        let address = listener.local_addr().expect("proxy address");
        let listener = TcpListener::from_std(listener).expect("a Tokio runtime for the proxy");
        let rules = Arc::new(Mutex::new(Rules::default()));
        let (changed, _) = watch::channel(0u64);
        let proxy = Proxy {
            address,
            rules: rules.clone(),
            changed: changed.clone(),
        };
        tokio::spawn(async move {
            loop {
                let Ok((inbound, peer)) = listener.accept().await else {
                    return;
                };
                if !rules.lock().expect("rules").allows(peer.ip()) {
                    drop(inbound);
                    continue;
                }
                let rules = rules.clone();
                let mut changes = changed.subscribe();
                tokio::spawn(async move {
                    let Ok(mut outbound) = TcpStream::connect(target).await else {
                        return;
                    };
                    let mut inbound = inbound;
                    let _ = inbound.set_nodelay(true);
                    let _ = outbound.set_nodelay(true);
                    // Ends when either side closes, or when the rules
                    // change so that this caller may no longer pass.
                    let cut = async {
                        loop {
                            if changes.changed().await.is_err() {
                                std::future::pending::<()>().await;
                            }
                            if !rules.lock().expect("rules").allows(peer.ip()) {
                                return;
                            }
                        }
                    };
                    let (mut from_caller, mut to_caller) = inbound.split();
                    let (mut from_node, mut to_node) = outbound.split();
                    let requests = tokio::io::copy(&mut from_caller, &mut to_node);
                    // Answers pass unless muted; a connection whose answers
                    // were dropped ends when they would pass again (its
                    // stream is broken), so the caller reconnects.
                    let answers = async {
                        let mut buffer = vec![0u8; 16 * 1024];
                        let mut dropped = false;
                        loop {
                            let n = from_node.read(&mut buffer).await.unwrap_or(0);
                            if n == 0 {
                                return;
                            }
                            let muted = rules.lock().expect("rules").muted.contains(&peer.ip());
                            if muted {
                                dropped = true;
                            } else if dropped || to_caller.write_all(&buffer[..n]).await.is_err() {
                                return;
                            }
                        }
                    };
                    tokio::select! {
                        _ = requests => {}
                        () = answers => {}
                        () = cut => {}
                    }
                });
            }
        });
        proxy
    }

    /// Nobody reaches the node behind this proxy; open connections drop.
    pub fn cut(&self) {
        self.rules.lock().expect("rules").cut = true;
        self.changed.send_modify(|n| *n += 1);
    }

    /// Calls from `caller` are dropped; open ones too.
    pub fn block(&self, caller: IpAddr) {
        self.rules.lock().expect("rules").blocked.insert(caller);
        self.changed.send_modify(|n| *n += 1);
    }

    /// Calls from `caller` reach the node, but its answers are dropped (a
    /// write that commits while its answer is lost); the connection ends
    /// once answers would pass again.
    #[allow(dead_code)] // not every test of this binary uses it
    pub fn mute(&self, caller: IpAddr) {
        self.rules.lock().expect("rules").muted.insert(caller);
        self.changed.send_modify(|n| *n += 1);
    }

    /// Everyone passes again.
    pub fn heal(&self) {
        *self.rules.lock().expect("rules") = Rules::default();
        self.changed.send_modify(|n| *n += 1);
    }
}
