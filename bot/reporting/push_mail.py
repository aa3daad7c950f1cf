"""A staging push heard from a plain git remote (bot/forges/gitremote), reported by mail.

No forge shows such a push (git.kernel.org has no checks), so its results go where the tree says:
the results page, and one mail when its pipeline is done, to the tree's `mail.push_to` (the
maintainer or the list), in a thread of its own (a push has no mail to reply to). The mail says
first how this head compares with the branch's previous one: new failures since then, or that
the branch was rewritten and nothing is compared. Cancelled runs and our own failures mail
nobody. This is the one place the staging route meets the mail forge, as bot/intake/mailing_list.py
is for series: neither forge package may import the other.
"""

from __future__ import annotations

from dataclasses import replace

from bot.forges.gitremote.poller import SOURCE
from bot.forges.mail.message import MailThread
from bot.forges.mail.reporter import mail_sink_for
from bot.host.stores import Runtime
from bot.reporting.job_reports import post_merge_comparison
from bot.reporting.summary import pipeline_summary
from bot.store.models import Pipeline


def is_staging_poll_pipeline(runtime: Runtime, pipeline_id: int) -> bool:
    with runtime.store.session() as session:
        pipeline = session.get(Pipeline, pipeline_id)
        return pipeline is not None and pipeline.revision.change.source == SOURCE


def report_staging_push(runtime: Runtime, pipeline_id: int) -> str:
    """Mail the push's report once its pipeline is done (idempotent: the sink sends it once); what was done."""
    with runtime.store.session() as session:
        pipeline = session.get(Pipeline, pipeline_id)
        if pipeline is None or pipeline.state != "done" or pipeline.result == "cancelled":
            return "not done yet, or cancelled: nothing to mail"
        revision = pipeline.revision
        tree = runtime.config.tree(revision.change.tree.name)
        branch = revision.change.external_id.partition("@")[2]  # bot/forges/gitremote: TREE@BRANCH
        head = revision.head_sha or ""
        compared = post_merge_comparison(session, pipeline)
    if tree is None or not tree.mail.report:
        return "the tree mails no reports"
    thread = MailThread(f"labgate: {tree.name} {branch} at {head[:12]}")
    sink = mail_sink_for(runtime.store, runtime.config.smtp, tree.mail, thread=thread, submitter=None)
    reproduce = f"labgate try {tree.url} --ref {head}"
    summary = pipeline_summary(runtime, pipeline_id, reproduce=reproduce)
    if sink is None or summary is None:
        return "the tree mails no reports"
    sink.publish(replace(summary, notes=(compared, *summary.notes) if compared else summary.notes))
    return "mailed (once)"
