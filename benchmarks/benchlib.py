"""Shared plumbing for the benchmark scripts: seeds, mean ± std over seeds, targets, result files.

Every benchmark that trains runs once per seed and stores, for each measured column ``x`` of a
row, the mean over seeds as ``x``, the sample standard deviation as ``x_std`` (``None`` for one
seed) and the per-seed values as ``x_seeds``. Targets are computed from those values as
``{"target", "met", "value", ...}``: ``met`` judges the mean; ``within_std`` flags a verdict
whose margin is smaller than one standard deviation over seeds (met, or missed, only within noise).
Result files hold repository-relative paths, never the absolute paths of the machine that ran them.

``benchmarks/`` is not a package: scripts import this module by putting their folder on
``sys.path`` (as they do for the torch-pruning peers).
"""

from __future__ import annotations

import json
import statistics
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"
SMOKE = REPO / "runs" / "bench-smoke"  # --smoke runs write here, never over the committed results

__all__ = ["REPO", "RESULTS", "SMOKE", "aggregate_rows", "parse_seeds", "repo_relative", "summarize",
           "judge", "write_json", "best", "seeds_of"]


def parse_seeds(text: str) -> list[int]:
    """``"0,1,2"`` -> ``[0, 1, 2]``. Raises ``ValueError`` on an empty list or a repeated seed."""
    seeds = [int(s) for s in text.split(",") if s.strip()]
    if not seeds or len(set(seeds)) != len(seeds):
        raise ValueError(f"--seeds needs distinct integers, e.g. 0,1,2; got {text!r}")
    return seeds


def summarize(values: Sequence[float]) -> tuple[float, float | None]:
    """Mean and sample standard deviation (n - 1) of ``values``; the std is ``None`` for one value."""
    if not values:
        raise ValueError("summarize needs at least one value")
    mean = statistics.fmean(values)
    return mean, (statistics.stdev(values) if len(values) > 1 else None)


def aggregate_rows(runs: Sequence[Sequence[dict[str, Any]]], key: Sequence[str],
                   metrics: Sequence[str], digits: int | None = None) -> list[dict[str, Any]]:
    """Merge the rows of several seeds' runs into one row per ``key``, in the first run's order.

    Args:
        runs: one list of row dicts per seed; every run must hold the same keys.
        key: the fields that identify a row (e.g. ``("method", "sparsity")``).
        metrics: the measured fields; each becomes ``m`` (mean), ``m_std`` and ``m_seeds``.
            Every other field is copied from the first run (constant by construction: params...).
        digits: round means, stds and per-seed values to this many decimals (``None``: keep).

    Raises:
        ValueError: when the runs do not hold the same rows.
    """
    index = [{tuple(r[k] for k in key): r for r in run} for run in runs]
    if any(set(i) != set(index[0]) for i in index):
        raise ValueError("the seeds' runs do not hold the same rows")
    rnd = (lambda x: x) if digits is None else (lambda x: None if x is None else round(x, digits))
    out = []
    for row in runs[0]:
        k = tuple(row[f] for f in key)
        merged = {f: v for f, v in row.items() if f not in metrics}
        for m in metrics:
            values = [i[k][m] for i in index]
            mean, std = summarize(values)
            merged.update({m: rnd(mean), f"{m}_std": rnd(std), f"{m}_seeds": [rnd(v) for v in values]})
        out.append(merged)
    return out


def judge(name: str, per_seed: Iterable[float], threshold: float, higher_is_better: bool = True,
           fmt: str = "{:+.3f}") -> dict[str, Any]:
    """A target judged on the mean over seeds of a per-seed quantity (a paired difference or ratio).

    ``met`` is ``mean >= threshold`` (``<=`` when lower is better). ``within_std`` is true when
    the mean is less than one standard deviation from the threshold, so the verdict could flip
    with other seeds. ``value`` is the mean (± std) formatted with ``fmt`` for tables.
    """
    values = [float(v) for v in per_seed]
    mean, std = summarize(values)
    met = mean >= threshold if higher_is_better else mean <= threshold
    value = fmt.format(mean) + ("" if std is None else " ± " + fmt.format(std).lstrip("+"))
    return {"target": name, "met": bool(met), "value": value, "mean": mean, "std": std,
            "seeds": values, "threshold": threshold,
            "within_std": bool(std is not None and abs(mean - threshold) < std)}


def repo_relative(obj: Any, root: Path = REPO) -> Any:
    """``obj`` (JSON-like) with every absolute path inside ``root`` made relative to ``root``.

    Strings and ``Path`` values equal to ``root`` or below it are rewritten (``"."`` for the root);
    other values, and absolute paths elsewhere, are returned unchanged.
    """
    prefix = str(root).rstrip("/") + "/"
    if isinstance(obj, dict):
        return {k: repo_relative(v, root) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [repo_relative(v, root) for v in obj]
    if isinstance(obj, Path):
        obj = str(obj)
    if isinstance(obj, str):
        if obj == prefix[:-1]:
            return "."
        if obj.startswith(prefix):
            return obj[len(prefix):]
    return obj


def write_json(path: Path, payload: dict[str, Any], root: Path = REPO) -> None:
    """Write ``payload`` atomically as indented JSON with repository-relative paths."""
    from edgeadapt.artifacts import atomic_write_text

    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, json.dumps(repo_relative(payload, root), indent=1) + "\n")


def best(rows: Sequence[dict[str, Any]], key: str, where: Callable[[dict[str, Any]], bool],
         lowest: bool = False) -> dict[str, Any]:
    """The row with the highest (``lowest=True``: lowest) mean ``key`` among rows matching ``where``."""
    chosen = [r for r in rows if where(r)]
    if not chosen:
        raise ValueError(f"no row matches for {key}")
    return (min if lowest else max)(chosen, key=lambda r: r[key])


def seeds_of(row: dict[str, Any], key: str) -> list[float]:
    """Per-seed values of ``key`` in an aggregated row (the mean alone for an older single-seed row)."""
    return list(row.get(f"{key}_seeds") or [row[key]])
