"""Published numbers as data: the schema of ``experiments/leaderboard/targets.yaml``.

The file has two top-level keys: ``papers`` (key -> citation) and ``rows`` (one published number
each). :func:`load_targets` validates every row and raises one :class:`TargetsError` that names
the row (index and id) and the field, before anything runs.
"""

from __future__ import annotations

import fnmatch
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

SETTINGS = ("class-il", "task-il", "domain-il")
#: metrics.json keys a row may target (per-setting dictionaries in metrics.json)
METRICS = ("final_avg_acc", "forgetting", "bwt", "fwt")

REQUIRED = (
    "id",
    "paper",
    "table",
    "benchmark",
    "strategy",
    "buffer",
    "setting",
    "metric",
    "published",
    "tolerance",
    "experiment",
    "data_offline",
)
OPTIONAL = ("published_std", "note")


class TargetsError(ValueError):
    """A malformed targets file; the message names the row and the field."""


@dataclass(frozen=True)
class Target:
    """One published number and how to reproduce it."""

    id: str
    paper: str  # key into the file's ``papers``
    citation: str
    table: str
    benchmark: str
    strategy: str
    buffer: int | None
    setting: str
    metric: str
    published: float
    published_std: float | None
    tol_below: float
    tol_above: float | None  # None: no upper bound
    experiment: str  # conf/experiment/<experiment>.yaml
    data_offline: bool
    note: str = ""

    @property
    def setting_key(self) -> str:
        """The per-setting key in metrics.json (class_il / task_il)."""
        return "task_il" if self.setting == "task-il" else "class_il"

    @property
    def band(self) -> tuple[float, float]:
        """Accepted interval for our mean (upper bound +inf when open)."""
        high = math.inf if self.tol_above is None else self.published + self.tol_above
        return self.published - self.tol_below, high

    def within(self, value: float) -> bool:
        low, high = self.band
        return low <= value <= high

    def tolerance_text(self) -> str:
        if self.tol_above is None:
            return f">= {self.published - self.tol_below:.2f}"
        if self.tol_above == self.tol_below:
            return f"+-{self.tol_below:g}"
        low, high = self.band
        return f"{low:.2f}-{high:.2f}"

    def matches(self, pattern: str) -> bool:
        """``--filter``: equals benchmark / strategy / paper, or glob on id or experiment."""
        if pattern in (self.benchmark, self.strategy, self.paper, self.setting):
            return True
        return any(fnmatch.fnmatchcase(s, pattern) for s in (self.id, self.experiment))


def _row_error(index: int, row: Any, field: str, problem: str) -> TargetsError:
    rid = row.get("id") if isinstance(row, Mapping) else None
    name = f"row {index}" + (f" (id '{rid}')" if rid else "")
    return TargetsError(f"targets: {name}: field '{field}' {problem}")


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _tolerance(index: int, row: Mapping[str, Any]) -> tuple[float, float | None]:
    tol = row["tolerance"]
    if _number(tol):
        if tol <= 0:
            raise _row_error(index, row, "tolerance", f"must be positive, got {tol}")
        return float(tol), float(tol)
    if isinstance(tol, Mapping) and set(tol) <= {"below", "above"} and "below" in tol:
        below, above = tol["below"], tol.get("above")
        if not _number(below) or below < 0:
            raise _row_error(index, row, "tolerance.below", f"must be a number >= 0, got {below!r}")
        if above is not None and (not _number(above) or above < 0):
            raise _row_error(
                index, row, "tolerance.above", f"must be a number >= 0 or null, got {above!r}"
            )
        return float(below), None if above is None else float(above)
    raise _row_error(
        index,
        row,
        "tolerance",
        f"must be a positive number (symmetric band) or {{below: x, above: y|null}}, got {tol!r}",
    )


def parse_row(
    index: int, row: Any, papers: Mapping[str, str], experiment_dir: Path | None
) -> Target:
    """Validate one row; ``experiment_dir`` (conf/experiment) checks that the config exists."""
    if not isinstance(row, Mapping):
        raise TargetsError(f"targets: row {index}: must be a mapping, got {type(row).__name__}")
    for key in row:
        if key not in REQUIRED and key not in OPTIONAL:
            raise _row_error(
                index, row, str(key), f"is unknown (valid: {', '.join(REQUIRED + OPTIONAL)})"
            )
    for key in REQUIRED:
        if key not in row:
            raise _row_error(index, row, key, "is missing")
    for key in ("id", "paper", "table", "benchmark", "strategy", "experiment"):
        if not isinstance(row[key], str) or not row[key].strip():
            raise _row_error(index, row, key, f"must be a non-empty string, got {row[key]!r}")
    if row["paper"] not in papers:
        raise _row_error(
            index, row, "paper", f"'{row['paper']}' is not a key of 'papers' ({sorted(papers)})"
        )
    buffer = row["buffer"]
    if buffer is not None and (
        not isinstance(buffer, int) or isinstance(buffer, bool) or buffer < 0
    ):
        raise _row_error(index, row, "buffer", f"must be a size >= 0 or null, got {buffer!r}")
    if row["setting"] not in SETTINGS:
        raise _row_error(
            index, row, "setting", f"must be one of {SETTINGS}, got {row['setting']!r}"
        )
    if row["metric"] not in METRICS:
        raise _row_error(index, row, "metric", f"must be one of {METRICS}, got {row['metric']!r}")
    if not _number(row["published"]):
        raise _row_error(index, row, "published", f"must be a number, got {row['published']!r}")
    std = row.get("published_std")
    if std is not None and (not _number(std) or std < 0):
        raise _row_error(index, row, "published_std", f"must be a number >= 0, got {std!r}")
    if not isinstance(row["data_offline"], bool):
        raise _row_error(
            index, row, "data_offline", f"must be true or false, got {row['data_offline']!r}"
        )
    if experiment_dir is not None and not (experiment_dir / f"{row['experiment']}.yaml").is_file():
        raise _row_error(
            index,
            row,
            "experiment",
            f"'{row['experiment']}' has no config {experiment_dir / row['experiment']}.yaml",
        )
    below, above = _tolerance(index, row)
    return Target(
        id=row["id"],
        paper=row["paper"],
        citation=papers[row["paper"]],
        table=str(row["table"]),
        benchmark=row["benchmark"],
        strategy=row["strategy"],
        buffer=buffer,
        setting=row["setting"],
        metric=row["metric"],
        published=float(row["published"]),
        published_std=None if std is None else float(std),
        tol_below=below,
        tol_above=above,
        experiment=row["experiment"],
        data_offline=row["data_offline"],
        note=str(row.get("note") or ""),
    )


def parse_targets(data: Any, experiment_dir: Path | None = None) -> list[Target]:
    """Validate a loaded targets document (see the module docstring)."""
    if not isinstance(data, Mapping) or "rows" not in data:
        raise TargetsError("targets: the file must be a mapping with 'papers' and 'rows'")
    unknown = set(data) - {"papers", "rows"}
    if unknown:
        raise TargetsError(f"targets: unknown top-level key(s) {sorted(unknown)}")
    papers = data.get("papers") or {}
    if not isinstance(papers, Mapping) or not all(isinstance(v, str) for v in papers.values()):
        raise TargetsError("targets: 'papers' must map a key to a citation string")
    rows = data["rows"]
    if not isinstance(rows, list) or not rows:
        raise TargetsError("targets: 'rows' must be a non-empty list")
    targets = [parse_row(i, row, papers, experiment_dir) for i, row in enumerate(rows)]
    seen: dict[str, int] = {}
    for i, t in enumerate(targets):
        if t.id in seen:
            raise _row_error(i, rows[i], "id", f"duplicates row {seen[t.id]}")
        seen[t.id] = i
    return targets


def load_targets(path: Path | str, experiment_dir: Path | None = None) -> list[Target]:
    path = Path(path)
    if not path.is_file():
        raise TargetsError(f"targets file '{path}' not found")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise TargetsError(f"targets file '{path}' is not valid YAML: {exc}") from None
    return parse_targets(data, experiment_dir)


def select(targets: Sequence[Target], patterns: Iterable[str] = ()) -> list[Target]:
    """Rows matching any of ``patterns`` (all rows when there is none)."""
    patterns = list(patterns)
    if not patterns:
        return list(targets)
    return [t for t in targets if any(t.matches(p) for p in patterns)]
