"""Reading LQ/GT pairs from disk: image decoding, tree scanning, and the one error type.

Layouts:
- paired folders: `ROOT/<category>/{LQ,GT}/<id>.<ext>`, pairs matched by file stem, any
  mix of extensions; `HQ` is accepted for `GT`, lower case too. A leading number on the
  category folder (`01Blur`) is dropped from the category name.
- FoundIR test split: the same, with the 20 numbered folders `01Blur` .. `20...`.
- RealCE: `ROOT/{train,test}/{13mm,26mm,52mm}/<same name>`; 52mm is the GT, 13mm (x4)
  and 26mm (x2) the LQ; both become pairs of the `RealCE` category.

Every problem is a `DataError` whose one-line message names the file(s). With
`skip_bad=True` the scanners skip only the offending pairs (two images with one stem skip
that stem, not the category) and report how many in one warning, or append them to a
`problems` list the caller reports once. A dangling symbolic link is a problem, never
skipped without a word.

Decoding (`open_image`, `read_rgb`: the one image reader of every command; `image_size`
for headers): the format comes from the data; the EXIF orientation is applied
(as OpenCV's `imread` does for the authors' evaluation), to both sides of a pair alike;
16-bit images are scaled to 8 bits; single-channel float images (TIFF) must hold [0, 1]
and are scaled to [0, 255], other float ranges are refused. Whatever PIL cannot decode (an
unidentified format, a truncated file) is a `DataError` naming the file, and so is an image
of more than `MAX_PIXELS` pixels (PIL's `MAX_IMAGE_PIXELS`, 89,478,485, about 9459 x 9459:
its decompression-bomb guard, over which PIL only warns below twice the limit and raises its
own `DecompressionBombError` above): a 14000 x 14000 1-bit PNG is 24 KB on disk and 588 MB
decoded. The commands that go on past a bad image (restore, evaluate, `--skip_bad`) go on
past this one.
"""

from __future__ import annotations

import dataclasses
import io
import logging
import os
import re
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
from PIL import Image, ImageOps

from vbridge_jax.data.degrade import CATEGORIES, FOUNDIR_CATEGORIES, REALCE_CATEGORY
from vbridge_jax.utils.errors import DataError

log = logging.getLogger(__name__)

IMAGE_EXTS = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp"})
# The one rule for the sides of a paired tree, shared by every command (train, restore,
# evaluate): a folder with one of these names holds the ground truth / the degraded inputs.
GT_NAMES = ("GT", "gt", "HQ", "hq")
LQ_NAMES = ("LQ", "lq")


@dataclasses.dataclass(frozen=True)
class Pair:
  """One LQ/GT pair on disk."""
  category: str
  id: str
  lq: str
  gt: str


def _one_line(e: BaseException) -> str:
  return " ".join(str(e).split())


def category_name(folder: str) -> str:
  """`01Blur` -> `Blur`; a name that is only digits is kept."""
  stripped = re.sub(r"^\d+", "", folder)
  return stripped or folder


def category_ids(names: Iterable[str]) -> dict[str, int]:
  """Global category ids: FoundIR's 20 in order, RealCE = 20, others 21.. sorted."""
  ids = {name: i for i, name in enumerate(CATEGORIES)}
  for extra in sorted(set(names) - set(ids)):
    ids[extra] = len(ids)
  return ids


_ORIENTATION = 0x0112  # EXIF tag
MAX_PIXELS = Image.MAX_IMAGE_PIXELS  # PIL's default decompression-bomb limit


def _open(src, label: str) -> Image.Image:
  """Image.open with every failure, and an image over `MAX_PIXELS`, a DataError naming it."""
  try:
    im = Image.open(io.BytesIO(src) if isinstance(src, bytes) else src)
  except FileNotFoundError as e:
    raise DataError(f"missing image: {label}") from e
  except Image.DecompressionBombError as e:
    raise DataError(f"image too large: {label} ({_one_line(e)})") from None
  except Exception as e:  # UnidentifiedImageError, OSError, and whatever a damaged header raises
    raise DataError(f"corrupt or unreadable image: {label} ({_one_line(e)})") from None
  w, h = im.size
  if w * h > MAX_PIXELS:
    im.close()
    raise DataError(f"image too large: {label} is {w}x{h} = {w * h} pixels, over the limit of "
                    f"{MAX_PIXELS} (PIL's MAX_IMAGE_PIXELS, a decompression-bomb guard)")
  return im


def _orientation(im: Image.Image) -> int:
  try:
    return int(im.getexif().get(_ORIENTATION, 1) or 1)
  except Exception:  # a damaged EXIF block: no rotation
    return 1


def open_image(src: str | os.PathLike | bytes, name: str | None = None) -> Image.Image:
  """Decodes a file path or encoded bytes to a fully loaded RGB PIL image.

  The format is read from the data, not the file name (a JPEG behind `.png` is fine). The
  EXIF orientation is applied, as OpenCV's `imread` does (the authors' evaluation reads GT
  that way); both sides of a pair are read alike, so they stay pixel-aligned.
  """
  label = name or (os.fspath(src) if not isinstance(src, bytes) else "<bytes>")
  im = _open(src, label)
  try:
    im.load()
    if _orientation(im) != 1:
      im = ImageOps.exif_transpose(im)
  except Exception as e:  # truncated or damaged data (OSError, SyntaxError, ValueError, ...)
    raise DataError(f"corrupt or truncated image: {label} ({_one_line(e)})") from None
  if im.mode != "RGB":
    if im.mode in ("I;16", "I;16B", "I;16L", "I"):
      arr = np.asarray(im, dtype=np.float32)
      im = Image.fromarray(np.clip(arr / 257.0, 0, 255).astype(np.uint8))
    elif im.mode == "F":
      arr = np.asarray(im, dtype=np.float32)
      lo, hi = (float(arr.min()), float(arr.max())) if arr.size else (0.0, 0.0)
      if not (np.isfinite(lo) and np.isfinite(hi) and lo >= 0.0 and hi <= 1.0):
        raise DataError(f"float image with values in [{lo:g}, {hi:g}]: {label} (float images "
                        f"must hold [0, 1]; save 8- or 16-bit images instead)")
      im = Image.fromarray(np.rint(arr * 255.0).astype(np.uint8))
    im = im.convert("RGB")
  return im


def read_rgb(src: str | os.PathLike | bytes, name: str | None = None) -> np.ndarray:
  """Decodes to a uint8 `(H, W, 3)` array (see `open_image`)."""
  return np.asarray(open_image(src, name), dtype=np.uint8)


def image_size(path: str | os.PathLike) -> tuple[int, int]:
  """(width, height) as decoded (EXIF orientation applied), from the header only."""
  with _open(path, os.fspath(path)) as im:
    w, h = im.size
    return (h, w) if _orientation(im) in (5, 6, 7, 8) else (w, h)


def has_orientation(data: bytes) -> bool:
  """Whether encoded bytes carry an EXIF orientation other than 'upright'."""
  with Image.open(io.BytesIO(data)) as im:
    return _orientation(im) != 1


def dangling_link(p: Path) -> bool:
  return p.is_symlink() and not p.exists()


def is_ground_truth(rel: str | os.PathLike) -> bool:
  """Whether a path relative to a tree's root lies under a ground-truth folder (GT_NAMES)."""
  return any(part in GT_NAMES for part in Path(rel).parts[:-1])


def is_side_folder(name: str) -> bool:
  """Whether a folder name marks a side of a pair (LQ_NAMES or GT_NAMES), not a category."""
  return name in GT_NAMES or name in LQ_NAMES


def _images_by_stem(folder: Path, problem: "_Problems") -> tuple[dict[str, Path], set[str]]:
  """(images of a folder by stem, clashing stems). Two images with one stem are one
  problem (that stem is skipped, since which one pairs is unknown); a dangling link is a
  problem."""
  out: dict[str, Path] = {}
  clashes: set[str] = set()
  for p in sorted(folder.iterdir()):
    if p.name.startswith(".") or p.suffix.lower() not in IMAGE_EXTS:
      continue
    if dangling_link(p):
      problem(f"dangling symbolic link: {p} -> {os.readlink(p)}")
      continue
    if not p.is_file():
      continue
    if p.stem in out:
      problem(f"two images with the same stem: {out[p.stem]} and {p}")
      clashes.add(p.stem)
      continue
    out[p.stem] = p
  for stem in clashes:
    del out[stem]
  return out, clashes


def _subdir(folder: Path, names: Sequence[str]) -> Path | None:
  for n in names:
    if (folder / n).is_dir():
      return folder / n
  return None


class _Problems:
  """Raises at once, or (skip_bad) collects problems: into the caller's `sink` list, or for
  one warning of this scan."""

  def __init__(self, skip_bad: bool, where: str, sink: list[str] | None = None):
    self.skip_bad, self.where, self.sink = skip_bad, where, sink
    self.items: list[str] = []

  def __call__(self, message: str) -> None:
    if not self.skip_bad:
      raise DataError(message)
    self.items.append(message)

  def report(self) -> None:
    if self.sink is not None:
      self.sink.extend(self.items)
    elif self.items:
      log.warning("skipped %d bad item(s) in %s; first: %s", len(self.items), self.where,
                  self.items[0])


def _match(category: str, lq_dir: Path, gt_dir: Path, problem: _Problems,
           check_sizes: bool, id_suffix: str = "") -> list[Pair]:
  (lqs, lq_clash), (gts, gt_clash) = (_images_by_stem(lq_dir, problem),
                                      _images_by_stem(gt_dir, problem))
  pairs = []
  for stem in sorted((set(lqs) | set(gts)) - lq_clash - gt_clash):  # a clash counts once
    if stem not in lqs:
      problem(f"GT without its LQ: {gts[stem]} (no {lq_dir}/{stem}.*)")
      continue
    if stem not in gts:
      problem(f"LQ without its GT: {lqs[stem]} (no {gt_dir}/{stem}.*)")
      continue
    if check_sizes:
      try:
        a, b = image_size(lqs[stem]), image_size(gts[stem])
      except DataError as e:
        problem(str(e))
        continue
      if a != b:
        problem(f"LQ/GT size mismatch: {lqs[stem]} {a[0]}x{a[1]} vs {gts[stem]} "
                f"{b[0]}x{b[1]}")
        continue
    pairs.append(Pair(category, stem + id_suffix, str(lqs[stem]), str(gts[stem])))
  return pairs


def _category_dirs(root: Path, problem: _Problems) -> list[Path]:
  if not root.is_dir():
    raise DataError(f"not a directory: {root}")
  out = []
  for p in sorted(root.iterdir()):
    if p.name.startswith("."):
      continue
    if dangling_link(p):
      problem(f"dangling symbolic link: {p} -> {os.readlink(p)}")
    elif p.is_dir():
      out.append(p)
  return out


def scan_paired_folders(root: str | os.PathLike, *, skip_bad: bool = False,
                        check_sizes: bool = True,
                        known: Sequence[str] | None = None,
                        problems: list[str] | None = None) -> list[Pair]:
  """All pairs of a `ROOT/<category>/{LQ,GT}/<id>.<ext>` tree, sorted by category, id.

  `known`: if given, every category name must be one of these (FoundIR's folders).
  Raises DataError for a GT without its LQ (or the reverse), an LQ/GT size mismatch
  (header check), an unreadable header, an empty category or an empty tree. With
  `skip_bad`, `problems` (a list) collects the skipped items instead of a warning.
  """
  root = Path(root)
  problem = _Problems(skip_bad, str(root), problems)
  pairs: list[Pair] = []
  for cat_dir in _category_dirs(root, problem):
    name = category_name(cat_dir.name)
    if known is not None and name not in known:
      problem(f"unknown category folder: {cat_dir} (expected one of {', '.join(known)})")
      continue
    lq_dir, gt_dir = _subdir(cat_dir, LQ_NAMES), _subdir(cat_dir, GT_NAMES)
    if lq_dir is None or gt_dir is None:
      problem(f"category folder without LQ/ and GT/: {cat_dir}")
      continue
    before = len(problem.items)
    found = _match(name, lq_dir, gt_dir, problem, check_sizes)
    if not found and len(problem.items) == before:  # not already counted as bad pairs
      problem(f"empty category: {cat_dir}")
    pairs.extend(found)
  problem.report()
  if not pairs:
    raise DataError(f"empty data set: no LQ/GT pairs under {root}")
  return pairs


def scan_foundir(root: str | os.PathLike, **kwargs) -> list[Pair]:
  """The FoundIR test layout (numbered category folders; any subset of the 20)."""
  return scan_paired_folders(root, known=FOUNDIR_CATEGORIES, **kwargs)


def scan_realce(root: str | os.PathLike, split: str, *, skip_bad: bool = False,
                check_sizes: bool = True, problems: list[str] | None = None) -> list[Pair]:
  """RealCE `ROOT/<split>/{13mm,26mm}` LQ against `ROOT/<split>/52mm` GT."""
  base = Path(root) / split
  if not (base / "52mm").is_dir():
    raise DataError(f"RealCE split without 52mm/: {base}")
  problem = _Problems(skip_bad, str(base), problems)
  pairs: list[Pair] = []
  for lens, suffix in (("13mm", "_x4"), ("26mm", "_x2")):
    if (base / lens).is_dir():
      pairs.extend(_match(REALCE_CATEGORY, base / lens, base / "52mm", problem,
                          check_sizes, suffix))
  problem.report()
  if not pairs:
    raise DataError(f"empty data set: no 13mm/26mm -> 52mm pairs under {base}")
  return pairs


def realce_splits(root: str | os.PathLike) -> list[str]:
  root = Path(root)
  splits = [s for s in ("train", "test") if (root / s).is_dir()]
  if not splits:
    raise DataError(f"RealCE root without train/ or test/: {root}")
  return splits
