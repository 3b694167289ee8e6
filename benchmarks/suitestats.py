"""suites50's figures from the ledger rows of one mode and the host samples. Pure.

Per mode: how the iterations ended (`failed` counts FAILED and INFRA_ERROR, `timed_out`
TIMED_OUT, `cancelled` what the deadline or the memory guard stopped), the pressure and memory
peaks, `iterations_per_min` (succeeded iterations over the wall time from submit to the last
end) and `jain_fairness`: Jain's index over the suites' goodput, each suite's succeeded
iterations divided by the time from submit to its last end. 1.0 when every suite got the
same; 1/n when one suite got everything.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from .hostwatch import Peaks

MODES = ("throttled", "unthrottled")
FAILED = ("FAILED", "INFRA_ERROR")


def jain(xs: Sequence[float]) -> float | None:
    """Jain's fairness index (sum x)^2 / (n * sum x^2); None when every x is 0."""
    squares = sum(x * x for x in xs)
    if not xs or squares == 0:
        return None
    return sum(xs) ** 2 / (len(xs) * squares)


def summarize(rows: Iterable[tuple[str, str, float | None]], t0: float, stopped_at: float,
              suites: int, peaks: Peaks) -> dict[str, Any]:
    """rows: (suite, state, ended_at) for every iteration of the mode."""
    states: dict[str, int] = defaultdict(int)
    ok: dict[str, int] = defaultdict(int)
    last: dict[str, float] = {}
    for suite, state, ended_at in rows:
        states[state] += 1
        end = ended_at if ended_at is not None else stopped_at
        last[suite] = max(last.get(suite, t0), end)
        if state == "SUCCEEDED":
            ok[suite] += 1
    elapsed = max([*last.values(), t0]) - t0
    goodput = [ok[s] / (last[s] - t0) if s in last and last[s] > t0 else 0.0
               for s in sorted(last)]
    goodput += [0.0] * (suites - len(goodput))  # suites with no row at all got nothing
    fairness = jain(goodput)
    return {
        "failed": sum(states[s] for s in FAILED),
        "timed_out": states["TIMED_OUT"],
        "cancelled": states["CANCELLED"],
        "succeeded": states["SUCCEEDED"],
        "unfinished": sum(n for s, n in states.items()
                          if s not in (*FAILED, "TIMED_OUT", "CANCELLED", "SUCCEEDED")),
        "cpu_psi_some_avg10_max": round(peaks.cpu_psi_max, 2),
        "cpu_psi_some_avg10_mean": round(peaks.cpu_psi_mean, 2),
        "mem_psi_some_avg10_max": round(peaks.mem_psi_max, 2),
        "host_mem_peak_mib": round(peaks.mem_used_peak_mib),
        "vms_peak": peaks.vms_peak,
        "iterations_per_min": round(60.0 * states["SUCCEEDED"] / elapsed, 2) if elapsed else 0.0,
        "jain_fairness": round(fairness, 4) if fairness is not None else None,
        "elapsed_s": round(elapsed, 1),
        "samples": peaks.samples,
    }


def chart(result: Mapping[str, Any]) -> list[tuple[str, float]]:
    out = []
    for mode in MODES:
        m = result.get(mode) or {}
        for label, key in (("cpu PSI some avg10 max (%)", "cpu_psi_some_avg10_max"),
                           ("mem PSI some avg10 max (%)", "mem_psi_some_avg10_max"),
                           ("failed, timed out or stopped (iterations)", None),
                           ("throughput (iterations/min)", "iterations_per_min"),
                           ("fairness across suites (Jain index)", "jain_fairness"),
                           ("host memory peak (MiB)", "host_mem_peak_mib")):
            value = m.get(key) if key else sum(m.get(k, 0) for k in ("failed", "timed_out",
                                                                   "cancelled"))
            if m:
                out.append((f"{mode}: {label}", value))
    return out
