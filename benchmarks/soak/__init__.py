"""soak: the chaos soak, the proof that the scheduler loses nothing when its processes die.

Simulated (default): 10,000 iterations through the real scheduler on Ray onto 50 simulated
hosts (10 actors of 5 hosts), while a chaos thread SIGKILLs the scheduler actor's process 5
times and simulated node-agent actors 20 times at random points of the run, and removes 2
hosts for good (sim.py). `--real`: 200 short real-VM iterations on this host while the chaos
thread `virsh destroy`s 20 of the run's running VMs and SIGKILLs the node agent 3 times
(real.py). Ray restarts whatever is killed; submits retry through scheduler restarts and are
idempotent (ids are given). `--quick` scales both down to run in under a minute.

The checks (checks.py reads the ledger file directly; the soak exits 1 unless all five are 0):
- lost: submitted ids (acknowledged by a submit call) the ledger does not hold in a terminal
  state at the end of the run, 5 s after the work stopped;
- double_committed: iterations whose result was committed more than once (checks.py says
  exactly how that shows in the ledger);
- stuck: submitted ids not terminal when the run gives up waiting, which it does once no
  iteration has ended for `grace_s` after the last chaos event (60 s, so at least 60 s after
  the last kill; shorter with --quick, shown in the output), or for twice that while chaos
  still runs, or at its deadline;
- leaked_domains, leaked_overlays, 5 s after the work stopped. Real (real.py says how a
  domain or file is known to be this run's): domains the live node agent does not hold (its
  running attempts and warm pool; a guest being saved as a new slot is left out), plus VMs it
  holds beyond those, plus the run's domains still there after the agent shut down; files
  under the run's owner dirs in `<data>/run/` other than the live agent's own and those of the
  VMs it holds, plus any left after it shut down. Simulated (no VMs): attempts the simulated
  hosts still run, and finished outcomes they hold that were never acknowledged.
Also: iterations_per_s (submitted iterations / first submit to the last end in the ledger),
states, attempts per iteration, retries and why, the chaos carried out, and per scheduler kill
the time until it answered again (recover_s) and until the next iteration ended (resume_s).
"""

from __future__ import annotations

import argparse
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

from ..common import percentile, print_table
from .chaos import count

SEED = 20240917
CHECKS = ("lost", "double_committed", "stuck", "leaked_domains", "leaked_overlays")


@dataclass(frozen=True, slots=True)
class Size:
    iterations: int
    chunks: int  # submitted in this many calls, as the work progresses
    lead: int  # chunks kept submitted ahead of the work done
    scheduler_kills: int = 0
    node_kills: int = 0
    removals: int = 0  # simulated hosts removed for good
    destroys: int = 0  # real VMs destroyed
    hosts: int = 1
    per_actor: int = 1  # simulated hosts per actor
    grace_s: float = 60.0
    deadline_s: float = 1800.0


SIM = Size(10_000, chunks=20, lead=2, scheduler_kills=5, node_kills=20, removals=2, hosts=50,
           per_actor=5)
SIM_QUICK = Size(2_000, chunks=8, lead=2, scheduler_kills=2, node_kills=5, removals=2,
                 hosts=50, per_actor=5, grace_s=15.0, deadline_s=45.0)
REAL = Size(200, chunks=10, lead=2, node_kills=3, destroys=20)
# Under TCG (this project's machines) a real iteration takes 2-15 s: a quick real run is short,
# and its grace long enough for a cold boot after the agent's restart.
REAL_QUICK = Size(12, chunks=3, lead=1, node_kills=1, destroys=3, grace_s=30.0,
                  deadline_s=90.0)


def size_of(real: bool, quick: bool) -> Size:
    return (REAL_QUICK if quick else REAL) if real else (SIM_QUICK if quick else SIM)


def run(args: argparse.Namespace) -> dict[str, Any]:
    real = bool(getattr(args, "real", False))
    size = size_of(real, args.quick)
    if real:
        from . import real as mode
    else:
        from . import sim as mode  # type: ignore[no-redef]
    out = mode.run(size, SEED)
    return report(summarize(out, size, real, args.quick))


def failed(result: Mapping[str, Any]) -> bool:
    """Any of the five checks not 0 (or missing): the soak exits 1."""
    return any(result.get(k) != 0 for k in CHECKS)


def summarize(out: Mapping[str, Any], size: Size, real: bool, quick: bool) -> dict[str, Any]:
    tl, final, marks, records = out["timeline"], out["final"], out["timing"], out["chaos"]
    span = (marks["last_end"] or tl.end_at) - tl.t0
    sched = [r for r in records if r["kind"] == "scheduler"]
    recover = [r["recover_s"] for r in sched if "recover_s" in r]
    done = {k: count(records, k) for k in ("scheduler", "node", "remove", "destroy")}
    planned = {k: sum(1 for e in out["planned"] if e.kind == k) for k in done}
    return {
        "mode": "real" if real else "simulated", "quick": quick, "seed": SEED,
        "lost": len(final.not_terminal), "double_committed": len(final.double_committed),
        "stuck": len(tl.stuck), "leaked_domains": out["leaked_domains"],
        "leaked_overlays": out["leaked_overlays"],
        "iterations_per_s": round(len(tl.submitted) / span, 1) if span > 0 else None,
        "iterations": size.iterations, "submitted": len(tl.submitted),
        "submit_calls": tl.submit_calls, "submit_retries": tl.submit_retries,
        "scheduler_kills_during_submit": sum(1 for r in sched if r.get("during_submit")),
        "grace_s": size.grace_s, "ended_by": tl.ended_by, "t0": tl.t0,
        "elapsed_s": round(tl.end_at - tl.t0, 2),
        "states": final.states, "attempts_per_iteration": final.attempts_per_iteration,
        "retried_attempts": final.retried, "retry_reasons": final.retry_reasons,
        "open_attempts": len(final.open_attempts), "mismatched": len(final.mismatched),
        "chaos_done": done, "chaos_planned": planned,
        "scheduler_recover_s": recover,
        "scheduler_recover_max_s": max(recover, default=None),
        "scheduler_resume_s": marks["resume_s"],
        "iteration_p50_s": marks["iteration_p50_s"], "iteration_max_s": marks["iteration_max_s"],
        "node_recover_s": [r["recover_s"] for r in records
                           if r["kind"] == "node" and "recover_s" in r],
        "chaos": [_relative(r, tl.t0) for r in records],
        "evidence": final.evidence, "stuck_ids": tl.stuck[:20],
        "kept_ledger": None if out["kept_ledger"] is None else str(out["kept_ledger"]),
        "leaks": out.get("leaks", {}), "setup": {**out["setup"], "size": asdict(size)},
        "scheduler_stats": out["scheduler_stats"],
    }


def _relative(rec: Mapping[str, Any], t0: float) -> dict[str, Any]:
    return {k: (round(v - t0, 3) if k in ("at", "done_at", "killed_at") else v)
            for k, v in rec.items()}


LABELS = {"lost": "lost", "double_committed": "double commit", "stuck": "stuck",
          "leaked_domains": "leaked VMs", "leaked_overlays": "leaked files"}


def chart(result: Mapping[str, Any]) -> list[tuple[str, float]]:
    """The five checks next to what the chaos did (kills, retried attempts) for scale; the
    throughput; and the scheduler's recovery after its kills."""
    rows = [(f"checks: {LABELS[k]} (count)", result.get(k)) for k in CHECKS]
    done = result.get("chaos_done") or {}
    rows += [("chaos: scheduler kills (count)", done.get("scheduler")),
             ("chaos: node kills (count)", done.get("node")),
             ("chaos: VMs destroyed (count)", done.get("destroy")),
             ("chaos: attempts retried (count)", result.get("retried_attempts")),
             ("tryfleet under chaos: throughput (iterations/s)",
              result.get("iterations_per_s"))]
    recover = result.get("scheduler_recover_s") or []
    if recover:
        rows += [("scheduler restart: recover p50 (s)", percentile(recover, 50)),
                 ("scheduler restart: recover max (s)", max(recover))]
    resume = [r for r in result.get("scheduler_resume_s") or [] if r is not None]
    if resume:
        rows.append(("scheduler restart: resume max (s)", max(resume)))
    return [(label, float(v)) for label, v in rows if isinstance(v, (int, float)) and
            not (label.startswith("chaos") and not v)]


CHART = chart


def report(result: dict[str, Any]) -> dict[str, Any]:
    done, planned = result["chaos_done"], result["chaos_planned"]
    chaos = ", ".join(f"{k} {done[k]}/{planned[k]}" for k in planned if planned[k])
    for name, rows in result["evidence"].items():
        for row in rows[:3]:
            print(f"{name}: {row}")
    for rec in result["chaos"]:
        if "error" in rec or rec.get("skipped"):
            print(f"chaos {rec['kind']} at {rec['at']} s: {rec.get('error') or rec.get('why')}")
    leaks = result["leaks"]
    if leaks.get("libvirtd_alive") is False:
        print(f"libvirtd is not answering any more ({leaks.get('error') or 'after the run'}): "
              "restart it with `python -m tryfleet.nodeagent.daemons start`")
    verdict = "FAILED" if failed(result) else "passed"
    if result["kept_ledger"]:
        verdict += f" (the run's ledger is kept in {result['kept_ledger']})"
    print_table(f"soak ({result['mode']}{', quick' if result['quick'] else ''}): "
                f"{result['submitted']}/{result['iterations']} iterations submitted", [
        ("chaos done/planned", chaos),
        ("lost / double committed / stuck", f"{result['lost']} / "
                                            f"{result['double_committed']} / {result['stuck']}"),
        ("leaked domains / overlays", f"{result['leaked_domains']} / "
                                      f"{result['leaked_overlays']}"),
        ("stuck means", f"not terminal once nothing ended for {result['grace_s']:g} s after "
                        f"the last kill (stopped: {result['ended_by']})"),
        ("states", ", ".join(f"{k} {v}" for k, v in result["states"].items())),
        ("attempts per iteration", ", ".join(f"{k}: {v}" for k, v in
                                             result["attempts_per_iteration"].items())),
        ("retried attempts", str(result["retried_attempts"])),
        ("scheduler recover / resume (s)", f"{result['scheduler_recover_s']} / "
                                           f"{result['scheduler_resume_s']}"),
        ("throughput", f"{result['iterations_per_s']} iterations/s "
                       f"({result['elapsed_s']} s)"),
        ("iteration p50 / max (s)", f"{result['iteration_p50_s']} / "
                                    f"{result['iteration_max_s']}"),
        ("verdict", verdict),
    ])
    return result
