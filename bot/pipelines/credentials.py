"""Per-job read credentials for private trees: minted by the tree's forge, handed over in a file.

The checkout worker gets the credential through a file in its own directory that only this
job's checkout reads (via GIT_ASKPASS) and that is removed after it; never in a URL, an
argv, a task message, the build's environment or a log. The credential can read this one
repository's contents and nothing else, and it expires by itself within the hour.
"""

from __future__ import annotations

import os
from pathlib import Path

from bot.host.stores import Runtime
from bot.store.models import Job
from workers.errors import ConfigError

CREDENTIALS_DIR = "credentials"


def credential_path(runtime: Runtime, job_id: int) -> Path:
    """The file the checkout worker looks for (workers/tasks.py credential_file)."""
    return runtime.data_dir / "worker" / CREDENTIALS_DIR / f"job-{job_id}"


def write_checkout_credential(runtime: Runtime, job: Job) -> bool:
    """Mint and hand over a read credential when the job's tree is private; whether one was written."""
    change = job.pipeline.revision.change
    tree = runtime.config.tree(change.tree.name)
    if tree is None or not tree.private:
        return False
    user, token = _mint(runtime, tree.name, change.installation_id)
    path = credential_path(runtime, job.id)
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    path.unlink(missing_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(f"{user}\n{token}\n")
    return True


def remove_checkout_credential(runtime: Runtime, job_id: int) -> None:
    credential_path(runtime, job_id).unlink(missing_ok=True)


def _mint(runtime: Runtime, tree_name: str, installation_id: int | None) -> tuple[str, str]:
    tree = runtime.config.tree(tree_name)
    app = runtime.config.github
    if tree is None or tree.github is None or app is None:
        raise ConfigError(f"tree {tree_name} is private, but only GitHub trees can have a read credential minted "
                          "so far: give the tree a `github:` section and the config a GitHub App")  # fmt: skip
    from bot.forges.github.client import mint_read_token

    token = mint_read_token(app.app_id, app.read_private_key(), app.api_url, tree.github.repo, installation_id)
    return "x-access-token", token
