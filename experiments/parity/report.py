"""Render ``RESULTS.md`` from ``results/<method>.json`` and ``RESULTS.template.md``.

The template holds the prose (settings, adaptations, findings); each ``{table:<method>}`` and
``{seeds:<method>}`` placeholder is replaced by that method's summary and per-seed tables. The
verdict column applies the acceptance rule of issue 15: ours is at parity when its mean lies
within two sample standard deviations of the official mean.
"""

from __future__ import annotations

import json
import statistics
from pathlib import Path
from typing import Any

from parity_cases import METHODS

HERE = Path(__file__).resolve().parent
RESULTS_DIR = HERE / "results"


def _values(side: dict[str, Any] | None, key: str) -> list[float]:
    if not side:
        return []
    rows = [side[s].get(key) for s in sorted(side, key=int)]
    return [float(v) for v in rows if v is not None]


def _mean_std(values: list[float]) -> str:
    if not values:
        return "-"
    if len(values) == 1:
        return f"{values[0]:.2f}"
    return f"{statistics.fmean(values):.2f} ± {statistics.stdev(values):.2f}"


def parity_verdict(official: list[float], ours: list[float]) -> str:
    """``yes`` when |mean(ours) - mean(official)| <= 2 * std(official) (3 seeds each)."""
    if len(official) < 2 or not ours:
        return "-"
    gap = abs(statistics.fmean(ours) - statistics.fmean(official))
    limit = 2 * statistics.stdev(official)
    return f"{'yes' if gap <= limit else 'NO'} ({gap:.2f} vs {limit:.2f})"


def _time(side: dict[str, Any] | None) -> str:
    values = _values(side, "process_s") or _values(side, "wall_time_s")
    return f"{statistics.fmean(values):.0f}" if values else "-"


def summary_table(method: str, results: dict[str, Any]) -> str:
    head = (
        "| case | official class-IL | ours class-IL | within 2 std (gap vs 2 std) "
        "| official FWT | ours FWT | official task-IL | ours task-IL | time official / ours (s) |\n"
        "|---|---|---|---|---|---|---|---|---|\n"
    )
    rows = []
    for case in METHODS[method]:
        sides = results.get(case.name, {})
        off, ours = sides.get("official"), sides.get("ours")
        if off is None and case.official_of:  # an ours-only variant of another case
            off = results.get(case.official_of, {}).get("official")
        if not off and not ours:
            continue
        cil_off, cil_ours = _values(off, "class_il"), _values(ours, "class_il")
        judged = (_values(off, case.judge), _values(ours, case.judge))
        verdict = parity_verdict(*judged)
        if case.judge != "class_il":
            verdict += f" on {case.judge.replace('_', '-').replace('il', 'IL')}"
        rows.append(
            f"| {case.label} | {_mean_std(cil_off)} | {_mean_std(cil_ours)} "
            f"| {verdict} "
            f"| {_mean_std(_values(off, 'fwt_class_il'))} "
            f"| {_mean_std(_values(ours, 'fwt_class_il'))} "
            f"| {_mean_std(_values(off, 'task_il'))} | {_mean_std(_values(ours, 'task_il'))} "
            f"| {_time(off)} / {_time(ours)} |"
        )
    return head + "\n".join(rows)


def per_seed_table(method: str, results: dict[str, Any]) -> str:
    head = "| case | side | seed | class-IL | task-IL | FWT class-IL | forgetting | time (s) |\n"
    head += "|---|---|---|---|---|---|---|---|\n"
    rows = []
    for case in METHODS[method]:
        for side_name, side in sorted(results.get(case.name, {}).items()):
            for seed in sorted(side, key=int):
                rec = side[seed]
                cells = [
                    rec.get(k)
                    for k in ("class_il", "task_il", "fwt_class_il", "forgetting_class_il")
                ]
                text = " | ".join("-" if v is None else f"{v:.2f}" for v in cells)
                secs = rec.get("process_s", rec.get("wall_time_s"))
                rows.append(f"| {case.name} | {side_name} | {seed} | {text} | {secs:.0f} |")
    return head + "\n".join(rows)


def write_report() -> Path:
    text = (HERE / "RESULTS.template.md").read_text()
    for method in METHODS:
        path = RESULTS_DIR / f"{method}.json"
        results = json.loads(path.read_text()) if path.exists() else {}
        text = text.replace(f"{{table:{method}}}", summary_table(method, results))
        text = text.replace(f"{{seeds:{method}}}", per_seed_table(method, results))
    out = HERE / "RESULTS.md"
    out.write_text(text)
    return out


if __name__ == "__main__":
    print(write_report())
