"""GitLab webhook bodies for the scenarios, written for this project in the shapes GitLab documents
(doc/user/project/integrations/webhook_events.md): the fields labgate reads and their neighbours, for
any project, merge request and head, stamped with the time they are made (GitLab's token carries no
time, so labgate takes a body whose own times are all old for a replay)."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any


def gitlab_time(offset_s: float = 0.0) -> str:
    """Now, as GitLab writes times in hooks ("2026-12-07 12:00:00 UTC")."""
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(time.time() + offset_s))


@dataclass(frozen=True)
class Project:
    id: int
    path: str  # path_with_namespace
    default_branch: str = "main"

    def payload(self, base_url: str = "https://gitlab.example.org") -> dict[str, Any]:
        name = self.path.rsplit("/", 1)[-1]
        return {"id": self.id, "name": name, "path_with_namespace": self.path, "default_branch": self.default_branch,
                "web_url": f"{base_url}/{self.path}", "git_http_url": f"{base_url}/{self.path}.git",
                "git_ssh_url": f"git@gitlab.example.org:{self.path}.git", "visibility_level": 20}  # fmt: skip


@dataclass(frozen=True)
class User:
    id: int
    username: str

    def payload(self) -> dict[str, Any]:
        return {"id": self.id, "name": self.username.title(), "username": self.username,
                "avatar_url": None, "email": "[REDACTED]"}  # fmt: skip


def merge_request_hook(action: str, *, target: Project, source: Project, iid: int, head_sha: str, author: User,
                       user: User | None = None, title: str = "", source_branch: str = "topic",
                       target_branch: str = "main", oldrev: str | None = None, draft: bool = False,
                       changes: dict[str, Any] | None = None) -> dict[str, Any]:  # fmt: skip
    """A Merge Request Hook body; `oldrev` present means new commits (action "update")."""
    attributes: dict[str, Any] = {
        "id": 1000 + iid, "iid": iid, "title": title or f"change {iid}", "action": action, "state": "opened",
        "source_branch": source_branch, "target_branch": target_branch, "source_project_id": source.id,
        "target_project_id": target.id, "author_id": author.id, "draft": draft, "work_in_progress": draft,
        "created_at": gitlab_time(), "updated_at": gitlab_time(), "merge_status": "unchecked",
        "source": source.payload(), "target": target.payload(),
        "last_commit": {"id": head_sha, "message": "change", "timestamp": time.strftime("%Y-%m-%dT%H:%M:%S+00:00"),
                        "author": {"name": author.username, "email": "[REDACTED]"}},
        "url": f"https://gitlab.example.org/{target.path}/-/merge_requests/{iid}",
    }  # fmt: skip
    if oldrev is not None:
        attributes["oldrev"] = oldrev
    if action in ("close", "merge"):
        attributes["state"] = "closed" if action == "close" else "merged"
    return {"object_kind": "merge_request", "event_type": "merge_request", "user": (user or author).payload(),
            "project": target.payload(), "object_attributes": attributes, "changes": changes or {},
            "repository": {"name": target.path.rsplit("/", 1)[-1],
                           "homepage": f"https://gitlab.example.org/{target.path}"}}  # fmt: skip


def note_hook(note: str, *, target: Project, iid: int, seen_head_sha: str, by: User, action: str = "create",
              note_id: int | None = None, written_in_s: float = 1.0) -> dict[str, Any]:  # fmt: skip
    """A Note Hook body for a note on merge request `iid`; `seen_head_sha` is the head GitLab showed
    (merge_request.last_commit.id). The note is stamped `written_in_s` from now: GitLab stamps to the
    second, and a note must be after the head labgate heard of."""
    stamp = gitlab_time(written_in_s)
    return {
        "object_kind": "note", "event_type": "note", "user": by.payload(), "project_id": target.id,
        "project": target.payload(),
        "object_attributes": {"id": note_id or int(time.time() * 1000) % 10**9, "note": note,
                              "noteable_type": "MergeRequest", "author_id": by.id, "created_at": stamp,
                              "updated_at": stamp, "project_id": target.id, "system": False, "action": action},
        "merge_request": {"id": 1000 + iid, "iid": iid, "target_project_id": target.id, "state": "opened",
                          "last_commit": {"id": seen_head_sha}, "updated_at": stamp},
    }  # fmt: skip


def push_hook(*, project: Project, ref: str, before: str, after: str, by: User) -> dict[str, Any]:
    """A Push Hook body (before 40 zeros: the branch was created)."""
    return {
        "object_kind": "push", "event_name": "push", "before": before, "after": after, "ref": ref,
        "checkout_sha": after, "user_id": by.id, "user_name": by.username.title(), "user_username": by.username,
        "project_id": project.id, "project": project.payload(),
        "commits": [{"id": after, "message": "push", "timestamp": time.strftime("%Y-%m-%dT%H:%M:%S+00:00")}],
        "total_commits_count": 1,
    }  # fmt: skip
