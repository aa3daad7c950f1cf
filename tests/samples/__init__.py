"""Samples this project wrote itself, in documented formats (README.md): GitHub webhook bodies, a b4 series."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

SAMPLES = Path(__file__).resolve().parent
GITHUB = SAMPLES / "github"
# A 0/2 cover letter and two patches that apply on examples/hello, shaped as `b4 send` writes them.
B4_SERIES = SAMPLES / "mbox" / "b4-mathx-lcm-v1.mbox"


def github_sample_names() -> list[str]:
    """Every GitHub sample as `<X-GitHub-Event>/<file>.json`, sorted."""
    return sorted(str(path.relative_to(GITHUB)) for path in GITHUB.glob("*/*.json"))


def github_body(name: str) -> bytes:
    """The raw body of a sample, e.g. "pull_request/opened.json", as GitHub would deliver it."""
    return (GITHUB / name).read_bytes()


def github_payload(name: str) -> dict[str, Any]:
    """A fresh parsed copy of a sample, free to change in a test."""
    payload: dict[str, Any] = json.loads(github_body(name))
    return payload


def sent_now(payload: dict[str, Any]) -> dict[str, Any]:
    """The payload as a delivery of this moment: every time in it (`*_at`) set to now; changed in place.

    The samples' own times are fixed, and labgate takes a delivery whose times are all older than its
    replay window for a replay (GitHub's signature covers no timestamp).
    """
    now = datetime.now(UTC).replace(microsecond=0)

    def walk(node: Any) -> None:
        items = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else ()
        for key, value in list(items):
            if isinstance(key, str) and key.endswith("_at") and isinstance(value, str):
                node[key] = now.strftime("%Y-%m-%dT%H:%M:%SZ")
            elif isinstance(key, str) and key.endswith("_at") and type(value) is int:  # push payloads: epoch seconds
                node[key] = int(now.timestamp())
            else:
                walk(value)

    walk(payload)
    return payload
