"""Third-party samples in ../shared/fixtures, for the conformance tests only: found at test time, or skipped.

The project's own tests read tests/samples/, which a clone carries. The conformance tests check
labgate against files others wrote (octokit's webhook examples, GitHub's OpenAPI description, a b4
series); those sit beside the clone, in ../shared/fixtures, where CI always has them and a clone
elsewhere may not. So a missing folder skips the test with its path, and fails it under CI=true.
`$LABGATE_SHARED_FIXTURES` points elsewhere (a tree that keeps them in another place, or a test
proving what happens without them).
"""

from __future__ import annotations

import os
from pathlib import Path

from tests.requirements import missing

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_FIXTURES_ENV = "LABGATE_SHARED_FIXTURES"


def shared_fixtures_root() -> Path:
    """Where the third-party fixtures are looked for (nothing is checked here)."""
    configured = os.environ.get(SHARED_FIXTURES_ENV)
    return Path(configured) if configured else REPO_ROOT.parent / "shared" / "fixtures"


def shared_fixture(relative: str) -> Path:
    """`relative` under the shared fixtures; a test calling this is skipped (failed under CI=true) without it."""
    path = shared_fixtures_root() / relative
    if not path.exists():
        missing(f"../shared/fixtures missing at {path} (third-party samples for a conformance test)")
    return path


def shared_fixture_names(relative: str, pattern: str) -> list[str]:
    """File names under `relative` matching `pattern`, to parametrize over at collection.

    Without the folder the list is one placeholder name rather than empty, so that the test is
    still collected and runs, and shared_fixture() then says why it cannot.
    """
    folder = shared_fixtures_root() / relative
    names = sorted(str(p.relative_to(folder)) for p in folder.glob(pattern)) if folder.is_dir() else []
    return names or [f"(no {relative} fixtures)"]
