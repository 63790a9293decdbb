"""Dockerfile and docker-compose.yml can't run here (no Docker engine), so they are read and
checked: what they run must be what the tests run, with the settings docs/CONFIG.md names."""

from __future__ import annotations

import copy
import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from app.cli import build_parser
from app.core.config import GatewayConfig, Settings, load_config, parse_config

ROOT = Path(__file__).resolve().parents[1]


def test_compose_gateway_and_redis_with_aof() -> None:
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    services = compose["services"]
    redis, gateway = services["redis"], services["gateway"]
    assert "--appendonly" in redis["command"] and "yes" in redis["command"]
    assert any(v.endswith(":/data") for v in redis["volumes"])
    assert redis["healthcheck"]["test"] and gateway["healthcheck"]["test"]
    assert gateway["depends_on"]["redis"]["condition"] == "service_healthy"
    env = gateway["environment"]
    assert env["IMAGEGATE_REDIS_URL"].startswith("redis://redis:6379")
    known = {f"IMAGEGATE_{name.upper()}" for name in Settings.model_fields}
    assert set(env) <= known, set(env) - known
    for name in ("redis-data", "gateway-data"):
        assert name in compose["volumes"]


def test_dockerfile_runs_the_cli_as_non_root() -> None:
    text = (ROOT / "Dockerfile").read_text()
    assert re.search(r"^USER 10001", text, re.M)
    assert "FROM python:3.11-slim" in text
    cmd = re.search(r"^CMD \[(.*)\]$", text, re.M)
    assert cmd is not None
    argv = [a.strip().strip('"') for a in cmd.group(1).split(",")]
    assert argv[0] == "imagegate"
    args = build_parser().parse_args(argv[1:])  # the same CLI the tests drive
    assert args.cmd == "serve" and args.host == "0.0.0.0" and args.port == 8000
    assert "HEALTHCHECK" in text and "/healthz" in text
    assert "COPY config/gateway.yaml" in text and (ROOT / "config" / "gateway.yaml").is_file()


@pytest.mark.skipif(shutil.which("hadolint") is None, reason="hadolint not installed")
def test_hadolint_clean() -> None:
    out = subprocess.run(["hadolint", str(ROOT / "Dockerfile")], capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr


# --- the `fleet` compose profile and deploy/kubernetes ------------------------------------
FLEET_ENV = {"MINIO_ROOT_USER": "imagegate", "MINIO_ROOT_PASSWORD": "secret-for-test"}


def _known_settings() -> set[str]:
    return {f"IMAGEGATE_{name.upper()}" for name in Settings.model_fields}


def _parse_gateway_yaml(text: str, env: dict[str, str] | None = None) -> GatewayConfig:
    old = {k: os.environ.get(k) for k in env or {}}
    os.environ.update(env or {})
    try:
        return parse_config(text, Settings())
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _same_offer_as_shipped(config: GatewayConfig) -> None:
    shipped = load_config(Settings(), ROOT / "config" / "gateway.yaml")
    for part in ("upstreams", "models", "defaults", "limits", "results", "default_model"):
        assert getattr(config, part) == getattr(shipped, part), part


def test_compose_fleet_profile_two_replicas_redis_cluster_and_minio() -> None:
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    services = compose["services"]
    assert "profiles" not in services["redis"] and "profiles" not in services["gateway"]
    fleet = {name: s for name, s in services.items() if "fleet" in s.get("profiles", [])}
    nodes = {name: s for name, s in fleet.items() if name.startswith("redis-node-")}
    assert len(nodes) == 3
    ports = {}
    for name, node in nodes.items():
        cmd = node["command"]
        assert cmd[cmd.index("--cluster-enabled") + 1] == "yes"
        assert cmd[cmd.index("--appendonly") + 1] == "yes"
        ports[name] = cmd[cmd.index("--port") + 1]
        assert node["healthcheck"]["test"]
    create = fleet["redis-cluster-init"]["command"][0]
    assert "--cluster create" in create and "--cluster-replicas 0" in create
    for name, port in ports.items():
        assert f"getent hosts {name} " in create and f":{port}" in create
    replicas = [s for name, s in fleet.items() if name.startswith("replica-")]
    assert len(replicas) == 2
    assert len({r["ports"][0] for r in replicas}) == 2
    for r in replicas:
        env = r["environment"]
        assert set(env) <= _known_settings() | set(FLEET_ENV), set(env) - _known_settings()
        seeds = env["IMAGEGATE_REDIS_URL"].removeprefix("redis+cluster://").split(",")
        assert sorted(seeds) == sorted(f"{n}:{p}" for n, p in ports.items())
        assert r["depends_on"]["redis-cluster-init"]["condition"] == (
            "service_completed_successfully"
        )
        assert r["depends_on"]["minio-init"]["condition"] == "service_completed_successfully"
        assert "/readyz" in " ".join(r["healthcheck"]["test"])
        mount = next(v for v in r["volumes"] if v.endswith(":ro"))
        host, inside, _ = mount.split(":")
        assert env["IMAGEGATE_CONFIG"] == inside
    config = _parse_gateway_yaml((ROOT / host).read_text(), FLEET_ENV)
    _same_offer_as_shipped(config)
    st = config.storage
    assert st.kind == "s3" and st.endpoint_url == "http://minio:9000"
    assert st.access_key_id == FLEET_ENV["MINIO_ROOT_USER"]
    init = fleet["minio-init"]["command"][0]
    assert f"mc mb --ignore-existing local/{st.bucket}" in init
    assert f"mc ilm rule add --prefix {st.prefix} --expire-days 1 local/{st.bucket}" in init
    assert config.results.retention_s <= 86400  # the rule never deletes an unexpired result
    for volume in ("redis-node-1", "redis-node-2", "redis-node-3", "minio-data"):
        assert volume in compose["volumes"]


def _k8s_docs() -> dict[str, dict[str, Any]]:
    docs = {}
    for path in sorted((ROOT / "deploy" / "kubernetes").glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            docs[doc["kind"]] = doc
    return docs


@pytest.mark.parametrize("version", ["1.29.0", "1.33.0"])
def test_kubernetes_manifests_validate_against_the_schema(version: str) -> None:
    docs = _k8s_docs()
    assert set(docs) == {"Deployment", "Service", "PodDisruptionBudget", "ConfigMap"}
    for doc in docs.values():
        kubernetes_validate.validate(doc, version, strict=True)
    broken = copy.deepcopy(docs["Deployment"])  # the validator does catch mistakes
    broken["spec"]["template"]["spec"]["containers"][0]["readinesProbe"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, version, strict=True)


def test_kubernetes_deployment_replicas_readiness_drain_and_config() -> None:
    docs = _k8s_docs()
    dep, svc, pdb, cm = (
        docs[k] for k in ("Deployment", "Service", "PodDisruptionBudget", "ConfigMap")
    )
    spec = dep["spec"]
    assert spec["replicas"] == 2
    labels = spec["template"]["metadata"]["labels"]
    assert spec["selector"]["matchLabels"].items() <= labels.items()
    assert svc["spec"]["selector"].items() <= labels.items()
    assert pdb["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert 1 <= pdb["spec"]["minAvailable"] < spec["replicas"]
    pod = spec["template"]["spec"]
    (c,) = pod["containers"]
    args = build_parser().parse_args(c["args"][1:])
    assert c["args"][0] == "imagegate" and args.cmd == "serve" and args.port == 8000
    port = {p["name"]: p["containerPort"] for p in c["ports"]}
    assert port[c["readinessProbe"]["httpGet"]["port"]] == args.port
    assert c["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert c["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert svc["spec"]["ports"][0]["targetPort"] in port
    drain = c["lifecycle"]["preStop"]["exec"]["command"]
    assert drain[0] == "sleep"
    config_text = cm["data"]["gateway.yaml"]
    config = _parse_gateway_yaml(config_text)
    _same_offer_as_shipped(config)
    assert config.storage.kind == "s3" and config.storage.access_key_id is None  # AWS chain
    grace = 30  # server.shutdown_grace_s default
    assert pod["terminationGracePeriodSeconds"] >= int(drain[1]) + grace
    env = {e["name"]: e.get("value") for e in c["env"]}
    assert set(env) <= _known_settings()
    mount = next(m for m in c["volumeMounts"] if m["name"] == "config")
    assert env["IMAGEGATE_CONFIG"] == mount["mountPath"] + "/gateway.yaml"
    volume = next(v for v in pod["volumes"] if v["name"] == "config")
    assert volume["configMap"]["name"] == cm["metadata"]["name"]
    assert pod["securityContext"]["runAsUser"] == 10001  # the Dockerfile's user


def test_deploy_configs_are_rendered_from_the_shipped_config() -> None:
    """`python -m deploy.render` wrote them from config/gateway.yaml and nothing edited them."""
    from deploy.render import render

    for path, text in render().items():
        assert path.read_text() == text, f"{path}: stale, run `python -m deploy.render`"
