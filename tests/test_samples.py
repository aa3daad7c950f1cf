"""The project's own samples are what tests/samples/README.md says they are."""

from __future__ import annotations

import email
import email.policy
import mailbox
import subprocess
from pathlib import Path

from tests.samples import B4_SERIES, github_payload, github_sample_names


def test_every_github_sample_is_a_json_object_named_by_its_event() -> None:
    for name in github_sample_names():
        payload = github_payload(name)
        event, file = name.split("/")
        assert isinstance(payload, dict) and file.endswith(".json")
        if "action" in payload:  # events with actions name the file after it (push and ping have none)
            assert file.split(".")[0] == payload["action"], name
        if event != "ping" and event != "installation":
            assert payload["repository"]["full_name"] == "octo-org/hello", name


def test_the_b4_series_is_a_threaded_cover_and_two_patches() -> None:
    messages = [email.message_from_bytes(m.as_bytes(), policy=email.policy.default) for m in mailbox.mbox(B4_SERIES)]
    subjects = [str(m["Subject"]) for m in messages]
    assert subjects == ["[PATCH 0/2] mathx: add an lcm helper", "[PATCH 1/2] mathx: add mathx_lcm()",
                        "[PATCH 2/2] README: list the mathx helpers"]  # fmt: skip
    cover_id = str(messages[0]["Message-Id"])
    assert all(str(m["In-Reply-To"]) == cover_id for m in messages[1:])
    assert all(str(m["X-Mailer"]).startswith("b4 ") for m in messages)
    assert "base-commit: " in messages[0].get_content() and "change-id: " in messages[0].get_content()


def test_the_b4_series_applies_on_examples_hello(hello_repo: Path, tmp_path: Path) -> None:
    """As a maintainer applies a b4 series: each patch mail in turn (the cover letter has no patch)."""
    text = B4_SERIES.read_text()
    separator = "\nFrom mboxrd@z "
    mails = ["From mboxrd@z " + part for part in text.split(separator)[1:]]  # every mail after the cover letter
    assert len(mails) == 2
    for number, mail in enumerate(mails, start=1):
        (tmp_path / f"{number}.mbox").write_text(mail)
        subprocess.run(["git", "-c", "user.name=Maint", "-c", "user.email=maint@example.org", "am", "-q",
                        str(tmp_path / f"{number}.mbox")], cwd=hello_repo, check=True)  # fmt: skip
    log = subprocess.run(["git", "log", "--format=%an|%s", "-2"], cwd=hello_repo, check=True, capture_output=True,
                         text=True).stdout.splitlines()  # fmt: skip
    assert log == ["Alice Example|README: list the mathx helpers", "Alice Example|mathx: add mathx_lcm()"]
    assert "mathx_lcm" in (hello_repo / "src" / "mathx.c").read_text()
