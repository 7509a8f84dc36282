#!/usr/bin/env python3
"""QoS 1 and QoS 2 load through one address (the compose cluster's HAProxy),
from persistent sessions, checked with an independent client (paho-mqtt).

Publishers (QoS 1 and QoS 2, MQTT 5 with a session expiry and MQTT 3.1.1
with Clean Session 0) send numbered messages, "<publisher>:<seq>", each
tagged with the phase that was current when it was first sent; subscribers
of both protocols (persistent sessions too) take every topic at QoS 2, so
each message reaches each subscriber at its publisher's QoS. A client whose
connection drops connects again (HAProxy sends it to an edge that is up) and
resumes its session; paho sends its unacknowledged messages again.

The run is steered through a control directory:
  phase   the current phase's name (test.sh writes it before each fault);
  stop    once present, publishers stop, the run drains and reports;
  status  written here twice a second (JSON: started, acked, refused, ...).

At the end, per phase and QoS: sent, acknowledged (PUBACK / PUBCOMP
success), refused (a reason code of 0x80 or more), unresolved (never
answered), delivered (to every subscriber), lost (acknowledged but missing
at a subscriber), QoS 2 duplicates, QoS 1 redeliveries (allowed), the
longest time a publisher went without an acknowledgement, and client
disconnections. Exits 1 on any acknowledged message lost, any QoS 2
duplicate, a publish never answered, a resumed session found missing, or a
phase without traffic; 2 on a usage error or the overall timeout.
"""

import argparse
import collections
import json
import os
import signal
import socket
import sys
import threading
import time

import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

SESSION_EXPIRY_S = 3600
KEEP_ALIVE_S = 30
CONNACK_WAIT_S = 5.0
# A phase in which fewer messages than this were acknowledged, per QoS, did
# not test anything: the load was not running.
MIN_ACKED_PER_PHASE = 10


def keep_owed_pubrels(client):
    """Works around paho-mqtt 2.x sending a QoS 2 PUBLISH again after its
    PUBREL. Each connect() resets the unfinished messages: one waiting for
    PUBCOMP becomes "resend PUBREL"; a second connect() before a CONNACK
    (an edge that refused the client or never answered) finds it in that
    state and makes it "publish", with DUP=0. The server must take that
    PUBLISH for a new message: it had the PUBREL, so the packet identifier
    was free again (MQTT 3.1.1 and 5.0, 4.3.3), and the message reaches
    every subscriber twice. The sender was at fault (4.3.3: it MUST NOT
    send the PUBLISH again once it has sent the PUBREL), not the broker this
    test is about. Putting those messages back to "waiting for PUBCOMP"
    before each connect() lets paho's reset turn them into "resend PUBREL"
    again. Called before every connect(); paho's internals are used as they
    are (an AttributeError if a later version renames them). Returns how
    many messages it put back."""
    kept = 0
    with client._out_message_mutex:
        for message in client._out_messages.values():
            if message.state == mqtt.mqtt_ms_resend_pubrel:
                message.state = mqtt.mqtt_ms_wait_for_pubcomp
                kept += 1
    return kept


def self_test():
    """Two connect() calls that fail leave a message whose PUBREL was sent
    due for PUBREL, not for a PUBLISH (see keep_owed_pubrels). Returns 0
    when that holds, 1 otherwise."""
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="loadcheck-self-test",
                         protocol=mqtt.MQTTv311, clean_session=False)
    message = mqtt.MQTTMessage(mid=1, topic=b"loadcheck/self-test")
    message.qos = 2
    message.state = mqtt.mqtt_ms_wait_for_pubcomp
    client._out_messages[1] = message
    # A port nothing listens on: each connect() fails after paho's reset.
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    for _ in range(2):
        keep_owed_pubrels(client)
        try:
            client.connect("127.0.0.1", port)
        except OSError:
            pass
    if message.state != mqtt.mqtt_ms_resend_pubrel or message.dup:
        print(f"loadcheck self-test: after two failed connects a QoS 2 message whose PUBREL "
              f"was sent is in state {message.state!r} (DUP {message.dup}), not due for PUBREL: "
              f"paho would send its PUBLISH again", file=sys.stderr)
        return 1
    print("loadcheck self-test: a QoS 2 message whose PUBREL was sent stays due for PUBREL "
          "across failed connects")
    return 0


def stamp(when=None):
    """Wall-clock time with milliseconds, to line up with test.sh and the
    nodes' logs (UTC)."""
    when = time.time() if when is None else when
    return time.strftime("%H:%M:%S", time.gmtime(when)) + f".{int(when % 1 * 1000):03d}"


class Control:
    """The control directory: the phase test.sh sets, its stop request."""

    def __init__(self, directory):
        self.directory = directory
        self.lock = threading.Lock()
        self.phase = None
        self.phases = []
        self.started = []   # (wall-clock time, phase) of each phase's start
        self.poll()

    def poll(self):
        try:
            with open(os.path.join(self.directory, "phase")) as f:
                phase = f.read().strip() or "start"
        except FileNotFoundError:
            phase = "start"
        with self.lock:
            if phase != self.phase:
                self.phase = phase
                self.started.append((time.time(), phase))
                if phase not in self.phases:
                    self.phases.append(phase)
                    print(f"loadcheck: {stamp()} phase {phase}", flush=True)
        return os.path.exists(os.path.join(self.directory, "stop"))

    def current(self):
        with self.lock:
            return self.phase

    def write_status(self, status):
        path = os.path.join(self.directory, "status")
        with open(path + ".tmp", "w") as f:
            json.dump(status, f)
        os.replace(path + ".tmp", path)


class Client(threading.Thread):
    """A paho client on a persistent session, driven by its own thread:
    connects (again) when not connected, runs paho's loop otherwise."""

    def __init__(self, name, protocol, args, control, stop):
        super().__init__(name=name, daemon=True)
        self.args = args
        self.control = control
        self.protocol = protocol
        self.stop_event = stop
        self.lock = threading.Lock()
        self.connected = False
        self.ever_connected = False
        self.problems = []
        # (when, phase) of each connection lost, and of each CONNACK.
        self.disconnects = []
        self.connects = []
        # QoS 2 messages keep_owed_pubrels kept from a second PUBLISH.
        self.pubrels_kept = 0
        if protocol == mqtt.MQTTv5:
            self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=name,
                                      protocol=mqtt.MQTTv5)
        else:
            self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=name,
                                      protocol=mqtt.MQTTv311, clean_session=False)
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = self._on_disconnect

    def problem(self, text):
        with self.lock:
            self.problems.append(text)

    def _on_connect(self, client, userdata, flags, reason_code, properties):
        if reason_code.is_failure:
            # Not a problem by itself: a node may refuse while it starts.
            return
        resumed = bool(flags.session_present)
        if self.ever_connected and not resumed:
            self.problem(f"reconnected without its session (phase {self.control.current()})")
        with self.lock:
            self.connected = True
            self.ever_connected = True
            self.connects.append((time.time(), self.control.current()))
        self.on_session(resumed)

    def _on_disconnect(self, client, userdata, flags, reason_code, properties):
        with self.lock:
            if self.connected:
                self.disconnects.append((time.time(), self.control.current()))
            self.connected = False

    def on_session(self, resumed):
        """Called on each CONNACK that accepted the connection."""

    def step(self):
        """Called between network loops while connected."""

    def connect(self):
        self.pubrels_kept += keep_owed_pubrels(self.client)
        try:
            if self.protocol == mqtt.MQTTv5:
                props = Properties(PacketTypes.CONNECT)
                props.SessionExpiryInterval = SESSION_EXPIRY_S
                self.client.connect(self.args.host, self.args.port, keepalive=KEEP_ALIVE_S,
                                    clean_start=False, properties=props)
            else:
                self.client.connect(self.args.host, self.args.port, keepalive=KEEP_ALIVE_S)
        except OSError:
            time.sleep(0.2)
            return
        deadline = time.monotonic() + CONNACK_WAIT_S
        while not self.connected and time.monotonic() < deadline:
            if self.client.loop(timeout=0.02) != mqtt.MQTT_ERR_SUCCESS:
                break
        if not self.connected:
            # HAProxy accepted the socket but no edge answered: try again.
            time.sleep(0.2)

    def run(self):
        while not self.stop_event.is_set():
            if not self.connected:
                self.connect()
                continue
            self.client.loop(timeout=0.01)
            if self.connected:
                self.step()
        if self.connected:
            with self.lock:
                self.connected = False
            self.client.disconnect()
            for _ in range(10):
                self.client.loop(timeout=0.01)


class Publisher(Client):
    def __init__(self, name, protocol, qos, topic, args, control, stop, publishing):
        super().__init__(name, protocol, args, control, stop)
        self.qos = qos
        self.topic = topic
        self.publishing = publishing
        self.interval = 1.0 / args.rate
        self.next_at = 0.0
        self.seq = 0
        self.pending = {}      # mid -> seq
        self.phase_of = {}     # seq -> phase when first sent
        self.sent_at = {}      # seq -> wall-clock time when first sent
        self.acked = {}        # seq -> wall-clock time of the acknowledgement
        self.refused = {}      # seq -> reason code
        self.mid_of = {}       # seq -> packet identifier
        # paho's log of this client's packets and connects, to show what it
        # sent for a message delivered twice.
        self.packet_log = collections.deque(maxlen=50000)
        self.client.on_log = self._on_log
        self.client.max_inflight_messages_set(args.max_pending)
        self.client.on_publish = self._on_publish

    def _on_log(self, client, userdata, level, text):
        if text.startswith(("Sending PUBLISH", "Received PUBREC", "Sending PUBREL",
                            "Received PUBCOMP", "Sending CONNECT", "Received CONNACK")):
            self.packet_log.append((time.time(), text))

    def packets_of(self, mid, since, until):
        """What paho logged between `since` and `until` of packet `mid`, and
        its connects."""
        tags = (f"m{mid})", f"m{mid},", f"(Mid: {mid})")
        return [f"{stamp(t)} {text.split(', properties')[0].split(' client_id')[0]}"
                for t, text in list(self.packet_log)
                if since <= t <= until and ("CONN" in text or any(tag in text for tag in tags))]

    def _on_publish(self, client, userdata, mid, reason_code, properties):
        with self.lock:
            seq = self.pending.pop(mid, None)
            if seq is None:
                return
            if reason_code.is_failure:
                self.refused[seq] = reason_code.value
            else:
                self.acked[seq] = time.time()

    def step(self):
        now = time.monotonic()
        if not self.publishing.is_set() or now < self.next_at:
            return
        with self.lock:
            if len(self.pending) >= self.args.max_pending:
                return
        seq = self.seq
        info = self.client.publish(self.topic, f"{self.name}:{seq}".encode(), qos=self.qos)
        if info.rc in (mqtt.MQTT_ERR_SUCCESS, mqtt.MQTT_ERR_NO_CONN):
            # Queued by paho either way: sent (again) once connected.
            with self.lock:
                self.pending[info.mid] = seq
                self.mid_of[seq] = info.mid
                self.phase_of[seq] = self.control.current()
                self.sent_at[seq] = time.time()
            self.seq += 1
        # Steady pace; after a pause, no burst to catch up.
        self.next_at = max(self.next_at + self.interval, now)

    def outstanding(self):
        with self.lock:
            return len(self.pending)


class Subscriber(Client):
    def __init__(self, name, protocol, topic_filter, args, control, stop):
        super().__init__(name, protocol, args, control, stop)
        self.topic_filter = topic_filter
        self.subscribed = threading.Event()
        self.received = collections.Counter()   # (publisher, seq) -> deliveries
        self.arrivals = {}                      # (publisher, seq) -> [(time, packet id, DUP)]
        self.qos_seen = {}                      # publisher -> set of QoS received
        self.client.on_message = self._on_message
        self.client.on_subscribe = self._on_subscribe

    def on_session(self, resumed):
        # The subscription is part of the session: made once, kept across
        # reconnections (a session found missing is reported above).
        if not resumed:
            self.client.subscribe(self.topic_filter, qos=2)

    def _on_subscribe(self, client, userdata, mid, reason_codes, properties):
        if any(code.is_failure for code in reason_codes):
            self.problem(f"SUBSCRIBE refused: {reason_codes}")
        else:
            self.subscribed.set()

    def _on_message(self, client, userdata, message):
        try:
            publisher, seq = message.payload.decode().rsplit(":", 1)
            key = (publisher, int(seq))
        except ValueError:
            self.problem(f"unexpected payload {message.payload!r} on {message.topic}")
            return
        with self.lock:
            self.received[key] += 1
            self.arrivals.setdefault(key, []).append((time.time(), message.mid, message.dup))
            self.qos_seen.setdefault(publisher, set()).add(message.qos)

    def snapshot(self):
        with self.lock:
            return collections.Counter(self.received)


def phase_at(control, when):
    """The phase current at wall-clock time `when`."""
    current = control.started[0][1]
    for started, phase in control.started:
        if started > when:
            break
        current = phase
    return current


def longest_ack_gaps(publisher, control):
    """Per phase, the longest time between two acknowledgements of this
    publisher, counted in the phase current at the gap's middle (a stall
    that began just before a fault is the fault's)."""
    times = sorted(publisher.acked.values())
    gaps = dict.fromkeys(control.phases, 0.0)
    for earlier, later in zip(times, times[1:]):
        phase = phase_at(control, (earlier + later) / 2)
        gaps[phase] = max(gaps[phase], later - earlier)
    return gaps


def report(publishers, subscribers, control, unresolved_after_drain):
    phases = control.phases
    problems = []
    for client in publishers + subscribers:
        problems += [f"{client.name}: {p}" for p in client.problems]
    received = {s.name: s.snapshot() for s in subscribers}
    gaps = {p.name: longest_ack_gaps(p, control) for p in publishers}
    lost_by = collections.defaultdict(list)   # (publisher, phase) -> [(seq, missing at)]
    duplicates = []                            # (publisher, seq, phase, counts)

    header = (f"{'phase':<22} {'QoS':>3} {'sent':>6} {'acked':>6} {'refused':>7} "
              f"{'unresolved':>10} {'delivered':>9} {'lost':>5} {'dup':>4} {'redeliv':>7} "
              f"{'max ack gap':>11} {'disconnects':>11}")
    print(header)
    print("-" * len(header))
    for phase in phases:
        disconnects = sum(1 for c in publishers + subscribers for _, ph in c.disconnects if ph == phase)
        for qos in (1, 2):
            row = collections.Counter()
            gap = 0.0
            for p in (p for p in publishers if p.qos == qos):
                seqs = [seq for seq, ph in p.phase_of.items() if ph == phase]
                gap = max(gap, gaps[p.name][phase])
                for seq in seqs:
                    key = (p.name, seq)
                    counts = [received[s.name][key] for s in subscribers]
                    row["sent"] += 1
                    row["acked"] += seq in p.acked
                    row["refused"] += seq in p.refused
                    row["unresolved"] += seq not in p.acked and seq not in p.refused
                    row["delivered"] += all(n > 0 for n in counts)
                    if seq in p.acked and not all(n > 0 for n in counts):
                        row["lost"] += 1
                        lost_by[(p, phase)].append(
                            (seq, [s.name for s, n in zip(subscribers, counts) if n == 0]))
                    extra = sum(n - 1 for n in counts if n > 1)
                    if qos == 2 and extra:
                        row["dup"] += extra
                        duplicates.append((p, seq, phase, counts))
                    elif extra:
                        row["redeliv"] += extra
            print(f"{phase:<22} {qos:>3} {row['sent']:>6} {row['acked']:>6} {row['refused']:>7} "
                  f"{row['unresolved']:>10} {row['delivered']:>9} {row['lost']:>5} "
                  f"{row['dup']:>4} {row['redeliv']:>7} {gap:>10.2f}s {disconnects:>11}")
            if row["acked"] < MIN_ACKED_PER_PHASE:
                problems.append(f"phase {phase}: only {row['acked']} QoS {qos} messages "
                                f"acknowledged: the load did not run")
    print()
    kept = sum(p.pubrels_kept for p in publishers)
    if kept:
        print(f"paho workaround: {kept} times a QoS 2 message whose PUBREL was sent was kept "
              f"from being published again by a second connect (keep_owed_pubrels)")
    for p in publishers:
        codes = collections.Counter(p.refused.values())
        if codes:
            print(f"{p.name}: refused with reason codes "
                  + ", ".join(f"0x{code:02x} x{n}" for code, n in sorted(codes.items())))
        for s in subscribers:
            seen = s.qos_seen.get(p.name, set())
            if seen - {p.qos}:
                problems.append(f"{s.name} received {p.name}'s QoS {p.qos} messages at QoS {sorted(seen)}")
    # Lost: acknowledged, and still missing at a subscriber after the drain.
    for (p, phase), items in lost_by.items():
        seqs = [seq for seq, _ in items]
        missing = collections.Counter(name for _, names in items for name in names)
        first, last = p.sent_at[min(seqs)], p.sent_at[max(seqs)]
        # What the subscribers that missed them did around that time.
        timeline = []
        for s in subscribers:
            if s.name not in missing:
                continue
            around = sorted([(t, "disconnected") for t, _ in s.disconnects if first - 10 < t < last + 10]
                            + [(t, "connected") for t, _ in s.connects if first - 10 < t < last + 10])
            timeline.append(f"{s.name} " + (", ".join(f"{what} {stamp(t)}" for t, what in around)
                                            or "kept its connection"))
        problems.append(
            f"{p.name}: {len(items)} acknowledged messages (phase {phase}, #{min(seqs)}-#{max(seqs)}, "
            f"sent {stamp(first)}-{stamp(last)}, acknowledged "
            f"{stamp(min(p.acked.get(seq, first) for seq in seqs))}-"
            f"{stamp(max(p.acked.get(seq, last) for seq in seqs))}) not delivered: "
            + ", ".join(f"{n} missing at {name}" for name, n in sorted(missing.items()))
            + "; around then: " + "; ".join(timeline))
    # QoS 2 duplicates, with what the publisher's connection did around them.
    for p, seq, phase, counts in duplicates:
        sent, acked = p.sent_at[seq], p.acked.get(seq)
        arrivals = [f"{stamp(t)} (packet {mid}, DUP {int(dup)})"
                    for s in subscribers[:1] for t, mid, dup in s.arrivals.get((p.name, seq), [])]
        around = sorted([(t, "disconnected") for t, _ in p.disconnects if abs(t - sent) < 30]
                        + [(t, "connected") for t, _ in p.connects if abs(t - sent) < 30])
        problems.append(
            f"{p.name} #{seq} (QoS 2, phase {phase}) delivered more than once {counts}: sent "
            f"{stamp(sent)}, acknowledged {stamp(acked) if acked else 'never'}, arrived at "
            f"{subscribers[0].name} {', '.join(arrivals)}; the publisher "
            + (", ".join(f"{what} {stamp(t)}" for t, what in around) or "kept its connection")
            + "; paho sent: " + "; ".join(p.packets_of(p.mid_of.get(seq), sent - 1,
                                                     (acked or sent + 30) + 1)))
    if unresolved_after_drain:
        problems.append(f"{unresolved_after_drain} publishes were never answered "
                        f"(no PUBACK/PUBCOMP) within the drain period")
    return problems


def run(args):
    control = Control(args.control)
    stop_publishers, stop_subscribers = threading.Event(), threading.Event()
    publishing = threading.Event()
    prefix = f"lc-{args.run_id}"
    base_topic = f"loadcheck/{args.run_id}"
    subscribers = []
    for protocol, tag in ((mqtt.MQTTv5, "v5"), (mqtt.MQTTv311, "v311")):
        for i in range(args.subscribers):
            subscribers.append(Subscriber(f"{prefix}-sub-{tag}-{i}", protocol, f"{base_topic}/#",
                                          args, control, stop_subscribers))
    publishers = []
    for qos in (1, 2):
        for protocol, tag in ((mqtt.MQTTv5, "v5"), (mqtt.MQTTv311, "v311")):
            for i in range(args.publishers):
                name = f"{prefix}-pub-q{qos}-{tag}-{i}"
                publishers.append(Publisher(name, protocol, qos, f"{base_topic}/q{qos}/{name}",
                                            args, control, stop_publishers, publishing))

    def status(started):
        control.write_status({
            "started": started,
            "phase": control.current(),
            "acked": sum(len(p.acked) for p in publishers),
            "refused": sum(len(p.refused) for p in publishers),
            "connected": sum(c.connected for c in publishers + subscribers),
            "clients": len(publishers) + len(subscribers),
        })

    status(False)
    for s in subscribers:
        s.start()
    deadline = time.monotonic() + 60
    while not all(s.subscribed.is_set() for s in subscribers):
        if time.monotonic() > deadline:
            print("loadcheck: the subscribers did not subscribe within 60 s", file=sys.stderr)
            return 1
        time.sleep(0.1)
    # Every edge learns the new subscriptions (the route table) before
    # messages are published on other edges.
    time.sleep(2)
    for p in publishers:
        p.start()
    publishing.set()
    print(f"loadcheck: {len(publishers)} publishers at {args.rate}/s each, "
          f"{len(subscribers)} subscribers, through {args.host}:{args.port}", flush=True)

    while not control.poll():
        status(True)
        time.sleep(0.5)

    # Drain: no new messages; wait for every publish to be answered, then for
    # every acknowledged message to reach every subscriber.
    publishing.clear()
    deadline = time.monotonic() + args.drain
    while sum(p.outstanding() for p in publishers) and time.monotonic() < deadline:
        time.sleep(0.2)
    unresolved = sum(p.outstanding() for p in publishers)

    def all_delivered():
        for s in subscribers:
            got = s.snapshot()
            for p in publishers:
                with p.lock:
                    acked = list(p.acked)
                if any(got[(p.name, seq)] == 0 for seq in acked):
                    return False
        return True
    while not all_delivered() and time.monotonic() < deadline:
        time.sleep(0.5)
    # A moment more for late duplicates to show.
    time.sleep(1)
    stop_publishers.set()
    stop_subscribers.set()
    for c in publishers + subscribers:
        c.join(5)
    status(True)

    print()
    problems = report(publishers, subscribers, control, unresolved)
    if problems:
        print("FAILED:")
        for problem in problems[:40]:
            print(f"  - {problem}")
        if len(problems) > 40:
            print(f"  ... and {len(problems) - 40} more")
        return 1
    print("OK: no acknowledged message lost, no QoS 2 message delivered twice, "
          "every publish answered, every session resumed")
    return 0


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=1883)
    parser.add_argument("--control", help="the control directory (required for a run)")
    parser.add_argument("--self-test", action="store_true",
                        help="only check the paho-mqtt workaround (keep_owed_pubrels), offline")
    parser.add_argument("--run-id", default=str(os.getpid()),
                        help="part of every client id and topic (default: the pid)")
    parser.add_argument("--publishers", type=int, default=1,
                        help="publishers per QoS and protocol (default 1: 4 in all)")
    parser.add_argument("--subscribers", type=int, default=2,
                        help="subscribers per protocol (default 2: 4 in all)")
    parser.add_argument("--rate", type=float, default=20.0,
                        help="messages per second per publisher (default 20)")
    parser.add_argument("--max-pending", type=int, default=10,
                        help="unacknowledged messages per publisher (default 10)")
    parser.add_argument("--drain", type=float, default=60.0,
                        help="seconds to wait for answers and deliveries at the end (default 60)")
    parser.add_argument("--timeout", type=int, default=900,
                        help="the whole run's bound in seconds (default 900)")
    args = parser.parse_args()
    if args.self_test:
        sys.exit(self_test())
    if not args.control:
        parser.error("--control is required")
    if args.rate <= 0 or args.publishers < 1 or args.subscribers < 1:
        parser.error("--rate, --publishers and --subscribers must be positive")

    def out_of_time(signum, frame):
        print(f"loadcheck: the run took longer than {args.timeout}s", file=sys.stderr, flush=True)
        os._exit(2)
    signal.signal(signal.SIGALRM, out_of_time)
    signal.alarm(args.timeout)
    sys.exit(run(args))


if __name__ == "__main__":
    main()
