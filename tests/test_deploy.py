"""The deployment files agree with the code (issue 11, point 5).

No Docker daemon and no cluster here, so the files are read and held to what
the code says: container ports equal the server's defaults, every ``SHIXIN_*``
variable named is one the CLI reads, every command parses with the CLI's own
parser, the probes name health services a real server answers, the Kubernetes
manifests validate against the schemas ``kubernetes-validate`` ships (offline),
every PromQL expression parses, and every metric named is a documented one.
``deploy/smoke.sh`` builds and runs the image itself; it needs Docker.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any
from unittest import mock

import grpc
import kubernetes_validate
import promql_parser
import pytest
import yaml
from grpc_health.v1 import health_pb2, health_pb2_grpc

from shixin_check import cli
from shixin_check.domain.errors import ConfigurationError
from shixin_check.domain.keys import MIN_SECRET_BYTES
from shixin_check.server.app import SERVICE_NAME
from shixin_check.server.auth import KeyRing
from shixin_check.server.settings import resolve_args
from tests.conftest import RunningServer
from tests.listdata import basic_rows, write_jsonl

ROOT = Path(__file__).resolve().parent.parent
K8S = ROOT / "deploy" / "k8s"
GRPC_PORT = int(cli.DEFAULT_TARGET.rsplit(":", 1)[1])
METRICS_PORT = 9464
#: The oldest Kubernetes these manifests are for (podFailurePolicy GA, the preStop sleep
#: action on by default) and the newest whose schemas kubernetes-validate ships.
K8S_VERSIONS = ("1.31.0", kubernetes_validate.latest_version())

#: The metric names fixed by issue 11. They must equal the names ``server/metrics.py``
#: exports once that module exists (``test_the_documented_metrics_are_the_servers``).
DOCUMENTED_METRICS = frozenset({
    "shixin_checks_total",
    "shixin_check_duration_seconds",
    "shixin_refusals_total",
    "shixin_hits_total",
    "shixin_hit_log_errors_total",
    "shixin_audit_log_errors_total",
    "shixin_audit_refusals_unrecorded_total",
    "shixin_list_info",
    "shixin_list_age_seconds",
    "shixin_list_entries",
    "shixin_bloom_positives_total",
    "shixin_bloom_false_positives_total",
    "shixin_index_lookups_total",
    "shixin_rate_limited_total",
    "shixin_replica_lag_seconds",
    "shixin_redis_errors_total",
    "shixin_list_behind",
    "shixin_ready",
    "shixin_list_stale",
    "shixin_workers",
    "shixin_worker_restarts_total",
    "shixin_tls_certificate_expiry_timestamp_seconds",
    "shixin_open_files_ratio",
    "shixin_keys_file_refused",
})  # fmt: skip
HISTOGRAMS = frozenset({"shixin_check_duration_seconds"})

#: Variables the CLI reads that are not flags (README: "The key secret", Redis).
NON_FLAG_VARIABLES = frozenset({"SHIXIN_KEY_SECRET", "SHIXIN_REDIS_PASSWORD"})
#: Variables of flags that other changes of issue 11 are adding now: each is accepted
#: only until the module named exists; from then on the parser must know it.
PENDING_VARIABLES = {"SHIXIN_METRICS_LISTEN": ROOT / "server" / "metrics.py"}

Serve = Callable[..., RunningServer]


# --- helpers -------------------------------------------------------------------------------


def load_yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text(encoding="utf-8"))


def manifests() -> Iterator[tuple[Path, dict[str, Any]]]:
    """Every Kubernetes object under deploy/k8s (the kustomization is not one)."""
    for path in sorted(K8S.glob("*.yaml")):
        if path.name != "kustomization.yaml":
            for doc in yaml.safe_load_all(path.read_text(encoding="utf-8")):
                if doc:
                    yield path, doc


def k8s_object(kind: str, name: str | None = None) -> dict[str, Any]:
    found = [d for _, d in manifests() if d["kind"] == kind]
    if name is not None:
        found = [d for d in found if d["metadata"]["name"] == name]
    assert len(found) == 1, f"expected one {kind} {name or ''} in deploy/k8s, found {len(found)}"
    return found[0]


def cli_variables() -> set[str]:
    """Every ``SHIXIN_*`` the CLI reads: each flag's help ends with ``[env SHIXIN_X]``."""
    found: set[str] = set()

    def walk(parser: argparse.ArgumentParser) -> None:
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for sub in action.choices.values():
                    walk(sub)
            found.update(re.findall(r"\[env (SHIXIN_[A-Z0-9_]+)\]", action.help or ""))

    walk(cli._parser())
    return found | NON_FLAG_VARIABLES


def parses(argv: list[str], env: Mapping[str, str] | None = None) -> argparse.Namespace:
    """``argv`` (after ``shixin-check``) as the CLI reads it in the environment ``env``
    (its variables stand in for flags), every option resolved as ``main`` resolves it;
    a bad or missing flag, or a value the CLI refuses, fails the test."""
    with mock.patch.dict(os.environ, env or {}):
        parser = cli._parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit:
        pytest.fail(f"shixin-check does not accept: {shlex.join(argv)}")
    try:
        return resolve_args(args, dict(env or {}))
    except ConfigurationError as exc:
        pytest.fail(f"shixin-check {shlex.join(argv)}: {exc}")


def port_of(address: str) -> int:
    return int(address.rsplit(":", 1)[1])


def seconds(duration: str) -> float:
    """A compose or Prometheus duration (``15s``, ``1m30s``) in seconds."""
    parts = re.findall(r"(\d+(?:\.\d+)?)(ms|s|m|h|d)", duration)
    assert parts and "".join(n + u for n, u in parts) == duration, duration
    scale = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400}
    return sum(float(n) * scale[u] for n, u in parts)


def metric_names(expr: str) -> set[str]:
    """The metric names an expression reads, from its parsed form (so it must parse)."""
    names: set[str] = set()

    def visit(node: Any) -> bool:
        if isinstance(node, promql_parser.VectorSelector) and node.name:
            names.add(node.name)
        return True

    promql_parser.walk(promql_parser.parse(expr), visit)
    return names


def undocumented(names: set[str]) -> set[str]:
    """The names that are neither a documented metric nor one of a histogram's series."""
    series = set(DOCUMENTED_METRICS) | {
        h + suffix for h in HISTOGRAMS for suffix in ("_bucket", "_sum", "_count")
    }
    return {n for n in names if n != "up" and n not in series}


# --- every SHIXIN_* variable is one the CLI reads -------------------------------------------


def deployment_files() -> list[Path]:
    files = [ROOT / "Dockerfile", ROOT / "compose.yaml"]
    files += sorted(p for p in (ROOT / "deploy").rglob("*") if p.suffix in (".yaml", ".yml", ".sh"))
    return files


def test_every_variable_named_in_the_deployment_files_is_read_by_the_cli() -> None:
    known = cli_variables()
    known |= {v for v, module in PENDING_VARIABLES.items() if not module.exists()}
    assert "SHIXIN_LISTEN" in known and "SHIXIN_KEYS_FILE" in known  # the walk found flags
    unknown = {
        f"{path.relative_to(ROOT)}: {name}"
        for path in deployment_files()
        for name in re.findall(r"\bSHIXIN_[A-Z0-9_]*[A-Z0-9]\b", path.read_text(encoding="utf-8"))
        if name not in known
    }
    assert not unknown, f"variables no flag reads: {sorted(unknown)}"


# --- the image -------------------------------------------------------------------------------


def dockerfile() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of the Dockerfile, continuation lines joined, no comments."""
    lines = [
        line for line in (ROOT / "Dockerfile").read_text(encoding="utf-8").splitlines()
        if not line.lstrip().startswith("#")
    ]  # fmt: skip
    joined = re.sub(r"\\\n\s*", " ", "\n".join(lines))
    return [
        (word.upper(), rest.strip())
        for word, _, rest in (line.strip().partition(" ") for line in joined.splitlines())
        if word
    ]


def dockerfile_values(instruction: str) -> list[str]:
    return [rest for word, rest in dockerfile() if word == instruction]


def image_env() -> dict[str, str]:
    """The variables the image sets (``ENV K=V ...``): what compose and Kubernetes start from."""
    return dict(
        word.split("=", 1) for value in dockerfile_values("ENV") for word in shlex.split(value)
    )


def healthcheck_argv(env: Mapping[str, str]) -> list[str]:
    """The HEALTHCHECK's ``shixin-check health ...`` words after ``/bin/sh`` expanded them in
    ``env`` (Docker runs the shell form with the container's environment)."""
    (healthcheck,) = dockerfile_values("HEALTHCHECK")
    probe = healthcheck.split(" CMD ", 1)[1].partition("||")[0]
    done = subprocess.run(["/bin/sh", "-c", f'for word in {probe}; do printf "%s\\n" "$word"; done'],
                          env=dict(env), capture_output=True, text=True, timeout=10, check=True)  # fmt: skip
    return done.stdout.splitlines()


def image_uid() -> int:
    (user,) = dockerfile_values("USER")
    return int(user.split(":")[0])


def test_the_image_is_multi_stage_slim_and_installs_only_wheels() -> None:
    args = dict(a.split("=", 1) for a in dockerfile_values("ARG") if "=" in a)
    stages = [
        re.sub(r"\$\{(\w+)\}", lambda m: args[m.group(1)], f) for f in dockerfile_values("FROM")
    ]
    assert len(stages) >= 2
    assert stages[-1].split()[0] == "python:3.11-slim"
    runs = dockerfile_values("RUN")
    assert any("pip wheel" in r for r in runs), "the build stage makes the wheels"
    install = [r for r in runs if "pip install" in r]
    assert len(install) == 1 and "--no-index" in install[0] and "from=build" in install[0]


def test_the_image_runs_as_a_non_root_user_and_exposes_the_servers_ports() -> None:
    assert image_uid() > 0
    exposed = {int(p) for e in dockerfile_values("EXPOSE") for p in e.split()}
    assert exposed == {GRPC_PORT, METRICS_PORT}
    assert "SHIXIN_METRICS_LISTEN=0.0.0.0:9464" in " ".join(dockerfile_values("ENV"))


def test_the_images_commands_are_ones_the_cli_accepts() -> None:
    (entrypoint,) = dockerfile_values("ENTRYPOINT")
    assert json.loads(entrypoint) == ["shixin-check"]
    (cmd,) = dockerfile_values("CMD")
    # No flags: a flag beats its variable, so SHIXIN_LISTEN given to the container would be
    # ignored (README "Deploying it": the image is configured by SHIXIN_* variables alone).
    assert not [word for word in json.loads(cmd) if word.startswith("-")], cmd
    serve = parses(json.loads(cmd), image_env())
    assert serve.command == "serve"
    assert image_env()["SHIXIN_LISTEN"] == serve.listen == f"0.0.0.0:{GRPC_PORT}"
    (healthcheck,) = dockerfile_values("HEALTHCHECK")
    command = healthcheck.split(" CMD ", 1)[1]
    # shell form: "shixin-check health ... || exit 1" (Docker reserves exit status 2)
    probe, _, fallback = command.partition("||")
    assert fallback.strip() == "exit 1"
    argv = healthcheck_argv(image_env())
    assert argv[:2] == ["shixin-check", "health"]
    health = parses(argv[1:])
    assert health.command == "health"
    # liveness, not readiness: a replica waiting for its list must not be restarted
    assert health.service == "liveness"
    assert health.target == f"127.0.0.1:{GRPC_PORT}"
    # it asks the port the server listens on, also when the container is given another
    moved = parses(healthcheck_argv(image_env() | {"SHIXIN_LISTEN": "0.0.0.0:6000"})[1:])
    assert moved.target == "127.0.0.1:6000"
    pinned = image_env() | {"SHIXIN_TARGET": "10.1.2.3:7000"}
    assert parses(healthcheck_argv(pinned)[1:], pinned).target == "10.1.2.3:7000"


def test_the_images_healthcheck_passes_on_a_live_server_without_a_list(
    tmp_path: Path, serve: Serve
) -> None:
    """Run as Docker runs it, against a real server on SHIXIN_LISTEN's port that has no
    list yet (readiness NOT_SERVING, liveness SERVING): healthy, so never restarted."""
    feed = tmp_path / "feed"
    feed.mkdir()
    server = serve(feed)
    stub = health_pb2_grpc.HealthStub(server.channel)
    ready = stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=5)
    assert ready.status == health_pb2.HealthCheckResponse.NOT_SERVING
    (healthcheck,) = dockerfile_values("HEALTHCHECK")
    command = healthcheck.split(" CMD ", 1)[1]
    env = image_env() | {
        "SHIXIN_LISTEN": f"0.0.0.0:{server.service.port}",
        "PATH": f"{Path(sys.executable).parent}:/usr/bin:/bin",  # the venv's shixin-check
    }
    done = subprocess.run(["/bin/sh", "-c", command], env=env, capture_output=True, text=True,
                          timeout=30)  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr


def test_the_build_context_is_an_allowlist_of_what_the_dockerfile_copies() -> None:
    rules = [
        line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]  # fmt: skip
    assert rules[0] == "*", "everything is left out unless named"
    allowed = {r[1:].rstrip("/") for r in rules if r.startswith("!")}
    copied = {
        src.rstrip("/")
        for c in dockerfile_values("COPY") if not c.startswith("--from")
        for src in c.split()[:-1]
    }  # fmt: skip
    assert copied == allowed
    for src in copied:
        assert (ROOT / src).exists(), src


# --- compose -------------------------------------------------------------------------------


def compose() -> dict[str, Any]:
    data: dict[str, Any] = load_yaml(ROOT / "compose.yaml")
    return data


def environment(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    return {k: str(v) for k, v in env.items()}


def replicas() -> dict[str, dict[str, Any]]:
    return {
        name: s for name, s in compose()["services"].items()
        if (s.get("command") or [None])[0] == "serve"
    }  # fmt: skip


def published(service: dict[str, Any]) -> list[tuple[str, int, int]]:
    """(host address, host port, container port) of each short-syntax port."""
    out = []
    for spec in service.get("ports", []):
        host, host_port, target = str(spec).rsplit(":", 2)
        out.append((host, int(host_port), int(target)))
    return out


def test_compose_runs_redis_a_loader_two_replicas_prometheus_and_grafana() -> None:
    services = compose()["services"]
    assert {"redis", "loader", "prometheus", "grafana"} <= set(services)
    redis = services["redis"]
    assert redis["image"].startswith("redis:7")
    assert "--appendonly" in redis["command"]
    assert redis["command"][redis["command"].index("--appendonly") + 1] == "yes"
    assert len(replicas()) >= 2


def test_compose_replicas_listen_on_the_servers_ports_and_follow_redis() -> None:
    for name, service in replicas().items():
        assert service["command"] == ["serve"], f"{name}: flags would beat SHIXIN_* variables"
        env = environment(service)
        args = parses(service["command"], image_env() | env)
        assert port_of(args.listen) == GRPC_PORT, name
        assert port_of(env["SHIXIN_METRICS_LISTEN"]) == METRICS_PORT, name
        assert env["SHIXIN_REDIS"] == "redis://redis:6379/0", name
        open_to_all = not {"SHIXIN_KEYS_FILE", "SHIXIN_TLS_CLIENT_CA"} & set(env)
        for host, _, target in published(service):
            assert target == GRPC_PORT
            if open_to_all:  # authentication off: only this machine may reach it
                assert host == "127.0.0.1", f"{name} publishes {target} beyond this machine"
        assert seconds(service["stop_grace_period"]) > float(env["SHIXIN_GRACE"]), name
        assert service["read_only"] is True
        assert any(v.split(":")[1] == "/var/log/shixin" for v in service["volumes"])
    host_ports = [p[1] for s in replicas().values() for p in published(s)]
    assert len(host_ports) == len(set(host_ports))


def test_compose_loader_generates_a_list_and_loads_it_into_the_same_redis() -> None:
    loader = compose()["services"]["loader"]
    assert loader["entrypoint"] == ["/bin/sh", "-c"]
    (script,) = loader["command"]
    steps = [shlex.split(step) for step in script.split("&&")]
    assert all(step[0] == "shixin-check" for step in steps)
    gen, load = (parses(step[1:], environment(loader)) for step in steps)
    assert (gen.command, load.command) == ("gen-data", "load")
    assert str(load.path) == gen.out
    assert (
        environment(loader)["SHIXIN_REDIS"] == environment(replicas()["shixin-1"])["SHIXIN_REDIS"]
    )
    assert loader.get("restart") == "no"


def test_compose_key_secret_comes_from_outside_the_file() -> None:
    data = compose()
    secret = data["secrets"]["key_secret"]
    assert set(secret) <= {"environment", "file"}, "a compose secret, never an inline value"
    for name in ("loader", *replicas()):
        service = data["services"][name]
        assert "key_secret" in service["secrets"]
        env = environment(service)
        assert env["SHIXIN_KEY_SECRET_FILE"] == "/run/secrets/key_secret"
        assert "SHIXIN_KEY_SECRET" not in env


def test_prometheus_scrapes_every_replica_on_the_metrics_port() -> None:
    config = load_yaml(ROOT / "deploy" / "prometheus" / "prometheus.yml")
    (job,) = [j for j in config["scrape_configs"] if j["job_name"] == "shixin-check"]
    targets = {t for group in job["static_configs"] for t in group["targets"]}
    assert targets == {f"{name}:{METRICS_PORT}" for name in replicas()}
    for rule_file in config["rule_files"]:
        assert (ROOT / "deploy" / "prometheus" / rule_file).is_file()
    prometheus = compose()["services"]["prometheus"]
    assert "./deploy/prometheus:/etc/prometheus:ro" in prometheus["volumes"]
    assert "--config.file=/etc/prometheus/prometheus.yml" in prometheus["command"]


def test_grafana_is_provisioned_with_the_datasource_and_the_dashboard() -> None:
    grafana = compose()["services"]["grafana"]
    mounts = {v.split(":")[1]: v.split(":")[0] for v in grafana["volumes"]}
    for target, source in mounts.items():
        if source.startswith("./"):
            assert (ROOT / source).exists(), f"{source} mounted at {target}"
    provisioning = ROOT / mounts["/etc/grafana/provisioning"]
    (datasource,) = load_yaml(provisioning / "datasources" / "prometheus.yml")["datasources"]
    assert datasource["type"] == "prometheus"
    assert datasource["url"] == "http://prometheus:9090"
    (provider,) = load_yaml(provisioning / "dashboards" / "shixin-check.yml")["providers"]
    dashboard_at = [t for t, s in mounts.items() if s == "./deploy/grafana/shixin-check.json"]
    assert [str(Path(t).parent) for t in dashboard_at] == [provider["options"]["path"]]


# --- Kubernetes ------------------------------------------------------------------------------


@pytest.mark.parametrize("version", K8S_VERSIONS)
def test_every_manifest_validates_against_the_kubernetes_schemas(version: str) -> None:
    kinds = set()
    for path, doc in manifests():
        try:
            kubernetes_validate.validate(doc, version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            pytest.fail(f"{path.name} ({doc['kind']}) against Kubernetes {version}: {exc}")
        kinds.add(doc["kind"])
    assert {"Deployment", "Service", "ConfigMap", "Secret", "PodDisruptionBudget", "Job"} <= kinds


def test_kustomization_lists_every_manifest_but_the_placeholder_secret() -> None:
    listed = set(load_yaml(K8S / "kustomization.yaml")["resources"])
    files = {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml"}
    assert listed == files - {"secret.yaml"}
    if shutil.which("kubectl") is not None:  # a kubectl client renders it, offline
        done = subprocess.run(["kubectl", "kustomize", str(K8S)], capture_output=True,
                              text=True, timeout=60)  # fmt: skip
        assert done.returncode == 0, done.stderr
        rendered = [d for d in yaml.safe_load_all(done.stdout) if d]
        assert len(rendered) == sum(1 for p, _ in manifests() if p.name in listed)


def pod_spec(kind: str) -> dict[str, Any]:
    spec: dict[str, Any] = k8s_object(kind)["spec"]["template"]["spec"]
    return spec


def config() -> dict[str, str]:
    data: dict[str, str] = k8s_object("ConfigMap")["data"]
    return data


def test_deployment_ports_and_args_are_the_servers() -> None:
    deployment = k8s_object("Deployment")
    assert deployment["spec"]["replicas"] == 2
    (container,) = pod_spec("Deployment")["containers"]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"grpc": GRPC_PORT, "metrics": METRICS_PORT}
    assert container["args"] == ["serve"], "flags would beat the ConfigMap's variables"
    args = parses(container["args"], image_env() | config())
    assert args.command == "serve" and port_of(args.listen) == GRPC_PORT
    assert port_of(config()["SHIXIN_METRICS_LISTEN"]) == METRICS_PORT
    annotations = deployment["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/port"] == str(METRICS_PORT)


def probe_services() -> dict[str, str]:
    (container,) = pod_spec("Deployment")["containers"]
    services = {}
    for probe in ("readinessProbe", "livenessProbe", "startupProbe"):
        grpc_probe = container[probe]["grpc"]
        assert grpc_probe["port"] == GRPC_PORT, probe
        services[probe] = grpc_probe.get("service", "")
    return services


def test_probes_name_the_check_service_for_readiness_and_liveness_for_liveness() -> None:
    services = probe_services()
    assert services["readinessProbe"] == SERVICE_NAME
    assert services["livenessProbe"] == "liveness"
    assert services["startupProbe"] == "liveness"


def test_a_real_server_answers_every_health_service_the_probes_ask(
    tmp_path: Path, serve: Serve
) -> None:
    """NOT_FOUND here would keep every pod unready or restart it forever."""
    header = {"snapshot": {"includes_seq": 0, "published_at": "2026-11-28T09:00:00+08:00"}}
    server = serve(write_jsonl(tmp_path / "l.jsonl", [header, *basic_rows()]))
    stub = health_pb2_grpc.HealthStub(server.channel)
    for probe, service in probe_services().items():
        try:
            reply = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=5)
        except grpc.RpcError as exc:
            pytest.fail(f"{probe} asks for health service {service!r}: {exc.code().name} "
                        "(server/app.py must set a status for it)")  # fmt: skip
        assert reply.status == health_pb2.HealthCheckResponse.SERVING, (probe, service)


def test_pods_run_non_root_on_a_read_only_root_with_logs_on_an_empty_dir() -> None:
    for kind in ("Deployment", "Job"):
        spec = pod_spec(kind)
        assert spec["securityContext"]["runAsNonRoot"] is True
        assert spec["securityContext"]["runAsUser"] == image_uid()
        assert spec["automountServiceAccountToken"] is False
        volumes = {v["name"]: v for v in spec["volumes"]}
        for container in spec["containers"]:
            security = container["securityContext"]
            assert security["readOnlyRootFilesystem"] is True
            assert security["allowPrivilegeEscalation"] is False
            assert security["capabilities"]["drop"] == ["ALL"]
            assert "memory" in container["resources"]["limits"]
            mounts = {m["mountPath"]: volumes[m["name"]] for m in container["volumeMounts"]}
            assert "emptyDir" in mounts["/tmp"]
    (server,) = pod_spec("Deployment")["containers"]
    mounts = {m["mountPath"]: m["name"] for m in server["volumeMounts"]}
    volumes = {v["name"]: v for v in pod_spec("Deployment")["volumes"]}
    for log in ("SHIXIN_HIT_LOG", "SHIXIN_AUDIT_LOG"):
        folder = str(Path(config()[log]).parent)
        assert "emptyDir" in volumes[mounts[folder]], log


def test_termination_grace_covers_the_servers_drain() -> None:
    spec = pod_spec("Deployment")
    (container,) = spec["containers"]
    pause = container["lifecycle"]["preStop"]["sleep"]["seconds"]
    grace = float(config().get("SHIXIN_GRACE", parses(["serve"]).grace))
    assert spec["terminationGracePeriodSeconds"] > pause + grace


def test_pods_read_the_configmap_and_the_secret_as_files() -> None:
    secret = k8s_object("Secret")
    configmap = k8s_object("ConfigMap")
    for kind in ("Deployment", "Job"):
        spec = pod_spec(kind)
        secret_volumes = {v["name"]: v["secret"] for v in spec["volumes"] if "secret" in v}
        for container in spec["containers"]:
            assert container["envFrom"] == [
                {"configMapRef": {"name": configmap["metadata"]["name"]}}
            ]
            mounted = {
                m["mountPath"]: secret_volumes[m["name"]]
                for m in container["volumeMounts"] if m["name"] in secret_volumes
            }  # fmt: skip
            wanted = ["SHIXIN_KEY_SECRET_FILE"] + (
                ["SHIXIN_KEYS_FILE"] if kind == "Deployment" else []
            )
            for variable in wanted:
                path = Path(config()[variable])
                volume = mounted[str(path.parent)]
                assert volume["secretName"] == secret["metadata"]["name"]
                names = [i["path"] for i in volume.get("items", [])] or list(secret["stringData"])
                assert path.name in names and path.name in secret["stringData"], variable


def test_the_placeholder_secret_cannot_serve(tmp_path: Path) -> None:
    """Applied by mistake, it stops the pods instead of running them on a known secret."""
    data = k8s_object("Secret")["stringData"]
    assert len(data["key-secret"].encode()) < MIN_SECRET_BYTES
    keys = tmp_path / "keys.json"
    keys.write_text(data["keys.json"])
    ring = KeyRing.load(keys)
    assert not ring.by_hash and not ring.by_common_name


def test_service_and_budget_select_the_pods_and_name_the_ports() -> None:
    pod_labels = k8s_object("Deployment")["spec"]["template"]["metadata"]["labels"]
    (container,) = pod_spec("Deployment")["containers"]
    container_ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    service = k8s_object("Service")["spec"]
    assert service["selector"].items() <= pod_labels.items()
    assert {p["port"]: container_ports[p["targetPort"]] for p in service["ports"]} == {
        GRPC_PORT: GRPC_PORT,
        METRICS_PORT: METRICS_PORT,
    }
    budget = k8s_object("PodDisruptionBudget")["spec"]
    assert budget["selector"]["matchLabels"].items() <= pod_labels.items()
    assert 0 < budget["minAvailable"] < k8s_object("Deployment")["spec"]["replicas"]
    policy = k8s_object("NetworkPolicy")["spec"]
    assert policy["podSelector"]["matchLabels"].items() <= pod_labels.items()
    allowed = {port["port"] for rule in policy["ingress"] for port in rule["ports"]}
    assert allowed == set(container_ports)


def test_the_loader_job_loads_with_the_cli_and_fails_fast_on_a_refused_file() -> None:
    job = k8s_object("Job")["spec"]
    (container,) = job["template"]["spec"]["containers"]
    args = parses(container["args"], config())
    assert args.command == "load"
    assert job["template"]["spec"]["restartPolicy"] == "Never"
    (rule,) = job["podFailurePolicy"]["rules"]
    assert rule["action"] == "FailJob"
    assert rule["onExitCodes"] == {"containerName": container["name"], "operator": "In",
                                   "values": [1]}  # fmt: skip
    assert config()["SHIXIN_REDIS"].startswith("redis://")


# --- alerts and dashboard ----------------------------------------------------------------


def alert_rules() -> list[dict[str, Any]]:
    groups = load_yaml(ROOT / "deploy" / "prometheus" / "alerts.yml")["groups"]
    return [rule for group in groups for rule in group["rules"]]


def test_every_alert_parses_names_documented_metrics_and_says_how_bad() -> None:
    used: set[str] = set()
    for rule in alert_rules():
        names = metric_names(rule["expr"])
        assert names, rule["alert"]
        assert not undocumented(names), (rule["alert"], undocumented(names))
        used |= names
        assert rule["labels"]["severity"] in ("critical", "warning", "info"), rule["alert"]
        assert rule["annotations"]["summary"], rule["alert"]
        if "for" in rule:
            seconds(rule["for"])
    # list age, refusals, hit-log errors, replica lag, instance down / not serving
    assert {
        "shixin_list_age_seconds",
        "shixin_refusals_total",
        "shixin_hit_log_errors_total",
        "shixin_replica_lag_seconds",
        "shixin_list_info",
        "up",
    } <= used
    assert len({rule["alert"] for rule in alert_rules()}) == len(alert_rules())


def selectors(expr: str, name: str) -> list[dict[str, tuple[str, str]]]:
    """The label matchers ``{label: (op, value)}`` of each selector of ``name`` in ``expr``."""
    found: list[dict[str, tuple[str, str]]] = []

    def visit(node: Any) -> bool:
        if isinstance(node, promql_parser.VectorSelector) and node.name == name:
            found.append({m.name: (str(m.op), m.value) for m in node.matchers.matchers})
        return True

    promql_parser.walk(promql_parser.parse(expr), visit)
    return found


#: The label the rules find the replicas by: compose's job sets it, a Kubernetes pod scrape
#: maps it from the pod label app.kubernetes.io/name. A job name differs between the two.
REPLICA_LABEL = ("app_kubernetes_io_name", "shixin-check")


def test_the_alerts_on_up_find_the_replicas_under_compose_and_kubernetes() -> None:
    label, value = REPLICA_LABEL
    on_up = [rule for rule in alert_rules() if "up" in metric_names(rule["expr"])]
    assert {rule["alert"] for rule in on_up} >= {"ShixinCheckDown", "ShixinCheckNotServing"}
    for rule in on_up:
        for matchers in selectors(rule["expr"], "up"):
            assert "job" not in matchers, f"{rule['alert']}: a job name the k8s scrape lacks"
            assert matchers.get(label) == (str(promql_parser.MatchOp.Equal), value), rule["alert"]
    # compose: its job gives every replica target the label
    config = load_yaml(ROOT / "deploy" / "prometheus" / "prometheus.yml")
    (job,) = [j for j in config["scrape_configs"] if j["job_name"] == "shixin-check"]
    for group in job["static_configs"]:
        assert group["labels"][label] == value
    # Kubernetes: the shipped job keeps the annotated shixin-check pods and maps pod labels,
    # and the Deployment's pods carry the annotation and the name
    (k8s_job,) = load_yaml(ROOT / "deploy" / "prometheus" / "kubernetes.yml")["scrape_configs"]
    assert [sd["role"] for sd in k8s_job["kubernetes_sd_configs"]] == ["pod"]
    relabel = k8s_job["relabel_configs"]
    keeps = {tuple(r["source_labels"]): r["regex"] for r in relabel if r.get("action") == "keep"}
    assert keeps[("__meta_kubernetes_pod_annotation_prometheus_io_scrape",)] == "true"
    assert keeps[("__meta_kubernetes_pod_label_app_kubernetes_io_name",)] == value
    assert {"action": "labelmap", "regex": "__meta_kubernetes_pod_label_(.+)"} in relabel
    template = k8s_object("Deployment")["spec"]["template"]["metadata"]
    assert template["annotations"]["prometheus.io/scrape"] == "true"
    assert template["labels"]["app.kubernetes.io/name"] == value


def dashboard() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(
        (ROOT / "deploy" / "grafana" / "shixin-check.json").read_text()
    )
    return data


def test_every_dashboard_query_parses_and_names_documented_metrics() -> None:
    board = dashboard()
    (variable,) = [v for v in board["templating"]["list"] if v["type"] == "datasource"]
    assert variable["query"] == "prometheus"
    panels = board["panels"]
    assert len({p["id"] for p in panels}) == len(panels)
    for panel in panels:
        assert panel["datasource"]["uid"] == "${" + variable["name"] + "}", panel["title"]
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            names = metric_names(target["expr"])
            assert names and not undocumented(names), (panel["title"], target["expr"])


def test_the_dashboard_has_the_panels_the_issue_asks_for() -> None:
    exprs = [
        " ".join(t["expr"].split()) for p in dashboard()["panels"] for t in p["targets"]
    ]  # fmt: skip
    assert "sum by (channel, decision) (rate(shixin_checks_total[1m]))" in exprs
    for q in ("0.5", "0.99"):
        assert any(
            e.startswith(f"histogram_quantile({q},") and "by (le, method)" in e
            and "shixin_check_duration_seconds_bucket" in e
            for e in exprs
        ), q  # fmt: skip
    for metric in (
        "shixin_list_age_seconds",
        "shixin_refusals_total",
        "shixin_hit_log_errors_total",
        "shixin_replica_lag_seconds",
    ):
        assert any(metric in metric_names(e) for e in exprs), metric


def test_the_documented_metrics_are_the_servers() -> None:
    """Text-level until the module exists: each documented name appears in it, and it
    names no ``shixin_`` metric outside the list (``_total`` as the client adds it)."""
    module = ROOT / "server" / "metrics.py"
    if not module.exists():
        pytest.skip("server/metrics.py does not exist yet")
    source = module.read_text(encoding="utf-8")
    base = {m.removesuffix("_total") for m in DOCUMENTED_METRICS}
    in_source = {m.removesuffix("_total") for m in re.findall(r"[\"'](shixin_\w+)[\"']", source)}
    assert base - in_source == set(), "documented but not in server/metrics.py"
    assert in_source - base == set(), "in server/metrics.py but not documented"


def test_the_readme_points_to_the_smoke_script() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert "### Deploying it" in readme
    assert "deploy/smoke.sh" in readme
    assert (ROOT / "deploy" / "smoke.sh").stat().st_mode & 0o111
