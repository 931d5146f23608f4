"""What the voice channel counts, registered in the service's one MetricsRegistry.

Labels are small closed sets (route names, flow state names, outcomes), never caller data,
so a hostile peer cannot grow the registry: an unknown route is counted as `unknown`.
"""

from __future__ import annotations

from dataclasses import dataclass

from callcenter.metrics import Counter, Gauge, MetricsRegistry, Summary

# Call durations in seconds: IVR calls last from a few seconds to a few minutes.
CALL_SECONDS_BUCKETS: tuple[float, ...] = (5, 10, 20, 30, 60, 90, 120, 180, 300, 600, 1800)
# Waits in the staff queue: GB/T 33358's target is 15 s.
QUEUE_WAIT_BUCKETS: tuple[float, ...] = (5, 10, 15, 20, 30, 60, 120, 300)


@dataclass(frozen=True)
class VoiceMetrics:
    calls: Counter
    answered: Counter
    abandoned: Counter
    transfers: Counter
    recordings: Counter
    agi_errors: Counter
    drafts: Counter
    call_seconds: Summary
    active: Gauge
    queue_waiting: Gauge
    queue_members: Gauge
    ami_connected: Gauge
    queue_calls: Counter
    queue_wait_seconds: Summary
    callbacks: Counter

    @classmethod
    def register(cls, registry: MetricsRegistry) -> VoiceMetrics:
        return cls(
            calls=registry.counter("voice_calls_total", "FastAGI calls started, by route"),
            answered=registry.counter("voice_calls_answered_total", "calls answered by the IVR, by route"),
            abandoned=registry.counter(
                "voice_calls_abandoned_total",
                "callers who hung up before their business was concluded, by flow and menu step"),
            transfers=registry.counter("voice_transfers_total", "calls handed to the dialplan, by flow and target"),
            recordings=registry.counter(
                "voice_recordings_total", "recordings filed with a draft, by kind and state (ok, missing, empty)"),
            agi_errors=registry.counter(
                "voice_agi_errors_total", "calls ended by an AGI or IVR error, by route and error"),
            drafts=registry.counter("voice_drafts_total", "drafts created by the IVR, by action"),
            call_seconds=registry.summary(
                "voice_call_seconds", "duration of IVR calls (AGI session) in seconds", CALL_SECONDS_BUCKETS),
            active=registry.gauge("voice_calls_active", "IVR calls in progress"),
            queue_waiting=registry.gauge("voice_queue_waiting", "callers waiting in the staff queue (AMI)"),
            queue_members=registry.gauge(
                "voice_queue_members", "staff queue members by state: logged_in, available, paused, in_call"),
            ami_connected=registry.gauge("voice_ami_connected", "1 while the AMI connection is up"),
            queue_calls=registry.counter(
                "voice_queue_calls_total",
                "staff queue callers by outcome (AMI): joined, answered, abandoned, left"),
            queue_wait_seconds=registry.summary(
                "voice_queue_wait_seconds", "seconds a caller waited before a person answered (AgentConnect HoldTime)",
                QUEUE_WAIT_BUCKETS),
            callbacks=registry.counter(
                "voice_callbacks_total", "rating call-back attempts and outcomes, by result"),
        )
