"""A procedurally generated video corpus: the tiny model's stand-in for web-scale video.

    corpus = VideoCorpus(seed=0, size=128, frames=5)
    clip = corpus[i]["clip"]   # uint8 (5, 128, 128, 3), a pure function of (seed, i)
    ds = make_dataset("video_corpus", size=128, frames=5, global_batch_size=4, seed=0)

Wan2.2, the model V-Bridge fine-tunes, was pretrained on a large corpus of natural video;
that prior (what images look like, and that frame 0 carries forward in time) is what lets
~1,000 pairs teach it restoration. This corpus gives the tiny model the same kind of prior
at laptop scale, without a download: unlimited, seeded clips of synthetic scenes with the
statistics of natural images, moving the way footage does.

**Scenes: dead leaves.** A dead-leaves image (the occlusion model of natural images: opaque
shapes of power-law sizes falling on top of each other, which reproduces their
scale invariance, their edge statistics and their 1/f power spectrum; Achddou et al.,
"Synthetic images as a regularity prior for image restoration neural networks", and
VibrantLeaves, arXiv 2504.10201, add textures and shading). Per clip:

- background: a smooth two-colour gradient;
- leaves drawn back to front until their summed area is `coverage` = 3 x the canvas's (so
  about e^-3 = 5% of the background shows), radii r drawn from the density r^-3 on
  [0.03, 0.5] x the frame side (the scale-invariant law);
- shapes: discs, ellipses (axis ratio 0.3 .. 1), rotated rectangles and blobs (a disc whose
  radius is modulated by 2 .. 5 angular harmonics of amplitude up to 0.25), with
  anti-aliased edges (a one-pixel ramp on the signed distance); leaves under 4 px (most of
  them) are flat-coloured discs and ellipses, drawn fast;
- fills: a colour (hue uniform, saturation Beta(1.2, 2.5), value Beta(2.0, 1.6)), linear
  shading across the shape (contrast 0 .. 0.35), and one texture: none (30%), stripes (20%:
  a sinusoid of period 3 .. 24 px, amplitude 0.05 .. 0.3, random orientation), or fractal
  noise (50%: a 1/f^beta field, beta 1.6 .. 2.6, amplitude 0.05 .. 0.35, shared by the clip's
  shapes at random offsets).

**Motion**, between the first and the last frame of the clip (`frames` frames, linear in
time; a 5-frame clip is a fifth of a second of 24-fps footage, so motions are small), each
part present independently:

- still clips (40%): no motion and no change at all, as in the static shots of real footage;
- camera (75% of the others): pan up to 0.025 x the side in a random direction, zoom by a
  factor 0.98 .. 1.02, rotation -1 .. 1 degree (one affine warp of the scene per frame,
  Lanczos resampling);
- objects (60%): 1 .. 3 foreground shapes moving on their own, 0.02 .. 0.06 x the side,
  with a rotation of -5 .. 5 degrees;
- illumination (50%): a global gain ramp from 1 to 0.93 .. 1.07 and a soft light gradient
  of amplitude up to 0.05 that turns by up to 0.5 rad.

**What it does not contain**: none of `vbridge_jax/data/degrade.py`'s operators (no blur,
noise, compression, haze, rain, low light or resampling to another scale) and no photo:
the prior knows nothing of the restoration task's data or degradations. Frames are clipped
to [0, 1] and rounded to uint8 like any decoded video.

`docs/video_corpus.png` shows a few clips (`python -m vbridge_jax.data.video_corpus --out
FILE` draws such a sheet). As a Grain source (`VideoCorpus` is random-access, endless and a
pure function of its seed), `vbridge_jax.data.pipeline.make_dataset` trains on it when
`source` is `"video_corpus"`, with the same batching, sharding and checkpointable iterator
as a paired set.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import math
import sys
from typing import Any, Sequence

import cv2
import numpy as np
from PIL import Image

from vbridge_jax.utils import cli

SOURCE_NAME = "video_corpus"  # data.source value that selects this corpus
_LENGTH = 2 ** 40  # records: endless in practice, each a pure function of (seed, index)
_MAX_LEAVES = 2000


@dataclasses.dataclass(frozen=True)
class CorpusConfig:
  """Parameter ranges (module docstring). Sizes are fractions of the frame side."""
  coverage: float = 3.0  # the leaves' summed area over the canvas area (e^-3: 5% bare)
  radius: tuple[float, float] = (0.03, 0.5)
  radius_power: float = 3.0  # density r^-power
  still: float = 0.4
  camera: float = 0.75
  objects: float = 0.6
  light: float = 0.5
  pan: float = 0.025
  zoom: tuple[float, float] = (0.98, 1.02)
  rotate_deg: float = 1.0
  object_travel: float = 0.06
  object_rotate_deg: float = 5.0
  gain: tuple[float, float] = (0.93, 1.07)
  light_amplitude: float = 0.05


class VideoCorpus:
  """Endless random-access clips at one size and length, a Grain source: record `i` is
  `{"clip": uint8 (frames, size, size, 3), "category": 0}`, a pure function of (seed, i,
  size, frames)."""

  def __init__(self, seed: int = 0, *, size: int = 128, frames: int = 5,
               config: CorpusConfig | None = None):
    if size < 8 or frames < 1:
      raise ValueError(f"need size >= 8 and frames >= 1, got size={size}, frames={frames}")
    self.seed, self.size, self.frames = int(seed), int(size), int(frames)
    self.config = config or CorpusConfig()
    self.name = SOURCE_NAME

  def __len__(self) -> int:
    return _LENGTH

  def __getitem__(self, index: int) -> dict[str, Any]:
    return {"clip": self.render(index), "category": np.int32(0)}

  def render(self, index: int) -> np.ndarray:
    """Clip `index`: uint8 `(frames, size, size, 3)`."""
    rng = np.random.default_rng([self.seed, int(index), self.size, self.frames])
    return _Clip(self.config, rng, self.size, self.frames).render()


# ------------------------------------------------------------------------------ drawing


def _hsv_colours(rng: np.random.Generator, n: int) -> np.ndarray:
  """(n, 3) float32 RGB in [0, 1]: hue uniform, saturation and value from Beta laws."""
  h = rng.uniform(0, 6, n)
  s = rng.beta(1.2, 2.5, n)
  v = rng.beta(2.0, 1.6, n)
  k = (np.array([5.0, 3.0, 1.0])[None, :] + h[:, None]) % 6  # the usual HSV -> RGB
  rgb = v[:, None] - v[:, None] * s[:, None] * np.clip(np.minimum(k, 4 - k), 0, 1)
  return rgb.astype(np.float32)


def _fractal_noise(rng: np.random.Generator, side: int) -> np.ndarray:
  """A (side, side) float32 1/f^beta field, zero mean, unit standard deviation."""
  f = np.fft.fftfreq(side)
  radius = np.sqrt(f[:, None] ** 2 + f[None, :] ** 2)
  radius[0, 0] = 1.0
  beta = rng.uniform(1.6, 2.6)
  spectrum = (rng.standard_normal((side, side)) + 1j * rng.standard_normal((side, side)))
  field = np.real(np.fft.ifft2(spectrum / radius ** (beta / 2)))
  field -= field.mean()
  return (field / (field.std() + 1e-8)).astype(np.float32)


def _shape_distance(kind: str, x: np.ndarray, y: np.ndarray, r: float, p: dict[str, Any]
                    ) -> np.ndarray:
  """Signed distance (pixels, < 0 inside) of a shape centred at 0, in its own frame."""
  c, s = math.cos(p["angle"]), math.sin(p["angle"])
  u, v = c * x + s * y, -s * x + c * y
  if kind == "disc":
    return np.sqrt(u * u + v * v) - r
  if kind == "ellipse":  # a scaled disc: exact on the axes, close elsewhere
    a, b = r, r * p["ratio"]
    k = np.sqrt((u / a) ** 2 + (v / b) ** 2)
    return (k - 1.0) * min(a, b)
  if kind == "rect":
    a, b = r, r * p["ratio"]
    du, dv = np.abs(u) - a, np.abs(v) - b
    outside = np.sqrt(np.maximum(du, 0) ** 2 + np.maximum(dv, 0) ** 2)
    return outside + np.minimum(np.maximum(du, dv), 0)
  theta = np.arctan2(v, u)  # blob: a disc with a wavy radius
  wave = sum(a * np.cos(k * theta + ph) for k, a, ph in p["harmonics"])
  return np.sqrt(u * u + v * v) - r * (1.0 + wave)


_KINDS = ("disc", "ellipse", "rect", "blob")
_SMALL = 4.0  # px: leaves below this radius are drawn flat (`_Clip._small_leaf`)


@functools.lru_cache(maxsize=256)
def _grid(half: int) -> tuple[np.ndarray, np.ndarray]:
  """Pixel-centre coordinates (x, y) of a (2 half + 1)^2 square centred at 0 (read-only)."""
  g = np.arange(-half, half + 1, dtype=np.float32)
  y, x = np.meshgrid(g, g, indexing="ij")
  x.flags.writeable = y.flags.writeable = False
  return x, y


class _Clip:
  """One clip's scene, motion and light, drawn from `rng` (the order of draws is fixed)."""

  def __init__(self, cfg: CorpusConfig, rng: np.random.Generator, size: int, frames: int):
    self.cfg, self.rng, self.size, self.frames = cfg, rng, size, frames
    still = rng.random() < cfg.still
    self.camera = (not still) and rng.random() < cfg.camera
    self.objects = (not still) and rng.random() < cfg.objects
    self.light = (not still) and rng.random() < cfg.light
    # The scene canvas holds every camera position: pan, zoom out and rotation stay inside.
    self.side = int(math.ceil(size * (1.0 + 2 * cfg.pan + 0.12))) if self.camera else size
    self.noise = [_fractal_noise(rng, self.side) for _ in range(2)]

  # -- a shape and its fill -------------------------------------------------------------

  def _leaf(self, r: float, colour: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """A shape of radius `r` px: (rgb (h, w, 3), alpha (h, w)) on its bounding square."""
    rng = self.rng
    kind = _KINDS[int(rng.integers(len(_KINDS)))]
    p = {"angle": rng.uniform(0, math.pi), "ratio": rng.uniform(0.3, 1.0)}
    if kind == "blob":
      p["harmonics"] = [(int(k), rng.uniform(0, 0.25 / k ** 0.5), rng.uniform(0, 2 * math.pi))
                        for k in rng.choice(np.arange(2, 6), int(rng.integers(1, 4)), replace=False)]
    half = int(math.ceil(r * 1.3)) + 1
    dx, dy = rng.uniform(-0.5, 0.5, 2)
    grid = _grid(half)
    x, y = grid[0] + np.float32(dx), grid[1] + np.float32(dy)
    alpha = np.clip(0.5 - _shape_distance(kind, x, y, r, p), 0.0, 1.0).astype(np.float32)
    return self._fill(x, y, r, colour), alpha

  def _fill(self, x: np.ndarray, y: np.ndarray, r: float, colour: np.ndarray) -> np.ndarray:
    """Colour x (1 + shading + texture), on the shape's grid."""
    rng = self.rng
    a = rng.uniform(0, 2 * math.pi)
    gain = 1.0 + rng.uniform(0, 0.35) * (math.cos(a) * x + math.sin(a) * y) / max(r, 1.0)
    pick = rng.random()
    texture = None
    if pick < 0.2:  # stripes
      period, b = rng.uniform(3, 24), rng.uniform(0, math.pi)
      texture = rng.uniform(0.05, 0.3) * np.sin(2 * math.pi * (math.cos(b) * x + math.sin(b) * y)
                                               / period + rng.uniform(0, 2 * math.pi))
    elif pick < 0.7:  # fractal noise, a window of the clip's field (tiled when larger)
      field = self.noise[int(rng.integers(2))]
      h, w = x.shape
      y0, x0 = int(rng.integers(0, field.shape[0])), int(rng.integers(0, field.shape[1]))
      rows, cols = (np.arange(h) + y0) % field.shape[0], (np.arange(w) + x0) % field.shape[1]
      texture = rng.uniform(0.05, 0.35) * field[np.ix_(rows, cols)]
    if texture is None:
      return np.clip(colour * gain[..., None], 0.0, 1.0)
    tint = 1.0 + 0.15 * texture[..., None] * (colour - colour.mean())  # texture not only grey
    return np.clip(colour * (gain + texture)[..., None] * tint, 0.0, 1.0).astype(np.float32)

  def _radii(self, n: int) -> np.ndarray:
    """n radii (px) from the density r^-power on [lo, hi] x the frame side (inverse CDF)."""
    lo, hi = (v * self.size for v in self.cfg.radius)
    q = 1.0 - self.cfg.radius_power
    u = self.rng.random(n)
    return (lo ** q + u * (hi ** q - lo ** q)) ** (1.0 / q)

  # -- the scene ------------------------------------------------------------------------

  def _scene(self) -> np.ndarray:
    rng, side = self.rng, self.side
    c0, c1 = _hsv_colours(rng, 2)
    a = rng.uniform(0, 2 * math.pi)
    yy, xx = np.mgrid[0:side, 0:side].astype(np.float32) / side - 0.5
    ramp = np.clip(0.5 + math.cos(a) * xx + math.sin(a) * yy, 0, 1)[..., None]
    canvas = (1 - ramp) * c0 + ramp * c1
    radii = self._radii(_MAX_LEAVES)
    n = int(np.searchsorted(np.cumsum(math.pi * radii ** 2), self.cfg.coverage * side * side)) + 1
    colours = _hsv_colours(rng, n)
    centres = rng.uniform(0, side, (n, 2))
    for r, colour, (cx, cy) in zip(radii[:n], colours, centres):
      if r < _SMALL:
        self._small_leaf(canvas, float(r), colour, cx, cy)
      else:
        rgb, alpha = self._leaf(float(r), colour)
        self._paste(canvas, rgb, alpha, cx, cy)
    return canvas.astype(np.float32)

  def _small_leaf(self, canvas: np.ndarray, r: float, colour: np.ndarray, cx: float, cy: float
                  ) -> None:
    """A leaf under `_SMALL` px (most of them, by the r^-3 law): a flat-coloured ellipse drawn
    by OpenCV at 1/16-pixel precision (a texture or shading is invisible at that size)."""
    rng = self.rng
    ratio, angle = rng.uniform(0.3, 1.0) if rng.random() < 0.5 else 1.0, rng.uniform(0, 180)
    axes = (max(1, int(r * 16)), max(1, int(r * ratio * 16)))
    cv2.ellipse(canvas, (int(cx * 16), int(cy * 16)), axes, angle, 0, 360,
                tuple(float(v) for v in colour), -1, cv2.LINE_8, 4)

  @staticmethod
  def _paste(canvas: np.ndarray, rgb: np.ndarray, alpha: np.ndarray, cx: float, cy: float) -> None:
    """Composites a shape over `canvas` (in place) with its centre at (cx, cy)."""
    h, w = alpha.shape
    x0, y0 = int(round(cx)) - w // 2, int(round(cy)) - h // 2
    H, W = canvas.shape[:2]
    a0, b0 = max(0, -y0), max(0, -x0)
    a1, b1 = min(h, H - y0), min(w, W - x0)
    if a1 <= a0 or b1 <= b0:
      return
    region = canvas[y0 + a0:y0 + a1, x0 + b0:x0 + b1]
    m = alpha[a0:a1, b0:b1, None]
    region *= 1.0 - m
    region += m * rgb[a0:a1, b0:b1]

  # -- motion and light -----------------------------------------------------------------

  def _camera_path(self) -> list[np.ndarray]:
    """Per frame, the 2x3 affine map from output pixels to scene pixels."""
    cfg, rng, size, side = self.cfg, self.rng, self.size, self.side
    if not self.camera:
      return [np.float32([[1, 0, 0], [0, 1, 0]])] * self.frames
    d = rng.uniform(0, 2 * math.pi)
    pan = rng.uniform(0, cfg.pan) * size * np.array([math.cos(d), math.sin(d)])
    zoom = rng.uniform(*cfg.zoom)
    rot = math.radians(rng.uniform(-cfg.rotate_deg, cfg.rotate_deg))
    start = (side - size) / 2 + rng.uniform(-0.5, 0.5, 2)  # a sub-pixel start like any frame
    out = []
    for t in self._times():
      s, a = zoom ** t, rot * t
      m = np.array([[math.cos(a), -math.sin(a)], [math.sin(a), math.cos(a)]]) / s
      centre = np.array([size / 2, size / 2])
      offset = start + centre + pan * t - m @ centre
      out.append(np.hstack([m, offset[:, None]]).astype(np.float32))
    return out

  def _times(self) -> np.ndarray:
    return np.linspace(0.0, 1.0, self.frames) if self.frames > 1 else np.zeros(1)

  def _movers(self) -> list[dict[str, Any]]:
    if not self.objects:
      return []
    cfg, rng, size = self.cfg, self.rng, self.size
    out = []
    for _ in range(int(rng.integers(1, 4))):
      r = float(np.clip(self._radii(1)[0] * 2.0, 0.06 * size, 0.3 * size))
      rgb, alpha = self._leaf(r, _hsv_colours(rng, 1)[0])
      d = rng.uniform(0, 2 * math.pi)
      travel = rng.uniform(min(0.02, cfg.object_travel), cfg.object_travel) * size
      out.append(dict(rgb=rgb, alpha=alpha, start=rng.uniform(0.1, 0.9, 2) * size,
                      move=travel * np.array([math.cos(d), math.sin(d)]),
                      rot=math.radians(rng.uniform(-cfg.object_rotate_deg, cfg.object_rotate_deg))))
    return out

  def _lighting(self) -> list[np.ndarray | None]:
    if not self.light:
      return [None] * self.frames
    cfg, rng, size = self.cfg, self.rng, self.size
    g1 = rng.uniform(*cfg.gain)
    amp = rng.uniform(0, cfg.light_amplitude)
    a0, turn = rng.uniform(0, 2 * math.pi), rng.uniform(-0.5, 0.5)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size - 0.5
    out = []
    for t in self._times():
      a = a0 + turn * t
      out.append(((1 + (g1 - 1) * t) * (1 + amp * 2 * (math.cos(a) * xx + math.sin(a) * yy))
                  )[..., None].astype(np.float32))
    return out

  def render(self) -> np.ndarray:
    scene = self._scene()
    cams, movers, lights = self._camera_path(), self._movers(), self._lighting()
    size = self.size
    frames = []
    for t, cam, light in zip(self._times(), cams, lights):
      if self.camera:
        frame = cv2.warpAffine(scene, cam, (size, size), flags=cv2.INTER_LANCZOS4 | cv2.WARP_INVERSE_MAP,
                               borderMode=cv2.BORDER_REFLECT)
      else:
        frame = scene.copy()
      for m in movers:
        self._draw_mover(frame, m, t)
      if light is not None:
        frame = frame * light
      frames.append(frame)
    video = np.clip(np.stack(frames), 0.0, 1.0)
    return np.rint(video * 255.0).astype(np.uint8)

  def _draw_mover(self, frame: np.ndarray, m: dict[str, Any], t: float) -> None:
    """Composites a moving object (its own affine motion in frame coordinates) in place."""
    h, w = m["alpha"].shape
    a = m["rot"] * t
    centre = m["start"] + m["move"] * t
    fwd = np.array([[math.cos(a), -math.sin(a)], [math.sin(a), math.cos(a)]])
    offset = centre - fwd @ np.array([w / 2, h / 2])
    mat = np.hstack([fwd, offset[:, None]]).astype(np.float32)
    size = frame.shape[0]
    rgba = np.concatenate([m["rgb"] * m["alpha"][..., None], m["alpha"][..., None]], -1)
    warped = cv2.warpAffine(rgba, mat, (size, size), flags=cv2.INTER_LINEAR,
                            borderMode=cv2.BORDER_CONSTANT, borderValue=0)
    alpha = np.clip(warped[..., 3:], 0.0, 1.0)
    frame *= 1.0 - alpha
    frame += warped[..., :3]


# ------------------------------------------------------------------------------ the sheet


def contact_sheet(seed: int = 0, clips: int = 6, size: int = 96, frames: int = 5) -> np.ndarray:
  """uint8 image: one row per clip, its frames left to right (the docs' picture)."""
  corpus = VideoCorpus(seed, size=size, frames=frames)
  gap = 2
  sheet = np.full((clips * (size + gap), frames * (size + gap), 3), 255, np.uint8)
  for i in range(clips):
    for t, frame in enumerate(corpus.render(i)):
      sheet[i * (size + gap):i * (size + gap) + size, t * (size + gap):t * (size + gap) + size] = frame
  return sheet


def main(argv: Sequence[str] | None = None) -> int:
  p = argparse.ArgumentParser(prog="python -m vbridge_jax.data.video_corpus",
                              description="Draws a contact sheet of the synthetic video corpus "
                              "(one row per clip, frames left to right).",
                              formatter_class=cli.ArgparseFormatter)
  p.add_argument("--out", required=True, help="PNG file to write")
  p.add_argument("--seed", type=int, default=0, help="corpus seed")
  p.add_argument("--clips", type=int, default=6, help="rows")
  p.add_argument("--size", type=int, default=96, help="frame side in pixels")
  p.add_argument("--frames", type=int, default=5, help="frames per clip")
  args = p.parse_args(argv)
  Image.fromarray(contact_sheet(args.seed, args.clips, args.size, args.frames)).save(args.out)
  print(f"wrote {args.out}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
