"""Staging branches of trees that send no webhooks, polled with `git ls-remote`.

Each poll asks the remote for the heads of the tree's staging branches (one small request, no
objects fetched) and compares each with the last one seen, recorded on the branch's change. A head
that moved starts a post-merge pipeline against the previous head, exactly as a GitHub push does;
the checkout worker fetches. The first sight of a branch only records its head: there is nothing to
compare it with, and a restart of labgate must not test every branch again.
"""

from __future__ import annotations

import os
import re
import subprocess

from sqlalchemy import select
from sqlalchemy.orm import Session

from bot.host.config import Tree
from bot.host.stores import Runtime
from bot.pipelines.lifecycle import Submission, change_for, submit
from bot.store.models import Change
from bot.store.once import OnceKeys
from workers.errors import ConfigError, InfraError

SOURCE = "git-remote"
LS_REMOTE_TIMEOUT_S = 60
_SHA = re.compile(r"[0-9a-f]{40}|[0-9a-f]{64}")


def branch_change_id(tree: Tree, branch: str) -> str:
    return f"{tree.name}@{branch}"


def remote_heads(url: str, branches: list[str]) -> dict[str, str]:
    """branch -> head SHA on the remote, for those of `branches` it has (git ls-remote, no fetch)."""
    refs = [f"refs/heads/{b}" for b in branches]
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "GIT_TERMINAL_PROMPT": "0", "GIT_ASKPASS": "/bin/false",
           "HOME": "/nonexistent", "LC_ALL": "C"}  # fmt: skip
    try:
        listed = subprocess.run(["git", "-c", "protocol.file.allow=always", "ls-remote", "--", url, *refs],
                                capture_output=True, text=True, timeout=LS_REMOTE_TIMEOUT_S, env=env)  # fmt: skip
    except subprocess.TimeoutExpired as exc:
        raise InfraError(f"git ls-remote {url}: no answer in {LS_REMOTE_TIMEOUT_S} s") from exc
    if listed.returncode != 0:
        raise InfraError(f"git ls-remote {url}: {listed.stderr.strip()[:500]}")
    heads = {}
    for line in listed.stdout.splitlines():
        sha, _, ref = line.partition("\t")
        if _SHA.fullmatch(sha) and ref in refs:
            heads[ref.removeprefix("refs/heads/")] = sha
    return heads


def poll_tree(runtime: Runtime, tree: Tree) -> list[str]:
    """One poll of a tree's staging branches; a line per branch that moved or was first seen. The new head
    is recorded only once its pipeline is submitted (once per move: a repeat after a crash finds it)."""
    if tree.private:
        raise ConfigError(f"trees: {tree.name}: poll_staging of a private tree needs a read credential, which only "
                          "GitHub trees have today")  # fmt: skip
    done = []
    for branch, head in remote_heads(tree.url, tree.staging_branches).items():
        before = _last_seen(runtime, tree, branch)
        if before == head:
            continue
        if before is None:
            _record(runtime, tree, branch, head)
            done.append(f"{branch}: first seen at {head[:12]}")
            continue
        change_id = branch_change_id(tree, branch)
        submission = Submission(
            tree_name=tree.name, tree_url=tree.url, source=SOURCE, external_id=change_id, base_ref=before,
            ref=head, head_sha=head, title=f"push to {branch}", submitter=branch, kind="post-merge",
            forge_repo=tree.name,
        )  # fmt: skip
        pipeline_id = submit(runtime, submission, once_key=OnceKeys(SOURCE, change_id).key("start", before, head))
        _record(runtime, tree, branch, head)
        done.append(f"{branch}: {before[:12]} -> {head[:12]}: post-merge pipeline {pipeline_id}")
    return done


def _branch_change(session: Session, tree: Tree, branch: str) -> Change | None:
    wanted = (Change.source == SOURCE, Change.external_id == branch_change_id(tree, branch))
    return session.scalar(select(Change).where(*wanted))


def _last_seen(runtime: Runtime, tree: Tree, branch: str) -> str | None:
    with runtime.store.session() as session:
        change = _branch_change(session, tree, branch)
        return change.head_sha if change is not None else None


def _record(runtime: Runtime, tree: Tree, branch: str, head: str) -> None:
    with runtime.store.session() as session:
        change = _branch_change(session, tree, branch) or change_for(session, Submission(
            tree_name=tree.name, tree_url=tree.url, source=SOURCE, external_id=branch_change_id(tree, branch),
            base_ref=branch, title=f"staging branch {branch}", submitter=branch,
            # The repository as its reports know it: the tree's own targets (its mail), by the tree's name.
            forge_repo=tree.name))  # fmt: skip
        change.head_sha = head


def poll_all(runtime: Runtime) -> list[str]:
    """Every tree that polls its staging branches (the Celery task's body)."""
    done: list[str] = []
    for tree in runtime.config.trees:
        if tree.poll_staging and tree.staging_branches:
            done += [f"{tree.name}: {line}" for line in poll_tree(runtime, tree)]
    return done
