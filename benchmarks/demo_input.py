"""The demo set's input scores: per category, the mean PSNR-Y / SSIM-Y of LQ against GT.

  python benchmarks/demo_input.py [--size 128] [--build-size PX] [--per-category 32]
                                  [--heldout 2] [--seed 42]

Builds the built-in demo set as the trainer does for `configs/curriculum.py:tiny`
(vbridge_jax/data/fewshot.py `build`, 32 training and 2 held-out pairs per category at
`eval.size` = 128 px, seed 42) in a temporary folder and scores both splits with
vbridge_jax/evaluate.py (`vbridge` protocol: luma Y). `--build-size` degrades at another
size and bicubically resizes both sides to `--size` before scoring, as a set built at one
size and trained or evaluated at another would be. Prints a markdown table (the one in
fewshot.py's docstring) and the means over categories. A few tens of seconds on a CPU.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from vbridge_jax.data import fewshot  # noqa: E402
from vbridge_jax.data.degrade import CATEGORIES  # noqa: E402
from vbridge_jax.evaluation import protocols  # noqa: E402


def resize_tree(root: Path, size: int) -> None:
  """Every PNG under root, its short side bicubically resized to `size` (in place)."""
  for path in root.rglob("*.png"):
    with Image.open(path) as im:
      w, h = im.size
      s = size / min(w, h)
      out = im.convert("RGB").resize((max(1, round(w * s)), max(1, round(h * s))), Image.BICUBIC)
    out.save(path)


def scores(root: Path) -> dict[str, dict[str, float]]:
  return protocols.evaluate(root, root, "vbridge", progress=False)["per_category"]


def table(train: dict, heldout: dict) -> str:
  lines = ["| category | train PSNR-Y | train SSIM-Y | held-out PSNR-Y | held-out SSIM-Y |",
           "|---|---|---|---|---|"]
  for c in CATEGORIES:
    t, h = train[c], heldout[c]
    lines.append(f"| {c} | {t['psnr_y']:.1f} | {t['ssim_y']:.3f} | {h['psnr_y']:.1f} | "
                 f"{h['ssim_y']:.3f} |")
  mean = {k: (np.mean([train[c][k] for c in CATEGORIES]), np.mean([heldout[c][k] for c in CATEGORIES]))
          for k in ("psnr_y", "ssim_y")}
  lines.append(f"| mean over categories | {mean['psnr_y'][0]:.1f} | {mean['ssim_y'][0]:.3f} | "
               f"{mean['psnr_y'][1]:.1f} | {mean['ssim_y'][1]:.3f} |")
  return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--size", type=int, default=128, help="the size scored at (eval.size)")
  p.add_argument("--build-size", type=int, default=0, help="degrade at this size (default --size)")
  p.add_argument("--per-category", type=int, default=32)
  p.add_argument("--heldout", type=int, default=2)
  p.add_argument("--seed", type=int, default=42)
  args = p.parse_args(argv)
  build_size = args.build_size or args.size
  with tempfile.TemporaryDirectory() as tmp:
    root = Path(tmp)
    fewshot.build(root, per_category=args.per_category, heldout=args.heldout, size=build_size,
                  seed=args.seed)
    if build_size != args.size:
      resize_tree(root, args.size)
    train, heldout = scores(root / "train"), scores(root / "heldout")
  print(f"built at {build_size} px, scored at {args.size} px, {args.per_category} training and "
        f"{args.heldout} held-out pairs per category, seed {args.seed}")
  print(table(train, heldout))
  return 0


if __name__ == "__main__":
  sys.exit(main())
