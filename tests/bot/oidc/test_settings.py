"""The oidc: settings refuse what would make a verifier or a rule unsafe, and describe every field."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from bot.oidc.settings import OidcIssuer, OidcSettings, SubmitRule

GITHUB = "https://token.actions.githubusercontent.com"


def problem(model: type[Any], **fields: Any) -> str:
    with pytest.raises(ValidationError) as caught:
        model.model_validate(fields)
    return str(caught.value)


def github_rule(**fields: Any) -> dict[str, Any]:
    return {"issuer": GITHUB, "tree": "netdev/net-next", "tier": "qemu", "repository_ids": ["588298808"]} | fields


@pytest.mark.parametrize("url", [GITHUB, "https://gitlab.example.com", "https://ghes.example/_services/token",
                                 "http://127.0.0.1:8080", "http://localhost:1", "http://[::1]:2"])  # fmt: skip
def test_issuer_urls_that_may_be_fetched(url: str) -> None:
    assert OidcIssuer(url=url).algorithms == ("RS256",)


@pytest.mark.parametrize(("url", "why"), [
    ("http://gitlab.example.com", "http is allowed only on a loopback host"),
    ("http://127.0.0.1.evil.example", "http is allowed only on a loopback host"),
    ("ftp://gitlab.example.com", "is not an https:// URL"),
    ("token.actions.githubusercontent.com", "is not an https:// URL"),
    ("https://user:pw@gitlab.example.com", "must not carry credentials"),
    ("https://gitlab.example.com?x=1", "must not carry a query or a fragment"),
])  # fmt: skip
def test_issuer_urls_that_may_not(url: str, why: str) -> None:
    assert why in problem(OidcIssuer, url=url)


@pytest.mark.parametrize("algorithm", ["none", "None", "HS256", "hs512"])
def test_unsigned_and_symmetric_algorithms_are_refused(algorithm: str) -> None:
    assert "must be signed with the issuer's private key" in problem(OidcIssuer, url=GITHUB, algorithms=[algorithm])


def test_algorithms_are_named_and_known() -> None:
    assert "name at least one algorithm" in problem(OidcIssuer, url=GITHUB, algorithms=[])
    assert "'RS1' is not one of RS256" in problem(OidcIssuer, url=GITHUB, algorithms=["RS1"])


@pytest.mark.parametrize("audience", ["https://github.com/octo-org", "https://github.com/octo-org/", " "])
def test_an_audience_any_job_gets_without_asking_is_refused(audience: str) -> None:
    assert "audience" in problem(OidcSettings, audience=audience, issuers=[{"url": GITHUB}])


def test_a_rule_names_its_jobs_by_id() -> None:
    without_id = github_rule(repository_ids=[], refs=["refs/heads/main"], job_workflow_refs=["o/r/.github/w.yml@x"])
    assert "names its jobs by at least one id" in problem(SubmitRule, **without_id)
    assert "are not numeric ids" in problem(SubmitRule, **github_rule(repository_ids=["octo-org/hello"]))


def test_ids_written_as_numbers_are_read_as_the_strings_tokens_carry() -> None:
    rule = SubmitRule.model_validate(github_rule(repository_ids=[588298808], repository_owner_ids=[14130403]))
    assert (rule.repository_ids, rule.repository_owner_ids, rule.platform) == (["588298808"], ["14130403"], "github")


def test_a_rule_mixing_github_and_gitlab_claims_is_refused() -> None:
    assert "could never match" in problem(SubmitRule, **github_rule(project_ids=["20"]))
    gitlab = SubmitRule.model_validate(github_rule(repository_ids=[], project_ids=["20"], refs=["refs/heads/main"]))
    assert gitlab.platform == "gitlab"


def test_every_rule_names_a_configured_issuer_and_issuers_are_unique() -> None:
    settings = {"audience": "https://labgate.example", "issuers": [{"url": GITHUB}]}
    assert OidcSettings.model_validate(settings | {"rules": [github_rule()]}).issuer(GITHUB) is not None
    unknown = github_rule(issuer="https://gitlab.com")
    assert "rules.0: 'https://gitlab.com': not one of the configured" in problem(OidcSettings, **settings,
                                                                                  rules=[unknown])  # fmt: skip
    assert "name at least one issuer" in problem(OidcSettings, audience="https://labgate.example", issuers=[])
    assert "issuer urls must be unique" in problem(OidcSettings, audience="https://labgate.example",
                                                   issuers=[{"url": GITHUB}, {"url": GITHUB}])  # fmt: skip


def test_leeway_is_at_most_a_minute_and_typos_are_refused() -> None:
    base = {"audience": "https://labgate.example", "issuers": [{"url": GITHUB}]}
    assert "leeway_s" in problem(OidcSettings, **base, leeway_s=61)
    assert "audiance" in problem(OidcSettings, **base, audiance="x")


def test_settings_are_frozen() -> None:
    issuer = OidcIssuer(url=GITHUB)
    with pytest.raises(ValidationError):
        issuer.url = "https://evil.example"  # type: ignore[misc]


def test_every_field_is_described_for_the_config_schema() -> None:
    schema = OidcSettings.model_json_schema()
    models = [schema, *schema.get("$defs", {}).values()]
    undescribed = [f"{model['title']}.{name}" for model in models
                   for name, field in model["properties"].items() if not field.get("description")]  # fmt: skip
    assert undescribed == []
    assert {model["title"] for model in models} == {"OidcSettings", "OidcIssuer", "SubmitRule"}
