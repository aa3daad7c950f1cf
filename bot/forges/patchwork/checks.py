"""Patchwork checks as a JobStatusSink: each job's report POSTed as a check on every patch of the series.

Patchwork checks are per patch and never edited: a new POST with the same context supersedes the
last one on the patch page. So series-level results go on every patch (as KPD does), and an update
is a new POST on every patch too. A retried create or update posts the same state again: harmless
there, which is why find() answers None rather than looking.
"""

from __future__ import annotations

import hashlib
import logging
import re
from collections.abc import Sequence

from bot.core.mail_text import one_line
from bot.forges.patchwork.client import PatchworkClient
from bot.reporting.sinks import JobReport, Verdict

log = logging.getLogger(__name__)

MAX_CONTEXT = 255  # Patchwork's Check.context: a slug of at most 255 characters
MAX_TARGET_URL = 200  # Check.target_url: a URL of at most 200 characters
MAX_DESCRIPTION = 500  # a TextField there; a check's description is one line on the patch page

# Our infrastructure's failures and cut-short jobs never say `fail`: that word blames the patch.
STATE_OF: dict[Verdict, str] = {
    "pending": "pending",
    "pass": "success",
    "fail": "fail",
    "warning": "warning",
    "neutral": "warning",
    "cancelled": "warning",
    "timed-out": "warning",
}

_TOKEN = r"[A-Za-z0-9_]+"
# Labels of this form map to their plain slug ("labgate / build x86_64" -> "labgate-build-x86_64"), and
# only they: the first " / " and each later " " become "-", and tokens hold no "-", so the slug gives
# the label back. Any other label gets a digest of itself after "--", which no plain slug contains.
_PLAIN_LABEL = re.compile(rf"{_TOKEN} / {_TOKEN}( {_TOKEN})*")


def check_context(label: str) -> str:
    """A Patchwork context for a job label: a slug ([A-Za-z0-9_-], at most 255), stable, and distinct
    for distinct labels (plain labels exactly, others up to a 48-bit digest)."""
    readable = re.sub(r"[^A-Za-z0-9_]+", "-", label).strip("-") or "labgate"
    if _PLAIN_LABEL.fullmatch(label) and len(readable) <= MAX_CONTEXT:
        return readable
    digest = hashlib.sha256(label.encode()).hexdigest()[:12]
    return f"{readable[: MAX_CONTEXT - len(digest) - 2].rstrip('-')}--{digest}"


def check_state(report: JobReport) -> str:
    """pending / success / warning / fail for the report; a job not done yet is pending."""
    if report.stage != "done":
        return "pending"
    return STATE_OF[report.verdict]


class PatchworkChecksSink:
    """Checks for one series: `patch_ids` are every patch of it, in order."""

    forge = "patchwork"

    def __init__(self, client: PatchworkClient, patch_ids: Sequence[int]) -> None:
        if not patch_ids:
            raise ValueError("a series without patches has nowhere to put checks")
        self.client = client
        self.patch_ids = tuple(patch_ids)

    def create(self, report: JobReport) -> int:
        """POST the report on every patch. Patchwork's check ids are per patch, so there is no one id: 0."""
        self._post_everywhere(report)
        return 0

    def update(self, status_id: int, report: JobReport) -> None:
        """A new POST on every patch: Patchwork shows the latest check of each context."""
        self._post_everywhere(report)

    def find(self, report: JobReport) -> int | None:
        """None: a create whose answer was lost is simply posted again, and a repeated check of the
        same state and context changes nothing a maintainer sees."""
        return None

    def _post_everywhere(self, report: JobReport) -> None:
        target_url: str | None = report.details_url or None
        if target_url is not None and len(target_url) > MAX_TARGET_URL:
            # Patchwork refuses the whole check for a long URL; the check without its link still tells.
            log.warning("job %d: page URL is %d characters, over Patchwork's %d: check posted without it",
                        report.job_id, len(target_url), MAX_TARGET_URL)  # fmt: skip
            target_url = None
        # A refusal quotes the submitter's Subject and Message-Id: no control character reaches Patchwork.
        title = one_line(report.title)
        description = title if len(title) <= MAX_DESCRIPTION else title[: MAX_DESCRIPTION - 1] + "…"
        context, state = check_context(report.label), check_state(report)
        # Every patch, in order; an error stops here and the caller's retry posts them all again.
        for patch_id in self.patch_ids:
            self.client.post_check(patch_id, state=state, context=context, target_url=target_url,
                                   description=description)  # fmt: skip
