"""bench/submissions.py: tiny runs of both sides end to end, its check of store and queue, its constant verifier."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import uuid
from datetime import UTC, datetime
from pathlib import Path

import pytest
import redis

from bench.submissions import VERSION_AT, check_store_and_queue, constant_verifier
from bot.host.config import Config
from bot.host.stores import open_runtime
from bot.intake.submissions import SUBMISSION_TASK
from bot.store.models import CiSubmission
from bot.web.intake import ControlQueue
from tests.fakes.oidc_issuer import FakeOidcIssuer
from workers.app import CONTROL_QUEUE, configure

REPO = Path(__file__).resolve().parents[2]


def test_the_constant_verifier_makes_each_bearer_a_submission_of_its_own_with_the_same_claims() -> None:
    with FakeOidcIssuer("github") as issuer:
        claims = issuer.claims()
        minted = issuer.mint()
    verify = constant_verifier(issuer.url, claims)

    async def verified(*bearers: str) -> list[tuple[str, str, dict[str, object], datetime]]:
        tokens = [await verify(bearer) for bearer in bearers]
        return [(token.issuer, token.jti, dict(token.claims), token.expires_at) for token in tokens]

    first, again, other, garbage = asyncio.run(verified(minted, minted, issuer.mint(), "not a token"))
    assert first == again  # one bearer, one jti: sent twice it is a replay, as a real token would be
    assert len({first[1], other[1], garbage[1]}) == 3  # checks nothing: any bearer is accepted
    for token_issuer, jti, token_claims, expires_at in (first, other, garbage):
        assert token_issuer == issuer.url and token_claims == {**claims, "jti": jti}
        assert expires_at == datetime.fromtimestamp(claims["exp"], UTC)
        # A UUID like the issuer's jti, told apart from it by its version, which is what the bench counts by.
        assert uuid.UUID(jti).version == 5 and jti[VERSION_AT] == "5"
    assert uuid.UUID(claims["jti"]).version == 4 and claims["jti"][VERSION_AT] == "4"


@pytest.mark.parametrize("body", ["sha", "patch"])
def test_tiny_runs_of_both_sides_are_all_accepted_stored_and_queued_and_end_with_the_json_line(
    redis_db_url: str, body: str
) -> None:
    argv = [sys.executable, str(REPO / "bench" / "submissions.py"), "--rounds", "2", "--requests", "40",
            "--warmup", "10", "--rate", "40", "--open-seconds", "1", "--connections", "4",
            "--redis-db", redis_db_url.rsplit("/", 1)[1], *(["--patch"] if body == "patch" else [])]  # fmt: skip
    done = subprocess.run(argv, cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    last = json.loads(done.stdout.strip().splitlines()[-1])
    assert last["bench"] == "submissions"
    assert last["targets"] == {"throughput_ratio_verified_vs_constant": 0.7, "p99_ms_at_100rps": 50.0}
    figures = last["figures"]
    assert figures["body"] == body
    per_side = 10 + 2 * 40 + 40  # warm-up, rounds, open loop: every one a 201 (the bench fails on anything else)
    assert (figures["accepted_verified"], figures["accepted_constant"]) == (per_side, per_side)
    assert figures["stored"] == figures["queued"] == 2 * per_side
    assert figures["issuer_fetches"] == {"discovery": 1, "jwks": 1}  # the real verifier's keys, fetched once
    for name in ("constant_rps", "verified_rps", "p50_ms_at_100rps", "p99_ms_at_100rps", "generator_ceiling_rps"):
        assert isinstance(figures[name], float) and figures[name] > 0, name
    low, high = figures["throughput_ratio_range"]
    assert low <= figures["throughput_ratio_verified_vs_constant"] <= high
    assert figures["p50_ms_at_100rps"] <= figures["p99_ms_at_100rps"]
    assert figures["verify_us_in_process"] > 0 and set(figures["server_cpu_ms_per_submission"]) == {
        "verified",
        "constant",
    }


def test_the_check_afterwards_holds_store_and_queue_to_what_each_side_had_accepted(
    tmp_path: Path, redis_db_url: str
) -> None:
    configure(redis_db_url, longest_job_s=60)
    runtime = open_runtime(Config(data_dir=tmp_path))
    broker = redis.Redis.from_url(redis_db_url)
    expires_at = datetime.now(UTC)
    with runtime.store.session() as session:
        rows = [CiSubmission(issuer="https://issuer", jti=jti, identity="bench", tree="bench", tier="qemu",
                             base_branch="main", expires_at=expires_at)
                for jti in (str(uuid.uuid4()), str(uuid.uuid5(uuid.NAMESPACE_OID, "bearer")))]  # fmt: skip
        session.add_all(rows)
        session.commit()
        ids = [row.id for row in rows]

    async def enqueue(*submission_ids: int) -> None:
        queue = ControlQueue()  # the endpoint's own: the message as the endpoint writes it
        await queue.send([(SUBMISSION_TASK, [submission_id]) for submission_id in submission_ids])
        await queue.close()

    asyncio.run(enqueue(*ids))
    assert check_store_and_queue(runtime, broker, {"verified": 1, "constant": 1}) == (2, 2)
    with pytest.raises(SystemExit, match="stored differ from those accepted"):
        check_store_and_queue(runtime, broker, {"verified": 2, "constant": 1})
    asyncio.run(enqueue(ids[0]))  # the same submission queued twice
    with pytest.raises(SystemExit, match="one bot.ci_submission per stored submission"):
        check_store_and_queue(runtime, broker, {"verified": 1, "constant": 1})
    broker.delete(CONTROL_QUEUE)
    asyncio.run(enqueue(ids[0]))  # one missing
    with pytest.raises(SystemExit, match="one bot.ci_submission per stored submission"):
        check_store_and_queue(runtime, broker, {"verified": 1, "constant": 1})
    broker.close()
    runtime.store.engine.dispose()
