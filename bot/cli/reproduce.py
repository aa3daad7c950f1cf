"""`labgate reproduce JOB-ID [--server URL]`: run one job again on this machine and print its result table.

The job's spec comes from this machine's store (the config's data dir), or with --server from another
labgate's API (GET /api/v1/jobs/<id>/spec). The change is made again (its base and the same patches, or
the same commit), then exactly that job's builds and test run on private workers as `labgate try` runs a
change (bot/cli/try_change.py run_submission); a board job boots on the closest QEMU class, and says so.
"""

from __future__ import annotations

import argparse
import base64
import binascii
import json
import os
import uuid
from typing import TYPE_CHECKING, Any

from pydantic import ValidationError

from bot.core.reproduce import JobSpecDoc, patches_of, plan_reproduction
from bot.host.config import Config, redact_url
from workers.errors import UserError
from workers.spec import url_credentials_reason

if TYPE_CHECKING:  # the pipeline modules load Celery: only once a reproduction runs, not to parse arguments
    from bot.pipelines.lifecycle import Submission

API_PATH = "/api/v1/jobs/{job_id}/spec"
OPERATOR_TOKEN_ENV = "LABGATE_OPERATOR_TOKEN"  # sent as a bearer header, never in a URL
MAX_SPEC_BYTES = 64 << 20  # patches travel inline; labgate's patch cap keeps a real spec far below this
MAX_ERROR_CHARS = 300


def add_reproduce_parser(sub: Any) -> argparse.ArgumentParser:
    parser: argparse.ArgumentParser = sub.add_parser(
        "reproduce", help="run one build or test job again on this machine and print its result table")
    parser.add_argument("job", type=int, help="the job's id (its page is /jobs/ID)")
    parser.add_argument("--server", help="the labgate that ran it (its public URL); default: this machine's store")
    parser.add_argument("--link-token", help="a private tree's job: the token of its pipeline's signed page link "
                        f"(an operator sets ${OPERATOR_TOKEN_ENV} instead)")  # fmt: skip
    parser.add_argument("--timeout", type=float, default=3600, help="give up waiting after this many seconds")
    return parser


def run_reproduce(config: Config, args: argparse.Namespace) -> int:
    from bot.cli.try_change import run_submission

    if args.job <= 0:
        raise UserError(f"job id {args.job}: must be a positive number")
    if args.server:
        doc, where = fetch_spec(args.server, args.job, link_token=args.link_token,
                                operator_token=os.environ.get(OPERATOR_TOKEN_ENV)), redact_url(args.server)  # fmt: skip
        check_tree_name(config, doc)
    else:
        doc, where = read_local_spec(config, args.job), f"the store in {config.resolved_data_dir()}"
    submission = reproduction_submission(config, doc, from_server=bool(args.server))
    print(describe(doc, where), flush=True)
    if submission.reproduction is not None and submission.reproduction.note:
        print(f"NOTE: {submission.reproduction.note}", flush=True)
    return run_submission(config, args.config, submission, args.timeout)


def reproduction_submission(config: Config, doc: JobSpecDoc, *, from_server: bool) -> Submission:
    """The submission that makes the job's change again and runs that job only. A spec from a server is
    never trusted to write this machine's warm build state."""
    from bot.pipelines.lifecycle import Submission

    reproduction = plan_reproduction(doc, config.inventory(), trusted=not from_server)
    revision = doc.revision
    patches = tuple((patch.name, _decoded(patch.content_base64 or "", patch.name)) for patch in patches_of(doc))
    if revision.base_sha is None:
        raise UserError(f"job {doc.job.id}: its pipeline never made its base commit (the checkout did not pass)")
    ref = None
    if revision.ref is not None:  # the very commit tested, not what the ref names today
        if revision.head_sha is None:
            raise UserError(f"job {doc.job.id}: its pipeline never resolved ref {revision.ref!r} to a commit")
        ref = revision.head_sha
    return Submission(
        tree_name=doc.tree.name, tree_url=doc.tree.url, source="reproduce", external_id=uuid.uuid4().hex,
        base_ref=revision.base_sha, ref=ref, patches=patches, merge=revision.merge, plan_from=revision.plan_from,
        title=f"reproduction of job {doc.job.id}", submitter="local", reproduction=reproduction,
    )  # fmt: skip


def describe(doc: JobSpecDoc, where: str) -> str:
    """What is reproduced, from where: the job, its tree, its commits and patches (names as the spec has
    them, so printed without markup)."""
    revision = doc.revision
    what = f"{len(doc.patches)} patch(es) on" if doc.patches else (f"commit {revision.head_sha} on" if revision.ref
                                                                      else "the base")  # fmt: skip
    lines = [f"reproducing job {doc.job.id} ({doc.job.kind} {_printable(doc.job.name)}) of pipeline "
             f"{doc.job.pipeline_id} from {where}: it ended {doc.job.result or doc.job.state} there",
             f"tree {_printable(doc.tree.name)} ({redact_url(_printable(doc.tree.url))}): {what} "
             f"{revision.base_sha}"]  # fmt: skip
    lines += [f"  patch {_printable(p.name)} ({p.bytes} bytes, sha256 {p.digest[:12]})" for p in doc.patches]
    lines += [f"  build {_printable(b.name)} ({b.role}{', kernel ' + b.kernel.arch if b.kernel else ''})"
              for b in doc.builds]  # fmt: skip
    if doc.test is not None and doc.device_class is not None:
        lines.append(f"  test {_printable(doc.test.name)}: {len(doc.test.commands)} command(s), ran on "
                     f"{_printable(doc.device_class.name)} ({doc.device_class.lab})")  # fmt: skip
    return "\n".join(lines)


def read_local_spec(config: Config, job_id: int) -> JobSpecDoc:
    from bot.host.stores import open_runtime
    from bot.pipelines.job_specs import UnreadableSpec, read_job_spec

    runtime = open_runtime(config)
    try:
        doc = read_job_spec(runtime, job_id)
    except UnreadableSpec as exc:
        raise UserError(str(exc)) from exc
    finally:
        runtime.store.engine.dispose()
    if doc is None:
        raise UserError(f"job {job_id}: no such job in the store in {config.resolved_data_dir()} (a job of "
                        "another labgate: give its --server)")  # fmt: skip
    return doc


def fetch_spec(server: str, job_id: int, *, link_token: str | None, operator_token: str | None) -> JobSpecDoc:
    """The job's spec from another labgate's API; UserError saying what went wrong, never a token."""
    import httpx

    base = server.rstrip("/")
    reason = url_credentials_reason(base)
    if reason:
        raise UserError(f"--server {redact_url(base)}: the URL {reason}")
    if not base.startswith(("http://", "https://")):
        raise UserError(f"--server {base}: give the labgate's http:// or https:// address")
    url = base + API_PATH.format(job_id=job_id)
    headers = {"Accept": "application/json"}
    if operator_token:
        headers["Authorization"] = f"Bearer {operator_token}"
    params = {"token": link_token} if link_token else None
    try:
        with httpx.Client(timeout=30, follow_redirects=False) as client, \
                client.stream("GET", url, headers=headers, params=params) as response:  # fmt: skip
            body = _capped_body(response.iter_bytes(), url)
            status = response.status_code
    except httpx.HTTPError as exc:
        raise UserError(f"{url}: cannot reach the server ({type(exc).__name__})") from exc
    if status == 404:
        raise UserError(f"{url}: job {job_id} not found (a private tree's job needs --link-token from its page "
                        f"link, or ${OPERATOR_TOKEN_ENV})")  # fmt: skip
    if status != 200:
        raise UserError(f"{url}: the server answered {status}: {_server_error(body)}")
    return parse_spec(body, url)


def parse_spec(body: bytes, where: str) -> JobSpecDoc:
    """A spec document; UserError naming the fields that are wrong (never their values)."""
    try:
        data = json.loads(body)
    except (ValueError, RecursionError) as exc:
        raise UserError(f"{where}: the answer is not JSON") from exc
    try:
        return JobSpecDoc.model_validate(data)
    except ValidationError as exc:
        fields = "; ".join(f"{'.'.join(map(str, e['loc'])) or '(top)'}: {e['msg']}" for e in exc.errors()[:5])
        raise UserError(f"{where}: not a job spec labgate can reproduce ({fields})") from exc


def check_tree_name(config: Config, doc: JobSpecDoc) -> None:
    """A remote spec names its tree: it may not take over a tree this machine's config has elsewhere."""
    tree = config.tree(doc.tree.name)
    if tree is not None and tree.url != doc.tree.url:
        raise UserError(f"the server's tree {doc.tree.name} is {redact_url(doc.tree.url)}, but this machine's "
                        f"config has tree {tree.name} at {redact_url(tree.url)}: not reproduced")  # fmt: skip


def _capped_body(chunks: Any, url: str) -> bytes:
    body = bytearray()
    for chunk in chunks:
        body += chunk
        if len(body) > MAX_SPEC_BYTES:
            raise UserError(f"{url}: the answer is over {MAX_SPEC_BYTES} bytes: not a job spec")
    return bytes(body)


def _server_error(body: bytes) -> str:
    try:
        data = json.loads(body)
        text = str(data.get("error", "")) if isinstance(data, dict) else ""
    except (ValueError, RecursionError):
        text = body.decode("utf-8", errors="replace")
    return _printable(text)[:MAX_ERROR_CHARS] or "no reason given"


def _decoded(content: str, name: str) -> bytes:
    try:
        return base64.b64decode(content, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise UserError(f"patch {_printable(name)}: its content is not base64") from exc


def _printable(text: str) -> str:
    """A name from a spec, safe on a terminal: no escape sequence, no line break."""
    return "".join(c if c.isprintable() else "?" for c in text)
