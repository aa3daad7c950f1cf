"""MAINTAINERS at a series' base: asked of the checkout worker, its answer kept, the sender graded again.

The control plane runs no git and has no mirror, so the file is read where git runs, the checkout
worker, by a request of its own (workers/base_file.py) rather than as an output of the checkout job.
The checkout job runs only once a series may run; MAINTAINERS is what decides whether it may: a
series that waits has no pipeline, and must keep saying "waiting" on its checks, not grow a checkout
check, until a maintainer approves it. So:

1. Reading a series (step 2 of the series intake) with no answer yet grades its sender on the
   tree's `mail.maintainers` allowlist alone (it waits, or runs at what that allows, and says so),
   and sends the checkout queue a request for `mail.maintainers_file` at the series' base: once per
   series, sent before it is recorded (a crash between sends it again; the lost answer's token no
   longer matches and is dropped).
2. The worker reads the file at the base, never at the series' head: a series adding its sender to
   MAINTAINERS does not make them its maintainer. The answer comes back on the results queue like a
   job's result, with the request's token (its hash is all the store keeps), and is kept once.
3. The answer's task queues a regrade (bot/intake/mailing_list.py `regrade_series`): when the file
   makes the From: an M:/R: address of every path the series touches and nothing runs for the series yet,
   the series is handled again, under a scope of its own: it runs if its grade now allows (what
   `grade_sender` gives a maintainer), supersedes versions it now outranks, and its `labgate` check
   says why. Nothing is taken away: MAINTAINERS only ever raises a grade.

Not read for private trees (the request carries no credential). A request whose answer is lost is not
sent again: that series stays graded on the allowlist, and a maintainer can still approve it.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import secrets
from collections.abc import Sequence
from functools import lru_cache

from sqlalchemy.exc import IntegrityError

from bot.core.diff_paths import MAX_PATHS, mail_texts, touched_paths
from bot.core.maintainers import MAX_MAINTAINERS_BYTES, Maintainers, parse_maintainers
from bot.host.config import Tree
from bot.host.stores import Runtime
from bot.store.once import once_done, record_once
from workers.app import CHECKOUT_QUEUE, app
from workers.errors import UserError
from workers.spec import READ_BASE_FILE_TASK, BaseFileAnswer, BaseFileRequest

log = logging.getLogger(__name__)
SERIES_REGRADE_TASK = "bot.series_regrade"  # control queue: bot/tasks.py


def request_id(server: str, series_id: int) -> str:
    return f"{hashlib.sha256(server.encode()).hexdigest()[:16]}:{int(series_id)}"


def _asked_key(request: str) -> str:
    return f"maintainers-asked:{request}"


def _answer_key(request: str) -> str:
    return f"maintainers-answer:{request}"


def ask_for_maintainers(runtime: Runtime, tree: Tree, server: str, series_id: int, base_ref: str,
                        base_branches: Sequence[str]) -> bool:  # fmt: skip
    """Send the request for the tree's MAINTAINERS at the base, unless it was sent already (or the tree
    reads none). True when a request went out."""
    if tree.mail.maintainers_file is None or tree.private:
        return False
    rid = request_id(server, series_id)
    with runtime.store.session() as session:
        if once_done(session, _asked_key(rid)) is not None:
            return False
    token = secrets.token_urlsafe(24)
    request = BaseFileRequest(request_id=rid, token=token, tree_name=tree.name, tree_url=tree.url, base_ref=base_ref,
                              base_branches=tuple(base_branches), path=tree.mail.maintainers_file,
                              max_bytes=MAX_MAINTAINERS_BYTES)  # fmt: skip
    app.send_task(READ_BASE_FILE_TASK, args=[request.model_dump_json()], queue=CHECKOUT_QUEUE)
    detail = json.dumps({"server": server, "series": int(series_id), "token_sha256": _digest(token),
                         "tree": tree.name, "path": tree.mail.maintainers_file})  # fmt: skip
    try:
        with runtime.store.session() as session:
            record_once(session, _asked_key(rid), detail)
    except IntegrityError:
        return False  # another handler asked at the same time: its token is the one kept
    return True


def record_answer(runtime: Runtime, answer: BaseFileAnswer) -> tuple[str, int] | None:
    """Keep the worker's answer, once; (server, series id) to grade again (also for a repeat: the regrade
    is idempotent, and a crash before it was queued must not lose it), or None when the answer does not
    hold the request's token (forged, or an earlier request's)."""
    with runtime.store.session() as session:
        asked = once_done(session, _asked_key(answer.request_id))
    if asked is None:
        log.warning("MAINTAINERS answer for %r: no such request", answer.request_id[:100])
        return None
    request = json.loads(asked)
    if not hmac.compare_digest(request["token_sha256"], _digest(answer.token)):
        log.warning("MAINTAINERS answer for %s without the request's token: dropped", answer.request_id)
        return None
    kept = json.dumps({"base_sha": answer.base_sha, "digest": answer.digest, "problem": answer.problem})
    try:
        with runtime.store.session() as session:
            if once_done(session, _answer_key(answer.request_id)) is None:
                record_once(session, _answer_key(answer.request_id), kept)
    except IntegrityError:
        pass  # a concurrent repeat kept it
    if answer.problem:
        log.info("MAINTAINERS for series %s: %s", answer.request_id, answer.problem)
    return str(request["server"]), int(request["series"])


def maintainers_at_base(runtime: Runtime, server: str, series_id: int, tree: Tree,
                        patches: Sequence[bytes]) -> frozenset[str] | None:  # fmt: skip
    """The M:/R: addresses (lowercased) MAINTAINERS at the base gives every path the patches touch
    (bot/core/diff_paths.py: read as git am could read them); None while no answer is kept (then the
    caller asks). A file that is not there gives none, and so do no paths."""
    with runtime.store.session() as session:
        kept = once_done(session, _answer_key(request_id(server, series_id)))
    if kept is None:
        return None
    answer = json.loads(kept)
    if not answer.get("digest"):
        return frozenset()
    origin = f"{tree.mail.maintainers_file} at {str(answer.get('base_sha'))[:12]}"
    try:
        parsed = _parse_cached(runtime.artifacts.get_bytes(str(answer["digest"])), origin)
    except UserError as error:  # over the cap: the worker checks it too
        log.warning("%s", error)
        return frozenset()
    try:
        paths = touched_paths(text for raw in patches for text in mail_texts(raw))
    except (RecursionError, ValueError, LookupError) as error:  # a mail Python's parser cannot take apart
        log.warning("series %s: its mails cannot be read for paths (%s): nobody maintains it", series_id, error)
        return frozenset()
    if paths is None:
        log.info("series %s touches over %d paths: MAINTAINERS makes nobody its maintainer", series_id, MAX_PATHS)
        return frozenset()
    # Every path: a maintainer of one file is nobody's maintainer for the rest of a change that touches it.
    return frozenset(parsed.maintainers_of_every(paths))


@lru_cache(maxsize=4)
def _parse_cached(data: bytes, origin: str) -> Maintainers:
    # Series against one base read one file: parse it once (the kernel's is 0.7 MiB).
    maintainers = parse_maintainers(data.decode("utf-8", "replace"), origin)
    for problem in maintainers.problems[:20]:
        log.info("%s", problem)
    return maintainers


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()
