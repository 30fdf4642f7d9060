"""Write a tiny random Wan2.2-TI2V repository in the diffusers layout, for trying the tools.

  python convert/tiny_repo.py --out DIR [--seed 0]

DIR gets `transformer/` (a 2-layer `WanTransformer3DModel`, text_dim 32), `vae/` (a narrow
`AutoencoderKLWan` with the Wan2.2 structure: 16x spatial, 4x temporal, 8 latent channels),
`text_encoder/` (a 2-layer `UMT5EncoderModel`, d_model 32) and `tokenizer/` (a small Unigram
tokenizer trained on the V-Bridge prompts). Random weights: the outputs are noise, but every
step of convert -> encode prompts -> restore -> evaluate runs as on the released weights, in
a minute on a CPU. Needs torch, diffusers and transformers (the `test` extra).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from diffusers import AutoencoderKLWan, WanTransformer3DModel
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

from vbridge_jax.checkpoints import umt5
from vbridge_jax.utils import cli

TEXT_DIM = 32


def tiny_dit(seed: int = 0) -> Any:
  """A 2-layer diffusers `WanTransformer3DModel` matching the tiny VAE (8 latent channels)."""
  import torch
  torch.manual_seed(seed)
  return WanTransformer3DModel(patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=32,
                               in_channels=8, out_channels=8, text_dim=TEXT_DIM, freq_dim=32,
                               ffn_dim=128, num_layers=2, rope_max_seq_len=1024)


def tiny_vae(seed: int = 0) -> Any:
  """A narrow diffusers `AutoencoderKLWan` with the Wan2.2 structure (16x16 spatial, 4x temporal)."""
  import torch
  torch.manual_seed(seed)
  return AutoencoderKLWan(base_dim=8, decoder_base_dim=12, z_dim=8, dim_mult=[1, 2, 4, 4],
                          num_res_blocks=1, temperal_downsample=[False, True, True],
                          is_residual=True, in_channels=12, out_channels=12, patch_size=2,
                          scale_factor_temporal=4, scale_factor_spatial=16,
                          latents_mean=[0.1] * 8, latents_std=[1.5] * 8)


def tiny_tokenizer(folder: Path, extra: list[str] | None = None) -> Any:
  """A Unigram tokenizer trained offline on the V-Bridge prompts (and `extra` sentences),
  with T5's trailing </s>."""
  from transformers import PreTrainedTokenizerFast

  tok = Tokenizer(models.Unigram())
  tok.pre_tokenizer = pre_tokenizers.Metaspace()
  tok.decoder = decoders.Metaspace()
  trainer = trainers.UnigramTrainer(vocab_size=150, special_tokens=["<pad>", "</s>", "<unk>"],
                                    unk_token="<unk>")
  tok.train_from_iterator([umt5.VBRIDGE_POSITIVE, umt5.VBRIDGE_NEGATIVE, *(extra or [])] * 4, trainer)
  tok.post_processor = processors.TemplateProcessing(
      single="$A </s>", special_tokens=[("</s>", tok.token_to_id("</s>"))])
  fast = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="</s>",
                                 unk_token="<unk>")
  fast.save_pretrained(folder)
  return fast


def write(out: Path, seed: int = 0) -> None:
  """Writes transformer/, vae/, text_encoder/ and tokenizer/ under `out`."""
  import torch
  from transformers import UMT5Config, UMT5EncoderModel

  tiny_dit(seed).save_pretrained(out / "transformer")
  tiny_vae(seed).save_pretrained(out / "vae")
  tok = tiny_tokenizer(out / "tokenizer")
  torch.manual_seed(seed)
  cfg = UMT5Config(vocab_size=len(tok), d_model=TEXT_DIM, d_kv=8, d_ff=64, num_layers=2,
                   num_heads=4, relative_attention_num_buckets=8,
                   relative_attention_max_distance=128, feed_forward_proj="gated-gelu",
                   dropout_rate=0.0, is_encoder_decoder=False)
  UMT5EncoderModel(cfg).eval().save_pretrained(out / "text_encoder")


def main(argv: list[str] | None = None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                   formatter_class=cli.ArgparseFormatter)
  parser.add_argument("--out", required=True, type=Path, help="output folder (a diffusers repo)")
  parser.add_argument("--seed", type=int, default=0, help="torch seed for the random weights")
  args = parser.parse_args(argv)
  if args.out.exists() and any(args.out.iterdir()):
    print(f"error: {args.out}: exists and is not empty", file=sys.stderr)
    return 1
  write(args.out, args.seed)
  print(f"wrote {args.out}/transformer, vae, text_encoder, tokenizer")
  return 0


if __name__ == "__main__":
  sys.exit(main())
