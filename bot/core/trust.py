"""Trust: who may use our machines (identity + per-tree policy -> tier none / qemu / hardware), SHA-bound approval."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from pydantic import BaseModel, ConfigDict, field_validator

from bot.core.events import Actor

Tier = Literal["none", "qemu", "hardware"]

_SHA_PREFIX = re.compile(r"[0-9a-fA-F]{7,40}")
_MENTIONABLE = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?(?:\[bot\])?")
SHORT_SHA = 12


class TrustPolicy(BaseModel):
    """One tree's trust rules. Logins and team names compare case-insensitively, as forges treat them."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    # The forge's own view of the author's role (Actor.association) that is enough on its own.
    trusted_associations: tuple[str, ...] = ("OWNER", "MEMBER", "COLLABORATOR")
    trusted_users: tuple[str, ...] = ()
    trusted_teams: tuple[str, ...] = ()  # "org/team"
    trusted_bots: tuple[str, ...] = ()  # "name" or "name[bot]"
    approved_untrusted_tier: Literal["qemu", "hardware"] = "qemu"
    approvers_may_be: tuple[str, ...] = ("write", "maintain", "admin")  # repository permissions that may approve

    @field_validator("trusted_associations")
    @classmethod
    def _upper(cls, values: tuple[str, ...]) -> tuple[str, ...]:
        return tuple(value.upper() for value in values)

    @field_validator("trusted_users", "trusted_bots", "approvers_may_be")
    @classmethod
    def _lower(cls, values: tuple[str, ...]) -> tuple[str, ...]:
        return tuple(value.lower() for value in values)

    @field_validator("trusted_teams")
    @classmethod
    def _teams(cls, values: tuple[str, ...]) -> tuple[str, ...]:
        for value in values:
            org, _, team = value.partition("/")
            if not org or not team or "/" in team:
                raise ValueError(f"team {value!r} is not of the form org/team")
        return tuple(value.lower() for value in values)


@dataclass(frozen=True)
class Approval:
    """An approver let an untrusted change run, for exactly one head SHA."""

    sha: str
    approver: str
    hardware: bool


def _bot_name(login: str) -> str:
    # A GitHub App acts as "name[bot]" while operators tend to write the app's name: accept both spellings.
    return login.lower().removesuffix("[bot]")


def is_trusted(actor: Actor, policy: TrustPolicy, teams_of_actor: frozenset[str] = frozenset()) -> bool:
    """Whether the actor's changes run without approval. A bot only through `trusted_bots`: bots may be
    installed by anyone, and their association says nothing about who steers them."""
    if actor.is_bot:
        return _bot_name(actor.login) in {_bot_name(bot) for bot in policy.trusted_bots}
    if actor.login.lower() in policy.trusted_users:
        return True
    if actor.association is not None and actor.association.upper() in policy.trusted_associations:
        return True
    return any(team.lower() in policy.trusted_teams for team in teams_of_actor)


def may_approve(permission: str | None, policy: TrustPolicy) -> bool:
    """Whether someone with this repository permission (None: unknown or none) may approve untrusted changes."""
    return permission is not None and permission.lower() in policy.approvers_may_be


def approval_matches(sha_prefix: str | None, head_sha: str) -> bool:
    """Whether `/ok-to-test [sha]` names this head: None means the current head; a prefix needs 7+ hex digits."""
    if sha_prefix is None:
        return True
    return bool(_SHA_PREFIX.fullmatch(sha_prefix)) and head_sha.lower().startswith(sha_prefix.lower())


def tier_for(author_trusted: bool, head_sha: str, approvals: Sequence[Approval], policy: TrustPolicy) -> Tier:
    """What the head may use: trusted authors everything; untrusted ones only what an approval of this SHA gives."""
    if author_trusted:
        return "hardware"
    # An approval of an older head says nothing about the commits pushed since.
    bound = [approval for approval in approvals if head_sha and approval.sha.lower() == head_sha.lower()]
    if not bound:
        return "none"
    if policy.approved_untrusted_tier == "hardware" or any(approval.hardware for approval in bound):
        return "hardware"
    return "qemu"


def _who(login: str, mention: bool = True) -> str:
    # Mention only what is surely a login; anything else is shown as code so it cannot inject markdown.
    if _MENTIONABLE.fullmatch(login):
        return f"@{login}" if mention else login
    return "`" + login.replace("`", "'") + "`"


def _permissions(policy: TrustPolicy) -> str:
    names = list(policy.approvers_may_be)
    if len(names) <= 1:
        return "".join(names)
    return ", ".join(names[:-1]) + " or " + names[-1]


def render_waiting_text(policy: TrustPolicy, author: str, head_sha: str, previous_approval: Approval | None) -> str:
    """Markdown posted while an untrusted change waits: why, who may approve, how."""
    short = head_sha[:SHORT_SHA]
    lines = [
        f"{_who(author)} is not a trusted contributor of this tree yet, so CI waits for approval "
        f"before running commit `{short}` on our machines.",
        "",
    ]
    earlier = previous_approval
    if earlier is not None and earlier.sha.lower() != head_sha.lower():
        lines += [
            f"The earlier approval was for `{earlier.sha[:SHORT_SHA]}` (by {_who(earlier.approver, mention=False)}); "
            f"approvals are bound to one commit, so the new push (`{short}`) needs a new approval.",
            "",
        ]
    if policy.approvers_may_be:
        lines.append(
            f"A maintainer (anyone with {_permissions(policy)} permission on the repository) may approve "
            "after reading the change:"
        )
    else:
        lines.append("No repository permission is allowed to approve in this tree's policy, so it cannot run here.")
        return "\n".join(lines) + "\n"
    tier = "QEMU and real boards" if policy.approved_untrusted_tier == "hardware" else "QEMU"
    lines += [
        "",
        f"- `/ok-to-test` approves the current head, `/ok-to-test {short}` approves exactly this commit; "
        f"either runs on {tier}.",
    ]
    if policy.approved_untrusted_tier == "qemu":
        lines.append(f"- `/ok-to-test hardware` or `/ok-to-test {short} hardware` also allows real boards.")
    lines.append("- Any later push needs a new approval.")
    return "\n".join(lines) + "\n"
