"""The PSNR/SSIM ceiling that scoring through an MP4 imposes (the authors' path).

    python benchmarks/mp4_ceiling.py --data FOUNDIR_TREE [--frames 5]

For each FoundIR pair (`<category>/{LQ,GT}/<id>.<ext>`) the GT itself is the prediction:
it goes through `video.write_mp4` (imageio's defaults: libx264, quality 5, yuv420p, sizes
padded to multiples of 16) and is scored as the authors' eval.py does (`evaluate`'s
`vbridge_mp4` protocol: last frame via OpenCV, zoomed to the GT size). Two clips:

- `static`: the GT repeated `--frames` times;
- `blend`: the ideal pseudo-video, LQ blended into the GT over `--frames` frames (what a
  perfect model would generate; the codec predicts the last frame from the earlier ones).

each at the authors' 24 fps and at 16 fps. A lossless PNG of the GT scores infinite PSNR
and SSIM 1, so the table's figures are the loss due to the MP4 alone. Prints markdown.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from vbridge_jax.data import (
  clips,  # noqa: E402
  video,
)
from vbridge_jax.data.files import read_rgb  # noqa: E402
from vbridge_jax.evaluation import protocols  # noqa: E402


def main() -> None:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--data", required=True,
                 help="a FoundIR-layout tree <category>/{LQ,GT}/<id>.<ext> (a few pairs suffice)")
  p.add_argument("--frames", type=int, default=5)
  a = p.parse_args()
  root = Path(a.data)
  gts = sorted(q for q in root.glob("*/GT/*") if q.is_file())
  if not gts:
    sys.exit(f"error: no <category>/GT/<id> images under {root}")
  rows = []
  with tempfile.TemporaryDirectory() as tmp:
    for clip in ("static", "blend"):
      for fps in (video.AUTHORS_FPS, 16):
        pred_root = Path(tmp) / f"{clip}_{fps}"
        for gt_path in gts:
          gt = read_rgb(gt_path)
          if clip == "static":
            frames = [gt] * a.frames
          else:
            lq = read_rgb(gt_path.parent.parent / "LQ" / gt_path.name)
            c = clips.make_clip(lq[None], gt[None], a.frames)[0]  # [-1, 1]
            frames = [np.clip(np.round((f + 1) * 127.5), 0, 255).astype(np.uint8) for f in c]
            frames[-1] = gt
          cat = gt_path.parent.parent.name
          video.write_mp4(pred_root / cat / f"{gt_path.stem}.mp4", frames, fps=fps)
        res = protocols.evaluate(pred_root, root, "vbridge_mp4", progress=False)
        for r in res["per_image"]:
          size = read_rgb(root / r["category"] / "GT" / f"{r['name']}.png").shape if (
              root / r["category"] / "GT" / f"{r['name']}.png").exists() else None
          rows.append([clip, fps, f"{r['category']}/{r['name']}",
                       f"{size[1]}x{size[0]}" if size else "", r["psnr_y"], r["ssim_y"],
                       r["psnr_rgb"], r["ssim_rgb"]])
        m = res["average_per_image"]
        rows.append([clip, fps, "**mean**", "", m["psnr_y"], m["ssim_y"], m["psnr_rgb"],
                     m["ssim_rgb"]])
  print(f"GT -> MP4 ({a.frames} frames) -> scored as the authors' eval.py "
        f"(vbridge_mp4); {len(gts)} FoundIR pairs\n")
  print("| clip | fps | image | size | PSNR-Y | SSIM-Y | PSNR-RGB | SSIM-RGB |")
  print("|---|---|---|---|---|---|---|---|")
  for r in rows:
    print(f"| {r[0]} | {r[1]} | {r[2]} | {r[3]} | {r[4]:.2f} | {r[5]:.4f} | {r[6]:.2f} | "
          f"{r[7]:.4f} |")


if __name__ == "__main__":
  main()
