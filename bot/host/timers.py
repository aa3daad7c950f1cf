"""The control tasks `labgate up` queues on a timer: what no webhook tells labgate of."""

from __future__ import annotations

from bot.host.config import Config

GITHUB_RESYNC_TASK = "bot.github_resync"  # open pull requests whose delivery was lost
GIT_REMOTE_POLL_TASK = "bot.git_remote_poll"  # staging branches of trees without webhooks
PATCHWORK_POLL_TASK = "bot.patchwork_poll"  # Patchwork projects' events
QUEUE_TOP_UP_TASK = "bot.queue_top_up"  # device classes' windows, should a wake-up have been lost
PLACE_RECHECK_TASK = "bot.place_health_recheck"  # offline places whose failed health check is due again
ARTIFACT_PRUNE_TASK = "bot.artifact_prune"  # blobs of expired pipelines (config artifacts:)
# How often the recheck timer looks for due places, at most: a due check waits at most this long past its time.
PLACE_RECHECK_TICK_S = 60


def periodic_tasks(config: Config) -> list[tuple[str, int]]:
    """(task name, interval in seconds) of every timer the config asks for. Each runs at start too:
    what happened while labgate was down is caught up at once."""
    timers = [(QUEUE_TOP_UP_TASK, config.scheduling.top_up_interval_s)] if config.device_classes else []
    if config.device_classes:
        timers.append((PLACE_RECHECK_TASK, min(PLACE_RECHECK_TICK_S, config.scheduling.health_recheck_interval_s)))
    if config.artifacts.prune:
        timers.append((ARTIFACT_PRUNE_TASK, config.artifacts.prune_interval_s))
    if config.github is not None and config.github.resync_interval_s:
        timers.append((GITHUB_RESYNC_TASK, config.github.resync_interval_s))
    polled = [tree.poll_interval_s for tree in config.trees if tree.poll_staging and tree.staging_branches]
    if polled:
        timers.append((GIT_REMOTE_POLL_TASK, min(polled)))
    if config.patchwork is not None and config.patchwork.projects:
        timers.append((PATCHWORK_POLL_TASK, config.patchwork.poll_interval_s))
    return timers
