"""The broker: the configured Redis, or a private redis-server on a unix socket in the data dir."""

from __future__ import annotations

import hashlib
import os
import secrets
import shutil
import subprocess
import time
from pathlib import Path
from urllib.parse import quote

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from bot.host.supervise import die_with_parent
from workers.errors import ConfigError, InfraError

# The private server's only full-power user; its password goes to the control side alone.
ADMIN_USER = "labgate-admin"
ADMIN_SECRET = "redis-admin.secret"


def socket_url(sock: Path, user: str | None = None, password: str | None = None) -> str:
    """A kombu broker URL for a unix socket, with credentials when given."""
    if user is None or password is None:
        return f"redis+socket://{sock}"
    # kombu takes the credentials before an empty host: redis+socket://user:password@/path.
    return f"redis+socket://{quote(user, safe='')}:{quote(password, safe='')}@{quote(str(sock))}"


def is_answering(url: str) -> bool:
    from workers.app import broker_redis

    try:
        return bool(broker_redis(url).ping())
    except (redis.RedisError, OSError):
        return False


def _is_serving(sock: Path) -> bool:
    """Whether any redis-server listens on the socket, whoever it lets in."""
    try:
        # No retries: redis-py retries a refused AUTH for seconds.
        redis.Redis(unix_socket_path=str(sock), socket_timeout=2, retry=Retry(NoBackoff(), 0)).ping()
    except redis.AuthenticationError:
        return True  # NOAUTH: a protected server, whose password we may not hold
    except redis.ResponseError:
        return True
    except (redis.RedisError, OSError):
        return False
    return True


def _read_secret(path: Path) -> str | None:
    try:
        return path.read_text().strip() or None
    except FileNotFoundError:
        return None


def _write_secret(path: Path, secret: str) -> None:
    # Owner-only from its first byte; O_EXCL|O_NOFOLLOW so a planted file or symlink is not reused.
    path.unlink(missing_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "w") as file:
        file.write(secret + "\n")


def start_private_redis(data_dir: Path) -> tuple[str, subprocess.Popen[bytes] | None]:
    """The private broker's admin URL, starting redis-server unless one already serves the data dir.
    Returns the process when this call started it (the caller supervises and stops it).

    The server's `default` user is off: a job worker that can open the socket (root, or the same
    uid) gets nothing without a password. The admin URL carries the password of its one
    full-power user, kept in the data dir's redis-admin.secret (mode 0600) so a second labgate
    process on the same data dir can reuse the server: give it to the control side only, and
    job workers users of their own (bot/host/broker_acl.py)."""
    sock = data_dir / "redis.sock"
    secret_path = data_dir / ADMIN_SECRET
    if sock.exists():
        password = _read_secret(secret_path)
        if password is not None and is_answering(url := socket_url(sock, ADMIN_USER, password)):
            return url, None
        if _is_serving(sock):
            raise InfraError(f"a redis-server labgate holds no admin password for serves {sock}; "
                             "stop it (an older labgate's broker leaves its default user open)")  # fmt: skip
    server = shutil.which("redis-server")
    if server is None:
        raise ConfigError("no broker_url is configured and redis-server is not installed "
                          "(apt-get install redis-server, or set broker_url)")  # fmt: skip
    sock.unlink(missing_ok=True)
    password = secrets.token_hex(32)
    _write_secret(secret_path, password)
    url = socket_url(sock, ADMIN_USER, password)
    # On the command line only the password's SHA-256 (argv is world-readable in /proc).
    digest = hashlib.sha256(password.encode()).hexdigest()
    log = (data_dir / "redis.log").open("ab")
    process = subprocess.Popen(
        [server, "--port", "0", "--unixsocket", str(sock), "--unixsocketperm", "700",
         "--save", "", "--appendonly", "no", "--dir", str(data_dir),
         "--user", "default", "reset",
         "--user", ADMIN_USER, "reset", "on", f"#{digest}", "~*", "&*", "+@all"],
        stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True,
        preexec_fn=die_with_parent,
    )  # fmt: skip
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if sock.exists() and is_answering(url):
            return url, process
        if process.poll() is not None:
            break
        time.sleep(0.05)
    process.kill()
    raise InfraError(f"private redis-server did not start; see {data_dir / 'redis.log'}")
