"""How an image of any size becomes the model's working size and comes back: the authors' rule.

The authors' released inference code (`inference.py` and `videox_fun/utils/utils.py` in their
public repository, Zhengsh123/V-Bridge) does, per image of H x W pixels:

- **Large images** (`H > 1440` or `W > 2560`, strictly): the working size keeps the aspect
  ratio at an area of `min(2560 * 1440, H * W)`, each side floored to a multiple of 32 (at
  least 32), and the image is resized to it (PIL bicubic). Their inference writes the video
  at that size; their evaluation resizes the prediction to the GT size with
  `scipy.ndimage.zoom(..., order=3)` per channel. Here the restored frame is resized back the
  same way, so a score of our PNG equals a score computed their way.
- **The boundary** (`W >= 2560` or `H >= 1440` but neither limit exceeded, e.g. exactly 2560
  wide): the working size is the image rounded up to a multiple of 32, as for small images,
  but their loader tests the limits with `>=` and *resizes* (stretches) the image to that size
  instead of padding it; the output is then centre-cropped back to H x W as for padded
  images. That is reproduced here (`mode="stretch"`).
- **Other images**: reflect padding up to a multiple of 32, symmetric (top/left get
  `pad // 2`, bottom/right the rest), and a centre crop back.

The multiple (32 in their code) is the codec's spatial factor times the DiT's patch
(`vae.config.scale_factor_spatial * dit.config.patch_size[1]`); the 2560 x 1440 limits are
theirs. Frames leave the model in [-1, 1] and become uint8 as theirs do: `x * 255` of the
[0, 1] frame, truncated (`quantize="truncate"`), or rounded (`"round"`).
"""

from __future__ import annotations

import dataclasses

import numpy as np
from PIL import Image
from scipy import ndimage

MAX_H, MAX_W = 1440, 2560
MODES = ("pad", "stretch", "resize")
QUANTIZE = ("truncate", "round")


@dataclasses.dataclass(frozen=True)
class Plan:
  """How one image is brought to the working size and back."""

  height: int  # original
  width: int
  work_h: int  # what the model sees
  work_w: int
  mode: str  # pad | stretch | resize (see the module docstring)

  @property
  def top(self) -> int:
    return (self.work_h - self.height) // 2

  @property
  def left(self) -> int:
    return (self.work_w - self.width) // 2


def plan_size(height: int, width: int, multiple: int = 32) -> Plan:
  """The authors' working size for an H x W image (see the module docstring)."""
  if height < 1 or width < 1 or multiple < 1:
    raise ValueError(f"bad image size {height}x{width} or multiple {multiple}")
  if height > MAX_H or width > MAX_W:
    area = min(MAX_H * MAX_W, height * width)
    aspect = width / height
    new_h = (area / aspect) ** 0.5
    new_w = new_h * aspect
    return Plan(height, width, max(multiple, int(new_h // multiple) * multiple),
                max(multiple, int(new_w // multiple) * multiple), "resize")
  up = lambda n: -(-n // multiple) * multiple
  mode = "stretch" if (width >= MAX_W or height >= MAX_H) else "pad"
  return Plan(height, width, up(height), up(width), mode)


def _pil_resize(img: np.ndarray, h: int, w: int) -> np.ndarray:
  return np.asarray(Image.fromarray(img).resize((w, h), Image.Resampling.BICUBIC))


def to_work(img: np.ndarray, plan: Plan) -> np.ndarray:
  """uint8 (H, W, 3) -> float32 (work_h, work_w, 3) in [-1, 1]."""
  if plan.mode != "pad":
    img = _pil_resize(img, plan.work_h, plan.work_w)
  else:
    ph, pw = plan.work_h - plan.height, plan.work_w - plan.width
    pads = ((ph // 2, ph - ph // 2), (pw // 2, pw - pw // 2), (0, 0))
    img = np.pad(img, pads, mode="reflect" if min(img.shape[:2]) > 1 else "edge")
  return img.astype(np.float32) / 127.5 - 1.0


def to_uint8(x: np.ndarray, quantize: str = "truncate") -> np.ndarray:
  """Frames in [-1, 1] -> uint8: `(x / 2 + 0.5).clip(0, 1) * 255`, truncated or rounded."""
  if quantize not in QUANTIZE:
    raise ValueError(f"quantize={quantize!r} is not one of {', '.join(QUANTIZE)}")
  v = np.clip(np.asarray(x, np.float32) / 2.0 + 0.5, 0.0, 1.0) * 255.0
  return (np.round(v) if quantize == "round" else v).astype(np.uint8)


def crop_work(frame: np.ndarray, plan: Plan) -> np.ndarray:
  """A working-size uint8 frame without its padding: the centre crop for pad/stretch plans, the
  frame itself for resized ones (as the authors' video writer does)."""
  if plan.mode == "resize":
    return frame
  return frame[plan.top:plan.top + plan.height, plan.left:plan.left + plan.width]


def zoom_to(img: np.ndarray, height: int, width: int) -> np.ndarray:
  """uint8 (h, w, 3) -> (height, width, 3) with `scipy.ndimage.zoom(order=3)` per channel, as
  the authors' evaluation resizes a prediction to the GT size."""
  h, w = img.shape[:2]
  if (h, w) == (height, width):
    return img
  out = np.stack([ndimage.zoom(img[:, :, c], (height / h, width / w), order=3)
                  for c in range(img.shape[2])], axis=-1)
  if out.shape[:2] != (height, width):  # zoom rounds the output shape; never off by more than 1
    out = np.pad(out, ((0, max(0, height - out.shape[0])), (0, max(0, width - out.shape[1])),
                       (0, 0)), mode="edge")[:height, :width]
  return np.clip(out, 0, 255).astype(np.uint8)


def from_work(x: np.ndarray, plan: Plan, quantize: str = "truncate") -> np.ndarray:
  """float (work_h, work_w, 3) in [-1, 1] -> uint8 (H, W, 3): cropped, or zoomed back."""
  frame = crop_work(to_uint8(x, quantize), plan)
  return zoom_to(frame, plan.height, plan.width) if plan.mode == "resize" else frame
