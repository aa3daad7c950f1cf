"""authorize: rules match GitHub and GitLab tokens by ids, refs, events and the workflow run; a refusal names the
token's own values and the tree, never a rule's."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from bot.oidc.policy import authorize
from bot.oidc.settings import SubmitRule
from bot.oidc.types import Grant, NotAuthorized, VerifiedToken
from tests.fakes.oidc_issuer import DROP, github_claims, gitlab_claims

GITHUB = "https://token.actions.githubusercontent.com"
GITLAB = "https://gitlab.example.com"
AUDIENCE = "https://labgate.example"
REUSABLE = "octo-org/octo-automation/.github/workflows/oidc.yml@refs/heads/main"


def github_token(**overrides: Any) -> VerifiedToken:
    return _token(github_claims(GITHUB, AUDIENCE, 1_765_000_000, **overrides))


def gitlab_token(**overrides: Any) -> VerifiedToken:
    return _token(gitlab_claims(GITLAB, AUDIENCE, 1_765_000_000, **overrides))


def _token(claims: dict[str, Any]) -> VerifiedToken:
    return VerifiedToken(issuer=claims["iss"], claims=claims, jti=claims["jti"],
                         expires_at=datetime.fromtimestamp(claims["exp"], UTC))  # fmt: skip


def rule(**fields: Any) -> SubmitRule:
    return SubmitRule.model_validate({"issuer": GITHUB, "tree": "netdev/net-next", "tier": "qemu"} | fields)


def refusal(token: VerifiedToken, rules: list[SubmitRule], tree: str = "netdev/net-next") -> str:
    with pytest.raises(NotAuthorized) as caught:
        authorize(token, rules, tree)
    return str(caught.value)


# ---- GitHub -------------------------------------------------------------------------------------------------


def test_a_repository_id_grants_with_an_identity_for_people() -> None:
    grant = authorize(github_token(), [rule(repository_ids=[588298808], tier="hardware")], "netdev/net-next")
    assert grant == Grant(tier="hardware", rule=0, identity="github repository nickolashkraus/flask-oidc "
                          "(id 588298808) at refs/heads/main, run 3989419862")  # fmt: skip


def test_the_first_matching_rule_wins() -> None:
    rules = [rule(repository_ids=["1"], tier="hardware"), rule(repository_owner_ids=["14130403"]),
             rule(repository_ids=["588298808"], tier="hardware")]  # fmt: skip
    assert authorize(github_token(), rules, "netdev/net-next").rule == 1


def test_a_repository_renamed_to_a_trusted_name_is_refused() -> None:
    # Someone deleted or renamed the trusted repository and registered its name: same `repository`, other id.
    impostor = github_token(repository_id="999000111", repository_owner_id="55555")
    message = refusal(impostor, [rule(repository_ids=["588298808"])])
    assert message == (
        "no rule lets this token submit to tree netdev/net-next: repository_id=999000111 "
        "repository_owner_id=55555 ref=refs/heads/main event_name=workflow_dispatch "
        "job_workflow_ref=nickolashkraus/flask-oidc/.github/workflows/integration.yml@refs/heads/main"
    )
    assert "588298808" not in message


def test_an_owner_id_grants_every_repository_of_the_owner_and_no_other() -> None:
    rules = [rule(repository_owner_ids=[14130403])]
    assert authorize(github_token(repository_id="1", repository="nickolashkraus/other"), rules, "netdev/net-next")
    assert "repository_owner_id=9" in refusal(github_token(repository_owner_id="9"), rules)


def test_a_ref_other_than_the_rules_is_refused() -> None:
    rules = [rule(repository_ids=["588298808"], refs=["refs/heads/main"])]
    assert authorize(github_token(), rules, "netdev/net-next")
    message = refusal(github_token(ref="refs/heads/wip", job_workflow_ref=DROP), rules)
    assert "ref=refs/heads/wip " in message and "job_workflow_ref=(absent)" in message


def test_a_pull_request_from_a_fork_is_refused_where_only_pushes_may_submit() -> None:
    rules = [rule(repository_ids=["588298808"], event_names=["push", "workflow_dispatch"])]
    fork = github_token(event_name="pull_request", ref="refs/pull/7/merge", head_ref="fork-owner:patch-1",
                        base_ref="main", sub="repo:nickolashkraus/flask-oidc:pull_request")  # fmt: skip
    assert "event_name=pull_request" in refusal(fork, rules)
    assert authorize(github_token(event_name="push"), rules, "netdev/net-next").rule == 0


def test_a_reusable_workflow_is_matched_by_the_workflow_the_job_runs_not_its_caller() -> None:
    rules = [rule(repository_owner_ids=["14130403"], job_workflow_refs=[REUSABLE])]
    caller = "nickolashkraus/flask-oidc/.github/workflows/integration.yml@refs/heads/main"
    assert authorize(github_token(workflow_ref=caller, job_workflow_ref=REUSABLE), rules, "netdev/net-next")
    # The caller claiming the trusted workflow's name as its own workflow_ref changes nothing.
    message = refusal(github_token(workflow_ref=REUSABLE, job_workflow_ref=caller), rules)
    assert f"job_workflow_ref={caller}" in message


def test_ids_sent_as_numbers_still_match_and_other_types_do_not() -> None:
    rules = [rule(repository_ids=["588298808"])]
    assert authorize(github_token(repository_id=588298808), rules, "netdev/net-next")
    assert "repository_id=[588298808] " in refusal(github_token(repository_id=[588298808]), rules)
    assert "repository_id=true" in refusal(github_token(repository_id=True), rules)


# ---- GitLab -------------------------------------------------------------------------------------------------


def test_a_gitlab_project_id_grants_with_an_identity_for_people() -> None:
    grant = authorize(gitlab_token(), [rule(issuer=GITLAB, project_ids=[20])], "netdev/net-next")
    assert grant.identity == "gitlab project my-group/my-project (id 20) at refs/heads/main, pipeline 574"


def test_a_gitlab_namespace_id_and_ref_path() -> None:
    rules = [rule(issuer=GITLAB, namespace_ids=["72"], refs=["refs/heads/main"], event_names=["push"])]
    assert authorize(gitlab_token(), rules, "netdev/net-next")
    branch = gitlab_token(ref="feature-branch-1", ref_path="refs/heads/feature-branch-1")
    assert refusal(branch, rules) == (
        "no rule lets this token submit to tree netdev/net-next: project_id=20 "
        "namespace_id=72 ref_path=refs/heads/feature-branch-1 pipeline_source=push ref_protected=true"
    )
    assert "pipeline_source=merge_request_event" in refusal(gitlab_token(pipeline_source="merge_request_event"), rules)
    assert "namespace_id=73" in refusal(gitlab_token(namespace_id="73"), rules)


def test_a_rule_reads_only_its_platforms_claims() -> None:
    # GitLab project 20 is not GitHub repository 20, and a rule's issuer must be the token's.
    assert "project_id=20" in refusal(gitlab_token(), [rule(issuer=GITLAB, repository_ids=["20"])])
    assert refusal(github_token(), [rule(issuer=GITLAB, repository_ids=["588298808"])])


def test_another_tree_is_refused() -> None:
    message = refusal(github_token(), [rule(repository_ids=["588298808"])], tree="bpf/bpf-next")
    assert message.startswith("no rule lets this token submit to tree bpf/bpf-next: repository_id=588298808 ")
    assert "netdev" not in message


@pytest.mark.parametrize("token", [github_token(), gitlab_token()], ids=["github", "gitlab"])
def test_the_refusal_never_names_what_a_rule_wants(token: VerifiedToken) -> None:
    rules = [
        rule(repository_ids=["424242"], repository_owner_ids=["737373"], refs=["refs/heads/secret-branch"],
             event_names=["schedule"], job_workflow_refs=["acme/hidden/.github/workflows/x.yml@refs/tags/v9"]),
        rule(issuer=GITLAB, project_ids=["616161"], namespace_ids=["525252"], refs=["refs/tags/v9"],
             event_names=["trigger"], tree="private/tree"),
    ]  # fmt: skip
    message = refusal(token, rules, tree="netdev/net-next")
    for secret in ("424242", "737373", "secret-branch", "schedule", "acme/hidden", "616161", "525252", "refs/tags/v9",
                   "trigger", "private/tree", GITHUB, GITLAB):  # fmt: skip
        assert secret not in message


def test_a_claim_that_is_not_plain_is_quoted() -> None:
    message = refusal(github_token(ref="refs/heads/x\nrule 0 matched"), [rule(repository_ids=["1"])])
    assert 'ref="refs/heads/x\\nrule 0 matched" ' in message and "\n" not in message


# ---- Someone else's code in a trusted project's name (M1) ---------------------------------------------------

# A maintainer runs the pipeline of a fork's merge request in the parent project: the fork's .gitlab-ci.yml
# runs with the parent's project_id, and ref_path names the fork's source branch, which may well be "main".
FORK_MR = {"project_id": "20", "ref_path": "refs/heads/main", "ref": "main", "ref_protected": "false",
           "pipeline_source": "merge_request_event"}  # fmt: skip


def test_a_forks_merge_request_pipeline_in_the_parent_project_is_refused_by_a_main_only_rule() -> None:
    main_only = rule(issuer=GITLAB, project_ids=["20"], refs=["refs/heads/main"])
    pushes_to_main = rule(issuer=GITLAB, project_ids=["20"], refs=["refs/heads/main"], event_names=["push"])
    for rules in ([main_only], [pushes_to_main]):
        assert "pipeline_source=merge_request_event" in refusal(gitlab_token(**FORK_MR), rules)


def test_a_gitlab_rule_with_refs_wants_a_protected_ref() -> None:
    rules = [rule(issuer=GITLAB, project_ids=["20"], refs=["refs/heads/main"])]
    assert authorize(gitlab_token(), rules, "netdev/net-next")  # ref_protected "true"
    for unprotected in ("false", True, "", None):
        assert refusal(gitlab_token(ref_protected=unprotected), rules)
    assert refusal(gitlab_token(ref_protected=DROP), rules)


def test_the_refusal_names_ref_protected_for_gitlab() -> None:
    message = refusal(gitlab_token(ref_protected="false"), [rule(issuer=GITLAB, project_ids=["20"], refs=["x"])])
    assert "ref_protected=false" in message


@pytest.mark.parametrize("event", ["merge_request_event", "external_pull_request_event"])
def test_a_gitlab_event_running_another_branchs_code_matches_only_a_rule_naming_it(event: str) -> None:
    token = gitlab_token(pipeline_source=event)
    assert f"pipeline_source={event}" in refusal(token, [rule(issuer=GITLAB, project_ids=["20"])])
    assert authorize(token, [rule(issuer=GITLAB, project_ids=["20"], event_names=[event])], "netdev/net-next")


@pytest.mark.parametrize("event", ["pull_request", "pull_request_target", "pull_request_review",
                                   "pull_request_review_comment", "workflow_run", "issue_comment"])  # fmt: skip
def test_a_github_event_running_another_branchs_code_matches_only_a_rule_naming_it(event: str) -> None:
    # A private repository that sends write tokens to fork pull requests' workflows: the base's repository_id.
    token = github_token(event_name=event, ref="refs/pull/7/merge")
    assert f"event_name={event}" in refusal(token, [rule(repository_ids=["588298808"])])
    assert authorize(token, [rule(repository_ids=["588298808"], event_names=[event])], "netdev/net-next")


def test_a_github_ref_rule_does_not_read_ref_protected() -> None:
    # GitHub's token has no ref_protected claim: its refs rule stays as it was.
    rules = [rule(repository_ids=["588298808"], refs=["refs/heads/main"])]
    assert authorize(github_token(), rules, "netdev/net-next")


def test_a_tree_name_that_is_not_plain_is_quoted() -> None:
    # The tree is the submitter's word, unchecked when no rule names it (an unknown tree is refused here too).
    message = refusal(github_token(), [rule(repository_ids=["588298808"])], tree="x\nrule 0 matched")
    assert message.startswith('no rule lets this token submit to tree "x\\nrule 0 matched": ') and "\n" not in message
