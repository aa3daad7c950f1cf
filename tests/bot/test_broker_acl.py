"""Broker users per role: the ACL rules as data, and what a job worker's user can and cannot do on a
real Redis, with a real Celery worker consuming, answering, and having its message redelivered."""

from __future__ import annotations

import base64
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import redis
from celery import Celery
from kombu import Connection
from kombu.exceptions import OperationalError
from redis.backoff import NoBackoff
from redis.connection import parse_url
from redis.exceptions import NoPermissionError
from redis.lock import Lock
from redis.retry import Retry

from bot.host.broker_acl import (
    broker_db,
    install_role_users,
    remove_role_users,
    role_acl_rules,
    role_broker_url,
    role_user,
)
from bot.host.private_broker import ADMIN_SECRET, ADMIN_USER, socket_url, start_private_redis
from tests.conftest import REPO_ROOT
from tests.processes import children_of
from workers.app import RESULTS_QUEUE, broker_redis, broker_socket_kwargs, delivery_key
from workers.errors import ConfigError

LAB = "lab.qemu-x86_64"
REPLY_QUEUE = "0b8c6a61-9c3b-3f0e-8e3c-2a1e5d9f7c41.reply.celery.pidbox"  # an inspect() asker's queue
PROBE_TASK = "labgate.test.acl_probe"
# A job worker exactly as `labgate worker` runs it (bot.cli.main.run_worker), plus one task that does what
# workers.tasks.run_job does with the broker: count the delivery, answer on `results`. It holds its
# first delivery for `hold_s`, so a test can kill the worker while the message is unacknowledged.
PROBE_WORKER = f"""
import json, sys, time
from workers.app import RESULTS_QUEUE, app

@app.task(name={PROBE_TASK!r}, bind=True)
def acl_probe(self, job_id, token, hold_s):
    from workers.tasks import count_delivery
    delivery = count_delivery(job_id)
    if delivery == 1:
        time.sleep(hold_s)
    answer = {{"job_id": job_id, "token": token, "delivery": delivery,
              "redelivered": bool(self.request.delivery_info.get("redelivered"))}}
    app.send_task("bot.record_result", args=[json.dumps(answer)], queue=RESULTS_QUEUE)

from bot.cli.main import run_worker
sys.exit(run_worker(sys.argv[1].split(","), 1, None))
"""


@dataclass
class Broker:
    admin_url: str
    data_dir: Path
    process: subprocess.Popen[bytes]

    def admin(self) -> redis.Redis:
        return broker_redis(self.admin_url)


@pytest.fixture(scope="module")
def private_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Broker]:
    # A module-scoped dir keeps the socket path short (unix sockets: 108 bytes).
    data_dir = tmp_path_factory.mktemp("acl")
    url, process = start_private_redis(data_dir)
    assert process is not None
    yield Broker(url, data_dir, process)
    process.terminate()
    process.wait(10)


@pytest.fixture
def broker(private_broker: Broker) -> Iterator[Broker]:
    """The private broker, empty, with no role users left by another test."""
    admin = private_broker.admin()
    admin.flushall()
    admin.acl_log_reset()
    yield private_broker
    for user in admin.acl_users():
        if user not in ("default", ADMIN_USER):
            admin.acl_deluser(user)
    admin.close()


def refused_login(url: str) -> bool:
    """Whether the broker refuses the URL's credentials (asked once: redis-py retries for seconds)."""
    socket_kwargs = broker_socket_kwargs(url)
    options = socket_kwargs or parse_url(url)
    try:
        redis.Redis(**options, retry=Retry(NoBackoff(), 0)).ping()
    except redis.AuthenticationError:
        return True
    return False


def denied(client: redis.Redis, *command: Any) -> bool:
    try:
        client.execute_command(*command)
    except NoPermissionError:
        return True
    return False


# -- the rules as data ---------------------------------------------------------------------------


def test_rules_grant_a_build_worker_its_own_keys_and_nothing_else() -> None:
    rules = role_acl_rules("build", ["build"], "results")
    root = [rule for rule in rules if not rule.startswith("(")]
    selectors = {rule for rule in rules if rule.startswith("(")}

    # Keyless commands only at the root; the one channel is the pidbox broadcast, to listen to.
    assert sorted(root) == sorted(["+ping", "+multi", "+exec", "+discard", "+unwatch", "+psubscribe",
                                   "+punsubscribe", "&/0.celery.pidbox"])  # fmt: skip
    assert selectors == {
        "(+brpop +rpop +lpush +rpush ~build ~build\x06\x163 ~build\x06\x166 ~build\x06\x169)",
        "(+zadd +zrem +zrange +hset +hget +hdel +watch ~unacked:build ~unacked_index:build)",
        "(+set +get +del +evalsha ~unacked_mutex:build)",
        "(+incrby +expire ~labgate:deliveries:build:*)",
        "(+lpush %W~results %W~results\x06\x163 %W~results\x06\x166 %W~results\x06\x169)",
        "(+smembers %R~_kombu.binding.reply.celery.pidbox)",
        "(+sadd +srem %W~_kombu.binding.celery.pidbox %W~_kombu.binding_permanent.celery.pidbox)",
        "(+llen +del ~*@*.celery.pidbox ~*@*.celery.pidbox\x06\x163 ~*@*.celery.pidbox\x06\x166"
        " ~*@*.celery.pidbox\x06\x169)",
        "(+lpush %W~" + "-".join("[0-9a-f]" * n for n in (8, 4, 4, 4, 12)) + ".reply.celery.pidbox)",
    }
    words = " ".join(rules).replace("(", " ").replace(")", " ").split()
    for forbidden in ("+@all", "~*", "&*", "allkeys", "allchannels", "+publish", "+eval", "+script", "+keys",
                      "+scan", "+flushall", "+flushdb", "+config", "+acl", "+debug", "+monitor", "+client",
                      "+select", "+subscribe"):  # fmt: skip
        assert forbidden not in words, forbidden


def test_rules_follow_the_database_and_escape_globs() -> None:
    rules = role_acl_rules(LAB, [LAB, "odd*[q]"], "results", db=15)
    assert "&/15.celery.pidbox" in rules
    assert "+select" in rules  # redis-py must SELECT 15 on connect
    assert any(f"~{LAB}\x06\x169" in rule and "~odd\\*\\[q\\]" in rule and "+brpop" in rule for rule in rules)
    assert any("~unacked:lab.qemu-x86_64 " in rule for rule in rules)
    assert any("~labgate:deliveries:lab.qemu-x86_64:*" in rule for rule in rules)


@pytest.mark.parametrize("role", ["control", "results", "lab.", "lab.x:y", "lab.X", "lab.*", "builder"])
def test_rules_refuse_what_is_not_a_job_worker_role(role: str) -> None:
    with pytest.raises(ValueError):
        role_acl_rules(role, [role], "results")


def test_role_urls_carry_the_role_credentials() -> None:
    assert (
        role_broker_url("redis://adm:x@10.0.0.1:6380/3", "lg-build", "p/w") == "redis://lg-build:p%2Fw@10.0.0.1:6380/3"
    )
    assert role_broker_url("rediss://h:6379/0?ssl_cert_reqs=required", "u", "p") == (
        "rediss://u:p@h:6379/0?ssl_cert_reqs=required")  # fmt: skip
    assert (
        role_broker_url("redis+socket://adm:x@/run/lg/redis.sock", "u", "p") == "redis+socket://u:p@/run/lg/redis.sock"
    )
    assert role_broker_url("redis+socket:///run/lg/redis.sock?virtual_host=2", "u", "p") == (
        "redis+socket://u:p@/run/lg/redis.sock?virtual_host=2")  # fmt: skip
    with pytest.raises(ConfigError):
        role_broker_url("sentinel://h:26379", "u", "p")
    assert broker_socket_kwargs("redis+socket://u:p%40@/run/lg/redis.sock?virtual_host=2") == {
        "unix_socket_path": "/run/lg/redis.sock", "username": "u", "password": "p@", "db": 2}  # fmt: skip
    assert broker_socket_kwargs("redis+socket:///run/lg/redis.sock") == {
        "unix_socket_path": "/run/lg/redis.sock", "username": None, "password": None, "db": 0}  # fmt: skip
    assert broker_socket_kwargs("redis://h/1") is None
    assert [broker_db(u) for u in ("redis://h:1/7", "redis://h", "redis+socket:///s?virtual_host=4")] == [7, 0, 4]
    assert role_user("lg-ci", LAB) == "lg-ci-lab.qemu-x86_64"
    with pytest.raises(ConfigError):
        role_user("Two words", "build")


def test_configure_gives_a_job_role_its_keys_and_no_declares() -> None:
    script = """
import json
from workers.app import app, configure
from workers.errors import ConfigError
out = {}
for role in ("build", "control"):
    configure("redis://127.0.0.1:1/15", longest_job_s=60, role=role)
    queues = app.conf.task_queues or []
    out[role] = [app.conf.broker_transport_options, sorted(q.name for q in queues if q.no_declare),
                 app.conf.control_queue_expires]
try:
    configure("redis://127.0.0.1:1/15", longest_job_s=60, role="lab.x:y")
except ConfigError:
    out["refused"] = True
print(json.dumps(out))
"""
    done = subprocess.run([sys.executable, "-c", script], cwd=REPO_ROOT, capture_output=True, text=True, check=True,
                          env={**os.environ, "LABGATE_BROKER_URL": ""})  # fmt: skip
    out = json.loads(done.stdout.splitlines()[-1])
    assert out["build"] == [{"visibility_timeout": 660, "unacked_key": "unacked:build",
                             "unacked_index_key": "unacked_index:build", "unacked_mutex_key": "unacked_mutex:build"},
                            ["build", "results"], None]  # fmt: skip
    assert out["control"] == [{"visibility_timeout": 660}, [], 10.0]
    assert out["refused"]


# -- the private broker --------------------------------------------------------------------------


def test_private_broker_lets_in_its_admin_only(broker: Broker) -> None:
    sock = broker.data_dir / "redis.sock"
    assert refused_login(socket_url(sock))  # no credentials at all
    for password in ("", "nopass", "x"):
        assert refused_login(socket_url(sock, "default", password))
    assert refused_login(socket_url(sock, ADMIN_USER, "guess"))
    assert not refused_login(broker.admin_url)
    assert broker.admin().acl_whoami() == ADMIN_USER
    with pytest.raises(redis.AuthenticationError):  # kombu, the way a worker would try
        Connection(socket_url(broker.data_dir / "redis.sock")).channel()
    channel = Connection(broker.admin_url).channel()
    assert channel.client.acl_whoami() == ADMIN_USER
    channel.connection.client.release()
    secret = broker.data_dir / ADMIN_SECRET
    assert secret.stat().st_mode & 0o777 == 0o600
    # A second labgate process on the same data dir reuses the running server.
    assert start_private_redis(broker.data_dir) == (broker.admin_url, None)


# -- what a build worker's user may do -----------------------------------------------------------


def test_build_user_pushes_results_but_reads_nothing_of_others(broker: Broker) -> None:
    urls = install_role_users(broker.admin_url, ["build", LAB], instance="lgtest")
    build, admin = broker_redis(urls["build"]), broker.admin()
    admin.lpush("control", "task for the control worker")
    admin.lpush(LAB, "a lab job with its secret")
    admin.hset(f"unacked:{LAB}", "tag", "a lab job in flight")
    admin.hset("unacked", "tag", "a control message in flight")
    admin.lpush(REPLY_QUEUE, "another worker's reply")

    assert build.lpush(RESULTS_QUEUE, "a result") == 1
    for command in (("LRANGE", RESULTS_QUEUE, 0, -1), ("LPOP", RESULTS_QUEUE), ("RPOP", RESULTS_QUEUE),
                    ("BRPOP", RESULTS_QUEUE, 1), ("LLEN", RESULTS_QUEUE), ("DEL", RESULTS_QUEUE),
                    ("LTRIM", RESULTS_QUEUE, 1, 0),
                    ("LRANGE", "control", 0, -1), ("BRPOP", "control", 1), ("LPUSH", "control", "forged"),
                    ("LRANGE", LAB, 0, -1), ("BRPOP", LAB, 1), ("RPOP", LAB),
                    ("HGETALL", f"unacked:{LAB}"), ("HGET", f"unacked:{LAB}", "tag"), ("HKEYS", "unacked"),
                    ("HGETALL", "unacked"), ("ZRANGE", f"unacked_index:{LAB}", 0, -1),
                    ("INCR", f"labgate:deliveries:{LAB}:5"), ("GET", "labgate:deliveries:build:5"),
                    ("LRANGE", REPLY_QUEUE, 0, -1), ("DEL", REPLY_QUEUE),
                    ("SADD", "_kombu.binding.results", "x"), ("SADD", "_kombu.binding.build", "x"),
                    ("SMEMBERS", "_kombu.binding.celery.pidbox")):  # fmt: skip
        assert denied(build, *command), command
        admin.execute_command(*command)  # the same command is fine with the admin's user
    assert build.execute_command("BRPOP", "build", 1) is None  # its own queue
    assert build.hset("unacked:build", "t", "v") == 1
    assert build.incr("labgate:deliveries:build:5") == 1
    assert build.lpush(REPLY_QUEUE, "its own answer to inspect()") >= 1


def test_build_user_cannot_broadcast_or_administer(broker: Broker) -> None:
    urls = install_role_users(broker.admin_url, ["build"], instance="lgtest")
    build, admin = broker_redis(urls["build"]), broker.admin()
    # PUBLISH on the pidbox channel would send `shutdown` to every worker.
    broadcast = ("PUBLISH", "/0.celery.pidbox", "{}")
    assert denied(build, *broadcast)
    admin.execute_command(*broadcast)
    listener = build.pubsub()
    listener.psubscribe("/0.celery.pidbox")  # listening is what a worker needs
    assert listener.get_message(timeout=2)["type"] == "psubscribe"
    everything = build.pubsub()
    everything.psubscribe("*")  # but not to everything: the refusal comes back as the reply
    with pytest.raises(NoPermissionError):
        everything.get_message(timeout=2)
    everything.close()
    listener.close()
    lock_release = admin.script_load(Lock.LUA_RELEASE_SCRIPT)
    for command, admin_too in ((("KEYS", "*"), True), (("SCAN", 0), True), (("CONFIG", "GET", "dir"), True),
                               (("ACL", "LIST"), True), (("ACL", "WHOAMI"), True), (("CLIENT", "LIST"), True),
                               (("CLIENT", "KILL", "USER", ADMIN_USER), False), (("SELECT", 1), True),
                               (("SCRIPT", "LOAD", "return 1"), True), (("EVAL", "return 1", 0), True),
                               (("SCRIPT", "FLUSH"), False), (("FUNCTION", "LIST"), True),
                               (("MONITOR",), False), (("FLUSHDB",), False), (("FLUSHALL",), False),
                               (("SHUTDOWN",), False), (("SUBSCRIBE", "/0.celery.pidbox"), False),
                               (("EVALSHA", lock_release, 1, "unacked_mutex:lab.x", "t"), True)):  # fmt: skip
        assert denied(build, *command), command
        if admin_too:
            broker.admin().execute_command(*command)  # a client of its own: SELECT sticks to a connection
    # Redis refuses DEBUG to everyone before it looks at the ACL: ask the ACL itself.
    assert "no permissions" in admin.execute_command("ACL", "DRYRUN", "lgtest-build", "DEBUG", "SLEEP", "0").decode()
    assert admin.execute_command("ACL", "DRYRUN", "lgtest-build", "LPUSH", RESULTS_QUEUE, "x") == b"OK"
    # The restore mutex works the way kombu takes and releases it.
    assert build.set("unacked_mutex:build", "t", nx=True, px=1000)
    assert build.evalsha(lock_release, 1, "unacked_mutex:build", "t") == 1


def test_role_users_are_per_instance_and_removed(broker: Broker) -> None:
    first = install_role_users(broker.admin_url, ["build"], instance="lg-a")
    second = install_role_users(broker.admin_url, ["build"], instance="lg-b")
    assert {"lg-a-build", "lg-b-build"} <= set(broker.admin().acl_users())
    connected = redis.Redis(**(broker_socket_kwargs(first["build"]) or {}), retry=Retry(NoBackoff(), 0))
    assert connected.ping()
    remove_role_users(broker.admin_url, ["build"], instance="lg-a")
    with pytest.raises(redis.ConnectionError):  # its open connection is closed, and it cannot log in again
        connected.ping()
    assert refused_login(first["build"])
    assert not refused_login(second["build"])
    # Installing again gives a new password: the old URL stops working.
    again = install_role_users(broker.admin_url, ["build"], instance="lg-b")
    assert again["build"] != second["build"]
    assert refused_login(second["build"])


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_tcp_broker_with_credentials_and_a_database(tmp_path: Path) -> None:
    port = _free_port()
    server = subprocess.Popen(["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                               "--appendonly", "no", "--dir", str(tmp_path), "--user", "default", "reset",
                               "--user", "adm", "reset", "on", ">adm-pw", "~*", "&*", "+@all"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    try:
        admin_url = f"redis://adm:adm-pw@127.0.0.1:{port}/3"
        deadline = time.monotonic() + 10
        while True:
            try:
                broker_redis(admin_url).ping()
                break
            except redis.ConnectionError:
                assert time.monotonic() < deadline
                time.sleep(0.05)
        url = install_role_users(admin_url, ["build"], instance="lgtest")["build"]
        assert url.startswith("redis://lgtest-build:") and url.endswith(f"@127.0.0.1:{port}/3")
        assert broker_redis(url).incr("labgate:deliveries:build:1") == 1  # after SELECT 3
        assert refused_login(f"redis://127.0.0.1:{port}/3")
        assert not refused_login(admin_url)
        sender = Celery("acl-tcp", broker=url, set_as_current=False)
        sender.conf.update(task_queues=[], broker_connection_retry=False)
        with sender.connection_for_write() as connection:
            producer = connection.Producer()
            producer.publish({"x": 1}, routing_key=RESULTS_QUEUE, exchange="", declare=[])
        assert broker_redis(admin_url).llen(RESULTS_QUEUE) == 1
        assert broker_redis(admin_url.removesuffix("/3") + "/0").llen(RESULTS_QUEUE) == 0
    finally:
        server.terminate()
        server.wait(10)


# -- a real worker with the build role's user ----------------------------------------------------


def _start_worker(url: str, work_dir: Path, log: Path) -> subprocess.Popen[bytes]:
    env = {**os.environ, "LABGATE_BROKER_URL": url, "LABGATE_WORKER_ROLE": "build", "LABGATE_DATA_DIR": str(work_dir),
           "LABGATE_WORK_DIR": str(work_dir), "LABGATE_DATABASE_URL": "", "PYTHONPATH": str(REPO_ROOT),
           # visibility timeout = longest job + 600 s margin: 3 s, so a killed worker's job comes back soon.
           "LABGATE_LONGEST_JOB_S": "-597"}  # fmt: skip
    with log.open("ab") as out:
        return subprocess.Popen([sys.executable, "-c", PROBE_WORKER, "build"], cwd=REPO_ROOT, env=env, stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True)  # fmt: skip


def _kill(worker: subprocess.Popen[bytes]) -> None:
    if worker.poll() is None:
        os.killpg(worker.pid, signal.SIGKILL)
    worker.wait(10)


def _pop_result(admin: redis.Redis, log: Path, timeout_s: int = 60) -> dict[str, Any]:
    item = admin.brpop([RESULTS_QUEUE], timeout=timeout_s)
    assert item is not None, f"no answer on the results queue; the worker's log:\n{log.read_text()}"
    message = json.loads(item[1])
    assert message["headers"]["task"] == "bot.record_result"
    args, _kwargs, _embed = json.loads(base64.b64decode(message["body"]))
    return dict(json.loads(args[0]))


def _wait(predicate: Any, what: str, log: Path, timeout_s: float = 30) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, f"{what}; the worker's log:\n{log.read_text()}"
        time.sleep(0.1)


def test_build_worker_consumes_answers_and_gets_its_job_back(broker: Broker, tmp_path: Path) -> None:
    urls = install_role_users(broker.admin_url, ["build"], instance="lgtest")
    admin = broker.admin()
    controller = Celery("acl-admin", broker=broker.admin_url, set_as_current=False)
    controller.conf.update(task_create_missing_queues=True, broker_connection_retry_on_startup=True)
    log = tmp_path / "worker.log"
    workers = [_start_worker(urls["build"], tmp_path, log)]
    try:
        # The worker answers inspect() sent by the admin (pidbox broadcast in, reply pushed back).
        answers: dict[str, Any] = {}

        def answered() -> bool:
            answers.update(controller.control.inspect(timeout=1).active_queues() or {})
            return bool(answers)

        _wait(answered, "the worker never answered inspect()", log, 60)
        assert [queue["name"] for queues in answers.values() for queue in queues] == ["build"]

        # A job from `build`, answered on `results`, counted in the role's own delivery key.
        controller.send_task(PROBE_TASK, args=[1, "first", 0], queue="build")
        assert _pop_result(admin, log) == {"job_id": 1, "token": "first", "delivery": 1, "redelivered": False}
        assert admin.get(delivery_key("build", 1, "")) == b"1"

        # With the role's user nobody can broadcast `shutdown` through the pidbox.
        hostile = Celery("acl-hostile", broker=urls["build"], set_as_current=False)
        with pytest.raises(OperationalError, match="no permissions to run the 'publish' command"):
            hostile.control.broadcast("shutdown", reply=False)
        controller.control.broadcast("shutdown", reply=False, destination=["nobody@nowhere"])  # admin may
        assert controller.control.inspect(timeout=2).ping()

        # Its pool process killed mid-job: the job is rejected back onto `build` and runs again.
        controller.send_task(PROBE_TASK, args=[2, "child killed", 60], queue="build")
        _wait(lambda: admin.hlen("unacked:build") == 1, "job 2 never in flight", log)
        assert not admin.exists("unacked")  # in flight in the role's hash, not kombu's shared one
        _wait(lambda: admin.get(delivery_key("build", 2, "")) == b"1", "job 2 never started", log)
        (pool_process,) = children_of(workers[0].pid)
        os.kill(pool_process, signal.SIGKILL)
        assert _pop_result(admin, log) == {"job_id": 2, "token": "child killed", "delivery": 2, "redelivered": True}

        # The whole worker killed mid-job: the message stays in unacked:build until its visibility
        # timeout; the next build worker restores it (under the role's mutex) and runs it.
        controller.send_task(PROBE_TASK, args=[3, "worker killed", 60], queue="build")
        _wait(lambda: admin.get(delivery_key("build", 3, "")) == b"1", "job 3 never started", log)
        _kill(workers[0])
        assert admin.hlen("unacked:build") == 1 and admin.llen("build") == 0
        time.sleep(3.5)
        workers.append(_start_worker(urls["build"], tmp_path, log))
        assert _pop_result(admin, log) == {"job_id": 3, "token": "worker killed", "delivery": 2, "redelivered": True}
        _wait(lambda: admin.hlen("unacked:build") == 0, "job 3 never acknowledged", log)

        # Everything above needed no command the role lacks, but Celery's heartbeat events (PUBLISH
        # on celeryev, refused until the worker runs --without-heartbeat).
        refused = {entry["object"] for entry in admin.acl_log(count=128) if entry["username"] == "lgtest-build"}
        assert refused <= {"publish"}, (refused, log.read_text())
    finally:
        for worker in workers:
            _kill(worker)
