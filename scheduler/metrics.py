"""Counters of the dispatch path, cheap enough to keep on always. Pure.

Placement decision times are kept as raw samples (the most recent MAX_SAMPLES) so percentiles
are exact; everything else is a running count.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

MAX_SAMPLES = 200_000


def percentile(samples: Sequence[float], pct: float) -> float:
    """Nearest-rank percentile (pct in 0..100): the smallest sample with at least pct% of the
    samples at or below it; 0.0 for no samples."""
    if not samples:
        return 0.0
    ordered = sorted(samples)
    rank = max(1, min(len(ordered), math.ceil(pct / 100 * len(ordered))))
    return ordered[rank - 1]


@dataclass
class Metrics:
    placement_s: list[float] = field(default_factory=list)  # one sample per decision
    passes: int = 0
    pass_s: float = 0.0
    commits_at: int = 0  # the ledger's commit count when these metrics started
    calls_at: Mapping[str, int] = field(default_factory=dict)
    collected_at: int = 0

    def placed(self, seconds: float) -> None:
        self.placement_s.append(seconds)
        if len(self.placement_s) > MAX_SAMPLES:
            del self.placement_s[:MAX_SAMPLES // 2]

    def summary(self, commits: int, calls: Mapping[str, int], collected: int) -> dict[str, Any]:
        s = self.placement_s
        made = {k: v - self.calls_at.get(k, 0) for k, v in calls.items()}
        outcomes = collected - self.collected_at
        return {
            "placements": len(s),
            "placement_p50_ms": round(percentile(s, 50) * 1000, 4),
            "placement_p99_ms": round(percentile(s, 99) * 1000, 4),
            "placement_max_ms": round(max(s, default=0.0) * 1000, 4),
            "passes": self.passes,
            "pass_mean_ms": round(self.pass_s / self.passes * 1000, 3) if self.passes else 0.0,
            "ledger_commits": commits - self.commits_at,
            "host_calls": made,
            "outcomes_collected": outcomes,
            "outcomes_per_collect": round(outcomes / made["collect"], 2)
            if made.get("collect") else 0.0,
        }
