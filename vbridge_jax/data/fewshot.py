"""Few-shot restoration sets from clean images: `DIR/<category>/{LQ,GT}/<id>.png`.

    python -m vbridge_jax.data.fewshot --out DIR [--clean DIR] [--per_category N]
        [--heldout N] [--drift N] [--seed S] [--size PX] [--categories A,B,...] [--overwrite]

With no `--clean`, the clean images are the public-domain photos that ship inside
scikit-image (astronaut, coffee, chelsea, rocket, hubble_deep_field,
immunohistochemistry, retina, the left motorcycle view): random scales and square crops
of `--size` pixels (default 256), so it runs on a fresh machine with no download. This is
the trainer's embedded demo set: by default 4 pairs for each of the 21 categories (FoundIR's
20 and RealCE), 168 PNGs, a few seconds (the trainer builds it with its config's
`data.demo_per_category`, at its `eval.size` when set: training/setup.py `demo_split`).
Degradations are applied at the crop size, as a camera at that resolution makes them
(data/degrade.py): build the set at the size it is trained and scored at, since shrinking
a degraded image afterwards averages most of the degradation away. With `--clean DIR`
every image under DIR (recursively, sorted) is used in turn; `--size 0` (the default there) keeps full images.
The output is a pure function of the inputs and `--seed` (a non-negative integer, as
numpy's seeds are). `--size` is at most `MAX_SIZE` (4096 px: a 512-px photo upscaled 8x;
100000 would ask for a 30 GB image). `--out` may not overlap `--clean` (the set would feed
its own outputs back in, or overwrite its inputs); a dangling link under `--clean` and a
write that fails (a full disk) are one-line errors.

The command's `--out` is one set: it must be new or empty (a set written over another of
another seed or size would mix the two, and `prepare` would pack both), or, with
`--overwrite`, the folder is replaced whole. Either way the set is built in a hidden
folder beside `--out` and renamed into place when complete, so a failed build leaves
`--out` as it was.

`--drift N` (N > 0) also writes `DIR/drift/<category>/{LQ,GT}/<id>.png`, N pairs each for
the drift corrector (configs/drift.py; the paper uses 50 per category "for the drift
correction stage"): cut and degraded from the training split's clean images with their own
random draws, so none of them is one of the base model's training pairs (where the base's
drift would be smallest). The training pairs then go to `DIR/train/`. `prepare` packs the
split like any tree (`--manual_dir DIR/drift`).

`--heldout N` (N > 0) also writes a held-out split whose clean images are disjoint from the
training split's: `DIR/train/<category>/{LQ,GT}/<id>.png` (`--per_category` pairs each) and
`DIR/heldout/<category>/{LQ,GT}/<id>.png` (N pairs each). The built-in photos split as
`HELDOUT_PHOTOS` (held out) and the rest; with `--clean`, every fourth image (sorted order,
the 4th, 8th, ...) is held out. The trainer's demo set (`data.source="demo"`) is built this
way: it trains on `train/` and scores `heldout/` during training (`config.eval`).

The inputs' scores at the trainer's default (`configs/curriculum.py:tiny`: 32 training and
2 held-out pairs per category, 128 px, seed 42), mean PSNR-Y (dB) / SSIM-Y of LQ against GT
(vbridge_jax/evaluate.py, `vbridge` protocol; `python benchmarks/demo_input.py` prints
this table). Every category is plainly degraded: at most 31.2 dB in the training split
(JPEG: its rocket-sky and retina crops score 35 dB, the textured photos 28-30 dB) and 31.9 dB
in the held-out one (RealCE on 2 pairs); haze 12-14 dB and low light 8.5-12 dB.

| category | train PSNR-Y | train SSIM-Y | held-out PSNR-Y | held-out SSIM-Y |
|---|---|---|---|---|
| Blur | 25.9 | 0.673 | 26.3 | 0.738 |
| Blur_Noise | 23.2 | 0.394 | 22.8 | 0.459 |
| Blur_JPEG | 25.5 | 0.631 | 26.1 | 0.746 |
| Blur_Noise_JPEG | 24.6 | 0.520 | 24.4 | 0.596 |
| Noise | 27.6 | 0.659 | 27.8 | 0.705 |
| JPEG | 31.2 | 0.867 | 31.0 | 0.864 |
| Noise_JPEG | 27.8 | 0.724 | 28.3 | 0.712 |
| Haze | 13.0 | 0.719 | 12.9 | 0.720 |
| Lowlight_Haze | 11.8 | 0.363 | 9.0 | 0.306 |
| Rain | 25.3 | 0.801 | 25.1 | 0.828 |
| Raindrop | 26.9 | 0.865 | 25.6 | 0.837 |
| NightRain | 11.2 | 0.330 | 9.2 | 0.289 |
| Rain_Haze | 12.3 | 0.571 | 14.3 | 0.676 |
| Lowlight | 11.4 | 0.348 | 10.2 | 0.334 |
| Lowlight_Blur | 11.0 | 0.300 | 8.5 | 0.269 |
| Lowlight_Noise | 11.8 | 0.293 | 8.7 | 0.240 |
| Lowlight_JPEG | 11.1 | 0.324 | 9.8 | 0.324 |
| Lowlight_Blur_Noise | 11.2 | 0.223 | 9.3 | 0.210 |
| Lowlight_Blur_JPEG | 10.7 | 0.297 | 9.4 | 0.266 |
| Lowlight_Noise_JPEG | 11.2 | 0.316 | 8.5 | 0.293 |
| RealCE | 28.2 | 0.752 | 31.9 | 0.906 |
| mean over categories | 18.7 | 0.522 | 18.1 | 0.539 |
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
from pathlib import Path
from typing import Sequence

import numpy as np
import skimage.data
from PIL import Image
from tqdm import tqdm

from vbridge_jax.data.degrade import CATEGORIES, degrade
from vbridge_jax.data.files import IMAGE_EXTS, read_rgb
from vbridge_jax.utils import atomic, cli
from vbridge_jax.utils.errors import DataError, VBridgeError

BUILTIN_PHOTOS = ("astronaut", "coffee", "chelsea", "rocket", "hubble_deep_field",
                  "immunohistochemistry", "retina", "stereo_motorcycle")
HELDOUT_PHOTOS = ("chelsea", "coffee")  # held out of the built-in photos' training split
DEFAULT_SIZE = 256
MAX_SIZE = 4096  # --size's upper bound (px)
DEFAULT_PER_CATEGORY = 4
SPLITS = ("train", "heldout")  # what build_once writes (its sets have no drift split)


def builtin_photos() -> list[tuple[str, np.ndarray]]:
  """The scikit-image sample photos, uint8 RGB."""
  out = []
  for name in BUILTIN_PHOTOS:
    img = getattr(skimage.data, name)()
    if isinstance(img, tuple):  # stereo_motorcycle: (left, right, disparity)
      img = img[0]
    out.append((name, np.ascontiguousarray(img[..., :3], dtype=np.uint8)))
  return out


def clean_images(folder: str | os.PathLike) -> list[tuple[str, Path]]:
  folder = Path(folder)
  if not folder.is_dir():
    raise DataError(f"--clean is not a directory: {folder}")
  candidates = [p for p in folder.rglob("*")
                if p.suffix.lower() in IMAGE_EXTS and not p.name.startswith(".")]
  dangling = sorted(p for p in candidates if p.is_symlink() and not p.exists())
  if dangling:
    raise DataError(f"dangling symbolic link under --clean: {dangling[0]} -> "
                    f"{os.readlink(dangling[0])}" +
                    (f" (and {len(dangling) - 1} more)" if len(dangling) > 1 else ""))
  files = sorted(p for p in candidates if p.is_file())
  if not files:
    raise DataError(f"no images under --clean {folder}")
  return [(str(p.relative_to(folder)), p) for p in files]


def random_crop(image: np.ndarray, size: int, rng: np.random.Generator) -> np.ndarray:
  """A random scale (so that the crop covers 50..100% of the short side) and crop."""
  h, w = image.shape[:2]
  short = min(h, w)
  if size <= 0:
    return image
  # Crop side in source pixels, then resized to `size` (down- or up-scaling).
  side = int(round(short * rng.uniform(0.5, 1.0)))
  side = max(min(side, short), 1)
  y0 = int(rng.integers(0, h - side + 1))
  x0 = int(rng.integers(0, w - side + 1))
  crop = Image.fromarray(image[y0:y0 + side, x0:x0 + side])
  if side != size:
    crop = crop.resize((size, size), Image.BICUBIC)
  out = np.asarray(crop, dtype=np.uint8)
  if rng.integers(2):
    out = out[:, ::-1]
  return np.ascontiguousarray(out)


def build(out: str | os.PathLike, *, clean: str | os.PathLike | None = None,
          per_category: int = DEFAULT_PER_CATEGORY, seed: int = 0,
          size: int | None = None, categories: Sequence[str] = CATEGORIES,
          progress: bool = False, heldout: int = 0, drift: int = 0) -> int:
  """Writes the set; returns the number of pairs written.

  `heldout > 0`: `out/train/` and `out/heldout/` from disjoint clean images (module doc).
  `drift > 0`: also `out/drift/`, the drift corrector's pairs (module doc).
  """
  for name, n in (("heldout", heldout), ("drift", drift)):
    if n < 0:
      raise DataError(f"--{name} must be >= 0, got {n}")
  if per_category < 1:
    raise DataError(f"--per_category must be at least 1, got {per_category}")
  if seed < 0:
    raise DataError(f"--seed must be >= 0 (numpy's seeds are non-negative), got {seed}")
  if size is not None and not 0 <= size <= MAX_SIZE:
    raise DataError(f"--size must be between 0 (full images) and {MAX_SIZE} px, got {size}")
  unknown = [c for c in categories if c not in CATEGORIES]
  if unknown:
    raise DataError(f"unknown categories: {', '.join(unknown)}")
  if clean is None:
    sources: list[tuple[str, object]] = list(builtin_photos())
    size = DEFAULT_SIZE if size is None else size
  else:
    _check_apart(out, clean)
    sources = list(clean_images(clean))
    size = 0 if size is None else size
  out = Path(out)
  if heldout:
    train_src, held_src = split_sources(sources, clean is None)
    jobs = [(out / "train", train_src, per_category, 0), (out / "heldout", held_src, heldout, 1)]
  else:
    train_src = sources
    jobs = [(out / "train", sources, per_category, 0) if drift else (out, sources, per_category, None)]
  if drift:  # the training images, other crops and degradations (split 2): no pair repeats
    jobs.append((out / "drift", train_src, drift, 2))
  total = sum(n for _, _, n, _ in jobs) * len(categories)
  bar = None
  if progress:
    bar = tqdm(total=total, desc="fewshot pairs", unit="pair")
  try:
    for folder, srcs, n, split in jobs:
      todo = [(c, i) for c in categories for i in range(n)]
      _write(folder, todo, srcs, clean is not None, size, seed, n, bar, split)
  finally:
    if bar is not None:
      bar.close()
  return total


def _check_apart(out, clean) -> None:
  if clean is not None and atomic.overlaps(out, clean):
    raise DataError(f"--out {out} overlaps --clean {clean}: the set would read its own "
                    f"outputs or overwrite its inputs; choose a separate folder")


def build_set(out: str | os.PathLike, *, overwrite: bool = False, **spec) -> int:
  """The command's build: `out` holds exactly the set `build(out, **spec)` writes, or is
  left as it was. A non-empty `out` is refused unless `overwrite`; the set is built in a
  hidden folder beside `out` and renamed into place (replacing the old folder) when
  complete. Returns the number of pairs."""
  out = Path(out)
  _check_apart(out, spec.get("clean"))
  if out.exists() and not out.is_dir():
    raise DataError(f"--out {out} exists and is not a folder")
  if out.is_dir() and any(out.iterdir()) and not overwrite:
    raise DataError(f"--out {out} is not empty: a set written into it would mix with what it "
                    f"holds; choose a new folder, or pass --overwrite to replace it whole")
  try:
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = out.with_name(f".{out.name}.fewshot.{os.getpid()}")  # mkdtemp's would be 0700
    shutil.rmtree(staging, ignore_errors=True)  # a killed run's
    staging.mkdir()
  except OSError as e:
    raise DataError(f"cannot write beside --out {out}: {e.strerror or e}") from None
  aside = None
  try:
    n = build(staging, **spec)
    if out.is_dir() and any(out.iterdir()):
      aside = out.with_name(f"{staging.name}.old")
      os.replace(out, aside)
    try:
      os.replace(staging, out)  # onto a missing or empty folder
    except OSError:
      if aside is not None:
        os.replace(aside, out)  # the old set back
        aside = None
      raise
  except OSError as e:
    raise DataError(f"cannot write --out {out}: {e.strerror or e}") from None
  finally:
    shutil.rmtree(staging, ignore_errors=True)
    if aside is not None:
      shutil.rmtree(aside, ignore_errors=True)
  return n


MARKER = ".complete_split"  # in a built set's folder: the build settings (JSON)


def build_once(out: str | os.PathLike, *, progress: bool = False, **spec) -> Path:
  """`out` holding the split set that `build(out, **spec)` writes (`heldout` > 0), built
  unless `out/.complete_split` records exactly these settings; a set built with others (or
  half built: no marker yet) is removed first, so no stale pair is left. The one builder of
  the trainer's and the miniature's demo sets."""
  out = Path(out)
  marker = out / MARKER
  want = json.loads(json.dumps(spec, sort_keys=True))
  try:
    built = json.loads(marker.read_text(encoding="utf-8"))
  except (OSError, ValueError):
    built = None
  if built != want:
    marker.unlink(missing_ok=True)
    for name in SPLITS:
      shutil.rmtree(out / name, ignore_errors=True)
    build(out, **spec, progress=progress)
    atomic.write_json(marker, want, indent=None)
  return out


def split_sources(sources: list, builtin: bool) -> tuple[list, list]:
  """(training, held-out) clean images, disjoint: `HELDOUT_PHOTOS` of the built-in photos,
  or every fourth image of a folder."""
  if builtin:
    held = [s for s in sources if s[0] in HELDOUT_PHOTOS]
    train = [s for s in sources if s[0] not in HELDOUT_PHOTOS]
  else:
    held, train = sources[3::4], [s for i, s in enumerate(sources) if i % 4 != 3]
  if not held or not train:
    raise DataError(f"--heldout needs at least 4 clean images (got {len(sources)}): "
                    "every fourth one is held out")
  return train, held


def _write(out: Path, todo, sources, from_folder: bool, size: int, seed: int,
           per_category: int, bar, split: int | None = None) -> None:
  cache: dict[int, np.ndarray] = {}
  for category, i in todo:
    cat_index = CATEGORIES.index(category)
    rng = np.random.default_rng([seed, cat_index, i] + ([] if split is None else [split]))
    n_pair = cat_index * per_category + i  # each wrap shifts by one: photos mix
    k = (n_pair + n_pair // len(sources)) % len(sources)
    if k not in cache:
      name, src = sources[k]
      cache[k] = src if isinstance(src, np.ndarray) else read_rgb(src)
      if from_folder and len(cache) > 4:  # keep memory small for big folders
        cache.pop(next(iter(cache)))
    gt = random_crop(cache[k], size, rng)
    lq = degrade(gt, category, rng)
    for side, img in (("GT", gt), ("LQ", lq)):
      path = out / category / side / f"{i:04d}.png"
      try:
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(img).save(path, compress_level=1)
      except OSError as e:  # a full disk, an unwritable --out
        raise DataError(f"cannot write {path}: {e.strerror or e}") from None
    if bar is not None:
      bar.update(1)


def main(argv: Sequence[str] | None = None) -> int:
  p = argparse.ArgumentParser(prog="python -m vbridge_jax.data.fewshot",
                              description=__doc__.split("\n\n")[0],
                              formatter_class=cli.ArgparseFormatter)
  p.add_argument("--out", required=True, help="output folder")
  p.add_argument("--clean", default=None, help="folder of clean images (default: built-in)")
  p.add_argument("--per_category", "--per-category", type=int, default=DEFAULT_PER_CATEGORY,
                 help="pairs per category (the training split's with --heldout)")
  p.add_argument("--heldout", type=int, default=0,
                 help="held-out pairs per category from disjoint clean images: writes "
                 "OUT/train/ and OUT/heldout/ (default 0: one flat set)")
  p.add_argument("--drift", type=int, default=0,
                 help="drift-corrector pairs per category, other draws from the training images: "
                 "writes OUT/drift/ (and the training pairs to OUT/train/)")
  p.add_argument("--seed", type=int, default=0,
                 help="the set is a pure function of the inputs and this (>= 0)")
  p.add_argument("--size", type=int, default=None,
                 help=f"square crop size, at most {MAX_SIZE} (default {DEFAULT_SIZE}; 0 = full "
                 "image, the default with --clean)")
  p.add_argument("--categories", default=",".join(CATEGORIES),
                 help="comma-separated subset of the 21 categories")
  p.add_argument("--overwrite", action="store_true",
                 help="replace a non-empty --out whole (built beside it, then swapped in)")
  args = p.parse_args(argv)
  cats = [c for c in args.categories.split(",") if c]
  try:
    n = build_set(args.out, overwrite=args.overwrite, clean=args.clean,
                  per_category=args.per_category, seed=args.seed, size=args.size,
                  categories=cats, progress=True, heldout=args.heldout, drift=args.drift)
  except VBridgeError as e:
    print(f"error: {e}", file=sys.stderr)
    return 1
  print(f"wrote {n} pairs in {len(cats)} categories to {args.out}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
