"""Encode the restoration prompts once with umT5 and store them for restoring and training.

  python convert/encode_prompts.py --text_encoder PATH --out FILE.npz \
      [--prompt TEXT] [--negative TEXT] [--tokenizer DIR] [--dtype float32|bfloat16]

PATH is a diffusers repository (`text_encoder/` + `tokenizer/`), its `text_encoder/` folder,
or the original Wan2.2 `models_t5_umt5-xxl-enc-bf16.pth` (or the folder holding it, with the
tokenizer in `google/umt5-xxl/`). FILE.npz gets float32 `positive (L_pos, text_dim)`,
`negative (L_neg, text_dim)` and `empty (L_empty, text_dim)` (the prompt "", which training
uses for `data.text_drop` of its samples, as the authors drop the caption for 10%; restore
ignores it): the hidden states of the real tokens only (the DiT pads the context to 512).
The file format and its reader: `vbridge_jax/data/prompts.py`. Defaults: the V-Bridge prompts. Needs torch and transformers; the float32
encoder takes about 23 GB of host memory at XXL size (bfloat16: half, as the authors ran it).

PATH (and DIR) may also be a Hugging Face repository id, `org/name[@revision][/path/in/repo]`
(`Wan-AI/Wan2.2-TI2V-5B`, `Wan-AI/Wan2.2-TI2V-5B-Diffusers`): only the encoder and its
tokenizer are fetched into the Hugging Face cache (never the DiT or the VAE), honouring
HF_HOME, HF_HUB_OFFLINE and HF_TOKEN (`vbridge_jax/checkpoints/hub.py`). `--out` is checked
before anything is fetched or encoded.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from vbridge_jax.checkpoints import hub, umt5
from vbridge_jax.data import prompts
from vbridge_jax.utils import cli
from vbridge_jax.utils.errors import CheckpointError, OutputError, VBridgeError


def out_path(path: Path) -> Path:
  """The file `prompts.save` writes for `--out path` (`.npz` added if missing)."""
  return path if path.suffix == ".npz" else path.with_suffix(path.suffix + ".npz")


def main(argv: list[str] | None = None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                   formatter_class=cli.ArgparseFormatter)
  parser.add_argument("--text_encoder", "--text-encoder", required=True,
                      help="diffusers repo / text_encoder folder, or the Wan umT5 .pth; or a "
                           "Hugging Face id org/name[@revision][/path]")
  parser.add_argument("--out", required=True, type=Path, help="output .npz file")
  parser.add_argument("--prompt", default=None, help="positive prompt (default: V-Bridge's)")
  parser.add_argument("--negative", default=None, help="negative prompt (default: V-Bridge's)")
  parser.add_argument("--tokenizer", default=None,
                      help="tokenizer folder or Hugging Face id (default: tokenizer/ or "
                           "google/umt5-xxl/ beside the weights)")
  parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"],
                      help="encoder compute dtype (default float32)")
  args = parser.parse_args(argv)

  positive = umt5.VBRIDGE_POSITIVE if args.prompt is None else args.prompt
  negative = umt5.VBRIDGE_NEGATIVE if args.negative is None else args.negative
  try:
    out = hub.check_output(out_path(args.out))  # before an hour of fetching and encoding
    # With --tokenizer given, the encoder's repository need not supply one.
    encoder = hub.resolve(args.text_encoder, hub.prompts_needs(args.tokenizer is not None))
    tok_arg = None if args.tokenizer is None else hub.resolve(args.tokenizer, hub.TOKENIZER)
    layout, weights, tok_dir = umt5.locate(encoder, tok_arg)
    try:
      from transformers import AutoTokenizer
      tokenizer = AutoTokenizer.from_pretrained(tok_dir)
    except (OSError, ValueError) as e:
      raise CheckpointError(f"{tok_dir}: cannot load the tokenizer: {str(e).splitlines()[0]}") from None
    print(f"text encoder: {layout} layout at {weights}; tokenizer {tok_dir}")
    if layout == "wan":
      model = umt5.load_wan_encoder(weights, args.dtype)
    else:
      model = umt5.load_diffusers_encoder(weights, args.dtype)
    pos, neg, empty = umt5.encode(model, tokenizer, [positive, negative, ""])
    try:
      out = prompts.save(out, positive=pos, negative=neg, empty=empty)
    except OSError as e:  # a full disk, a folder that went read-only meanwhile
      raise OutputError(f"--out {out}: writing failed ({e.strerror or e})") from None
  except VBridgeError as e:
    print(f"error: {e}", file=sys.stderr)
    return 1
  print(f"wrote {out}: positive {pos.shape}, negative {neg.shape}, empty {empty.shape}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
