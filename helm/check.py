#!/usr/bin/env python3
"""Renders the Helm chart helm/rookery and validates what comes out.

Run through helm/check.sh, which makes the virtualenv with the pinned tools
(Helm's engine from helm-python-sdk, kubernetes-validate, check-jsonschema).
There is no Kubernetes cluster here: the chart is rendered and validated,
and the rookery.toml it generates is run by the real binary, but nothing is
deployed. Checks, each failing the run:

  1. files/ copies are byte-identical to deploy/prometheus/rookery-rules.yml
     and deploy/grafana/rookery.json; appVersion is the workspace version;
  2. values.yaml and every ci/*.yaml pass check-jsonschema against
     values.schema.json; every `.Values.x.y` a template names exists in
     values.yaml;
  3. `helm lint --strict` (Helm's own engine) and a render with the defaults
     and with each ci/*.yaml: any template error fails;
  4. every rendered object passes kubernetes-validate --strict for
     Kubernetes 1.30; the Prometheus Operator's kinds (no schema there) are
     checked by hand, the PrometheusRule's groups equal the rules file and
     the dashboard ConfigMap's JSON equals the dashboard; references between
     objects resolve (Service and PDB selectors, named ports, Secrets,
     ConfigMaps, the HPA's target);
  5. every leaf of values.yaml is used: changed, it changes the rendered
     output of at least one values set (a value no template reads, or reads
     only to ignore, fails);
  6. the generated rookery.toml of every component is parsed as TOML and
     started by the real binary with the pod's environment, command
     (start.sh) and mounted files (rendered Secrets, or test ones for
     existingSecret): a store node forms its group, an edge joins it over
     the configured cluster TLS, both report ready, take an MQTT CONNECT
     with the configured credentials (through a PROXY header when
     proxy_protocol is on), and exit 0 on SIGTERM.

`--self-test` breaks a copy of the chart in several ways and fails unless
each break is caught.
"""

from __future__ import annotations

import argparse
import base64
import copy
import hashlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import tomllib
from pathlib import Path

import kubernetes_validate
import yaml
from helm_python import Chart, lint

HELM_DIR = Path(__file__).resolve().parent
REPO = HELM_DIR.parent
CHART = HELM_DIR / "rookery"
KUBE_VERSION = "1.30.0"
RELEASE = "rk"
NAMESPACE = "mqtt"
COPIES = {
    "files/rookery-rules.yml": REPO / "deploy/prometheus/rookery-rules.yml",
    "files/rookery.json": REPO / "deploy/grafana/rookery.json",
}
# Kinds with no schema in kubernetes-validate, checked by hand below.
CRD_KINDS = {("monitoring.coreos.com/v1", "ServiceMonitor"), ("monitoring.coreos.com/v1", "PrometheusRule")}
# Test credentials the binary check gives files it has to make itself.
TEST_USER, TEST_PASSWORD = "ci-user", "ci-password"


class CheckFailed(Exception):
    """One or more problems; the message lists them."""


def values_sets(chart_dir: Path) -> list[tuple[str, dict]]:
    """The chart's defaults, then each ci/*.yaml (as overrides)."""
    sets = [("values.yaml (defaults)", {})]
    for path in sorted((chart_dir / "ci").glob("*.yaml")):
        sets.append((f"ci/{path.name}", yaml.safe_load(path.read_text()) or {}))
    return sets


def render(chart: Chart, values: dict, name: str = RELEASE) -> dict[str, str]:
    return chart.render(values, name=name, namespace=NAMESPACE)


def objects(rendered: dict[str, str]) -> list[tuple[str, dict]]:
    """Every object rendered (NOTES.txt left out), with its template's name."""
    found = []
    for template, text in sorted(rendered.items()):
        if template.endswith("NOTES.txt"):
            continue
        for doc in yaml.safe_load_all(text):
            if doc:
                found.append((template, doc))
    return found


# ---------------------------------------------------------------- 1. files


def check_copies(chart_dir: Path, problems: list[str]) -> None:
    for copy_name, original in COPIES.items():
        if (chart_dir / copy_name).read_bytes() != original.read_bytes():
            problems.append(
                f"{chart_dir.name}/{copy_name} differs from {original.relative_to(REPO)}: "
                f"copy it again (cp {original.relative_to(REPO)} helm/rookery/{copy_name})"
            )
    cargo = tomllib.loads((REPO / "Cargo.toml").read_text())
    version = cargo["workspace"]["package"]["version"]
    app_version = str(yaml.safe_load((chart_dir / "Chart.yaml").read_text())["appVersion"])
    if app_version != version:
        problems.append(f"Chart.yaml appVersion {app_version} is not the workspace version {version}")


# ---------------------------------------------------------------- 2. values


def check_values_schema(chart_dir: Path, venv_bin: Path, problems: list[str]) -> None:
    files = [chart_dir / "values.yaml", *sorted((chart_dir / "ci").glob("*.yaml"))]
    result = subprocess.run(
        [str(venv_bin / "check-jsonschema"), "--schemafile", str(chart_dir / "values.schema.json"),
         *map(str, files)],
        capture_output=True, text=True,
    )
    if result.returncode != 0:
        problems.append("check-jsonschema:\n" + (result.stdout + result.stderr).strip())


def leaves(tree: dict, prefix: tuple = ()) -> list[tuple[tuple, object]]:
    """Leaf paths of values.yaml: scalars, lists and empty maps."""
    found = []
    for key, value in tree.items():
        path = prefix + (key,)
        if isinstance(value, dict) and value:
            found.extend(leaves(value, path))
        else:
            found.append((path, value))
    return found


def has_path(tree: dict, path: list[str]) -> bool:
    for key in path:
        if not isinstance(tree, dict) or key not in tree:
            return False
        tree = tree[key]
    return True


def check_template_references(chart_dir: Path, defaults: dict, problems: list[str]) -> None:
    """A `.Values.x.y` that values.yaml lacks is a typo that renders as nothing."""
    for template in sorted((chart_dir / "templates").rglob("*")):
        if not template.is_file():
            continue
        for match in re.finditer(r"\.Values((?:\.[A-Za-z_][A-Za-z0-9_]*)+)", template.read_text()):
            path = match.group(1).strip(".").split(".")
            if not has_path(defaults, path):
                problems.append(f"{template.relative_to(chart_dir)}: .Values.{'.'.join(path)} is not in values.yaml")


# ---------------------------------------------------------------- 3/4. render and validate


def selector_matches(selector: dict, labels: dict) -> bool:
    return all(labels.get(k) == v for k, v in selector.items())


def check_objects(name: str, objs: list[tuple[str, dict]], chart_dir: Path, problems: list[str]) -> None:
    say = lambda msg: problems.append(f"{name}: {msg}")
    seen = set()
    pods = []  # (owner, pod template) of workloads
    for template, obj in objs:
        kind, api = obj.get("kind"), obj.get("apiVersion")
        ident = (api, kind, obj.get("metadata", {}).get("namespace", NAMESPACE), obj.get("metadata", {}).get("name"))
        if ident in seen:
            say(f"{template}: {kind} {ident[3]} is rendered twice")
        seen.add(ident)
        if (api, kind) in CRD_KINDS:
            continue
        try:
            kubernetes_validate.validate(obj, KUBE_VERSION, strict=True)
        except kubernetes_validate.ValidationError as error:
            path = "/".join(str(p) for p in error.path)
            say(f"{template}: {kind} {ident[3]}: {path}: {error.message}")
        except kubernetes_validate.SchemaNotFoundError as error:
            say(f"{template}: {error.message}")
        if kind in ("StatefulSet", "Deployment"):
            pods.append((f"{kind} {ident[3]}", obj))
        if kind == "Pod":
            pods.append((f"Pod {ident[3]}", {"spec": {"template": obj, "selector": {"matchLabels": obj["metadata"]["labels"]}}}))

    by_kind: dict[str, list[dict]] = {}
    for _, obj in objs:
        by_kind.setdefault(obj["kind"], []).append(obj)
    names = lambda kind: {o["metadata"]["name"] for o in by_kind.get(kind, [])}
    workloads = [(owner, w["spec"]["template"], w["spec"]["selector"]["matchLabels"]) for owner, w in pods]

    for owner, template, selector in workloads:
        labels = template["metadata"].get("labels", {})
        if not selector_matches(selector, labels):
            say(f"{owner}: its selector {selector} does not match its pod labels")
        spec = template["spec"]
        volumes = {v["name"]: v for v in spec.get("volumes", [])}
        claims = {c["metadata"]["name"] for s in by_kind.get("StatefulSet", [])
                  for c in s["spec"].get("volumeClaimTemplates", [])}
        for container in spec["containers"]:
            for mount in container.get("volumeMounts", []):
                if mount["name"] not in volumes and mount["name"] not in claims:
                    say(f"{owner}: volumeMount {mount['name']} has no volume")
        for volume in volumes.values():
            if "configMap" in volume and volume["configMap"]["name"] not in names("ConfigMap"):
                say(f"{owner}: volume {volume['name']} names ConfigMap {volume['configMap']['name']}, not rendered")
    for svc in by_kind.get("Service", []):
        selector = svc["spec"].get("selector", {})
        targets = [(o, t) for o, t, _ in workloads if selector_matches(selector, t["metadata"].get("labels", {}))
                   and not o.startswith("Pod ")]
        if not targets:
            say(f"Service {svc['metadata']['name']}: its selector {selector} matches no pod template")
        for port in svc["spec"]["ports"]:
            target = port.get("targetPort")
            for owner, t in targets:
                named = {p.get("name") for c in t["spec"]["containers"] for p in c.get("ports", [])}
                if isinstance(target, str) and target not in named:
                    say(f"Service {svc['metadata']['name']}: targetPort {target} is not a port of {owner}")
    for pdb in by_kind.get("PodDisruptionBudget", []):
        selector = pdb["spec"]["selector"]["matchLabels"]
        if not any(selector_matches(selector, t["metadata"].get("labels", {})) for o, t, _ in workloads if not o.startswith("Pod ")):
            say(f"PodDisruptionBudget {pdb['metadata']['name']} selects no pod template")
    for hpa in by_kind.get("HorizontalPodAutoscaler", []):
        ref = hpa["spec"]["scaleTargetRef"]
        if ref["name"] not in names(ref["kind"]):
            say(f"HorizontalPodAutoscaler {hpa['metadata']['name']} targets {ref['kind']} {ref['name']}, not rendered")
        for owner, w in pods:
            if owner == f"Deployment {ref['name']}" and "replicas" in w["spec"]:
                say(f"{owner}: sets replicas although an HPA scales it")
    for sts in by_kind.get("StatefulSet", []):
        headless = [s for s in by_kind.get("Service", []) if s["metadata"]["name"] == sts["spec"]["serviceName"]]
        if not headless or headless[0]["spec"].get("clusterIP") != "None":
            say(f"StatefulSet {sts['metadata']['name']}: serviceName {sts['spec']['serviceName']} is no headless Service")
        elif not headless[0]["spec"].get("publishNotReadyAddresses"):
            say(f"Service {headless[0]['metadata']['name']}: must publish not-ready addresses (group formation)")

    # The Prometheus Operator's kinds: no schema offline, so by hand.
    for sm in by_kind.get("ServiceMonitor", []):
        spec = sm.get("spec", {})
        selector = spec.get("selector", {}).get("matchLabels")
        endpoints = spec.get("endpoints")
        if not selector or not endpoints:
            say(f"ServiceMonitor {sm['metadata']['name']}: needs spec.selector.matchLabels and spec.endpoints")
            continue
        services = [s for s in by_kind.get("Service", []) if selector_matches(selector, s["metadata"].get("labels", {}))]
        if len(services) != 1:
            say(f"ServiceMonitor {sm['metadata']['name']}: selects {len(services)} Services, expected the HTTP one")
        for endpoint in endpoints:
            if not any(p.get("name") == endpoint.get("port") for s in services for p in s["spec"]["ports"]):
                say(f"ServiceMonitor {sm['metadata']['name']}: endpoint port {endpoint.get('port')} is no port of its Service")
        job_label = spec.get("jobLabel")
        for s in services:
            job = s["metadata"]["labels"].get(job_label, "")
            if "rookery" not in job:
                say(f"ServiceMonitor {sm['metadata']['name']}: job {job!r} lacks 'rookery', which the alert rules match")
    rules_file = yaml.safe_load((chart_dir / "files/rookery-rules.yml").read_text())
    for rule in by_kind.get("PrometheusRule", []):
        groups = rule.get("spec", {}).get("groups")
        if groups != rules_file["groups"]:
            say(f"PrometheusRule {rule['metadata']['name']}: spec.groups differ from files/rookery-rules.yml")
        for group in groups or []:
            for r in group.get("rules", []):
                if not r.get("expr") or not (r.get("alert") or r.get("record")):
                    say(f"PrometheusRule: a rule of group {group.get('name')} lacks expr or alert/record")
    dashboard = json.loads((chart_dir / "files/rookery.json").read_text())
    for cm in by_kind.get("ConfigMap", []):
        if "rookery.json" in cm.get("data", {}) and json.loads(cm["data"]["rookery.json"]) != dashboard:
            say(f"ConfigMap {cm['metadata']['name']}: rookery.json differs from files/rookery.json")


# ---------------------------------------------------------------- 5. unused values


def mutate(value):
    """A different value of the same shape."""
    if isinstance(value, bool):
        return not value
    if isinstance(value, (int, float)):
        return value + 1
    if isinstance(value, str):
        return value + "-changed" if value else "changed"
    if isinstance(value, list):
        extra = copy.deepcopy(value[-1]) if value and isinstance(value[-1], dict) else "changed"
        return value + [extra]
    if isinstance(value, dict):
        return {**value, "changed": "changed"}
    return "changed"


def set_path(tree: dict, path: tuple, value) -> None:
    for key in path[:-1]:
        tree = tree.setdefault(key, {})
    tree[path[-1]] = value


def get_path(tree: dict, path: tuple):
    for key in path:
        tree = tree[key]
    return tree


def normalized(rendered: dict[str, str]) -> dict[str, str]:
    """The output with the random admin token masked (it differs per render)."""
    return {k: re.sub(r"admin-token: \S+", "admin-token: <random>", v) for k, v in rendered.items()}


def check_unused_values(chart_dir: Path, problems: list[str]) -> None:
    # Without the schema: a changed value must reach the templates, not be
    # refused before them (a template's own `fail` on it counts as a use).
    with tempfile.TemporaryDirectory() as tmp:
        loose = Path(tmp) / chart_dir.name
        shutil.copytree(chart_dir, loose)
        (loose / "values.schema.json").unlink()
        chart = Chart.load(loose)
        defaults = yaml.safe_load((chart_dir / "values.yaml").read_text())
        bases = []
        for _, overrides in values_sets(chart_dir):
            effective = chart.merge_values(overrides)
            bases.append((effective, normalized(render(chart, effective))))
        for path, _ in leaves(defaults):
            used = False
            for effective, baseline in bases:
                changed = copy.deepcopy(effective)
                set_path(changed, path, mutate(get_path(effective, path)))
                try:
                    out = normalized(render(chart, changed))
                except Exception:  # noqa: BLE001 - a template failing on the value reads it
                    used = True
                    break
                if out != baseline:
                    used = True
                    break
            if not used:
                problems.append(f"values.yaml: {'.'.join(path)} changes nothing in any rendered values set (unused)")


# ---------------------------------------------------------------- 6. the binary


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def make_pki(directory: Path) -> dict[str, Path]:
    """A throwaway CA, a cluster node certificate and a server certificate."""
    directory.mkdir(parents=True, exist_ok=True)
    run = lambda *args: subprocess.run(["openssl", *args], check=True, capture_output=True, cwd=directory)
    run("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-keyout", "ca.key",
        "-out", "ca.pem", "-days", "2", "-subj", "/CN=check CA", "-addext", "basicConstraints=critical,CA:TRUE",
        "-addext", "keyUsage=critical,keyCertSign,cRLSign")
    for name, usage, san in (("node", "serverAuth,clientAuth", "DNS:rookery-cluster"),
                             ("server", "serverAuth", "DNS:localhost,IP:127.0.0.1")):
        (directory / f"{name}.ext").write_text(
            f"basicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature,keyEncipherment\n"
            f"extendedKeyUsage={usage}\nsubjectAltName={san}\n")
        run("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-keyout", f"{name}.key",
            "-out", f"{name}.csr", "-subj", f"/CN={name}")
        run("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
            "-out", f"{name}.pem", "-days", "2", "-extfile", f"{name}.ext")
    return {n: directory / n for n in ("ca.pem", "node.pem", "node.key", "server.pem", "server.key")}


def mosquitto_hash(password: str) -> str:
    salt = os.urandom(12)
    digest = hashlib.pbkdf2_hmac("sha512", password.encode(), salt, 101)
    return f"$7$101${base64.b64encode(salt).decode()}${base64.b64encode(digest).decode()}"


def file_keys(tree, prefix=""):
    """(dotted key, path) of every `*_file` setting in a parsed rookery.toml."""
    if isinstance(tree, dict):
        for key, value in tree.items():
            yield from file_keys(value, f"{prefix}{key}.")
            if key.endswith("_file") and isinstance(value, str):
                yield prefix + key, value
    elif isinstance(tree, list):
        for i, item in enumerate(tree):
            yield from file_keys(item, f"{prefix[:-1]}[{i}].")


def synthesize(key: str, target: Path, pki: dict[str, Path], users: list[str]) -> None:
    """A test file for a setting whose Secret exists only in the real cluster."""
    target.parent.mkdir(parents=True, exist_ok=True)
    sources = {
        "cluster.tls.ca_file": pki["ca.pem"], "cluster.tls.cert_file": pki["node.pem"],
        "cluster.tls.key_file": pki["node.key"],
    }
    if key in sources:
        shutil.copy(sources[key], target)
    elif key.endswith("tls.cert_file"):
        shutil.copy(pki["server.pem"], target)
    elif key.endswith("tls.key_file"):
        shutil.copy(pki["server.key"], target)
    elif key.endswith("client_ca_file"):
        shutil.copy(pki["ca.pem"], target)
    elif key.endswith("admin_token_file"):
        target.write_text(os.urandom(24).hex() + "\n")
    elif key == "broker.auth.password_file":
        target.write_text("".join(f"{user}:{mosquitto_hash(TEST_PASSWORD)}\n" for user in users))
    elif key == "broker.auth.acl_file":
        target.write_text("".join(f"user {user}\ntopic readwrite #\n" for user in users))
    elif key == "broker.auth.jwt.secret_file":
        target.write_text(os.urandom(32).hex())
    else:
        raise CheckFailed(f"the binary check cannot make a test file for {key} ({target})")


def mqtt_connect(port: int, username: str | None, password: str | None, proxy: bool) -> int:
    """CONNECT (MQTT 3.1.1) and return CONNACK's return code. The client id
    starts with the username, as bind_client_id = "all" requires."""
    def string(s: str) -> bytes:
        return len(s.encode()).to_bytes(2, "big") + s.encode()
    flags = 0x02 | (0x80 if username else 0) | (0x40 if password else 0)
    body = string("MQTT") + bytes([4, flags]) + (30).to_bytes(2, "big") + string(f"{username or 'anonymous'}-helm-check")
    if username:
        body += string(username)
    if password:
        body += string(password)
    packet = bytes([0x10, len(body)]) + body
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        if proxy:
            s.sendall(f"PROXY TCP4 203.0.113.7 127.0.0.1 40000 {port}\r\n".encode())
        s.sendall(packet)
        reply = b""
        while len(reply) < 4:
            chunk = s.recv(4 - len(reply))
            if not chunk:
                raise CheckFailed(f"port {port}: connection closed before CONNACK")
            reply += chunk
    if reply[0] != 0x20:
        raise CheckFailed(f"port {port}: expected CONNACK, got {reply!r}")
    return reply[3]


class Node:
    """One pod's rookery process, started from the rendered manifests."""

    def __init__(self, name, workload, config_map, secrets, root: Path, binary: Path, pki, users, store_port=None):
        self.name = name
        self.root = root
        spec = workload["spec"]["template"]["spec"]
        container = spec["containers"][0]
        volumes = {v["name"]: v for v in spec.get("volumes", [])}
        root.mkdir(parents=True)
        # The pod's filesystem: every mount, from what was rendered.
        for mount in container["volumeMounts"]:
            target = self.path(mount["mountPath"])
            target.mkdir(parents=True, exist_ok=True)
            volume = volumes.get(mount["name"], {})
            if "configMap" in volume:
                for key, text in config_map["data"].items():
                    (target / key).write_text(text)
            elif "secret" in volume and volume["secret"]["secretName"] in secrets:
                for key, data in secrets[volume["secret"]["secretName"]].get("data", {}).items():
                    (target / key).write_bytes(base64.b64decode(data))
        self.ports: dict[int, int] = {}
        self.container_ports = {p["name"]: p["containerPort"] for p in container.get("ports", [])}
        env = {e["name"]: e.get("value", "") for e in container.get("env", []) if "valueFrom" not in e}
        config_path = self.path(env["ROOKERY_CONFIG"])
        text = config_path.read_text()
        parsed = tomllib.loads(text)  # a TOML syntax error fails here
        self.config = parsed
        # Listen on loopback ports of our own, never the pod's 0.0.0.0.
        def listen(match):
            port = int(match.group(2))
            self.ports.setdefault(port, free_port())
            return f'"127.0.0.1:{self.ports[port]}"'
        text = re.sub(r'"(0\.0\.0\.0|\[::\]):(\d+)"', listen, text)
        text = text.replace('"/etc/rookery/', f'"{root}/etc/rookery/').replace('"/data"', f'"{root}/data"')
        config_path.write_text(text)
        for key, value in file_keys(parsed):
            if not self.path(value).exists():
                synthesize(key, self.path(value), pki, users)
        pod_name = f"{name}-0" if workload["kind"] == "StatefulSet" else f"{name}-5d4b9c7f6-x7k2p"
        overrides = dict(line.split() for line in config_map["data"].get("node-ids", "").splitlines() if line.strip())
        self.node_id = int(overrides.get(pod_name, 1)) if workload["kind"] == "StatefulSet" else None
        expand = {"POD_NAME": pod_name, "POD_NAMESPACE": NAMESPACE, "POD_IP": "127.0.0.1"}
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("ROOKERY_")}
        for key, value in env.items():
            self.env[key] = re.sub(r"\$\((\w+)\)", lambda m: expand.get(m.group(1), m.group(0)), value)
        self.env.update(expand)
        self.env["ROOKERY_CONFIG"] = str(config_path)
        self.env["ROOKERY_DATA_DIR"] = str(self.path(env["ROOKERY_DATA_DIR"]))
        # The pods' DNS names do not resolve here: loopback stands in.
        store = parsed.get("store", {}).get("listen")
        if "store" in parsed.get("roles", []):
            own = self.ports[int(store.rsplit(":", 1)[1])]
            self.env["ROOKERY_STORE__ADVERTISE"] = f'"127.0.0.1:{own}"'
            self.env["ROOKERY_CLUSTER__BOOTSTRAP_EXPECT"] = "1"
            store_port = own
        self.store_port = store_port
        self.env["ROOKERY_CLUSTER__SEEDS"] = f'["127.0.0.1:{store_port}"]'
        if "ROOKERY_CLUSTER__FORWARD_ADVERTISE" in self.env:
            forward = int(parsed["cluster"]["forward_listen"].rsplit(":", 1)[1])
            self.env["ROOKERY_CLUSTER__FORWARD_ADVERTISE"] = f'"127.0.0.1:{self.ports[forward]}"'
        bin_dir = root / "bin"
        bin_dir.mkdir()
        (bin_dir / "rookery").symlink_to(binary)
        self.env["PATH"] = f"{bin_dir}:{self.env.get('PATH', '/usr/bin:/bin')}"
        command = container.get("command") or ["rookery"]
        args = container.get("args") or ([] if container.get("command") else ["serve"])
        self.argv = [str(self.path(a)) if a.startswith("/etc/rookery/") else a for a in command + args]
        self.log = root / "rookery.log"
        self.process = None

    def path(self, pod_path: str) -> Path:
        return self.root / pod_path.lstrip("/")

    def start(self) -> None:
        self.process = subprocess.Popen(self.argv, env=self.env, stdout=subprocess.DEVNULL,
                                        stderr=self.log.open("wb"), cwd=self.root)

    def wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            text = self.log.read_text(errors="replace")
            ready = [line for line in text.splitlines() if "rookery ready" in line]
            if ready:
                if self.node_id is not None and not re.search(rf'node_id["=:]+{self.node_id}\b', ready[0]):
                    raise CheckFailed(f"{self.name}: expected node_id {self.node_id}: {ready[0]}")
                return
            if self.process.poll() is not None:
                raise CheckFailed(f"{self.name}: rookery exited with {self.process.returncode} before ready:\n{text[-3000:]}")
            time.sleep(0.2)
        raise CheckFailed(f"{self.name}: not ready within {timeout:.0f} s:\n{self.log.read_text(errors='replace')[-3000:]}")

    def stop(self, grace: float) -> int:
        self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(grace)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
            raise CheckFailed(f"{self.name}: did not exit within {grace:.0f} s of SIGTERM")

    def kill(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.kill()
            self.process.wait()


def check_binary(name: str, objs: list[tuple[str, dict]], binary: Path, tmp: Path, problems: list[str]) -> str:
    by = lambda kind: [o for _, o in objs if o["kind"] == kind]
    config_map = next(o for o in by("ConfigMap") if "start.sh" in o.get("data", {}))
    secrets = {o["metadata"]["name"]: o for o in by("Secret")}
    workloads = sorted(by("StatefulSet") + by("Deployment"), key=lambda w: w["kind"] != "StatefulSet")
    pki = make_pki(tmp / "pki")
    test_pods = by("Pod")
    test_env = {e["name"]: e.get("value", "") for e in test_pods[0]["spec"]["containers"][0]["env"]} if test_pods else {}
    users = sorted({TEST_USER, test_env.get("MQTT_USER") or TEST_USER})
    nodes: list[Node] = []
    summary = []
    try:
        store_port = None
        for workload in workloads:
            node = Node(workload["metadata"]["name"], workload, config_map, secrets,
                        tmp / workload["metadata"]["name"], binary, pki, users, store_port)
            nodes.append(node)
            node.start()
            started = time.monotonic()
            node.wait_ready(90)
            store_port = node.store_port
            summary.append(f"{node.name} ready in {time.monotonic() - started:.1f} s")
            if "edge" in node.config["roles"]:
                summary.append(check_mqtt(node))
        if test_pods:
            summary.append(run_helm_test(test_pods[0], by("Service"), nodes, tmp))
        for node in reversed(nodes):
            grace = node.config.get("broker", {}).get("shutdown_grace_s", 25) + 10
            code = node.stop(grace)
            if code != 0:
                raise CheckFailed(f"{node.name}: exit code {code} after SIGTERM, expected 0:\n"
                                  f"{node.log.read_text(errors='replace')[-2000:]}")
        summary.append("SIGTERM: exit 0")
    except CheckFailed as error:
        problems.append(f"{name}: {error}")
    finally:
        for node in nodes:
            node.kill()
    return "; ".join(summary)


def check_mqtt(node: Node) -> str:
    """CONNECT to the plain listener the chart's helm test would use."""
    listeners = {l.get("name"): l for l in node.config["broker"].get("listeners", [])}
    listener = listeners.get("internal") or listeners.get("mqtt")
    if not listener:
        return "no plain listener to CONNECT to"
    port = node.ports[int(listener["address"].rsplit(":", 1)[1])]
    auth = node.config["broker"].get("auth", {})
    anonymous = auth.get("allow_anonymous") is True
    proxy = listener.get("proxy_protocol", False)
    if not anonymous and not auth.get("password_file"):
        # No way in was configured: the listener must refuse (3.1.1's 5).
        code = mqtt_connect(port, None, None, proxy)
        if code != 5:
            raise CheckFailed(f"{node.name}: anonymous CONNECT answered {code}, expected 5 (not authorized)")
        return f"{node.name}: anonymous CONNECT on {listener['name']} refused (5), as configured"
    user, password = (None, None) if anonymous else (TEST_USER, TEST_PASSWORD)
    code = mqtt_connect(port, user, password, proxy)
    if code != 0:
        raise CheckFailed(f"{node.name}: CONNECT on listener {listener['name']} refused with {code}")
    if not anonymous and mqtt_connect(port, TEST_USER, "wrong", proxy) == 0:
        raise CheckFailed(f"{node.name}: a wrong password was accepted")
    proxied = ""
    mqtt = listeners.get("mqtt")
    if mqtt and mqtt is not listener and mqtt.get("proxy_protocol"):
        mqtt_port = node.ports[int(mqtt["address"].rsplit(":", 1)[1])]
        if mqtt_connect(mqtt_port, user, password, True) != 0:
            raise CheckFailed(f"{node.name}: CONNECT behind a PROXY header refused on listener mqtt")
        proxied = ", and through a PROXY header on mqtt"
    return f"{node.name}: CONNECT on {listener['name']} accepted ({'anonymous' if anonymous else 'password'}){proxied}"


def run_helm_test(pod: dict, services: list[dict], nodes: list["Node"], tmp: Path) -> str:
    """Runs the `helm test` pod's script, with Mosquitto's clients, against
    the node the binary check started, as the pod would through its Service."""
    container = pod["spec"]["containers"][0]
    env = {e["name"]: e.get("value", "") for e in container["env"]}
    if not shutil.which("mosquitto_sub"):
        return "helm test script SKIPPED: mosquitto_sub not installed (apt-get install mosquitto-clients)"
    script = container["args"][0].replace("/tmp/", f"{tmp}/test-")
    run_env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "POD_NAME": pod["metadata"]["name"],
               "TEST_PROBLEM": env["TEST_PROBLEM"], "MQTT_HOST": "127.0.0.1", "MQTT_PORT": ""}
    if env.get("MQTT_USER"):
        run_env.update(MQTT_USER=env["MQTT_USER"], MQTT_PASSWORD=TEST_PASSWORD)
    if not env["TEST_PROBLEM"]:
        service = next(s for s in services if s["metadata"]["name"] == env["MQTT_HOST"])
        port = next(p for p in service["spec"]["ports"] if str(p["port"]) == env["MQTT_PORT"])
        edge = next(n for n in nodes if port["targetPort"] in n.container_ports)
        run_env["MQTT_PORT"] = str(edge.ports[edge.container_ports[port["targetPort"]]])
    result = subprocess.run(["sh", "-c", script], env=run_env, capture_output=True, text=True, timeout=60)
    output = (result.stdout + result.stderr).strip()
    if env["TEST_PROBLEM"]:
        # These values cannot pass helm test; the pod must fail saying why.
        if result.returncode == 0 or env["TEST_PROBLEM"] not in output:
            raise CheckFailed(f"helm test script: expected a failure naming {env['TEST_PROBLEM']!r}: {output}")
        return "helm test script fails as it must (" + env["TEST_PROBLEM"].split(":")[0] + ")"
    if result.returncode != 0:
        raise CheckFailed(f"helm test script failed ({result.returncode}): {output}")
    return "helm test script: " + output.splitlines()[-1]


def check_start_script(objs: list[tuple[str, dict]], tmp: Path, problems: list[str]) -> None:
    """start.sh turns the StatefulSet ordinal into node_id = ordinal + 1."""
    config_map = next(o for _, o in objs if o["kind"] == "ConfigMap" and "start.sh" in o["data"])
    (tmp / "start.sh").write_text(config_map["data"]["start.sh"])
    fake = tmp / "fakebin"
    fake.mkdir(exist_ok=True)
    (fake / "rookery").write_text('#!/bin/sh\necho "node_id=$ROOKERY_NODE_ID args=$*"\n')
    (fake / "rookery").chmod(0o755)
    env = {"PATH": f"{fake}:/usr/bin:/bin"}
    cases = [("rk-rookery-0", "node_id=1 args=serve"), ("rk-rookery-store-11", "node_id=12 args=serve")]
    (tmp / "node-ids").write_text("rk-rookery-store-2 6\nrk-rookery-store-20 9\n")
    cases.append(("rk-rookery-store-2", "node_id=6 args=serve"))
    for pod, expected in cases:
        out = subprocess.run(["sh", str(tmp / "start.sh")], env={**env, "POD_NAME": pod}, capture_output=True, text=True)
        if out.stdout.strip() != expected:
            problems.append(f"start.sh with POD_NAME={pod}: {out.stdout.strip()!r} {out.stderr.strip()!r}, expected {expected!r}")
    out = subprocess.run(["sh", str(tmp / "start.sh")], env={**env, "POD_NAME": "rookery-edge-abc"}, capture_output=True, text=True)
    if out.returncode != 2:
        problems.append("start.sh accepted a pod name without an ordinal")


# ---------------------------------------------------------------- driver


def run_checks(chart_dir: Path, venv_bin: Path, binary: Path | None, verbose: bool = True) -> list[str]:
    problems: list[str] = []
    log = print if verbose else (lambda *a, **k: None)
    started = time.monotonic()
    check_copies(chart_dir, problems)
    check_values_schema(chart_dir, venv_bin, problems)
    defaults = yaml.safe_load((chart_dir / "values.yaml").read_text())
    check_template_references(chart_dir, defaults, problems)
    check_comments(chart_dir, defaults, problems)
    check_readme_table(chart_dir, problems)
    log(f"files, schema, references, comments: {len(problems)} problem(s)")
    try:
        chart = Chart.load(chart_dir)
    except Exception as error:  # noqa: BLE001 - Helm's load errors
        problems.append(f"the chart does not load: {error}")
        return problems
    rendered_sets = []
    for name, overrides in values_sets(chart_dir):
        try:
            report = lint(str(chart_dir), overrides, strict=True, namespace=NAMESPACE, kube_version=f"v{KUBE_VERSION}")
        except Exception as error:  # noqa: BLE001 - malformed input
            report = {"messages": [{"severity": 3, "path": "", "error": str(error)}]}
        for message in report.get("messages", []):
            if message["severity"] >= 2:
                problems.append(f"{name}: helm lint: {message['path']}: {message['error']}")
        try:
            out = render(chart, overrides)
        except Exception as error:  # noqa: BLE001 - Helm's render and values errors
            problems.append(f"{name}: render failed: {error}")
            continue
        objs = objects(out)
        check_objects(name, objs, chart_dir, problems)
        kinds = sorted({o["kind"] for _, o in objs})
        log(f"{name}: {len(objs)} objects ({', '.join(kinds)})")
        rendered_sets.append((name, objs))
    if len(rendered_sets) < len(values_sets(chart_dir)):
        log("a render failed: later checks skipped")
        return problems
    # Another release name: the full name must not repeat "rookery".
    named = objects(render(chart, {}, name="rookery"))
    check_objects("defaults, release 'rookery'", named, chart_dir, problems)
    if not any(o["kind"] == "StatefulSet" and o["metadata"]["name"] == "rookery" for _, o in named):
        problems.append("release 'rookery': the StatefulSet is not named plainly 'rookery'")
    try:
        check_unused_values(chart_dir, problems)
    except Exception as error:  # noqa: BLE001 - e.g. a baseline that does not render without the schema
        problems.append(f"unused values: {error}")
    log(f"unused values: checked {len(leaves(defaults))} leaves")
    with tempfile.TemporaryDirectory(prefix="rookery-helm-") as tmp:
        if rendered_sets:
            check_start_script(rendered_sets[0][1], Path(tmp), problems)
        if binary is None:
            log("binary check: SKIPPED (--skip-binary)")
        else:
            for i, (name, objs) in enumerate(rendered_sets):
                summary = check_binary(name, objs, binary, Path(tmp) / f"set{i}", problems)
                log(f"binary, {name}: {summary}")
                if problems and not verbose:
                    break  # the self-test needs one failure, not one per values set
    log(f"checks took {time.monotonic() - started:.1f} s")
    return problems


def find_binary(explicit: str | None) -> Path:
    candidates = [explicit] if explicit else []
    target = os.environ.get("CARGO_TARGET_DIR")
    for base in ([target] if target else []) + [str(REPO / "target"), str(Path.home() / ".cache/rookery-target")]:
        candidates += [f"{base}/debug/rookery", f"{base}/release/rookery"]
    existing = [Path(c) for c in candidates if c and Path(c).is_file()]
    if not existing:
        raise SystemExit("helm/check.py: no rookery binary found (build it, or give --binary PATH, or --skip-binary)")
    if explicit:
        return existing[0]
    # The newest build: an old binary may reject keys the chart now writes.
    return max(existing, key=lambda p: p.stat().st_mtime)


def self_test(venv_bin: Path, binary: Path | None) -> int:
    """Breaks a copy of the chart in ways each check must catch."""
    # (file, change, how, what the problems must mention)
    breaks = {
        "a template error": ("templates/service-http.yaml", "{{- $x := .Values.http.port | nosuchfunction }}\n",
                             "prepend", "nosuchfunction"),
        "a typo'd value in values.yaml": ("values.yaml", ("preStopSleepSeconds:", "preStopSleepSecond:"), "replace",
                                          "Additional properties are not allowed"),
        "a typo'd key in a ci values file": ("ci/production-values.yaml", ("  replicas: 3\n", "  replica: 3\n"),
                                             "replace", "production-values.yaml::$.store"),
        "a wrong type in a ci values file": ("ci/split-values.yaml", ("  replicas: 2", '  replicas: "2"'), "replace",
                                             "is not of type 'integer'"),
        "a typo'd .Values in a template": ("templates/service-http.yaml", (".Values.http.port }}", ".Values.http.prot }}"),
                                           "replace", ".Values.http.prot is not in values.yaml"),
        "an unused value": ("values.yaml", "# -- A knob.\nunusedKnob: 3\n", "append", "unusedKnob changes nothing"),
        "a value read but ignored": ("templates/service-http.yaml", ("  type: ClusterIP", "  type: {{ if .Values.http.port }}ClusterIP{{ else }}ClusterIP{{ end }}"), "replace-port", "http.port changes nothing"),
        "an undocumented value": ("values.yaml", "undocumentedKnob: 3\n", "append", "undocumentedKnob has no comment"),
        "an invalid Kubernetes field": ("templates/service-http.yaml", ("  type: ClusterIP", "  type: ClusterIP\n  clusterIp: None"),
                                        "replace", "'clusterIp' was unexpected"),
        "a Service selecting nothing": ("templates/service-http.yaml",
                                        ('{{- include "rookery.selectorLabels" . | nindent 4 }}', "app: nothing"),
                                        "replace", "matches no pod template"),
        "a stale values table in README.md": ("values.yaml", ("# -- Image pull policy.", "# -- How the image is pulled."),
                                              "replace", "the values table is stale"),
        "a stale rules copy": ("files/rookery-rules.yml", "# edited\n", "append", "differs from deploy/prometheus"),
        "a start.sh that gets the node id wrong": ("templates/configmap.yaml", ("$((ordinal + 1))", "$((ordinal + 2))"),
                                                   "replace", "expected 'node_id=1 args=serve'"),
    }
    if binary is not None:
        breaks["a key the binary rejects"] = ("values.yaml", ('extra: ""', 'extra: "[broker.nosuchtable]\\nx = 1"'),
                                              "replace", "unknown field")
        if shutil.which("mosquitto_sub"):
            breaks["a helm test that cannot pass"] = ("templates/tests/test-pubsub.yaml",
                                                      ('-t "$topic" -C 1', '-t "$topic/elsewhere" -C 1'),
                                                      "replace", "helm test script failed")
    failures = 0
    for what, (file, change, how, expected) in breaks.items():
        with tempfile.TemporaryDirectory() as tmp:
            broken = Path(tmp) / "rookery"
            shutil.copytree(CHART, broken)
            if how == "replace-port":
                # The port is read only by the ignoring `if` below: drop its other uses.
                for other in (broken / "templates").rglob("*"):
                    if other.is_file():
                        other.write_text(other.read_text().replace(".Values.http.port", "9883")
                                         .replace("$v.http.port", "9883"))
            target = broken / file
            text = target.read_text()
            if how == "prepend":
                text = change + text
            elif how == "append":
                text = text + change
            else:
                assert change[0] in text, (what, change[0])
                text = text.replace(change[0], change[1], 1)
            target.write_text(text)
            schema = json.loads((broken / "values.schema.json").read_text())
            for knob in ("unusedKnob", "undocumentedKnob"):
                schema["properties"][knob] = {"type": "integer"}  # only the check under test may object
            (broken / "values.schema.json").write_text(json.dumps(schema))
            needs_binary = what in ("a key the binary rejects", "a helm test that cannot pass")
            problems = run_checks(broken, venv_bin, binary if needs_binary else None, verbose=False)
            hit = [p for p in problems if expected in p]
            failures += not hit
            print(f"self-test, {what}: {'caught' if hit else 'NOT CAUGHT'}: "
                  f"{(hit or problems or ['no problem reported'])[0][:160]}")
    return failures


def commented_keys(chart_dir: Path) -> list[tuple[str, str, str]]:
    """(dotted key, default as written, comment) of each commented key of values.yaml."""
    rows, comment, stack = [], [], []
    for line in (chart_dir / "values.yaml").read_text().splitlines():
        stripped = line.strip()
        if stripped.startswith("#"):
            comment.append(stripped.lstrip("#").strip().removeprefix("-- ").strip())
            continue
        match = re.match(r"^( *)([A-Za-z_][\w.-]*):(.*)$", line)
        if not match:
            if not stripped:
                comment = []
            continue
        indent, key, rest = len(match.group(1)), match.group(2), match.group(3).strip()
        while stack and stack[-1][0] >= indent:
            stack.pop()
        stack.append((indent, key))
        path = ".".join(k for _, k in stack)
        if comment:
            rows.append((path, rest, " ".join(comment)))
        comment = []
    return rows


def values_table(chart_dir: Path) -> str:
    """README's values table from values.yaml's comments."""
    rows = [f"| `{path}` | {f'`{default}`' if default else '(see values.yaml)'} | {text} |"
            for path, default, text in commented_keys(chart_dir)]
    return "| Key | Default | Description |\n| --- | --- | --- |\n" + "\n".join(rows) + "\n"


TABLE = re.compile(r"(<!-- values-table -->\n).*?(<!-- /values-table -->)", re.S)


def check_readme_table(chart_dir: Path, problems: list[str]) -> None:
    readme = (chart_dir / "README.md").read_text()
    match = TABLE.search(readme)
    if not match or match.group(0) != f"{match.group(1)}{values_table(chart_dir)}{match.group(2)}":
        problems.append("README.md: the values table is stale: run helm/check.sh --write-table")


def write_readme_table(chart_dir: Path) -> None:
    path = chart_dir / "README.md"
    table = values_table(chart_dir)
    path.write_text(TABLE.sub(lambda m: f"{m.group(1)}{table}{m.group(2)}", path.read_text()))


def check_comments(chart_dir: Path, defaults: dict, problems: list[str]) -> None:
    """Every value is described: by its own comment or its parent's."""
    described = {path for path, _, _ in commented_keys(chart_dir)}
    for path, _ in leaves(defaults):
        if not any(".".join(path[:n]) in described for n in range(len(path), 0, -1)):
            problems.append(f"values.yaml: {'.'.join(path)} has no comment (nor has any key above it)")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--binary", help="the rookery binary (default: the newest debug or release build)")
    parser.add_argument("--skip-binary", action="store_true", help="do not start the binary")
    parser.add_argument("--self-test", action="store_true", help="check that each check catches a break")
    parser.add_argument("--table", action="store_true", help="print README's values table and exit")
    parser.add_argument("--write-table", action="store_true", help="write the values table into README.md and exit")
    args = parser.parse_args()
    if args.table:
        sys.stdout.write(values_table(CHART))
        return 0
    if args.write_table:
        write_readme_table(CHART)
        return 0
    venv_bin = Path(sys.executable).parent
    binary = None if args.skip_binary else find_binary(args.binary)
    if binary:
        print(f"binary: {binary}")
    problems = run_checks(CHART, venv_bin, binary)
    for problem in problems:
        print(f"FAIL: {problem}")
    if problems:
        print(f"helm check: {len(problems)} problem(s)")
        return 1
    if args.self_test:
        failures = self_test(venv_bin, binary)
        if failures:
            print(f"helm check: {failures} break(s) not caught")
            return 1
    print("helm check: OK")
    return 0


if __name__ == "__main__":
    sys.exit(main())
