"""Seeded, deterministic synthetic degradations for FoundIR's 20 categories and RealCE.

Every operation takes a uint8 RGB image `(H, W, 3)` and a `numpy.random.Generator` and
returns a uint8 RGB image of the same size; the same generator state gives the same
output. `degrade(image, category, rng)` applies a category's chain of operations.

Severities are those of a camera that takes the picture at the size it is degraded at,
so apply them at the size the model sees (data/fewshot.py builds the trainer's demo set at
its evaluation size): a degraded image shrunk afterwards averages most of the degradation
away. Spatial sizes are given for a 512-pixel short side and scale linearly with larger
ones (`_scale`); below 512 pixels they keep a floor:

- blur kernels keep their pixel sizes (floor 1): a blur is a spread over the sensor's
  pixels, and a photo only reads as blurred when the spread covers a few of them at the
  resolution it is viewed at (a 128-pixel image gets the 512-pixel kernels);
- rain streaks and raindrops, objects in the view, shrink with the frame down to half
  their sizes (floor `SCENE_FLOOR` = 0.5, at a 256-pixel short side): a drop keeps enough
  pixels to show the refracted scene and a streak stays longer than it is wide (at 128
  pixels a drop is 3 .. 12 pixels in radius, a streak 5 .. 17.5 pixels long);
- noise, JPEG, haze, low light and the RealCE factors act per pixel or per frame and
  take no scale: the same ranges at every size.

The input PSNR-Y / SSIM-Y this gives each category at 128 pixels: data/fewshot.py.

Parameter ranges (drawn uniformly unless noted), in pixels of a 512-pixel short side:

- `gaussian_blur`: sigma 0.8 .. 3.0 px.
- `motion_blur`: a line kernel, length 5 .. 21 px, angle 0 .. 180 degrees.
- `defocus_blur`: a disk kernel, radius 1.5 .. 5 px.
- `gaussian_noise`: sigma 10 .. 30 (on 0..255), independent per channel.
- `signal_noise`: signal-dependent (Poisson-Gaussian) noise, variance
  `a * x + b**2` on x in [0, 1]; a 0.004 .. 0.03, b 0.02 .. 0.05 (a standard
  deviation of 12 .. 34 on 0..255 at mid grey, 5 .. 13 in the dark).
- `jpeg`: JPEG at quality 10 .. 30 (Pillow, 4:2:0 subsampling): the heavily
  compressed range in which 8x8 blocks and ringing show.
- `haze`: atmospheric scattering `I = J t + A (1 - t)`, `t = exp(-beta d)`; the depth
  proxy d in [0, 1] mixes a top-to-bottom ramp with inverted, heavily blurred luminance;
  beta 0.8 .. 2.5, airlight A 0.75 .. 0.95 (slightly tinted per channel).
- `rain`: streaks; seed density 0.002 .. 0.008 per pixel, length 10 .. 35 px, angle
  -25 .. 25 degrees from vertical, brightness 0.5 .. 0.9.
- `raindrop`: 15 .. 50 drops of radius 6 .. 24 px; inside a drop the scene is blurred,
  shifted by up to a radius and brightened by 0 .. 15%, with soft edges.
- `lowlight`: exposure 0.08 .. 0.3, gamma 1.3 .. 2.2 (applied as x ** gamma, darkening),
  then sensor noise (the `signal_noise` model with a 0.001 .. 0.006, b 0.005 .. 0.02).
  `lowlight_dark` is the same without the noise (for chains that add noise later).
- `rescale` (RealCE-like): optical softness (Gaussian sigma 0 .. 0.3 x factor px), then
  down by x2 or x4 (equal odds) with a bicubic, bilinear or box filter, and bicubic back
  up to the input size.

A category's chain: its scene effects first (haze, rain, raindrop), then blur, low light,
noise, JPEG last, the order in which a camera forms the image. `Blur` draws one of the
three blur kinds.
"""

from __future__ import annotations

import io
from typing import Callable

import numpy as np
from PIL import Image
from scipy import ndimage

# FoundIR's 20 test categories in folder order (01Blur .. 20Lowlight_Noise_JPEG), then
# RealCE (one category, x2 and x4 alike), as in the paper's 21 training categories.
FOUNDIR_CATEGORIES: tuple[str, ...] = (
    "Blur", "Blur_Noise", "Blur_JPEG", "Blur_Noise_JPEG", "Noise", "JPEG", "Noise_JPEG",
    "Haze", "Lowlight_Haze", "Rain", "Raindrop", "NightRain", "Rain_Haze", "Lowlight",
    "Lowlight_Blur", "Lowlight_Noise", "Lowlight_JPEG", "Lowlight_Blur_Noise",
    "Lowlight_Blur_JPEG", "Lowlight_Noise_JPEG",
)
REALCE_CATEGORY = "RealCE"
CATEGORIES: tuple[str, ...] = FOUNDIR_CATEGORIES + (REALCE_CATEGORY,)

SCENE_FLOOR = 0.5  # `_scale`'s floor for rain streaks and raindrops (module doc)

Op = Callable[[np.ndarray, np.random.Generator], np.ndarray]


def _check(image: np.ndarray) -> np.ndarray:
  if image.dtype != np.uint8 or image.ndim != 3 or image.shape[-1] != 3:
    raise ValueError(f"expected uint8 RGB (H, W, 3), got {image.dtype} {image.shape}")
  return image


def _to_float(image: np.ndarray) -> np.ndarray:
  return _check(image).astype(np.float32) / 255.0


def _to_uint8(x: np.ndarray) -> np.ndarray:
  return np.clip(np.rint(x * 255.0), 0, 255).astype(np.uint8)


def _scale(image: np.ndarray, floor: float = 1.0) -> float:
  """The factor on sizes given for a 512-pixel short side: linear in the image's short
  side, but not below `floor` (module doc: 1 for blur kernels, 0.5 for rain and drops)."""
  return max(min(image.shape[:2]) / 512.0, floor)


def _convolve(x: np.ndarray, kernel: np.ndarray) -> np.ndarray:
  kernel = (kernel / kernel.sum()).astype(np.float32)
  return np.stack([ndimage.convolve(x[..., c], kernel, mode="reflect")
                   for c in range(x.shape[-1])], axis=-1)


def _line_kernel(length: float, angle_deg: float) -> np.ndarray:
  """A normalised anti-aliased line of `length` px at `angle_deg` (0 = horizontal)."""
  half = max(int(np.ceil(length / 2)), 1)
  size = 2 * half + 1
  yy, xx = np.mgrid[-half:half + 1, -half:half + 1].astype(np.float32)
  theta = np.deg2rad(angle_deg)
  along = xx * np.cos(theta) + yy * np.sin(theta)
  across = -xx * np.sin(theta) + yy * np.cos(theta)
  k = np.clip(1.0 - np.abs(across), 0, 1) * (np.abs(along) <= length / 2)
  if k.sum() == 0:
    k = np.zeros((size, size), np.float32)
    k[half, half] = 1
  return k


def gaussian_blur(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
  sigma = rng.uniform(0.8, 3.0) * _scale(image)
  x = _to_float(image)
  return _to_uint8(ndimage.gaussian_filter(x, sigma=(sigma, sigma, 0), mode="reflect"))


def motion_blur(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
  length = rng.uniform(5, 21) * _scale(image)
  angle = rng.uniform(0, 180)
  return _to_uint8(_convolve(_to_float(image), _line_kernel(length, angle)))


def defocus_blur(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
  radius = rng.uniform(1.5, 5.0) * _scale(image)
  r = int(np.ceil(radius))
  yy, xx = np.mgrid[-r:r + 1, -r:r + 1].astype(np.float32)
  disk = np.clip(radius + 0.5 - np.sqrt(xx ** 2 + yy ** 2), 0, 1)
  return _to_uint8(_convolve(_to_float(image), disk))


def blur(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
  """One of Gaussian, motion or defocus blur."""
  kind = rng.integers(3)
  return (gaussian_blur, motion_blur, defocus_blur)[kind](image, rng)


def gaussian_noise(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
  sigma = rng.uniform(10, 30) / 255.0
  x = _to_float(image)
  return _to_uint8(x + rng.normal(0, sigma, x.shape).astype(np.float32))


def _poisson_gaussian(x: np.ndarray, rng: np.random.Generator, a: float,
                      b: float) -> np.ndarray:
  std = np.sqrt(a * np.clip(x, 0, 1) + b * b)
  return x + rng.standard_normal(x.shape).astype(np.float32) * std


def signal_noise(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
  a, b = rng.uniform(0.004, 0.03), rng.uniform(0.02, 0.05)
  return _to_uint8(_poisson_gaussian(_to_float(image), rng, a, b))


def noise(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
  """Gaussian or signal-dependent noise, with equal odds."""
  return (gaussian_noise, signal_noise)[rng.integers(2)](image, rng)


def jpeg(image: np.ndarray, rng: np.random.Generator, quality: int | None = None
         ) -> np.ndarray:
  q = int(rng.integers(10, 31)) if quality is None else int(quality)
  buf = io.BytesIO()
  Image.fromarray(_check(image)).save(buf, format="JPEG", quality=q)
  buf.seek(0)
  with Image.open(buf) as im:
    return np.asarray(im.convert("RGB"), dtype=np.uint8).copy()


def _depth_proxy(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
  h, w = x.shape[:2]
  ramp = np.linspace(1.0, 0.0, h, dtype=np.float32)[:, None] * np.ones((1, w), np.float32)
  lum = x @ np.array([0.299, 0.587, 0.114], np.float32)
  smooth = ndimage.gaussian_filter(lum, sigma=max(h, w) / 16)
  mix = rng.uniform(0.4, 0.8)
  d = mix * ramp + (1 - mix) * (1 - smooth)
  d -= d.min()
  return d / max(float(d.max()), 1e-6)


def haze(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
  x = _to_float(image)
  beta = rng.uniform(0.8, 2.5)
  airlight = rng.uniform(0.75, 0.95) + rng.uniform(-0.03, 0.03, size=3)
  t = np.exp(-beta * _depth_proxy(x, rng))[..., None]
  return _to_uint8(x * t + airlight.astype(np.float32) * (1 - t))


def rain(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
  x = _to_float(image)
  h, w = x.shape[:2]
  s = _scale(image, SCENE_FLOOR)
  seeds = (rng.random((h, w)) < rng.uniform(0.002, 0.008)).astype(np.float32)
  seeds *= rng.uniform(0.6, 1.0, size=(h, w)).astype(np.float32)
  length = rng.uniform(10, 35) * s
  angle = 90 + rng.uniform(-25, 25)
  k = _line_kernel(length, angle)
  streaks = ndimage.convolve(seeds, k / k.max(), mode="wrap")
  streaks = ndimage.gaussian_filter(streaks, 0.5 * s)
  streaks = np.clip(streaks * rng.uniform(0.5, 0.9), 0, 1)[..., None]
  return _to_uint8(x + (1 - x) * streaks)


def raindrop(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
  x = _to_float(image)
  h, w = x.shape[:2]
  s = _scale(image, SCENE_FLOOR)
  blurred = ndimage.gaussian_filter(x, sigma=(3 * s, 3 * s, 0))
  out = x.copy()
  yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
  for _ in range(int(rng.integers(15, 51))):
    r = rng.uniform(6, 24) * s
    cy, cx = rng.uniform(0, h), rng.uniform(0, w)
    ry, rx = r * rng.uniform(0.7, 1.0), r
    y0, y1 = int(max(cy - ry - 2, 0)), int(min(cy + ry + 3, h))
    x0, x1 = int(max(cx - rx - 2, 0)), int(min(cx + rx + 3, w))
    if y1 <= y0 or x1 <= x0:
      continue
    dist = np.sqrt(((yy[y0:y1, x0:x1] - cy) / ry) ** 2 + ((xx[y0:y1, x0:x1] - cx) / rx) ** 2)
    alpha = np.clip((1.0 - dist) * 4.0, 0, 1)[..., None]
    dy, dx = (int(v) for v in rng.uniform(-r, r, size=2))
    src = blurred[np.clip(np.arange(y0, y1) + dy, 0, h - 1)][:, np.clip(
        np.arange(x0, x1) + dx, 0, w - 1)]
    src = np.clip(src * (1 + rng.uniform(0, 0.15)), 0, 1)
    out[y0:y1, x0:x1] = out[y0:y1, x0:x1] * (1 - alpha) + src * alpha
  return _to_uint8(out)


def lowlight_dark(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
  x = _to_float(image)
  return _to_uint8(rng.uniform(0.08, 0.3) * x ** rng.uniform(1.3, 2.2))


def lowlight(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
  x = _to_float(lowlight_dark(image, rng))
  a, b = rng.uniform(0.001, 0.006), rng.uniform(0.005, 0.02)
  return _to_uint8(_poisson_gaussian(x, rng, a, b))


def rescale(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
  h, w = _check(image).shape[:2]
  factor = 2 if rng.integers(2) == 0 else 4
  sigma = rng.uniform(0, 0.3 * factor)
  soft = ndimage.gaussian_filter(_to_float(image), sigma=(sigma, sigma, 0))
  im = Image.fromarray(_to_uint8(soft))
  down = (Image.BICUBIC, Image.BILINEAR, Image.BOX)[int(rng.integers(3))]
  small = im.resize((max(w // factor, 1), max(h // factor, 1)), down)
  return np.asarray(small.resize((w, h), Image.BICUBIC), dtype=np.uint8).copy()


# Each category's chain, scene effects first, then optics, exposure, sensor, codec.
CHAINS: dict[str, tuple[Op, ...]] = {
    "Blur": (blur,),
    "Blur_Noise": (blur, noise),
    "Blur_JPEG": (blur, jpeg),
    "Blur_Noise_JPEG": (blur, noise, jpeg),
    "Noise": (noise,),
    "JPEG": (jpeg,),
    "Noise_JPEG": (noise, jpeg),
    "Haze": (haze,),
    "Lowlight_Haze": (haze, lowlight),
    "Rain": (rain,),
    "Raindrop": (raindrop,),
    "NightRain": (rain, lowlight),
    "Rain_Haze": (haze, rain),
    "Lowlight": (lowlight,),
    "Lowlight_Blur": (blur, lowlight),
    "Lowlight_Noise": (lowlight_dark, noise),
    "Lowlight_JPEG": (lowlight, jpeg),
    "Lowlight_Blur_Noise": (blur, lowlight_dark, noise),
    "Lowlight_Blur_JPEG": (blur, lowlight, jpeg),
    "Lowlight_Noise_JPEG": (lowlight_dark, noise, jpeg),
    REALCE_CATEGORY: (rescale,),
}
assert set(CHAINS) == set(CATEGORIES)


def degrade(image: np.ndarray, category: str, rng: np.random.Generator | int
            ) -> np.ndarray:
  """Applies `category`'s chain to a uint8 RGB image; `rng` a Generator or a seed."""
  if category not in CHAINS:
    raise ValueError(f"unknown category {category!r}; known: {', '.join(CATEGORIES)}")
  if not isinstance(rng, np.random.Generator):
    rng = np.random.default_rng(rng)
  out = _check(np.ascontiguousarray(image))
  for op in CHAINS[category]:
    out = op(out, rng)
  return out
