"""The list of periodic jobs: every one runs under a lease, once across all nodes.

One place names each job, the work it does and how often (`[jobs]`, `[callback] poll_seconds`),
so a new periodic step is added here rather than as a loop of its own. Each owner registers
its jobs with the node's cluster when it starts and removes them when it stops; the cluster
runs them as `LeasedJob`s (callcenter/cluster/leases.py). On the embedded SQLite store the
one node takes every lease, so the jobs run exactly as on a cluster of one.

Not here, on purpose: the outbox sender's claim loop (its claims are leased per message), and
what belongs to one process only (AMI keep-alive, the queue follower, the console's draft
watcher, the event bus's reader).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from callcenter.settings import Settings

if TYPE_CHECKING:
    from callcenter.cluster import Cluster
    from callcenter.service.sms_channel import SmsServices
    from callcenter.voice.callbacks import CallbackService

#: Job names, as they appear in `cluster_leases` and the logs.
TASK_ESCALATION = "sms-task-escalation"
OUTBOX_IN_DOUBT = "sms-outbox-in-doubt"
OUTBOX_SWEEP = "sms-outbox-sweep"
RATE_WINDOWS_PRUNE = "sms-rate-windows-prune"
REASSEMBLY = "sms-reassembly"
CALLBACKS = "voice-callbacks"


@dataclass(frozen=True)
class JobSpec:
    name: str
    work: Callable[[], Awaitable[object]]
    interval: float
    wake: asyncio.Event | None = None
    eligible: Callable[[], bool] | None = None


def sms_jobs(settings: Settings, sms: SmsServices) -> list[JobSpec]:
    """The SMS channel's jobs: supervisor escalation, the outbox's sweeps, the flood windows,
    and long MO texts still incomplete after `sms.reassembly_timeout` (kept as drafts once)."""
    jobs = settings.jobs
    return [
        JobSpec(TASK_ESCALATION, sms.tasks.escalate_due, jobs.task_escalation_seconds),
        JobSpec(OUTBOX_IN_DOUBT, sms.outbox.resolve_in_doubt, jobs.outbox_in_doubt_seconds),
        JobSpec(OUTBOX_SWEEP, sms.outbox.sweep, jobs.outbox_sweep_seconds),
        JobSpec(RATE_WINDOWS_PRUNE, sms.intake.limits.prune, jobs.rate_windows_prune_seconds),
        JobSpec(REASSEMBLY, sms.intake.expire_partials, settings.sms.housekeeping_interval),
    ]


def voice_jobs(settings: Settings, callbacks: CallbackService) -> list[JobSpec]:
    """Rating call-backs (回访): placed by the node holding the lease, through its own AMI
    link, which also brings that call's outcome back to it. A node whose AMI is down leaves
    the job to one whose link is up."""
    return [JobSpec(CALLBACKS, callbacks.run_once, settings.callback.poll_seconds, wake=callbacks.wake_event,
                    eligible=callbacks.can_call)]


def register(cluster: Cluster, specs: list[JobSpec]) -> list[str]:
    for spec in specs:
        cluster.add_job(spec.name, spec.work, spec.interval, wake=spec.wake, eligible=spec.eligible)
    return [spec.name for spec in specs]


async def unregister(cluster: Cluster, names: list[str]) -> None:
    for name in names:
        await cluster.remove_job(name)
