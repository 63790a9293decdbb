"""What an `IMAGEGATE_REDIS_URL` means, and the clients built from it.

    redis://[user:pass@]host:port/db         one server (or a proxy in front of several)
    rediss://...                             the same over TLS
    redis+cluster://[user:pass@]h1:p1,h2:p2  a Redis Cluster, given by some of its nodes
    rediss+cluster://...                     the same over TLS

TLS takes redis-py's query options `ssl_ca_certs=<file>` and `ssl_cert_reqs=none|optional|
required` (default required, with hostname check). A cluster has no databases: a path other
than `/` or `/0` is refused. Every part of imagegate that talks to Redis builds its client here,
so a URL means the same thing to the store, the task queue and the lean hot-path client.
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

SCHEMES = ("redis", "rediss", "redis+cluster", "rediss+cluster")


@dataclass(frozen=True)
class RedisTarget:
    cluster: bool
    tls: bool
    nodes: list[tuple[str, int]]
    db: int = 0
    username: str | None = None
    password: str | None = None
    ssl_ca_certs: str | None = None
    ssl_cert_reqs: str = "required"
    url: str = field(default="", repr=False)

    def ssl_context(self) -> ssl.SSLContext | None:
        if not self.tls:
            return None
        ctx = ssl.create_default_context(cafile=self.ssl_ca_certs)
        if self.ssl_cert_reqs == "none":
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
        elif self.ssl_cert_reqs == "optional":
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_OPTIONAL
        return ctx


def parse_redis_url(url: str) -> RedisTarget:
    """Raises ValueError naming what is wrong (the message reaches the operator at start-up)."""
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme not in SCHEMES:
        raise ValueError(f"redis URL scheme must be one of {', '.join(SCHEMES)}: {url!r}")
    cluster = scheme.endswith("+cluster")
    tls = scheme.startswith("rediss")
    userinfo, _, hosts = parts.netloc.rpartition("@")
    username = password = None
    if userinfo:
        user, sep, pw = userinfo.partition(":")
        username = unquote(user) or None
        password = unquote(pw) if sep else None
        if password is None:  # redis://secret@host: a password without a user
            username, password = None, unquote(user)
    nodes: list[tuple[str, int]] = []
    for hostport in (h for h in hosts.split(",") if h):
        host, port = _host_port(hostport)
        nodes.append((host, port))
    if not nodes:
        nodes = [("127.0.0.1", 6379)]
    if len(nodes) > 1 and not cluster:
        raise ValueError("several hosts need redis+cluster:// (redis:// means one server)")
    path = parts.path.strip("/") or "0"
    try:
        db = int(path)
    except ValueError:
        raise ValueError(f"redis URL database must be a number, got {path!r}") from None
    if cluster and db != 0:
        raise ValueError("a Redis Cluster has only database 0")
    query = parse_qs(parts.query)
    reqs = (query.get("ssl_cert_reqs") or ["required"])[0].lower()
    if reqs not in ("none", "optional", "required"):
        raise ValueError(f"ssl_cert_reqs must be none, optional or required, got {reqs!r}")
    return RedisTarget(
        cluster=cluster,
        tls=tls,
        nodes=nodes,
        db=db,
        username=username,
        password=password,
        ssl_ca_certs=next(iter(query.get("ssl_ca_certs", [])), None),
        ssl_cert_reqs=reqs,
        url=url,
    )


def _host_port(hostport: str) -> tuple[str, int]:
    if hostport.startswith("["):  # [ipv6]:port
        host, _, rest = hostport[1:].partition("]")
        port = rest.lstrip(":")
    else:
        host, _, port = hostport.rpartition(":") if ":" in hostport else (hostport, "", "")
    try:
        return host or "127.0.0.1", int(port) if port else 6379
    except ValueError:
        raise ValueError(f"bad redis host:port {hostport!r}") from None


def redis_client(target: RedisTarget, **options: Any) -> Any:
    """A redis-py asyncio client for `target`: `RedisCluster` for a cluster, else `Redis`.

    `options` are redis-py connection options common to both (timeouts, decode_responses,
    health_check_interval, retry); `max_connections` is per node on a cluster."""
    tls: dict[str, Any] = {}
    if target.tls:
        tls = {"ssl": True, "ssl_cert_reqs": target.ssl_cert_reqs}
        if target.ssl_ca_certs:
            tls["ssl_ca_certs"] = target.ssl_ca_certs
        if target.ssl_cert_reqs != "required":
            tls["ssl_check_hostname"] = False
    auth: dict[str, Any] = {"username": target.username, "password": target.password}
    if target.cluster:
        from redis.asyncio.cluster import ClusterNode, RedisCluster

        options.pop("connection_pool", None)
        return RedisCluster(
            startup_nodes=[ClusterNode(h, p) for h, p in target.nodes],
            require_full_coverage=False,
            **auth,
            **tls,
            **options,
        )
    import redis.asyncio as aioredis

    # One server: redis-py reads the URL itself (auth, db, TLS query options).
    pool_cls = options.pop("pool_class", aioredis.ConnectionPool)
    return aioredis.Redis(connection_pool=pool_cls.from_url(target.url, **options))
