"""Broker users per worker role: Redis ACL rules for job workers, their install and removal, their URLs."""

from __future__ import annotations

import hashlib
import re
import secrets
from collections.abc import Iterable, Sequence
from urllib.parse import quote, urlsplit, urlunsplit

import redis
from kombu.transport.redis import PRIORITY_STEPS, Channel
from redis.connection import parse_url
from redis.lock import Lock

from workers.app import (
    RESULTS_QUEUE,
    broker_redis,
    broker_socket_kwargs,
    delivery_key_prefix,
    is_job_role,
    role_queues,
    unacked_keys,
)
from workers.errors import ConfigError

# Celery's control_exchange: the pidbox exchanges, queues and channel are named after it.
MAILBOX = "celery"
_INSTANCE = re.compile(r"[a-z0-9][a-z0-9_-]*")
_HEX = "[0-9a-f]"
# A remote-control reply queue is `<oid>.reply.celery.pidbox`, the oid a uuid3 string (kombu.common.oid_from).
_OID = "-".join(_HEX * n for n in (8, 4, 4, 4, 12))


def _literal(name: str) -> str:
    """A Redis glob that matches exactly `name`."""
    return re.sub(r"([*?\[\]\\])", r"\\\1", name)


def _queue_keys(queue: str) -> list[str]:
    """Globs for the Redis lists kombu keeps a queue in: the name, and `name\\x06\\x16<n>` per priority step."""
    return [_literal(queue)] + [_literal(f"{queue}{Channel.sep}{step}") for step in PRIORITY_STEPS if step]


def _selector(commands: Sequence[str], keys: Sequence[str], mode: str = "~") -> str:
    # A selector grants its commands on its keys only, so `results` gets LPUSH and nothing else.
    return "(" + " ".join([f"+{command}" for command in commands] + [f"{mode}{key}" for key in keys]) + ")"


def role_acl_rules(role: str, queues: Sequence[str], results_queue: str = RESULTS_QUEUE, *, db: int = 0,
                   mailbox: str = MAILBOX) -> list[str]:  # fmt: skip
    """The ACL SETUSER rules (after `reset on <password>`) for a job worker role: consume its own
    queues, keep its own unacked keys and delivery counters, push to the results queue, listen
    to the pidbox broadcast and answer it. `db` is the broker's database (it names the channel)."""
    if not is_job_role(role):
        raise ValueError(f"{role!r} is not a job worker role (checkout, build, lab.<device class>)")
    unacked = unacked_keys(role)
    pidbox = f"{mailbox}.pidbox"
    rules = [
        # Commands that name no key (HELLO and AUTH need no grant): kombu's PING, the MULTI around
        # acks and restores (DISCARD, UNWATCH when redis-py abandons one), and listening to the
        # broadcast. Never PUBLISH: with it anyone sends `shutdown` to every worker.
        "+ping", "+multi", "+exec", "+discard", "+unwatch", "+psubscribe", "+punsubscribe",
        # kombu PSUBSCRIBEs to the literal channel; Redis matches a PSUBSCRIBE pattern literally.
        f"&{_literal(f'/{db}.{pidbox}')}",
    ]  # fmt: skip
    if db:
        # ACL key patterns hold in every database; SELECT only where redis-py must send it (db != 0).
        rules.append("+select")
    own_queues = [key for queue in queues for key in _queue_keys(queue)]
    rules += [
        # BRPOP consumes (RPOP when kombu polls without its event loop); RPUSH/LPUSH put a rejected,
        # retried or timed-out message back.
        _selector(["brpop", "rpop", "lpush", "rpush"], own_queues),
        # The role's in-flight messages: ack (ZREM/HDEL), restore (WATCH, HGET, ZRANGE BYSCORE).
        _selector(["zadd", "zrem", "zrange", "hset", "hget", "hdel", "watch"],
                  [_literal(unacked["unacked_key"]), _literal(unacked["unacked_index_key"])]),  # fmt: skip
        # kombu's restore mutex is a redis-py Lock: SET NX PX, released by EVALSHA of a script the
        # admin preloads (SCRIPT LOAD, which would run any Lua, is not granted). Commands inside a
        # script are checked against these same rules.
        _selector(["set", "get", "del", "evalsha"], [_literal(unacked["unacked_mutex_key"])]),
        # delivery_key(role, <job id>) for any job id.
        _selector(["incrby", "expire"], [_literal(delivery_key_prefix(role)) + "*"]),
        # Write, never read: a job worker must not see other jobs' results.
        _selector(["lpush"], _queue_keys(results_queue), "%W~"),
        # Replies are routed through this direct exchange's binding table, written by the asker.
        _selector(["smembers"], [_literal(f"_kombu.binding.reply.{pidbox}")], "%R~"),
        # The worker's own pidbox node queue binding (Redis never reads it: broadcasts are PUBLISHed).
        _selector(["sadd", "srem"], [_literal(f"_kombu.binding.{pidbox}"),
                                     _literal(f"_kombu.binding_permanent.{pidbox}")], "%W~"),  # fmt: skip
        # The node queue `<name>@<host>.celery.pidbox` (its length at declare, DEL at shutdown); it
        # stays empty. Node names hold '@', reply queues (below) do not: those stay out of reach.
        _selector(["llen", "del"], ["*@*." + key for key in _queue_keys(pidbox)]),
        # Answers to remote control (`inspect`) go to the asker's reply queue: push only.
        _selector(["lpush"], [f"{_OID}.reply.{_literal(pidbox)}"], "%W~"),
    ]  # fmt: skip
    return rules


def role_user(instance: str, role: str) -> str:
    """The broker user of a role, prefixed so two labgate instances on one Redis do not collide."""
    if not _INSTANCE.fullmatch(instance):
        raise ConfigError(f"broker instance name {instance!r} must match {_INSTANCE.pattern}")
    return f"{instance}-{role}"


def broker_db(url: str) -> int:
    """The database number a broker URL selects, as kombu reads it."""
    socket_kwargs = broker_socket_kwargs(url)
    if socket_kwargs is not None:
        return int(socket_kwargs["db"])
    return int(parse_url(url).get("db") or 0)


def role_broker_url(admin_url: str, user: str, password: str) -> str:
    """The admin's broker URL with another user's credentials: redis://, rediss://, redis+socket://."""
    userinfo = f"{quote(user, safe='')}:{quote(password, safe='')}@"
    if admin_url.startswith("redis+socket://"):
        # kombu reads `redis+socket://user:password@/path/redis.sock`: credentials before an empty host.
        _, _, path = admin_url.removeprefix("redis+socket://").partition("/")
        return f"redis+socket://{userinfo}/{path}"
    parts = urlsplit(admin_url)
    if parts.scheme not in ("redis", "rediss"):
        raise ConfigError(f"broker users need a redis://, rediss:// or redis+socket:// broker, not {parts.scheme}://")
    host = parts.netloc.rpartition("@")[2]
    return urlunsplit((parts.scheme, userinfo + host, parts.path, parts.query, parts.fragment))


def _require_selectors(admin: redis.Redis) -> None:
    version = str(admin.info("server")["redis_version"])
    if int(version.split(".")[0]) < 7:
        raise ConfigError(f"broker users need Redis 7 (ACL selectors, %R~/%W~); the broker runs {version}")


def install_role_users(admin_url: str, roles: Iterable[str], *, instance: str,
                       results_queue: str = RESULTS_QUEUE) -> dict[str, str]:  # fmt: skip
    """Create (or reset, with a new password) each job role's broker user; each role's broker URL.
    A role consumes the queues of its name (role_queues). Run again after the broker restarts: users and the
    preloaded script live in its memory."""
    admin = broker_redis(admin_url)
    try:
        _require_selectors(admin)
        # Role users may EVALSHA but not SCRIPT LOAD: load the lock-release script kombu's mutex uses.
        admin.script_load(Lock.LUA_RELEASE_SCRIPT)
        db = broker_db(admin_url)
        urls = {}
        for role in roles:
            user = role_user(instance, role)
            password = secrets.token_hex(32)
            # The password's SHA-256, so the password itself is never on the wire or in MONITOR.
            digest = hashlib.sha256(password.encode()).hexdigest()
            rules = role_acl_rules(role, role_queues(role), results_queue, db=db)
            admin.execute_command("ACL", "SETUSER", user, "reset", "on", f"#{digest}", *rules)
            urls[role] = role_broker_url(admin_url, user, password)
        return urls
    finally:
        admin.close()


def remove_role_users(admin_url: str, roles: Iterable[str], *, instance: str) -> None:
    """Delete the roles' broker users; Redis disconnects their clients."""
    users = [role_user(instance, role) for role in roles]
    if not users:
        return
    admin = broker_redis(admin_url)
    try:
        admin.execute_command("ACL", "DELUSER", *users)
    finally:
        admin.close()
