"""Addresses of pipeline pages: a private tree's carry a signed, expiring link; the key that signs them.

Why a token in the query string is acceptable here: the link is meant to be clicked by a
maintainer from a forge report (a check run's Details link), and a link is all a forge can
carry; a header or a cookie would need a login we do not have. What makes it safe enough:
it opens one pipeline only and expires (web.link_lifetime_days), and the pages it opens send
`Referrer-Policy: no-referrer` (no Referer to a third party) and `Cache-Control: private,
no-store` (no shared cache keeps the page). Operators use a bearer token in a header instead,
which opens everything and therefore never goes in a URL.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import time
from pathlib import Path
from urllib.parse import quote

from bot.core.links import MIN_KEY_BYTES, sign_pipeline_link
from bot.host.config import Config
from bot.host.stores import Runtime
from bot.store.models import Job
from workers.errors import ConfigError

LINK_KEY_FILE = "link-key"
LINK_PARAM = "token"
_KEYS: dict[Path, bytes] = {}  # read once per process: every page view checks a MAC


def tree_is_private(config: Config, tree_name: str) -> bool:
    tree = config.tree(tree_name)
    return tree is not None and tree.private


def public_base_url(config: Config) -> str:
    return (config.web.public_url or f"http://{config.web.host}:{config.web.port}").rstrip("/")


def link_key_path(config: Config, data_dir: Path) -> Path:
    return config.web.link_key_file or data_dir / LINK_KEY_FILE


def read_link_key(config: Config, data_dir: Path) -> bytes:
    """The link-signing key: the configured file, else one made in the data dir on first use.

    Its own random key, never derived from the webhook secret: whoever learns one (GitHub holds
    the webhook secret too) must not be able to mint page links."""
    path = link_key_path(config, data_dir)
    if path not in _KEYS:
        if config.web.link_key_file is None and not path.exists():
            _make_key_file(path)
        _KEYS[path] = _read_key_file(path, configured=config.web.link_key_file is not None)
    return _KEYS[path]


def link_token(config: Config, data_dir: Path, pipeline_id: int, now: float | None = None) -> str:
    """A token opening this pipeline's pages for web.link_lifetime_days from now."""
    issued = int(time.time() if now is None else now)
    expires = issued + config.web.link_lifetime_days * 86400
    return sign_pipeline_link(read_link_key(config, data_dir), pipeline_id, expires)


def page_url(config: Config, data_dir: Path, path: str, tree_name: str, pipeline_id: int) -> str:
    """The address of a page of this pipeline (`path`, e.g. /jobs/7), signed when its tree is private."""
    url = public_base_url(config) + path
    if tree_is_private(config, tree_name):
        url += f"?{LINK_PARAM}={quote(link_token(config, data_dir, pipeline_id), safe='')}"
    return url


def job_page_url(runtime: Runtime, job: Job) -> str:
    """A forge report's link to a job's page (a check run's details_url)."""
    tree_name = job.pipeline.revision.change.tree.name
    return page_url(runtime.config, runtime.data_dir, f"/jobs/{job.id}", tree_name, job.pipeline_id)


def pipeline_page_url(config: Config, data_dir: Path, pipeline_id: int, tree_name: str) -> str:
    return page_url(config, data_dir, f"/pipelines/{pipeline_id}", tree_name, pipeline_id)


def _make_key_file(path: Path) -> None:
    """Write a new random key, atomically: two processes starting at once end up with one key."""
    path.parent.mkdir(parents=True, exist_ok=True)
    scratch = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}")
    fd = os.open(scratch, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    try:
        with os.fdopen(fd, "w") as handle:
            handle.write(secrets.token_hex(32) + "\n")
        with contextlib.suppress(FileExistsError):  # another process wrote it first: theirs wins
            os.link(scratch, path)  # unlike a rename, never replaces a key already in use
    finally:
        scratch.unlink(missing_ok=True)


def _read_key_file(path: Path, *, configured: bool) -> bytes:
    where = "web.link_key_file" if configured else "the link key"
    try:
        key = path.read_bytes().strip()
    except OSError as exc:
        raise ConfigError(f"{where}: cannot read {path}: {exc.strerror}") from exc
    if len(key) < MIN_KEY_BYTES:
        raise ConfigError(f"{where}: {path} holds {len(key)} bytes, at least {MIN_KEY_BYTES} are needed "
                          "(e.g. openssl rand -hex 32)")  # fmt: skip
    return key
