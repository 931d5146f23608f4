"""A small in-process metrics registry: counters, gauges and summaries, read as JSON.

No external dependency and no global state: the composition root builds one registry and
every channel (SMS, voice, console) registers what it counts. Values that are cheaper to
compute on demand (outbox depth, bind state) come from refresh hooks run before each
snapshot.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import structlog

log = structlog.get_logger(__name__)

LabelKey = tuple[tuple[str, str], ...]
Refresh = Callable[[], Awaitable[None]]

DEFAULT_BUCKETS: tuple[float, ...] = (0.5, 1, 2, 5, 10, 30, 60, 120, 300, 600, 1800, 3600)


def _key(labels: dict[str, Any]) -> LabelKey:
    return tuple(sorted((str(k), str(v)) for k, v in labels.items()))


@dataclass
class _Metric:
    name: str
    help: str
    kind: str
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def samples(self) -> list[dict[str, Any]]:
        raise NotImplementedError


@dataclass
class Counter(_Metric):
    """Only goes up; one value per label set."""

    _values: dict[LabelKey, float] = field(default_factory=dict)

    def inc(self, amount: float = 1.0, **labels: Any) -> None:
        if amount < 0:
            raise ValueError("a counter cannot go down")
        key = _key(labels)
        with self._lock:
            self._values[key] = self._values.get(key, 0.0) + amount

    def value(self, **labels: Any) -> float:
        return self._values.get(_key(labels), 0.0)

    def total(self) -> float:
        return sum(self._values.values())

    def samples(self) -> list[dict[str, Any]]:
        return [{"labels": dict(k), "value": v} for k, v in sorted(self._values.items())]


@dataclass
class Gauge(_Metric):
    """A value that is set, not accumulated."""

    _values: dict[LabelKey, float] = field(default_factory=dict)

    def set(self, value: float, **labels: Any) -> None:
        with self._lock:
            self._values[_key(labels)] = float(value)

    def value(self, **labels: Any) -> float | None:
        return self._values.get(_key(labels))

    def clear(self) -> None:
        """Forget every label set (a refresh that rebuilds the set, e.g. the live nodes)."""
        with self._lock:
            self._values.clear()

    def samples(self) -> list[dict[str, Any]]:
        return [{"labels": dict(k), "value": v} for k, v in sorted(self._values.items())]


@dataclass
class Summary(_Metric):
    """Count, sum, min, max and cumulative bucket counts of observed values (latencies)."""

    buckets: tuple[float, ...] = DEFAULT_BUCKETS
    _count: int = 0
    _sum: float = 0.0
    _min: float = math.inf
    _max: float = -math.inf
    _bucket_counts: list[int] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._bucket_counts = [0] * len(self.buckets)

    def observe(self, value: float) -> None:
        with self._lock:
            self._count += 1
            self._sum += value
            self._min = min(self._min, value)
            self._max = max(self._max, value)
            for i, bound in enumerate(self.buckets):
                if value <= bound:
                    self._bucket_counts[i] += 1

    @property
    def count(self) -> int:
        return self._count

    def samples(self) -> list[dict[str, Any]]:
        if not self._count:
            return [{"labels": {}, "count": 0, "sum": 0.0, "min": None, "max": None, "mean": None,
                     "buckets": {str(b): 0 for b in self.buckets}}]
        return [{
            "labels": {}, "count": self._count, "sum": round(self._sum, 6), "min": round(self._min, 6),
            "max": round(self._max, 6), "mean": round(self._sum / self._count, 6),
            "buckets": {str(b): c for b, c in zip(self.buckets, self._bucket_counts, strict=True)},
        }]


class MetricsRegistry:
    """Named metrics; asking twice for the same name returns the same metric."""

    def __init__(self) -> None:
        self._metrics: dict[str, _Metric] = {}
        self._refreshers: list[Refresh] = []

    def _get(self, name: str, kind: str, factory: Callable[[], _Metric]) -> Any:
        existing = self._metrics.get(name)
        if existing is not None:
            if existing.kind != kind:
                raise ValueError(f"metric {name} is a {existing.kind}, not a {kind}")
            return existing
        metric = factory()
        self._metrics[name] = metric
        return metric

    def counter(self, name: str, help: str = "") -> Counter:  # noqa: A002 - the usual word
        return self._get(name, "counter", lambda: Counter(name, help, "counter"))  # type: ignore[no-any-return]

    def gauge(self, name: str, help: str = "") -> Gauge:  # noqa: A002
        return self._get(name, "gauge", lambda: Gauge(name, help, "gauge"))  # type: ignore[no-any-return]

    def summary(self, name: str, help: str = "", buckets: Iterable[float] = DEFAULT_BUCKETS) -> Summary:  # noqa: A002
        return self._get(  # type: ignore[no-any-return]
            name, "summary", lambda: Summary(name, help, "summary", buckets=tuple(buckets)))

    def on_refresh(self, refresh: Refresh) -> None:
        """Run `refresh` before every snapshot (for values read from the database or a link)."""
        self._refreshers.append(refresh)

    async def snapshot(self) -> dict[str, Any]:
        for refresh in self._refreshers:
            try:
                await refresh()
            except Exception as exc:  # noqa: BLE001 - a failing source must not hide the others
                log.warning("metrics.refresh_failed", error=str(exc))
        return {"metrics": [
            {"name": m.name, "type": m.kind, "help": m.help, "samples": m.samples()}
            for m in sorted(self._metrics.values(), key=lambda m: m.name)
        ]}
