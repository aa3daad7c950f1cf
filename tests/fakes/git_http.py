"""Git's smart HTTP protocol for a fake forge: `git http-backend` behind HTTP Basic auth, as GitHub serves clones.

GitHub answers an unauthenticated request for a private repository with 401 and
`WWW-Authenticate: Basic realm="GitHub"`, and accepts an installation token as the password
(user `x-access-token`). This endpoint does the same, asks the forge whether the token may
read the repository, and hands the request to the real `git http-backend` CGI.
"""

from __future__ import annotations

import asyncio
import base64
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from starlette.requests import Request
from starlette.responses import Response

# (full repository name, the Basic credentials or None) -> may this caller read it?
Authorize = Callable[[str, tuple[str, str] | None], bool]


@dataclass(frozen=True)
class ServedRepo:
    full_name: str
    path: Path  # a git directory (bare) or a work tree's .git
    private: bool


def basic_credentials(header: str | None) -> tuple[str, str] | None:
    if not header or not header.lower().startswith("basic "):
        return None
    try:
        user, _, password = base64.b64decode(header[6:].strip()).decode().partition(":")
    except (ValueError, UnicodeDecodeError):
        return None
    return user, password


async def serve_git(request: Request, repo: ServedRepo, authorize: Authorize) -> Response:
    """Answer one smart-HTTP request (info/refs or git-upload-pack); pushes are refused."""
    service = request.query_params.get("service", "")
    rest = request.path_params.get("rest", "")
    if "receive-pack" in service or rest.endswith("git-receive-pack"):
        return Response("pushes are not served here\n", status_code=403)
    credentials = basic_credentials(request.headers.get("authorization"))
    if repo.private and not authorize(repo.full_name, credentials):
        if credentials is None:
            return Response("Authentication required\n", status_code=401,
                            headers={"WWW-Authenticate": 'Basic realm="GitHub"'})  # fmt: skip
        return Response("Repository not found.\n", status_code=404)
    body = await request.body()
    env = {
        "GIT_PROJECT_ROOT": str(repo.path.parent),
        "GIT_HTTP_EXPORT_ALL": "1",
        "PATH_INFO": f"/{repo.path.name}/{rest}",
        "QUERY_STRING": request.url.query,
        "REQUEST_METHOD": request.method,
        "CONTENT_TYPE": request.headers.get("content-type", ""),
        "CONTENT_LENGTH": str(len(body)),
        "HTTP_GIT_PROTOCOL": request.headers.get("git-protocol", ""),
        "REMOTE_USER": credentials[0] if credentials else "",
        "PATH": "/usr/bin:/bin",
    }
    if request.headers.get("content-encoding") == "gzip":
        env["HTTP_CONTENT_ENCODING"] = "gzip"
    process = await asyncio.create_subprocess_exec(
        "git", "http-backend", env=env, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, _ = await process.communicate(body)
    head, _, payload = out.partition(b"\r\n\r\n")
    status, headers = 200, {}
    for line in head.decode(errors="replace").split("\r\n"):
        name, _, value = line.partition(":")
        if name.lower() == "status":
            status = int(value.split()[0])
        elif name:
            headers[name] = value.strip()
    return Response(payload, status_code=status, headers=headers)
