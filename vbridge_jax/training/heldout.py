"""Held-out evaluation inside training (in the manner of big_vision's evaluators).

`config.eval.source` names a paired tree `<category>/{LQ,GT}/<id>.<ext>` the model never
trains on ("demo": `WORKDIR/demo_data/heldout`, the demo set's held-out split, whose photos
are disjoint from the training split's; "": off). At every stage end and every
`eval.every_steps` steps, the trainer calls `Evaluator.run` with its live model: the LQ
images go through `vbridge_jax.inference.restorer.Restorer`, the code path of the restore command
(padding to the model's multiple, codec encode of frame 0, sampling with first-frame
conditioning, decode, last frame), and are scored against their GT with the `vbridge`
protocol of `vbridge_jax.evaluation.metrics` (PSNR/SSIM on MATLAB luma). The unrestored LQ image is
scored the same way once, as the baseline every restoration must beat. Each image's noise is
keyed by its LQ file's path under the held-out root, the name the restore command gives it,
and `restore_settings` (what `python -m vbridge_jax.export` records in model.json) are the
settings restored with, so restoring that root with the export reproduces the scores.

Outputs (process 0): one row per evaluation in `metrics.jsonl` (`step`, `eval/psnr_y`,
`eval/ssim_y`, `eval/input_psnr_y`, `eval/input_ssim_y`, `eval/gain_psnr_y`; averages per
image), the same scalars in TensorBoard (`tensorboard/`), per-image and per-category
figures in `eval/step_<N>.json`, a console line (restored vs input, gain in dB), and a
picture `samples/heldout_step_<N>.png` with labelled columns LQ | restored | GT and one row
per category (the first held-out image of each), small images enlarged with nearest
neighbour so that a person can read them, and `eval/step_<N>/report.html`
(`vbridge_jax.evaluation.report`: the per-category table beside Table 1, a gallery of every
held-out image LQ | restored | GT with its scores and gain, worst first), whose pictures are
the restored PNGs in `eval/step_<N>/` and the LQ and GT as scored in `eval/heldout/`.

Settings (`config.eval`): `source`, `every_steps` (0: stage ends only), `max_images` (0: all;
else the first images taken round-robin over categories, so every category counts),
`size` (0: native; else both LQ and GT resized so that the short side is `size`, as the
training pipeline resizes a stage's pairs), `batch_size` (images per sampler call; 0: all
at once), `ceiling` (also restore each GT as a still clip, frame 0 the GT itself, and log
its score as `eval/ceiling_psnr_y` / `eval/ceiling_ssim_y`: the reproduction ceiling, the
best a restoration by this model can score), and the sampler's `steps`, `solver`, `shift`, `schedule`, `guidance`,
`cfg_skip`, `seed`.
"""

from __future__ import annotations

import dataclasses
import html
import os
from pathlib import Path
from typing import Any

import jax
import numpy as np
from PIL import Image

from vbridge_jax.data.files import read_rgb, scan_paired_folders
from vbridge_jax.diffusion.sampler import sampler_config
from vbridge_jax.evaluation import grids, report
from vbridge_jax.evaluation import metrics as M
from vbridge_jax.inference import restorer as R
from vbridge_jax.training import setup
from vbridge_jax.training.logs import MetricsLogger
from vbridge_jax.utils import atomic

KEYS = ("psnr_y", "ssim_y")
QUANTIZE = "truncate"  # restored frames to uint8 as the restore command's default


@dataclasses.dataclass(frozen=True)
class HeldoutImage:
  category: str
  name: str  # <category>/<id>
  lq: np.ndarray  # uint8 (H, W, 3)
  gt: np.ndarray
  # The Restorer's noise key: the LQ file's path under the held-out root, the name the restore
  # command gives it when restoring that root, so that its noise (and output) is the same.
  key: str = ""


def eval_source(config, workdir: str) -> str | None:
  """The held-out tree of `config.eval.source`, or None when evaluation is off."""
  src = str(config.eval.get("source", "") or "")
  if not src:
    return None
  if src == "demo":
    return setup.demo_split(config, workdir, "heldout")
  if not Path(src).is_dir():
    raise setup.ConfigError(f"config.eval.source={src!r} is not a folder "
                            "(<category>/{LQ,GT}/<id>.<ext>) or 'demo'")
  return src


def restore_settings(config, dcfg) -> dict[str, Any]:
  """How the evaluation restores, beyond the model and the images: `config.eval`'s sampler
  fields and seed, the live DiT's dtypes (`dcfg`, the run's `setup.dit_config`), the codec's
  compute dtype (None for the pixel codec) and `quantize`. `python -m vbridge_jax.export`
  records them in model.json (checkpoints/model_info.py), so that restore reproduces the scores."""
  e = config.eval
  return dict(solver=str(e.solver), steps=int(e.steps), shift=float(e.shift),
              schedule=str(e.schedule), guidance=float(e.guidance), cfg_skip=float(e.cfg_skip),
              seed=int(e.get("seed", 43)), dtype=str(dcfg.dtype), param_dtype=str(dcfg.param_dtype),
              vae_dtype=getattr(setup.vae_config(config), "dtype", None), quantize=QUANTIZE)


def _resize_short(img: np.ndarray, size: int) -> np.ndarray:
  h, w = img.shape[:2]
  if size <= 0 or min(h, w) == size:
    return img
  s = size / min(h, w)
  return np.asarray(Image.fromarray(img).resize((max(1, round(w * s)), max(1, round(h * s))),
                                                Image.BICUBIC))


def load_heldout(root: str, *, size: int = 0, max_images: int = 0) -> list[HeldoutImage]:
  """The held-out pairs, round-robin over categories when `max_images` cuts them."""
  pairs = scan_paired_folders(root)
  rank: dict[str, int] = {}
  order = []
  for p in pairs:
    order.append((rank.get(p.category, 0), p.category, p))
    rank[p.category] = rank.get(p.category, 0) + 1
  order.sort(key=lambda x: (x[0], x[1]))
  chosen = [p for _, _, p in order][:max_images or None]
  chosen.sort(key=lambda p: (p.category, p.id))
  return [HeldoutImage(p.category, f"{p.category}/{p.id}", _resize_short(read_rgb(p.lq), size),
                       _resize_short(read_rgb(p.gt), size),
                       Path(os.path.relpath(p.lq, root)).as_posix()) for p in chosen]


def score(images: list[HeldoutImage], preds: list[np.ndarray]) -> dict[str, Any]:
  """`vbridge` PSNR-Y/SSIM-Y per image, averaged per image and per category."""
  rows = [{"name": im.name, "category": im.category} | {
      k: v for k, v in M.compute("vbridge", p, im.gt).items() if k in KEYS}
      for im, p in zip(images, preds)]
  cats: dict[str, list[dict[str, Any]]] = {}
  for r in rows:
    cats.setdefault(r["category"], []).append(r)
  mean = lambda rs: {k: float(np.mean([r[k] for r in rs])) for k in KEYS}
  return {"per_image": rows, "per_category": {c: mean(rs) for c, rs in sorted(cats.items())},
          "average_per_image": mean(rows),
          "average_per_category": mean([{k: v[k] for k in KEYS} for v in
                                        [mean(rs) for rs in cats.values()]])}


class Evaluator:
  """Restores and scores the held-out set with the trainer's live model (`run`)."""

  def __init__(self, config, workdir: str, dcfg, mesh, logger: MetricsLogger):
    self.workdir, self.mesh, self.logger = workdir, mesh, logger
    self.rules = config.logical_axis_rules  # the run's: the live model is sharded by them
    root = eval_source(config, workdir)
    self.enabled = root is not None
    self.every = int(config.eval.get("every_steps", 0)) if self.enabled else 0
    if not self.enabled:
      return
    e = config.eval
    self.images = load_heldout(root, size=int(e.get("size", 0)),
                               max_images=int(e.get("max_images", 0)))
    settings = restore_settings(config, dcfg)
    self.frames, self.seed = int(config.data.frames), settings["seed"]
    self.batch = int(e.get("batch_size", 0))
    self.with_ceiling = bool(e.get("ceiling", False))
    self.sampler_config = sampler_config(settings, patch_size=tuple(dcfg.patch_size))
    self.positive = setup.load_context(config, dcfg)[0]
    self.negative = setup.load_negative(config, dcfg)
    self.inputs = score(self.images, [im.lq for im in self.images])
    self.write_main = jax.process_index() == 0

  def due(self, step: int, stage) -> bool:
    return self.enabled and (step == stage.end or (self.every > 0 and step % self.every == 0))

  def restore(self, model, vae, images: list[HeldoutImage] | None = None) -> list[np.ndarray]:
    """Restored uint8 images (of `images`' LQ side; default the held-out set), through the
    restore command's `Restorer` on the run's mesh and logical-axis rules (the live model
    stays where the trainer put it)."""
    restorer = R.Restorer(model, vae, self.positive, self.negative, self.sampler_config,
                          frames=self.frames, seed=self.seed, mesh=self.mesh, rules=self.rules,
                          quantize=QUANTIZE)
    with jax.set_mesh(self.mesh):
      return self._restore_all(restorer, images)

  def ceiling(self, model, vae) -> dict[str, Any]:
    """The reproduction ceiling: each held-out GT restored as a still clip (frame 0 the GT
    itself) and scored against itself; what the model loses on a clean picture."""
    still = [dataclasses.replace(im, lq=im.gt) for im in self.images]
    return score(self.images, self.restore(model, vae, still))

  def _restore_all(self, restorer, images: list[HeldoutImage] | None = None) -> list[np.ndarray]:
    """Restores the LQ side of `images` (default: the held-out set) in same-size batches of
    `eval.batch_size` (0: one per size)."""
    images = self.images if images is None else images
    return restorer.restore([im.lq for im in images], [im.key or im.name for im in images],
                            batch=self.batch)

  def run(self, model, vae, step: int) -> dict[str, float]:
    """Restores, scores and logs the held-out set at `step`; returns the logged averages."""
    preds = self.restore(model, vae)
    res = score(self.images, preds)
    avg, inp = res["average_per_image"], self.inputs["average_per_image"]
    row = {"eval/psnr_y": avg["psnr_y"], "eval/ssim_y": avg["ssim_y"],
           "eval/input_psnr_y": inp["psnr_y"], "eval/input_ssim_y": inp["ssim_y"],
           "eval/gain_psnr_y": avg["psnr_y"] - inp["psnr_y"]}
    ceiling = self.ceiling(model, vae) if self.with_ceiling else None
    if ceiling is not None:
      row |= {"eval/ceiling_psnr_y": ceiling["average_per_image"]["psnr_y"],
              "eval/ceiling_ssim_y": ceiling["average_per_image"]["ssim_y"]}
      res = res | {"ceiling": ceiling}
    if not self.write_main:
      return row
    self._write(step, row, res, preds)
    line = (f"held-out step {step}: PSNR-Y {avg['psnr_y']:.2f} dB vs input {inp['psnr_y']:.2f} "
            f"(gain {row['eval/gain_psnr_y']:+.2f} dB), SSIM-Y {avg['ssim_y']:.4f} vs "
            f"{inp['ssim_y']:.4f}; {len(self.images)} images" +
            (f"; reproduction ceiling {row['eval/ceiling_psnr_y']:.2f} dB / "
             f"{row['eval/ceiling_ssim_y']:.4f}" if ceiling is not None else ""))
    self.logger.write(line)
    return row

  def _write(self, step: int, row: dict[str, float], res: dict[str, Any], preds) -> None:
    """The row into the run's logs; the details and the grid beside them (process 0)."""
    self.logger.log_scalars(step, row)
    detail = {"step": int(step), "restored": res, "input": self.inputs}
    path = os.path.join(self.workdir, "eval", f"step_{step:07d}.json")
    os.makedirs(os.path.dirname(path), exist_ok=True)
    atomic.write_json(path, detail, indent=1)
    first: dict[str, int] = {}
    for i, im in enumerate(self.images):
      first.setdefault(im.category, i)
    cats = sorted(first)
    grids.save(os.path.join(self.workdir, "samples", f"heldout_step_{step:07d}.png"),
               [[self.images[first[c]].lq, preds[first[c]], self.images[first[c]].gt] for c in cats],
               ["LQ", "restored", "GT"], [_row_label(c, res, self.inputs) for c in cats])
    self._report(step, res, preds, path)

  def _report(self, step: int, res: dict[str, Any], preds, json_path: str) -> Path:
    """`eval/step_<N>/report.html` (evaluation.report) with its pictures: the restored images
    in `eval/step_<N>/<category>/<id>.png`, the LQ and GT as scored (after `eval.size`) in
    `eval/heldout/<category>/<id>.{lq,gt}.png`, written once per process."""
    root = Path(self.workdir) / "eval"
    lq = {im.name: root / "heldout" / f"{im.name}.lq.png" for im in self.images}
    gt = {im.name: root / "heldout" / f"{im.name}.gt.png" for im in self.images}
    if not getattr(self, "_pictures_written", False):
      for im in self.images:
        report.save_png(lq[im.name], im.lq)
        report.save_png(gt[im.name], im.gt)
      self._pictures_written = True
    step_dir = root / f"step_{step:07d}"
    restored = {im.name: step_dir / f"{im.name}.png" for im in self.images}
    for im, pred in zip(self.images, preds):
      report.save_png(restored[im.name], pred)
    rel = report.href(step_dir, json_path)
    avg, inp = res["average_per_image"], self.inputs["average_per_image"]
    intro = (f"<p>Held-out evaluation at step {int(step)}: {len(self.images)} images, the "
             f"<code>vbridge</code> protocol; restored PSNR-Y {avg['psnr_y']:.2f} dB vs input "
             f"{inp['psnr_y']:.2f} (gain {avg['psnr_y'] - inp['psnr_y']:+.2f} dB)")
    if "ceiling" in res:
      c = res["ceiling"]["average_per_image"]
      intro += f"; reproduction ceiling {c['psnr_y']:.2f} dB / {c['ssim_y']:.4f}"
    intro += f'. Scores: <a href="{rel}">{html.escape(Path(json_path).name)}</a>.</p>'
    restored_only = {k: v for k, v in res.items() if k != "ceiling"}
    return report.compare_report(
        step_dir / report.NAME, f"held-out evaluation, step {int(step)}", intro,
        report.Scored("LQ", self.inputs, f"{rel}#/input", lq),
        [report.Scored("restored", restored_only, f"{rel}#/restored", restored)], gt)


def _row_label(category: str, res: dict[str, Any], inputs: dict[str, Any]) -> str:
  r, i = res["per_category"][category]["psnr_y"], inputs["per_category"][category]["psnr_y"]
  return f"{category}: {i:.2f} -> {r:.2f} dB PSNR-Y"
