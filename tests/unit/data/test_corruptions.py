"""Corruptions: reproducible, per-image random, severity-ordered, shape-safe, strict about input."""

from __future__ import annotations

import pytest
import torch

from edgeadapt.data.corruptions import CORRUPTIONS, SEVERITIES, check_corruption, corrupt
from edgeadapt.data.digits import digits_tensors
from edgeadapt.data.preview import corruption_grid

# Corruptions with no randomness at all (a fixed filter or pixel map); the rest must use the seed.
DETERMINISTIC = {"defocus_blur", "zoom_blur", "brightness", "contrast", "pixelate", "jpeg_compression",
                 "gaussian_blur"}
RANDOM = [name for name in CORRUPTIONS if name not in DETERMINISTIC]
REQUIRED = ["gaussian_noise", "shot_noise", "impulse_noise", "defocus_blur", "motion_blur", "zoom_blur",
            "fog", "brightness", "contrast", "elastic_transform", "pixelate", "jpeg_compression"]


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    # These tensors are tiny: on a busy 2-core CI box, intra-op threads spin-wait on each other
    # and made this file 10x slower (30 s vs 3 s). Restored afterwards for the other tests.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module", params=[16, 32], ids=["16px", "32px"])
def digits(request: pytest.FixtureRequest) -> torch.Tensor:
    return digits_tensors("test", size=request.param)[0][:64]


def test_required_names_are_registered() -> None:
    assert set(REQUIRED) <= set(CORRUPTIONS)
    assert len(set(CORRUPTIONS)) == len(CORRUPTIONS)
    assert SEVERITIES == (1, 2, 3, 4, 5)


@pytest.mark.parametrize("name", CORRUPTIONS)
def test_shape_dtype_range_preserved(name: str, digits: torch.Tensor) -> None:
    for dtype in (torch.float32, torch.float64):
        x = digits.to(dtype)
        before = x.clone()
        out = corrupt(x, name, 5, seed=3)
        assert out.shape == x.shape and out.dtype == dtype and out.device == x.device
        assert out.min() >= -1 and out.max() <= 1 and torch.isfinite(out).all()
        assert torch.equal(x, before), "the input must not be modified in place"


@pytest.mark.parametrize("name", CORRUPTIONS)
@pytest.mark.parametrize("shape", [(0, 3, 16, 16), (2, 1, 16, 16), (2, 3, 16, 24)],
                         ids=["empty", "grey", "wide"])
def test_other_shapes_work(name: str, shape: tuple[int, ...]) -> None:
    x = torch.rand(shape, generator=torch.Generator().manual_seed(0)) * 2 - 1
    assert corrupt(x, name, 4).shape == shape


@pytest.mark.parametrize("name", CORRUPTIONS)
def test_same_seed_reproduces_and_leaves_global_rng_alone(name: str, digits: torch.Tensor) -> None:
    state = torch.random.get_rng_state()
    a = corrupt(digits, name, 3, seed=7)
    assert torch.equal(a, corrupt(digits, name, 3, seed=7))
    assert torch.equal(state, torch.random.get_rng_state())


@pytest.mark.parametrize("name", RANDOM)
def test_different_seed_gives_different_result(name: str, digits: torch.Tensor) -> None:
    assert not torch.equal(corrupt(digits, name, 3, seed=0), corrupt(digits, name, 3, seed=1))


@pytest.mark.parametrize("name", RANDOM)
def test_identical_images_in_a_batch_get_different_randomness(name: str, digits: torch.Tensor) -> None:
    twins = digits[:1].repeat(2, 1, 1, 1)
    out = corrupt(twins, name, 4, seed=0)
    assert (out[0] - out[1]).abs().mean() > 1e-3


@pytest.mark.parametrize("name", CORRUPTIONS)
def test_distance_to_clean_grows_strictly_with_severity(name: str, digits: torch.Tensor) -> None:
    distance = [(corrupt(digits, name, s, seed=0) - digits).abs().mean().item() for s in SEVERITIES]
    assert distance[0] > 1e-3, f"{name} severity 1 barely changes the images: {distance}"
    assert all(a < b for a, b in zip(distance, distance[1:])), f"{name} not increasing: {distance}"


@pytest.mark.parametrize("name", ["fogg", "", "saturate", "Gaussian_Noise"])
def test_unknown_name_lists_the_choices(name: str) -> None:
    with pytest.raises(ValueError, match="corruption") as err:
        check_corruption(name, 1)
    assert all(valid in str(err.value) for valid in CORRUPTIONS)


@pytest.mark.parametrize("severity", [0, 6, -1, 2.5, "3", True, None])
def test_bad_severity_names_the_field_and_range(severity: object) -> None:
    with pytest.raises(ValueError, match=r"severity must be an integer in 1\.\.5"):
        corrupt(torch.zeros(2, 3, 16, 16), "fog", severity)  # type: ignore[arg-type]


@pytest.mark.parametrize("images", [torch.zeros(3, 16, 16), torch.zeros(1, 1, 3, 16, 16),
                                    torch.zeros(2, 3, 16, 16, dtype=torch.long), [[0.0]]])
def test_bad_images_name_the_field_and_expected_shape(images: object) -> None:
    with pytest.raises(ValueError, match=r"images must be .*\[N, C, H, W\]"):
        corrupt(images, "gaussian_noise", 1)  # type: ignore[arg-type]


@pytest.mark.parametrize("seed", [-1, 1.5, None])
def test_bad_seed_names_the_field(seed: object) -> None:
    with pytest.raises(ValueError, match="seed must be a non-negative integer"):
        corrupt(torch.zeros(2, 3, 16, 16), "fog", 1, seed=seed)  # type: ignore[arg-type]


def test_numpy_integer_severity_is_accepted() -> None:
    import numpy as np

    x = torch.zeros(2, 3, 16, 16)
    assert torch.equal(corrupt(x, "brightness", np.int64(2)), corrupt(x, "brightness", 2))


def test_corruption_grid_writes_a_png(tmp_path) -> None:
    x = digits_tensors("test", size=16)[0][:4]
    path = corruption_grid(x, tmp_path / "sub" / "grid.png", corruptions=["fog", "pixelate"],
                           severities=[1, 5], n_images=2)
    data = path.read_bytes()
    assert path == tmp_path / "sub" / "grid.png"
    assert data.startswith(b"\x89PNG\r\n\x1a\n") and len(data) > 1000
    assert [p.name for p in path.parent.iterdir()] == ["grid.png"], "no temporary file may be left behind"
    with pytest.raises(ValueError, match="corruption"):
        corruption_grid(x, tmp_path / "bad.png", corruptions=["fogg"])
