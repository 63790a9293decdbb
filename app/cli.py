"""The `imagegate` command: serve, simulate, and the operator's key/credit/usage commands.

The admin commands talk to the store directly through the same `KeyAdmin` the admin API uses,
so they work with the gateway stopped and behave exactly like the API.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

from app.core.config import ConfigError, Settings, load_config
from app.core.errors import GatewayError


def _settings(args: argparse.Namespace) -> Settings:
    settings = Settings()
    if getattr(args, "config", None):
        settings.config = args.config
    return settings


# --- serve / simulate ---------------------------------------------------------------------
def cmd_serve(args: argparse.Namespace) -> int:
    from app.server import serve

    return serve(
        _settings(args),
        host=args.host,
        port=args.port,
        explicit_config=args.config,
        workers=args.workers,
    )


def cmd_worker(args: argparse.Namespace) -> int:
    from app.server import work

    return work(_settings(args), explicit_config=args.config)


def cmd_simulate(args: argparse.Namespace) -> int:
    from app.simulator import run

    print(f"imagegate simulator on http://{args.host}:{args.port}  (OpenAI: /v1, Gemini: /v1beta)")
    run(args.host, args.port)
    return 0


# --- admin commands -----------------------------------------------------------------------
def _run_admin(args: argparse.Namespace, fn: Callable[[Any], Awaitable[int]]) -> int:
    from app.domain.keys import KeyAdmin
    from app.store import StoreUnavailable, open_store

    settings = _settings(args)

    async def main() -> int:
        config = load_config(settings, args.config) if args.config else load_config(settings)
        store = open_store(settings.redis_url, Path(settings.data_dir))
        try:
            return await fn(KeyAdmin(store, set(config.models)))
        finally:
            await store.close()

    try:
        return asyncio.run(main())
    except GatewayError as exc:
        print(f"error: {exc.message}", file=sys.stderr)
        return 2
    except ConfigError as exc:
        print(f"config error: {exc}", file=sys.stderr)
        return 2
    except StoreUnavailable as exc:
        print(f"error: store unavailable: {exc}", file=sys.stderr)
        return 1


def _actor() -> Any:
    """The audit log's actor for a CLI change: the operator's login on this host."""
    import getpass
    import socket

    from app.domain.audit import Actor

    try:
        user = getpass.getuser()
    except (KeyError, OSError):  # no passwd entry (some containers)
        user = "unknown"
    return Actor(user, "cli", socket.gethostname())


def _table(rows: Sequence[dict[str, Any]], columns: Sequence[str]) -> str:
    if not rows:
        return "(none)"
    cells = [[("" if r.get(c) is None else str(r.get(c))) for c in columns] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(columns)]
    line = "  ".join(c.upper().ljust(w) for c, w in zip(columns, widths, strict=True))
    body = ["  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)) for row in cells]
    return "\n".join([line, *body])


def _print(obj: Any, as_json: bool, columns: Sequence[str] | None = None) -> None:
    if as_json or columns is None:
        print(json.dumps(obj, indent=2, default=str))
    else:
        rows = obj if isinstance(obj, list) else [obj]
        print(_table(rows, columns))


KEY_COLUMNS = ["id", "name", "prefix", "balance", "rpm", "max_concurrency", "models",
               "expires_at", "disabled"]  # fmt: skip


def _models(value: str | None) -> list[str] | None:
    if value is None or value in ("", "all", "*"):
        return None
    return [m.strip() for m in value.split(",") if m.strip()]


def cmd_keys(args: argparse.Namespace) -> int:
    from app.api.views import key_view, parse_time
    from app.domain.keys import parse_credits

    async def run(admin: Any) -> int:
        if args.keys_cmd == "create":
            new = await admin.create(
                by=_actor(),
                name=args.name,
                credits=parse_credits(args.credits),
                rpm=args.rpm,
                max_concurrency=args.max_concurrency,
                models=_models(args.models),
                expires_at=parse_time(args.expires_at, "expires_at"),
            )
            out = key_view(new.key) | {"key": new.secret, "webhook_secret": new.key.webhook_secret}
            if args.json:
                _print(out, True)
            else:
                print(_table([out], KEY_COLUMNS))
                print(
                    f"\nkey (shown once):  {new.secret}\nwebhook secret:    {out['webhook_secret']}"
                )
        elif args.keys_cmd == "list":
            _print([key_view(k) for k in await admin.list()], args.json, KEY_COLUMNS)
        elif args.keys_cmd == "show":
            _print(key_view(await admin.get(args.id)), True)
        elif args.keys_cmd == "update":
            changes: dict[str, Any] = {}
            for field in ("name", "rpm", "max_concurrency"):
                if getattr(args, field) is not None:
                    changes[field] = getattr(args, field)
            if args.models is not None:
                changes["models"] = _models(args.models)
            if args.expires_at is not None:
                changes["expires_at"] = parse_time(args.expires_at, "expires_at")
            if args.disable:
                changes["disabled"] = True
            if args.enable:
                changes["disabled"] = False
            _print(
                key_view(await admin.update(args.id, changes, by=_actor())), args.json, KEY_COLUMNS
            )
        elif args.keys_cmd == "revoke":
            await admin.revoke(args.id, by=_actor())
            print(f"revoked {args.id}")
        return 0

    return _run_admin(args, run)


def cmd_credits(args: argparse.Namespace) -> int:
    from app.core.money import credits_json
    from app.domain.keys import parse_credits

    async def run(admin: Any) -> int:
        amount = parse_credits(args.amount, "amount", allow_negative=True)
        balance = await admin.add_credits(args.id, amount, args.note, by=_actor())
        print(json.dumps({"id": args.id, "balance": credits_json(balance)}))
        return 0

    return _run_admin(args, run)


def cmd_usage(args: argparse.Namespace) -> int:
    import csv

    from app.api.views import RECORD_COLUMNS, group_view, parse_time, record_csv_row, record_view
    from app.store.base import UsageQuery

    async def run(admin: Any) -> int:
        query = UsageQuery(
            key_id=args.key_id,
            model=args.model,
            since=parse_time(args.since, "since"),
            until=parse_time(args.until, "until"),
            channel=args.channel,
            operation=args.operation,
            status=args.status,
        )
        if args.records or args.csv:
            records = await admin.store.usage_records(query, limit=args.limit, offset=0)
            if args.csv:
                writer = csv.DictWriter(sys.stdout, fieldnames=RECORD_COLUMNS)
                writer.writeheader()
                writer.writerows(record_csv_row(r) for r in records)
            else:
                cols = ["created_at", "key_id", "model", "channel", "operation", "images",
                        "credits", "cost_usd", "cost_estimated", "status", "error_code",
                        "latency_ms"]  # fmt: skip
                _print([record_view(r) for r in records], args.json, cols)
            return 0
        groups = [group_view(g) for g in await admin.store.usage_summary(query, args.group_by)]
        cols = ["group", "requests", "succeeded", "failed", "images", "credits", "cost_usd",
                "estimated"]  # fmt: skip
        _print(groups, args.json, cols)
        return 0

    return _run_admin(args, run)


def cmd_audit(args: argparse.Namespace) -> int:
    from app.api.views import audit_view, parse_time
    from app.store.base import AuditQuery

    async def run(admin: Any) -> int:
        query = AuditQuery(
            actor=args.actor,
            source=args.source,
            action=args.action,
            target=args.target,
            since=parse_time(args.since, "since"),
            until=parse_time(args.until, "until"),
        )
        entries = await admin.audit.entries(query, limit=args.limit, offset=args.offset)
        views = [audit_view(e) for e in entries]
        if not args.json:
            for v in views:
                v["details"] = json.dumps(v["details"], separators=(",", ":"))
        cols = ["at", "actor", "source", "action", "target", "client", "details"]
        _print(views, args.json, cols)
        return 0

    return _run_admin(args, run)


# --- channels (state lives in the running gateway, so these ask it over HTTP) ---------------
CHANNEL_COLUMNS = ["name", "kind", "state", "priority", "weight", "keys", "in_flight",
                   "attempts_5m", "failures_5m", "last_error", "cooldown_until"]  # fmt: skip


def _admin_key(settings: Settings) -> str | None:
    if settings.admin_key:
        return settings.admin_key
    path = Path(settings.data_dir) / "admin_key"
    return path.read_text().strip() if path.is_file() else None


def cmd_channels(args: argparse.Namespace) -> int:
    import httpx

    settings = _settings(args)
    key = args.admin_key or _admin_key(settings)
    if not key:
        print(
            "error: no admin key (IMAGEGATE_ADMIN_KEY, --admin-key, or data dir)", file=sys.stderr
        )
        return 2
    headers = {"authorization": f"Bearer {key}"}
    url = args.url.rstrip("/") + "/admin/channels"
    try:
        with httpx.Client(headers=headers, timeout=10) as client:
            cmd = args.channels_cmd
            if cmd == "disable" or cmd == "enable":
                r = client.patch(f"{url}/{args.name}", json={"disabled": cmd == "disable"})
            elif cmd == "enable-key":
                r = client.post(f"{url}/{args.name}/keys/{args.prefix}/enable")
            else:
                r = client.get(url)
    except httpx.HTTPError as exc:
        print(f"error: gateway at {args.url} not reachable: {exc}", file=sys.stderr)
        return 1
    if r.status_code >= 400:
        message = r.json().get("error", {}).get("message", r.text) if r.content else r.reason_phrase
        print(f"error: {message}", file=sys.stderr)
        return 2
    body = r.json()
    rows = body.get("data", [body])
    if not args.json:
        for row in rows:
            row["keys"] = " ".join(f"{k['prefix']}:{k['state']}" for k in row["keys"])
    _print(rows, args.json, CHANNEL_COLUMNS)
    return 0


# --- parser -------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="imagegate", description="OpenAI-compatible image-edit gateway"
    )
    sub = p.add_subparsers(dest="cmd", required=True)

    s = sub.add_parser("serve", help="run the gateway")
    s.add_argument("--host", default="127.0.0.1")
    s.add_argument("--port", type=int, default=8000)
    s.add_argument(
        "--config", help="YAML config (default: $IMAGEGATE_CONFIG or config/gateway.yaml)"
    )
    s.add_argument(
        "--workers", type=int, default=1, help="gateway processes sharing the port (one per core)"
    )
    s.set_defaults(fn=cmd_serve)

    s = sub.add_parser("worker", help="run async-task workers and callback deliveries only")
    s.add_argument("--config", help="YAML config")
    s.set_defaults(fn=cmd_worker)

    s = sub.add_parser("simulate", help="run the simulated OpenAI + Gemini upstream alone")
    s.add_argument("--host", default="127.0.0.1")
    s.add_argument("--port", type=int, default=9000)
    s.set_defaults(fn=cmd_simulate)

    k = sub.add_parser("keys", help="create, list, show, update and revoke API keys")
    k.add_argument("--config")
    ks = k.add_subparsers(dest="keys_cmd", required=True)
    c = ks.add_parser("create", help="create a key (its secret is printed once)")
    c.add_argument("--name", required=True)
    c.add_argument("--credits", default="0", help="initial balance, e.g. 10 or 2.5")
    c.add_argument("--rpm", type=int)
    c.add_argument("--max-concurrency", type=int)
    c.add_argument("--models", help="comma-separated allowed models (default: all)")
    c.add_argument("--expires-at", help="unix seconds or ISO 8601")
    c.add_argument("--json", action="store_true")
    c = ks.add_parser("list")
    c.add_argument("--json", action="store_true")
    c = ks.add_parser("show")
    c.add_argument("id")
    c = ks.add_parser("update")
    c.add_argument("id")
    c.add_argument("--name")
    c.add_argument("--rpm", type=int)
    c.add_argument("--max-concurrency", type=int)
    c.add_argument("--models", help="comma-separated, or 'all'")
    c.add_argument("--expires-at")
    on_off = c.add_mutually_exclusive_group()
    on_off.add_argument("--disable", action="store_true")
    on_off.add_argument("--enable", action="store_true")
    c.add_argument("--json", action="store_true")
    c = ks.add_parser("revoke")
    c.add_argument("id")
    k.set_defaults(fn=cmd_keys)

    cr = sub.add_parser("credits", help="top up or deduct credits")
    cr.add_argument("--config")
    crs = cr.add_subparsers(dest="credits_cmd", required=True)
    c = crs.add_parser("add", help="add AMOUNT (negative to deduct) to key ID")
    c.add_argument("id")
    c.add_argument("amount")
    c.add_argument("--note")
    cr.set_defaults(fn=cmd_credits)

    u = sub.add_parser("usage", help="usage aggregates or ledger records")
    u.add_argument("--config")
    u.add_argument("--key-id")
    u.add_argument("--model")
    u.add_argument("--since")
    u.add_argument("--until")
    u.add_argument("--channel")
    u.add_argument("--operation", choices=["edit", "generate"])
    u.add_argument("--status", choices=["succeeded", "failed", "expired"])
    u.add_argument(
        "--group-by", choices=["day", "model", "key", "channel", "operation"], default="day"
    )
    u.add_argument("--records", action="store_true", help="ledger rows instead of aggregates")
    u.add_argument("--csv", action="store_true", help="ledger rows as CSV")
    u.add_argument("--limit", type=int, default=100)
    u.add_argument("--json", action="store_true")
    u.set_defaults(fn=cmd_usage)

    a = sub.add_parser("audit", help="the audit log: admin actions from the API, CLI and console")
    a.add_argument("--config")
    a.add_argument("--actor")
    a.add_argument("--source", choices=["api", "cli", "console"])
    a.add_argument("--action", help="e.g. key.create, key.update, key.revoke, key.credits")
    a.add_argument("--target", help="a key id, task id, ...")
    a.add_argument("--since")
    a.add_argument("--until")
    a.add_argument("--limit", type=int, default=100)
    a.add_argument("--offset", type=int, default=0)
    a.add_argument("--json", action="store_true")
    a.set_defaults(fn=cmd_audit)

    ch = sub.add_parser("channels", help="upstream channels of a running gateway: state, drain")
    ch.add_argument("--url", default="http://127.0.0.1:8000", help="the gateway's base URL")
    ch.add_argument("--admin-key", help="default: IMAGEGATE_ADMIN_KEY or the data dir's key")
    ch.add_argument("--json", action="store_true")
    chs = ch.add_subparsers(dest="channels_cmd")
    c = chs.add_parser("disable", help="drain a channel")
    c.add_argument("name")
    c = chs.add_parser("enable", help="restore a drained channel (and close its circuit)")
    c.add_argument("name")
    c = chs.add_parser("enable-key", help="put a taken-out key back in use")
    c.add_argument("name")
    c.add_argument("prefix")
    ch.set_defaults(fn=cmd_channels)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.fn(args))
    except BrokenPipeError:  # `imagegate usage --records | head`
        sys.stderr.close()
        return 0


if __name__ == "__main__":
    sys.exit(main())
