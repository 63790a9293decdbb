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
from app.cli import main
from app.store import open_store
from app.store.base import UsageRecord
from tests.support.net import free_port
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
    full: bool  # every extra check (SQLite); the Redis run keeps to the essential commands

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

    def many(self, *commands: tuple[str, ...]) -> list[subprocess.CompletedProcess[str]]:
        """Independent commands side by side (each is a ~0.3 s interpreter start)."""
        procs = [
            subprocess.Popen(
                [sys.executable, "-m", "app", *args],
                env=self.env,
                cwd=self.cwd,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            for args in commands
        ]
        done = []
        for args, proc in zip(commands, procs, strict=True):
            out, err = proc.communicate(timeout=60)
            done.append(subprocess.CompletedProcess(list(args), proc.returncode, out, err))
        return done


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
    yield Cli(env=env, cwd=tmp_path, redis_url=redis_url, data_dir=data_dir, full=redis_url is None)


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
    """Header names and the cells of each row, cut at the header's column starts."""
    lines = [line for line in out.splitlines() if line.strip()]
    header = lines[0].split()
    starts = [m.start() for m in re.finditer(r"\S+", lines[0])]
    bounds = list(zip(starts, [*starts[1:], None], strict=True))
    return header, [[line[a:b].strip() for a, b in bounds] for line in lines[1:]]


def test_operator_flow(cli: Cli) -> None:
    # --- create, JSON and table: the secret is in the output exactly once
    p_json, p_table = cli.many(
        ("keys", "create", "--name", "x", "--credits", "2.5", "--json"),
        ("keys", "create", "--name", "team-b", "--credits", "1", "--rpm", "30",
         "--max-concurrency", "4", "--models", "nano-banana,dall-e-2",
         "--expires-at", "2099-01-01"),
    )  # fmt: skip
    assert p_json.returncode == 0 and p_table.returncode == 0, (p_json.stderr, p_table.stderr)
    created = json.loads(p_json.stdout)
    secret, whsec, kid = created["key"], created["webhook_secret"], created["id"]
    assert secret.startswith("ig-") and whsec.startswith("whsec_") and kid.startswith("key_")
    assert p_json.stdout.count(secret) == 1 and p_json.stdout.count(whsec) == 1
    assert created["name"] == "x" and created["balance"] == 2.5 and "key_hash" not in created

    assert p_table.stdout.splitlines()[0].split() == KEY_HEADER
    m = re.search(r"key \(shown once\):\s+(ig-\S+)", p_table.stdout)
    assert m is not None, p_table.stdout
    secret_b = m.group(1)
    assert p_table.stdout.count(secret_b) == 1
    assert "team-b" in p_table.stdout and "2099-01-01T00:00:00Z" in p_table.stdout

    # --- list and show never print a secret
    listed, listed_json, shown_a = cli.many(
        ("keys", "list"), ("keys", "list", "--json"), ("keys", "show", kid)
    )
    listing = {k["name"]: k for k in json.loads(listed_json.stdout)}
    kid_b = listing["team-b"]["id"]
    header, rows = table(listed.stdout)
    assert header == KEY_HEADER
    assert sorted(r[0] for r in rows) == sorted([kid, kid_b])
    assert listing["team-b"]["rpm"] == 30 and listing["team-b"]["max_concurrency"] == 4
    assert listing["team-b"]["models"] == ["nano-banana", "dall-e-2"]
    assert json.loads(shown_a.stdout) == listing["x"] and listing["x"]["balance"] == 2.5
    for p in (listed, listed_json, shown_a):
        for s in (secret, whsec, secret_b, secret[8:], secret_b[8:]):
            assert s not in p.stdout, p.args
    for row in listing.values():
        assert not SECRET_FIELDS & set(row)

    # --- update (the table it prints is the new state) and credits
    updated, top_up, overdraft = cli.many(
        ("keys", "update", kid, "--rpm", "5", "--disable"),
        ("credits", "add", kid_b, "1.25", "--note", "n"),
        ("credits", "add", kid_b, "-100"),
    )
    header, rows = table(updated.stdout)
    assert header == KEY_HEADER
    state = dict(zip(header, rows[0], strict=True))
    assert (state["ID"], state["RPM"], state["DISABLED"]) == (kid, "5", "True")
    assert json.loads(top_up.stdout) == {"id": kid_b, "balance": 2.25}
    assert overdraft.returncode == 2 and overdraft.stdout == ""
    assert overdraft.stderr.startswith("error: ") and "deduct" in overdraft.stderr
    assert "Traceback" not in overdraft.stderr
    enabled, *exact = cli.many(
        ("keys", "update", kid, "--enable", "--name", "renamed", "--models", "gpt-image-2",
         "--max-concurrency", "2", "--json"),
        *([("credits", "add", kid, "0.14")] if cli.full else []),
    )  # fmt: skip
    state = json.loads(enabled.stdout)
    assert (state["disabled"], state["name"], state["models"], state["rpm"]) == (
        False, "renamed", ["gpt-image-2"], 5)  # fmt: skip
    if cli.full:
        assert json.loads(exact[0].stdout)["balance"] == 2.64
        assert cli.json("credits", "add", kid, "-0.14")["balance"] == 2.5

    # --- usage: aggregates and records from ledger rows written by admit/settle
    seed_usage(cli, kid)
    by_day, by_model, as_csv, show, *extra = cli.many(
        ("usage",),
        ("usage", "--group-by", "model", "--json"),
        ("usage", "--records", "--csv"),
        ("keys", "show", kid),
        *(
            [("usage", "--group-by", "key", "--json"),
             ("usage", "--key-id", kid, "--model", "nano-banana", "--json"),
             ("usage", "--key-id", kid_b, "--since", "2000-01-01", "--json"),
             ("usage", "--records", "--limit", "2")]
            if cli.full else []
        ),
    )  # fmt: skip
    header, rows = table(by_day.stdout)
    assert header == [
        "GROUP", "REQUESTS", "SUCCEEDED", "FAILED", "IMAGES", "CREDITS", "COST_USD", "ESTIMATED"
    ]  # fmt: skip
    assert len(rows) == 1 and re.fullmatch(r"\d{4}-\d{2}-\d{2}", rows[0][0])
    assert rows[0][1:] == ["3", "3", "0", "4", "0.32", "0.0", "0"]
    assert json.loads(by_model.stdout) == [
        {"group": "dall-e-2", "requests": 1, "succeeded": 1, "failed": 0, "images": 2,
         "credits": 0.04, "cost_usd": 0.0, "estimated": 0},
        {"group": "nano-banana", "requests": 2, "succeeded": 2, "failed": 0, "images": 2,
         "credits": 0.28, "cost_usd": 0.0, "estimated": 0},
    ]  # fmt: skip
    reader = csv.DictReader(io.StringIO(as_csv.stdout))
    assert reader.fieldnames == RECORD_COLUMNS
    records = list(reader)
    assert [r["trace_id"] for r in records] == ["trace-2", "trace-1", "trace-0"]  # newest first
    assert sum(round(float(r["credits"]) * 1e6) for r in records) == 320_000
    assert {r["key_id"] for r in records} == {kid}
    assert json.loads(show.stdout)["balance"] == 2.18  # 2.5 - 0.32
    if cli.full:
        by_key, filtered, other, as_table = extra
        assert [(g["group"], g["requests"]) for g in json.loads(by_key.stdout)] == [(kid, 3)]
        assert [g["requests"] for g in json.loads(filtered.stdout)] == [2]
        assert json.loads(other.stdout) == []
        header, rows = table(as_table.stdout)
        assert header[:3] == ["CREATED_AT", "KEY_ID", "MODEL"] and len(rows) == 2

    # --- revoke
    assert cli.run("keys", "revoke", kid).stdout.strip() == f"revoked {kid}"
    gone, listed, ledger = cli.many(
        ("keys", "show", kid), ("keys", "list", "--json"), ("usage", "--records", "--csv")
    )
    assert gone.returncode == 2 and f"no key '{kid}'" in gone.stderr
    assert [k["id"] for k in json.loads(listed.stdout)] == [kid_b]
    assert len(list(csv.DictReader(io.StringIO(ledger.stdout)))) == 3  # the ledger stays


# --- the error matrix and the help texts run `main()` in-process (same code, no interpreter
# start per case); the subprocess runs above cover the real entry point and exit codes.
@pytest.fixture
def local_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    for name in [k for k in os.environ if k.startswith("IMAGEGATE_")]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("IMAGEGATE_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.chdir(tmp_path)
    return tmp_path


def call(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    try:
        code = main(argv)
    except SystemExit as exc:  # argparse: --help and usage errors
        code = int(exc.code or 0)
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.parametrize(
    ("argv", "words"),
    [
        ("keys create --name y --rpm 0", "rpm"),
        ("keys create --name y --rpm 99999999999", "rpm"),
        ("keys create --name y --credits -1", "credits"),
        ("keys create --name y --credits 1e400", "credits"),
        ("keys create --name y --credits ten", "credits"),
        ("keys create --name y --models dall-e-3", "dall-e-3"),
        ("keys create --name y --expires-at soon", "expires_at"),
        ("keys create --name", "name"),
        ("keys update key_nope --rpm 3", "no key"),
        ("keys show key_nope", "no key"),
        ("keys revoke key_nope", "no key"),
        ("credits add key_nope 1", "no key"),
        ("usage --since junk", "since"),
    ],
)
def test_cli_errors(
    local_env: Path, capsys: pytest.CaptureFixture[str], argv: str, words: str
) -> None:
    args = argv.split()
    if args[-1] == "--name":
        args.append(" ")
    code, out, err = call(args, capsys)
    assert code == 2, (out, err)
    assert err.startswith("error: ") and words in err and out == ""
    code, out, _ = call(["keys", "list", "--json"], capsys)
    assert code == 0 and json.loads(out) == []  # nothing was created


@pytest.mark.parametrize(
    "argv",
    ["keys update key_x --disable --enable", "keys", "keys create", "credits add key_x",
     "usage --group-by week", "nonsense", ""],
)  # fmt: skip
def test_usage_errors(local_env: Path, capsys: pytest.CaptureFixture[str], argv: str) -> None:
    code, _, err = call(argv.split(), capsys)
    assert code == 2 and "usage: imagegate" in err


def test_empty_list(local_env: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert call(["keys", "list"], capsys)[1].strip() == "(none)"
    assert call(["usage"], capsys)[1].strip() == "(none)"
    code, out, _ = call(["usage", "--records", "--csv"], capsys)
    assert code == 0 and out.strip() == ",".join(RECORD_COLUMNS)


def test_store_unavailable_is_a_clean_error(tmp_path: Path) -> None:
    env = clean_env() | {"IMAGEGATE_REDIS_URL": f"redis://127.0.0.1:{free_port()}/0"}
    p = subprocess.run([sys.executable, "-m", "app", "keys", "list"], env=env, cwd=tmp_path,
                       capture_output=True, text=True, timeout=60)  # fmt: skip
    assert p.returncode == 1
    assert p.stderr.startswith("error: store unavailable") and "Traceback" not in p.stderr


def test_bad_config_is_a_clean_error(local_env: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = local_env / "bad.yaml"
    bad.write_text("upstreams: {}\nmodels: {}\ndefault_model: nope\n")
    for path in [bad, local_env / "absent.yaml"]:
        code, _, err = call(["keys", "--config", str(path), "list"], capsys)
        assert code == 2 and err.startswith(f"config error: {path}: "), err


@pytest.mark.parametrize(
    "argv",
    ["serve", "worker", "simulate", "keys", "keys create", "keys list", "keys show",
     "keys update", "keys revoke", "credits", "credits add", "usage", "audit"],
)  # fmt: skip
def test_subcommand_help(capsys: pytest.CaptureFixture[str], argv: str) -> None:
    code, out, _ = call([*argv.split(), "--help"], capsys)
    assert code == 0 and out.startswith(f"usage: imagegate {argv}")


def test_help_of_the_installed_command(tmp_path: Path) -> None:
    exe = shutil.which("imagegate")
    base = [exe] if exe else [sys.executable, "-m", "app"]
    p = subprocess.run([*base, "--help"], env=clean_env(), cwd=tmp_path, capture_output=True,
                       text=True, timeout=60)  # fmt: skip
    assert p.returncode == 0 and p.stdout.startswith("usage: imagegate")
    for command in ("serve", "keys", "credits", "usage"):
        assert command in p.stdout


def test_cli_changes_are_audited(cli: Cli) -> None:
    """Changes made on the command line are in the audit log as the operator's, without the
    key's secret; `imagegate audit` filters them."""
    import getpass
    import socket

    created = cli.json("keys", "create", "--name", "audited", "--credits", "1", "--json")
    kid = created["id"]
    cli.run("credits", "add", kid, "2.5", "--note", "grant")
    cli.run("keys", "update", kid, "--rpm", "9")
    by_target, by_action, by_source = cli.many(
        ("audit", "--target", kid, "--json"),
        ("audit", "--action", "key.create"),
        ("audit", "--source", "api", "--json"),
    )
    entries = json.loads(by_target.stdout)
    assert [e["action"] for e in entries] == ["key.update", "key.credits", "key.create"]
    assert {(e["actor"], e["source"], e["client"]) for e in entries} == {
        (getpass.getuser(), "cli", socket.gethostname())
    }
    assert entries[1]["details"] == {"amount_micro": 2_500_000, "note": "grant",
                                     "balance_micro": 3_500_000}  # fmt: skip
    listed = by_action.stdout
    assert created["key"] not in listed and created["webhook_secret"] not in listed
    header, rows = table(listed)
    assert header == ["AT", "ACTOR", "SOURCE", "ACTION", "TARGET", "CLIENT", "DETAILS"]
    assert [r[4] for r in rows] == [kid]
    assert json.loads(by_source.stdout) == []
