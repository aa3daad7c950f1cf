"""The oidc: section of labgate.yaml: which issuers' id-tokens labgate accepts, and which CI jobs may submit."""

from __future__ import annotations

import re
from typing import Any, Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from bot.core.links import is_loopback

# Signatures only with a public key: a symmetric (HS*) key would be a secret the issuer shares with
# every verifier, and "none" is no signature at all.
ASYMMETRIC_ALGORITHMS = ("RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA")
_GITHUB_OWNER_URL = re.compile(r"https://github\.com/[^/]+/?", re.IGNORECASE)
_ID = re.compile(r"[0-9]+")


class _Frozen(BaseModel):
    # As bot/host/config.py's _Strict (unknown keys are typos), and frozen: the verifier and the policy
    # hold these for the life of the process.
    model_config = ConfigDict(extra="forbid", hide_input_in_errors=True, frozen=True)


def url_problem(url: str) -> str | None:
    """Why `url` may not be fetched or trusted as an issuer's (None: it may): https, or http on this
    machine only (tests); no credentials, query or fragment."""
    parts = urlsplit(url)
    if parts.scheme == "http":
        if not parts.hostname or not is_loopback(parts.hostname):
            return "http is allowed only on a loopback host (127.0.0.1, ::1, localhost); use https"
    elif parts.scheme != "https" or not parts.hostname:
        return "is not an https:// URL"
    if parts.username is not None or parts.password is not None:
        return "must not carry credentials"
    if parts.query or parts.fragment:
        return "must not carry a query or a fragment"
    return None


class OidcIssuer(_Frozen):
    """A CI platform whose id-tokens labgate verifies, with the keys it publishes under its own URL."""

    url: str = Field(description="the issuer exactly as its tokens' `iss` say it: "
                     "https://token.actions.githubusercontent.com, https://gitlab.com, https://gitlab.example.com; "
                     "its keys are read from URL/.well-known/openid-configuration")  # fmt: skip
    algorithms: tuple[str, ...] = Field(("RS256",), description="signature algorithms accepted (public-key only: "
                                        "none and HS* are refused); GitHub and GitLab sign with RS256")  # fmt: skip
    jwks_refresh_min_s: int = Field(60, ge=1, le=3600, description="a token signed with a key id not in the cached "
                                    "keys refetches them at most this often (a flood of made-up key ids makes one "
                                    "fetch per period)")  # fmt: skip
    jwks_max_age_s: int = Field(3600, ge=60, le=7 * 86400, description="cached keys older than this are refetched "
                                "in the background of the next verification")  # fmt: skip

    @field_validator("url")
    @classmethod
    def _fetchable(cls, value: str) -> str:
        problem = url_problem(value)
        if problem:
            raise ValueError(f"{value!r} {problem}")
        return value

    @field_validator("algorithms")
    @classmethod
    def _public_key_algorithms(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        if not value:
            raise ValueError("name at least one algorithm (RS256 for GitHub and GitLab)")
        for algorithm in value:
            if algorithm.lower() == "none" or algorithm.upper().startswith("HS"):
                raise ValueError(f"{algorithm!r} is refused: an id-token must be signed with the issuer's private "
                                 "key (none is unsigned; HS* would take a secret every verifier holds)")  # fmt: skip
            if algorithm not in ASYMMETRIC_ALGORITHMS:
                raise ValueError(f"{algorithm!r} is not one of {', '.join(ASYMMETRIC_ALGORITHMS)}")
        return value


Platform = Literal["github", "gitlab"]
GITHUB_ONLY = ("repository_ids", "repository_owner_ids", "job_workflow_refs")
GITLAB_ONLY = ("project_ids", "namespace_ids")


class SubmitRule(_Frozen):
    """Which CI jobs of one issuer may submit to one tree, at which tier. Jobs are named by ids, which a
    rename or a re-registered name does not change; every list given must contain the token's claim
    (an empty list: any value)."""

    issuer: str = Field(description="the url of one of oidc.issuers")
    tree: str = Field(description="the name of the tree (trees[].name) these jobs may submit to")
    tier: Literal["qemu", "hardware"] = Field(description="what their submissions run on")
    repository_ids: list[str] = Field([], description="GitHub: `repository_id` (the repository's numeric id)")
    repository_owner_ids: list[str] = Field([], description="GitHub: `repository_owner_id` (the owner's numeric id)")
    project_ids: list[str] = Field([], description="GitLab: `project_id` (the project's numeric id)")
    namespace_ids: list[str] = Field([], description="GitLab: `namespace_id` (the group's or user's numeric id)")
    refs: list[str] = Field([], description="exact refs, e.g. refs/heads/main (GitHub: `ref`; GitLab: `ref_path`, "
                            "and the ref must be protected, `ref_protected` true: a merge request pipeline's "
                            "ref_path is its source branch's, and a fork's branch may be called main too)")  # fmt: skip
    event_names: list[str] = Field([], description="GitHub: `event_name` (push, workflow_dispatch, ...); GitLab: "
                                   "`pipeline_source` (push, web, ...). Events that run code from a branch someone "
                                   "else pushes to, under this project's ids (GitHub: pull_request, "
                                   "pull_request_target, pull_request_review, pull_request_review_comment, "
                                   "workflow_run, issue_comment; GitLab: merge_request_event, "
                                   "external_pull_request_event: a fork's request run in the parent), match only "
                                   "when listed here, even when this list is otherwise left out: list one only if "
                                   "whoever may open such a request (a fork's author too, where the platform gives "
                                   "fork requests a token of this project) may run code on this tier")  # fmt: skip
    job_workflow_refs: list[str] = Field([], description="GitHub: `job_workflow_ref`, the workflow the job runs, "
                                         "exactly: owner/repo/.github/workflows/x.yml@refs/heads/main (a reusable "
                                         "workflow's, when the job calls one)")  # fmt: skip

    @field_validator("repository_ids", "repository_owner_ids", "project_ids", "namespace_ids", mode="before")
    @classmethod
    def _ids_as_strings(cls, value: Any) -> Any:
        # GitHub and GitLab send ids as strings; YAML reads an unquoted id as an int.
        if isinstance(value, list):
            return [str(item) if isinstance(item, int) and not isinstance(item, bool) else item for item in value]
        return value

    @field_validator("repository_ids", "repository_owner_ids", "project_ids", "namespace_ids")
    @classmethod
    def _numeric(cls, value: list[str]) -> list[str]:
        bad = [item for item in value if not _ID.fullmatch(item)]
        if bad:
            raise ValueError(f"{bad} are not numeric ids (names can be re-registered: use the id)")
        return value

    @model_validator(mode="after")
    def _named_by_id(self) -> SubmitRule:
        if not any(getattr(self, name) for name in GITHUB_ONLY[:2] + GITLAB_ONLY):
            raise ValueError("a rule names its jobs by at least one id: repository_ids or repository_owner_ids "
                             "(GitHub), project_ids or namespace_ids (GitLab)")  # fmt: skip
        github = [name for name in GITHUB_ONLY if getattr(self, name)]
        gitlab = [name for name in GITLAB_ONLY if getattr(self, name)]
        if github and gitlab:
            raise ValueError(f"{', '.join(github)} are GitHub claims and {', '.join(gitlab)} GitLab ones: "
                             "no token carries both, so this rule could never match")  # fmt: skip
        return self

    @property
    def platform(self) -> Platform:
        """Whose tokens this rule reads: GitHub's claims or GitLab's."""
        return "github" if any(getattr(self, name) for name in GITHUB_ONLY) else "gitlab"


class OidcSettings(_Frozen):
    """CI jobs as submitters: a GitHub Actions or GitLab CI job proves who it is with its platform's
    id-token (POST /api/v1/submissions), and a rule says what it may submit."""

    audience: str = Field(description="the `aud` tokens must carry, e.g. https://labgate.example.com (GitHub: "
                          "core.getIDToken(audience); GitLab: id_tokens: X: aud:); never GitHub's default "
                          "https://github.com/OWNER, which any other service may have been sent")  # fmt: skip
    issuers: list[OidcIssuer] = Field(description="the issuers whose tokens are verified; no other is ever fetched")
    rules: list[SubmitRule] = Field([], description="who may submit, first match wins; none: every token is "
                                    "refused (403)")  # fmt: skip
    leeway_s: int = Field(30, ge=0, le=60, description="clock skew allowed on exp, nbf and iat")

    @field_validator("audience")
    @classmethod
    def _own_audience(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("must not be empty")
        if _GITHUB_OWNER_URL.fullmatch(value):
            raise ValueError(f"{value!r} is GitHub's default audience, which a job gets without asking for ours: "
                             "choose one naming labgate, e.g. its public URL")  # fmt: skip
        return value

    @field_validator("issuers")
    @classmethod
    def _unique_issuers(cls, value: list[OidcIssuer]) -> list[OidcIssuer]:
        if not value:
            raise ValueError("name at least one issuer (e.g. https://token.actions.githubusercontent.com)")
        urls = [issuer.url for issuer in value]
        duplicates = sorted({url for url in urls if urls.count(url) > 1})
        if duplicates:
            raise ValueError(f"issuer urls must be unique: {', '.join(duplicates)}")
        return value

    @model_validator(mode="after")
    def _rules_name_configured_issuers(self) -> OidcSettings:
        configured = {issuer.url for issuer in self.issuers}
        unknown = [f"rules.{i}: {rule.issuer!r}" for i, rule in enumerate(self.rules) if rule.issuer not in configured]
        if unknown:
            raise ValueError(f"{', '.join(unknown)}: not one of the configured issuers' urls")
        return self

    def issuer(self, url: str) -> OidcIssuer | None:
        """The configured issuer whose url is exactly `url`."""
        for issuer in self.issuers:
            if issuer.url == url:
                return issuer
        return None
