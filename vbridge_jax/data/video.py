"""MP4 files written and read the way the authors' release does (docs/fidelity.md, scoring).

The authors save every restored sample with `imageio.mimsave(path, frames, fps=...)` and
score the MP4's last frame (their `eval.py`): imageio's ffmpeg writer with its defaults,
libx264 at quality 5 (CRF 25), yuv420p chroma, and frame sizes not divisible by the macro
block of 16 rescaled up to the next multiple by ffmpeg; their evaluation reads the last
frame back with OpenCV (BGR -> RGB). `write_mp4` writes such a file (atomically: a
temporary file beside it, then a rename), `last_frame` reads it as `eval.py` does, and
`read_frames` reads every frame.

Writing and reading MP4s needs the `video` extra: `pip install -e .[video]` (imageio[ffmpeg],
whose wheel ships an ffmpeg binary); OpenCV is a dependency of the package.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import cv2
import numpy as np

from vbridge_jax.utils import atomic
from vbridge_jax.utils.errors import VideoError

# imageio's ffmpeg writer defaults, spelt out so that a change of defaults cannot move them.
CODEC = "libx264"
QUALITY = 5
PIXEL_FORMAT = "yuv420p"
MACRO_BLOCK = 16


def _imageio():
  """imageio with its ffmpeg plugin: the optional `video` extra, imported on first use."""
  try:
    import imageio.v2 as imageio
    import imageio_ffmpeg  # noqa: F401
  except ImportError as e:
    raise VideoError(f"MP4 files need the video extra (pip install -e .[video]): {e}") from None
  return imageio


def check_available() -> None:
  """A `VideoError` (one line) unless MP4s can be written here: the `video` extra."""
  _imageio()


AUTHORS_FPS = 24  # V-Bridge/inference.py: fps = 24


def write_mp4(path: str | os.PathLike, frames: Sequence[np.ndarray],
              fps: int = AUTHORS_FPS) -> Path:
  """Writes uint8 `(H, W, 3)` frames as an MP4 with imageio's defaults; returns the path.

  The file appears complete or not at all. `fps` defaults to the authors' 24: libx264's
  constant-rate-factor control depends on the frame rate, so another rate codes different
  pictures and the scored last frame changes (by up to tens of levels on noisy content).
  """
  path = Path(path)
  frames = [np.asarray(f) for f in frames]
  if not frames:
    raise VideoError(f"{path}: no frames to write")
  for i, f in enumerate(frames):
    if f.dtype != np.uint8 or f.ndim != 3 or f.shape[2] != 3 or f.shape != frames[0].shape:
      raise VideoError(f"{path}: frame {i} is {f.shape} {f.dtype}; want uint8 (H, W, 3) frames "
                       f"of one size")
  imageio = _imageio()
  path.parent.mkdir(parents=True, exist_ok=True)
  try:
    with atomic.replacing(path) as tmp:
      imageio.mimsave(tmp, frames, format="FFMPEG", fps=fps, codec=CODEC, quality=QUALITY,
                      pixelformat=PIXEL_FORMAT, macro_block_size=MACRO_BLOCK)
  except (OSError, RuntimeError, ValueError) as e:
    raise VideoError(f"{path}: cannot write the MP4 ({str(e).splitlines()[0] if str(e) else e!r})"
                     ) from None
  finally:
    if os.path.exists(tmp):
      os.remove(tmp)
  return path


def last_frame(path: str | os.PathLike) -> np.ndarray:
  """The last frame as uint8 RGB `(H, W, 3)`, read exactly as the authors' `eval.py` does
  (OpenCV: seek to frame count - 1, read, BGR -> RGB)."""
  cap = cv2.VideoCapture(os.fspath(path))
  try:
    if not cap.isOpened():
      raise VideoError(f"{path}: cannot open the video")
    total = int(cap.get(cv2.CAP_PROP_FRAME_COUNT))
    cap.set(cv2.CAP_PROP_POS_FRAMES, total - 1)
    ok, frame = cap.read()
  finally:
    cap.release()
  if not ok or frame is None:
    raise VideoError(f"{path}: cannot read the last frame")
  return cv2.cvtColor(frame, cv2.COLOR_BGR2RGB)


def read_frames(path: str | os.PathLike) -> list[np.ndarray]:
  """Every frame of a video as uint8 RGB `(H, W, 3)` (imageio's ffmpeg reader)."""
  imageio = _imageio()
  try:
    with imageio.get_reader(os.fspath(path), format="FFMPEG") as reader:
      return [np.asarray(f) for f in reader]
  except (OSError, RuntimeError, ValueError, IndexError) as e:
    raise VideoError(f"{path}: cannot read the video ({str(e).splitlines()[0] if str(e) else e!r})"
                     ) from None
