"""CIFAR-10-C-style corruptions at five severities, sized for tiny (16×16, 32×32) digit images.

Why: test-time adaptation needs controlled drift. Hendrycks & Dietterich's CIFAR-10-C recipe
(noise, blur, weather, digital corruptions at severities 1–5) is the standard way to make it, but
its parameters are tuned for 32×32 natural photos. Our digits are white strokes on black
upsampled from 8×8, so the parameters here were re-calibrated against the tiny ViT source model:
severity 1 is mild, severity 5 is clearly hard for most corruptions (brightness, zoom blur and
JPEG stay moderate, as brightness and JPEG do in CIFAR-10-C).

Conventions, like CIFAR-10-C: each corruption works in [0, 1] pixel space and picks its
parameter with ``c = (...)[severity - 1]``. Spatial parameters are given in pixels *for a 16×16
image* and scaled by ``S / 16`` so a 32×32 image drifts the same way. All randomness comes from
one local ``torch.Generator`` seeded from ``(seed, name, severity)``; the global RNG is never
touched. Everything is vectorised over the batch except JPEG (PIL encodes one image at a time).

Example::

    x, y = digits_tensors("test", size=16)
    x_fog = corrupt(x, "fog", severity=3, seed=0)
"""

from __future__ import annotations

import io
import math
import numbers
import zlib
from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from edgeadapt.errors import ConfigError

SEVERITIES = (1, 2, 3, 4, 5)

Corruption = Callable[[Tensor, int, torch.Generator], Tensor]


# ---------------------------------------------------------------- helpers (x is [N, C, H, W] in [0, 1])

def _px(x: Tensor, pixels: float) -> float:
    """A length given for a 16×16 image, scaled to this image's size."""
    return pixels * x.shape[-1] / 16


def _conv(x: Tensor, kernel: Tensor) -> Tensor:
    """Filter every channel of every image with one ``[k, k]`` kernel (edge-replicated borders)."""
    k = kernel.shape[-1]
    n, c, h, w = x.shape
    out = F.conv2d(F.pad(x.reshape(n * c, 1, h, w), [k // 2] * 4, mode="replicate"),
                   kernel.reshape(1, 1, k, k).to(x))
    return out.reshape(n, c, h, w)


def _conv_per_image(x: Tensor, kernels: Tensor) -> Tensor:
    """Filter image ``i`` with ``kernels[i]`` (``[N, k, k]``) as one grouped convolution."""
    n, c, h, w = x.shape
    k = kernels.shape[-1]
    weight = kernels.to(x).repeat_interleave(c, dim=0).unsqueeze(1)  # [N*C, 1, k, k]
    out = F.conv2d(F.pad(x.reshape(1, n * c, h, w), [k // 2] * 4, mode="replicate"), weight, groups=n * c)
    return out.reshape(n, c, h, w)


def _gaussian_kernel(sigma: float) -> Tensor:
    """Normalised 2-D Gaussian ``[k, k]`` reaching out to 3 sigma."""
    r = max(1, math.ceil(3 * sigma))
    t = torch.arange(-r, r + 1, dtype=torch.float32)
    g = torch.exp(-t**2 / (2 * sigma**2))
    return torch.outer(g, g) / g.sum() ** 2


def _disk_kernel(radius: float) -> Tensor:
    """Anti-aliased disk: the fraction of each pixel inside ``radius`` (8×8 supersampling), so the
    blur grows smoothly with a fractional radius instead of jumping at integer radii."""
    r = math.ceil(radius)
    sub = (torch.arange(8, dtype=torch.float32) + 0.5) / 8 - 0.5
    t = (torch.arange(-r, r + 1, dtype=torch.float32)[:, None] + sub).reshape(-1)  # [(2r+1)*8]
    inside = (t[:, None] ** 2 + t[None, :] ** 2 <= radius**2).float()
    k = inside.reshape(2 * r + 1, 8, 2 * r + 1, 8).mean(dim=(1, 3))
    return k / k.sum()


def _warp(x: Tensor, flow: Tensor) -> Tensor:
    """Resample ``x`` at pixel positions displaced by ``flow`` (``[N, H, W, 2]``, in pixels, x/y)."""
    n, _, h, w = x.shape
    theta = torch.tensor([[1.0, 0, 0], [0, 1.0, 0]]).expand(n, 2, 3)
    grid = F.affine_grid(theta, [n, 1, h, w], align_corners=False)
    grid = grid + flow * torch.tensor([2 / w, 2 / h])
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)


def _smooth_field(n: int, hw: tuple[int, int], grid: int, g: torch.Generator, channels: int = 1) -> Tensor:
    """Low-frequency random field ``[N, channels, H, W]``: a ``grid``² uniform lattice in [-1, 1]
    upsampled bicubically, so neighbouring pixels move (or fog) together."""
    coarse = torch.rand(n, channels, grid, grid, generator=g) * 2 - 1
    return F.interpolate(coarse, size=hw, mode="bicubic", align_corners=True)


def _plasma(n: int, hw: tuple[int, int], decay: float, g: torch.Generator) -> Tensor:
    """Fractal cloud ``[N, 1, H, W]`` in [0, 1]: octaves of smooth noise whose amplitude falls by
    ``1/decay`` per octave — the spectrum of diamond-square plasma, without its per-image loop."""
    total = torch.zeros(n, 1, *hw)
    for octave in range(max(1, int(math.log2(max(hw))))):
        total += _smooth_field(n, hw, 2 ** (octave + 1) + 1, g) / decay**octave
    lo = total.amin(dim=(2, 3), keepdim=True)
    hi = total.amax(dim=(2, 3), keepdim=True)
    return (total - lo) / (hi - lo).clamp_min(1e-8)


# ---------------------------------------------------------------- noise
# Drawn per pixel *and channel*, like CIFAR-10-C, so grey digits get coloured noise.

def _gaussian_noise(x: Tensor, severity: int, g: torch.Generator) -> Tensor:
    c = (0.05, 0.1, 0.15, 0.21, 0.28)[severity - 1]
    return x + torch.randn(x.shape, generator=g) * c


def _shot_noise(x: Tensor, severity: int, g: torch.Generator) -> Tensor:
    # Poisson photon count: c is photons at full white. Black background gets no noise (that is
    # physics), so c must be small for the strokes alone to carry the drift.
    c = (80, 30, 14, 8, 5)[severity - 1]
    return torch.poisson(x * c, generator=g) / c


def _impulse_noise(x: Tensor, severity: int, g: torch.Generator) -> Tensor:
    amount = (0.02, 0.05, 0.08, 0.12, 0.17)[severity - 1]
    hit = torch.rand(x.shape, generator=g) < amount
    salt = (torch.rand(x.shape, generator=g) < 0.5).float()
    return torch.where(hit, salt, x)


def _speckle_noise(x: Tensor, severity: int, g: torch.Generator) -> Tensor:
    c = (0.15, 0.25, 0.4, 0.6, 0.9)[severity - 1]
    return x + x * torch.randn(x.shape, generator=g) * c


# ---------------------------------------------------------------- blur

def _gaussian_blur(x: Tensor, severity: int, g: torch.Generator) -> Tensor:
    return _conv(x, _gaussian_kernel(_px(x, (0.6, 0.9, 1.2, 1.6, 2.0)[severity - 1])))


def _defocus_blur(x: Tensor, severity: int, g: torch.Generator) -> Tensor:
    radius, alias = ((1.0, 0.3), (1.6, 0.3), (2.2, 0.4), (2.7, 0.4), (3.3, 0.5))[severity - 1]
    x = _conv(x, _disk_kernel(_px(x, radius)))
    return _conv(x, _gaussian_kernel(_px(x, alias)))  # soften the disk's hard rim, as a lens does


def _glass_blur(x: Tensor, severity: int, g: torch.Generator) -> Tensor:
    # Frosted glass: blur, then let every pixel sample a randomly jittered neighbour a few times.
    # CIFAR-10-C swaps whole pixels; on 16x16 digits with 2-pixel strokes that shreds severity 1,
    # so the jitter here is sub-pixel (bilinear) and grows with severity.
    sigma, delta, iters = ((0.3, 0.4, 1), (0.4, 0.5, 2), (0.5, 0.7, 2),
                           (0.5, 0.8, 3), (0.6, 1.1, 3))[severity - 1]
    x = _conv(x, _gaussian_kernel(_px(x, sigma)))
    for _ in range(iters):
        flow = (torch.rand(x.shape[0], *x.shape[2:], 2, generator=g) * 2 - 1) * _px(x, delta)
        x = _warp(x, flow)
    return _conv(x, _gaussian_kernel(_px(x, sigma)))


def _motion_blur(x: Tensor, severity: int, g: torch.Generator) -> Tensor:
    # A centred line of the given length at a random angle per image, rasterised by bilinear
    # splatting of many points along it (so short fractional lengths still blur smoothly).
    length = _px(x, (2.0, 3.5, 5.0, 6.5, 8.0)[severity - 1])
    n, r = x.shape[0], math.ceil(length / 2) + 1
    angle = torch.rand(n, 1, generator=g) * math.pi
    t = torch.linspace(-length / 2, length / 2, 64)
    px, py = t * torch.cos(angle) + r, t * torch.sin(angle) + r  # [N, 64], kernel coordinates
    kernels = torch.zeros(n, (2 * r + 1) ** 2)
    for dx in (0, 1):
        for dy in (0, 1):
            ix, iy = px.floor() + dx, py.floor() + dy
            weight = (1 - (px - ix).abs()) * (1 - (py - iy).abs())
            kernels.scatter_add_(1, (iy * (2 * r + 1) + ix).long(), weight)
    kernels = kernels / kernels.sum(dim=1, keepdim=True)
    return _conv_per_image(x, kernels.reshape(n, 2 * r + 1, 2 * r + 1))


def _zoom_blur(x: Tensor, severity: int, g: torch.Generator) -> Tensor:
    # Average of centre zooms from 1× up to the maximum, as if zooming during the exposure.
    top = (1.12, 1.3, 1.55, 2.0, 2.6)[severity - 1]
    n, _, h, w = x.shape
    out = x.clone()
    zooms = torch.linspace(1, top, 8)[1:]
    for z in zooms:
        theta = torch.tensor([[1 / z, 0, 0], [0, 1 / z, 0]]).expand(n, 2, 3)
        grid = F.affine_grid(theta, [n, 1, h, w], align_corners=False)
        out += F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)
    return out / (len(zooms) + 1)


# ---------------------------------------------------------------- weather and digital

def _fog(x: Tensor, severity: int, g: torch.Generator) -> Tensor:
    # CIFAR-10-C: add a grey plasma cloud, then rescale so the brightest pixel keeps its value —
    # which compresses the digit's contrast against a bright, uneven background.
    strength, decay = ((0.4, 2.0), (0.9, 1.9), (1.6, 1.7), (2.2, 1.6), (3.0, 1.5))[severity - 1]
    top = x.amax(dim=(1, 2, 3), keepdim=True)
    x = x + strength * _plasma(x.shape[0], x.shape[-2:], decay, g)
    return x * top / (top + strength)


def _brightness(x: Tensor, severity: int, g: torch.Generator) -> Tensor:
    # On grey images HSV value is the intensity itself, so this is CIFAR-10-C's V + c.
    return x + (0.05, 0.1, 0.15, 0.2, 0.3)[severity - 1]


def _contrast(x: Tensor, severity: int, g: torch.Generator) -> Tensor:
    c = (0.7, 0.4, 0.17, 0.1, 0.05)[severity - 1]
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    return (x - mean) * c + mean


def _elastic_transform(x: Tensor, severity: int, g: torch.Generator) -> Tensor:
    # Smooth random displacement (a 4×4 lattice of moves, interpolated): strokes bend and drift.
    amplitude = _px(x, (0.6, 1.0, 1.5, 2.0, 2.6)[severity - 1])
    flow = _smooth_field(x.shape[0], x.shape[-2:], 4, g, channels=2) * amplitude
    return _warp(x, flow.permute(0, 2, 3, 1))


def _pixelate(x: Tensor, severity: int, g: torch.Generator) -> Tensor:
    # Box-average down to a coarser grid, blow back up with nearest: visible blocks. The grid is
    # given in cells across a 16-pixel image. Grids that do not divide the image make uneven
    # blocks, so neither damage nor accuracy falls smoothly with the cell count (8 cells line up
    # with the digits' 8x8 source and are oddly mild); these counts were picked to rise in both.
    h, w = x.shape[-2:]
    cells = _px(x, (14, 11, 9, 7, 5)[severity - 1])
    small = F.adaptive_avg_pool2d(x, (max(1, round(cells * h / w)), max(1, round(cells))))
    return F.interpolate(small, size=(h, w), mode="nearest")


def _jpeg_compression(x: Tensor, severity: int, g: torch.Generator) -> Tensor:
    from PIL import Image

    # Even quality 1 stays moderate here: a 16x16 grey digit is only four 8x8 JPEG blocks.
    quality = (20, 10, 5, 3, 1)[severity - 1]
    pixels = (x.clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
    out = np.empty_like(pixels)
    for i, img in enumerate(pixels):
        planes = [img] if img.shape[-1] == 3 else [img[..., j] for j in range(img.shape[-1])]
        decoded = []
        for plane in planes:  # RGB encodes as one image, anything else channel by channel
            buf = io.BytesIO()
            Image.fromarray(plane).save(buf, format="JPEG", quality=quality)
            decoded.append(np.asarray(Image.open(io.BytesIO(buf.getvalue())).convert(
                "RGB" if plane.ndim == 3 else "L")))
        out[i] = decoded[0] if img.shape[-1] == 3 else np.stack(decoded, axis=-1)
    return torch.from_numpy(out).permute(0, 3, 1, 2).float() / 255


_CORRUPTIONS: dict[str, Corruption] = {
    "gaussian_noise": _gaussian_noise, "shot_noise": _shot_noise, "impulse_noise": _impulse_noise,
    "defocus_blur": _defocus_blur, "glass_blur": _glass_blur, "motion_blur": _motion_blur,
    "zoom_blur": _zoom_blur, "fog": _fog, "brightness": _brightness, "contrast": _contrast,
    "elastic_transform": _elastic_transform, "pixelate": _pixelate, "jpeg_compression": _jpeg_compression,
    "speckle_noise": _speckle_noise, "gaussian_blur": _gaussian_blur,
}
CORRUPTIONS: tuple[str, ...] = tuple(_CORRUPTIONS)
"""Corruption names in CIFAR-10-C order (the 15 standard ones less snow, frost — which need image
assets or ImageMagick — then the extras; ``saturate`` is skipped because it is a no-op on grey)."""


# ---------------------------------------------------------------- public API

def check_corruption(name: str, severity: int) -> None:
    """Raise ``ValueError`` (naming the field and the valid values) unless the pair is usable."""
    if not isinstance(name, str) or name not in _CORRUPTIONS:
        raise ConfigError(f"corruption {name!r} is unknown; choose one of: {', '.join(CORRUPTIONS)}")
    if isinstance(severity, bool) or not isinstance(severity, numbers.Integral) or severity not in SEVERITIES:
        raise ConfigError(f"severity must be an integer in 1..5 (one of {SEVERITIES}), got {severity!r}")


def _check_images(images: Tensor) -> None:
    if not isinstance(images, Tensor) or images.dim() != 4 or not images.is_floating_point():
        shape = tuple(images.shape) if isinstance(images, Tensor) else type(images).__name__
        raise ConfigError(f"images must be a floating-point tensor [N, C, H, W] in [-1, 1], got {shape}")


def _generator(seed: int, name: str, severity: int) -> torch.Generator:
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral) or seed < 0:
        raise ConfigError(f"seed must be a non-negative integer, got {seed!r}")
    # crc32, not hash(): Python salts str hashes per process, which would break reproducibility.
    state = np.random.SeedSequence([seed, zlib.crc32(name.encode()), severity]).generate_state(1, np.uint64)
    return torch.Generator().manual_seed(int(state[0]) & (2**63 - 1))


def corrupt(images: Tensor, name: str, severity: int, seed: int = 0) -> Tensor:
    """Corrupt a batch ``[N, C, H, W]`` in [-1, 1]; same shape, dtype and device, clamped to [-1, 1].

    Deterministic for a given ``(seed, name, severity)``; each image in the batch gets its own
    noise. Runs on CPU (the images are tiny) and moves the result back to the input's device.
    Example: ``corrupt(x, "gaussian_noise", 5, seed=1)``.
    """
    check_corruption(name, severity)
    _check_images(images)
    if len(images) == 0:
        return images.clone()
    x01 = (images.detach().to("cpu", torch.float32) + 1) / 2
    out = _CORRUPTIONS[name](x01, int(severity), _generator(seed, name, int(severity)))
    return (out.clamp(0, 1) * 2 - 1).to(images.device, images.dtype)
