"""Profiles of every (block, width) of a chain, and the devices they run on.

**Devices.** A :class:`DeviceProfile` (a JSON file: ``name``, ``slowdown``, ``threads``,
``memory_bytes``, ``description``) says how a device is emulated on the machine that profiles:
a block's latency there is its median latency measured here with ``threads`` intra-op threads,
times ``slowdown``. A real device is profiled on itself with ``slowdown`` 1. The default edge,
:data:`EMULATED_EDGE`, is this machine at one thread and 4× slower — an assumption standing for a
Raspberry-Pi-4-class board, not a measurement; every result names the devices it was made with.

**Blocks.** :func:`profile_chain` records per (block, width): parameters, FLOPs per input
(2 × multiply-adds of its convolutions and linear layers; attention score products are not
counted), output activation bytes per input, weight bytes, latency per device (warm-up, then the
median of repeats, a block's widths interleaved) and the **accuracy drop** the
LegoDNN way: measured on composed models, averaged over several settings ``E`` (every block at one
width) of
``acc(setting with block b at full width) − acc(setting with block b at width w)``. The additive
model ``acc ≈ acc_full − Σ_b drop[b, w_b]`` is then checked against a few measured random
compositions and its error reported (:attr:`ChainProfile.additive_check`).

:meth:`ChainProfile.problem` turns a profile into a
:class:`~edgeadapt.offload.placement.PlacementProblem` for given links.
"""

from __future__ import annotations

import json
import random
import statistics
import time
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from edgeadapt.artifacts import atomic_write_text
from edgeadapt.errors import ConfigError, PathError
from edgeadapt.offload.blocks import BlockChain, Descendants
from edgeadapt.offload.placement import Option, PlacementProblem

DEVICE_FIELDS = ("name", "slowdown", "threads", "memory_bytes", "description")
FORMAT = "edgeadapt.offload-profile"
VERSION = 1


@dataclass(frozen=True)
class DeviceProfile:
    """One device as the profiler emulates it: latency = measured here at ``threads`` threads ×
    ``slowdown``; ``memory_bytes`` is what its blocks' weights may occupy."""

    name: str
    slowdown: float
    threads: int
    memory_bytes: int
    description: str = ""

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise ConfigError(f"device name must be a non-empty string, got {self.name!r}")
        number = isinstance(self.slowdown, (int, float)) and not isinstance(self.slowdown, bool)
        if not number or self.slowdown <= 0:
            raise ConfigError(f"device {self.name!r}: slowdown must be a positive number (1 = this machine), "
                              f"got {self.slowdown!r}")
        for key in ("threads", "memory_bytes"):
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"device {self.name!r}: {key} must be a positive integer, got {value!r}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Any, where: str = "device profile") -> DeviceProfile:
        if not isinstance(data, dict):
            raise ConfigError(f"{where}: expected a JSON object with {', '.join(DEVICE_FIELDS)}")
        unknown = sorted(set(data) - set(DEVICE_FIELDS))
        missing = [k for k in DEVICE_FIELDS[:4] if k not in data]
        if unknown or missing:
            raise ConfigError(f"{where}: unknown fields {unknown}, missing fields {missing}; a device "
                              f"profile has {', '.join(DEVICE_FIELDS)} (description optional)")
        return cls(**data)

    def save(self, path: str | Path) -> None:
        atomic_write_text(Path(path), json.dumps(self.to_dict(), indent=1))

    @classmethod
    def load(cls, path: str | Path) -> DeviceProfile:
        path = Path(path)
        if not path.is_file():
            raise PathError(f"device profile {path} does not exist")
        try:
            data = json.loads(path.read_text())
        except json.JSONDecodeError as exc:
            raise ConfigError(f"device profile {path} is not valid JSON: {exc}") from None
        return cls.from_dict(data, str(path))


EMULATED_EDGE = DeviceProfile(
    "edge", 4.0, 1, 256 * 2**20,
    "emulated on the profiling machine: 1 thread, latencies x4 (an assumed Raspberry-Pi-4-class board)")
LOCAL_CLOUD = DeviceProfile("cloud", 1.0, 2, 16 * 2**30, "the profiling machine itself, 2 threads")

# Published latency (seconds) of torchvision ResNet-18, one 3x224x224 image, PyTorch eager in fp16, on
# real devices: NVIDIA-AI-IOT/torch2trt benchmarks/JETSON_NANO.md and JETSON_XAVIER.md ("Latency
# (PyTorch)" column), and the same torch2trt benchmark run on a Chameleon Cloud GPU node
# (waggle-sensor/summer2021, Liu/torch2trt-results.md). :func:`calibrated_device` turns one into a
# slowdown against this machine's own ResNet-18 latency (:func:`reference_latency`).
REFERENCE_LATENCY_S: dict[str, float] = {"jetson-nano": 0.0347, "jetson-xavier": 0.0071, "cloud-gpu": 0.00401}


def reference_latency(threads: int = 1, warmup: int = 3, repeats: int = 9) -> float:
    """Median seconds of one ResNet-18 forward (torchvision's architecture: transformers
    ``ResNetConfig`` basic blocks [2, 2, 2, 2], widths 64-512, random weights) on one 3×224×224 image
    on this machine at ``threads`` intra-op threads: the yardstick :func:`calibrated_device` compares
    published device latencies with."""
    from transformers import ResNetConfig, ResNetForImageClassification

    config = ResNetConfig(num_channels=3, embedding_size=64, hidden_sizes=[64, 128, 256, 512],
                          depths=[2, 2, 2, 2], layer_type="basic", num_labels=1000)
    torch.manual_seed(0)
    model = ResNetForImageClassification(config).eval()
    x = torch.randn(1, 3, 224, 224)
    return measure_latency(model, x, DeviceProfile("here", 1.0, threads, 1),
                           warmup, repeats)


def calibrated_device(name: str, kind: str, here_s: float, memory_bytes: int,
                      threads: int = 1) -> DeviceProfile:
    """A device of ``kind`` (a key of :data:`REFERENCE_LATENCY_S`) emulated on this machine: slowdown =
    its published ResNet-18 latency / ``here_s`` (this machine's, :func:`reference_latency` at
    ``threads``). The calibration is at 224×224 and batch 1; the description says so."""
    if kind not in REFERENCE_LATENCY_S:
        raise ConfigError(f"no published reference latency for {kind!r}; known: "
                          f"{', '.join(REFERENCE_LATENCY_S)}")
    if here_s <= 0:
        raise ConfigError(f"this machine's reference latency must be positive, got {here_s!r}")
    ref = REFERENCE_LATENCY_S[kind]
    return DeviceProfile(name, ref / here_s, threads, memory_bytes,
                         f"{kind}: ResNet-18 (224x224, batch 1, PyTorch fp16) {ref * 1e3:g} ms published vs "
                         f"{here_s * 1e3:.1f} ms here at {threads} thread(s): latencies x{ref / here_s:.3f}")


# -- measurements ------------------------------------------------------------------------------
@torch.inference_mode()
def measure_latencies(runs: Sequence[tuple[nn.Module, torch.Tensor, DeviceProfile]], warmup: int = 3,
                      repeats: int = 10) -> list[float]:
    """Seconds one forward of each ``(module, x, device)`` takes on that device: the median of
    ``repeats`` timed runs after ``warmup`` untimed ones, times ``device.slowdown``.

    Runs sharing a thread count are timed together, interleaved (``repeats`` rounds timing each
    once), so a burst of load on a shared machine hits them alike; the thread count is set once per
    group, because switching it between calls made a 2-thread convolution on a busy 2-core machine
    take 75 ms instead of 0.07 ms. Runs of the same module on the same input tensor at the same
    thread count (emulated devices that differ only in slowdown) are timed once and share the
    median, so their latencies keep exactly the ratio of their slowdowns."""
    if repeats < 1 or warmup < 0:
        raise ConfigError(f"latency needs repeats >= 1 and warmup >= 0, got {repeats}, {warmup}")
    before = torch.get_num_threads()
    keys = [(id(module), id(x), device.threads) for module, x, device in runs]
    first = {key: i for i, key in reversed(list(enumerate(keys)))}
    times: dict[int, list[float]] = {i: [] for i in first.values()}
    try:
        for threads in dict.fromkeys(device.threads for _, _, device in runs):
            group = [(i, module, x) for i, (module, x, device) in enumerate(runs)
                     if device.threads == threads and first[keys[i]] == i]
            torch.set_num_threads(threads)
            for _, module, x in group:
                for _ in range(warmup):
                    module(x)
            for _ in range(repeats):
                for i, module, x in group:
                    start = time.perf_counter()
                    module(x)
                    times[i].append(time.perf_counter() - start)
    finally:
        torch.set_num_threads(before)
    return [statistics.median(times[first[key]]) * device.slowdown for key, (_, _, device) in zip(keys, runs)]


def measure_latency(module: nn.Module, x: torch.Tensor, device: DeviceProfile, warmup: int = 3,
                    repeats: int = 10) -> float:
    """:func:`measure_latencies` of one run."""
    return measure_latencies([(module, x, device)], warmup, repeats)[0]


@torch.no_grad()
def count_flops(module: nn.Module, x: torch.Tensor) -> int:
    """FLOPs of one forward of ``module`` on ``x`` per input (2 × multiply-adds of its
    convolutions and linear layers), by forward hooks."""
    total = [0]

    def count(m: nn.Module, args: tuple, out: torch.Tensor) -> None:
        if isinstance(m, nn.Conv2d):
            total[0] += 2 * out.numel() * m.in_channels // m.groups * m.kernel_size[0] * m.kernel_size[1]
        else:
            total[0] += 2 * m.in_features * out.numel()

    hooks = [m.register_forward_hook(count) for m in module.modules()
             if isinstance(m, (nn.Conv2d, nn.Linear))]
    try:
        module(x)
    finally:
        for h in hooks:
            h.remove()
    return total[0] // x.shape[0]


def state_bytes(module: nn.Module) -> int:
    """Bytes of a module's parameters and buffers (what holding it costs a device)."""
    return sum(t.numel() * t.element_size() for t in (*module.parameters(), *module.buffers()))


@torch.no_grad()
def accuracy(chain: BlockChain, batches: Iterable[dict[str, torch.Tensor]]) -> float:
    """Top-1 accuracy of ``chain`` (eval mode) on batches of ``pixel_values`` and ``labels``."""
    chain.eval()
    right = total = 0
    for batch in batches:
        pred = chain(batch["pixel_values"]).argmax(-1)
        right += int((pred == batch["labels"]).sum())
        total += int(batch["labels"].numel())
    if total == 0:
        raise ConfigError("accuracy needs at least one labelled example")
    return right / total


# -- the profile -------------------------------------------------------------------------------
@dataclass
class BlockProfile:
    """One (block, width): parameters, FLOPs and output bytes per input, weight bytes, latency per
    device name (seconds, at the profile's batch size) and accuracy drop (fraction)."""

    block: str
    width: float
    params: int
    flops: int
    out_bytes: int
    mem_bytes: int
    latency_s: dict[str, float]
    acc_drop: float


@dataclass
class ChainProfile:
    """Profiles of every (block, width) of one chain; ``rows[b][w]``. ``settings`` are the width
    settings the accuracy drops were averaged over; ``additive_check`` lists measured vs predicted
    accuracy of random compositions, ``additive_error`` their mean absolute error."""

    model: str
    blocks: list[str]
    widths: list[float]
    devices: list[DeviceProfile]
    batch_size: int
    input_bytes: int
    base_accuracy: float
    rows: list[list[BlockProfile]]
    settings: list[list[float]]
    additive_check: list[dict[str, Any]] = field(default_factory=list)
    additive_error: float = 0.0

    def predicted_accuracy(self, widths: Sequence[float]) -> float:
        """The additive model's accuracy of the composition with block ``b`` at ``widths[b]``."""
        drops = (self.rows[b][self.widths.index(w)].acc_drop for b, w in enumerate(widths))
        return self.base_accuracy - sum(drops)

    def problem(self, bandwidth: float | Sequence[Sequence[float]], rtt_s: float | Sequence[Sequence[float]],
                source: int = 0) -> PlacementProblem:
        """The placement problem of this profile over its devices, with links of ``bandwidth``
        (bytes/s) and round trip ``rtt_s`` (seconds), each one number for every link or a matrix
        indexed [from][to]. Negative measured drops (noise) count as 0. A narrower width with as many
        parameters as the full one (a stem or head with no inner units: the same module) is left
        out, so timing noise cannot make the program pick a "width" that is not one."""
        n = len(self.devices)
        bw = _matrix(bandwidth, n, "bandwidth")
        rtt = _matrix(rtt_s, n, "rtt_s")
        names = [d.name for d in self.devices]
        full = self.widths.index(1.0)
        options = tuple(tuple(Option(r.width, max(0.0, r.acc_drop), tuple(r.latency_s[d] for d in names),
                                     r.mem_bytes)
                              for r in row if r.width == 1.0 or r.params < row[full].params)
                        for row in self.rows)
        return PlacementProblem(options, tuple(row[0].out_bytes * self.batch_size for row in self.rows),
                                self.input_bytes * self.batch_size, tuple(names),
                                tuple(d.memory_bytes for d in self.devices), bw, rtt, self.base_accuracy,
                                source)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["devices"] = [d.to_dict() for d in self.devices]
        return {"format": FORMAT, "version": VERSION, **data}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ChainProfile:
        if not isinstance(data, dict) or data.get("format") != FORMAT or data.get("version") != VERSION:
            raise ConfigError(f"not an edgeadapt offload profile (format {FORMAT!r} version {VERSION})")
        body = {k: v for k, v in data.items() if k not in ("format", "version")}
        try:
            body["devices"] = [DeviceProfile.from_dict(d) for d in body["devices"]]
            body["rows"] = [[BlockProfile(**r) for r in row] for row in body["rows"]]
            return cls(**body)
        except (KeyError, TypeError) as exc:
            raise ConfigError(f"malformed offload profile: {exc}") from None

    def save(self, path: str | Path) -> None:
        atomic_write_text(Path(path), json.dumps(self.to_dict(), indent=1))

    @classmethod
    def load(cls, path: str | Path) -> ChainProfile:
        path = Path(path)
        if not path.is_file():
            raise PathError(f"offload profile {path} does not exist")
        try:
            return cls.from_dict(json.loads(path.read_text()))
        except json.JSONDecodeError as exc:
            raise ConfigError(f"offload profile {path} is not valid JSON: {exc}") from None


def _matrix(value: float | Sequence[Sequence[float]], n: int, name: str) -> tuple[tuple[float, ...], ...]:
    if isinstance(value, (int, float)):
        return tuple(tuple(float(value) for _ in range(n)) for _ in range(n))
    rows = tuple(tuple(float(v) for v in row) for row in value)
    if len(rows) != n or any(len(r) != n for r in rows):
        raise ConfigError(f"{name} must be one number or a {n}×{n} matrix")
    return rows


def default_settings(widths: Sequence[float]) -> list[float]:
    """LegoDNN's three settings, in widths: everything full, everything at the widest narrowed
    width, everything at the narrowest (its sparsities 0, 0.2 and 0.8)."""
    narrowed = sorted((w for w in widths if w != 1.0), reverse=True)
    return list(dict.fromkeys([1.0, *narrowed[:1], *narrowed[-1:]]))


def accuracy_drops(desc: Descendants, batches: Sequence[dict[str, torch.Tensor]],
                   settings: Sequence[float] | None = None,
                   measured: dict[tuple[float, ...], float] | None = None
                   ) -> tuple[float, list[list[float]], dict]:
    """``(full accuracy, drop[b][w], accuracy of every composition measured)``: ``drop`` averaged over
    the uniform ``settings`` (default :func:`default_settings`) as the module doc says. ``measured``:
    compositions already evaluated on ``batches`` (widths → accuracy, e.g. filled by
    :func:`~edgeadapt.offload.exits.exit_accuracy_drops`), reused and added to."""
    settings = list(settings or default_settings(desc.widths))
    n = len(desc.names)
    measured = {} if measured is None else measured

    def acc(widths: tuple[float, ...]) -> float:
        if widths not in measured:
            measured[widths] = accuracy(desc.chain(widths), batches)
        return measured[widths]

    drops = [[0.0] * len(desc.widths) for _ in range(n)]
    for b in range(n):
        for w, width in enumerate(desc.widths):
            if width == 1.0:
                continue
            total = 0.0
            for s in settings:
                row = [s] * n
                with_full = tuple(row[:b] + [1.0] + row[b + 1:])
                with_w = tuple(row[:b] + [width] + row[b + 1:])
                total += acc(with_full) - acc(with_w)
            drops[b][w] = total / len(settings)
    return acc(tuple([1.0] * n)), drops, measured


def profile_chain(desc: Descendants, batches: Sequence[dict[str, torch.Tensor]],
                  devices: Sequence[DeviceProfile], batch_size: int = 1, warmup: int = 3,
                  repeats: int = 10, checks: int = 4, settings: Sequence[float] | None = None,
                  seed: int = 0, measured: dict[tuple[float, ...], float] | None = None) -> ChainProfile:
    """Profile every (block, width) of ``desc`` on ``devices`` (latency on an input of
    ``batch_size`` examples from the first batch, each block fed the full-width chain's real
    activations) and its accuracy drop on ``batches`` (labelled); then measure ``checks`` random
    compositions against the additive model. ``measured``: compositions already evaluated on the
    same ``batches`` (:func:`accuracy_drops`)."""
    if not devices or len({d.name for d in devices}) != len(devices):
        raise ConfigError("profile at least one device, each with its own name")
    desc.eval()
    x = batches[0]["pixel_values"][:batch_size]
    if x.shape[0] < batch_size:
        raise ConfigError(f"batch_size {batch_size} is larger than the first batch ({x.shape[0]})")
    with torch.no_grad():
        outs = desc.chain([1.0] * len(desc.names)).trace(x)
    ins = [x, *outs[:-1]]
    base, drops, measured = accuracy_drops(desc, batches, settings, measured)
    rows = []
    for b, name in enumerate(desc.names):  # a block's widths timed interleaved, per device
        runs = [(module, ins[b], d) for module in desc.modules[b] for d in devices]
        seconds = iter(measure_latencies(runs, warmup, repeats))
        row = []
        for w, width in enumerate(desc.widths):
            module = desc.modules[b][w]
            latency = {d.name: next(seconds) for d in devices}
            row.append(BlockProfile(name, width, desc.params(b, w), count_flops(module, ins[b]),
                                    outs[b][0].numel() * outs[b].element_size(), state_bytes(module),
                                    latency, drops[b][w]))
        rows.append(row)
    profile = ChainProfile(desc.base["name"], list(desc.names), list(desc.widths), list(devices), batch_size,
                           x[0].numel() * x.element_size(), base, rows,
                           [[s] * len(desc.names) for s in (settings or default_settings(desc.widths))])
    rng = random.Random(seed)
    for _ in range(checks):
        widths = tuple(rng.choice(desc.widths) for _ in desc.names)
        real = measured.get(widths)
        real = accuracy(desc.chain(widths), batches) if real is None else real
        profile.additive_check.append({"widths": list(widths), "measured": real,
                                       "predicted": profile.predicted_accuracy(widths)})
    if profile.additive_check:
        profile.additive_error = statistics.fmean(abs(c["measured"] - c["predicted"])
                                                  for c in profile.additive_check)
    return profile
