#!/usr/bin/env python3
"""A rolling restart of a 3-node loopback Rookery cluster under QoS 1 and
QoS 2 load, checked with an independent client (paho-mqtt).

Every node is a store voter and an edge. Each node has a QoS 1 and a QoS 2
publisher (MQTT 5, persistent sessions) whose subscribers (persistent
sessions: the QoS 1 one MQTT 3.1.1 with Clean Session 0, the QoS 2 one
MQTT 5 with a session expiry) sit on the other nodes. Each node in turn
(the store leader first) is sent SIGTERM, waited for, and started again on
its data directory; clients of a stopping node reconnect to another node
and resume their sessions (paho sends its unacknowledged messages again).

Checked, for every run:
  - no acknowledged QoS 1/2 message lost (every number a publisher got
    PUBACK or PUBCOMP for reaches its subscriber);
  - no QoS 2 message delivered twice;
  - every session of a stopping node resumed (session present) on another
    node within 2 s of that node's SIGTERM;
  - no client of a node that was not restarting disconnected;
  - no publish refused (a PUBACK or PUBCOMP reason code of 0x80 or more);
  - every node exited 0 after SIGTERM.

It stops by itself (each wait is bounded, the whole run by --timeout) and
exits 0 when every check passed, 1 otherwise.

    pip install paho-mqtt
    cargo build --release
    scripts/rolling-restart.py --release           # target/release/rookery
    scripts/rolling-restart.py --binary PATH --rounds 2
"""

import argparse
import collections
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request

import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

NODES = 3
SESSION_EXPIRY_S = 600
RESUME_BOUND_S = 2.0


def keep_owed_pubrels(client):
    """paho-mqtt 2.x turns a QoS 2 message whose PUBREL was sent into a
    fresh PUBLISH (DUP=0) when connect() is called twice before a CONNACK
    (a node that refused or never answered): the server, which had the
    PUBREL, must take it for a new message, a duplicate the client caused
    (MQTT 4.3.3: no PUBLISH again once the PUBREL is sent). Put such
    messages back to "waiting for PUBCOMP" before each connect(), so that
    paho's reset makes them "resend PUBREL" again; deploy/compose/loadcheck.py
    has the same workaround and a self-test of it."""
    with client._out_message_mutex:
        for message in client._out_messages.values():
            if message.state == mqtt.mqtt_ms_resend_pubrel:
                message.state = mqtt.mqtt_ms_wait_for_pubcomp


def free_port(ip):
    with socket.socket() as s:
        s.bind((ip, 0))
        return s.getsockname()[1]


class Node:
    """One rookery process on 127.0.0.<index>, restartable on its data."""

    def __init__(self, index, binary, root, seeds, ports):
        self.index = index
        self.ip = f"127.0.0.{index}"
        self.binary = binary
        self.dir = os.path.join(root, f"node-{index}")
        os.makedirs(self.dir, exist_ok=True)
        self.store_port, self.mqtt_port, self.http_port, self.forward_port = ports
        self.config = os.path.join(self.dir, "rookery.toml")
        seed_list = ", ".join(f'"{seed}"' for seed in seeds)
        with open(self.config, "w") as f:
            f.write(
                f'node_id = {index}\n'
                f'data_dir = "{self.dir}/data"\n'
                f'roles = ["store", "edge"]\n\n'
                f'[store]\nlisten = "{self.ip}:{self.store_port}"\n\n'
                f'[cluster]\nseeds = [{seed_list}]\nbootstrap_expect = {NODES}\n'
                f'forward_listen = "{self.ip}:{self.forward_port}"\n\n'
                f'[http]\nlisten = "{self.ip}:{self.http_port}"\n'
            )
        self.log_path = os.path.join(self.dir, "rookery.log")
        self.process = None

    @property
    def mqtt(self):
        return (self.ip, self.mqtt_port)

    def start(self):
        log = open(self.log_path, "a")
        log.write("---- started ----\n")
        log.flush()
        env = dict(os.environ, NO_COLOR="1")
        env.setdefault("RUST_LOG", "info")
        self.process = subprocess.Popen(
            [self.binary, "serve", "--config", self.config,
             "--listen", f"{self.ip}:{self.mqtt_port}"],
            stdout=log, stderr=subprocess.STDOUT, env=env)

    def ready(self):
        try:
            with urllib.request.urlopen(
                    f"http://{self.ip}:{self.http_port}/readyz", timeout=2) as r:
                return r.status == 200
        except Exception:
            return False

    def wait_ready(self, limit):
        deadline = time.monotonic() + limit
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"node {self.index} exited: {self.process.returncode}")
            if self.ready():
                return
            time.sleep(0.05)
        raise RuntimeError(f"node {self.index} not ready within {limit}s")

    def is_leader(self):
        try:
            with urllib.request.urlopen(
                    f"http://{self.ip}:{self.http_port}/metrics", timeout=2) as r:
                body = r.read().decode()
        except Exception:
            return False
        return re.search(r"^rookery_store_is_leader 1(\.0)?$", body, re.M) is not None

    def stop(self, limit=30):
        """SIGTERM and wait; (exit code, seconds to exit)."""
        started = time.monotonic()
        self.process.send_signal(signal.SIGTERM)
        try:
            code = self.process.wait(limit)
        except subprocess.TimeoutExpired:
            self.process.kill()
            code = self.process.wait()
        return code, time.monotonic() - started

    def kill(self):
        if self.process and self.process.poll() is None:
            self.process.kill()
            self.process.wait()


class Cluster:
    def __init__(self, binary, root):
        ips = [f"127.0.0.{i}" for i in range(1, NODES + 1)]
        ports = [(free_port(ip), free_port(ip), free_port(ip), free_port(ip)) for ip in ips]
        seeds = [f"{ip}:{p[0]}" for ip, p in zip(ips, ports)]
        self.nodes = [Node(i + 1, binary, root, seeds, ports[i]) for i in range(NODES)]
        # Nodes clients may connect to (a stopping node is taken out first).
        self.up = set(range(1, NODES + 1))
        self.lock = threading.Lock()

    def start(self, limit):
        for node in self.nodes:
            node.start()
        for node in self.nodes:
            node.wait_ready(limit)

    def node(self, index):
        return self.nodes[index - 1]

    def pick(self, after):
        """The next node up after `after` (1-based, wrapping)."""
        with self.lock:
            for k in range(1, NODES + 1):
                candidate = (after - 1 + k) % NODES + 1
                if candidate in self.up:
                    return candidate
        return None

    def leader(self):
        for node in self.nodes:
            if node.process.poll() is None and node.is_leader():
                return node.index
        return None

    def kill_all(self):
        for node in self.nodes:
            node.kill()


class Client(threading.Thread):
    """A paho client on a persistent session, driven by its own thread
    (connect, loop), moving to another node when its connection ends."""

    def __init__(self, name, cluster, home, protocol, stop):
        super().__init__(name=name, daemon=True)
        self.cluster = cluster
        self.home = home
        self.protocol = protocol
        self.stop_event = stop
        self.node = None
        self.connected = False
        self.connecting_since = None
        # (node, connected at, session present, disconnected at, why)
        self.connections = []
        self.errors = []
        self.lock = threading.Lock()
        if protocol == mqtt.MQTTv5:
            self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=name,
                                      protocol=mqtt.MQTTv5)
        else:
            self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=name,
                                      protocol=mqtt.MQTTv311, clean_session=False)
        self.client.max_inflight_messages_set(20)
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = self._on_disconnect

    def _on_connect(self, client, userdata, flags, reason_code, properties):
        if reason_code.is_failure:
            self.errors.append(f"CONNACK {reason_code} from node {self.node}")
            return
        with self.lock:
            self.connected = True
            self.connections.append(
                [self.node, time.monotonic(), bool(flags.session_present), None, None])
        self.on_session()

    def _on_disconnect(self, client, userdata, flags, reason_code, properties):
        with self.lock:
            was = self.connected
            self.connected = False
            if was and self.connections and self.connections[-1][3] is None:
                self.connections[-1][3] = time.monotonic()
                self.connections[-1][4] = str(reason_code)

    def on_session(self):
        """Called once connected."""

    def step(self):
        """Called between network loops while connected."""

    def connect(self):
        # At home when it is up, else the next node up after it (the load
        # stays spread over the nodes).
        node = self.cluster.pick(self.home - 1)
        if node is None:
            time.sleep(0.05)
            return
        host, port = self.cluster.node(node).mqtt
        self.node = node
        keep_owed_pubrels(self.client)
        try:
            if self.protocol == mqtt.MQTTv5:
                props = Properties(PacketTypes.CONNECT)
                props.SessionExpiryInterval = SESSION_EXPIRY_S
                self.client.connect(host, port, keepalive=30, clean_start=False,
                                    properties=props)
            else:
                self.client.connect(host, port, keepalive=30)
        except OSError as error:
            self.errors.append(f"connect to node {node}: {error}")
            time.sleep(0.05)
            return
        deadline = time.monotonic() + 5
        while not self.connected and time.monotonic() < deadline:
            if self.client.loop(timeout=0.02) != mqtt.MQTT_ERR_SUCCESS:
                break

    def run(self):
        while not self.stop_event.is_set():
            if not self.connected:
                self.connect()
                continue
            self.client.loop(timeout=0.01)
            if self.connected:
                self.step()
        if self.connected:
            # Stopped by the run, not disconnected by a node.
            with self.lock:
                self.connected = False
            self.client.disconnect()
            for _ in range(10):
                self.client.loop(timeout=0.01)


class Publisher(Client):
    def __init__(self, name, cluster, home, topic, qos, pace, stop):
        super().__init__(name, cluster, home, mqtt.MQTTv5, stop)
        self.topic = topic
        self.qos = qos
        self.pace = pace
        self.seq = 0
        self.pending = {}  # mid -> seq
        self.acked = []
        self.refused = []  # (seq, reason, when)
        self.next_at = 0.0
        self.client.on_publish = self._on_publish

    def _on_publish(self, client, userdata, mid, reason_code, properties):
        seq = self.pending.pop(mid, None)
        if seq is None:
            return
        if reason_code.is_failure:
            self.refused.append((seq, reason_code.value, time.monotonic()))
        else:
            self.acked.append(seq)

    def step(self):
        now = time.monotonic()
        if now < self.next_at or len(self.pending) >= 10:
            return
        info = self.client.publish(self.topic, str(self.seq).encode(), qos=self.qos)
        if info.rc == mqtt.MQTT_ERR_SUCCESS or info.rc == mqtt.MQTT_ERR_NO_CONN:
            # Queued by paho either way: sent (again) once connected.
            self.pending[info.mid] = self.seq
            self.seq += 1
        self.next_at = now + self.pace


class Subscriber(Client):
    def __init__(self, name, cluster, home, protocol, topic, qos, stop):
        super().__init__(name, cluster, home, protocol, stop)
        self.topic = topic
        self.qos = qos
        self.subscribed = False
        self.received = []
        self.client.on_message = self._on_message
        self.client.on_subscribe = self._on_subscribe

    def on_session(self):
        if not self.subscribed:
            self.client.subscribe(self.topic, qos=self.qos)

    def _on_subscribe(self, client, userdata, mid, reason_codes, properties):
        self.subscribed = True

    def _on_message(self, client, userdata, message):
        try:
            self.received.append(int(message.payload))
        except ValueError:
            self.errors.append(f"unexpected payload {message.payload!r}")


def wait(what, done, limit):
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        if done():
            return True
        time.sleep(0.05)
    print(f"  (gave up waiting for {what} after {limit}s)")
    return False


def run(args):
    root = tempfile.mkdtemp(prefix="rookery-rolling-")
    cluster = Cluster(args.binary, root)
    problems = []
    stop_publishers, stop_subscribers = threading.Event(), threading.Event()
    try:
        print(f"starting {NODES} nodes ({args.binary}) in {root}")
        cluster.start(60)
        publishers, subscribers = [], []
        for i in range(1, NODES + 1):
            for qos, protocol, offset in ((1, mqtt.MQTTv311, 1), (2, mqtt.MQTTv5, 2)):
                topic = f"rolling/q{qos}/{i}"
                sub_home = (i - 1 + offset) % NODES + 1
                subscribers.append(Subscriber(f"rr-sub-q{qos}-{i}", cluster, sub_home,
                                              protocol, topic, qos, stop_subscribers))
                publishers.append(Publisher(f"rr-pub-q{qos}-{i}", cluster, i, topic, qos,
                                            args.pace, stop_publishers))
        for s in subscribers:
            s.start()
        if not wait("subscriptions", lambda: all(s.subscribed for s in subscribers), 30):
            problems.append("subscriptions not acknowledged")
        time.sleep(1)  # routes reach the other edges
        for p in publishers:
            p.start()
        time.sleep(args.settle)

        restarts = []
        for round_ in range(args.rounds):
            leader = cluster.leader()
            order = [leader] + [n for n in range(1, NODES + 1) if n != leader]
            for index in order:
                node = cluster.node(index)
                was_leader = cluster.leader() == index
                with cluster.lock:
                    cluster.up.discard(index)
                began = time.monotonic()
                on_node = [c for c in publishers + subscribers
                           if c.connected and c.node == index]
                code, took = node.stop()
                node.start()
                node.wait_ready(60)
                back = time.monotonic()
                with cluster.lock:
                    cluster.up.add(index)
                restarts.append(dict(node=index, leader=was_leader, began=began,
                                     back=back, exit=code, took=took,
                                     moved=[c.name for c in on_node]))
                time.sleep(args.settle)

        stop_publishers.set()
        for c in publishers:
            c.join(10)
        # Everything acknowledged arrives (the subscribers keep reading).
        by_topic = {s.topic: s for s in subscribers}
        wait("acknowledged messages at the subscribers",
             lambda: all(set(p.acked) <= set(by_topic[p.topic].received)
                         for p in publishers), 30)
        stop_subscribers.set()
        for s in subscribers:
            s.join(10)

        everyone = publishers + subscribers
        print()
        for r in restarts:
            moved = [c for c in everyone if c.name in r["moved"]]
            resumed = []
            for c in moved:
                later = [conn for conn in c.connections if conn[1] > r["began"]]
                if not later:
                    problems.append(f"{c.name} never reconnected after node {r['node']} stopped")
                    continue
                node, at, present, _, _ = later[0]
                if not present:
                    problems.append(f"{c.name} resumed on node {node} without its session")
                resumed.append(at - r["began"])
            refused = [when for p in publishers for (_, _, when) in p.refused
                       if r["began"] <= when <= r["back"] + args.settle]
            slowest = max(resumed) if resumed else 0.0
            print(f"node {r['node']}{' (store leader)' if r['leader'] else ''}: exit {r['exit']} "
                  f"{r['took']:.2f}s after SIGTERM, ready again after {r['back'] - r['began']:.2f}s; "
                  f"{len(moved)} sessions moved, slowest resumed {slowest:.3f}s after SIGTERM; "
                  f"{len(refused)} publishes refused")
            if r["exit"] != 0:
                problems.append(f"node {r['node']} exited {r['exit']} after SIGTERM")
            if slowest > RESUME_BOUND_S:
                problems.append(f"a session moved off node {r['node']} took {slowest:.3f}s to resume")

        for c in everyone:
            for node, at, present, ended, why in c.connections:
                if ended is None:
                    continue
                if not any(r["node"] == node and r["began"] <= ended <= r["back"]
                           for r in restarts):
                    problems.append(f"{c.name} was disconnected from node {node}, "
                                    f"which was not restarting ({why})")
            # A refused connection to a node that is stopping is expected;
            # anything else is a problem, counted by kind.
            kinds = collections.Counter(
                re.sub(r"node \d+", "node N", error) for error in c.errors
                if not error.startswith("connect to node"))
            for kind, n in kinds.items():
                problems.append(f"{c.name}: {kind}" + (f" ({n} times)" if n > 1 else ""))
        for p in publishers:
            s = by_topic[p.topic]
            counts = collections.Counter(s.received)
            lost = sorted(set(p.acked) - set(counts))
            dups = sorted(seq for seq, n in counts.items() if n > 1)
            print(f"{p.name}: {len(p.acked)} acknowledged, {len(p.refused)} refused; "
                  f"{s.name}: {len(s.received)} received, {len(dups)} duplicates")
            if lost:
                problems.append(f"{s.name} lost {len(lost)} acknowledged messages: {lost[:20]}")
            if p.qos == 2 and dups:
                problems.append(f"{s.name} got QoS 2 messages twice: {dups[:20]}")
            if p.refused:
                problems.append(f"{p.name} had {len(p.refused)} publishes refused "
                                f"(reason codes {sorted({r for _, r, _ in p.refused})})")
            if len(p.acked) < 20:
                problems.append(f"{p.name} got only {len(p.acked)} messages through")
    except Exception as error:  # noqa: BLE001 - reported as a failed run
        problems.append(f"the run failed: {error!r}")
    finally:
        stop_publishers.set()
        stop_subscribers.set()
        for node in cluster.nodes:
            if node.process and node.process.poll() is None:
                node.stop(10)
        cluster.kill_all()
        if problems and args.keep:
            print(f"logs kept in {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)
    print()
    if problems:
        print("FAILED:")
        for problem in problems:
            print(f"  - {problem}")
        return 1
    print("OK: nothing lost, no QoS 2 duplicate, no other node's client disconnected, "
          "no publish refused, every session resumed within "
          f"{RESUME_BOUND_S}s, every node exited 0")
    return 0


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    which = parser.add_mutually_exclusive_group()
    which.add_argument("--binary", help="the rookery binary to run")
    which.add_argument("--release", action="store_true",
                       help="$CARGO_TARGET_DIR (or target)/release/rookery")
    which.add_argument("--debug", action="store_true",
                       help="$CARGO_TARGET_DIR (or target)/debug/rookery")
    parser.add_argument("--rounds", type=int, default=1,
                        help="times every node is restarted (default 1)")
    parser.add_argument("--pace", type=float, default=0.01,
                        help="seconds between a publisher's messages (default 0.01)")
    parser.add_argument("--settle", type=float, default=2.0,
                        help="seconds of traffic before and after each restart (default 2)")
    parser.add_argument("--timeout", type=int, default=300,
                        help="the whole run's bound in seconds (default 300)")
    parser.add_argument("--keep", action="store_true",
                        help="keep the nodes' directories and logs of a failed run")
    args = parser.parse_args()
    if not args.binary:
        target = os.environ.get("CARGO_TARGET_DIR", "target")
        args.binary = os.path.join(target, "debug" if args.debug else "release", "rookery")
    if not os.access(args.binary, os.X_OK):
        parser.error(f"no rookery binary at {args.binary} (build it, or give --binary)")

    def out_of_time(signum, frame):
        raise TimeoutError(f"the run took longer than {args.timeout}s")
    signal.signal(signal.SIGALRM, out_of_time)
    signal.alarm(args.timeout)
    sys.exit(run(args))


if __name__ == "__main__":
    main()
