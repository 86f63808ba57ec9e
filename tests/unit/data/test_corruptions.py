"""Corruptions: CIFAR-10-C's tables and formulas, reproducible, per-image random, shape-safe, strict.

The severity tables below are typed in from hendrycks/robustness ``ImageNet-C/create_c/make_cifar_c.py``
(the CIFAR-10-C generator), independently of the module's own tables.
"""

from __future__ import annotations

import colorsys
import io

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from edgeadapt.data.corruptions import (
    CORRUPTIONS,
    EXTRAS,
    PARAMETERS,
    SEVERITIES,
    STANDARD,
    check_corruption,
    corrupt,
    frost_texture,
)
from edgeadapt.data.digits import digits_tensors
from edgeadapt.data.image_ops import (
    clipped_zoom,
    disk_kernel,
    gaussian_filter,
    motion_blur_at,
    motion_kernel,
    plasma_fractal,
)
from edgeadapt.data.preview import corruption_grid
from edgeadapt.data.registry import build_dataset

REFERENCE = {
    "gaussian_noise": (0.04, 0.06, 0.08, 0.09, 0.10),
    "shot_noise": (500, 250, 100, 75, 50),
    "impulse_noise": (0.01, 0.02, 0.03, 0.05, 0.07),
    "defocus_blur": ((0.3, 0.4), (0.4, 0.5), (0.5, 0.6), (1, 0.2), (1.5, 0.1)),
    "glass_blur": ((0.05, 1, 1), (0.25, 1, 1), (0.4, 1, 1), (0.25, 1, 2), (0.4, 1, 2)),
    "motion_blur": ((6, 1), (6, 1.5), (6, 2), (8, 2), (9, 2.5)),
    "snow": ((0.1, 0.2, 1, 0.6, 8, 3, 0.95), (0.1, 0.2, 1, 0.5, 10, 4, 0.9),
             (0.15, 0.3, 1.75, 0.55, 10, 4, 0.9), (0.25, 0.3, 2.25, 0.6, 12, 6, 0.85),
             (0.3, 0.3, 1.25, 0.65, 14, 12, 0.8)),
    "frost": ((1, 0.2), (1, 0.3), (0.9, 0.4), (0.85, 0.4), (0.75, 0.45)),
    "fog": ((0.2, 3), (0.5, 3), (0.75, 2.5), (1, 2), (1.5, 1.75)),
    "brightness": (0.05, 0.1, 0.15, 0.2, 0.3),
    "contrast": (0.75, 0.5, 0.4, 0.3, 0.15),
    "elastic_transform": ((0, 0, 0.08), (0.05, 0.2, 0.07), (0.08, 0.06, 0.06), (0.1, 0.04, 0.05),
                          (0.1, 0.03, 0.03)),
    "pixelate": (0.95, 0.9, 0.85, 0.75, 0.65),
    "jpeg_compression": (80, 65, 58, 50, 40),
    "speckle_noise": (0.06, 0.1, 0.12, 0.16, 0.2),
    "gaussian_blur": (0.4, 0.6, 0.7, 0.8, 1),
    "spatter": ((0.62, 0.1, 0.7, 0.7, 0.5, 0), (0.65, 0.1, 0.8, 0.7, 0.5, 0), (0.65, 0.3, 1, 0.69, 0.5, 0),
                (0.65, 0.1, 0.7, 0.69, 0.6, 1), (0.65, 0.1, 0.5, 0.68, 0.6, 1)),
    "saturate": ((0.3, 0), (0.1, 0), (1.5, 0), (2, 0.1), (2.5, 0.2)),
}
# Corruptions with no randomness at all (a fixed filter or pixel map); the rest must use the seed.
DETERMINISTIC = {"defocus_blur", "zoom_blur", "brightness", "contrast", "pixelate", "jpeg_compression",
                 "gaussian_blur", "saturate"}
RANDOM = [name for name in CORRUPTIONS if name not in DETERMINISTIC]
# Where the reference itself grows strictly with severity on digits (glass, elastic, frost, spatter
# and motion 3→4 do not: their tables trade one parameter against another; saturate is a no-op on grey).
MONOTONE = ["gaussian_noise", "shot_noise", "impulse_noise", "defocus_blur", "zoom_blur", "snow", "fog",
            "brightness", "contrast", "pixelate", "jpeg_compression", "speckle_noise", "gaussian_blur"]


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    # These tensors are tiny: on a busy 2-core CI box, intra-op threads spin-wait on each other.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def digits() -> torch.Tensor:
    return digits_tensors("test", size=32)[0][:48]


def rand_image(shape: tuple[int, ...], seed: int = 0) -> torch.Tensor:
    """Uniform images in [0, 1] (the corruptions' own scale)."""
    return torch.rand(shape, generator=torch.Generator().manual_seed(seed))


def on01(x01: torch.Tensor, name: str, severity: int, seed: int = 0) -> torch.Tensor:
    """``corrupt`` on [0, 1] images (it takes and returns [-1, 1])."""
    return (corrupt(x01 * 2 - 1, name, severity, seed=seed) + 1) / 2


# ---------------------------------------------------------------- names and tables

def test_all_19_cifar10c_corruptions_in_reference_order() -> None:
    assert STANDARD == ("gaussian_noise", "shot_noise", "impulse_noise", "defocus_blur", "glass_blur",
                        "motion_blur", "zoom_blur", "snow", "frost", "fog", "brightness", "contrast",
                        "elastic_transform", "pixelate", "jpeg_compression")
    assert EXTRAS == ("speckle_noise", "gaussian_blur", "spatter", "saturate")
    assert CORRUPTIONS == STANDARD + EXTRAS and SEVERITIES == (1, 2, 3, 4, 5)


@pytest.mark.parametrize("name", sorted(REFERENCE))
def test_severity_table_is_the_reference(name: str) -> None:
    assert PARAMETERS[name] == REFERENCE[name]


def test_zoom_factors_are_the_references_arange() -> None:
    stops = (1.06, 1.11, 1.16, 1.21, 1.26)
    assert PARAMETERS["zoom_blur"] == tuple(len(np.arange(1, s, 0.01)) for s in stops) == (7, 12, 16, 21, 26)


# ---------------------------------------------------------------- formulas on constructed inputs

def test_gaussian_noise_std_and_speckle_scale_with_the_pixel() -> None:
    x = torch.full((8, 3, 32, 32), 0.5)
    for s, c in zip(SEVERITIES, REFERENCE["gaussian_noise"]):
        noise = on01(x, "gaussian_noise", s) - x
        assert abs(noise.std().item() - c) < 0.03 * c and abs(noise.mean().item()) < 0.004
    for s, c in zip(SEVERITIES, REFERENCE["speckle_noise"]):
        assert abs((on01(x, "speckle_noise", s) - x).std().item() - 0.5 * c) < 0.03 * 0.5 * c


def test_shot_noise_is_poisson_photons() -> None:
    x = torch.full((8, 3, 32, 32), 0.5)
    for s, photons in zip(SEVERITIES, REFERENCE["shot_noise"]):
        out = on01(x, "shot_noise", s)
        counts = out * photons
        assert torch.allclose(counts, counts.round(), atol=1e-3)  # whole photons
        assert abs(out.var().item() - 0.5 / photons) < 0.06 * 0.5 / photons


def test_impulse_noise_flips_the_given_fraction_to_black_or_white() -> None:
    x = torch.full((8, 3, 32, 32), 0.5)
    for s, amount in zip(SEVERITIES, REFERENCE["impulse_noise"]):
        out = on01(x, "impulse_noise", s)
        hit = (out - 0.5).abs() > 1e-6
        assert abs(hit.float().mean().item() - amount) < 0.15 * amount + 0.002
        assert set(out[hit].unique().tolist()) <= {0.0, 1.0}
        assert abs((out[hit] == 1).float().mean().item() - 0.5) < 0.1


def test_contrast_scales_the_distance_to_each_channel_mean() -> None:
    x = rand_image((4, 3, 32, 32))
    for s, c in zip(SEVERITIES, REFERENCE["contrast"]):
        mean = x.mean(dim=(2, 3), keepdim=True)
        assert torch.allclose(on01(x, "contrast", s), (x - mean) * c + mean, atol=1e-6)
    flat = torch.full((2, 3, 32, 32), 0.3)
    assert torch.allclose(on01(flat, "contrast", 5), flat, atol=1e-6)


def _hsv_reference(x: torch.Tensor, fn) -> torch.Tensor:
    """Per pixel through the standard library's HSV (skimage's convention), ``fn(h, s, v)``."""
    out = torch.empty_like(x)
    for n in range(x.shape[0]):
        for i in range(x.shape[2]):
            for j in range(x.shape[3]):
                h, s, v = colorsys.rgb_to_hsv(*x[n, :, i, j].tolist())
                out[n, :, i, j] = torch.tensor(colorsys.hsv_to_rgb(*fn(h, s, v)))
    return out


def test_brightness_is_the_hsv_value_shift() -> None:
    x = rand_image((2, 3, 8, 8))
    x[0, :, 0, 0] = 0.0  # black and grey pixels too
    x[0, :, 0, 1] = 0.4
    for s, c in zip(SEVERITIES, REFERENCE["brightness"]):
        expected = _hsv_reference(x, lambda h, sat, v: (h, sat, min(1.0, v + c)))
        assert torch.allclose(on01(x, "brightness", s), expected, atol=1e-5)


def test_saturate_is_the_hsv_saturation_map() -> None:
    x = rand_image((2, 3, 8, 8))
    x[0, :, 0, 0] = 0.4  # grey: hue 0, so a positive offset makes it red
    for s, (a, b) in zip(SEVERITIES, REFERENCE["saturate"]):
        expected = _hsv_reference(x, lambda h, sat, v: (h, min(1.0, max(0.0, sat * a + b)), v))
        assert torch.allclose(on01(x, "saturate", s), expected, atol=1e-5)


def test_gaussian_blur_is_scipys_gaussian_filter() -> None:
    ndimage = pytest.importorskip("scipy.ndimage")
    x = rand_image((2, 3, 32, 32))
    for s, sigma in zip(SEVERITIES, REFERENCE["gaussian_blur"]):
        expected = torch.from_numpy(ndimage.gaussian_filter(x.numpy(), sigma=(0, 0, sigma, sigma),
                                                            mode="nearest", truncate=4.0))
        assert torch.allclose(on01(x, "gaussian_blur", s), expected, atol=1e-5)
    expected = ndimage.gaussian_filter(x.numpy(), sigma=(0, 0, 6.4, 6.4), mode="reflect", truncate=3.0)
    assert torch.allclose(gaussian_filter(x, 6.4, "reflect", 3.0), torch.from_numpy(expected), atol=1e-5)


def test_defocus_kernel_is_the_aliased_disk_softened_by_a_3x3_gaussian() -> None:
    # radius < 1: the disk is the centre pixel alone, so the kernel is OpenCV's 3x3 Gaussian of alias_blur
    for radius, alias in REFERENCE["defocus_blur"][:3]:
        g = torch.exp(-torch.tensor([1.0, 0.0, 1.0], dtype=torch.float64) / (2 * alias**2))
        g = g / g.sum()
        assert torch.allclose(disk_kernel(radius, alias), torch.outer(g, g))
    # radius 1: the 5-pixel cross; radius 1.5: the 3x3 block; each then blurred, 5x5 support, sums to 1
    for radius, alias, core in ((1, 0.2, [[0, 1, 0], [1, 1, 1], [0, 1, 0]]), (1.5, 0.1, [[1] * 3] * 3)):
        k = disk_kernel(radius, alias)
        core = torch.tensor(core, dtype=torch.float64)
        g = torch.exp(-torch.tensor([1.0, 0.0, 1.0], dtype=torch.float64) / (2 * alias**2))
        g = g / g.sum()
        expected = F.conv2d(F.pad(core / core.sum(), (2, 2, 2, 2))[None, None], torch.outer(g, g)[None, None],
                            padding=1)[0, 0][1:-1, 1:-1]
        assert k.shape == (5, 5) and torch.allclose(k, expected) and abs(k.sum().item() - 1) < 1e-12


def test_motion_blur_is_imagemagicks_one_sided_gaussian_line() -> None:
    k = motion_kernel(6, 2)
    assert len(k) == 13 and len(motion_kernel(9, 2.5)) == 19  # 2 * ceil(radius) + 1 taps
    w = torch.exp(-torch.arange(13.0, dtype=torch.float64) ** 2 / 8)
    assert torch.allclose(k, w / w.sum())
    dot = torch.zeros(2, 1, 32, 32)
    dot[:, :, 16, 16] = 1
    out = motion_blur_at(dot, 6, 2, torch.tensor([0.0, 90.0]))
    # angle 0: each pixel averages the pixels to its right, so the dot trails to the left only
    assert torch.allclose(out[0, 0, 16, 4:17], k.flip(0).float(), atol=1e-6)
    assert out[0, 0, 16, 17:].abs().sum() == 0 and out[0, 0].sum().item() == pytest.approx(1, abs=1e-5)
    assert torch.allclose(out[1, 0, 4:17, 16], k.flip(0).float(), atol=1e-6)  # angle 90: upwards
    x = rand_image((6, 3, 32, 32))
    outs = [on01(x, "motion_blur", 5, seed=s) for s in (0, 1)]
    assert not torch.equal(*outs)  # a random angle per seed and image


def test_zoom_blur_keeps_a_constant_image_and_zooms_about_the_centre() -> None:
    flat = torch.full((2, 3, 32, 32), 0.6)
    for s in SEVERITIES:
        assert torch.allclose(on01(flat, "zoom_blur", s), flat, atol=1e-6)
    x = rand_image((1, 1, 32, 32))
    assert torch.equal(clipped_zoom(x, 1.0), x)
    z = clipped_zoom(x, 1.25)  # crop the central ceil(32/1.25)=26 pixels, resize to 32 (corners aligned)
    expected = F.interpolate(x[..., 3:29, 3:29], size=(32, 32), mode="bilinear", align_corners=True)
    assert torch.allclose(z, expected)


def test_pixelate_is_pils_box_down_and_up() -> None:
    x = rand_image((2, 3, 32, 32))
    u8 = (x * 255).round() / 255
    for s, c in zip(SEVERITIES, REFERENCE["pixelate"]):
        out = on01(u8, "pixelate", s)
        side = int(32 * c)
        for n in range(2):
            img = Image.fromarray((u8[n].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8))
            box = Image.Resampling.BOX
            ref = np.asarray(img.resize((side, side), box).resize((32, 32), box))
            assert np.abs(out[n].permute(1, 2, 0).numpy() * 255 - ref).max() <= 1.01  # PIL rounds to uint8
        # blockwise constant: at most `side` distinct columns (and rows) survive
        changes = (out[..., :, 1:] != out[..., :, :-1]).any(dim=(1, 2)).sum(-1)
        assert (changes <= side - 1).all()


def test_jpeg_is_pils_encoder_at_the_reference_quality() -> None:
    x = (rand_image((2, 3, 32, 32)) * 255).round() / 255
    for s, quality in zip(SEVERITIES, REFERENCE["jpeg_compression"]):
        out = on01(x, "jpeg_compression", s)
        buf = io.BytesIO()
        Image.fromarray((x[0].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)).save(
            buf, "JPEG", quality=quality)
        ref = np.asarray(Image.open(buf)).astype(np.float32) / 255
        assert np.abs(out[0].permute(1, 2, 0).numpy() - ref).max() < 1e-6


def test_fog_adds_a_grey_plasma_and_rescales_to_the_maximum() -> None:
    maps = plasma_fractal(4, 32, 2.0, torch.Generator().manual_seed(0))
    assert maps.shape == (4, 32, 32)
    assert torch.allclose(maps.amin(dim=(1, 2)), torch.zeros(4)) and torch.allclose(maps.amax(dim=(1, 2)),
                                                                                   torch.ones(4))
    x = rand_image((3, 3, 32, 32)) * 0.8
    for s, (strength, _) in zip(SEVERITIES, REFERENCE["fog"]):
        top = x.amax(dim=(1, 2, 3), keepdim=True)
        added = on01(x, "fog", s) * (top + strength) / top - x  # undo the rescaling: the fog layer
        assert added.min() >= -1e-5 and added.max() <= strength + 1e-5
        assert torch.allclose(added[:, 0], added[:, 2], atol=1e-5)  # one grey map for every channel
        assert added.amax(dim=(1, 2, 3)).min() > 0.9 * strength  # the map spans [0, 1] before scaling


def test_frost_blends_a_procedural_texture_with_the_reference_photos_statistics() -> None:
    tex = frost_texture(400, (32, 32), torch.Generator().manual_seed(0))
    assert tex.shape == (400, 3, 32, 32) and tex.min() >= 0 and tex.max() <= 1
    rgb = tex.mean(dim=(2, 3))
    # mean colours of the reference's frost crops span (0.31, 0.59, 0.65) .. (0.79, 0.81, 0.84): bluish
    assert (rgb[:, 2] >= rgb[:, 0] - 0.05).float().mean() > 0.95
    assert 0.45 < rgb.mean().item() < 0.75
    grey = tex.mean(1)
    crop_std = grey.std(dim=(1, 2))
    assert 0.035 < crop_std.mean().item() < 0.08  # the photos' crops: 0.04-0.09
    centred = grey - grey.mean(dim=(1, 2), keepdim=True)
    lag1 = (centred[:, :, 1:] * centred[:, :, :-1]).mean() / (centred**2).mean()
    assert 0.5 < lag1.item() < 0.95  # smooth at the pixel scale, like the photos (0.73-0.91)
    x = rand_image((3, 3, 32, 32)) * 0.5
    for s, (a, b) in zip(SEVERITIES, REFERENCE["frost"]):
        texture = (on01(x, "frost", s) - a * x) / b
        assert texture.min() >= -1e-4 and texture.max() <= 1 + 1e-4


def test_glass_blur_only_moves_pixels_between_its_two_blurs() -> None:
    # severity 1's sigma (0.05) leaves the blurs as the identity: what remains is a permutation of
    # the uint8-truncated pixels, the same for every channel
    x = rand_image((2, 3, 32, 32))
    out = on01(x, "glass_blur", 1)
    truncated = torch.floor(x * 255) / 255
    assert torch.allclose(out.flatten(2).sort(-1).values, truncated.flatten(2).sort(-1).values, atol=1e-6)
    assert not torch.allclose(out, truncated, atol=1e-6)


def test_elastic_and_other_geometric_corruptions_keep_a_constant_image() -> None:
    flat = torch.full((2, 3, 32, 32), 0.42)
    for name in ("elastic_transform", "glass_blur", "defocus_blur", "motion_blur", "gaussian_blur",
                 "pixelate"):
        for s in SEVERITIES:
            assert torch.allclose(on01(flat, name, s), flat, atol=2 / 255), (name, s)


def test_snow_only_brightens_and_spatter_water_only_adds() -> None:
    x = rand_image((4, 3, 32, 32)) * 0.5
    for s, (*_, blend) in zip(SEVERITIES, REFERENCE["snow"]):
        grey = (x * torch.tensor([0.299, 0.587, 0.114])[None, :, None, None]).sum(1, keepdim=True)
        base = blend * x + (1 - blend) * torch.maximum(x, grey * 1.5 + 0.5)
        assert (on01(x, "snow", s) >= base.clamp(0, 1) - 1e-5).all()
    for s in (1, 2, 3):
        assert (on01(x, "spatter", s) >= x - 1e-5).all()
    mud = on01(x, "spatter", 5, seed=1)
    assert (mud <= x.clamp_min(63 / 255) + 1e-5).all()  # mud: towards dark brown, never brighter


# ---------------------------------------------------------------- contract: shapes, seeds, errors

@pytest.mark.parametrize("name", CORRUPTIONS)
def test_shape_dtype_range_preserved(name: str, digits: torch.Tensor) -> None:
    for dtype in (torch.float32, torch.float64):
        x = digits[:8].to(dtype)
        before = x.clone()
        out = corrupt(x, name, 5, seed=3)
        assert out.shape == x.shape and out.dtype == dtype and out.device == x.device
        assert out.min() >= -1 and out.max() <= 1 and torch.isfinite(out).all()
        assert torch.equal(x, before), "the input must not be modified in place"
        assert corrupt(x, name, 5, seed=3, size=16).shape == (8, 3, 16, 16)


@pytest.mark.parametrize("name", CORRUPTIONS)
@pytest.mark.parametrize("shape", [(0, 3, 32, 32), (2, 1, 16, 16), (2, 3, 16, 24)],
                         ids=["empty", "grey", "wide"])
def test_other_shapes_work(name: str, shape: tuple[int, ...]) -> None:
    x = torch.rand(shape, generator=torch.Generator().manual_seed(0)) * 2 - 1
    out = corrupt(x, name, 4)
    assert out.shape == shape and torch.isfinite(out).all()


@pytest.mark.parametrize("name", CORRUPTIONS)
def test_same_seed_reproduces_and_leaves_global_rngs_alone(name: str, digits: torch.Tensor) -> None:
    torch_state, np_state = torch.random.get_rng_state(), np.random.get_state()
    a = corrupt(digits, name, 3, seed=7)
    assert torch.equal(a, corrupt(digits, name, 3, seed=7))
    assert torch.equal(torch_state, torch.random.get_rng_state())
    assert all(np.array_equal(u, v) for u, v in zip(np_state, np.random.get_state()))


@pytest.mark.parametrize("name", RANDOM)
def test_different_seed_gives_different_result(name: str, digits: torch.Tensor) -> None:
    assert not torch.equal(corrupt(digits, name, 3, seed=0), corrupt(digits, name, 3, seed=1))


@pytest.mark.parametrize("name", RANDOM)
def test_identical_images_in_a_batch_get_different_randomness(name: str, digits: torch.Tensor) -> None:
    twins = digits[:1].repeat(2, 1, 1, 1)
    out = corrupt(twins, name, 4, seed=0)
    assert (out[0] - out[1]).abs().mean() > 1e-3


@pytest.mark.parametrize("name", MONOTONE)
def test_distance_to_clean_grows_strictly_with_severity(name: str, digits: torch.Tensor) -> None:
    distance = [(corrupt(digits, name, s, seed=0) - digits).abs().mean().item() for s in SEVERITIES]
    assert distance[0] > 1e-3, f"{name} severity 1 barely changes the images: {distance}"
    assert all(a < b for a, b in zip(distance, distance[1:])), f"{name} not increasing: {distance}"


@pytest.mark.parametrize("name", CORRUPTIONS)
def test_every_corruption_changes_the_digits_at_severity_5(name: str, digits: torch.Tensor) -> None:
    assert (corrupt(digits, name, 5, seed=0) - digits).abs().mean() > 1e-3


def test_digits_c_at_16_is_the_32px_corruption_box_averaged() -> None:
    clean32, clean16 = digits_tensors("test", size=32)[0], digits_tensors("test", size=16)[0]
    assert torch.allclose(F.interpolate(clean32, size=(16, 16), mode="area"), clean16, atol=1e-6)
    test16 = build_dataset("digits-c", corruption="fog", severity=3, size=16).test.images
    test32 = build_dataset("digits-c", corruption="fog", severity=3, size=32).test.images
    assert test16.shape[-2:] == (16, 16) and test32.shape[-2:] == (32, 32)
    assert torch.allclose(F.interpolate(test32, size=(16, 16), mode="area"), test16, atol=1e-6)
    # the test split of corruption seed 0 is corrupted with seed 2
    assert torch.allclose(corrupt(clean32, "fog", 3, seed=2, size=16), test16, atol=1e-6)


@pytest.mark.parametrize("name", ["fogg", "", "Gaussian_Noise", "elastic"])
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


@pytest.mark.parametrize("size", [0, -3, 2.5, True])
def test_bad_size_names_the_field(size: object) -> None:
    with pytest.raises(ValueError, match="size must be a positive integer"):
        corrupt(torch.zeros(2, 3, 32, 32), "fog", 1, size=size)  # type: ignore[arg-type]


def test_numpy_integer_severity_is_accepted() -> None:
    x = torch.zeros(2, 3, 16, 16)
    assert torch.equal(corrupt(x, "brightness", np.int64(2)), corrupt(x, "brightness", 2))


def test_corruption_grid_writes_a_png(tmp_path) -> None:
    x = digits_tensors("test", size=32)[0][:4]
    path = corruption_grid(x, tmp_path / "sub" / "grid.png", corruptions=["fog", "frost"],
                           severities=[1, 5], n_images=2)
    data = path.read_bytes()
    assert path == tmp_path / "sub" / "grid.png"
    assert data.startswith(b"\x89PNG\r\n\x1a\n") and len(data) > 1000
    assert [p.name for p in path.parent.iterdir()] == ["grid.png"], "no temporary file may be left behind"

    small = corruption_grid(x, tmp_path / "small.png", corruptions=["fog"], severities=[5], size=16)
    assert small.read_bytes() != corruption_grid(x, tmp_path / "big.png", corruptions=["fog"],
                                                 severities=[5]).read_bytes()
    with pytest.raises(ValueError, match="corruption"):
        corruption_grid(x, tmp_path / "bad.png", corruptions=["fogg"])
