"""Convert Wan2.2 PyTorch checkpoints into vbridge_jax components.

  python convert/wan_to_jax.py --src PATH --out DIR [--dtype bfloat16|float32] [--frames N]

PATH may be a DiT folder in the original Wan2.2 layout (config.json + *.safetensors, also
the layout of the released V-Bridge checkpoint), a diffusers `transformer/` folder, the
VAE, or a repository root holding several of these. Every component found is written to
DIR/dit/ and DIR/vae/ (config.json + orbax params); nothing is written unless all succeed.
DIR/model.json records the frame count restore samples with: `--frames`, else the source's
own model.json (an export of a trained run), else 5 (the authors' eval.sh, for the released
checkpoint).

PATH may also be a Hugging Face repository id, `org/name[@revision][/path/in/repo]`
(`Wan-AI/Wan2.2-TI2V-5B`, `desimfj/V-Bridge`, `Wan-AI/Wan2.2-TI2V-5B/Wan2.2_VAE.pth` for the
VAE alone): only the DiT and VAE files are fetched into the Hugging Face cache (never the
text encoder), honouring HF_HOME, HF_HUB_OFFLINE and HF_TOKEN (`vbridge_jax/checkpoints/hub.py`).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from vbridge_jax.checkpoints import convert_path, hub
from vbridge_jax.utils import cli
from vbridge_jax.utils.errors import VBridgeError


def main(argv: list[str] | None = None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                   formatter_class=cli.ArgparseFormatter)
  parser.add_argument("--src", required=True,
                      help="checkpoint file, folder or repository root, or a Hugging Face id "
                           "org/name[@revision][/path]")
  parser.add_argument("--out", required=True, type=Path, help="output folder (DIR/dit, DIR/vae)")
  parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"],
                      help="stored parameter dtype (default float32)")
  parser.add_argument("--frames", type=int, default=None,
                      help="clip length the DiT was trained with, recorded in DIR/model.json "
                           "(default: the source's model.json, else 5)")
  args = parser.parse_args(argv)
  try:
    if hub.parse(args.src) is not None:  # a download first: refuse a bad --out before it
      hub.check_output(args.out, folder=True)
    src = hub.resolve(args.src, hub.CONVERT)
    convert_path(src, args.out, args.dtype, frames=args.frames)
  except VBridgeError as e:
    print(f"error: {e}", file=sys.stderr)
    return 1
  return 0


if __name__ == "__main__":
  sys.exit(main())
