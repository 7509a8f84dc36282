//! Committed writes per second and commit latency of `rookery-store`: a single
//! voter and a 3-voter group on loopback, group commit on and off, a small
//! session-state write and a 256-byte message append, each through the Store
//! gRPC API of the leader and through `StoreNode::write` in process.
//!
//! A plain `main` (not criterion): N writer tasks each issue one write at a
//! time in a loop for a fixed duration after a warm-up; a write's latency is
//! from the call to the reply (committed on a quorum, fsynced, applied).
//!
//! Run: `cargo bench -p rookery-benches --bench store`. Options, as arguments
//! after `--` or environment variables:
//!
//! - `--secs S` / `STORE_BENCH_SECS`: measured seconds per run (default 3);
//! - `--warmup S` / `STORE_BENCH_WARMUP`: warm-up seconds per run (0.5);
//! - `--writers N` / `STORE_BENCH_WRITERS`: concurrent writers (64);
//! - `--voters 1,3` / `STORE_BENCH_VOTERS`: group sizes to run (1,3);
//! - `--node-threads N` / `STORE_BENCH_NODE_THREADS`: Tokio workers of each
//!   node's runtime (2); the writers run on a separate 2-worker runtime;
//! - `STORE_BENCH_DIR`: where the data directories go (the system temporary
//!   directory; it must be on a real disk for the fsync cost to show).

use std::error::Error;
use std::fmt::Write as _;
use std::io::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use rookery_store::proto::{
    self, Command, CommandResult, admin_client::AdminClient, command::Kind,
    command_result::Kind as ResultKind, store_client::StoreClient,
};
use rookery_store::writer::GroupCommit;
use rookery_store::{StoreConfig, StoreNode};
use tokio::runtime::Runtime;
use tonic::transport::Channel;

type BoxError = Box<dyn Error + Send + Sync>;
type Result<T, E = BoxError> = std::result::Result<T, E>;

/// A write that takes longer than this counts as failed (the run goes on).
const WRITE_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a group may take to elect its leader or change membership.
const FORM_TIMEOUT: Duration = Duration::from_secs(20);
/// The persistent session every message append is queued for.
const QUEUE_CLIENT: &str = "bench-queue";
const EDGE: &str = "edge-bench";
const MESSAGE_BYTES: usize = 256;

#[derive(Debug, Clone)]
struct Options {
    secs: f64,
    warmup: f64,
    writers: usize,
    voters: Vec<usize>,
    node_threads: usize,
    dir: PathBuf,
}

impl Options {
    fn parse() -> Result<Options> {
        let env = |name: &str| std::env::var(name).ok();
        let mut secs = env("STORE_BENCH_SECS");
        let mut warmup = env("STORE_BENCH_WARMUP");
        let mut writers = env("STORE_BENCH_WRITERS");
        let mut voters = env("STORE_BENCH_VOTERS");
        let mut node_threads = env("STORE_BENCH_NODE_THREADS");
        let mut args = std::env::args().skip(1);
        while let Some(arg) = args.next() {
            let slot = match arg.as_str() {
                "--secs" => &mut secs,
                "--warmup" => &mut warmup,
                "--writers" => &mut writers,
                "--voters" => &mut voters,
                "--node-threads" => &mut node_threads,
                // `cargo bench` passes `--bench`; other harness flags too.
                _ => continue,
            };
            *slot = Some(args.next().ok_or_else(|| format!("{arg} needs a value"))?);
        }
        let secs: f64 = secs.as_deref().unwrap_or("3").parse()?;
        let warmup: f64 = warmup.as_deref().unwrap_or("0.5").parse()?;
        let writers: usize = writers.as_deref().unwrap_or("64").parse()?;
        let node_threads: usize = node_threads.as_deref().unwrap_or("2").parse()?;
        let voters = voters
            .as_deref()
            .unwrap_or("1,3")
            .split(',')
            .map(|n| n.trim().parse::<usize>())
            .collect::<Result<Vec<_>, _>>()?;
        if !(0.1..=60.0).contains(&secs) || !(0.0..=10.0).contains(&warmup) {
            return Err("secs must be in 0.1..=60 and warmup in 0..=10".into());
        }
        if writers == 0 || writers > 4096 || node_threads == 0 {
            return Err("writers must be in 1..=4096 and node threads at least 1".into());
        }
        if voters.iter().any(|&n| n != 1 && n != 3) {
            return Err("voters: 1 and/or 3".into());
        }
        let dir = env("STORE_BENCH_DIR").map_or_else(std::env::temp_dir, PathBuf::from);
        Ok(Options {
            secs,
            warmup,
            writers,
            voters,
            node_threads,
            dir,
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Payload {
    /// A Subscribe of the writer's own session (about 40 bytes encoded).
    Subscribe,
    /// An Enqueue of a 256-byte message to one persistent session.
    Message256,
}

impl Payload {
    fn name(self) -> &'static str {
        match self {
            Payload::Subscribe => "subscribe",
            Payload::Message256 => "enqueue 256 B",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Via {
    Grpc,
    InProcess,
}

impl Via {
    fn name(self) -> &'static str {
        match self {
            Via::Grpc => "gRPC",
            Via::InProcess => "in-process",
        }
    }
}

fn group_commit_name(mode: GroupCommit) -> String {
    match mode {
        GroupCommit::On { in_flight } => format!("on ({in_flight})"),
        GroupCommit::Off => "off".into(),
    }
}

/// One node on its own Tokio runtime, as if it were its own process.
struct Node {
    address: String,
    runtime: Option<Runtime>,
    node: Option<Arc<StoreNode>>,
}

impl Node {
    fn start(id: u64, dir: &Path, group_commit: GroupCommit, threads: usize) -> Result<Node> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(threads)
            .thread_name(format!("store-node-{id}"))
            .enable_all()
            .build()?;
        let listen: SocketAddr = "127.0.0.1:0".parse()?;
        let mut config = StoreConfig::new(id, dir.to_path_buf(), listen);
        config.group_commit = group_commit;
        // Nothing here expires; keep the ticker's entries out of the figures.
        config.tick_interval = None;
        let node = runtime.block_on(StoreNode::start(config))?;
        Ok(Node {
            address: node.address().to_owned(),
            runtime: Some(runtime),
            node: Some(Arc::new(node)),
        })
    }

    fn store(&self) -> Result<&Arc<StoreNode>> {
        self.node.as_ref().ok_or_else(|| "node stopped".into())
    }

    fn leader(&self) -> Option<u64> {
        let node = self.node.as_ref()?;
        node.raft().metrics().borrow().current_leader
    }

    fn stop(&mut self) {
        let node = self.node.take().and_then(Arc::into_inner);
        if let Some(runtime) = self.runtime.take() {
            if let Some(node) = node {
                runtime.block_on(node.shutdown());
            }
            runtime.shutdown_timeout(Duration::from_secs(2));
        }
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A group whose node 1 (`nodes[0]`) leads.
struct Group {
    nodes: Vec<Node>,
    _dir: tempfile::TempDir,
}

impl Group {
    fn start(
        voters: usize,
        group_commit: GroupCommit,
        options: &Options,
        client: &Runtime,
    ) -> Result<Group> {
        let dir = tempfile::Builder::new()
            .prefix("rookery-store-bench-")
            .tempdir_in(&options.dir)?;
        let mut nodes = Vec::new();
        for id in 1..=voters as u64 {
            let data = dir.path().join(format!("node-{id}"));
            nodes.push(Node::start(id, &data, group_commit, options.node_threads)?);
        }
        let group = Group { nodes, _dir: dir };
        client.block_on(group.form())?;
        Ok(group)
    }

    /// Initializes node 1, adds the others as learners, makes them voters.
    async fn form(&self) -> Result<()> {
        let first = &self.nodes[0];
        let mut admin = AdminClient::connect(format!("http://{}", first.address)).await?;
        admin.initialize(proto::InitializeRequest {}).await?;
        self.wait_for_leader(1).await?;
        if self.nodes.len() > 1 {
            for (index, node) in self.nodes.iter().enumerate().skip(1) {
                let member = proto::Member {
                    node_id: index as u64 + 1,
                    address: node.address.clone(),
                };
                admin
                    .add_learner(proto::AddLearnerRequest {
                        member: Some(member),
                    })
                    .await?;
            }
            let voters = (1..=self.nodes.len() as u64).collect();
            admin
                .change_membership(proto::ChangeMembershipRequest {
                    voters,
                    remove_others: false,
                    add: false,
                })
                .await?;
            self.wait_for_leader(self.nodes.len()).await?;
        }
        Ok(())
    }

    /// Waits until the first `members` nodes know node 1 as leader.
    async fn wait_for_leader(&self, members: usize) -> Result<()> {
        let deadline = Instant::now() + FORM_TIMEOUT;
        while !self.nodes[..members]
            .iter()
            .all(|node| node.leader() == Some(1))
        {
            if Instant::now() > deadline {
                let leaders: Vec<_> = self.nodes.iter().map(Node::leader).collect();
                return Err(format!("node 1 did not become everyone's leader: {leaders:?}").into());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Ok(())
    }

    fn leader(&self) -> &Node {
        &self.nodes[0]
    }

    fn stop(mut self) {
        // Followers first, so the leader does not spend its shutdown retrying
        // them; then the leader.
        while let Some(mut node) = self.nodes.pop() {
            node.stop();
        }
    }
}

/// Where a writer sends its writes.
#[derive(Clone)]
enum Target {
    Grpc(StoreClient<Channel>),
    InProcess(Arc<StoreNode>),
}

impl Target {
    /// The commands' results and the log index that carried them.
    async fn write(&mut self, commands: Vec<Command>) -> Result<(Vec<CommandResult>, u64)> {
        match self {
            Target::Grpc(client) => {
                let response = client
                    .write(proto::WriteRequest { commands })
                    .await?
                    .into_inner();
                Ok((response.results, response.log_index))
            }
            Target::InProcess(node) => {
                let outcome = node.write(commands).await?;
                Ok((outcome.results, outcome.log_index))
            }
        }
    }
}

fn connect_command(client_id: &str) -> Command {
    Command {
        kind: Some(Kind::Connect(proto::Connect {
            client_id: client_id.into(),
            edge_id: EDGE.into(),
            clean_start: true,
            expiry_interval_s: 3600,
            will: None,
            protocol_version: 5,
            max_persistent_sessions: 0,
            ..proto::Connect::default()
        })),
    }
}

fn writer_client(writer: usize) -> String {
    format!("bench-w{writer:04}")
}

/// Connects the queue's persistent session and one session per writer (for
/// its Subscribes); returns each writer's epoch.
async fn prepare_sessions(target: &mut Target, writers: usize) -> Result<Vec<u64>> {
    let (results, _) = target.write(vec![connect_command(QUEUE_CLIENT)]).await?;
    if !matches!(
        results.first().and_then(|r| r.kind.as_ref()),
        Some(ResultKind::Connected(_))
    ) {
        return Err(format!("connect of {QUEUE_CLIENT} answered {results:?}").into());
    }
    let mut epochs = Vec::with_capacity(writers);
    for writer in 0..writers {
        let (results, _) = target
            .write(vec![connect_command(&writer_client(writer))])
            .await?;
        match results.first().and_then(|r| r.kind.as_ref()) {
            Some(ResultKind::Connected(connected)) => epochs.push(connected.epoch),
            other => return Err(format!("connect answered {other:?}").into()),
        }
    }
    Ok(epochs)
}

fn subscribe_command(writer: usize, epoch: u64, n: u64) -> Command {
    Command {
        kind: Some(Kind::Subscribe(proto::Subscribe {
            client_id: writer_client(writer),
            epoch,
            subscriptions: vec![proto::Subscription {
                filter: format!("bench/{writer}/{}", n % 8),
                options: Some(proto::SubscriptionOptions {
                    qos: 1,
                    ..proto::SubscriptionOptions::default()
                }),
            }],
        })),
    }
}

fn enqueue_command(payload: &Bytes) -> Command {
    Command {
        kind: Some(Kind::Enqueue(proto::Enqueue {
            message: Some(proto::Message {
                topic: "bench/queue".into(),
                payload: payload.clone(),
                qos: 1,
                ..proto::Message::default()
            }),
            targets: vec![proto::EnqueueTarget {
                client_id: QUEUE_CLIENT.into(),
                qos: 1,
                ..proto::EnqueueTarget::default()
            }],
            incoming: None,
            ..proto::Enqueue::default()
        })),
    }
}

/// Whether the results are what a successful write of `payload` yields.
fn expected(payload: Payload, results: &[CommandResult]) -> bool {
    match (payload, results.first().and_then(|r| r.kind.as_ref())) {
        (Payload::Subscribe, Some(ResultKind::Subscribed(_))) => true,
        (Payload::Message256, Some(ResultKind::Enqueued(enqueued))) => enqueued.queued == 1,
        _ => false,
    }
}

#[derive(Debug, Default)]
struct WriterStats {
    latencies_us: Vec<u32>,
    errors: u64,
    first_error: Option<String>,
    min_index: u64,
    max_index: u64,
}

/// One writer: one write at a time until `end`; records the writes started
/// in `[measure_from, end)`.
async fn writer_loop(
    mut target: Target,
    payload: Payload,
    writer: usize,
    epoch: u64,
    measure_from: Instant,
    end: Instant,
) -> WriterStats {
    let message = Bytes::from(vec![0x5A; MESSAGE_BYTES]);
    let mut stats = WriterStats {
        min_index: u64::MAX,
        ..WriterStats::default()
    };
    let mut n = 0u64;
    loop {
        let command = match payload {
            Payload::Subscribe => subscribe_command(writer, epoch, n),
            Payload::Message256 => enqueue_command(&message),
        };
        n += 1;
        let started = Instant::now();
        if started >= end {
            break;
        }
        let outcome = tokio::time::timeout(WRITE_TIMEOUT, target.write(vec![command])).await;
        let elapsed = started.elapsed();
        if started < measure_from {
            continue;
        }
        let failure = match outcome {
            Ok(Ok((results, index))) if expected(payload, &results) => {
                let micros = u32::try_from(elapsed.as_micros()).unwrap_or(u32::MAX);
                stats.latencies_us.push(micros);
                stats.min_index = stats.min_index.min(index);
                stats.max_index = stats.max_index.max(index);
                None
            }
            Ok(Ok((results, _))) => Some(format!("unexpected results {results:?}")),
            Ok(Err(error)) => Some(error.to_string()),
            Err(_) => Some(format!("no reply within {WRITE_TIMEOUT:?}")),
        };
        if let Some(failure) = failure {
            stats.errors += 1;
            stats.first_error.get_or_insert(failure);
            // Do not spin on an immediate error.
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
    stats
}

#[derive(Debug, Clone)]
struct Row {
    voters: usize,
    group_commit: GroupCommit,
    payload: Payload,
    path: Via,
    per_second: f64,
    p50_ms: f64,
    p99_ms: f64,
    max_ms: f64,
    writes_per_entry: f64,
    errors: u64,
    first_error: Option<String>,
}

fn percentile_ms(sorted_us: &[u32], quantile: f64) -> f64 {
    if sorted_us.is_empty() {
        return f64::NAN;
    }
    let rank = ((sorted_us.len() - 1) as f64 * quantile).round() as usize;
    f64::from(sorted_us[rank.min(sorted_us.len() - 1)]) / 1000.0
}

async fn measure(
    targets: Vec<Target>,
    payload: Payload,
    epochs: &[u64],
    options: &Options,
) -> Result<(Vec<u32>, u64, Option<String>, f64)> {
    let start = Instant::now();
    let measure_from = start + Duration::from_secs_f64(options.warmup);
    let end = measure_from + Duration::from_secs_f64(options.secs);
    let mut tasks = Vec::with_capacity(options.writers);
    for writer in 0..options.writers {
        let target = targets[writer % targets.len()].clone();
        tasks.push(tokio::spawn(writer_loop(
            target,
            payload,
            writer,
            epochs[writer],
            measure_from,
            end,
        )));
    }
    let mut latencies = Vec::new();
    let mut errors = 0;
    let mut first_error = None;
    let (mut min_index, mut max_index) = (u64::MAX, 0);
    for task in tasks {
        let stats = task.await?;
        latencies.extend(stats.latencies_us);
        errors += stats.errors;
        if first_error.is_none() {
            first_error = stats.first_error;
        }
        min_index = min_index.min(stats.min_index);
        max_index = max_index.max(stats.max_index);
    }
    latencies.sort_unstable();
    let entries = if max_index >= min_index {
        (max_index - min_index + 1) as f64
    } else {
        f64::NAN
    };
    Ok((latencies, errors, first_error, entries))
}

fn run_group(
    voters: usize,
    group_commit: GroupCommit,
    options: &Options,
    client: &Runtime,
) -> Result<Vec<Row>> {
    let group = Group::start(voters, group_commit, options, client)?;
    let leader = group.leader();
    let endpoint = format!("http://{}", leader.address);
    let channel = client.block_on(Channel::from_shared(endpoint)?.connect())?;
    let grpc = Target::Grpc(StoreClient::new(channel));
    let local = Target::InProcess(leader.store()?.clone());
    let epochs = client.block_on(prepare_sessions(&mut grpc.clone(), options.writers))?;

    let mut rows = Vec::new();
    for payload in [Payload::Subscribe, Payload::Message256] {
        for path in [Via::Grpc, Via::InProcess] {
            let target = match path {
                Via::Grpc => grpc.clone(),
                Via::InProcess => local.clone(),
            };
            let (latencies, errors, first_error, entries) =
                client.block_on(measure(vec![target], payload, &epochs, options))?;
            let leader_now = group.leader().leader();
            let mut first_error = first_error;
            if leader_now != Some(1) {
                first_error.get_or_insert(format!("leader changed to {leader_now:?}"));
            }
            let writes = latencies.len() as u64;
            let row = Row {
                voters,
                group_commit,
                payload,
                path,
                per_second: writes as f64 / options.secs,
                p50_ms: percentile_ms(&latencies, 0.50),
                p99_ms: percentile_ms(&latencies, 0.99),
                max_ms: percentile_ms(&latencies, 1.0),
                writes_per_entry: writes as f64 / entries,
                errors,
                first_error,
            };
            eprintln!("{}", row_line(&row, None));
            rows.push(row);
        }
    }
    drop(grpc);
    drop(local);
    group.stop();
    Ok(rows)
}

fn setup_name(voters: usize) -> &'static str {
    if voters == 1 { "1 voter" } else { "3 voters" }
}

fn row_line(row: &Row, ratio: Option<f64>) -> String {
    let ratio = ratio.map_or_else(|| "".to_owned(), |ratio| format!("{ratio:.2}x"));
    format!(
        "| {} | {} | {} | {} | {:.0} | {:.2} | {:.2} | {:.1} | {:.1} | {} | {} |",
        setup_name(row.voters),
        row.path.name(),
        group_commit_name(row.group_commit),
        row.payload.name(),
        row.per_second,
        row.p50_ms,
        row.p99_ms,
        row.max_ms,
        row.writes_per_entry,
        row.errors,
        ratio,
    )
}

/// The cost of one small append plus `fdatasync` on the data directory's
/// disk, for reading the figures: p50 and p99 in ms over about a second.
fn fsync_probe(dir: &Path) -> Result<(f64, f64, usize)> {
    let dir = tempfile::Builder::new()
        .prefix("rookery-fsync-probe-")
        .tempdir_in(dir)?;
    let mut file = std::fs::File::create(dir.path().join("probe"))?;
    let block = [0x5Au8; 300];
    let mut latencies = Vec::new();
    let until = Instant::now() + Duration::from_secs(1);
    while Instant::now() < until && latencies.len() < 10_000 {
        let started = Instant::now();
        file.write_all(&block)?;
        file.sync_data()?;
        latencies.push(u32::try_from(started.elapsed().as_micros()).unwrap_or(u32::MAX));
    }
    latencies.sort_unstable();
    Ok((
        percentile_ms(&latencies, 0.5),
        percentile_ms(&latencies, 0.99),
        latencies.len(),
    ))
}

fn main() -> Result<()> {
    let options = Options::parse()?;
    let runs = options.voters.len() * 2 * 2 * 2;
    let per_run = options.warmup + options.secs;
    // A hung group must not hold the machine: give up well after the
    // expected end (runs, plus group formation and shutdown).
    let limit = Duration::from_secs_f64(runs as f64 * (per_run + 15.0) + 120.0);
    std::thread::spawn(move || {
        std::thread::sleep(limit);
        eprintln!("store bench: still running after {limit:?}; giving up");
        std::process::exit(2);
    });

    let (fsync_p50, fsync_p99, fsyncs) = fsync_probe(&options.dir)?;
    eprintln!(
        "store bench: {} writers, {:.1} s warm-up + {:.1} s per run, {runs} runs, data under {}",
        options.writers,
        options.warmup,
        options.secs,
        options.dir.display(),
    );
    eprintln!(
        "fsync probe: 300-byte append + fdatasync p50 {fsync_p50:.2} ms, p99 {fsync_p99:.2} ms ({fsyncs} in 1 s)"
    );

    let client = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("bench-writers")
        .enable_all()
        .build()?;
    let started = Instant::now();
    let mut rows = Vec::new();
    for &voters in &options.voters {
        for group_commit in [GroupCommit::default(), GroupCommit::Off] {
            rows.extend(run_group(voters, group_commit, &options, &client)?);
        }
    }
    client.shutdown_timeout(Duration::from_secs(2));

    let mut table = String::new();
    writeln!(
        table,
        "| Setup | Path | Group commit | Payload | Writes/s | p50 ms | p99 ms | max ms | Writes/entry | Errors | On/off |"
    )?;
    writeln!(
        table,
        "| --- | --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"
    )?;
    for row in &rows {
        let ratio = match row.group_commit {
            GroupCommit::On { .. } => rows
                .iter()
                .find(|off| {
                    off.group_commit == GroupCommit::Off
                        && off.voters == row.voters
                        && off.payload == row.payload
                        && off.path == row.path
                })
                .map(|off| row.per_second / off.per_second),
            GroupCommit::Off => None,
        };
        writeln!(table, "{}", row_line(row, ratio))?;
    }
    println!();
    println!(
        "{} writers, one write at a time each; {:.1} s measured after {:.1} s warm-up; fsync p50 {fsync_p50:.2} ms",
        options.writers, options.secs, options.warmup
    );
    print!("{table}");
    for row in rows.iter().filter(|row| row.first_error.is_some()) {
        println!(
            "{} {} {} {}: {} errors, first: {}",
            setup_name(row.voters),
            row.path.name(),
            group_commit_name(row.group_commit),
            row.payload.name(),
            row.errors,
            row.first_error.as_deref().unwrap_or(""),
        );
    }
    println!("total {:.0} s", started.elapsed().as_secs_f64());
    Ok(())
}
