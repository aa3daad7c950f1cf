"""Typed reads of a GitLab webhook's JSON, by path from the root, so that what is missing or wrong is named
by where it is (MalformedPayload "object_attributes.iid: not an integer"), never by quoting the payload."""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime
from typing import Any

import orjson

from bot.core.events import as_utc
from bot.core.mail_text import printable

_COMMIT_ID = re.compile(r"[0-9a-f]{40}|[0-9a-f]{64}")  # SHA-1 or SHA-256 repositories
# What git check-ref-format refuses anywhere in a name, plus a leading '-' (read as an option by git).
_BAD_REF = re.compile(r"^-|[\x00-\x20\x7f~^:?*\[\\]|\.\.|@\{|/\.|^\.|\.lock$|/$|\.$")
# A GitLab username, and each segment of a project's path: letters, digits, '_', '-' and '.', not
# starting with '-' (GitLab's own rule; git and shells would read it as an option), at most 255.
_GITLAB_NAME = r"(?!\.\.?(?:/|$))[A-Za-z0-9_.][A-Za-z0-9_.-]{0,254}"
_USERNAME = re.compile(_GITLAB_NAME)
_PROJECT_PATH = re.compile(rf"{_GITLAB_NAME}(?:/{_GITLAB_NAME})+")


class MalformedPayload(Exception):
    """The delivery is not JSON we can use, or lacks a field a handled event needs (the message names its path)."""


def load_object(body: bytes) -> dict[str, Any]:
    """The body as a JSON object."""
    try:
        # orjson refuses invalid UTF-8, lone surrogates and nesting past 1024 levels with the same error.
        payload = orjson.loads(body)
    except json.JSONDecodeError as exc:
        raise MalformedPayload(f"body is not JSON we can read: {exc.msg}") from None
    if not isinstance(payload, dict):
        raise MalformedPayload(f"body is a JSON {type(payload).__name__}, not an object")
    return payload


def quoted(value: str) -> str:
    """A value the sender chose, fit for a reason: quoted, and cut short."""
    return repr(value[:60] + "..." if len(value) > 60 else value)


def field(payload: dict[str, Any], path: str) -> Any:
    """The value at a dotted path, of any type (null included)."""
    node: Any = payload
    keys = path.split(".")
    for depth, key in enumerate(keys):
        if not isinstance(node, dict):
            raise MalformedPayload(f"{'.'.join(keys[:depth])}: not an object")
        if key not in node:
            raise MalformedPayload(f"{'.'.join(keys[: depth + 1])}: missing")
        node = node[key]
    return node


def present(payload: dict[str, Any], path: str) -> bool:
    """Whether `path` holds something other than null (GitLab leaves some fields out, and nulls others)."""
    node: Any = payload
    for key in path.split("."):
        if not isinstance(node, dict) or node.get(key) is None:
            return False
        node = node[key]
    return True


def text(payload: dict[str, Any], path: str) -> str:
    """A string, without NUL."""
    value = field(payload, path)
    if not isinstance(value, str):
        raise MalformedPayload(f"{path}: not a string")
    if "\x00" in value:
        # Nothing GitLab writes has one, and the store (PostgreSQL text) cannot keep one.
        raise MalformedPayload(f"{path}: has a NUL character")
    return value


def integer(payload: dict[str, Any], path: str) -> int:
    """A positive id."""
    value = field(payload, path)
    # bool is an int in Python; an id must not be a JSON true/false.
    if not isinstance(value, int) or isinstance(value, bool):
        raise MalformedPayload(f"{path}: not an integer")
    if not 0 < value < 2**63:  # ids are positive and kept as a 64-bit signed integer
        raise MalformedPayload(f"{path}: out of range")
    return value


def flag(payload: dict[str, Any], path: str) -> bool:
    """A JSON true or false."""
    value = field(payload, path)
    if not isinstance(value, bool):
        raise MalformedPayload(f"{path}: not a boolean")
    return value


def commit_id(payload: dict[str, Any], path: str) -> str:
    """A full commit id, in lower case."""
    value = text(payload, path)
    # A head goes to git commands: only a full lower-case id, never a name or an option.
    if not _COMMIT_ID.fullmatch(value):
        raise MalformedPayload(f"{path}: not a full commit id")
    return value


def ref_name(payload: dict[str, Any], path: str) -> str:
    """A branch or tag name that git accepts and cannot read as an option, that prints as it reads."""
    value = text(payload, path)
    # git takes any byte past ASCII's controls; a name also goes to logs and reports, where a C1 control,
    # a Unicode line separator or a bidi override would start a line or hide what follows it.
    if not value or _BAD_REF.search(value) or printable(value) != value:
        raise MalformedPayload(f"{path}: not a valid git ref name")
    return value


def username(payload: dict[str, Any], path: str) -> str:
    """A GitLab username: it names someone in logs, records and trust decisions, so nothing GitLab
    would not accept as one (no line break, no space, no control, no '/')."""
    value = text(payload, path)
    if not _USERNAME.fullmatch(value):
        raise MalformedPayload(f"{path}: not a GitLab username")
    return value


def project_path(payload: dict[str, Any], path: str) -> str:
    """A GitLab project's full path (`group/subgroup/project`): names as a username is, joined by '/',
    with no '.' or '..' segment (it names trees in logs, records and directories)."""
    value = text(payload, path)
    if not _PROJECT_PATH.fullmatch(value):
        raise MalformedPayload(f"{path}: not a GitLab project path")
    return value


def optional_time(payload: dict[str, Any], path: str) -> datetime | None:
    """A time GitLab wrote, aware UTC; None when absent or null. Unreadable: MalformedPayload."""
    if not present(payload, path):
        return None
    when = read_time(text(payload, path))
    if when is None:
        raise MalformedPayload(f"{path}: not a time")
    return when


def read_time(value: str) -> datetime | None:
    """GitLab's times, aware UTC: "2013-12-03T17:23:34Z", "2013-12-03 17:23:34 UTC" (older hooks),
    "2012-01-03T23:36:29+02:00" (commits); None when unreadable."""
    cleaned = value.strip()
    if cleaned.endswith(" UTC"):
        cleaned = cleaned[:-4] + "+00:00"
    try:
        # Python 3.11's fromisoformat reads 'Z', a space for 'T' and fractions of a second.
        when = datetime.fromisoformat(cleaned)
        return as_utc(when).astimezone(UTC)
    except (ValueError, OverflowError):
        return None
