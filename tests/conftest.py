"""Shared fixtures: offline mode, a per-session cache, tiny adapters and their batches."""

from __future__ import annotations

import contextlib
import importlib.util
import io
import os
import sys
from pathlib import Path

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402
import torch  # noqa: E402

# Tiny tensors gain nothing from intra-op threads, and on a shared 2-core CI box two spinning
# threads per op slow the suite down several-fold.
torch.set_num_threads(1)

TINY = ["tiny-vit", "tiny-bert", "tiny-gpt2", "tiny-opt", "tiny-llama"]
ALL = [*TINY, "minilm"]


# Session artifacts that take about a minute each to build. Only tests marked `slow` may use them, so
# `make test-fast` (pytest -m "not slow") never trains the source ViT.
TRAINED_FIXTURES = ("source_vit_dir", "offline_vit_dir")
running: list[pytest.Item] = []  # the test being set up, for fixtures requested by name at run time


def unmarked_trained_users(items: list[pytest.Item]) -> list[str]:
    """Node ids of the tests in ``items`` that use a trained session fixture but are not marked slow."""
    return [item.nodeid for item in items
            if set(TRAINED_FIXTURES) & set(getattr(item, "fixturenames", ()))
            and item.get_closest_marker("slow") is None]


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Refuse a run in which a test uses a trained session fixture without `@pytest.mark.slow`."""
    bad = unmarked_trained_users(items)
    if bad:
        raise pytest.UsageError(f"tests using {' or '.join(TRAINED_FIXTURES)} train for about a minute; "
                                f"mark them @pytest.mark.slow: {', '.join(bad)}")


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    running[:] = [item]


def require_slow(name: str) -> None:
    """Fail the test being set up if it reaches ``name`` (e.g. via getfixturevalue) and is not slow."""
    if running and running[0].get_closest_marker("slow") is None:
        pytest.fail(f"{running[0].nodeid} uses {name}, which trains for about a minute: "
                    "mark it @pytest.mark.slow", pytrace=False)


@pytest.fixture(scope="session", autouse=True)
def _cache(tmp_path_factory: pytest.TempPathFactory) -> None:
    os.environ["EDGEADAPT_CACHE"] = str(tmp_path_factory.mktemp("edgeadapt-cache"))


def make_batches(adapter, n: int = 2, size: int = 4, length: int = 24) -> list[dict[str, torch.Tensor]]:
    """Small deterministic batches of the adapter's modality (labels where the task has them)."""
    g = torch.Generator().manual_seed(0)
    out = []
    for _ in range(n):
        if adapter.modality == "image":
            c = adapter.model.config
            shape = (size, c.num_channels, c.image_size, c.image_size)
            batch = {"pixel_values": torch.randn(shape, generator=g)}
        else:
            vocab = adapter.model.config.vocab_size
            batch = {"input_ids": torch.randint(7, vocab, (size, length), generator=g),
                     "attention_mask": torch.ones(size, length, dtype=torch.long)}
            batch["attention_mask"][0, length // 2:] = 0  # some padding
            if adapter.task.name == "sentence-embedding":
                batch["pair_input_ids"] = torch.randint(7, vocab, (size, length), generator=g)
                batch["pair_attention_mask"] = torch.ones(size, length, dtype=torch.long)
        if adapter.task.name == "classification":
            batch["labels"] = torch.randint(0, adapter.model.config.num_labels, (size,), generator=g)
        out.append(batch)
    return out


def outputs(adapter, batch) -> torch.Tensor:
    """The model's main output (logits, or the last hidden state for encoders), in eval mode."""
    from edgeadapt.models.tasks import model_inputs

    adapter.model.eval()
    with torch.no_grad():
        out = adapter.model(**model_inputs(batch))
    return out.logits if hasattr(out, "logits") and out.logits is not None else out.last_hidden_state


def state(adapter) -> dict[str, torch.Tensor]:
    """A detached copy of the model's state dict."""
    return {k: v.detach().clone() for k, v in adapter.model.state_dict().items()}


def at_width(kb, width: float, batch) -> torch.Tensor:
    """The knowledge base's output at ``width`` (restored to full width afterwards)."""
    kb.set_width(width)
    try:
        return outputs(kb.adapter, batch)
    finally:
        kb.set_width(1.0)


@pytest.fixture(scope="session")
def minilm_adapter():
    from edgeadapt.models.registry import load_adapter

    return load_adapter("minilm")


@pytest.fixture
def load(minilm_adapter):
    """Fresh adapter by name (minilm is loaded once and deep-copied)."""
    import copy

    from edgeadapt.models.registry import load_adapter

    def _load(name: str):
        return copy.deepcopy(minilm_adapter) if name == "minilm" else load_adapter(name)

    return _load


REPO = Path(__file__).resolve().parents[1]


def load_benchmark(name: str):
    """The script ``benchmarks/<name>.py`` as a module, imported by path once (``benchmarks/`` is not
    a package; its directory goes on ``sys.path`` so a script's own ``import benchlib`` works)."""
    if name not in sys.modules:
        bench = REPO / "benchmarks"
        sys.path.insert(0, str(bench))
        spec = importlib.util.spec_from_file_location(name, bench / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]

SOURCE_RECIPE_YAML = REPO / "configs" / "train-vit-digits.yaml"


@pytest.fixture(scope="session")
def source_vit_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The source tiny ViT, trained ONCE per session by `edgeadapt train` on the shipped recipe
    (an artifact directory; ~1 min on 2 cores, so only `slow` tests may use it). What the command
    printed is kept beside it in ``train.stdout`` for the test of the CLI itself."""
    from edgeadapt.cli.main import main

    require_slow("source_vit_dir")
    root = tmp_path_factory.mktemp("source")
    out = root / "source-vit"
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        code = main(["train", "--config", str(SOURCE_RECIPE_YAML), "--out", str(out)])
    (root / "train.stdout").write_text(printed.getvalue())
    assert code == 0, printed.getvalue()
    return out


@pytest.fixture(scope="session")
def offline_vit_dir(source_vit_dir, tmp_path_factory: pytest.TempPathFactory):
    """`edgeadapt offline all` on the source ViT (short training), once per session."""
    import yaml

    from edgeadapt.cli.main import main

    require_slow("offline_vit_dir")
    root = tmp_path_factory.mktemp("offline")
    recipe = REPO / "configs" / "offline-vit-digits.yaml"
    cfg = yaml.safe_load(recipe.read_text())
    cfg.update(model=str(source_vit_dir), out=str(root / "offline"), tracking={"backends": ["csv"]})
    cfg["lora"]["train"].update(epochs=2, progress=False)
    cfg["kb"]["train"].update(epochs=4, progress=False)
    path = root / "offline.yaml"
    path.write_text(yaml.safe_dump(cfg))
    assert main(["offline", "all", "--config", str(path)]) == 0
    return root / "offline"
