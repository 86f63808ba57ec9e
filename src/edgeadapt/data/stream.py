"""Drift streams: an ordered list of target domains the edge device meets one after another.

Each domain is a corruption at a severity (CIFAR-10-C's names and parameters: ``digits-c``)
applied to held-out digits, with an *unlabeled* adaptation split (what the device sees) and a
*labeled* test split (how we score it). The two splits hold different images: adaptation uses the
digits validation images and the test uses the digits test images, each corrupted with its own seed.

A stream is written ``"gaussian_noise:5,fog:3,contrast:4"`` or as a YAML list of
``{corruption, severity}`` mappings / ``"name:severity"`` strings.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgeadapt.data.splits import ImageSplit
from edgeadapt.errors import ConfigError

# Mixes easy and hard domains and revisits corruption families, so methods that only help on
# noise, or that collapse on low-contrast images, show it (DESIGN.md §5). With CIFAR-10-C's
# parameters at 16×16 noise and blur barely hurt the source tiny ViT (clean ≈ 0.95), so the hard
# domains are contrast, fog, brightness and glass blur. Source accuracy per domain, mean of 3 seeds
# (benchmarks/results/drift_severity.json): gaussian_noise:5 .945, fog:5 .493, brightness:5 .744,
# contrast:5 .283, glass_blur:4 .753, impulse_noise:5 .924, snow:5 .852, motion_blur:5 .881,
# fog:3 .819, contrast:4 .649. Also in configs/streams/default.yaml (a test keeps them equal).
DEFAULT_STREAM = ("gaussian_noise:5,fog:5,brightness:5,contrast:5,glass_blur:4,impulse_noise:5,"
                  "snow:5,motion_blur:5,fog:3,contrast:4")


@dataclass(frozen=True)
class Domain:
    """One target domain: a corruption at a severity."""

    corruption: str
    severity: int

    def __str__(self) -> str:
        return f"{self.corruption}:{self.severity}"


@dataclass(frozen=True)
class DomainData:
    """A domain's unlabeled adaptation images and labeled test images."""

    domain: Domain
    adapt: ImageSplit
    test: ImageSplit


def _domain(item: Any, where: str) -> Domain:
    from edgeadapt.data.corruptions import check_corruption

    if isinstance(item, str):
        name, sep, sev = item.strip().partition(":")
        if not sep:
            raise ConfigError(f"{where}: {item!r} needs a severity, e.g. '{name.strip()}:3'")
        try:
            severity = int(sev)
        except ValueError:
            raise ConfigError(f"{where}: severity {sev!r} of {name.strip()!r} must be an integer in 1..5"
                              ) from None
        name = name.strip()
    elif isinstance(item, dict):
        extra = set(item) - {"corruption", "severity"}
        if extra or "corruption" not in item or "severity" not in item:
            raise ConfigError(f"{where}: a domain mapping needs exactly 'corruption' and 'severity', "
                              f"got {sorted(item)}")
        name, severity = item["corruption"], item["severity"]
        if not isinstance(severity, int) or isinstance(severity, bool):
            raise ConfigError(f"{where}: severity of {name!r} must be an integer in 1..5, got {severity!r}")
    else:
        raise ConfigError(f"{where}: expected 'name:severity' or {{corruption, severity}}, got {item!r}")
    try:
        check_corruption(name, severity)
    except ValueError as exc:
        raise ConfigError(f"{where}: {exc}") from None
    return Domain(name, severity)


def parse_stream(spec: str | Path | Sequence[Any] | None = None) -> list[Domain]:
    """Domains from ``"a:5,b:3"``, a YAML file holding a list, or a list; None → the default stream."""
    if spec is None:
        spec = DEFAULT_STREAM
    if isinstance(spec, Path) or (isinstance(spec, str) and spec.endswith((".yaml", ".yml"))):
        import yaml

        path = Path(spec)
        if not path.is_file():
            raise ConfigError(f"stream: file {path} does not exist")
        loaded = yaml.safe_load(path.read_text())
        items = loaded.get("stream") if isinstance(loaded, dict) else loaded
        if not isinstance(items, list):
            raise ConfigError(f"stream: {path} must hold a list of domains "
                              "(or a mapping with a 'stream' list)")
        return parse_stream(items)
    items = [s for s in spec.split(",") if s.strip()] if isinstance(spec, str) else list(spec)
    if not items:
        raise ConfigError("stream is empty; give at least one domain such as 'fog:3'")
    return [_domain(item, f"stream[{i}]") for i, item in enumerate(items)]


def stream_data(domains: Sequence[Domain] | str | None = None, size: int = 16,
                seed: int = 0) -> list[DomainData]:
    """Corrupted adaptation (unlabeled) and test (labeled) splits for each domain, in order."""
    from edgeadapt.data.registry import build_dataset

    if domains is None or isinstance(domains, str):
        domains = parse_stream(domains)
    out = []
    for d in domains:
        splits = build_dataset("digits-c", corruption=d.corruption, severity=d.severity, size=size,
                               corruption_seed=seed)
        out.append(DomainData(d, splits.val.unlabeled(), splits.test))
    return out


def describe_stream(domains: Sequence[Domain]) -> str:
    """One line per domain (for CLI summaries)."""
    return "\n".join(f"{i:>2}. {d.corruption:<18} severity {d.severity}" for i, d in enumerate(domains, 1))
