"""The mailing-list route: Patchwork series in, graded by what their mail proves, checks and one mail out.

This joins two forge packages that must not import each other (bot/forges/patchwork, bot/forges/mail):
the series' mails are read and their sender graded here, and a series' pipeline is reported here to
Patchwork (checks on every patch) and, once done, by mail into the series' thread.

Trust, as honestly as the parts allow today. A maintainer is a `mail.maintainers` address, or an
M:/R: address in `mail.maintainers_file` at the series' base for a path the series touches (read by
the checkout worker; until its answer comes the allowlist alone counts: bot/intake/base_maintainers.py).
- verified (a patatt attestation by a key in the tree's `mail.keyring`, or DKIM by the sender's
  domain) from a keyring identity or a maintainer: runs like a trusted change;
- a maintainer's From: proven by nothing: only `mail.unverified_tier` (default none: it waits);
- anyone else waits for `labgate approve` or the delegation of every patch.
DKIM keys come from DNS through the host's resolvers (`mail.dkim_dns: system`, cached, bounded:
bot/forges/mail/dns_keys.py), or not at all (`none`: DKIM reads unverifiable); tests pass a resolver
of local keys (`resolve_dkim_key`).
Patchwork re-renders mail, so signatures are checked on each patch's original: the tree's public-inbox
archive's copy, else the mail rebuilt from Patchwork's JSON, else the mail as served, each only when it
carries the very diff Patchwork serves (bot/intake/original_mail.py). A signature rewriting broke reads
unverifiable, never "invalid sender".
"""

from __future__ import annotations

import email
import email.policy
import logging
from collections.abc import Callable, Sequence
from email.message import EmailMessage
from functools import cache

from bot.core.series import IdentityGrade, Mail, Series, parse_series
from bot.forges.mail.dns_keys import DnsKeyResolver
from bot.forges.mail.domain_signature import ResolveDkimKey
from bot.forges.mail.grading import Method
from bot.forges.mail.identity import IdentityResult, verify_identity
from bot.forges.mail.keyring import Keyring
from bot.forges.mail.message import series_thread
from bot.forges.mail.original import split_mboxrd
from bot.forges.mail.reporter import mail_sink_for
from bot.forges.patchwork.client import PatchworkClient
from bot.forges.patchwork.desk import SOURCE, SeriesRecord, load_series
from bot.forges.patchwork.intake import (
    ReadSeries,
    SenderTrust,
    SeriesIntake,
    SeriesReader,
    base_branches_of,
    base_of,
)
from bot.forges.patchwork.poller import PatchworkPoller, PollSettings
from bot.forges.patchwork.report import as_series_summary, sync_series_checks
from bot.host.config import PatchworkProject, Tree
from bot.host.stores import Runtime
from bot.intake.base_maintainers import ask_for_maintainers, maintainers_at_base, request_id
from bot.intake.desk import external_id
from bot.intake.original_mail import CheckedMail, gather_checked_mails, kept_checked_mails, originals_key
from bot.intake.state import find_change
from bot.reporting.summary import pipeline_summary
from bot.store.models import Pipeline
from bot.store.once import OnceKeys, once_done, record_once
from workers.errors import ConfigError, UserError

log = logging.getLogger(__name__)

ReadMails = Callable[..., ReadSeries]  # (mbox, tree, checked mails or None) -> the series read and graded


def no_dns(name: str) -> bytes | None:
    """No DKIM key look-up (`mail.dkim_dns: none`): every DKIM signature reads unverifiable."""
    return None


@cache
def system_dns() -> DnsKeyResolver:
    """The host's resolvers, one cache per process (bot/forges/mail/dns_keys.py)."""
    return DnsKeyResolver()


def dkim_resolver(tree: Tree) -> ResolveDkimKey:
    """The tree's DKIM key look-up, as `mail.dkim_dns` says: system (default) or none."""
    return no_dns if tree.mail.dkim_dns == "none" else system_dns()


def decode(raw: bytes) -> Mail:
    """One mail as bot/core reads it: headers decoded (RFC 2047), the text part in its charset.
    ValueError for a mail Python's parser cannot take apart (parts nested past its recursion limit)."""
    try:
        message = email.message_from_bytes(raw, policy=email.policy.default)
        body = ""
        if isinstance(message, EmailMessage):
            part = message.get_body(("plain",))
            try:
                body = part.get_content() if part is not None else ""
            except (LookupError, ValueError):  # an unknown charset: the series is refused as unreadable below
                body = ""
        return Mail(tuple((key, str(value)) for key, value in message.items()), body)
    except RecursionError:
        raise ValueError("a mail of the series nests its MIME parts too deeply to be read") from None


def tree_keyring(tree: Tree) -> Keyring:
    return Keyring.from_directory(tree.mail.keyring) if tree.mail.keyring is not None else Keyring.empty()


def is_listed_maintainer(claimed: str, tree: Tree) -> bool:
    return claimed.lower() in {address.lower() for address in tree.mail.maintainers}


def grade_sender(results: Sequence[IdentityResult], claimed: str, tree: Tree,
                 at_base: frozenset[str] = frozenset()) -> SenderTrust:  # fmt: skip
    """What the patches' signatures prove of `claimed` (every patch must prove it: one unsigned patch in a
    signed series is a patch anyone could have slipped in), and what the tree grants that. A maintainer is
    a `mail.maintainers` address, or one of `at_base`: M:/R: in MAINTAINERS at the base for a touched path."""
    maintainer = is_listed_maintainer(claimed, tree) or claimed.lower() in at_base
    verified = bool(results) and all(r.verified and (r.identity or "").lower() == claimed.lower() for r in results)
    if verified:
        keyring_identity = all(r.method is Method.PATATT for r in results)
        if keyring_identity or maintainer:
            return SenderTrust(IdentityGrade.VERIFIED, True, None, "head", f"verified {claimed} ({results[0].method})")
        return SenderTrust(IdentityGrade.VERIFIED, False, None, "base",
                           f"verified {claimed}, who is not one of the tree's maintainers")  # fmt: skip
    why = results[0].reason if results else "no patch"
    if maintainer:
        unverified = tree.mail.unverified_tier
        return SenderTrust(IdentityGrade.MAINTAINER_CLAIM, unverified != "none", unverified if unverified != "none"
                           else None, "base", f"From: claims maintainer {claimed}, not proven: {why}")  # fmt: skip
    return SenderTrust(IdentityGrade.UNVERIFIED, False, None, "base", f"{claimed}: {why}")


def served_patches(mbox: bytes) -> tuple[Series, list[bytes]]:
    """The series in a served mbox, and each patch's mail as served (never the cover letter), in order."""
    raws = split_mboxrd(mbox)
    mails = [decode(raw) for raw in raws]
    series = parse_series(mails)
    by_mail = {id(mail): raw for mail, raw in zip(mails, raws, strict=True)}
    return series, [by_mail[id(patch.mail)] for patch in series.patches]


def series_reader(resolve_dkim_key: ResolveDkimKey | None = None) -> ReadMails:
    """Read a served mbox and grade its sender with this DKIM key look-up (None: the tree's, `dkim_resolver`),
    checking each patch's signatures on `checked` (one mail per patch, bot/intake/original_mail.py) when given."""

    def read(mbox: bytes, tree: Tree, checked: Sequence[CheckedMail] | None = None,
             at_base: frozenset[str] = frozenset()) -> ReadSeries:  # fmt: skip
        series, patch_raws = served_patches(mbox)
        first = series.first
        if first is None or first.sender is None:
            raise ValueError("the series' first mail has no readable From: address")
        signed = [m.raw for m in checked] if checked is not None and len(checked) == len(patch_raws) else patch_raws
        keyring = tree_keyring(tree)
        resolve = resolve_dkim_key or dkim_resolver(tree)
        results = [verify_identity(raw, keyring=keyring, resolve_dkim_key=resolve) for raw in signed]
        trust = grade_sender(results, first.sender.address, tree, at_base)
        # An mbox's separator takes the last mail's final newline; git am calls a diff without it corrupt.
        patches = tuple((f"{index:04d}.patch", raw if raw.endswith(b"\n") else raw + b"\n")
                        for index, raw in enumerate(patch_raws, 1))  # fmt: skip
        return ReadSeries(series, patches, first.sender.address, trust)

    return read


def patchwork_reader(runtime: Runtime, client: PatchworkClient,
                     resolve_dkim_key: ResolveDkimKey | None = None) -> SeriesReader:  # fmt: skip
    """The SeriesReader of bot/forges/patchwork/intake.py: signatures checked on each patch's original
    (public-inbox, else rebuilt from Patchwork's JSON, else as served), gathered once per series and kept."""
    read = series_reader(resolve_dkim_key)

    def read_record(record: SeriesRecord, mbox: bytes, tree: Tree) -> ReadSeries:
        _, patch_raws = served_patches(mbox)

        def gather() -> list[CheckedMail]:
            served = [(decode(raw).header("message-id"), raw) for raw in patch_raws]
            return gather_checked_mails(served, record.patch_ids, public_inbox_url=tree.mail.public_inbox_url,
                                        patch_json=client.patch)  # fmt: skip

        checked = kept_checked_mails(runtime, originals_key(record.server, record.series_id), gather)
        at_base = maintainers_at_base(runtime, record.server, record.series_id, tree, patch_raws)
        done = read(mbox, tree, checked, at_base or frozenset())
        if at_base is None and not (done.trust.trusted and done.trust.tier_cap is None) \
                and not is_listed_maintainer(done.sender, tree):  # fmt: skip
            # MAINTAINERS could raise this sender: asked now, the answer grades the series again.
            ask_for_maintainers(runtime, tree, record.server, record.series_id,
                                base_of(done.series, project_of(runtime, record), tree),
                                base_branches_of(done.series, tree))  # fmt: skip
        return done

    return read_record


def project_of(runtime: Runtime, record: SeriesRecord) -> PatchworkProject:
    config = runtime.config.patchwork
    project = next((p for p in config.projects if p.project == record.project), None) if config else None
    if project is None:
        raise UserError(f"project {record.project!r} is not configured")
    return project


def regrade_series(runtime: Runtime, server: str, series_id: int) -> list[str]:
    """MAINTAINERS at the series' base has come (bot/intake/base_maintainers.py): when it makes the
    sender a maintainer of what the series touches and nothing runs for the series yet, handle it again
    under a scope of its own (it runs if that grade allows, and supersedes what it now outranks)."""
    with patchwork_client(runtime) as client:
        if client.url != server:
            return [f"series {series_id} of {server}: not the configured Patchwork server"]
        intake = series_intake(runtime, client)
        record = intake.find_record(series_id)
        if record is None:
            return [f"series {series_id}: labgate has not heard of it"]
        tree, read, desk, _ = intake.open(record)
        # Its own patches only: the paths its prerequisites touch are their senders' to answer for.
        own = read.patches[len(read.patches) - len(read.series.patches):]
        at_base = maintainers_at_base(runtime, server, series_id, tree, [raw for _, raw in own]) or frozenset()
        if read.sender.lower() not in at_base or is_listed_maintainer(read.sender, tree):
            return [f"series {series_id}: MAINTAINERS at the base does not change {read.sender}'s grade"]
        if not read.trust.trusted:
            # A maintainer proven by nothing, where the tree grants unverified mail nothing: it waits as it
            # did, and its checks already say so (handling it again would only say it twice).
            return [f"series {series_id}: {read.sender} is a maintainer at the base, proven by nothing: "
                    "it still waits (mail.unverified_tier: none)"]  # fmt: skip
        with runtime.store.session() as session:
            change = find_change(session, SOURCE, external_id(record.project, record.series_id))
            started = change is None or change.state == "closed" or any(r.pipelines for r in change.revisions)
        if started:  # refused, superseded, or approved meanwhile: nothing to start twice
            return [f"series {series_id}: already handled; MAINTAINERS at the base changes nothing now"]
        once = OnceKeys(SOURCE, f"maintainers:{request_id(server, series_id)}")
        done = intake.on_series(record, once)
        if read.trust.trusted:
            key = once.key("say", "maintainers")
            with runtime.store.session() as session:
                said = once_done(session, key) is not None
            if not said:
                desk.say("success", f"runs without approval: {read.trust.reason}; M:/R: in "
                                    f"{tree.mail.maintainers_file} at the base for a path it touches")  # fmt: skip
                with runtime.store.session() as session:
                    record_once(session, key)
        return done


def patchwork_client(runtime: Runtime) -> PatchworkClient:
    config = runtime.config.patchwork
    if config is None:
        raise ConfigError("no `patchwork:` section in the config")
    return PatchworkClient(config.url, config.read_token() if config.token_file else None)


def series_intake(runtime: Runtime, client: PatchworkClient,
                  resolve_dkim_key: ResolveDkimKey | None = None) -> SeriesIntake:  # fmt: skip
    # Recorded series a prerequisite may be are parsed only: just those applied are graded, by the reader.
    return SeriesIntake(runtime, client, patchwork_reader(runtime, client, resolve_dkim_key), served_patches)


def series_poller(runtime: Runtime, client: PatchworkClient, intake: SeriesIntake,
                  settings: PollSettings) -> PatchworkPoller:  # fmt: skip
    """The poller with the intake's handlers, the series' mboxes stored on its fetching thread."""
    return PatchworkPoller(runtime.store, client, on_series=intake.record_series,
                           on_delegated=intake.record_delegation, settings=settings,
                           stage_series=intake.stage_series)  # fmt: skip


def poll_patchwork(runtime: Runtime, resolve_dkim_key: ResolveDkimKey | None = None) -> list[str]:
    """Read every configured project's new events, then carry out what they call for."""
    config = runtime.config.patchwork
    if config is None:
        return []
    with patchwork_client(runtime) as client:
        intake = series_intake(runtime, client, resolve_dkim_key)
        settings = PollSettings(clock_skew_s=config.clock_skew_s, per_page=config.per_page)
        poller = series_poller(runtime, client, intake, settings)
        done = []
        for project in config.projects:
            report = poller.poll(project.project)
            if report.handled or report.skipped:
                done.append(f"{project.project}: {report.handled} new events, {report.skipped} skipped")
        return done + intake.handle_pending()


def reproduce_series(tree: Tree, base_ref: str, thread_message_id: str) -> str:
    """How the submitter runs the series' pipeline on their machine."""
    message_id = thread_message_id.strip("<>")
    return (f"b4 am -o - '{message_id}' > series.mbox\n"
            f"labgate try {tree.url} --base {base_ref} --patch series.mbox")  # fmt: skip


def report_series(runtime: Runtime, pipeline_id: int) -> int:
    """A series' pipeline reported: checks on every patch, then, once done, one mail into the thread
    when the tree mails reports (none for a cancelled run, nor for our own failure)."""
    with patchwork_client(runtime) as client:
        requests = sync_series_checks(runtime, client, pipeline_id)
        server = client.url
    with runtime.store.session() as session:
        pipeline = session.get(Pipeline, pipeline_id)
        if pipeline is None or pipeline.state != "done" or pipeline.result == "cancelled":
            return requests
        change = pipeline.revision.change
        tree = runtime.config.tree(change.tree.name)
        record = load_series(session, server, change.number) if change.number is not None else None
        submitter, base_ref = change.submitter, pipeline.revision.base_ref
    if tree is None or record is None or not tree.mail.report:
        return requests
    subject, message_id = record.thread
    first = served_patches(runtime.artifacts.get_bytes(record.mbox_digest))[0].first
    if first is not None and first.message_id:  # the mail's own ids, not Patchwork's record of them
        subject, message_id = first.mail.header("subject") or subject, first.message_id
    sink = mail_sink_for(runtime.store, runtime.config.smtp, tree.mail, submitter=submitter,
                         thread=series_thread(None, (subject, message_id)))  # fmt: skip
    summary = pipeline_summary(runtime, pipeline_id, reproduce=reproduce_series(tree, base_ref, message_id))
    summary = as_series_summary(summary) if summary is not None else None  # "not tested", as the checks say
    if sink is not None and summary is not None:
        sink.publish(summary)
    return requests


def is_series_pipeline(runtime: Runtime, pipeline_id: int) -> bool:
    with runtime.store.session() as session:
        pipeline = session.get(Pipeline, pipeline_id)
        return pipeline is not None and pipeline.revision.change.source == SOURCE
