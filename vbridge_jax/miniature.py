"""The paper in miniature: the whole V-Bridge recipe at tiny scale, on the demo data, on a CPU.

  python -m vbridge_jax.miniature --workdir DIR [--base_steps N] [--drift_steps N]
      [--drift_init prior|base] [--restore_steps N] [--categories A,B,...]
      [--per_category N] [--heldout_per_category N] [--drift_per_category N]

It tests the paper's thesis, that a pretrained video model is what lets a few pairs teach
restoration, by training the same DiT on the same few-shot pairs for the same steps with
and without the video prior. Phases, each with its outputs in DIR:

1. `demo_data/{train,heldout}/<category>/{LQ,GT}/<id>.png`: the demo training split and a
   held-out split from photos it never uses (`_demo_splits`); `demo_data/drift/train/`:
   the corrector's own pairs (`--drift_per_category`, 50 as the paper's per-category
   count), cut from the training photos with another seed, so disjoint from the base's
   pairs (the base's outputs on pairs it memorised would carry almost no drift);
2. the video prior (`configs/prior.py:tiny`, `training/prior.py`: built once and cached
   under `$VBRIDGE_CACHE`, shared with the README's main command);
3. `scratch/` + `scratch_model/`: `configs/curriculum.py:tiny_scratch`, the DiT fine-tuned
   from random weights; `base/` + `base_model/`: `configs/curriculum.py:tiny`, the same
   fine-tune from the prior;
4. `restored/drift_base/`: the corrector's pairs restored by the base model, then `drift/` +
   `drift_model/`: the drift corrector (`configs/drift.py:tiny` with the base's sampler
   shift and learning rate) on (base output -> GT) clips, initialised from the prior ("both
   models adopt Wan2.2-TI2V-5B as the backbone") or, with `--drift_init base`, from the base;
5. `restored/heldout_{prior,scratch,base,drift}/`: the held-out split restored by (a) the
   prior alone, with no fine-tune (the off-the-shelf video model of the paper's Fig. 4),
   (b) the fine-tune from scratch, (c) the fine-tune from the prior, (d) (c) + corrector;
6. `scores/<row>/` (`vbridge_jax.evaluate`, the `vbridge` protocol: PSNR/SSIM on luma Y),
   then `table.md` (per category: input and the four rows; averages per image and per
   category), also printed, `picture.png` (one row per category: LQ | (a) | (b) | (c) |
   (d) | GT) and `report.html` (`report_html`: the table beside Table 1 and every held-out
   image in those columns with its scores, worst first).

Rerunning resumes: a finished phase is skipped (training resumes from its last checkpoint,
restore skips the images already written); delete a phase's folder to redo it. The
arguments are recorded in `DIR/miniature.json` on the first run, and a rerun with other
arguments is refused naming them (the phases it would skip were made with the old ones).
The restores use the sampler settings of the base run's held-out evaluation (`config.eval`).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import jax
import numpy as np
from absl import logging as absl_logging

from vbridge_jax.configs import curriculum
from vbridge_jax.configs import drift as drift_configs
from vbridge_jax.configs import restore as restore_configs
from vbridge_jax.data import fewshot, prompts
from vbridge_jax.data.degrade import CATEGORIES
from vbridge_jax.data.files import read_rgb
from vbridge_jax.evaluation import grids, protocols, report
from vbridge_jax.inference import folder, jobs
from vbridge_jax.training import checkpointing, export, setup, trainer
from vbridge_jax.training import prior as prior_lib
from vbridge_jax.utils import atomic, cli
from vbridge_jax.utils.errors import ConfigError, VBridgeError

DEFAULT_CATEGORIES = None  # all 21 demo categories
# The table's columns: (key, label); the keys name the restored/ and scores/ folders.
COLUMNS = (("input", "input"), ("prior", "(a) prior alone"), ("scratch", "(b) from scratch"),
           ("base", "(c) from the prior"), ("drift", "(d) (c) + corrector"))
DRIFT_STEPS = 300  # corrector steps (configs/drift.py:tiny has 50, for the tests)
DRIFT_PER_CATEGORY = 50  # the corrector's own pairs per category


# ------------------------------------------------------------------------------- data


def _demo_splits(workdir: Path, *, per_category: int = 4, heldout_per_category: int = 2,
                 categories: Sequence[str] | None = None, size: int | None = None
                 ) -> tuple[Path, Path]:
  """The demo training and held-out splits, `DIR/demo_data/{train,heldout}/<category>/{LQ,GT}/`.

  Built by `vbridge_jax.data.fewshot.build(..., heldout=N)`, as the trainer's demo set: the
  held-out pairs come from photos the training split never sees.
  """
  root = fewshot.build_once(workdir / "demo_data", per_category=per_category, heldout=heldout_per_category,
                     seed=0, categories=tuple(categories or CATEGORIES), size=size)
  return root / "train", root / "heldout"


def _drift_split(workdir: Path, *, per_category: int, categories: Sequence[str] | None,
                 size: int | None) -> Path:
  """The corrector's pairs, `DIR/demo_data/drift/train/`: the training photos (fewshot's
  train side) cut and degraded with another seed, so no pair is one of the base's."""
  root = fewshot.build_once(workdir / "demo_data" / "drift", per_category=per_category, heldout=1,
                     seed=1, categories=tuple(categories or CATEGORIES), size=size)
  return root / "train"


def _write_prompts(path: Path, dit_config) -> Path:
  """Zero prompt embeddings: the tiny configs train with an all-zero context."""
  if not path.is_file():
    zeros = np.zeros((dit_config.text_len, dit_config.text_dim), np.float32)
    prompts.save(path, positive=zeros, negative=zeros)
  return path


# ------------------------------------------------------------------------------- phases


def _devices_for(batch: int) -> int:
  """The largest device count (of this host's) that divides the global batch."""
  n = jax.device_count()
  while batch % n:
    n -= 1
  return n


def _tiny_config(module, source: Path, progress: bool, steps: int | None, stages: str | None,
                 variant: str = "tiny"):
  """A config file's tiny `variant` (`configs/curriculum.py` or `configs/drift.py`) on
  the `source` split, its length and stages replaced when given."""
  config = module.get_config(variant)
  config.data.source = str(source)
  config.progress = progress
  if steps:
    config.total_steps = steps
  if stages:
    config.stages = stages
  return config


def _train(config, workdir: Path, log) -> bool:
  """Trains (or resumes) a run; False when it had already finished."""
  if checkpointing.finished(str(workdir), int(config.total_steps)) is not None:
    return False
  config.num_devices = _devices_for(int(config.data.batch_size))
  trainer.train_and_evaluate(config, str(workdir))
  return True


def _export(run: Path, out: Path) -> bool:
  if (out / "model.json").is_file():
    return False
  export.export_run(run, out)
  return True


def _restore(model: Path, prompts: Path, split: Path, out: Path, sampler, *, drift: Path | None,
             steps: int | None) -> None:
  """The restore command's folder loop (`inference.folder.run`) over a split (already
  restored images are skipped), with the sampler settings of the base run's held-out
  evaluation (`config.eval`), so the table scores what the training log reported.

  No `frames`: restore takes each model's clip length from its `model.json` (the tiny
  configs' 5 frames are also restore's default).
  """
  config = restore_configs.get_config()
  config.update(model=str(model), prompts=str(prompts), input=str(split), output=str(out),
                drift=str(drift) if drift is not None else "", steps=int(steps or sampler.steps),
                solver=str(sampler.solver), shift=float(sampler.shift), schedule=str(sampler.schedule),
                guidance=float(sampler.guidance), cfg_skip=float(sampler.cfg_skip),
                dtype="float32", param_dtype="float32")
  if folder.run(config) != 0:
    raise RuntimeError(f"restoring {split} into {out} failed (see above)")


def _done(split: Path, out: Path) -> bool:
  """Every LQ image of the split has its restored PNG."""
  found, _ = jobs.find_inputs(split)
  return out.is_dir() and all(jobs.output_path(out, rel).is_file() for _, rel in found)


# ------------------------------------------------------------------------------- report


def table(scores: dict[str, dict[str, Any]]) -> str:
  """Markdown shaped like the paper's Table 1: PSNR-Y / SSIM-Y per category and column."""
  cats = list(scores["input"]["per_category"])
  cols = [(k, label) for k, label in COLUMNS if k in scores]
  head = ["category", "n"] + [label for _, label in cols]
  lines = ["PSNR-Y (dB) / SSIM-Y on the held-out split (`vbridge` protocol).", "",
           "| " + " | ".join(head) + " |", "|---|---:|" + "---:|" * len(cols)]

  def cell(vals: dict[str, float] | None) -> str:
    return f"{vals['psnr_y']:.2f} / {vals['ssim_y']:.4f}" if vals else "-"

  for cat in cats:
    row = [cat, str(scores["input"]["per_category"][cat]["count"])]
    row += [cell(scores[k]["per_category"].get(cat)) for k, _ in cols]
    lines.append("| " + " | ".join(row) + " |")
  n = str(len(scores["input"]["per_image"]))
  for label, field in (("average per image", "average_per_image"),
                       ("average per category", "average_per_category")):
    lines.append("| " + " | ".join([f"**{label}**", n] + [cell(scores[k][field]) for k, _ in cols])
                 + " |")
  return "\n".join(lines) + "\n"


def picture(path: Path, heldout: Path, restored: dict[str, Path]) -> Path:
  """One row per category (its first held-out image): LQ | each restored row | GT."""

  keys = [k for k, _ in COLUMNS if k in restored]
  names = ["LQ"] + [label for k, label in COLUMNS if k in restored] + ["GT"]
  rows = []
  for cat in sorted(p.name for p in heldout.iterdir() if p.is_dir()):
    lq = sorted((heldout / cat / "LQ").iterdir())
    if not lq:
      continue
    stem = lq[0].stem
    gt = next(iter(sorted((heldout / cat / "GT").glob(f"{stem}.*"))))
    cells = [read_rgb(lq[0])] + [read_rgb(restored[k] / cat / "LQ" / f"{stem}.png")
                                 for k in keys] + [read_rgb(gt)]
    rows.append((cat, cells))
  grids.save(path, [cells for _, cells in rows], names, [cat for cat, _ in rows])
  return path


def report_html(workdir: Path, scores: dict[str, dict[str, Any]]) -> Path:
  """`WORKDIR/report.html` (`evaluation.report`): the table beside Table 1 and every held-out
  image LQ | (a) | (b) | (c) | (d) | GT with its scores and gain over the input, worst
  first; its numbers point into `scores/<row>/metrics.json`, its pictures are the held-out
  split's and the restored PNGs."""

  def pictures(res: dict[str, Any]) -> dict[str, str]:
    return {report.full_name(r): r["pred"] for r in res["per_image"]}

  inputs = scores["input"]
  cols = [report.Scored(label, scores[k], report.pointer(f"scores/{k}/metrics.json"), pictures(scores[k]))
          for k, label in COLUMNS if k != "input" and k in scores]
  n = len(inputs["per_image"])
  intro = (f"<p>The paper in miniature: {n} held-out images restored by each row, the "
           "<code>vbridge</code> protocol (PSNR-Y / SSIM-Y); the table is "
           '<a href="table.md">table.md</a>.</p>')
  return report.compare_report(
      Path(workdir) / report.NAME, "the paper in miniature", intro,
      report.Scored("LQ", inputs, report.pointer("scores/input/metrics.json"), pictures(inputs)),
      cols, {report.full_name(r): r["gt"] for r in inputs["per_image"]})


# ------------------------------------------------------------------------------- the recipe


INPUTS = "miniature.json"  # the arguments that the workdir's phases were run with


def _check_inputs(wd: Path, inputs: dict[str, Any]) -> None:
  """Records the run's arguments in `WORKDIR/miniature.json` on the first run, and refuses a
  rerun with others: every phase's outputs (splits, runs, models, restores, scores) follow
  from them, and a finished phase is skipped, so mixing two sets of arguments would report
  one set's table under the other's name."""
  file = wd / INPUTS
  if file.is_file():
    try:
      recorded = json.loads(file.read_text())["inputs"]
    except (OSError, ValueError, KeyError, TypeError) as e:
      raise ConfigError(f"{file}: unreadable ({e}); delete it only with the phases it records"
                        ) from None
    if recorded != inputs:
      raise ConfigError(f"{file}: this workdir's phases were run with other arguments: "
                        f"{jobs.differences(recorded, inputs)}; "
                        f"rerun with those, or choose another --workdir")
    return
  wd.mkdir(parents=True, exist_ok=True)
  atomic.write_json(file, {"inputs": inputs})


def run(workdir: str | os.PathLike, *, base_steps: int | None = None, base_stages: str | None = None,
        drift_steps: int | None = None, drift_stage: str | None = None,
        restore_steps: int | None = None, categories: Sequence[str] | None = None,
        per_category: int | None = None, heldout_per_category: int | None = None,
        drift_per_category: int | None = None, drift_init: str = "prior",
        size: int | None = None, progress: bool = True, prior_variant: str = "tiny",
        log: Callable[[str], None] = print) -> dict[str, Any]:
  """Runs (or resumes) the recipe in `workdir`; returns `{"table", "phases"}`.

  `phases` maps each phase to "ran" or "skipped". The defaults are the tiny configs'
  (`configs/curriculum.py:tiny` and `:tiny_scratch`, `configs/drift.py:tiny` with the base's
  flow shift and learning rate, DRIFT_STEPS steps): the demo split sizes
  (`data.demo_per_category`, `data.demo_heldout`) and image size (`eval.size`) as the
  README's main command evaluates; the arguments shrink them (the smoke test) or grow them.
  `drift_init`: the corrector starts from the `prior` (the paper's shared backbone) or the
  fine-tuned `base`. `prior_variant`: the variant of configs/prior.py (the tests: `test`).
  """
  if drift_init not in ("prior", "base"):
    raise ConfigError(f"drift_init={drift_init!r} is not 'prior' or 'base'")
  counts = dict(base_steps=base_steps, drift_steps=drift_steps, restore_steps=restore_steps,
                per_category=per_category, heldout_per_category=heldout_per_category,
                drift_per_category=drift_per_category, size=size)
  for k, v in counts.items():
    if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 1):
      raise ConfigError(f"--{k}={v!r} must be a whole number >= 1")
  inputs = dict(counts, base_stages=base_stages, drift_stage=drift_stage, drift_init=drift_init,
                categories=list(categories) if categories else None, prior_variant=prior_variant)

  wd = Path(workdir).resolve()
  _check_inputs(wd, inputs)
  phases: dict[str, str] = {}
  t0 = time.time()

  def phase(name: str, ran: bool) -> None:
    phases[name] = "ran" if ran else "skipped"
    log(f"[miniature] {name}: {phases[name]} ({time.time() - t0:.0f} s so far)")

  built = prior_lib.is_built(prior_variant)
  prior_model = trainer.ensure_prior(prior_variant, progress=progress, log=log)
  phase("0 video prior", not built)
  base = _tiny_config(curriculum, Path(), progress, base_steps, base_stages)
  base.init_from = str(prior_model)
  # The same fine-tune without the prior: random weights, the from-scratch learning rate.
  scratch = _tiny_config(curriculum, Path(), progress, base_steps, base_stages, "tiny_scratch")
  size = size or int(base.eval.size) or None
  train, heldout = _demo_splits(
      wd, per_category=per_category or int(base.data.demo_per_category),
      heldout_per_category=heldout_per_category or int(base.data.demo_heldout),
      categories=categories, size=size)
  drift_pairs = _drift_split(wd, per_category=drift_per_category or DRIFT_PER_CATEGORY,
                             categories=categories, size=size)
  for c in (base, scratch):
    c.data.source = str(train)
    c.eval.source = str(heldout)  # the training log's held-out lines score the table's split
  phase("1 train from scratch", _train(scratch, wd / "scratch", log))
  phase("1 export from scratch", _export(wd / "scratch", wd / "scratch_model"))
  phase("2 train from the prior", _train(base, wd / "base", log))
  phase("2 export from the prior", _export(wd / "base", wd / "base_model"))
  prompts = _write_prompts(wd / "prompts.npz", setup.dit_config(base))
  restored = {k: wd / "restored" / f"heldout_{k}" for k, _ in COLUMNS if k != "input"}
  drift_base = wd / "restored" / "drift_base"
  todo = not _done(drift_pairs, drift_base)
  if todo:
    _restore(wd / "base_model", prompts, drift_pairs, drift_base, base.eval, drift=None,
             steps=restore_steps)
  phase("3 restore the corrector's pairs (base)", todo)

  corr = _tiny_config(drift_configs, drift_pairs, progress, drift_steps or DRIFT_STEPS, drift_stage)
  # The corrector samples with the base's settings (`config.eval`): the same flow shift.
  corr.flow.shift, corr.optim.lr = base.flow.shift, base.optim.lr
  corr.data.drift_outputs = str(drift_base)
  corr.init_from = str(prior_model if drift_init == "prior" else wd / "base_model")
  corr.prompts = str(prompts)
  phase("3 train drift corrector", _train(corr, wd / "drift", log))
  phase("3 export drift corrector", _export(wd / "drift", wd / "drift_model"))

  models = {"prior": (prior_model, None), "scratch": (wd / "scratch_model", None),
            "base": (wd / "base_model", None), "drift": (wd / "base_model", wd / "drift_model")}
  for key, (model, drift) in models.items():
    todo = not _done(heldout, restored[key])
    if todo:
      _restore(model, prompts, heldout, restored[key], base.eval, drift=drift, steps=restore_steps)
    phase(f"4 restore held-out ({dict(COLUMNS)[key]})", todo)

  scores = {}
  for key, pred in [("input", heldout)] + list(restored.items()):
    scores[key] = protocols.evaluate(pred, heldout, "vbridge", progress=False)
    protocols.write(scores[key], wd / "scores" / key)
  text = table(scores)
  (wd / "table.md").write_text(text)
  picture(wd / "picture.png", heldout, restored)
  report_html(wd, scores)
  phase("5 evaluate", True)
  log(text)
  log(f"wrote {wd / 'table.md'}, {wd / 'picture.png'} and {wd / report.NAME} in "
      f"{time.time() - t0:.0f} s")
  return {"table": text, "phases": phases}


def main(argv: list[str] | None = None) -> int:
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                              formatter_class=cli.ArgparseFormatter)
  p.add_argument("--workdir", required=True, type=Path, help="folder for every phase's outputs")
  p.add_argument("--base_steps", "--base-steps", type=int, default=None,
                 help="base training steps (default: configs/curriculum.py:tiny's total_steps)")
  p.add_argument("--drift_steps", "--drift-steps", type=int, default=None,
                 help=f"corrector steps (default {DRIFT_STEPS})")
  p.add_argument("--restore_steps", "--restore-steps", type=int, default=None,
                 help="sampler steps when restoring (default: the base config's eval.steps)")
  p.add_argument("--categories", default="", help="comma-separated subset (default: all 21)")
  p.add_argument("--per_category", "--per-category", type=int, default=None,
                 help="training pairs per category (default: the tiny config's data.demo_per_category)")
  p.add_argument("--heldout_per_category", "--heldout-per-category", type=int, default=None,
                 help="held-out pairs per category (default: its data.demo_heldout)")
  p.add_argument("--drift_per_category", type=int, default=None,
                 help=f"the corrector's own pairs per category (default {DRIFT_PER_CATEGORY})")
  p.add_argument("--drift_init", choices=("prior", "base"), default="prior",
                 help="the corrector's initial weights: the video prior (the paper's shared "
                 "backbone) or the fine-tuned base")
  args = p.parse_args(argv)
  os.environ.setdefault("JAX_PLATFORMS", "cpu")
  absl_logging.set_verbosity(absl_logging.WARNING)  # orbax is chatty at INFO
  cats = [c for c in args.categories.split(",") if c] or None
  try:
    run(args.workdir, base_steps=args.base_steps, drift_steps=args.drift_steps,
        restore_steps=args.restore_steps, categories=cats, per_category=args.per_category,
        heldout_per_category=args.heldout_per_category,
        drift_per_category=args.drift_per_category, drift_init=args.drift_init)
  except (VBridgeError, RuntimeError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 1
  return 0


if __name__ == "__main__":
  sys.exit(main())
