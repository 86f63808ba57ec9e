"""The noun *plan* of CNN channel pruning: :class:`ChannelPlan`, kept channels of the *base* model
per pruned channel group (named by its root convolution), serialisable to JSON.

A group not listed keeps all its channels, so the dense plan lists none. Indices always refer to the
base (unpruned) model, so a plan is meaningful on its own and pruning a pruned model gives a smaller
plan. Groups and how a plan is applied live in :mod:`edgeadapt.pruning.channels`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgeadapt.errors import PlanError
from edgeadapt.models.cnn import CNNAdapter
from edgeadapt.pruning.plan import is_index, read_plan_json, write_plan_json

FORMAT = "edgeadapt.channel-plan"
VERSION = 1


@dataclass
class ChannelGroup:
    """One pruned group: its root convolution, its channels in the base model, the kept ones."""

    module: str
    channels: int
    kept: list[int]


@dataclass
class ChannelPlan:
    """Kept channels per pruned group of one base CNN; a group not listed keeps all its channels
    (so the dense plan lists none). Indices refer to the base model's channels."""

    architecture: dict[str, Any]
    groups: list[ChannelGroup] = field(default_factory=list)

    def group(self, module: str) -> ChannelGroup | None:
        return next((g for g in self.groups if g.module == module), None)

    def is_dense(self) -> bool:
        return all(len(g.kept) == g.channels for g in self.groups)

    def summary(self) -> str:
        kept = sum(len(g.kept) for g in self.groups)
        total = sum(g.channels for g in self.groups)
        return f"channel groups pruned {sum(len(g.kept) < g.channels for g in self.groups)}, channels in " \
               f"them {kept}/{total}"

    def validate(self, architecture: dict[str, Any] | None = None) -> ChannelPlan:
        """Check the plan was made for ``architecture`` (when given) and that every group keeps
        unique ascending integer indices in ``[0, channels)``, at least one. Returns ``self``;
        raises :class:`~edgeadapt.errors.PlanError`."""
        if architecture is not None and architecture != self.architecture:
            diff = {k: (self.architecture.get(k), architecture.get(k)) for k in architecture
                    if self.architecture.get(k) != architecture.get(k)}
            raise PlanError(f"channel plan was made for another architecture; mismatched fields (plan, "
                            f"model): {diff}")
        names = [g.module for g in self.groups]
        if len(set(names)) != len(names):
            twice = sorted({n for n in names if names.count(n) > 1})
            raise PlanError(f"channel plan names a group twice: {twice}")
        for g in self.groups:
            if not isinstance(g.module, str) or not is_index(g.channels) or g.channels < 1:
                raise PlanError(f"group {g.module!r}: module must be a path and channels a positive integer")
            if not isinstance(g.kept, list) or not all(is_index(i) for i in g.kept):
                raise PlanError(f"group {g.module}: kept must be a list of integer channel indices")
            if not g.kept:
                raise PlanError(f"group {g.module} keeps no channels; keep at least one")
            if g.kept != sorted(set(g.kept)) or g.kept[0] < 0 or g.kept[-1] >= g.channels:
                raise PlanError(f"group {g.module}: kept must be unique ascending indices in "
                                f"[0, {g.channels})")
        return self

    def to_dict(self) -> dict[str, Any]:
        return {"format": FORMAT, "version": VERSION, "architecture": self.architecture,
                "groups": [{"module": g.module, "channels": g.channels, "kept": g.kept} for g in self.groups]}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ChannelPlan:
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise PlanError(f"not an edgeadapt channel plan (expected format {FORMAT!r}; a transformer's "
                            "pruning plan cannot be applied to a CNN)")
        if data.get("version") != VERSION:
            raise PlanError(f"channel plan version {data.get('version')} is not supported "
                            f"(expected {VERSION})")
        try:
            groups = [ChannelGroup(g["module"], g["channels"], g["kept"]) for g in data["groups"]]
            return cls(dict(data["architecture"]), groups).validate()
        except (KeyError, TypeError, AttributeError) as exc:
            raise PlanError(f"malformed channel plan: missing or wrong field ({exc})") from None

    def save(self, path: str | Path) -> None:
        write_plan_json(path, self.to_dict())

    @classmethod
    def load(cls, path: str | Path) -> ChannelPlan:
        return cls.from_dict(read_plan_json(path))


def current_channel_plan(adapter: CNNAdapter) -> ChannelPlan:
    """The plan ``adapter.model`` realises (the dense one when it was never pruned)."""
    return adapter.plan if adapter.plan is not None else ChannelPlan(adapter.fingerprint(), [])
