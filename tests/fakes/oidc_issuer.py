"""FakeOidcIssuer: a CI platform's OIDC issuer (GitHub Actions or GitLab CI), served on 127.0.0.1, recording requests.

It serves what a verifier reads (../shared/reference/oidc.md): the discovery document at
`<issuer>/.well-known/openid-configuration`, naming the JWKS at `/.well-known/jwks` (GitHub's shape) or
`/oauth/discovery/keys` (GitLab's); and what a GitHub job calls for its token, `GET /token?audience=...`
with `Authorization: Bearer <request token>` answering `{"value": JWT}` (ACTIONS_ID_TOKEN_REQUEST_URL and
ACTIONS_ID_TOKEN_REQUEST_TOKEN). It signs with RSA keys made at start, rotates them, and mints tokens
whose claims and headers copy the documented shapes, with any claim or header changed or dropped.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import secrets
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any, Literal

from cryptography.hazmat.primitives import serialization
from joserfc import jwt
from joserfc.jwk import RSAKey
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from tests.fakes.served import RequestLog, ServedFake

Flavour = Literal["github", "gitlab"]
DROP: Any = object()  # as a claim's or header's override: leave it out of the token
GITHUB_DEFAULT_AUDIENCE = "https://github.com/nickolashkraus"  # the owner URL GitHub sends when no audience is asked
_JWKS_PATH = {"github": "/.well-known/jwks", "gitlab": "/oauth/discovery/keys"}
# rubygems.org's copy of GitHub's discovery document (test/factories/oidc/provider.rb), claims_supported as there.
_GITHUB_CLAIMS_SUPPORTED = [
    "sub", "aud", "exp", "iat", "iss", "jti", "nbf", "ref", "repository", "repository_id", "repository_owner",
    "repository_owner_id", "run_id", "run_number", "run_attempt", "actor", "actor_id", "workflow", "workflow_ref",
    "workflow_sha", "head_ref", "base_ref", "event_name", "ref_type", "environment", "environment_node_id",
    "job_workflow_ref", "job_workflow_sha", "repository_visibility", "runner_environment",
]  # fmt: skip
_GITLAB_CLAIMS_SUPPORTED = [
    "iss", "sub", "aud", "exp", "iat", "nbf", "jti", "namespace_id", "namespace_path", "project_id", "project_path",
    "user_id", "user_login", "user_email", "pipeline_id", "pipeline_source", "job_id", "ref", "ref_type", "ref_path",
    "ref_protected", "environment", "environment_protected", "deployment_tier", "runner_id", "runner_environment",
    "sha", "ci_config_ref_uri", "ci_config_sha", "project_visibility",
]  # fmt: skip


def github_claims(issuer: str, audience: str, iat: int, /, **overrides: Any) -> dict[str, Any]:
    """A GitHub Actions id-token's claims: the real token of oidc.md (nickolashkraus/flask-oidc, ids as
    strings), on the ref refs/heads/main, with GitHub's times (exp = iat + 300, nbf = iat - 600)."""
    workflow = "nickolashkraus/flask-oidc/.github/workflows/integration.yml@refs/heads/main"
    sha = "a501fa6b" + "0" * 32  # the note keeps only the real sha's first 8 digits
    claims = {
        "jti": str(uuid.uuid4()), "sub": "repo:nickolashkraus/flask-oidc:ref:refs/heads/main", "aud": audience,
        "ref": "refs/heads/main", "sha": sha, "repository": "nickolashkraus/flask-oidc",
        "repository_owner": "nickolashkraus", "repository_owner_id": "14130403", "run_id": "3989419862",
        "run_number": "12", "run_attempt": "1", "repository_visibility": "public", "repository_id": "588298808",
        "actor_id": "14130403", "actor": "nickolashkraus", "workflow": "Integration", "head_ref": "", "base_ref": "",
        "event_name": "workflow_dispatch", "ref_type": "branch", "workflow_ref": workflow, "workflow_sha": sha,
        "job_workflow_ref": workflow, "job_workflow_sha": sha, "runner_environment": "github-hosted",
        "iss": issuer, "nbf": iat - 600, "exp": iat + 300, "iat": iat,
    }  # fmt: skip
    return _overridden(claims, overrides)


def gitlab_claims(issuer: str, audience: str, iat: int, /, **overrides: Any) -> dict[str, Any]:
    """A GitLab CI id-token's claims: GitLab's documented example (project my-group/my-project, id 20),
    on refs/heads/main, living 5 minutes (a job without a timeout), nbf = iat - 5 as in the example."""
    claims = {
        "namespace_id": "72", "namespace_path": "my-group", "project_id": "20", "project_path": "my-group/my-project",
        "user_id": "1", "user_login": "sample-user", "user_email": "sample-user@example.com", "pipeline_id": "574",
        "pipeline_source": "push", "job_id": "302", "ref": "main", "ref_type": "branch", "ref_path": "refs/heads/main",
        "ref_protected": "true", "runner_id": 1, "runner_environment": "self-hosted",
        "sha": "714a629c0b401fdce83e847fc9589983fc6f46bc", "project_visibility": "private",
        "ci_config_ref_uri": "gitlab.example.com/my-group/my-project//.gitlab-ci.yml@refs/heads/main",
        "ci_config_sha": "714a629c0b401fdce83e847fc9589983fc6f46bc", "jti": str(uuid.uuid4()), "iss": issuer,
        "iat": iat, "nbf": iat - 5, "exp": iat + 300,
        "sub": "project_path:my-group/my-project:ref_type:branch:ref:main", "aud": audience,
    }  # fmt: skip
    return _overridden(claims, overrides)


def compact(header: dict[str, Any], claims: dict[str, Any], sign: Callable[[bytes], bytes]) -> str:
    """A JWS compact serialization signed by `sign` over its signing input, whatever the header says:
    how an attacker builds `alg: none` or HS256 tokens that no JOSE library would sign."""
    signing_input = _b64(json.dumps(header).encode()) + b"." + _b64(json.dumps(claims).encode())
    return (signing_input + b"." + _b64(sign(signing_input))).decode()


def public_pem(key: RSAKey) -> bytes:
    """The public half of `key` as PEM: what the HS256 confusion attack uses as the HMAC secret."""
    return key.public_key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)


class SettableClock:
    """Epoch seconds that move only when told: one for the issuer's `iat` and the verifier's now."""

    def __init__(self, now: float = 1_765_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@dataclass(frozen=True)
class RecordedRequest:
    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]  # names in lower case
    status: int


class FakeOidcIssuer(ServedFake):
    """`with FakeOidcIssuer("github") as issuer:` serves at `issuer.url`, which its tokens carry as `iss`."""

    def __init__(self, flavour: Flavour = "github", *, clock: Callable[[], float] = time.time,
                 audience: str = "https://labgate.example", path: str = "") -> None:  # fmt: skip
        self.flavour = flavour
        self.clock = clock
        self.audience = audience  # minted tokens' default aud
        self.path = path  # e.g. "/octo-enterprise" for GHEC's enterprise issuer
        self.signing_key = self._new_key()
        self.published = [self.signing_key, self._new_key()]  # GitHub publishes two keys at a time
        self.discovery_overrides: dict[str, Any] = {}
        self.answer_instead: dict[str, tuple[int, bytes]] = {}  # "discovery" / "jwks" -> (status, body)
        self.redirect_to: str | None = None  # discovery and JWKS answer 302 to the same path there
        self.trickle_s: float | None = None  # the JWKS comes one byte per this many seconds
        self.request_token = secrets.token_urlsafe(32)  # ACTIONS_ID_TOKEN_REQUEST_TOKEN
        self.job_claims: dict[str, Any] = {}  # overrides of the claims /token mints
        self._requests: RequestLog[RecordedRequest] = RequestLog()
        self.app = Starlette(routes=[
            Route(f"{path}/.well-known/openid-configuration", self._discovery),
            Route(f"{path}{_JWKS_PATH[flavour]}", self._jwks),
            Route("/token", self._token),
        ])  # fmt: skip
        self.serve(self.app, "FakeOidcIssuer")


    @property
    def url(self) -> str:
        return self.base_url + self.path

    @property
    def jwks_uri(self) -> str:
        return self.url + _JWKS_PATH[self.flavour]

    @property
    def id_token_request_url(self) -> str:
        """ACTIONS_ID_TOKEN_REQUEST_URL: the runner's carries a query, to which the toolkit appends &audience=."""
        return f"{self.base_url}/token?api-version=2.0"

    # ---- keys ----------------------------------------------------------------------------------------------

    def rotate(self, keep_previous: bool = True) -> RSAKey:
        """Sign with a key never published before, publishing it from now on (with the previous one, or alone)."""
        key = self._new_key()
        self.published = [key, self.signing_key] if keep_previous else [key]
        self.signing_key = key
        return key

    def stranger_key(self) -> RSAKey:
        """An RSA key this issuer does not publish (an attacker's)."""
        return self._new_key()

    def _new_key(self) -> RSAKey:
        key = RSAKey.generate_key(2048, auto_kid=False)
        der = key.public_key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
        # GitHub's kid is a SHA-1 in upper-case hex (78167F72...), as its x5t is the same digest in base64url;
        # GitHub's are of the certificate in x5c, which this fake does not make: ours are of the public key.
        # GitLab's kid is the key's RFC 7638 thumbprint.
        kid = hashlib.sha1(der).hexdigest().upper() if self.flavour == "github" else key.thumbprint()
        return RSAKey.import_key(key.as_dict(private=True), parameters={"kid": kid, "use": "sig", "alg": "RS256"})

    def jwks(self) -> dict[str, Any]:
        keys = []
        for key in self.published:
            public = {name: value for name, value in key.as_dict(private=False).items() if name != "key_ops"}
            if self.flavour == "github":
                public["x5t"] = _x5t(key)
            keys.append(public)
        return {"keys": keys}

    # ---- tokens --------------------------------------------------------------------------------------------

    def claims(self, **overrides: Any) -> dict[str, Any]:
        """This flavour's documented claims, issued now by this issuer to `audience`, with overrides (DROP removes)."""
        made = github_claims if self.flavour == "github" else gitlab_claims
        return made(self.url, self.audience, int(self.clock()), **overrides)

    def header(self, key: RSAKey | None = None, **overrides: Any) -> dict[str, Any]:
        key = key or self.signing_key
        if self.flavour == "github":
            header = {"typ": "JWT", "alg": "RS256", "x5t": _x5t(key), "kid": key.kid}
        else:
            header = {"kid": key.kid, "typ": "JWT", "alg": "RS256"}
        return _overridden(header, overrides)

    def mint(self, claims: dict[str, Any] | None = None, header: dict[str, Any] | None = None, *,
             key: RSAKey | None = None) -> str:  # fmt: skip
        """A token signed by `key` (default: the current signing key) with this flavour's claims and header,
        changed by `claims` and `header` (a DROP value removes the entry)."""
        key = key or self.signing_key
        full_claims = self.claims(**(claims or {}))
        full_header = self.header(key, **(header or {}))
        return jwt.encode(full_header, full_claims, key, algorithms=[full_header.get("alg", "RS256")],
                          default_type=None)  # fmt: skip

    # ---- what was asked ------------------------------------------------------------------------------------

    def requests(self) -> list[RecordedRequest]:
        return self._requests.all()

    def requests_to(self, path_regex: str) -> list[RecordedRequest]:
        return self._requests.matching("GET", path_regex)

    @property
    def discovery_fetches(self) -> int:
        return len(self.requests_to(rf"{self.path}/\.well-known/openid-configuration"))

    @property
    def jwks_fetches(self) -> int:
        return len(self.requests_to(self.path + _JWKS_PATH[self.flavour].replace(".", r"\.")))

    # ---- HTTP ----------------------------------------------------------------------------------------------

    def _answer(self, request: Request, name: str, document: Any) -> Response:
        if self.redirect_to is not None:
            self._record(request, 302)
            return Response(status_code=302, headers={"Location": self.redirect_to + request.url.path})
        status, body = self.answer_instead.get(name, (200, json.dumps(document).encode()))
        self._record(request, status)
        if name == "jwks" and self.trickle_s is not None:
            return StreamingResponse(_trickled(body, self.trickle_s), status, media_type="application/json")
        return Response(body, status, media_type="application/json")

    async def _discovery(self, request: Request) -> Response:
        document: dict[str, Any] = {"issuer": self.url, "jwks_uri": self.jwks_uri}
        if self.flavour == "github":
            document |= {"subject_types_supported": ["public", "pairwise"], "response_types_supported": ["id_token"],
                         "claims_supported": _GITHUB_CLAIMS_SUPPORTED, "id_token_signing_alg_values_supported":
                         ["RS256"], "scopes_supported": ["openid"]}  # fmt: skip
        else:
            document |= {"authorization_endpoint": f"{self.url}/oauth/authorize",
                         "token_endpoint": f"{self.url}/oauth/token", "userinfo_endpoint": f"{self.url}/oauth/userinfo",
                         "scopes_supported": ["openid", "profile", "email"], "response_types_supported": ["code"],
                         "subject_types_supported": ["public"], "id_token_signing_alg_values_supported": ["RS256"],
                         "claim_types_supported": ["normal"], "claims_supported": _GITLAB_CLAIMS_SUPPORTED}  # fmt: skip
        return self._answer(request, "discovery", _overridden(document, self.discovery_overrides))

    async def _jwks(self, request: Request) -> Response:
        return self._answer(request, "jwks", self.jwks())

    async def _token(self, request: Request) -> Response:
        if request.headers.get("authorization") != f"Bearer {self.request_token}":
            self._record(request, 401)
            return JSONResponse({"message": "Bad credentials"}, 401)
        claims = dict(self.job_claims)
        audience = request.query_params.get("audience")
        claims.setdefault("aud", audience if audience is not None else GITHUB_DEFAULT_AUDIENCE)
        self._record(request, 200)
        return JSONResponse({"value": self.mint(claims)})

    def _record(self, request: Request, status: int) -> None:
        headers = {name.lower(): value for name, value in request.headers.items()}
        self._requests.append(RecordedRequest(request.method, request.url.path, dict(request.query_params),
                                              headers, status))  # fmt: skip


async def _trickled(body: bytes, interval_s: float) -> AsyncIterator[bytes]:
    for index in range(len(body)):
        yield body[index : index + 1]
        await asyncio.sleep(interval_s)


def _overridden(values: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    merged = values | overrides
    return {name: value for name, value in merged.items() if value is not DROP}


def _x5t(key: RSAKey) -> str:
    der = key.public_key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return _b64(hashlib.sha1(der).digest()).decode()


def _b64(data: bytes) -> bytes:
    return base64.urlsafe_b64encode(data).rstrip(b"=")
