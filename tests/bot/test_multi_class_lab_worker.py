"""A lab worker may serve several device classes (the boards of one rack): its role `lab.a+lab.b` consumes
those queues and no other, with its own broker user, and nothing else becomes a job role."""

from __future__ import annotations

from pathlib import Path

import pytest

from bot.host.broker_acl import install_role_users, remove_role_users, role_user
from bot.host.private_broker import start_private_redis
from workers.app import broker_redis, is_job_role, role_queues


@pytest.mark.parametrize("role", ["lab.a+lab.b", "lab.qemu-x86_64+lab.rpi4.rack-2", "lab.a"])
def test_a_lab_role_may_name_several_classes(role: str) -> None:
    assert is_job_role(role)
    assert "+".join(role_queues(role)) == role


@pytest.mark.parametrize("role", ["lab.a+build", "build+checkout", "lab.a+", "+lab.a", "lab.a++lab.b", "lab.*+lab.b",
                                  "lab.a+control", "lab.a+results", "lab.a lab.b"])  # fmt: skip
def test_nothing_else_becomes_a_job_role(role: str) -> None:
    assert not is_job_role(role)


def test_its_broker_user_consumes_its_classes_and_no_other(tmp_path: Path) -> None:
    url, process = start_private_redis(tmp_path)
    assert process is not None
    try:
        install_role_users(url, ["lab.a+lab.b"], instance="lgtest")
        admin = broker_redis(url)
        user = role_user("lgtest", "lab.a+lab.b")

        def allowed(*command: str) -> bool:
            return admin.execute_command("ACL", "DRYRUN", user, *command) == b"OK"

        assert allowed("BRPOP", "lab.a", "lab.b", "1") and allowed("RPOP", "lab.b")
        assert not allowed("BRPOP", "lab.c", "1") and not allowed("RPOP", "build")
        assert not allowed("LRANGE", "results", "0", "-1") and allowed("LPUSH", "results", "x")
        remove_role_users(url, ["lab.a+lab.b"], instance="lgtest")
        admin.close()
    finally:
        process.terminate()
        process.wait(10)
