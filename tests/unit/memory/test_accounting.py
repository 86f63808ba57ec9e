"""Peak-memory accounting: known allocations, views, frees, a real training step, baselines."""

from __future__ import annotations

import weakref

import pytest
import torch
from torch import nn

from edgeadapt.memory.accounting import MemoryReport, bytes_of, format_bytes, measure_peak
from edgeadapt.models.registry import load_adapter
from edgeadapt.training.loop import set_checkpointing

MiB = 2**20
cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


def _one(device: str = "cpu") -> None:
    x = torch.empty(1024, 1024, device=device)  # 4 MiB, freed on return
    del x


def _sequential(device: str = "cpu") -> None:
    x = torch.empty(1024, 1024, device=device)
    del x
    y = torch.empty(1024, 1024, device=device)
    del y


def _both(device: str = "cpu") -> None:
    x = torch.empty(1024, 1024, device=device)
    y = torch.empty(1024, 1024, device=device)
    del x, y


def _views() -> None:
    x = torch.empty(1024, 1024)
    a, b, c, d = x.view(-1), x[::2], x.t(), x[3]
    del a, b, c, d, x


def _view_keeps_storage() -> None:
    x = torch.empty(1024, 1024)
    row = x[0]  # the whole 4 MiB stays alive through this view
    del x
    y = torch.empty(1024, 1024)
    del y, row


@pytest.mark.parametrize(("fn", "mib"), [(_one, 4), (_sequential, 4), (_both, 8), (_views, 4),
                                         (_view_keeps_storage, 8)])
def test_known_allocations(fn, mib):
    _, report = measure_peak(fn)
    assert report.method == "dispatch" and report.device == "cpu"
    assert mib * MiB <= report.peak_bytes < (mib + 0.5) * MiB
    assert report.baseline_bytes == 0 and report.total_bytes == report.peak_bytes


def test_storage_finaliser_fires_when_last_view_dies():
    x = torch.empty(16)
    view = x[2:]
    fired: list[bool] = []
    weakref.finalize(x.untyped_storage(), fired.append, True)
    assert view.untyped_storage() is x.untyped_storage()  # one Python object per storage
    del x
    assert not fired  # the view still holds the storage
    del view
    assert fired == [True]


def test_in_place_and_pre_existing_tensors_are_not_counted():
    big = torch.zeros(1024, 1024)
    result, report = measure_peak(lambda: big.add_(1).mul_(2).view(-1)[:5].sum())
    assert result.item() == 10.0
    assert report.peak_bytes < 1024  # only the scalar sum is new


def test_returned_tensor_counts_and_result_is_returned():
    out, report = measure_peak(lambda: torch.ones(256, 1024))
    assert out.shape == (256, 1024) and report.peak_bytes == MiB


@pytest.fixture(scope="module")
def one_thread():
    # Two intra-op threads on a shared, loaded 2-core machine make each matmul 10x slower.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def llama(one_thread):
    adapter = load_adapter("tiny-llama")
    adapter.model.train()  # checkpointing only acts in training mode
    g = torch.Generator().manual_seed(0)
    batches = {b: {"input_ids": torch.randint(7, 2048, (b, 64), generator=g)} for b in (2, 4)}
    return adapter, batches


def _step_peak(adapter, batch, checkpointing: bool = False) -> MemoryReport:
    set_checkpointing(adapter.model, checkpointing)
    adapter.model.zero_grad(set_to_none=True)
    try:
        _, report = measure_peak(lambda: adapter.task_loss(batch).backward(), modules=[adapter.model])
    finally:
        set_checkpointing(adapter.model, False)
    return report


@pytest.fixture(scope="module")
def llama_peaks(llama):
    adapter, batches = llama
    return {"b4": _step_peak(adapter, batches[4]), "b4-again": _step_peak(adapter, batches[4]),
            "b4-ckpt": _step_peak(adapter, batches[4], checkpointing=True),
            "b2": _step_peak(adapter, batches[2])}


def test_training_step_peak_is_positive_and_deterministic(llama_peaks):
    first, second = llama_peaks["b4"], llama_peaks["b4-again"]
    assert first.peak_bytes > MiB
    assert first.peak_bytes == second.peak_bytes


def test_checkpointing_lowers_the_peak(llama_peaks):
    assert llama_peaks["b4-ckpt"].peak_bytes < 0.9 * llama_peaks["b4"].peak_bytes


def test_peak_grows_with_batch(llama_peaks):
    ratio = llama_peaks["b4"].peak_bytes / llama_peaks["b2"].peak_bytes
    assert 1.6 < ratio < 2.2


def _param_bytes(model: nn.Module) -> int:
    unique = {id(p): p for p in model.parameters()}.values()
    return sum(p.numel() * p.element_size() for p in unique)


def test_baseline_counts_parameters_once_then_optimizer_state():
    torch.manual_seed(0)
    shared = nn.Linear(32, 32)
    model = nn.Sequential(shared, nn.ReLU(), shared, nn.Linear(32, 4))  # tied: `shared` twice
    params = _param_bytes(model)
    assert params == (32 * 32 + 32 + 32 * 4 + 4) * 4
    assert bytes_of(model) == bytes_of([model, shared]) == params

    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model(torch.randn(8, 32)).sum().backward()
    assert bytes_of(model) == 2 * params  # + gradients
    _, report = measure_peak(opt.step, modules=[model], optimizer=opt)
    assert report.baseline_bytes == 2 * params
    assert report.peak_bytes >= 2 * params  # exp_avg and exp_avg_sq are created inside the step
    n_tensors = len(list(model.parameters()))
    assert bytes_of(model, opt) == 4 * params + 4 * n_tensors  # + two moments + a float32 step each


def test_baseline_of_tiny_llama_is_its_parameters_and_buffers(llama):
    adapter, _ = llama
    adapter.model.zero_grad(set_to_none=True)
    buffers = {b.untyped_storage().data_ptr(): b.untyped_storage().nbytes() for b in adapter.model.buffers()}
    assert bytes_of(adapter.model) == _param_bytes(adapter.model) + sum(buffers.values())


def test_format_bytes():
    assert format_bytes(512) == "512 B"
    assert format_bytes(1536) == "1.5 KiB"
    assert format_bytes(12_897_484) == "12.3 MiB"
    assert format_bytes(3 * 2**30) == "3.0 GiB"
    assert format_bytes(-2048) == "-2.0 KiB"


def test_bad_method_is_refused():
    with pytest.raises(ValueError, match="method"):
        measure_peak(lambda: None, method="guess")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="CUDA"):
        measure_peak(lambda: None, method="cuda")


@cuda
@pytest.mark.parametrize(("fn", "mib"), [(_one, 4), (_sequential, 4), (_both, 8)])
@pytest.mark.parametrize("method", ["cuda", "dispatch"])
def test_cuda_known_allocations(fn, mib, method):
    _, report = measure_peak(lambda: fn("cuda"), device="cuda", method=method)
    assert report.method == method and report.device.startswith("cuda:")
    assert mib * MiB <= report.peak_bytes < (mib + 0.5) * MiB


@cuda
def test_cuda_training_step(llama):
    adapter, batches = llama
    model = adapter.model.to("cuda")
    batch = {k: v.to("cuda") for k, v in batches[4].items()}
    try:
        adapter.task_loss(batch).backward()  # warm-up: cuBLAS workspaces are allocated once, here
        peaks: dict[str, list[int]] = {}
        for method in ("cuda", "cuda", "dispatch"):
            model.zero_grad(set_to_none=True)
            baseline = bytes_of(model)
            _, report = measure_peak(lambda: adapter.task_loss(batch).backward(), device="cuda",
                                     modules=[model], method=method)
            assert report.baseline_bytes == baseline
            peaks.setdefault(method, []).append(report.peak_bytes)
        assert peaks["cuda"][0] == peaks["cuda"][1] > MiB
        # The allocator rounds blocks up to 512 B and also sees kernel workspaces: close, never less.
        assert 0.5 < peaks["dispatch"][0] / peaks["cuda"][0] <= 1.05
    finally:
        model.zero_grad(set_to_none=True)
        model.to("cpu")


def test_parse_bytes_refuses_a_fraction_of_a_byte_instead_of_truncating():
    """Before: `--budget 1.5` was accepted as 1 byte (new-user trial)."""
    from edgeadapt.errors import ConfigError
    from edgeadapt.memory.accounting import parse_bytes

    assert parse_bytes("1.5GB") == 1_500_000_000 and parse_bytes("0.5KiB") == 512
    assert parse_bytes(4096) == 4096
    with pytest.raises(ConfigError, match="whole number of bytes.*1 or 2"):
        parse_bytes("1.5")
