"""Trust policy: who is trusted, who may approve, SHA-bound approvals and tiers, the waiting text."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from bot.core.events import Actor
from bot.core.trust import (
    Approval,
    TrustPolicy,
    approval_matches,
    is_trusted,
    may_approve,
    render_waiting_text,
    tier_for,
)

HEAD = "ec26c3e57ca3a959ca5aad62de7213c562f8c821"
OLD = "f95f852bd8fca8fcc58a9a2d6c842781e32a215e"
DEFAULT = TrustPolicy()


def test_defaults() -> None:
    assert DEFAULT.trusted_associations == ("OWNER", "MEMBER", "COLLABORATOR")
    assert DEFAULT.trusted_users == DEFAULT.trusted_teams == DEFAULT.trusted_bots == ()
    assert DEFAULT.approved_untrusted_tier == "qemu"
    assert DEFAULT.approvers_may_be == ("write", "maintain", "admin")


def test_policy_validation() -> None:
    with pytest.raises(ValidationError, match="org/team"):
        TrustPolicy(trusted_teams=("justateam",))
    with pytest.raises(ValidationError, match="org/team"):
        TrustPolicy(trusted_teams=("a/b/c",))
    with pytest.raises(ValidationError):
        TrustPolicy(approved_untrusted_tier="none")  # type: ignore[arg-type]
    with pytest.raises(ValidationError):
        TrustPolicy.model_validate({"trusted_user": ["typo"]})


def test_policy_from_config_mapping() -> None:
    policy = TrustPolicy.model_validate(
        {"trusted_users": ["Alice"], "trusted_teams": ["NetDev/Maintainers"], "trusted_associations": ["member"]}
    )
    assert policy.trusted_users == ("alice",)
    assert policy.trusted_teams == ("netdev/maintainers",)
    assert policy.trusted_associations == ("MEMBER",)


@pytest.mark.parametrize(
    ("association", "trusted"),
    [
        ("OWNER", True),
        ("MEMBER", True),
        ("COLLABORATOR", True),
        ("member", True),
        ("CONTRIBUTOR", False),
        ("FIRST_TIME_CONTRIBUTOR", False),
        ("FIRST_TIMER", False),
        ("NONE", False),
        (None, False),
    ],
)
def test_trusted_by_association(association: str | None, trusted: bool) -> None:
    assert is_trusted(Actor("someone", association), DEFAULT) is trusted


def test_trusted_by_user_list_case_insensitively() -> None:
    policy = TrustPolicy(trusted_users=("Alice",))
    assert is_trusted(Actor("alice", "NONE"), policy)
    assert is_trusted(Actor("ALICE"), policy)
    assert not is_trusted(Actor("mallory", "NONE"), policy)


def test_trusted_by_team() -> None:
    policy = TrustPolicy(trusted_teams=("netdev/maintainers",))
    assert is_trusted(Actor("bob", "CONTRIBUTOR"), policy, frozenset({"other/x", "NetDev/Maintainers"}))
    assert not is_trusted(Actor("bob", "CONTRIBUTOR"), policy, frozenset({"netdev/reviewers"}))
    assert not is_trusted(Actor("bob", "CONTRIBUTOR"), policy)


def test_narrower_associations() -> None:
    policy = TrustPolicy(trusted_associations=("OWNER",))
    assert not is_trusted(Actor("carol", "COLLABORATOR"), policy)
    assert not is_trusted(Actor("carol", "OWNER"), TrustPolicy(trusted_associations=()))


def test_bots_only_through_trusted_bots() -> None:
    bot = Actor("dependabot[bot]", "MEMBER", is_bot=True)
    assert not is_trusted(bot, DEFAULT)  # association is not enough for a bot
    assert not is_trusted(bot, TrustPolicy(trusted_users=("dependabot[bot]",)))
    assert not is_trusted(bot, DEFAULT, frozenset({"org/team"}))
    assert is_trusted(bot, TrustPolicy(trusted_bots=("dependabot[bot]",)))
    assert is_trusted(bot, TrustPolicy(trusted_bots=("Dependabot",)))
    assert is_trusted(Actor("renovate", None, is_bot=True), TrustPolicy(trusted_bots=("renovate[bot]",)))
    assert not is_trusted(bot, TrustPolicy(trusted_bots=("renovate",)))


def test_trusted_bots_list_does_not_trust_a_human_of_that_name() -> None:
    assert not is_trusted(Actor("dependabot", "NONE"), TrustPolicy(trusted_bots=("dependabot",)))


@pytest.mark.parametrize(
    ("permission", "allowed"),
    [
        ("admin", True),
        ("maintain", True),
        ("write", True),
        ("WRITE", True),
        ("triage", False),
        ("read", False),
        ("none", False),
        ("", False),
        (None, False),
    ],
)
def test_may_approve_default(permission: str | None, allowed: bool) -> None:
    assert may_approve(permission, DEFAULT) is allowed


def test_may_approve_narrowed() -> None:
    policy = TrustPolicy(approvers_may_be=("admin",))
    assert may_approve("admin", policy)
    assert not may_approve("write", policy)
    assert not may_approve("admin", TrustPolicy(approvers_may_be=()))


@pytest.mark.parametrize(
    ("prefix", "matches"),
    [
        (None, True),
        (HEAD[:7], True),
        (HEAD[:12].upper(), True),
        (HEAD, True),
        (HEAD[:6], False),  # too short to name a commit
        ("", False),
        (OLD[:7], False),
        (HEAD[1:8], False),  # a prefix, not any substring
        (HEAD + "0", False),
        ("ec26c3g", False),
        ("ec26c3e ", False),
    ],
)
def test_approval_matches(prefix: str | None, matches: bool) -> None:
    assert approval_matches(prefix, HEAD) is matches


def test_trusted_author_gets_hardware() -> None:
    assert tier_for(True, HEAD, [], DEFAULT) == "hardware"


def test_untrusted_without_approval_gets_nothing() -> None:
    assert tier_for(False, HEAD, [], DEFAULT) == "none"


def test_approval_of_older_head_does_not_carry_over() -> None:
    assert tier_for(False, HEAD, [Approval(OLD, "maint", True)], DEFAULT) == "none"


def test_approval_must_be_the_full_sha() -> None:
    assert tier_for(False, HEAD, [Approval(HEAD[:7], "maint", False)], DEFAULT) == "none"
    assert tier_for(False, "", [Approval("", "maint", False)], DEFAULT) == "none"


def test_approval_of_this_head() -> None:
    assert tier_for(False, HEAD, [Approval(HEAD, "maint", False)], DEFAULT) == "qemu"
    assert tier_for(False, HEAD, [Approval(HEAD.upper(), "maint", False)], DEFAULT) == "qemu"


def test_hardware_from_the_approval_or_the_policy() -> None:
    assert tier_for(False, HEAD, [Approval(HEAD, "maint", True)], DEFAULT) == "hardware"
    hardware_policy = TrustPolicy(approved_untrusted_tier="hardware")
    assert tier_for(False, HEAD, [Approval(HEAD, "maint", False)], hardware_policy) == "hardware"
    approvals = [Approval(OLD, "a", True), Approval(HEAD, "b", False), Approval(HEAD, "c", True)]
    assert tier_for(False, HEAD, approvals, DEFAULT) == "hardware"
    assert tier_for(False, HEAD, approvals[:2], DEFAULT) == "qemu"


def test_waiting_text_says_who_how_and_why() -> None:
    text = render_waiting_text(DEFAULT, "newcomer", HEAD, None)
    assert "@newcomer" in text and "not a trusted" in text
    assert "write, maintain or admin permission" in text and "maintainer" in text
    assert "`/ok-to-test`" in text
    assert f"`/ok-to-test {HEAD[:12]}`" in text
    assert f"`/ok-to-test {HEAD[:12]} hardware`" in text
    assert "earlier approval" not in text


def test_waiting_text_after_a_new_push() -> None:
    text = render_waiting_text(DEFAULT, "newcomer", HEAD, Approval(OLD, "maint", False))
    assert f"`{OLD[:12]}`" in text and "by maint" in text and "@maint" not in text
    assert f"new push (`{HEAD[:12]}`) needs a new approval" in text


def test_waiting_text_previous_approval_of_same_head_is_not_called_old() -> None:
    text = render_waiting_text(DEFAULT, "newcomer", HEAD, Approval(HEAD, "maint", False))
    assert "earlier approval" not in text


def test_waiting_text_follows_the_policy() -> None:
    text = render_waiting_text(
        TrustPolicy(approvers_may_be=("admin",), approved_untrusted_tier="hardware"), "n", HEAD, None
    )
    assert "anyone with admin permission" in text
    assert "QEMU and real boards" in text and "hardware`" not in text
    closed = render_waiting_text(TrustPolicy(approvers_may_be=()), "n", HEAD, None)
    assert "cannot run here" in closed and "/ok-to-test" not in closed


def test_waiting_text_does_not_let_a_name_inject_markdown() -> None:
    text = render_waiting_text(DEFAULT, "Evil <b>`x`</b> [link](http://e)", HEAD, None)
    assert text.startswith("`Evil <b>'x'</b> [link](http://e)` is not")
    assert render_waiting_text(DEFAULT, "renovate[bot]", HEAD, None).startswith("@renovate[bot] is not")
