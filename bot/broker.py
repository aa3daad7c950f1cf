"""The broker: the configured Redis, or a private redis-server on a unix socket in the data dir."""

from __future__ import annotations

import shutil
import subprocess
import time
from pathlib import Path

import redis

from bot.supervise import die_with_parent
from workers.errors import ConfigError, InfraError


def socket_url(sock: Path) -> str:
    return f"redis+socket://{sock}"


def is_answering(url: str) -> bool:
    from workers.app import broker_redis

    try:
        return bool(broker_redis(url).ping())
    except (redis.RedisError, OSError):
        return False


def start_private_redis(data_dir: Path) -> tuple[str, subprocess.Popen[bytes] | None]:
    """The private broker's URL, starting redis-server unless one already serves the data dir.
    Returns the process when this call started it (the caller supervises and stops it)."""
    sock = data_dir / "redis.sock"
    url = socket_url(sock)
    if sock.exists() and is_answering(url):
        return url, None
    server = shutil.which("redis-server")
    if server is None:
        raise ConfigError("no broker_url is configured and redis-server is not installed "
                          "(apt-get install redis-server, or set broker_url)")  # fmt: skip
    sock.unlink(missing_ok=True)
    log = (data_dir / "redis.log").open("ab")
    process = subprocess.Popen(
        [server, "--port", "0", "--unixsocket", str(sock), "--unixsocketperm", "700",
         "--save", "", "--appendonly", "no", "--dir", str(data_dir)],
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
