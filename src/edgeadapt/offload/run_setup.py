"""What ``offload run`` checks and loads before its first request: the server's address, the
server's chain (same weights, same exit heads), the two-device profile and the exit profiles of a
``--floor`` run, and the test split to evaluate.

Each function takes the few values it needs (not the whole run config) and raises
:class:`~edgeadapt.errors.ConfigError` naming the flag or file, the value and the fix.
"""

from __future__ import annotations

import warnings
from dataclasses import replace
from pathlib import Path
from typing import Any

from edgeadapt.data.registry import build_dataset, dataset_info, options_at_size
from edgeadapt.errors import ConfigError
from edgeadapt.offload.build import EXITS_FILE, PROFILE_FILE, load_exit_profiles
from edgeadapt.offload.exits import ExitProfile, end_problems
from edgeadapt.offload.profile import ChainProfile
from edgeadapt.offload.serve import RuntimeChain, descendants_dir

__all__ = ["check_address", "check_batch_size", "check_server", "edge_cloud_profile", "least_memory",
           "load_exits", "load_test_split", "profile_for", "profile_path"]


def check_address(server: str, field: str = "--server") -> None:
    """Refuse (:class:`ConfigError`) an address that is not ``HOST:PORT`` with a port in 1..65535
    (``[::1]:P`` for IPv6)."""
    host, _, port = server.rpartition(":")
    if not host or not port.isdigit() or not 1 <= int(port) <= 65535:
        raise ConfigError(f"{field}: {server!r} is not HOST:PORT (e.g. 127.0.0.1:50051, [::1]:50051)")


def check_server(info: dict[str, Any], chain: RuntimeChain, server: str, exits: bool = False) -> None:
    """Refuse a server whose chain is not this one (block count or weights differ) and, when the edge
    places with ``exits``, one whose exit heads are not this edge's (other weights, or none).
    ``info`` is the server's ``Info`` answer."""
    if info.get("blocks") != len(chain) or info.get("weights_hash") != chain.weights_hash:
        raise ConfigError(f"offload run: the server at {server} serves {info.get('model')!r} "
                          f"({info.get('blocks')} blocks, weights {str(info.get('weights_hash'))[:12]}) but "
                          f"this edge runs {chain.name!r} ({len(chain)} blocks, weights "
                          f"{chain.weights_hash[:12]}); "
                          "serve and run the same model")
    if exits and info.get("exits_hash") != chain.exits_hash:
        theirs = info.get("exits_hash")
        raise ConfigError(f"offload run: the server at {server} serves "
                          f"{'exit heads ' + str(theirs)[:12] if theirs else 'no exit heads'} but this edge "
                          f"plans with exit heads {str(chain.exits_hash)[:12]}; serve the same artifact, or "
                          "run with --no-exits")


def check_batch_size(batch_size: int, profiled: int) -> None:
    """Warn (one line) when a ``--floor`` run sends requests of ``batch_size`` inputs but its profile's
    latencies were measured at ``profiled``: the plan would trade compute against transfers of another
    request size."""
    if batch_size != profiled:
        warnings.warn(f"offload run: --batch-size {batch_size} differs from the profile's batch size "
                      f"{profiled}: the placement is planned on latencies measured at batch {profiled}; "
                      "rebuild with "
                      f"`offload build ... --profile-batch-size {batch_size}` to plan for batch {batch_size}",
                      stacklevel=3)


def least_memory(profile: ChainProfile, exits: list[ExitProfile], floor: float) -> tuple[int, str] | None:
    """The fewest bytes one device needs to run an end of the chain alone whose full-width accuracy
    reaches ``floor`` (each block at its smallest width offered — an exit without drops offers full
    width only — and an exit's head), and which end: a lower bound on the memory of an edge-only
    placement at ``floor``; ``None`` when no end reaches it. The ends are
    :func:`~edgeadapt.offload.exits.end_problems`'."""
    ends = []
    for problem, block in end_problems(profile, exits, 1.0, 0.0, floor):
        if problem.base_accuracy < floor - 1e-12:  # the whole chain is always listed
            continue
        need = sum(min(o.mem_bytes for o in opts) for opts in problem.options)
        ends.append((need, "the whole chain" if block is None else f"the exit after block {block}"))
    return min(ends) if ends else None


def edge_cloud_profile(profile: ChainProfile, edge: str | None = None, cloud: str | None = None
                       ) -> ChainProfile:
    """``profile`` restricted to two devices, edge first (the source of requests): ``edge`` and
    ``cloud`` by name, by default its first device and the first other one. Raises
    :class:`ConfigError` for an unknown name or a profile of one device."""
    names = [d.name for d in profile.devices]
    edge = edge or names[0]
    cloud = cloud or next((n for n in names if n != edge), None)
    for flag, name in (("--edge-device", edge), ("--cloud-device", cloud)):
        if name not in names or (flag == "--cloud-device" and name == edge):
            raise ConfigError(f"{flag} {name!r}: the profile's devices are {names}; the edge and the cloud "
                              "are two of them (profile the descendants on both)")
    return replace(profile, devices=[profile.devices[names.index(edge)], profile.devices[names.index(cloud)]])


def profile_path(model: str, profile: str | None) -> Path:
    """The profile of a ``floor`` run: ``profile`` when given, else ``profile.json`` beside the
    descendants artifact ``model``; raises :class:`ConfigError` when ``model`` is no such artifact
    and no profile is given."""
    directory = descendants_dir(model)
    if profile is None and directory is None:
        raise ConfigError(f"--floor needs a descendants artifact (build_offload's output) as --model, or "
                          f"--profile; {model!r} is neither")
    return Path(profile) if profile is not None else directory.parent / PROFILE_FILE


def profile_for(path: Path, chain: RuntimeChain, model: str, edge: str | None = None,
                cloud: str | None = None) -> ChainProfile:
    """The two-device profile at ``path`` (:func:`edge_cloud_profile` of ``edge`` and ``cloud``),
    checked against the chain of ``model`` (same blocks, every profiled width built)."""
    profile = edge_cloud_profile(ChainProfile.load(path), edge, cloud)
    missing = [w for w in profile.widths if w not in chain.widths]
    if profile.blocks != chain.names or missing:
        raise ConfigError(f"offload profile {path} is of blocks {profile.blocks} at widths {profile.widths}, "
                          f"but {model!r} has blocks {chain.names} at widths {list(chain.widths)}; "
                          "profile the artifact you run")
    return profile


def load_exits(profile_file: Path, chain: RuntimeChain, profile: ChainProfile, model: str
               ) -> list[ExitProfile]:
    """The exit profiles a ``floor`` run may end at: ``exits.json`` beside ``profile_file``, checked
    against the chain's exit heads and the profile's batch size; ``[]`` when there is no such file
    (with a warning when the chain has exit heads: a profile from elsewhere drops them)."""
    path = profile_file.parent / EXITS_FILE
    if not path.is_file():
        if chain.exits:  # e.g. --profile from elsewhere: its directory holds no exit profiles
            warnings.warn(f"offload run: {model!r} has {len(chain.exits)} exit heads but "
                          f"{profile_file.parent} holds no {EXITS_FILE}: planning the whole chain only; put "
                          f"the artifact's {EXITS_FILE} beside {profile_file.name}, or drop --profile",
                          stacklevel=3)
        return []
    batch_size, exits = load_exit_profiles(path)
    blocks = sorted(ex.block for ex in exits)
    if blocks != list(range(len(chain.exits))) or batch_size != profile.batch_size:
        heads = list(range(len(chain.exits)))
        raise ConfigError(f"exit profile {path} (exits after blocks {blocks}, batch {batch_size}) does not "
                          f"fit {model!r} (exit heads after blocks {heads}) and its "
                          f"profile (batch {profile.batch_size}); rebuild it with `offload build`, or pass "
                          "--no-exits")
    return exits


def load_test_split(name: str, chain: RuntimeChain) -> Any:
    """The test split of dataset ``name`` at the model's input size; refuses a non-image dataset or
    one whose class count differs from the model's logits."""
    if dataset_info(name).task != "image-classification":
        raise ConfigError(f"--data: {name!r} is not an image-classification dataset")
    size = chain.input_shapes[0][-1]
    split = build_dataset(name, **options_at_size(name, {}, size, "--data")).test
    classes = chain.input_shapes[-1][0]
    if len(split.classes) != classes:
        raise ConfigError(f"--data: {name!r} has {len(split.classes)} classes but the model has "
                          f"{classes} outputs")
    return split
