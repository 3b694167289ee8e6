"""A PNG bar chart of a scenario's key numbers, measured next to its baseline.

A scenario describes its chart with a module-level `CHART`: a list of (label, result-key) pairs,
or a function `chart(result) -> list[(label, value)]`. A label reads "series: metric (unit)",
e.g. "qemu-img create: p50 (ms)". Bars that share a metric stand side by side, one colour per
series (list the measured series first, the baseline after it); metrics that share a unit share
a panel. matplotlib is optional (the `bench` extra) and imported only when a chart is drawn.
"""

from __future__ import annotations

import math
import re
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

Spec = Sequence[tuple[str, str]] | Callable[[Mapping[str, Any]], Sequence[tuple[str, float]]]

_UNIT = re.compile(r"^(?P<metric>.*?)\s*\((?P<unit>[^()]*)\)\s*$")


@dataclass(frozen=True, slots=True)
class Bar:
    series: str
    metric: str
    unit: str
    value: float


def bars(spec: Spec, result: Mapping[str, Any]) -> list[Bar]:
    """The spec resolved against the result; missing or non-numeric values are left out."""
    pairs = spec(result) if callable(spec) else [(label, result.get(key)) for label, key in spec]
    out = []
    for label, value in pairs:
        if not _number(value):
            continue
        series, rest = label.split(": ", 1) if ": " in label else ("", label)
        m = _UNIT.match(rest)
        metric, unit = (m["metric"], m["unit"]) if m else (rest, "")
        out.append(Bar(series, metric, unit, float(value)))
    return out


def subtitle(result: Mapping[str, Any]) -> str:
    m = result.get("machine") or {}
    parts = [f"{m.get('hostname', '?')}: {m.get('cpus', '?')} cpus"]
    if m.get("mem_mib"):
        parts.append(f"{m['mem_mib'] / 1024:.0f} GiB")
    if m.get("kernel"):
        parts.append(f"Linux {m['kernel']}")
    if result.get("at"):
        parts.append(str(result["at"]))
    return ", ".join(parts)


def save_chart(path: Path, title: str, result: Mapping[str, Any], spec: Spec) -> bool:
    """Write the chart to path; False (and one line on stderr) when it cannot be drawn."""
    drawn = bars(spec, result)
    if not drawn:
        print(f"chart: nothing to draw for {path.name} (no numeric values)", file=sys.stderr)
        return False
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        print(f"chart: matplotlib is not installed, {path.name} skipped; "
              "install the bench extra: pip install -e '.[bench]'", file=sys.stderr)
        return False
    series = list(dict.fromkeys(b.series for b in drawn))  # one colour each, in every panel
    units = list(dict.fromkeys(b.unit for b in drawn))  # one panel each
    metrics = {u: list(dict.fromkeys(b.metric for b in drawn if b.unit == u)) for u in units}
    present = {u: [s for s in series if any(b.series == s and b.unit == u for b in drawn)]
               for u in units}
    slots = [len(metrics[u]) * len(present[u]) for u in units]
    fig = Figure(figsize=(max(6.0, 0.8 * sum(slots) + 1.6 * len(units)), 4.8),
                 layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, len(units), squeeze=False, width_ratios=slots)[0]
    for ax, unit in zip(axes, units, strict=True):
        names, here = metrics[unit], present[unit]
        width = 0.8 / len(here)
        for k, s in enumerate(here):
            xs, vs = [], []
            for j, name in enumerate(names):
                hit = [b.value for b in drawn if (b.series, b.metric, b.unit) == (s, name, unit)]
                if hit:
                    xs.append(j + (k - (len(here) - 1) / 2) * width)
                    vs.append(hit[0])
            rects = ax.bar(xs, vs, width, color=f"C{series.index(s) % 10}", label=s or None)
            ax.bar_label(rects, labels=[_fmt(v) for v in vs], padding=2, fontsize=8)
        ax.set_xticks(range(len(names)), names)
        ax.set_ylabel(unit)
        ax.margins(y=0.12)
        ax.grid(axis="y", alpha=0.3)
        ax.set_axisbelow(True)
    fig.suptitle(f"{title}\n{subtitle(result)}", fontsize=10)
    handles: dict[str, Any] = {}
    for ax in axes:
        for handle, label in zip(*ax.get_legend_handles_labels(), strict=True):
            handles.setdefault(label, handle)
    if handles:
        fig.legend(handles.values(), handles.keys(), loc="outside lower center",
                   ncols=len(handles), frameon=False)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    return True


def _number(value: Any) -> bool:
    return (isinstance(value, int | float) and not isinstance(value, bool)
            and math.isfinite(value))


def _fmt(v: float) -> str:
    if v.is_integer() or abs(v) >= 100:
        return f"{v:.0f}"
    if abs(v) >= 10:
        return f"{v:.1f}"
    return f"{v:.3g}"
