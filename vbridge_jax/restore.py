"""Restore degraded images with a converted V-Bridge model (and optionally the drift corrector).

  python -m vbridge_jax.restore --model DIR [--drift DIR] --prompts FILE.npz \
      --input PATH --output DIR [--frames 5] [--steps 50] [--guidance 6.0] \
      [--cfg-skip 0.15] [--seed 43] [--overwrite]

`--model` is a converter output holding `dit/` and `vae/` (convert/wan_to_jax.py); `--drift`
a second converted DiT (the corrector, sharing the VAE). `--prompts` is the `.npz` from
convert/encode_prompts.py. `--input` is an image or a folder tree; every image gets a PNG of
the same size at the same relative path under `--output` (existing ones are skipped unless
`--overwrite`). Per image, as the authors' test code does: images up to 2560x1440 are
reflect-padded (bottom/right) to a multiple of 32, larger ones resized to about 2560x1440
pixels (multiples of 32) and resized back at the end; the image in [-1, 1] is VAE-encoded
as frame 0, `--frames` frames are sampled (UniPC, shift 5, guidance with the last
`--cfg-skip` of the steps unguided), decoded, and the last frame is cropped back. With
`--drift` the corrector runs the same way from that output. In a folder, images under `GT/`
folders are skipped (the ground truth of a paired `<category>/{LQ,GT}/<id>` tree). Noise is
drawn per image from `--seed` and the image's relative path, so results do not depend on
batching. Images of the same working size are batched and sharded over all local devices.
A file that cannot be read is reported by name, the rest still run, and the exit status is
then 1.

`--config configs/restore.py[:tiny]` gives every option a value from a config file
(ml_collections; see its docstring); flags on the command line override it.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import zlib
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from vbridge_jax import cli_config
from vbridge_jax.data.files import IMAGE_EXTS, DataError, read_rgb
from vbridge_jax.sampler import Sampler, SamplerConfig

MAX_H, MAX_W, MULTIPLE = 1440, 2560, 32


@dataclasses.dataclass(frozen=True)
class Plan:
  """How one image is brought to the working size and back."""

  height: int  # original
  width: int
  work_h: int  # what the model sees
  work_w: int
  resize: bool  # True: resized (large image), False: reflect-padded


def plan_size(height: int, width: int) -> Plan:
  """The authors' rule: pad up to a multiple of 32, or resize (about 2560x1440 area) if larger."""
  if height > MAX_H or width > MAX_W:
    area = min(MAX_H * MAX_W, height * width)
    aspect = width / height
    new_h = (area / aspect) ** 0.5
    new_w = new_h * aspect
    return Plan(height, width, max(MULTIPLE, int(new_h // MULTIPLE) * MULTIPLE),
                max(MULTIPLE, int(new_w // MULTIPLE) * MULTIPLE), True)
  up = lambda n: -(-n // MULTIPLE) * MULTIPLE
  return Plan(height, width, up(height), up(width), False)


def to_work(img: np.ndarray, plan: Plan) -> np.ndarray:
  """uint8 (H, W, 3) -> float32 (work_h, work_w, 3) in [-1, 1]."""
  if plan.resize:
    from PIL import Image  # pylint: disable=import-outside-toplevel
    img = np.asarray(Image.fromarray(img).resize((plan.work_w, plan.work_h), Image.BICUBIC))
  else:
    img = np.pad(img, ((0, plan.work_h - plan.height), (0, plan.work_w - plan.width), (0, 0)),
                 mode="reflect" if min(img.shape[:2]) > 1 else "edge")
  return img.astype(np.float32) / 127.5 - 1.0


def from_work(x: np.ndarray, plan: Plan) -> np.ndarray:
  """float (work_h, work_w, 3) in [-1, 1] -> uint8 (H, W, 3), cropped or resized back."""
  img = np.clip(np.round((np.asarray(x, np.float32) + 1.0) * 127.5), 0, 255).astype(np.uint8)
  if plan.resize:
    from PIL import Image  # pylint: disable=import-outside-toplevel
    return np.asarray(Image.fromarray(img).resize((plan.width, plan.height), Image.BICUBIC))
  return img[:plan.height, :plan.width]


def load_prompts(path: Path, text_dim: int) -> tuple[np.ndarray, np.ndarray]:
  try:
    with np.load(path) as data:
      pos, neg = data["positive"].astype(np.float32), data["negative"].astype(np.float32)
  except (OSError, KeyError, ValueError) as e:
    raise ValueError(f"{path}: not a prompt file with 'positive' and 'negative' ({e})") from None
  for name, a in (("positive", pos), ("negative", neg)):
    if a.ndim != 2 or a.shape[1] != text_dim:
      raise ValueError(f"{path}: {name} has shape {a.shape}, the model needs (L, {text_dim})")
  return pos, neg


def find_inputs(path: Path) -> list[tuple[Path, Path]]:
  """(file, path relative to the input root) for an image or every image under a folder.

  In a folder, images under a `GT` folder are left out: in a paired tree
  (`<category>/{LQ,GT}/<id>`) they are the ground truth, not something to restore.
  """
  if path.is_file():
    return [(path, Path(path.name))]
  if not path.is_dir():
    raise FileNotFoundError(f"{path}: no such file or folder")
  return [(f, f.relative_to(path)) for f in sorted(path.rglob("*"))
          if f.is_file() and f.suffix.lower() in IMAGE_EXTS
          and "GT" not in f.relative_to(path).parts[:-1]]


def _replicate(model: Any, mesh: Mesh) -> Any:
  from flax import nnx  # pylint: disable=import-outside-toplevel
  graphdef, state = nnx.split(model)
  state = jax.device_put(state, NamedSharding(mesh, P()))
  return nnx.merge(graphdef, state)


class Restorer:
  """Base model (+ optional drift corrector): batches of same-size images in, uint8 images out."""

  def __init__(self, dit: Any, vae: Any, positive: np.ndarray, negative: np.ndarray,
               config: SamplerConfig, frames: int = 5, drift: Any = None, seed: int = 43):
    if frames < 1 or (frames - 1) % 4:
      raise ValueError(f"--frames {frames}: must be 1 + 4k")
    self.mesh = Mesh(np.array(jax.local_devices()), ("data",))
    self.vae = _replicate(vae, self.mesh)
    self.samplers = [Sampler(_replicate(dit, self.mesh), config)]
    if drift is not None:
      self.samplers.append(Sampler(_replicate(drift, self.mesh), config))
    self.positive, self.negative = positive[None], negative[None]
    self.frames, self.seed = frames, seed
    self.latent_frames = 1 + (frames - 1) // 4

  @property
  def batch_multiple(self) -> int:
    return self.mesh.devices.size

  def noise(self, names: list[str], shape: tuple[int, ...], stage: int) -> jax.Array:
    base = jax.random.key(self.seed)
    keys = [jax.random.fold_in(jax.random.fold_in(base, zlib.crc32(n.encode())), stage) for n in names]
    # Drawn flat and reshaped: the same numbers, and XLA:CPU compiles a rank-1 draw in about
    # a second where a rank-4 one takes ten (jax 0.10).
    size = int(np.prod(shape))
    return jnp.stack([jax.random.normal(k, (size,), jnp.float32).reshape(shape) for k in keys])

  def run_stage(self, sampler: Sampler, work: np.ndarray, names: list[str], stage: int) -> np.ndarray:
    """work (B, H, W, 3) in [-1, 1] -> last frames (B, H, W, 3) in [-1, 1]."""
    n = len(names)
    pad = -n % self.batch_multiple
    if pad:  # fill the batch up to the device count with copies of the last image
      work = np.concatenate([work, np.repeat(work[-1:], pad, axis=0)])
      names = names + [names[-1]] * pad
    shard = NamedSharding(self.mesh, P("data"))
    video = jax.device_put(jnp.asarray(work)[:, None], shard)
    first = self.vae.normalize(self.vae.encode(video))
    shape = (self.latent_frames,) + first.shape[2:]
    noise = jax.device_put(self.noise(names, shape, stage), shard)
    latent = sampler(noise, self.positive, self.negative, first)
    decoded = self.vae.decode(self.vae.denormalize(latent))
    return np.asarray(decoded[:, -1], np.float32)[:n]

  def restore(self, images: list[np.ndarray], names: list[str]) -> list[np.ndarray]:
    """Same-work-size uint8 images -> restored uint8 images of their own sizes."""
    plans = [plan_size(*im.shape[:2]) for im in images]
    for stage, sampler in enumerate(self.samplers):
      work = np.stack([to_work(im, p) for im, p in zip(images, plans)])
      out = self.run_stage(sampler, work, names, stage)
      images = [from_work(o, p) for o, p in zip(out, plans)]
    return images


def _write_png(img: np.ndarray, path: Path) -> None:
  from PIL import Image  # pylint: disable=import-outside-toplevel
  path.parent.mkdir(parents=True, exist_ok=True)
  tmp = path.with_name(f".{path.name}.tmp")
  Image.fromarray(img).save(tmp, format="PNG")
  os.replace(tmp, path)


def run(args: argparse.Namespace) -> int:
  from tqdm import tqdm  # pylint: disable=import-outside-toplevel
  from vbridge_jax.models.wan_dit import load_dit  # pylint: disable=import-outside-toplevel
  from vbridge_jax.models.wan_vae import load_vae  # pylint: disable=import-outside-toplevel

  inputs = find_inputs(args.input)
  out_root = args.output.resolve()
  in_files = {f.resolve() for f, _ in inputs}
  jobs = []
  for f, rel in inputs:
    dst = out_root / rel.with_suffix(".png")
    if dst.resolve() in in_files:
      raise ValueError(f"{dst}: output would overwrite an input; choose another --output")
    if dst.exists() and not args.overwrite:
      continue
    jobs.append((f, rel, dst))
  print(f"{len(inputs)} image(s) found, {len(inputs) - len(jobs)} already restored, {len(jobs)} to do")
  if not jobs:
    return 0
  overrides = {"dtype": args.dtype}
  dit = load_dit(args.model, **overrides)
  drift = load_dit(args.drift, **overrides) if args.drift else None
  vae = load_vae(args.model)
  positive, negative = load_prompts(args.prompts, dit.config.text_dim)
  config = SamplerConfig(solver=args.solver, steps=args.steps, shift=args.shift,
                         schedule=args.schedule, guidance=args.guidance, cfg_skip=args.cfg_skip,
                         patch_size=tuple(dit.config.patch_size))
  restorer = Restorer(dit, vae, positive, negative, config, args.frames, drift, args.seed)
  failed = []
  groups: dict[tuple[int, int], list] = {}
  bar = tqdm(total=len(jobs), desc="restore", unit="img")
  for f, rel, dst in jobs:
    try:
      img = read_rgb(f)
    except DataError as e:  # its message names the file
      failed.append(str(e))
      print(f"error: {e}", file=sys.stderr)
      bar.update(1)
      continue
    p = plan_size(*img.shape[:2])
    groups.setdefault((p.work_h, p.work_w), []).append((img, rel, dst))
  size = max(1, args.batch or restorer.batch_multiple)
  for items in groups.values():
    for i in range(0, len(items), size):
      chunk = items[i:i + size]
      outs = restorer.restore([c[0] for c in chunk], [c[1].as_posix() for c in chunk])
      for out, (_, _, dst) in zip(outs, chunk):
        _write_png(out, dst)
      bar.update(len(chunk))
  bar.close()
  if failed:
    print(f"error: {len(failed)} image(s) could not be read: {', '.join(failed)}", file=sys.stderr)
    return 1
  return 0


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--config", metavar="FILE[:VARIANT]",
                 help="settings from configs/restore.py (flags override; --config.KEY=VALUE too)")
  p.add_argument("--model", type=Path, help="converted model (dit/ and vae/); required")
  p.add_argument("--drift", type=Path, default=None, help="converted drift-corrector DiT")
  p.add_argument("--prompts", type=Path, help=".npz from convert/encode_prompts.py; required")
  p.add_argument("--input", type=Path, help="an image or a folder tree; required")
  p.add_argument("--output", type=Path, help="output folder (PNG, same tree); required")
  p.add_argument("--frames", type=int, default=5, help="video frames, 1 + 4k (default 5)")
  p.add_argument("--steps", type=int, default=50)
  p.add_argument("--guidance", type=float, default=6.0)
  p.add_argument("--cfg-skip", type=float, default=0.15, help="fraction of final steps unguided")
  p.add_argument("--shift", type=float, default=5.0)
  p.add_argument("--solver", default="unipc", choices=["unipc", "euler"])
  p.add_argument("--schedule", default="wan", choices=["wan", "diffusers"],
                 help="sigma schedule: the authors' Wan scheduler (default) or diffusers'")
  p.add_argument("--seed", type=int, default=43)
  p.add_argument("--batch", type=int, default=0, help="images per batch (default: local device count)")
  p.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float32"],
                 help="DiT compute dtype (default bfloat16, as the authors)")
  p.add_argument("--overwrite", action="store_true", help="restore images whose output exists")
  return cli_config.parse(p, sys.argv[1:] if argv is None else list(argv),
                          required=["model", "prompts", "input", "output"])


def main(argv: list[str] | None = None) -> int:
  args = parse_args(argv)
  try:
    return run(args)
  except (FileNotFoundError, ValueError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 1


if __name__ == "__main__":
  sys.exit(main())
