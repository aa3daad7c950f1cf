"""bot/core does no I/O: it imports nothing that talks to a network, a disk or a process."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

CORE = Path(__file__).resolve().parents[3] / "bot" / "core"
ALLOWED_TOP_LEVEL = {
    "__future__", "collections", "dataclasses", "typing", "re", "json", "shlex", "enum",
    "functools", "itertools", "datetime", "hashlib", "hmac", "string", "textwrap", "fnmatch",
    "math", "pydantic", "yaml", "bot", "workers",
    # Mail as bytes in, text out (bot/core/diff_paths.py reads a patch's parts as git am would): parsing
    # and transfer decodings only; nothing of them opens a file or a socket.
    "email", "binascii", "quopri",
    # Standard Webhooks keys and signatures are base64 (bot/core/standard_webhooks.py): a codec, no I/O.
    "base64",
    # Whether a host is this machine (bot/core/links.py is_loopback): parsing an address, no look-up.
    "ipaddress",
}  # fmt: skip
ALLOWED_FIRST_PARTY = ("bot.core", "workers.errors", "workers.spec")
# Third-party I/O libraries (the stdlib ones are kept out by the allowlist above;
# pydantic itself imports socket through importlib.metadata, so it cannot be checked here).
IO_MODULES = ("sqlalchemy", "celery", "kombu", "redis", "httpx", "requests", "github", "gitlab",
              "psycopg", "labgrid", "starlette", "uvicorn", "bot.store", "workers.app")  # fmt: skip


def imported_names(path: Path) -> list[str]:
    names = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.append(node.module)
    return names


def test_core_imports_only_pure_modules() -> None:
    offenders = []
    for path in sorted(CORE.glob("*.py")):
        for name in imported_names(path):
            top = name.split(".")[0]
            first_party_ok = top not in ("bot", "workers") or name.startswith(ALLOWED_FIRST_PARTY)
            if top not in ALLOWED_TOP_LEVEL or not first_party_ok:
                offenders.append(f"{path.name}: {name}")
    assert offenders == []


def test_importing_core_loads_no_io_library() -> None:
    modules = [f"bot.core.{p.stem}" for p in CORE.glob("*.py") if p.stem != "__init__"]
    code = (
        "import sys\n"
        + "".join(f"import {m}\n" for m in modules)
        + f"print(sorted(m for m in sys.modules if m.startswith({IO_MODULES!r})))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
