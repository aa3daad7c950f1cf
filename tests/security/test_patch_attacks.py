"""Patches that would plant a symlink or a binary, sent through `labgate try`: refused, naming the rule,
and a patch over the cap is refused before anything of it is stored."""

from __future__ import annotations

import email
import email.encoders
import email.policy
import subprocess
from pathlib import Path

import pytest

from bot.store.models import Pipeline
from tests.security.conftest import CAPS, GIT_ENV, AttackLab


def _symlink_mail(lab: AttackLab, repo: Path) -> bytes:
    """A real `git format-patch` mail adding `link -> /etc/shadow`."""
    env = {"PATH": "/usr/bin:/bin", **GIT_ENV}
    git = ["git", "-C", str(repo)]
    subprocess.run([*git, "checkout", "-q", "-b", "link"], check=True, env=env)
    (repo / "link").symlink_to("/etc/shadow")
    subprocess.run([*git, "add", "link"], check=True, env=env)
    subprocess.run([*git, "commit", "-qm", "add a helpful link"], check=True, env=env)
    mail = subprocess.run([*git, "format-patch", "-1", "--stdout"], check=True, env=env, capture_output=True).stdout
    subprocess.run([*git, "checkout", "-q", "main"], check=True, env=env)
    return mail


def _base64(mail: bytes) -> bytes:
    message = email.message_from_bytes(mail, policy=email.policy.compat32)
    payload = message.get_payload(decode=True)
    del message["Content-Transfer-Encoding"]
    message.set_payload(payload)
    email.encoders.encode_base64(message)
    return message.as_bytes()


@pytest.mark.parametrize("spelling", ["120000 ", "0120000", "120644", None])
def test_symlink_patches_are_refused_however_they_are_spelled(attack_lab: AttackLab, spelling: str | None) -> None:
    repo = attack_lab.repo()
    mail = _symlink_mail(attack_lab, repo)
    if spelling is None:
        mail = _base64(mail)
        assert b"120000" not in mail  # hidden from a regex over the raw bytes
    else:
        mail = mail.replace(b"new file mode 120000\n", f"new file mode {spelling}\n".encode())
    patch = attack_lab.root / f"symlink-{attack_lab.count}.patch"
    patch.write_bytes(mail)
    tried = attack_lab.try_(repo, patch)
    assert tried.returncode == 2, tried.output
    assert "symlink" in tried.output or "not a regular file mode" in tried.output, tried.output
    checkout = attack_lab.view(tried.pipeline_id).jobs[0]
    assert checkout.error_code == "user-error" and len(attack_lab.view(tried.pipeline_id).jobs) == 1


def test_a_patch_over_the_cap_is_refused_before_anything_is_stored(attack_lab: AttackLab) -> None:
    repo = attack_lab.repo()
    patch = attack_lab.root / "huge.patch"
    patch.write_bytes(b"x" * (CAPS["max_patch_bytes"] + 1))
    artifacts = attack_lab.services.runtime.artifacts.root
    stored_before = sorted(artifacts.rglob("*")) if artifacts.exists() else []
    with attack_lab.services.runtime.store.session() as session:
        pipelines_before = session.query(Pipeline).count()
    tried = attack_lab.try_(repo, patch)
    assert tried.returncode == 2 and "over the" in tried.output and "patch cap" in tried.output, tried.output
    assert tried.pipeline_id is None
    assert (sorted(artifacts.rglob("*")) if artifacts.exists() else []) == stored_before
    with attack_lab.services.runtime.store.session() as session:
        assert session.query(Pipeline).count() == pipelines_before


def test_a_whole_series_mbox_names_the_mail_that_plants_a_symlink(attack_lab: AttackLab) -> None:
    """`labgate try --patch series.mbox`, as a series' report mail says to reproduce it: the refusal names
    mail 2 by its Subject and Message-Id, not only the file."""
    repo = attack_lab.repo()
    env = {"PATH": "/usr/bin:/bin", **GIT_ENV}
    git = ["git", "-C", str(repo)]
    subprocess.run([*git, "checkout", "-q", "-b", "series"], check=True, env=env)
    (repo / "README.md").write_text((repo / "README.md").read_text() + "\nMore words.\n")
    subprocess.run([*git, "commit", "-qam", "README: more words"], check=True, env=env)
    (repo / "link").symlink_to("/etc/shadow")
    subprocess.run([*git, "add", "link"], check=True, env=env)
    subprocess.run([*git, "commit", "-qm", "add a helpful link"], check=True, env=env)
    mbox = subprocess.run([*git, "format-patch", "--thread", "--stdout", "main..series"], check=True, env=env,
                          capture_output=True).stdout  # fmt: skip
    subprocess.run([*git, "checkout", "-q", "main"], check=True, env=env)
    second = [line for line in mbox.decode().split("\n") if line.lower().startswith("message-id: ")][1]
    patch = attack_lab.root / f"series-{attack_lab.count}.mbox"
    patch.write_bytes(mbox)
    tried = attack_lab.try_(repo, patch)
    assert tried.returncode == 2, tried.output
    (checkout,) = attack_lab.view(tried.pipeline_id).jobs  # nothing built
    refusal = checkout.error_message or ""
    assert refusal.startswith(f'patch "[PATCH 2/2] add a helpful link" {second.split(" ", 1)[1]}: {patch.name}:')
    assert refusal.endswith("mode 120000 is a symlink; symlinks are not accepted"), refusal
