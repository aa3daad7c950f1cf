"""A labgate config with a GitHub App and its webhook secret in files, for tests that start the web app."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from bot.host.config import Config, GitHubApp, Tree, TreeGitHub, Web

REPO = "octo-org/hello"


def webhook_config(root: Path, secret: str, *, web: Web | None = None, **github: Any) -> Config:
    """Files under `root` (a throwaway App key, the secret); `github` adds GitHubApp fields."""
    (root / "app.pem").write_text("-----BEGIN PRIVATE KEY-----\nthrowaway\n-----END PRIVATE KEY-----\n")
    (root / "secret").write_text(secret + "\n")
    app = GitHubApp(app_id=1, private_key_file=root / "app.pem", webhook_secret_file=root / "secret", **github)
    tree = Tree(name="hello", url=str(root / "origin"), github=TreeGitHub(repo=REPO))
    return Config(data_dir=root / "data", github=app, trees=[tree], web=web or Web())
