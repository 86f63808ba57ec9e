"""Image-processing primitives the CIFAR-10-C corruptions are built from, vectorised over a batch.

Filtering with the border modes of scipy.ndimage / OpenCV (reflect, nearest, constant), Gaussian
and disk (defocus) kernels, ImageMagick's one-sided motion-blur kernel, clipped zoom, the
diamond-square plasma fractal (fog), PIL's box resampling as a matrix, and the edge detector,
distance transform and histogram equalisation spatter needs. Images are ``[N, C, H, W]`` float
tensors in [0, 1]; the global RNG is never touched (randomness comes in as a ``torch.Generator``).
Reimplemented from the definitions (scipy/OpenCV/PIL/ImageMagick docs) so digits-c needs none of
OpenCV, scikit-image or Wand (:mod:`edgeadapt.data.corruptions` uses them).
"""

from __future__ import annotations

import functools
import math

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor

# ---------------------------------------------------------------- filtering helpers (x: [N, C, H, W])

def _pad_index(n: int, r: int, mode: str) -> Tensor:
    """Source index of each of ``n + 2r`` padded positions. ``nearest`` repeats the edge;
    ``reflect`` mirrors about the edge (d c b a | a b c d, scipy/skimage ``reflect``);
    ``mirror`` mirrors about the edge pixel (d c b | a b c d, OpenCV's default border)."""
    i = torch.arange(-r, n + r)
    if mode == "nearest" or n == 1:
        return i.clamp(0, n - 1)
    if mode == "reflect":
        i = i % (2 * n)
        return torch.where(i >= n, 2 * n - 1 - i, i)
    i = i % (2 * n - 2)  # mirror
    return torch.where(i >= n, 2 * n - 2 - i, i)


def filter2d(x: Tensor, kernel: Tensor, mode: str) -> Tensor:
    """Correlate every channel with a ``[kh, kw]`` kernel (odd sizes, centred), borders by ``mode``."""
    n, c, h, w = x.shape
    kh, kw = kernel.shape
    x = x.index_select(2, _pad_index(h, kh // 2, mode)).index_select(3, _pad_index(w, kw // 2, mode))
    out = F.conv2d(x.reshape(n * c, 1, *x.shape[2:]), kernel.reshape(1, 1, kh, kw).to(x))
    return out.reshape(n, c, h, w)


def _gaussian_1d(sigma: float, truncate: float) -> Tensor:
    """scipy's sampled Gaussian: radius ``int(truncate·σ + 0.5)``, weights normalised to 1."""
    r = int(truncate * sigma + 0.5)
    t = torch.arange(-r, r + 1, dtype=torch.float64)
    g = torch.exp(-0.5 * t**2 / sigma**2)
    return g / g.sum()


def gaussian_filter(x: Tensor, sigma: float, mode: str = "nearest", truncate: float = 4.0) -> Tensor:
    """``skimage.filters.gaussian`` per channel (scipy's kernel; default border ``nearest``)."""
    if sigma <= 1e-15:
        return x
    g = _gaussian_1d(sigma, truncate)
    return filter2d(filter2d(x, g[None, :], mode), g[:, None], mode)


def _cv2_gaussian_kernel(ksize: int, sigma: float) -> Tensor:
    """OpenCV's ``getGaussianKernel(ksize, sigma)`` for sigma > 0, as a 1-D tensor."""
    t = torch.arange(ksize, dtype=torch.float64) - (ksize - 1) / 2
    g = torch.exp(-t**2 / (2 * sigma**2))
    return g / g.sum()


def disk_kernel(radius: float, alias_blur: float) -> Tensor:
    """The reference's defocus kernel: the pixels within ``radius`` of the centre of a
    17×17 grid (wider for radius > 8), normalised, softened by a 3×3 (5×5) Gaussian of
    ``alias_blur`` px; trimmed to its non-zero support (the result of filtering is unchanged)."""
    if radius <= 8:
        grid, ksize = torch.arange(-8, 9, dtype=torch.float64), 3
    else:
        grid, ksize = torch.arange(-radius, radius + 1, dtype=torch.float64), 5
    disk = ((grid[:, None] ** 2 + grid[None, :] ** 2) <= radius**2).double()
    disk = disk / disk.sum()
    g = _cv2_gaussian_kernel(ksize, alias_blur)
    k = filter2d(filter2d(disk[None, None], g[None, :], "mirror"), g[:, None], "mirror")[0, 0]
    c = len(grid) // 2
    r = int((k.nonzero() - c).abs().max())
    return k[c - r:c + r + 1, c - r:c + r + 1]


def motion_kernel(radius: float, sigma: float) -> Tensor:
    """ImageMagick's one-sided motion-blur weights: ``2·ceil(radius)+1`` taps ∝ exp(-i²/2σ²)."""
    width = int(2 * math.ceil(radius) + 1) if radius > 1e-12 else 3
    i = torch.arange(width, dtype=torch.float64)
    k = torch.exp(-i**2 / (2 * sigma**2))
    return k / k.sum()


def motion_blur_at(x: Tensor, radius: float, sigma: float, angle_deg: Tensor) -> Tensor:
    """Blur image ``n`` along ``angle_deg[n]`` (degrees, y down): each output pixel is the weighted
    sum of the pixels ``round(i·cos a), round(i·sin a)`` ahead of it, edges replicated."""
    n, c, h, w = x.shape
    k = motion_kernel(radius, sigma).to(x.dtype)
    a = torch.deg2rad(angle_deg.double())
    i = torch.arange(len(k), dtype=torch.float64)
    ox = torch.ceil(i[None] * torch.cos(a)[:, None] - 0.5).long()  # [N, taps]; ceil(v-.5) as ImageMagick
    oy = torch.ceil(i[None] * torch.sin(a)[:, None] - 0.5).long()
    rows, cols = torch.arange(h), torch.arange(w)
    flat = x.reshape(n, c, h * w)
    out = torch.zeros_like(flat)
    for t in range(len(k)):
        yy = (rows[None, :, None] + oy[:, t, None, None]).clamp(0, h - 1)  # [N, H, 1]
        xx = (cols[None, None, :] + ox[:, t, None, None]).clamp(0, w - 1)  # [N, 1, W]
        idx = (yy * w + xx).reshape(n, 1, h * w).expand(n, c, h * w)
        out += k[t] * flat.gather(2, idx)
    return out.reshape(n, c, h, w)


def clipped_zoom(x: Tensor, factor: float) -> Tensor:
    """The reference's centre zoom: crop the central ``ceil(size/factor)`` pixels, resize them
    linearly (scipy ``zoom``, order 1: corners aligned) to ``round(crop·factor)``, trim the centre."""
    h, w = x.shape[-2:]
    ch, cw = math.ceil(h / factor), math.ceil(w / factor)
    top, left = (h - ch) // 2, (w - cw) // 2
    crop = x[..., top:top + ch, left:left + cw]
    oh, ow = int(round(ch * factor)), int(round(cw * factor))
    big = F.interpolate(crop, size=(oh, ow), mode="bilinear", align_corners=True) if (oh, ow) != (ch, cw) \
        else crop
    th, tw = (oh - h) // 2, (ow - w) // 2
    return big[..., th:th + h, tw:tw + w]


def plasma_fractal(n: int, mapsize: int, decay: float, g: torch.Generator) -> Tensor:
    """Diamond-square heightmaps ``[N, mapsize, mapsize]`` in [0, 1] (wrap-around neighbours), as
    the reference's fog: random offsets start at ±100² and shrink by ``decay`` per level."""
    if mapsize & (mapsize - 1):
        raise ValueError(f"mapsize must be a power of two, got {mapsize}")
    m = torch.zeros(n, mapsize, mapsize, dtype=torch.float64)
    step, wibble = mapsize, 100.0

    def wibbled(total: Tensor) -> Tensor:
        noise = torch.rand(total.shape, generator=g, dtype=torch.float64) * 2 - 1
        return total / 4 + wibble * noise * wibble

    while step >= 2:
        half = step // 2
        corners = m[:, 0::step, 0::step]
        sq = corners + corners.roll(-1, dims=1)
        m[:, half::step, half::step] = wibbled(sq + sq.roll(-1, dims=2))
        centres, corners = m[:, half::step, half::step], m[:, 0::step, 0::step]
        m[:, 0::step, half::step] = wibbled(centres + centres.roll(1, 1) + corners + corners.roll(-1, 2))
        m[:, half::step, 0::step] = wibbled(centres + centres.roll(1, 2) + corners + corners.roll(-1, 1))
        step //= 2
        wibble /= decay
    m = m - m.amin(dim=(1, 2), keepdim=True)
    return (m / m.amax(dim=(1, 2), keepdim=True).clamp_min(1e-12)).float()


@functools.lru_cache(maxsize=64)
def _pil_box_matrix(n_in: int, n_out: int) -> Tensor:
    """``[n_out, n_in]`` matrix of PIL's BOX resampling along one axis (taken from PIL itself)."""
    eye = Image.fromarray(np.eye(n_in, dtype=np.float32), mode="F")
    resized = np.asarray(eye.resize((n_out, n_in), Image.Resampling.BOX), dtype=np.float32)
    return torch.from_numpy(resized.T.copy())


def box_resize(x: Tensor, size: tuple[int, int]) -> Tensor:
    """PIL ``resize(..., BOX)`` of every channel to ``size`` = (H, W), separably."""
    rh, rw = _pil_box_matrix(x.shape[-2], size[0]).to(x), _pil_box_matrix(x.shape[-1], size[1]).to(x)
    return rh @ x @ rw.T


def grey(x: Tensor) -> Tensor:
    """``[N, 1, H, W]`` luma (OpenCV RGB2GRAY weights) for RGB, the channel mean otherwise."""
    if x.shape[1] == 3:
        w = torch.tensor([0.299, 0.587, 0.114], dtype=x.dtype)
        return (x * w[None, :, None, None]).sum(1, keepdim=True)
    return x.mean(1, keepdim=True)


def quantise(x: Tensor) -> Tensor:
    """Truncate to uint8 levels, as ``np.uint8(x * 255)`` does (x in [0, 1])."""
    return torch.floor(x.clamp(0, 1) * 255) / 255


# ---------------------------------------------------------------- edges and histograms (spatter)

def canny_edges(img: Tensor, low: float, high: float) -> Tensor:
    """OpenCV's Canny on ``[N, 1, H, W]`` 0-255 values (3×3 Sobel, L1 magnitude, non-maximum
    suppression along the quantised gradient direction, hysteresis); returns edges as 0/1."""
    sobel = torch.tensor([[-1.0, 0, 1], [-2, 0, 2], [-1, 0, 1]])
    gx, gy = filter2d(img, sobel, "nearest"), filter2d(img, sobel.T, "nearest")
    mag = gx.abs() + gy.abs()
    padded = F.pad(mag, (1, 1, 1, 1))
    h, w = mag.shape[-2:]

    def shifted(dy: int, dx: int) -> Tensor:
        return padded[..., 1 + dy:1 + dy + h, 1 + dx:1 + dx + w]

    ax, ay = gx.abs(), gy.abs()
    tan22 = math.tan(math.radians(22.5))
    horizontal = ay <= ax * tan22  # gradient along x: compare left/right neighbours
    vertical = ay > ax / tan22
    same_sign = (gx * gy) > 0
    keep = torch.where(horizontal, (mag > shifted(0, -1)) & (mag >= shifted(0, 1)),
                       torch.where(vertical, (mag > shifted(-1, 0)) & (mag >= shifted(1, 0)),
                                   torch.where(same_sign, (mag > shifted(-1, -1)) & (mag > shifted(1, 1)),
                                               (mag > shifted(-1, 1)) & (mag > shifted(1, -1)))))
    candidate = keep & (mag > low)
    edges = candidate & (mag > high)
    while True:  # hysteresis: weak candidates joined (8-connected) to a strong edge become edges
        grown = candidate & (F.max_pool2d(edges.float(), 3, 1, 1) > 0)
        if torch.equal(grown, edges):
            return edges.float()
        edges = grown


def distance_to_edges(edges: Tensor) -> Tensor:
    """Exact Euclidean distance ``[N, 1, H, W]`` from each pixel to the nearest edge pixel (inf if
    none), separably: nearest edge along each column, then the best column for each pixel."""
    _, _, h, w = edges.shape
    on = edges[:, 0] > 0  # [N, H, W]
    rows, cols = torch.arange(h, dtype=torch.float32), torch.arange(w, dtype=torch.float32)
    dy2 = (rows[:, None] - rows[None, :]) ** 2  # [H (pixel), H (edge row)]
    col = torch.where(on[:, None, :, :], dy2[None, :, :, None], math.inf).amin(2)  # [N, H, W]
    dx2 = (cols[:, None] - cols[None, :]) ** 2  # [W (pixel), W (column)]
    return (col[:, :, None, :] + dx2[None, None]).amin(-1).sqrt()[:, None]


def equalise_hist(img: Tensor) -> Tensor:
    """OpenCV's ``equalizeHist`` per image on integer 0-255 values."""
    n = img.shape[0]
    flat = img.reshape(n, -1).long()
    hist = torch.zeros(n, 256, dtype=torch.long).scatter_add_(1, flat, torch.ones_like(flat))
    cdf = hist.cumsum(1)
    first = (hist > 0).float().argmax(1, keepdim=True)
    base = hist.gather(1, first)
    total = flat.shape[1]
    scale = 255.0 / (total - base).clamp_min(1).double()
    lut = torch.round((cdf - base).clamp_min(0).double() * scale).clamp(0, 255)
    lut = torch.where(base == total, first.double().expand(-1, 256), lut)
    return lut.gather(1, flat).reshape(img.shape).to(img.dtype)
