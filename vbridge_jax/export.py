"""Export a training run as a model folder: for restore, for `init_from`, or for PyTorch.

  python -m vbridge_jax.export --workdir RUN --out MODEL [--step N]
      [--format jax|wan|diffusers] [--dtype bfloat16|float32] [--overwrite]

Reads `RUN/config.json` and the model half of the orbax checkpoint at `--step` (default:
the latest) of `RUN/checkpoints`; the optimizer state is never read. The DiT is rebuilt
abstractly from the run's config (`training.setup.dit_config`: the preset, or the
`init_from` folder's architecture), LoRA adapters are folded into the base weights
(`models.lora.merge_lora`), and the result is written as:

- `jax` (default): `MODEL/dit/` exactly as `convert/wan_to_jax.py` writes it, `MODEL/vae/`
  (the codec the run trained with: a copy of the `init_from` folder's `vae/`; for a random
  tiny Wan VAE, its parameters, redrawn from the run's seed as the trainer drew them; for
  the pixel codec, its `config.json` alone) and `MODEL/model.json` (the run's
  `data.frames` and the codec name; for a run with a held-out evaluation, `config.eval`,
  also the settings it restored with: `_evaluated_with`). `python -m vbridge_jax.restore
  --model MODEL` and `--config.init_from=MODEL` (a further fine-tune, e.g. the drift
  corrector) read it.
- `wan`: the original Wan2.2 DiT layout, `MODEL/config.json` + safetensors (sharded with
  `diffusion_pytorch_model.safetensors.index.json` above `--max_shard_gb`): what the
  authors' PyTorch code (and the released V-Bridge checkpoint) uses.
- `diffusers`: `MODEL/transformer/` (config.json + safetensors), for
  `diffusers.WanTransformer3DModel.from_pretrained`.

Both PyTorch layouts also get `MODEL/model.json`, which `convert/wan_to_jax.py` carries over
when converting them back. `--dtype` defaults to the run's `model.param_dtype`.

Everything is written into a staging folder beside `MODEL` and moved into place at the end,
so a failed export leaves nothing behind, and `MODEL` gets the user's umask; `MODEL` may not
be inside the run, nor hold or sit inside the run or the `init_from` folder; an existing
`MODEL` is replaced only with `--overwrite`. One export per `MODEL` at a time (a lock file
`.MODEL.lock` beside it; a second is refused); a killed export's staging folders are removed
by the next. Without `--step`, an unreadable latest checkpoint is passed over for the newest
intact one, with a warning. Errors (no `config.json` or one that is not a run's, no
checkpoint at `--step`, a bad format, a `--max_shard_gb` that is not a positive number, an
unwritable place or a full disk) are one line on stderr with exit status 1.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
from pathlib import Path

from absl import logging as absl_logging

from vbridge_jax.training.export import FORMATS, export_run
from vbridge_jax.utils import cli
from vbridge_jax.utils.errors import ExportError, VBridgeError


def main(argv: list[str] | None = None) -> int:
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                              formatter_class=cli.ArgparseFormatter)
  p.add_argument("--workdir", required=True, type=Path, help="the training run's folder")
  p.add_argument("--out", required=True, type=Path, help="the model folder to write")
  p.add_argument("--step", type=int, default=None, help="checkpoint step (default: the latest)")
  p.add_argument("--format", default="jax", help=f"one of {', '.join(FORMATS)} (default jax)")
  p.add_argument("--dtype", default=None, help="float32 | bfloat16 (default: the run's param_dtype)")
  p.add_argument("--max_shard_gb", "--max-shard-gb", type=float, default=5.0,
                 help="wan/diffusers: shard the safetensors above this size (default 5)")
  p.add_argument("--overwrite", action="store_true", help="replace an existing --out")
  args = p.parse_args(argv)
  os.environ.setdefault("JAX_PLATFORMS", "cpu")
  # orbax warns that a state item has no step-level metadata file: true, and harmless here.
  absl_logging.set_verbosity(absl_logging.ERROR)
  try:
    if not math.isfinite(args.max_shard_gb) or args.max_shard_gb * (1 << 30) < 1:
      raise ExportError(f"--max_shard_gb {args.max_shard_gb}: must be a positive finite number of GB")
    export_run(args.workdir, args.out, step=args.step, fmt=args.format, dtype=args.dtype,
               overwrite=args.overwrite, max_shard_bytes=int(args.max_shard_gb * (1 << 30)))
  except VBridgeError as e:
    print(f"error: {e}", file=sys.stderr)
    return 1
  return 0


if __name__ == "__main__":
  sys.exit(main())
