"""authorize: the first of the operator's rules that a verified id-token meets, as a Grant; NotAuthorized otherwise."""

from __future__ import annotations

import re
from collections.abc import Sequence

from bot.oidc.keys import quoted
from bot.oidc.settings import Platform, SubmitRule
from bot.oidc.types import Grant, NotAuthorized, VerifiedToken

# Which claim each rule field is compared with, per platform (GitLab's `ref` is a bare name; `ref_path` the ref).
_CLAIMS: dict[Platform, tuple[tuple[str, str], ...]] = {
    "github": (("repository_ids", "repository_id"), ("repository_owner_ids", "repository_owner_id"),
               ("refs", "ref"), ("event_names", "event_name"), ("job_workflow_refs", "job_workflow_ref")),
    "gitlab": (("project_ids", "project_id"), ("namespace_ids", "namespace_id"), ("refs", "ref_path"),
               ("event_names", "pipeline_source")),
}  # fmt: skip
# Events whose job runs code from a branch someone else may push to, under the project's own ids: a fork's
# pull or merge request run in the parent (GitHub sends fork PRs of a private repository a token of the base;
# GitLab runs a fork's MR pipeline in the parent when a maintainer asks), or a trigger (a comment, another
# workflow's run) a stranger can cause. Only a rule that names one in event_names admits it.
OTHERS_CODE_EVENTS: dict[Platform, frozenset[str]] = {
    "github": frozenset({"pull_request", "pull_request_target", "pull_request_review", "pull_request_review_comment",
                         "workflow_run", "issue_comment"}),
    "gitlab": frozenset({"merge_request_event", "external_pull_request_event"}),
}  # fmt: skip
_EVENT_CLAIM: dict[Platform, str] = {"github": "event_name", "gitlab": "pipeline_source"}
_PLAIN = re.compile(r"[\w./@:+-]{1,200}")


def authorize(token: VerifiedToken, rules: Sequence[SubmitRule], tree: str) -> Grant:
    """The Grant of the first rule (in order) whose issuer, tree and every listed claim match the token.
    NotAuthorized names the token's own values of the claims compared, and the tree: never a rule's."""
    for index, rule in enumerate(rules):
        if rule.issuer == token.issuer and rule.tree == tree and _meets(token, rule):
            return Grant(tier=rule.tier, rule=index, identity=describe(token, rule.platform))
    compared = " ".join(f"{claim}={_shown(token.claims.get(claim))}" for claim in _compared_claims(token))
    raise NotAuthorized(f"no rule lets this token submit to tree {_shown(tree)}: {compared}")


def describe(token: VerifiedToken, platform: Platform) -> str:
    """Who submitted, for people: "github repository octo-org/hello (id 588298808) at refs/heads/main,
    run 3989419862", "gitlab project my-group/my-project (id 20) at refs/heads/main, pipeline 574"."""
    claims = token.claims
    if platform == "github":
        return (f"github repository {_shown(claims.get('repository'))} (id {_shown(claims.get('repository_id'))}) "
                f"at {_shown(claims.get('ref'))}, run {_shown(claims.get('run_id'))}")  # fmt: skip
    return (f"gitlab project {_shown(claims.get('project_path'))} (id {_shown(claims.get('project_id'))}) "
            f"at {_shown(claims.get('ref_path'))}, pipeline {_shown(claims.get('pipeline_id'))}")  # fmt: skip


def _meets(token: VerifiedToken, rule: SubmitRule) -> bool:
    for field, claim in _CLAIMS[rule.platform]:
        wanted: list[str] = getattr(rule, field)
        if wanted and _as_text(token.claims.get(claim)) not in wanted:
            return False
    event = _as_text(token.claims.get(_EVENT_CLAIM[rule.platform]))
    if event in OTHERS_CODE_EVENTS[rule.platform] and event not in rule.event_names:
        return False
    # GitLab's ref_path of a merge request pipeline is the source branch's name, a fork's "main" too: only a
    # protected ref (pushed by maintainers alone) is the ref a rule names.
    return not (rule.platform == "gitlab" and rule.refs and token.claims.get("ref_protected") != "true")


def _as_text(value: object) -> str | None:
    """A claim as the string rules hold: GitHub and GitLab send ids as strings, a number is read as one too;
    anything else (a list, a bool, absent) matches nothing."""
    if isinstance(value, str):
        return value
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    return None


def _compared_claims(token: VerifiedToken) -> list[str]:
    """The claims rules would compare for this token's platform, told by the ids it carries."""
    claims = token.claims
    platforms: list[Platform] = [p for p in ("github", "gitlab") if _CLAIMS[p][0][1] in claims]
    names = [claim for platform in platforms or ["github", "gitlab"] for _, claim in _CLAIMS[platform]]
    if "gitlab" in platforms:
        names.append("ref_protected")
    return list(dict.fromkeys(names))


def _shown(value: object) -> str:
    """A claim for people: bare when it is a plain id, ref or name, else quoted and cut short."""
    text = _as_text(value)
    if text is not None and _PLAIN.fullmatch(text):
        return text
    if value is None:
        return "(absent)"
    return quoted(value)
