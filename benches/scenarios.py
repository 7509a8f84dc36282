#!/usr/bin/env python3
"""The standard scenarios of docs/benchmarks.md, side by side.

Runs each scenario against each broker in one invocation (a fresh broker
process per scenario, brokers alternating), with `rookery-bench` as the
generator, and writes the machine, the versions, the commands and a table of
throughput, latency and memory with Rookery's ratio to each peer into
docs/benchmarks.md (between the `scenarios:begin`/`scenarios:end` markers).

    cargo build --release --workspace --all-targets
    python3 benches/scenarios.py                 # everything, one round: about 9 min
    python3 benches/scenarios.py --duration 5 --only p2p-qos1,latency-10k

Peers: Mosquitto from Debian (`apt-get install mosquitto`) and rumqttd
(`cargo install rumqttd`); a peer that is not installed is left out and the
table says so. `rookery-cluster` is three Rookery nodes (each store voter
and edge) on 127.0.0.1-3 with every client on node 1: its durable row is
the cost of a 3-voter Raft commit. `rookery-cross-edge` is the same cluster
with the publishers on node 2 and the subscribers on node 3, so that every
message is forwarded between edges, as most are behind a load balancer. A
cluster's CPU figures are the sum over its three processes. Every broker and
every run is bounded in time.
"""

import argparse
import datetime
import json
import os
import platform
import resource
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TARGET = Path(os.environ.get("CARGO_TARGET_DIR", ROOT / "target"))
DOC = ROOT / "docs" / "benchmarks.md"
BEGIN = "<!-- scenarios:begin -->"
END = "<!-- scenarios:end -->"

# (key, title, rookery-bench arguments, the figure compared)
# `rate`: messages received per second, higher is better; `p99`: latency at
# a fixed rate, lower is better; `rss`: broker memory per idle connection,
# lower is better.
SCENARIOS = [
    ("fan-in-qos0", "Fan-in QoS 0: 100 publishers → 1 wildcard subscriber, 64 B",
     ["run", "--pubs", "100", "--subs", "1", "-t", "bench/%i", "-f", "bench/#", "-q", "0"], "rate"),
    ("fan-out-qos0", "Fan-out QoS 0: 1 publisher → 100 subscribers, 64 B",
     ["run", "--pubs", "1", "--subs", "100", "-t", "bench/fan", "-f", "bench/fan", "-q", "0"], "rate"),
    ("p2p-qos1", "Point-to-point QoS 1: 50 pairs, clean sessions",
     ["run", "--pubs", "50", "--subs", "50", "-t", "bench/%i", "-f", "bench/%i", "-q", "1"], "rate"),
    ("durable-qos1", "QoS 1 to persistent sessions: 50 pairs (Rookery commits each to disk)",
     ["run", "--pubs", "50", "--subs", "50", "-t", "bench/%i", "-f", "bench/%i", "-q", "1",
      "--persistent"], "rate"),
    ("p2p-qos2", "QoS 2: 10 pairs",
     ["run", "--pubs", "10", "--subs", "10", "-t", "bench/%i", "-f", "bench/%i", "-q", "2"], "rate"),
    ("shared-qos1", "Shared subscription QoS 1: 100 publishers → a group of 10",
     ["run", "--pubs", "100", "--subs", "10", "-t", "bench/%i", "-f", "$share/g/bench/#",
      "-q", "1"], "rate"),
    ("latency-10k", "Latency at 10,000 msg/s: 100 publishers × 100/s → 1 subscriber, QoS 0",
     ["run", "--pubs", "100", "--subs", "1", "-t", "bench/%i", "-f", "bench/#", "-q", "0",
      "-r", "100"], "p99"),
    ("latency-10k-qos1", "Latency at 10,000 msg/s: 100 publishers × 100/s → 1 subscriber, QoS 1",
     ["run", "--pubs", "100", "--subs", "1", "-t", "bench/%i", "-f", "bench/#", "-q", "1",
      "-r", "100"], "p99"),
    ("idle-10k", "10,000 idle connections",
     ["conn", "-c", "10000", "--connect-rate", "5000", "--processes", "2",
      "--source-ips", "127.0.0.1-127.0.0.4"], "rss"),
    ("idle-20k", "19,000 idle connections (the per-process open-file limit is 20,000)",
     ["conn", "-c", "19000", "--connect-rate", "5000", "--processes", "2",
      "--source-ips", "127.0.0.1-127.0.0.4"], "rss"),
]

PEERS = ["mosquitto", "rumqttd"]
CLUSTERS = ("rookery-cluster", "rookery-cross-edge")

# The generator shares the machine's cores with the broker: with one worker
# thread per core it took CPU and caused context switches that a
# single-threaded broker pays for in full (Mosquitto's point-to-point QoS 1
# rate rose 1.44x with one thread instead of two, Rookery's 1.12x, on
# 2 cores). One thread keeps the generator's share at most one core.
GENERATOR_THREADS = 1


def free_port(host="127.0.0.1"):
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def raise_open_files():
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def wait_for_port(port, process, seconds=30, host="127.0.0.1"):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"broker exited with {process.returncode}")
        try:
            with socket.create_connection((host, port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"broker not listening on {port} after {seconds} s")


class Broker:
    """One broker process in its own directory, stopped by `stop`."""

    def __init__(self, name, workdir):
        self.name = name
        self.dir = Path(tempfile.mkdtemp(prefix=f"{name}-", dir=workdir))
        self.host = "127.0.0.1"
        self.port = free_port()
        # Where subscribers connect, when not where publishers do.
        self.sub_address = None
        self.log = open(self.dir / "log", "wb")
        # The other nodes of a cluster; `process` is the one publishers use.
        self.others = []
        if name in CLUSTERS:
            self.start_cluster()
            return
        self.process = subprocess.Popen(
            self.command(), cwd=self.dir, stdout=self.log, stderr=subprocess.STDOUT,
            preexec_fn=raise_open_files)
        wait_for_port(self.port, self.process)

    def start_cluster(self, nodes=3):
        hosts = [f"127.0.0.{i}" for i in range(1, nodes + 1)]
        stores = [f"{host}:{free_port(host)}" for host in hosts]
        seeds = ", ".join(f'"{store}"' for store in stores)
        processes = []
        for i, host in enumerate(hosts, start=1):
            port = self.port if i == 1 else free_port(host)
            conf = self.dir / f"node{i}.toml"
            conf.write_text(
                f'node_id = {i}\ndata_dir = "{self.dir / f"data{i}"}"\n'
                f'[log]\nlevel = "warn"\n[metrics]\nlisten = "off"\n'
                f'[store]\nlisten = "{stores[i - 1]}"\n'
                f'[cluster]\nseeds = [{seeds}]\nbootstrap_expect = {nodes}\n'
                f'forward_listen = "{host}:0"\n'
                f'[[broker.listeners]]\nkind = "tcp"\naddress = "{host}:{port}"\n')
            processes.append((subprocess.Popen(
                [str(TARGET / "release" / "rookery"), "serve", "--config", str(conf)],
                cwd=self.dir, stdout=self.log, stderr=subprocess.STDOUT,
                preexec_fn=raise_open_files), host, port))
        for process, host, port in processes:
            wait_for_port(port, process, seconds=60, host=host)
        publishers = 1 if self.name == "rookery-cluster" else 2
        self.process, self.host, self.port = processes[publishers - 1]
        self.others = [p for p, _, _ in processes if p is not self.process]
        if self.name == "rookery-cross-edge":
            _, host, port = processes[2]
            self.sub_address = (host, port)
        # The clients' nodes are up; the store's leader may still be elected.
        time.sleep(1)

    def command(self):
        if self.name == "rookery":
            return [str(TARGET / "release" / "rookery"), "serve",
                    "--listen", f"127.0.0.1:{self.port}", "--data-dir", str(self.dir / "data"),
                    "--metrics-listen", "off", "--log-level", "warn"]
        if self.name == "mosquitto":
            conf = self.dir / "mosquitto.conf"
            conf.write_text(f"listener {self.port} 127.0.0.1\nallow_anonymous true\n")
            return [mosquitto_binary(), "-c", str(conf)]
        if self.name == "rumqttd":
            conf = self.dir / "rumqttd.toml"
            conf.write_text(RUMQTTD_CONFIG.replace("PORT", str(self.port)))
            return [rumqttd_binary(), "--config", str(conf)]
        raise ValueError(self.name)

    def stop(self):
        for process in [self.process] + self.others:
            process.terminate()
        for process in [self.process] + self.others:
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        self.log.close()
        shutil.rmtree(self.dir, ignore_errors=True)


# rumqttd's shipped example (rumqttd.toml) with room for 20,000 connections.
RUMQTTD_CONFIG = """id = 0

[router]
id = 0
max_connections = 30010
max_outgoing_packet_count = 200
max_segment_size = 104857600
max_segment_count = 10

[v4.1]
name = "v4-1"
listen = "127.0.0.1:PORT"
next_connection_delay_ms = 0
    [v4.1.connections]
    connection_timeout_ms = 60000
    max_payload_size = 20480
    max_inflight_count = 100
    dynamic_filters = true
"""


def mosquitto_binary():
    return shutil.which("mosquitto") or "/usr/sbin/mosquitto"


def rumqttd_binary():
    return shutil.which("rumqttd") or str(Path.home() / ".cargo" / "bin" / "rumqttd")


def available(name):
    if name == "rookery" or name in CLUSTERS:
        return (TARGET / "release" / "rookery").exists()
    if name == "mosquitto":
        return Path(mosquitto_binary()).exists()
    return Path(rumqttd_binary()).exists()


def version(name):
    try:
        if name == "rookery" or name in CLUSTERS:
            sha = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"],
                                 capture_output=True, text=True).stdout.strip()
            out = subprocess.run([str(TARGET / "release" / "rookery"), "--version"],
                                 capture_output=True, text=True).stdout.strip()
            nodes = {
                "rookery-cluster": ", three nodes on 127.0.0.1-3, clients on node 1",
                "rookery-cross-edge": ", three nodes on 127.0.0.1-3, publishers on node 2 "
                                      "and subscribers on node 3",
            }.get(name, "")
            return f"{out} ({sha}){nodes}"
        if name == "mosquitto":
            out = subprocess.run(["dpkg-query", "-W", "-f=${Version}", "mosquitto"],
                                 capture_output=True, text=True).stdout.strip()
            return f"mosquitto {out} (Debian package)"
        out = subprocess.run([rumqttd_binary(), "--version"], capture_output=True,
                             text=True).stdout.strip()
        return out or "rumqttd"
    except OSError:
        return name


def run_scenario(broker, args, duration, workdir):
    """One rookery-bench run against a fresh broker; returns its JSON report."""
    report = Path(workdir) / f"{broker.name}-{os.getpid()}-{time.monotonic_ns()}.json"
    command = [str(TARGET / "release" / "rookery-bench")] + args + [
        "--host", broker.host, "-p", str(broker.port), "--mqtt", "3.1.1", "-d", str(duration),
        "--threads", str(GENERATOR_THREADS),
        # A cluster's nodes are summed by the generator over its measured phase.
        "--broker-pid", ",".join(str(p.pid) for p in [broker.process] + broker.others),
        "--json", str(report)]
    if broker.sub_address:
        command += ["--sub-host", broker.sub_address[0], "--sub-port", str(broker.sub_address[1])]
    started = time.monotonic()
    finished = subprocess.run(command, capture_output=True, text=True,
                              timeout=duration + 180, preexec_fn=raise_open_files)
    if not report.exists():
        raise RuntimeError(f"no report (exit {finished.returncode}): {finished.stderr[-2000:]}")
    result = json.loads(report.read_text())
    result["exit_status"] = finished.returncode
    result["wall_s"] = time.monotonic() - started
    report.unlink()
    return result


def figure(kind, result):
    if result is None:
        return None
    if kind == "rate":
        return result["throughput"]["received_per_s"]
    if kind == "p99":
        latency = result.get("latency_ms")
        return latency["p99"] if latency else None
    broker = result["cpu"].get("broker") or {}
    return broker.get("rss_bytes_per_connection")


def show(kind, value):
    if value is None:
        return "—"
    if kind == "rate":
        return f"{value / 1000:,.1f}k/s" if value >= 1000 else f"{value:,.0f}/s"
    if kind == "p99":
        return f"{value:.2f} ms"
    return f"{value / 1024:.1f} KiB"


def ratio(kind, ours, theirs):
    """Rookery relative to a peer, > 1 meaning Rookery is better."""
    if ours in (None, 0) or theirs in (None, 0):
        return "—"
    better = ours / theirs if kind == "rate" else theirs / ours
    return f"{better:.2f}×"


def loss(result):
    messages = result["messages"]
    lost = messages.get("lost")
    expected = messages.get("expected")
    if lost is None or not expected:
        return "—"
    return f"{100 * lost / expected:.2f}%"


def detail_row(name, kind, result):
    if result is None:
        return f"| {name} | not run | | | | | | |"
    latency = result.get("latency_ms") or {}
    cpu = result["cpu"]
    broker = cpu.get("broker") or {}
    p50 = f"{latency['p50']:.2f}" if latency else "—"
    p99 = f"{latency['p99']:.2f}" if latency else "—"
    if kind == "rss":
        conns = result["connections"]
        first = f"{conns['connected']:,} connected at {conns['rate_per_s']:,.0f}/s"
    else:
        first = f"{result['throughput']['received_per_s']:,.0f} msg/s, loss {loss(result)}"
    rss = broker.get("peak_rss_kib")
    return (f"| {name} | {first} | {p50} / {p99} | {broker.get('percent', 0):.0f}% | "
            f"{cpu_per_million(kind, result)} | {cpu['generator_percent']:.0f}% | "
            f"{(rss or 0) / 1024:.0f} MiB | {'ok' if result['verdict']['ok'] else 'FAILED: ' + '; '.join(result['verdict']['reasons'])} |")


def cpu_per_million(kind, result):
    """Broker CPU-seconds per million messages received: the figure that
    does not move with the machine's noise as rates do."""
    broker = result["cpu"].get("broker") or {}
    seconds = result["cpu"].get("seconds") or 0
    received = result.get("throughput", {}).get("received_per_s") or 0
    if kind == "rss" or not broker or not seconds or not received:
        return "—"
    return f"{broker['cpu_s'] / (received * seconds / 1e6):.2f} s"


def machine():
    cpu = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return f"{os.cpu_count()} cores ({cpu}), {memory:.0f} GiB, Linux {platform.release()}"


def markdown(brokers, results, options, started):
    lines = [BEGIN, ""]
    lines.append(f"Measured {started:%Y-%m-%d} on {machine()}, with "
                 f"`python3 benches/scenarios.py --duration {options.duration}"
                 f"{' --only ' + options.only if options.only else ''}` "
                 f"at {version('rookery').split('(')[-1].rstrip(')')} "
                 f"({options.rounds} round(s); each broker's median run is shown, the lower "
                 "of the middle two for an even count). The generator is `rookery-bench` "
                 f"with {GENERATOR_THREADS} worker thread(s); all brokers and the generator "
                 "share the machine; MQTT 3.1.1 over TCP.")
    lines.append("")
    for name in brokers:
        lines.append(f"- {version(name)}")
    lines.append("")
    peers = [p for p in brokers if not p.startswith("rookery")]
    ours_names = [n for n in brokers if n.startswith("rookery")]
    # Crossing edges is compared with the same cluster's clients on one
    # node: what forwarding costs, not what the cluster does against peers.
    comparisons = [(o, p) for o in ours_names if o != "rookery-cross-edge" for p in peers]
    if "rookery-cross-edge" in brokers and "rookery-cluster" in brokers:
        comparisons.append(("rookery-cross-edge", "rookery-cluster"))
    label = {"rookery": "Rookery", "rookery-cluster": "Cluster",
             "rookery-cross-edge": "Cross-edge"}
    header = "| Scenario | " + " | ".join(brokers) + " | " + " | ".join(
        f"{label[o]} vs {label.get(p, p)}" for o, p in comparisons) + " |"
    lines.append(header)
    lines.append("|" + " --- |" * (1 + len(brokers) + len(comparisons)))
    for key, title, _, kind in SCENARIOS:
        if key not in results:
            continue
        median = {name: median_of(kind, results[key].get(name, [])) for name in brokers}
        cells = [show(kind, figure(kind, median[name])) for name in brokers]
        ratios = [ratio(kind, figure(kind, median[o]), figure(kind, median[p]))
                  for o, p in comparisons]
        lines.append(f"| {title} | " + " | ".join(cells + ratios) + " |")
    lines.append("")
    lines.append("Throughput is messages received per second (every subscriber's "
                 "deliveries) with unbounded publishers; latency is p99 end to end; "
                 "memory is the broker's resident memory per idle connection. A ratio "
                 "above 1× means Rookery is better (faster, or lower latency or memory).")
    lines.append("")
    lines.append("The median run of each broker in detail:")
    lines.append("")
    lines.append("| Broker | Throughput | Latency p50 / p99 (ms) | Broker CPU | Broker CPU per million messages | Generator CPU | Broker peak RSS | Verdict |")
    lines.append("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for key, title, args, kind in SCENARIOS:
        if key not in results:
            continue
        lines.append(f"| **{title}** — `rookery-bench {' '.join(quote(a) for a in args)}` | | | | | | | |")
        for name in brokers:
            best = median_of(kind, results[key].get(name, []))
            lines.append(detail_row(name, kind, best))
    lines.append("")
    lines.append(END)
    return "\n".join(lines)


def quote(arg):
    return f"'{arg}'" if any(c in arg for c in "$#%* ") else arg


def median_of(kind, runs):
    """The median run by the scenario's figure (the lower of the middle two
    for an even count, "lower" meaning worse for the broker): a best run
    would flatter whichever broker the machine's noise favoured."""
    runs = [r for r in runs if figure(kind, r) is not None]
    if not runs:
        return None
    worst_first = sorted(runs, key=lambda r: figure(kind, r), reverse=(kind != "rate"))
    return worst_first[(len(worst_first) - 1) // 2]


def write_doc(text):
    doc = DOC.read_text()
    if BEGIN in doc and END in doc:
        head, rest = doc.split(BEGIN, 1)
        tail = rest.split(END, 1)[1]
        doc = head + text + tail
    else:
        doc = doc.rstrip() + "\n\n## Side by side\n\n" + text + "\n"
    DOC.write_text(doc)


def main():
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=int, default=10, help="seconds per run")
    parser.add_argument("--rounds", type=int, default=1, help="runs per scenario and broker")
    parser.add_argument("--only", default="", help="comma-separated scenario keys")
    parser.add_argument("--brokers",
                        default="rookery,rookery-cluster,rookery-cross-edge,mosquitto,rumqttd")
    parser.add_argument("--no-doc", action="store_true", help="do not rewrite docs/benchmarks.md")
    parser.add_argument("--json", help="also write every report to this file")
    options = parser.parse_args()

    for tool in ("rookery", "rookery-bench"):
        if not (TARGET / "release" / tool).exists():
            sys.exit(f"{TARGET / 'release' / tool} is missing: "
                     "cargo build --release --workspace --all-targets")
    brokers = [b for b in options.brokers.split(",") if b]
    missing = [b for b in brokers if not available(b)]
    for name in missing:
        print(f"skipping {name}: not installed", file=sys.stderr)
    brokers = [b for b in brokers if b not in missing]
    wanted = set(filter(None, options.only.split(",")))
    scenarios = [s for s in SCENARIOS if not wanted or s[0] in wanted]

    started = datetime.datetime.now()
    results = {}
    with tempfile.TemporaryDirectory(prefix="rookery-scenarios-") as workdir:
        for round_index in range(options.rounds):
            for index, (key, title, args, kind) in enumerate(scenarios):
                # Alternate which broker goes first, so that none always runs
                # on a machine warmed (or tired) by the others.
                shift = (index + round_index) % len(brokers)
                order = brokers[shift:] + brokers[:shift]
                for name in order:
                    if name in CLUSTERS and kind == "rss":
                        # Memory per connection of one node of three says
                        # nothing the single node does not.
                        continue
                    print(f"[{datetime.datetime.now():%H:%M:%S}] {key} on {name}", file=sys.stderr)
                    broker = Broker(name, workdir)
                    try:
                        result = run_scenario(broker, args, options.duration, workdir)
                    except (RuntimeError, subprocess.TimeoutExpired, json.JSONDecodeError) as error:
                        print(f"  failed: {error}", file=sys.stderr)
                        result = None
                    finally:
                        broker.stop()
                    if result is not None:
                        results.setdefault(key, {}).setdefault(name, []).append(result)
                        print(f"  {show(kind, figure(kind, result))}, verdict "
                              f"{'ok' if result['verdict']['ok'] else result['verdict']['reasons']}",
                              file=sys.stderr)
                    time.sleep(1)
    if options.json:
        Path(options.json).write_text(json.dumps(results, indent=1))
    text = markdown(brokers, results, options, started)
    print(text)
    if not options.no_doc:
        write_doc(text)


if __name__ == "__main__":
    main()
