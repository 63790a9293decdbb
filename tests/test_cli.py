"""The real `imagegate` command in subprocesses: keys, credits and usage against the embedded
SQLite store and against Redis, plus every --help."""

from __future__ import annotations

import asyncio
import csv
import io
import json
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from app.api.views import RECORD_COLUMNS
from app.store import open_store
from app.store.base import UsageRecord
from tests.support.redis_server import RedisServer

ROOT = Path(__file__).resolve().parents[1]
SECRET_FIELDS = {"key", "key_hash", "webhook_secret"}
KEY_HEADER = [
    "ID",
    "NAME",
    "PREFIX",
    "BALANCE",
    "RPM",
    "MAX_CONCURRENCY",
    "MODELS",
    "EXPIRES_AT",
    "DISABLED",
]


@dataclass
class Cli:
    env: dict[str, str]
    cwd: Path
    redis_url: str | None
    data_dir: Path

    def run(self, *args: str, ok: bool = True) -> subprocess.CompletedProcess[str]:
        p = subprocess.run(
            [sys.executable, "-m", "app", *args],
            env=self.env,
            cwd=self.cwd,
            capture_output=True,
            text=True,
            timeout=60,
        )
        if ok:
            assert p.returncode == 0, (args, p.stdout, p.stderr)
        return p

    def json(self, *args: str) -> Any:
        return json.loads(self.run(*args).stdout)


def clean_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("IMAGEGATE_")}
    env["PYTHONPATH"] = str(ROOT)
    return env


@pytest.fixture(params=["sqlite", "redis"])
def cli(request: pytest.FixtureRequest, tmp_path: Path, redis_server: RedisServer) -> Iterator[Cli]:
    env = clean_env()
    data_dir = tmp_path / "data"
    env["IMAGEGATE_DATA_DIR"] = str(data_dir)
    redis_url = None
    if request.param == "redis":
        redis_server.flushall()
        redis_url = redis_server.url
        env["IMAGEGATE_REDIS_URL"] = redis_url
    # cwd without a config/ dir: the packaged default config is used
    yield Cli(env=env, cwd=tmp_path, redis_url=redis_url, data_dir=data_dir)


def seed_usage(cli: Cli, key_id: str) -> None:
    """Ledger rows as the gateway writes them: admit then settle, through the same store."""

    async def run() -> None:
        store = open_store(cli.redis_url, cli.data_dir)
        now = time.time()
        try:
            for i, (model, tier, cost, images, charge) in enumerate(
                [
                    ("nano-banana", "request", 140_000, 1, 140_000),
                    ("nano-banana", "request", 140_000, 1, 140_000),
                    ("dall-e-2", "1k", 40_000, 2, 40_000),
                ]
            ):
                rid = f"res-{i}"
                adm = await store.admit(
                    key_id,
                    reservation_id=rid,
                    cost=cost,
                    rpm=100,
                    max_concurrency=10,
                    now=now + i,
                    hold_s=60,
                )
                assert adm.ok, adm
                record = UsageRecord(
                    reservation_id=rid,
                    key_id=key_id,
                    model=model,
                    size_tier=tier,
                    images=images,
                    credits=charge,
                    reserved=cost,
                    task_id=f"task-{i}",
                    trace_id=f"trace-{i}",
                    status="succeeded",
                    latency_ms=100,
                    created_at=now + i + 0.1,
                )
                assert await store.settle(rid, key_id, charge, record)
        finally:
            await store.close()

    asyncio.run(run())


def table(out: str) -> tuple[list[str], list[list[str]]]:
    lines = [line for line in out.splitlines() if line.strip()]
    return lines[0].split(), [re.split(r"\s{2,}", line.strip()) for line in lines[1:]]


def test_operator_flow(cli: Cli) -> None:
    # --- create, JSON: the secret is in the output exactly once
    p = cli.run("keys", "create", "--name", "x", "--credits", "2.5", "--json")
    created = json.loads(p.stdout)
    secret, whsec, kid = created["key"], created["webhook_secret"], created["id"]
    assert secret.startswith("ig-") and whsec.startswith("whsec_") and kid.startswith("key_")
    assert p.stdout.count(secret) == 1 and p.stdout.count(whsec) == 1
    assert created["name"] == "x" and created["balance"] == 2.5 and "key_hash" not in created

    # --- create, table: header row, then the secret once
    p = cli.run(
        "keys",
        "create",
        "--name",
        "team-b",
        "--credits",
        "1",
        "--rpm",
        "30",
        "--max-concurrency",
        "4",
        "--models",
        "nano-banana,dall-e-2",
        "--expires-at",
        "2099-01-01",
    )
    assert p.stdout.splitlines()[0].split() == KEY_HEADER
    m = re.search(r"key \(shown once\):\s+(ig-\S+)", p.stdout)
    assert m is not None, p.stdout
    secret_b = m.group(1)
    assert p.stdout.count(secret_b) == 1
    assert "team-b" in p.stdout and "2099-01-01T00:00:00Z" in p.stdout

    # --- list and show never print a secret
    p = cli.run("keys", "list")
    header, rows = table(p.stdout)
    assert header == KEY_HEADER
    assert len(rows) == 2 and {r[0] for r in rows} == {kid, created["id"]} | {rows[1][0]}
    listing = cli.json("keys", "list", "--json")
    assert [k["name"] for k in listing] == ["x", "team-b"]
    kid_b = listing[1]["id"]
    assert listing[1]["rpm"] == 30 and listing[1]["max_concurrency"] == 4
    assert listing[1]["models"] == ["nano-banana", "dall-e-2"]
    shown = cli.json("keys", "show", kid)
    assert shown == listing[0] and shown["balance"] == 2.5
    for args in [
        ("keys", "list"),
        ("keys", "list", "--json"),
        ("keys", "show", kid),
        ("keys", "show", kid_b),
    ]:
        out = cli.run(*args).stdout
        for s in (secret, whsec, secret_b, secret[8:], secret_b[8:]):
            assert s not in out, args
        for row in listing:
            assert not SECRET_FIELDS & set(row)

    # --- update
    p = cli.run("keys", "update", kid, "--rpm", "5", "--disable")
    assert p.stdout.splitlines()[0].split() == KEY_HEADER
    shown = cli.json("keys", "show", kid)
    assert (shown["rpm"], shown["disabled"], shown["name"]) == (5, True, "x")
    updated = cli.json(
        "keys",
        "update",
        kid,
        "--enable",
        "--name",
        "renamed",
        "--models",
        "gpt-image-2",
        "--max-concurrency",
        "2",
        "--json",
    )
    assert (updated["disabled"], updated["name"], updated["models"]) == (
        False,
        "renamed",
        ["gpt-image-2"],
    )
    assert updated["max_concurrency"] == 2 and updated["rpm"] == 5
    assert cli.json("keys", "update", kid, "--models", "all", "--json")["models"] is None

    # --- credits: exact decimals, refused overdraft (exit 2, nothing changed)
    assert cli.json("credits", "add", kid, "1.25", "--note", "n") == {"id": kid, "balance": 3.75}
    p = cli.run("credits", "add", kid, "-100", ok=False)
    assert p.returncode == 2 and p.stdout == ""
    assert p.stderr.startswith("error: ") and "deduct" in p.stderr and "Traceback" not in p.stderr
    assert cli.json("keys", "show", kid)["balance"] == 3.75
    assert cli.json("credits", "add", kid_b, "0.14")["balance"] == 1.14
    assert cli.json("credits", "add", kid_b, "-1.14")["balance"] == 0

    # --- usage: aggregates and records from ledger rows written by admit/settle
    cli.run("keys", "update", kid, "--rpm", "100")
    seed_usage(cli, kid)
    p = cli.run("usage")
    header, rows = table(p.stdout)
    assert header == ["GROUP", "REQUESTS", "SUCCEEDED", "FAILED", "IMAGES", "CREDITS"]
    assert len(rows) == 1 and re.fullmatch(r"\d{4}-\d{2}-\d{2}", rows[0][0])
    assert rows[0][1:] == ["3", "3", "0", "4", "0.32"]
    by_model = cli.json("usage", "--group-by", "model", "--json")
    assert by_model == [
        {
            "group": "dall-e-2",
            "requests": 1,
            "succeeded": 1,
            "failed": 0,
            "images": 2,
            "credits": 0.04,
        },
        {
            "group": "nano-banana",
            "requests": 2,
            "succeeded": 2,
            "failed": 0,
            "images": 2,
            "credits": 0.28,
        },
    ]
    by_key = cli.json("usage", "--group-by", "key", "--json")
    assert [(g["group"], g["requests"]) for g in by_key] == [(kid, 3)]
    filtered = cli.json("usage", "--key-id", kid, "--model", "nano-banana", "--json")
    assert [g["requests"] for g in filtered] == [2]
    assert cli.json("usage", "--key-id", kid_b, "--json") == []
    assert cli.json("usage", "--since", "2099-01-01", "--json") == []

    p = cli.run("usage", "--records", "--csv")
    reader = csv.DictReader(io.StringIO(p.stdout))
    assert reader.fieldnames == RECORD_COLUMNS
    records = list(reader)
    assert len(records) == 3
    assert [r["trace_id"] for r in records] == ["trace-2", "trace-1", "trace-0"]  # newest first
    assert sum(round(float(r["credits"]) * 1e6) for r in records) == 320_000
    p = cli.run("usage", "--records")
    header, rows = table(p.stdout)
    assert header[:3] == ["CREATED_AT", "KEY_ID", "MODEL"] and len(rows) == 3
    records_json = cli.json("usage", "--records", "--json", "--limit", "2")
    assert [r["trace_id"] for r in records_json] == ["trace-2", "trace-1"]
    assert cli.json("keys", "show", kid)["balance"] == 3.43

    # --- revoke
    assert cli.run("keys", "revoke", kid).stdout.strip() == f"revoked {kid}"
    for args in [
        ("keys", "show", kid),
        ("keys", "revoke", kid),
        ("keys", "update", kid, "--rpm", "3"),
        ("credits", "add", kid, "1"),
    ]:
        p = cli.run(*args, ok=False)
        assert p.returncode == 2 and f"no key '{kid}'" in p.stderr, args
    assert [k["id"] for k in cli.json("keys", "list", "--json")] == [kid_b]
    assert (
        len(list(csv.DictReader(io.StringIO(cli.run("usage", "--records", "--csv").stdout)))) == 3
    )


def test_cli_errors(cli: Cli) -> None:
    for args, words in [
        (("keys", "create", "--name", "y", "--rpm", "0"), "rpm"),
        (("keys", "create", "--name", "y", "--credits", "-1"), "credits"),
        (("keys", "create", "--name", "y", "--credits", "1e400"), "credits"),
        (("keys", "create", "--name", "y", "--credits", "ten"), "credits"),
        (("keys", "create", "--name", "y", "--models", "dall-e-3"), "dall-e-3"),
        (("keys", "create", "--name", "y", "--expires-at", "soon"), "expires_at"),
        (("keys", "create", "--name", " "), "name"),
        (("usage", "--since", "junk"), "since"),
        (("keys", "update", "key_nope", "--rpm", "3"), "no key"),
    ]:
        p = cli.run(*args, ok=False)
        assert p.returncode == 2, (args, p.stdout, p.stderr)
        assert p.stderr.startswith("error: ") and words in p.stderr, (args, p.stderr)
        assert "Traceback" not in p.stderr
    # argparse's own errors: exit 2 with usage
    for args in [
        ("keys", "update", "key_x", "--disable", "--enable"),
        ("keys",),
        ("keys", "create"),
        ("credits", "add", "key_x"),
        ("usage", "--group-by", "week"),
        ("nonsense",),
    ]:
        p = cli.run(*args, ok=False)
        assert p.returncode == 2 and "usage:" in p.stderr, args
    assert cli.json("keys", "list", "--json") == []
    assert cli.run("keys", "list").stdout.strip() == "(none)"


def test_store_unavailable_is_a_clean_error(tmp_path: Path) -> None:
    env = clean_env() | {"IMAGEGATE_REDIS_URL": "redis://127.0.0.1:1/0"}
    p = subprocess.run(
        [sys.executable, "-m", "app", "keys", "list"],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert p.returncode == 1
    assert p.stderr.startswith("error: store unavailable") and "Traceback" not in p.stderr


def test_bad_config_is_a_clean_error(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("upstreams: {}\nmodels: {}\ndefault_model: nope\n")
    env = clean_env() | {"IMAGEGATE_DATA_DIR": str(tmp_path / "data")}
    for args in [
        ["keys", "--config", str(bad), "list"],
        ["keys", "--config", str(tmp_path / "absent.yaml"), "list"],
    ]:
        p = subprocess.run(
            [sys.executable, "-m", "app", *args],
            env=env,
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert p.returncode == 2 and p.stderr.startswith("config error: "), p.stderr
        assert args[2] in p.stderr


HELP = [
    [],
    ["serve"],
    ["worker"],
    ["simulate"],
    ["keys"],
    ["keys", "create"],
    ["keys", "list"],
    ["keys", "show"],
    ["keys", "update"],
    ["keys", "revoke"],
    ["credits"],
    ["credits", "add"],
    ["usage"],
]


def test_help(tmp_path: Path) -> None:
    exe = shutil.which("imagegate")
    base = [exe] if exe else [sys.executable, "-m", "app"]
    procs = [
        (
            args,
            subprocess.Popen(
                [*base, *args, "--help"],
                env=clean_env(),
                cwd=tmp_path,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            ),
        )
        for args in HELP
    ]
    for args, proc in procs:
        out, err = proc.communicate(timeout=60)
        assert proc.returncode == 0, (args, err)
        assert out.startswith("usage: ") and "imagegate" in out, args
    top = procs[0][1]
    del top
