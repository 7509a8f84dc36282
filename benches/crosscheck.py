#!/usr/bin/env python3
"""rookery-bench against a generator nobody on the team wrote.

Runs the same scenario shapes with `rookery-bench` and with bytebeam's
`mqttwrk` (crates.io: `cargo install mqttwrk --version 0.2.0 --locked`)
against each broker, one fresh broker process per run, and prints the rate
each generator measured and whether the two agree within 15%. A broker
figure that the two generators do not agree on is not one to publish
(docs/benchmarks.md, "Checking the generator").

    cargo build --release --workspace --all-targets
    python3 benches/crosscheck.py --mqttwrk ~/.cargo/bin/mqttwrk

mqttwrk publishes a fixed count per publisher on `hello/pub-NNNNN/world`,
and every subscriber subscribes to `hello/+/world`; it has no point-to-point
mode and its QoS 0 subscribers wait for every message (a broker that drops
at QoS 0 hangs it), so the shapes compared are fan-in and fan-out at QoS 1
and fan-in at QoS 2. Each mqttwrk run publishes about as many messages as
rookery-bench delivered in its run of `--duration` seconds, and its rate is
what its subscribers report (received over each subscriber's own time).
"""

import argparse
import datetime
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import scenarios

# (key, title, publishers, subscribers, QoS)
SHAPES = [
    ("fan-in-qos1", "Fan-in QoS 1: 50 publishers → 1 wildcard subscriber, 64 B", 50, 1, 1),
    ("fan-out-qos1", "Fan-out QoS 1: 1 publisher → 50 subscribers, 64 B", 1, 50, 1),
    ("fan-in-qos2", "Fan-in QoS 2: 10 publishers → 1 wildcard subscriber, 64 B", 10, 1, 2),
]

AGREEMENT = 0.15
INFLIGHT = 100


def rookery_bench(broker, pubs, subs, qos, duration, workdir):
    """rookery-bench with mqttwrk's topics and window; its report."""
    args = ["run", "--pubs", str(pubs), "--subs", str(subs), "-t", "hello/pub-%i/world",
            "-f", "hello/+/world", "-q", str(qos), "-s", "64", "--inflight", str(INFLIGHT),
            "--threads", str(scenarios.GENERATOR_THREADS)]
    return scenarios.run_scenario(broker, args, duration, workdir)


def mqttwrk(binary, broker, pubs, subs, qos, count, timeout):
    """mqttwrk's aggregate subscriber rate, or None if it did not finish."""
    command = [binary, "bench", "-S", "127.0.0.1", "-P", str(broker.port),
               "-p", str(pubs), "-s", str(subs), "-n", str(count), "-m", "64",
               "--publish-qos", str(qos), "--subscribe-qos", str(qos),
               "-i", str(INFLIGHT), "-k", "30"]
    try:
        finished = subprocess.run(command, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return None
    output = finished.stdout + finished.stderr
    block = output.split("Aggregate SubStats", 1)
    if len(block) < 2:
        return None
    received = re.search(r"publish_count:\s*(\d+)", block[1])
    rate = re.search(r"throughput:\s*([0-9.]+)", block[1])
    if not received or not rate or int(received.group(1)) < count * pubs * subs:
        return None
    return float(rate.group(1))


def main():
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mqttwrk", default="mqttwrk", help="the mqttwrk binary")
    parser.add_argument("--duration", type=int, default=10, help="seconds per rookery-bench run")
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--brokers", default="rookery,mosquitto,rumqttd")
    parser.add_argument("--only", default="", help="comma-separated shape keys")
    options = parser.parse_args()

    brokers = [b for b in options.brokers.split(",") if b and scenarios.available(b)]
    wanted = set(filter(None, options.only.split(",")))
    shapes = [s for s in SHAPES if not wanted or s[0] in wanted]
    rows = []
    print(f"Measured {datetime.datetime.now():%Y-%m-%d %H:%M} on {scenarios.machine()}",
          file=sys.stderr)
    with tempfile.TemporaryDirectory(prefix="rookery-crosscheck-") as workdir:
        for round_index in range(options.rounds):
            for index, (key, title, pubs, subs, qos) in enumerate(shapes):
                shift = (index + round_index) % len(brokers)
                for name in brokers[shift:] + brokers[:shift]:
                    broker = scenarios.Broker(name, workdir)
                    try:
                        ours = rookery_bench(broker, pubs, subs, qos, options.duration, workdir)
                    finally:
                        broker.stop()
                    ours_rate = ours["throughput"]["received_per_s"]
                    # About as many messages as rookery-bench delivered.
                    count = max(1000, int(ours_rate * options.duration / (pubs * subs)))
                    time.sleep(1)
                    broker = scenarios.Broker(name, workdir)
                    try:
                        theirs_rate = mqttwrk(options.mqttwrk, broker, pubs, subs, qos, count,
                                              timeout=options.duration * 6 + 60)
                    finally:
                        broker.stop()
                    time.sleep(1)
                    rows.append((title, name, ours_rate, theirs_rate, ours))
                    agree = theirs_rate and abs(ours_rate - theirs_rate) <= AGREEMENT * max(
                        ours_rate, theirs_rate)
                    print(f"[{datetime.datetime.now():%H:%M:%S}] {key} {name}: rookery-bench "
                          f"{ours_rate:,.0f}/s, mqttwrk "
                          f"{'did not finish' if theirs_rate is None else f'{theirs_rate:,.0f}/s'}"
                          f" -> {'agree' if agree else 'DISAGREE'}", file=sys.stderr)
    print("| Scenario | Broker | rookery-bench | mqttwrk | rookery-bench / mqttwrk | Within 15% |")
    print("| --- | --- | ---: | ---: | ---: | --- |")
    for title, name, ours_rate, theirs_rate, ours in rows:
        if theirs_rate is None:
            print(f"| {title} | {name} | {ours_rate:,.0f}/s | did not finish | — | no |")
            continue
        quotient = ours_rate / theirs_rate
        agree = abs(ours_rate - theirs_rate) <= AGREEMENT * max(ours_rate, theirs_rate)
        print(f"| {title} | {name} | {ours_rate:,.0f}/s | {theirs_rate:,.0f}/s | "
              f"{quotient:.2f} | {'yes' if agree else 'no'} |")


if __name__ == "__main__":
    main()
