//! Starts a cluster of real `rookery` processes and kills, stops and
//! restarts its members.
//!
//! Node `i` (1-based, also its Raft node id) binds everything on the loopback
//! address `127.0.0.i`, so that a node's addresses say which node it is and
//! two nodes never compete for a port. Its store port is picked before the
//! start (its peers name it in `cluster.seeds`) and kept across restarts; its
//! MQTT and forwarding ports are chosen by the OS and read from the
//! `listener ready` lines of its log. Every node has its own temporary
//! directory (data directory and configuration), its stdout and stderr
//! captured into one log kept across restarts, and a small watchdog process
//! that ends it if the test binary exits without stopping it (all of it
//! `rookery_testkit::process`).
//!
//! Every wait is bounded. A test that panics prints the log of every node
//! when its [`Cluster`] is dropped. Clusters are heavy (three RocksDB
//! databases and Raft groups on a machine that may have two cores): at most
//! `ROOKERY_CLUSTER_PARALLEL` (default 1) run at once in one test binary.

use std::fmt::Write as _;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus};
use std::sync::{Condvar, Mutex, PoisonError};
use std::thread;
use std::time::{Duration, Instant};

use rookery_testkit::{Process, ProcessError, Signal, Watchdog, find_series, free_port};
pub use rookery_testkit::{TIMEOUT, within};

use crate::proxy::Proxy;

/// The bound on a cluster's (or a restarted node's) start: nodes wait for
/// their peers before they report ready.
pub const START_TIMEOUT: Duration = Duration::from_secs(30);

/// The bound on every wait that spans a failure: a new store leader, an
/// edge's lease running out (10 s), a client resuming its session elsewhere.
pub const FAILOVER: Duration = Duration::from_secs(30);

/// How long a test waits to be sure that something does *not* happen.
pub const QUIET: Duration = Duration::from_secs(1);

/// What a node runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Roles {
    /// A store replica and an edge (the default).
    Both,
    /// A store replica only: no MQTT listener.
    Store,
    /// An edge only: it reaches the store through its seeds.
    Edge,
}

impl Roles {
    fn has_store(self) -> bool {
        matches!(self, Roles::Both | Roles::Store)
    }

    fn has_edge(self) -> bool {
        matches!(self, Roles::Both | Roles::Edge)
    }

    fn toml(self) -> &'static str {
        match self {
            Roles::Both => r#"["store", "edge"]"#,
            Roles::Store => r#"["store"]"#,
            Roles::Edge => r#"["edge"]"#,
        }
    }
}

/// How to build a cluster beyond "n nodes, each both store and edge".
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Options {
    /// Node `i`'s roles at index `i - 1`; a node without an entry runs both.
    pub roles: Vec<Roles>,
    /// TOML appended to every node's configuration, e.g. a `[broker.limits]`
    /// table.
    pub extra_toml: String,
    /// Keys added to every node's `[cluster]` table.
    pub cluster_toml: String,
    /// Put a fault-injecting proxy in front of every store node (the address
    /// it advertises to its peers), so that a node can be cut off.
    pub store_proxies: bool,
}

impl Options {
    fn roles_of(&self, index: usize) -> Roles {
        self.roles.get(index - 1).copied().unwrap_or(Roles::Both)
    }
}

/// A running cluster; every process is killed when it is dropped.
#[derive(Debug)]
pub struct Cluster {
    nodes: Vec<Node>,
    /// With [`Options::store_proxies`], node `i`'s proxy at `i - 1`.
    proxies: Vec<Proxy>,
    /// The store addresses every node was started with in `cluster.seeds`.
    seeds: Vec<SocketAddr>,
    /// How the cluster was built, for the nodes added later.
    options: Options,
    _slot: Slot,
}

impl Cluster {
    /// Starts `n` nodes, each a store replica and an edge, forming one new
    /// cluster; returns once every node has logged `rookery ready`.
    pub fn start(n: usize) -> Cluster {
        Cluster::start_with(n, Options::default())
    }

    /// Starts `n` nodes as [`Cluster::start`] does, built as `options` says.
    pub fn start_with(n: usize, options: Options) -> Cluster {
        assert!((1..=250).contains(&n), "a cluster of {n} nodes");
        let slot = Slot::acquire();
        let plans: Vec<(usize, Roles, SocketAddr)> = (1..=n)
            .map(|i| {
                let roles = options.roles_of(i);
                (
                    i,
                    roles,
                    SocketAddr::from((node_ip(i), free_port(node_ip(i)))),
                )
            })
            .collect();
        // Peers reach a node at its proxy when there is one.
        let proxies: Vec<Proxy> = if options.store_proxies {
            plans
                .iter()
                .map(|(i, _, store)| Proxy::start(SocketAddr::from((node_ip(*i), 0)), *store))
                .collect()
        } else {
            Vec::new()
        };
        let advertised =
            |i: usize, store: SocketAddr| proxies.get(i - 1).map_or(store, |proxy| proxy.address);
        let seeds: Vec<SocketAddr> = plans
            .iter()
            .filter(|(_, roles, _)| roles.has_store())
            .map(|(i, _, store)| advertised(*i, *store))
            .collect();
        let nodes = plans
            .into_iter()
            .map(|(i, roles, store)| {
                let advertise = proxies.get(i - 1).map(|proxy| proxy.address);
                Node::new(i, roles, store, advertise, &seeds, seeds.len(), &options)
            })
            .collect();
        // Built before anything starts, so that a failed start drops it and
        // prints every node's log.
        let mut cluster = Cluster {
            nodes,
            proxies,
            seeds,
            options,
            _slot: slot,
        };
        let all: Vec<usize> = (1..=n).collect();
        cluster.launch_and_wait(&all);
        cluster
    }

    /// Starts three store-only nodes (1 to 3) and `edges` edge-only nodes
    /// (4 on), built as `options` says beyond their roles.
    #[allow(dead_code)] // harness API that not every test of this binary uses
    pub fn start_stores_and_edges(edges: usize, options: Options) -> Cluster {
        let mut roles = vec![Roles::Store; 3];
        roles.extend(vec![Roles::Edge; edges]);
        Cluster::start_with(3 + edges, Options { roles, ..options })
    }

    /// [`Cluster::start_stores_and_edges`] behind fault-injecting proxies,
    /// with writes that give up after 2 s: for tests that cut an edge off
    /// the store for a few seconds, well inside its 10 s lease.
    pub fn start_edges_to_cut(edges: usize) -> Cluster {
        Cluster::start_stores_and_edges(
            edges,
            Options {
                store_proxies: true,
                cluster_toml: "write_timeout_ms = 2000".into(),
                ..Options::default()
            },
        )
    }

    /// Creates node `n + 1` of an `n`-node cluster with `roles` and starts
    /// it with the cluster's seeds plus its own store address (and the same
    /// `bootstrap_expect`): its peers already form a group, so it asks to be
    /// added to it (a learner, then a voter). Waits until it is ready and
    /// returns its index. Not with [`Options::store_proxies`].
    #[allow(dead_code)] // harness API that not every test of this binary uses
    pub fn add_node(&mut self, roles: Roles) -> usize {
        self.add_node_with(roles, "", "")
    }

    /// [`Cluster::add_node`], with `cluster_toml` added to this node's
    /// `[cluster]` table (e.g. `voter = false`) and `extra_toml` appended to
    /// its configuration, besides the cluster's own.
    #[allow(dead_code)] // harness API that not every test of this binary uses
    pub fn add_node_with(&mut self, roles: Roles, cluster_toml: &str, extra_toml: &str) -> usize {
        assert!(
            self.proxies.is_empty(),
            "add_node does not put a proxy in front of the new node"
        );
        let i = self.nodes.len() + 1;
        let store = SocketAddr::from((node_ip(i), free_port(node_ip(i))));
        let mut seeds = self.seeds.clone();
        if roles.has_store() {
            seeds.push(store);
        }
        let mut options = self.options.clone();
        for (own, added) in [
            (&mut options.cluster_toml, cluster_toml),
            (&mut options.extra_toml, extra_toml),
        ] {
            if !added.is_empty() {
                own.push('\n');
                own.push_str(added);
            }
        }
        let node = Node::new(i, roles, store, None, &seeds, self.seeds.len(), &options);
        self.nodes.push(node);
        self.launch_and_wait(&[i]);
        i
    }

    /// Node `i` (1-based: node 1 is the first node, with Raft node id 1).
    pub fn node(&self, i: usize) -> &Node {
        let n = self.nodes.len();
        self.nodes
            .get(i.wrapping_sub(1))
            .unwrap_or_else(|| panic!("node {i}: the cluster has nodes 1 to {n}"))
    }

    /// Node `i`, to kill, stop or restart it.
    pub fn node_mut(&mut self, i: usize) -> &mut Node {
        let n = self.nodes.len();
        self.nodes
            .get_mut(i.wrapping_sub(1))
            .unwrap_or_else(|| panic!("node {i}: the cluster has nodes 1 to {n}"))
    }

    /// The node (1-based) that leads the store group, once the running store
    /// nodes agree on it: it reports `rookery_store_is_leader 1` and every
    /// running store node reports its id as `rookery_store_leader_id`.
    /// Polls for up to [`FAILOVER`], then panics with what each node said.
    pub async fn leader(&self) -> usize {
        let deadline = Instant::now() + FAILOVER;
        loop {
            let mut seen = Vec::new();
            for node in self.nodes.iter().filter(|n| n.roles.has_store()) {
                if !node.is_running() {
                    continue;
                }
                let body = node.scrape().await;
                let value = |series| body.as_deref().and_then(|b| find_series(b, series));
                let is_leader = value("rookery_store_is_leader");
                let leader_id = value("rookery_store_leader_id");
                seen.push((node.index, is_leader, leader_id));
            }
            if let Some(leader) = agreed_leader(&seen) {
                return leader;
            }
            if Instant::now() > deadline {
                panic!(
                    "no store leader all running store nodes agree on within {FAILOVER:?}; \
                     (node, rookery_store_is_leader, rookery_store_leader_id): {seen:?}"
                );
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Restarts the stopped nodes `which` together (each on its own data
    /// directory and store port) and waits until every one is ready: nodes
    /// restarted together may wait for each other.
    #[allow(dead_code)] // harness API that no test of this binary uses yet
    pub fn restart(&mut self, which: &[usize]) {
        for &i in which {
            let node = self.node_mut(i);
            assert!(!node.is_running(), "restart of node {i}, which is running");
            node.process.note("---- restarted ----");
        }
        self.launch_and_wait(which);
    }

    /// Cuts node `i`'s store off from the other store nodes, both ways
    /// (needs [`Options::store_proxies`]); its MQTT listeners stay reachable.
    pub fn isolate(&self, i: usize) {
        assert!(!self.proxies.is_empty(), "isolate needs store proxies");
        for (j, proxy) in self.proxies.iter().enumerate() {
            if j + 1 == i {
                proxy.cut();
            } else {
                proxy.block(std::net::IpAddr::V4(node_ip(i)));
            }
        }
    }

    /// Cuts node `i`'s store off from the store nodes `others`, both ways
    /// (needs [`Options::store_proxies`]); every other caller (an edge-only
    /// node, another store node) still reaches it.
    #[allow(dead_code)] // harness API that not every test of this binary uses
    pub fn isolate_from(&self, i: usize, others: &[usize]) {
        assert!(!self.proxies.is_empty(), "isolate_from needs store proxies");
        for &j in others {
            self.proxies[i - 1].block(std::net::IpAddr::V4(node_ip(j)));
            self.proxies[j - 1].block(std::net::IpAddr::V4(node_ip(i)));
        }
    }

    /// Drops node `from`'s calls to node `to`'s store (needs
    /// [`Options::store_proxies`]); `to`'s calls to `from` still pass: a
    /// one-way partition.
    #[allow(dead_code)] // harness API that not every test of this binary uses
    pub fn block_calls(&self, from: usize, to: usize) {
        assert!(!self.proxies.is_empty(), "block_calls needs store proxies");
        self.proxies[to - 1].block(std::net::IpAddr::V4(node_ip(from)));
    }

    /// Node `from`'s calls to every store node get through, but their
    /// answers are dropped (needs [`Options::store_proxies`]): its writes
    /// may commit while it never learns so. Undone by [`Cluster::heal`].
    #[allow(dead_code)] // harness API that not every test of this binary uses
    pub fn mute_answers_to(&self, from: usize) {
        assert!(
            !self.proxies.is_empty(),
            "mute_answers_to needs store proxies"
        );
        for proxy in &self.proxies {
            proxy.mute(std::net::IpAddr::V4(node_ip(from)));
        }
    }

    /// The store node (its index) that node `edge` follows now, from the
    /// last `following a store node` line of its log: node `i`'s store (or
    /// its proxy) listens on 127.0.0.`i`.
    #[allow(dead_code)] // harness API that not every test of this binary uses
    pub fn followed_store(&self, edge: usize) -> Option<usize> {
        let log = self.node(edge).log();
        let line = log
            .lines()
            .rev()
            .find(|line| line.contains("following a store node"))?;
        let after = line.split("127.0.0.").nth(1)?;
        let digits: String = after.chars().take_while(char::is_ascii_digit).collect();
        digits.parse().ok()
    }

    /// How many nodes the cluster has.
    #[allow(dead_code)] // harness API that not every test of this binary uses
    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    /// Undoes every [`Cluster::isolate`].
    pub fn heal(&self) {
        for proxy in &self.proxies {
            proxy.heal();
        }
    }

    /// Prints every node's whole log to stderr.
    pub fn dump_logs(&self) {
        for node in &self.nodes {
            eprintln!(
                "---- node {} ({}) log ----\n{}\n---- end of node {} log ----",
                node.index,
                node.ip,
                node.log(),
                node.index
            );
        }
    }

    fn launch_and_wait(&mut self, which: &[usize]) {
        for &i in which {
            self.node_mut(i).spawn();
        }
        let deadline = Instant::now() + START_TIMEOUT;
        let mut waiting: Vec<usize> = which.to_vec();
        while !waiting.is_empty() {
            let mut still = Vec::new();
            for i in waiting {
                match self.node_mut(i).readiness() {
                    Ok(true) => {}
                    Ok(false) => still.push(i),
                    Err(why) => panic!("node {i} did not start: {why}"),
                }
            }
            waiting = still;
            if waiting.is_empty() {
                break;
            }
            if Instant::now() > deadline {
                panic!(
                    "nodes {waiting:?} did not log `rookery ready` (and their listeners) within {START_TIMEOUT:?}"
                );
            }
            thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if thread::panicking() {
            self.dump_logs();
        }
        // SIGTERM to all at once (a node that stops alone may wait for the
        // store quorum it is leaving), a short grace, then SIGKILL.
        for node in &self.nodes {
            node.process.send(Signal::Term);
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        for node in &mut self.nodes {
            node.process
                .reap(deadline.saturating_duration_since(Instant::now()));
        }
    }
}

/// The leader that `seen` (node, is_leader, leader_id per running store
/// node) agrees on, if any.
fn agreed_leader(seen: &[(usize, Option<f64>, Option<f64>)]) -> Option<usize> {
    let leaders: Vec<usize> = seen
        .iter()
        .filter(|(_, is_leader, _)| *is_leader == Some(1.0))
        .map(|(node, _, _)| *node)
        .collect();
    let [leader] = leaders.as_slice() else {
        return None;
    };
    let id = *leader as f64;
    seen.iter()
        .all(|(_, _, leader_id)| *leader_id == Some(id))
        .then_some(*leader)
}

/// One member of a [`Cluster`]: a `rookery` process, or none while it is
/// killed or stopped.
#[derive(Debug)]
pub struct Node {
    index: usize,
    ip: Ipv4Addr,
    roles: Roles,
    dir: tempfile::TempDir,
    config: PathBuf,
    store: SocketAddr,
    metrics: SocketAddr,
    process: Process,
}

impl Node {
    fn new(
        index: usize,
        roles: Roles,
        store: SocketAddr,
        advertise: Option<SocketAddr>,
        seeds: &[SocketAddr],
        bootstrap_expect: usize,
        options: &Options,
    ) -> Node {
        let ip = node_ip(index);
        let dir = tempfile::Builder::new()
            .prefix(&format!("rookery-cluster-n{index}-"))
            .tempdir()
            .expect("create the node's temporary directory");
        // The Prometheus exporter cannot report a port the OS chose, so the
        // harness picks one (and keeps it across restarts).
        let metrics = SocketAddr::from((ip, free_port(ip)));
        let toml = node_config(&NodeConfig {
            index,
            roles,
            data_dir: &dir.path().join("data"),
            store,
            advertise,
            seeds,
            bootstrap_expect,
            forward: SocketAddr::from((ip, 0)),
            metrics,
            cluster: &options.cluster_toml,
            extra: &options.extra_toml,
        });
        let config = dir.path().join("rookery.toml");
        std::fs::write(&config, toml).expect("write rookery.toml");
        Node {
            index,
            ip,
            roles,
            dir,
            config,
            store,
            metrics,
            process: Process::new(),
        }
    }

    /// Whether its process is running (it has not been killed or stopped,
    /// and has not exited).
    pub fn is_running(&self) -> bool {
        self.process.is_running()
    }

    /// The node's store address (`store.listen`), as `rookery cluster
    /// --store` takes it.
    #[allow(dead_code)] // harness API that not every test of this binary uses
    pub fn store_addr(&self) -> SocketAddr {
        self.store
    }

    /// The node's configuration file, as `rookery cluster --config` takes
    /// it.
    #[allow(dead_code)] // harness API that not every test of this binary uses
    pub fn config_path(&self) -> &Path {
        &self.config
    }

    /// The address of the MQTT TCP listener of the current process.
    pub fn mqtt_addr(&self) -> SocketAddr {
        self.listener("tcp").unwrap_or_else(|| {
            panic!(
                "node {} has no MQTT listener (roles {:?}, running: {})",
                self.index,
                self.roles,
                self.is_running()
            )
        })
    }

    /// The address the current process reported for a listener (`tcp`,
    /// `metrics`, ...), if it did.
    pub fn listener(&self, name: &str) -> Option<SocketAddr> {
        if !self.is_running() {
            return None;
        }
        match (self.process.listener(name), name) {
            (None, "metrics") => Some(self.metrics),
            (None, "store") => Some(self.store),
            (reported, _) => reported,
        }
    }

    /// Everything the node has written to stdout and stderr, over all of its
    /// restarts.
    pub fn log(&self) -> String {
        self.process.log()
    }

    /// Kills the node with SIGKILL, as a crash would, and reaps it.
    pub fn kill9(&mut self) {
        self.process.kill9();
    }

    /// Pauses the node with SIGSTOP (a stalled machine): it answers nothing
    /// until [`Node::resume`]; its sockets stay open.
    #[allow(dead_code)] // harness API that not every test of this binary uses
    pub fn pause(&self) {
        self.process.send(Signal::Stop);
        self.process.note("---- paused with SIGSTOP ----");
    }

    /// Ends a [`Node::pause`] with SIGCONT.
    #[allow(dead_code)] // harness API that not every test of this binary uses
    pub fn resume(&self) {
        self.process.send(Signal::Cont);
        self.process.note("---- resumed with SIGCONT ----");
    }

    /// Stops the node with SIGTERM and returns how it exited; SIGKILL if it
    /// has not exited within [`TIMEOUT`].
    #[allow(dead_code)] // harness API that no test of this binary uses yet
    pub fn sigterm(&mut self) -> Option<ExitStatus> {
        self.process.sigterm()
    }

    /// Starts the node again on its data directory and store port (after
    /// [`Node::kill9`] or [`Node::sigterm`]) and waits for it to be ready.
    /// Its MQTT port may change. To restart several nodes that must wait for
    /// each other, use [`Cluster::restart`].
    #[allow(dead_code)] // harness API that no test of this binary uses yet
    pub fn restart(&mut self) {
        assert!(
            !self.is_running(),
            "restart of node {}, which is running",
            self.index
        );
        self.process.note("---- restarted ----");
        self.spawn();
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            match self.readiness() {
                Ok(true) => return,
                Ok(false) if Instant::now() < deadline => thread::sleep(Duration::from_millis(20)),
                // The cluster prints every node's log as the panic unwinds.
                Ok(false) => panic!(
                    "node {} did not log `rookery ready` within {START_TIMEOUT:?} of its restart",
                    self.index
                ),
                Err(why) => panic!("node {} did not restart: {why}", self.index),
            }
        }
    }

    /// Moves the stopped node's store to `to` (`store.listen`, the address
    /// it advertises) for its next start, as a pod recreated at a new IP
    /// would be; its data directory stays.
    #[allow(dead_code)] // harness API that not every test of this binary uses
    pub fn move_store(&mut self, to: SocketAddr) {
        assert!(
            !self.is_running(),
            "move of node {}, which is running",
            self.index
        );
        let toml = std::fs::read_to_string(&self.config).expect("read rookery.toml");
        let from = format!("\n[store]\nlisten = \"{}\"\n", self.store);
        assert!(
            toml.contains(&from),
            "node {}'s rookery.toml:\n{toml}",
            self.index
        );
        let moved = toml.replace(&from, &format!("\n[store]\nlisten = \"{to}\"\n"));
        std::fs::write(&self.config, moved).expect("write rookery.toml");
        self.process.note(&format!(
            "---- store moved from {} to {to} ----",
            self.store
        ));
        self.store = to;
    }

    /// The value of one series on the node's Prometheus endpoint
    /// ([`rookery_testkit::find_series`]), e.g. `rookery_store_leader_id` or
    /// `rookery_connections{listener="tcp"}`; 0 when the node does not
    /// report it (yet). Panics if the endpoint does not answer 200.
    #[allow(dead_code)] // harness API that no test of this binary uses yet
    pub async fn metric(&self, series: &str) -> f64 {
        rookery_testkit::metric(self.metrics, series)
            .await
            .unwrap_or_else(|why| panic!("node {}: {why}", self.index))
    }

    /// The whole `/metrics` response, if the node is running and answers 200.
    async fn scrape(&self) -> Option<String> {
        if !self.is_running() {
            return None;
        }
        rookery_testkit::scrape(self.metrics).await.ok()
    }

    /// Starts the process without waiting for it.
    fn spawn(&mut self) {
        let mut command = self.command();
        self.process
            .spawn(&mut command, self.dir.path(), Watchdog::Kill);
    }

    /// Whether the current process is ready: `Ok(false)` while it starts, an
    /// error if it exited.
    fn readiness(&mut self) -> Result<bool, ProcessError> {
        self.process.check_running()?;
        let listening = !self.roles.has_edge() || self.process.listener("tcp").is_some();
        Ok(self.process.is_ready() && listening)
    }
    fn command(&self) -> Command {
        let binary = std::env::var_os("ROOKERY_CLUSTER_BIN")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_rookery")));
        let mut command = Command::new(binary);
        command.arg("serve").arg("--config").arg(&self.config);
        if self.roles.has_edge() {
            command
                .arg("--listen")
                .arg(SocketAddr::from((self.ip, 0)).to_string());
        }
        command.env("NO_COLOR", "1");
        command
    }
}

/// The loopback address of node `index`: 127.0.0.`index`.
fn node_ip(index: usize) -> Ipv4Addr {
    let last = u8::try_from(index).expect("at most 255 nodes");
    Ipv4Addr::new(127, 0, 0, last)
}

/// What one node's configuration file says.
struct NodeConfig<'a> {
    index: usize,
    roles: Roles,
    data_dir: &'a Path,
    store: SocketAddr,
    advertise: Option<SocketAddr>,
    seeds: &'a [SocketAddr],
    bootstrap_expect: usize,
    forward: SocketAddr,
    metrics: SocketAddr,
    cluster: &'a str,
    extra: &'a str,
}

/// A node's `rookery.toml`.
fn node_config(c: &NodeConfig<'_>) -> String {
    let seeds: Vec<String> = c.seeds.iter().map(|s| format!("\"{s}\"")).collect();
    let mut toml = String::new();
    writeln!(toml, "node_id = {}", c.index).ok();
    writeln!(toml, "data_dir = {:?}", c.data_dir.display().to_string()).ok();
    writeln!(toml, "roles = {}", c.roles.toml()).ok();
    writeln!(toml, "\n[store]\nlisten = \"{}\"", c.store).ok();
    if let Some(advertise) = c.advertise {
        writeln!(toml, "advertise = \"{advertise}\"").ok();
    }
    writeln!(toml, "\n[cluster]").ok();
    writeln!(toml, "seeds = [{}]", seeds.join(", ")).ok();
    writeln!(toml, "bootstrap_expect = {}", c.bootstrap_expect).ok();
    if !c.cluster.is_empty() {
        writeln!(toml, "{}", c.cluster).ok();
    }
    if c.roles.has_edge() {
        writeln!(toml, "forward_listen = \"{}\"", c.forward).ok();
    }
    writeln!(toml, "\n[metrics]\nlisten = \"{}\"", c.metrics).ok();
    if !c.extra.is_empty() {
        writeln!(toml, "\n{}", c.extra).ok();
    }
    toml
}

/// A place among the clusters allowed to run at once; given back on drop.
#[derive(Debug)]
struct Slot;

static SLOTS_IN_USE: Mutex<usize> = Mutex::new(0);
static SLOT_FREED: Condvar = Condvar::new();

impl Slot {
    /// Waits until fewer than `ROOKERY_CLUSTER_PARALLEL` (default 1)
    /// clusters run in this process.
    fn acquire() -> Slot {
        let allowed = std::env::var("ROOKERY_CLUSTER_PARALLEL")
            .ok()
            .and_then(|v| v.parse::<usize>().ok())
            .unwrap_or(1)
            .max(1);
        let mut in_use = SLOTS_IN_USE.lock().unwrap_or_else(PoisonError::into_inner);
        while *in_use >= allowed {
            in_use = SLOT_FREED
                .wait(in_use)
                .unwrap_or_else(PoisonError::into_inner);
        }
        *in_use += 1;
        Slot
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut in_use = SLOTS_IN_USE.lock().unwrap_or_else(PoisonError::into_inner);
        *in_use = in_use.saturating_sub(1);
        SLOT_FREED.notify_all();
    }
}

#[test]
fn each_node_is_configured_with_its_own_address_and_every_seed() {
    let seeds = [
        SocketAddr::from(([127, 0, 0, 1], 7001)),
        SocketAddr::from(([127, 0, 0, 2], 7002)),
    ];
    let toml = node_config(&NodeConfig {
        index: 2,
        roles: Roles::Both,
        data_dir: Path::new("/tmp/x/data"),
        store: seeds[1],
        advertise: None,
        seeds: &seeds,
        bootstrap_expect: 2,
        forward: SocketAddr::from(([127, 0, 0, 2], 0)),
        metrics: SocketAddr::from(([127, 0, 0, 2], 9000)),
        cluster: "",
        extra: "",
    });
    assert_eq!(
        toml,
        "node_id = 2\n\
         data_dir = \"/tmp/x/data\"\n\
         roles = [\"store\", \"edge\"]\n\
         \n[store]\nlisten = \"127.0.0.2:7002\"\n\
         \n[cluster]\n\
         seeds = [\"127.0.0.1:7001\", \"127.0.0.2:7002\"]\n\
         bootstrap_expect = 2\n\
         forward_listen = \"127.0.0.2:0\"\n\
         \n[metrics]\nlisten = \"127.0.0.2:9000\"\n"
    );
    let store_only = node_config(&NodeConfig {
        roles: Roles::Store,
        index: 1,
        data_dir: Path::new("/d"),
        store: seeds[0],
        advertise: Some(SocketAddr::from(([127, 0, 0, 1], 7100))),
        seeds: &seeds,
        bootstrap_expect: 2,
        forward: SocketAddr::from(([127, 0, 0, 1], 0)),
        metrics: SocketAddr::from(([127, 0, 0, 1], 9000)),
        cluster: "write_timeout_ms = 2000",
        extra: "[broker.limits]\nreceive_maximum = 8",
    });
    assert!(
        store_only.contains("advertise = \"127.0.0.1:7100\"\n"),
        "{store_only}"
    );
    assert!(
        store_only.contains("bootstrap_expect = 2\nwrite_timeout_ms = 2000\n"),
        "{store_only}"
    );
    assert!(store_only.contains("roles = [\"store\"]\n"), "{store_only}");
    assert!(!store_only.contains("forward_listen"), "{store_only}");
    assert!(
        store_only.ends_with("\n[broker.limits]\nreceive_maximum = 8\n"),
        "{store_only}"
    );
}

#[test]
fn the_leader_is_the_one_every_running_store_node_names() {
    let agreed = [
        (1, Some(0.0), Some(2.0)),
        (2, Some(1.0), Some(2.0)),
        (3, Some(0.0), Some(2.0)),
    ];
    assert_eq!(agreed_leader(&agreed), Some(2));
    let lagging = [(1, Some(0.0), Some(0.0)), (2, Some(1.0), Some(2.0))];
    assert_eq!(agreed_leader(&lagging), None);
    let two = [(1, Some(1.0), Some(1.0)), (2, Some(1.0), Some(2.0))];
    assert_eq!(agreed_leader(&two), None);
    let silent = [(1, None, None), (2, Some(1.0), Some(2.0))];
    assert_eq!(agreed_leader(&silent), None);
}
