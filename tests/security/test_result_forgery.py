"""A hostile job worker, with its own broker user, tries to speak for a job it was not given and to
steer the control side through the results queue: both are refused."""

from __future__ import annotations

import base64
import json
import subprocess
import sys
import time
import uuid
from typing import Any

from tests.conftest import REPO_ROOT
from tests.security.conftest import AttackLab, wait_for
from workers.app import CONTROL_QUEUE, RESULTS_QUEUE, broker_redis
from workers.spec import ArtifactRef, JobResult

SEND_AS_WORKER = """
import json, sys
from workers.app import RESULTS_QUEUE, app, configure
configure(sys.argv[1], longest_job_s=60, role=sys.argv[2])
for name, args in json.loads(sys.argv[3]):
    app.send_task(name, args=args, queue=RESULTS_QUEUE)
"""


def _send_as(lab: AttackLab, role: str, messages: list[tuple[str, list[object]]]) -> None:
    """Send task messages the way a job worker of `role` can: with its own broker user."""
    url = lab.services.role_url(role)
    done = subprocess.run([sys.executable, "-c", SEND_AS_WORKER, url, role, json.dumps(messages)],
                          capture_output=True, text=True, cwd=REPO_ROOT, timeout=60)  # fmt: skip
    assert done.returncode == 0, done.stderr


def test_a_forged_pass_for_another_job_is_dropped(attack_lab: AttackLab) -> None:
    repo = attack_lab.repo()
    plan = "version: 1\nbuilds:\n  - name: slow\n    command: sleep 4; exit 1\n    artifacts: [out]\n"
    (repo / ".labgate" / "plan.yaml").write_text(plan)
    subprocess.run(["git", "-C", str(repo), "-c", "user.name=m", "-c", "user.email=m@m", "commit", "-qam", "slow"],
                   check=True)  # fmt: skip
    tried: list[object] = []
    runner = subprocess.Popen([sys.executable, "-m", "bot.cli", "try", str(repo), "--ref", "main", "--config",
                               str(attack_lab.config_path)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              text=True, cwd=REPO_ROOT)  # fmt: skip

    def build_job_running() -> bool:
        from bot.store.models import Job

        with attack_lab.services.runtime.store.session() as session:
            jobs = session.query(Job).filter(Job.kind == "build", Job.name == "slow", Job.state == "running").all()
            tried[:] = [job.id for job in jobs]
            return bool(jobs)

    assert wait_for(build_job_running, 60), "the slow build never started"
    job_id = int(tried[-1])  # type: ignore[call-overload]
    forged = JobResult(job_id=job_id, delivery=1, result="pass", result_token="guessed",
                       outputs={"artifacts": {"out": ArtifactRef(digest="0" * 64).model_dump()}})  # fmt: skip
    _send_as(attack_lab, "lab.qemu-x86_64", [("bot.record_result", [forged.model_dump_json()]),
                                             ("bot.job_started", [job_id, 1, "guessed"])])  # fmt: skip
    output, _ = runner.communicate(timeout=120)
    assert runner.returncode == 1, output  # the build's own exit 1, not the forged pass
    assert "build command exited with status 1" in output
    log = (attack_lab.data_dir / "logs" / "worker-results.log").read_text()
    assert f"job {job_id}: result without the job's token ignored" in log


def test_control_tasks_and_job_tasks_pushed_onto_the_results_queue_are_not_run(attack_lab: AttackLab) -> None:
    """Also when the message lies about its own routing: kombu takes delivery_info from the sender."""
    log_path = attack_lab.data_dir / "logs" / "worker-results.log"
    control_log = attack_lab.data_dir / "logs" / "worker-control.log"
    _send_as(attack_lab, "build", [("bot.report", [1]), ("bot.start_pipeline", [1]), ("workers.run_checkout", ["{}"]),
                                   ("bot.series_regrade", ["http://pw", 1])])  # fmt: skip
    # The same kind of message, made by hand and pushed as the build user, claiming to come from control.
    forged = _celery_message("bot.github_event", ['{"forged": true}', "forged-delivery"])
    forged["properties"]["delivery_info"]["routing_key"] = CONTROL_QUEUE
    assert broker_redis(attack_lab.services.role_url("build")).lpush(RESULTS_QUEUE, json.dumps(forged))
    assert wait_for(lambda: "of type 'bot.github_event'" in log_path.read_text(), 30), log_path.read_text()[-2000:]
    time.sleep(0.5)
    log = log_path.read_text()
    for name in ("bot.report", "bot.start_pipeline", "workers.run_checkout", "bot.github_event", "bot.series_regrade"):
        assert f"Received unregistered task of type '{name}'" in log, name
    control = control_log.read_text()
    assert "Task bot.github_event[" not in control and "forged-delivery" not in control


def _celery_message(name: str, args: list[object]) -> dict[str, Any]:
    """A Celery protocol-2 message as kombu's Redis transport stores it."""
    task_id = str(uuid.uuid4())
    body = base64.b64encode(json.dumps([args, {}, {"callbacks": None, "errbacks": None, "chain": None,
                                                   "chord": None}]).encode()).decode()  # fmt: skip
    return {
        "body": body, "content-encoding": "utf-8", "content-type": "application/json",
        "headers": {"lang": "py", "task": name, "id": task_id, "root_id": task_id, "parent_id": None,
                    "group": None, "retries": 0, "eta": None, "expires": None, "argsrepr": "", "kwargsrepr": "",
                    "origin": "mallory"},
        "properties": {"correlation_id": task_id, "reply_to": "", "delivery_mode": 2, "priority": 0,
                       "body_encoding": "base64", "delivery_tag": str(uuid.uuid4()),
                       "delivery_info": {"exchange": "", "routing_key": RESULTS_QUEUE}},
    }  # fmt: skip
