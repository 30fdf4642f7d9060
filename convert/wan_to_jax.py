"""Convert Wan2.2 PyTorch checkpoints into vbridge_jax components.

  python convert/wan_to_jax.py --src PATH --out DIR [--dtype bfloat16|float32] [--frames N]

PATH may be a DiT folder in the original Wan2.2 layout (config.json + *.safetensors, also
the layout of the released V-Bridge checkpoint), a diffusers `transformer/` folder, the
VAE, or a repository root holding several of these. Every component found is written to
DIR/dit/ and DIR/vae/ (config.json + orbax params); nothing is written unless all succeed.
DIR/model.json records the frame count restore samples with: `--frames`, else the source's
own model.json (an export of a trained run), else 5 (the authors' eval.sh, for the released
checkpoint).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from vbridge_jax.checkpoints import convert_path
from vbridge_jax.utils import cli
from vbridge_jax.utils.errors import VBridgeError


def main(argv: list[str] | None = None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                   formatter_class=cli.ArgparseFormatter)
  parser.add_argument("--src", required=True, type=Path, help="checkpoint file, folder or repository root")
  parser.add_argument("--out", required=True, type=Path, help="output folder (DIR/dit, DIR/vae)")
  parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"],
                      help="stored parameter dtype (default float32)")
  parser.add_argument("--frames", type=int, default=None,
                      help="clip length the DiT was trained with, recorded in DIR/model.json "
                           "(default: the source's model.json, else 5)")
  args = parser.parse_args(argv)
  try:
    convert_path(args.src, args.out, args.dtype, frames=args.frames)
  except VBridgeError as e:
    print(f"error: {e}", file=sys.stderr)
    return 1
  return 0


if __name__ == "__main__":
  sys.exit(main())
