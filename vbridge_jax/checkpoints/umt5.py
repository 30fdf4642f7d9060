"""The umT5-XXL text encoder: key map from the original Wan layout, loaders, prompt encoding.

Two layouts are read, both into transformers' `UMT5EncoderModel` (PyTorch, CPU; only
`convert/encode_prompts.py` needs it, restoring reads the resulting `.npz`):

- diffusers: `text_encoder/` (`config.json` + safetensors) and `tokenizer/` beside it;
- original Wan2.2: `models_t5_umt5-xxl-enc-bf16.pth` (read with `weights_only=True`) and the
  tokenizer in `google/umt5-xxl/` beside it (or `--tokenizer`). The architecture is read
  off the tensor shapes.

Wan's `T5Encoder` and transformers' umT5 are the same network (RMS norms, unscaled
attention with a per-block bucketed relative bias, gated tanh-GELU feed-forward); the key map:

  token_embedding.weight             -> shared.weight
  blocks.N.norm1.weight              -> encoder.block.N.layer.0.layer_norm.weight
  blocks.N.attn.{q,k,v,o}.weight     -> encoder.block.N.layer.0.SelfAttention.{q,k,v,o}.weight
  blocks.N.pos_embedding.embedding.weight
                                     -> encoder.block.N.layer.0.SelfAttention.relative_attention_bias.weight
  blocks.N.norm2.weight              -> encoder.block.N.layer.1.layer_norm.weight
  blocks.N.ffn.gate.0.weight         -> encoder.block.N.layer.1.DenseReluDense.wi_0.weight
  blocks.N.ffn.fc1.weight            -> encoder.block.N.layer.1.DenseReluDense.wi_1.weight
  blocks.N.ffn.fc2.weight            -> encoder.block.N.layer.1.DenseReluDense.wo.weight
  norm.weight                        -> encoder.final_layer_norm.weight

Prompts are cleaned as Wan does (HTML unescape twice, ftfy when installed, whitespace
collapsed), tokenized with the end-of-sequence token, and only the real tokens' hidden
states are kept (the DiT zero-pads the context to 512 itself).
"""

from __future__ import annotations

import html
import pickle
import re
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from vbridge_jax.checkpoints.io import TorchPickleSource
from vbridge_jax.utils.errors import CheckpointError

# The authors' fixed prompts (docs/paper.md; their released test script).
VBRIDGE_POSITIVE = (
  "A restoration-focused video strictly based on the input image. The camera is completely "
  "static with no movement, no zoom, and no rotation. The original composition, objects, "
  "layout, and perspective are preserved exactly. Focus on visual restoration and enhancement: "
  "remove noise, reduce blur, eliminate rain artifacts, remove compression artifacts, and "
  "improve clarity, sharpness, and fine details while maintaining natural textures, accurate "
  "colors, and balanced lighting. Only extremely subtle and natural temporal consistency is "
  "allowed. The video should appear stable, clean, and realistic, as if the input image has "
  "been gently restored over time.")
VBRIDGE_NEGATIVE = (
  "camera movement, panning, tilting, zooming, rotation, scene change, object movement, new "
  "objects, object deformation, style change, artistic style, illustration, painting, cartoon, "
  "over-saturated colors, overexposure, underexposure, motion blur, jitter, flickering, "
  "shaking, low quality, worst quality, noise, blur, rain, fog, compression artifacts, jpeg "
  "artifacts, aliasing, text, subtitles, watermark, logo, distorted anatomy, extra limbs, "
  "duplicated objects, exaggerated motion, creative animation")

WAN_PTH_NAME = "models_t5_umt5-xxl-enc-bf16.pth"
TEXT_LEN = 512

_BLOCK_MAP = {
  "norm1.weight": "layer.0.layer_norm.weight",
  "attn.q.weight": "layer.0.SelfAttention.q.weight",
  "attn.k.weight": "layer.0.SelfAttention.k.weight",
  "attn.v.weight": "layer.0.SelfAttention.v.weight",
  "attn.o.weight": "layer.0.SelfAttention.o.weight",
  "pos_embedding.embedding.weight": "layer.0.SelfAttention.relative_attention_bias.weight",
  "norm2.weight": "layer.1.layer_norm.weight",
  "ffn.gate.0.weight": "layer.1.DenseReluDense.wi_0.weight",
  "ffn.fc1.weight": "layer.1.DenseReluDense.wi_1.weight",
  "ffn.fc2.weight": "layer.1.DenseReluDense.wo.weight",
}
_TOP_MAP = {"token_embedding.weight": "shared.weight", "norm.weight": "encoder.final_layer_norm.weight"}
_BLOCK_RE = re.compile(r"^blocks\.(\d+)\.(.+)$")


def wan_to_hf_key(key: str) -> str | None:
  """The transformers key of an original Wan umT5 key, or None if it is not one."""
  if key in _TOP_MAP:
    return _TOP_MAP[key]
  m = _BLOCK_RE.match(key)
  if m and m.group(2) in _BLOCK_MAP:
    return f"encoder.block.{m.group(1)}.{_BLOCK_MAP[m.group(2)]}"
  return None


def config_from_wan(source: TorchPickleSource) -> dict[str, Any]:
  """A transformers `UMT5Config` dict read off the tensor shapes of a Wan umT5 state dict."""
  name = source.name
  for k in ("token_embedding.weight", "blocks.0.attn.q.weight", "blocks.0.ffn.fc1.weight",
       "blocks.0.pos_embedding.embedding.weight"):
    if k not in source:
      raise CheckpointError(f"{name}: missing tensor {k!r} (not a Wan umT5 encoder state dict)")
  vocab, d_model = source.shape("token_embedding.weight")
  inner = source.shape("blocks.0.attn.q.weight")[0]
  d_ff = source.shape("blocks.0.ffn.fc1.weight")[0]
  buckets, heads = source.shape("blocks.0.pos_embedding.embedding.weight")
  layers = len({int(m.group(1)) for k in source.keys() if (m := _BLOCK_RE.match(k))})
  if inner % heads:
    raise CheckpointError(f"{name}: attention width {inner} is not a multiple of {heads} heads")
  return dict(vocab_size=vocab, d_model=d_model, d_kv=inner // heads, d_ff=d_ff, num_layers=layers,
              num_heads=heads, relative_attention_num_buckets=buckets,
              relative_attention_max_distance=128, feed_forward_proj="gated-gelu",
              layer_norm_epsilon=1e-6, dropout_rate=0.0, tie_word_embeddings=False,
              is_encoder_decoder=False, use_cache=False)


def load_wan_encoder(path: Path, dtype: str = "float32"):
  """`UMT5EncoderModel` from the original `models_t5_umt5-xxl-enc-bf16.pth`."""
  import torch
  from transformers import UMT5Config, UMT5EncoderModel

  source = TorchPickleSource(Path(path))
  config = UMT5Config(**config_from_wan(source))
  with torch.device("meta"):
    model = UMT5EncoderModel(config)
  expected = {k: tuple(v.shape) for k, v in model.state_dict().items()
              if k != "encoder.embed_tokens.weight"}
  mapped, unexpected = {}, []
  for key in source.keys():
    hf = wan_to_hf_key(key)
    if hf is None or hf not in expected:
      unexpected.append(key)
    elif source.shape(key) != expected[hf]:
      raise CheckpointError(f"{path}: tensor {key!r} has shape {source.shape(key)}, expected {expected[hf]}")
    else:
      mapped[hf] = key
  missing = sorted(set(expected) - set(mapped))
  if unexpected or missing:
    parts = ([f"unexpected tensor(s) {', '.join(map(repr, unexpected[:4]))}"] if unexpected else []) + \
            ([f"missing target(s) {', '.join(map(repr, missing[:4]))}"] if missing else [])
    raise CheckpointError(f"{path}: " + "; ".join(parts))
  tdtype = getattr(torch, dtype)
  state = {hf: torch.from_numpy(source.get(key)).to(tdtype) for hf, key in mapped.items()}
  state["encoder.embed_tokens.weight"] = state["shared.weight"]
  model.load_state_dict(state, assign=True, strict=True)
  return model.eval()


def load_diffusers_encoder(folder: Path, dtype: str = "float32"):
  """`UMT5EncoderModel` from a diffusers/transformers `text_encoder/` folder."""
  import torch
  from transformers import UMT5EncoderModel

  try:
    with warnings.catch_warnings():
      warnings.simplefilter("ignore")  # torch's pickle-protocol notes: the error says it
      model = UMT5EncoderModel.from_pretrained(folder, torch_dtype=getattr(torch, dtype))
  except pickle.UnpicklingError:
    raise CheckpointError(f"{folder}: refused its weights file: a pickle holding more than "
                          f"tensors (torch's weights_only loader); use safetensors or the "
                          f"original release") from None
  except Exception as e:  # one line for any loader failure
    first = next((line for line in str(e).splitlines() if line.strip()), type(e).__name__)
    raise CheckpointError(f"{folder}: cannot load a UMT5EncoderModel ({type(e).__name__}: "
                          f"{first.strip()[:300]})") from None
  return model.eval()


def locate(path: Path, tokenizer: Path | None = None) -> tuple[str, Path, Path]:
  """(layout, weights, tokenizer folder) for a `--text_encoder PATH` in either layout."""
  path = Path(path)
  if not path.exists():
    raise CheckpointError(f"{path}: no such file or folder")
  if path.is_dir() and (path / WAN_PTH_NAME).is_file():
    layout, weights = "wan", path / WAN_PTH_NAME
  elif path.is_file() and path.suffix in (".pth", ".pt"):
    layout, weights = "wan", path
  elif path.is_dir() and (path / "text_encoder" / "config.json").is_file():
    layout, weights = "diffusers", path / "text_encoder"
  elif path.is_dir() and (path / "config.json").is_file():
    layout, weights = "diffusers", path
  else:
    raise CheckpointError(f"{path}: holds no umT5 encoder (expected {WAN_PTH_NAME}, a .pth, "
                          f"or a diffusers text_encoder/ folder)")
  if tokenizer is None:
    base = weights.parent
    candidates = [base / "tokenizer", base / "google" / "umt5-xxl"]
    tokenizer = next((c for c in candidates if c.is_dir()), None)
    if tokenizer is None:
      raise CheckpointError(f"{path}: no tokenizer found beside it (looked in "
                            f"{', '.join(str(c) for c in candidates)}); pass --tokenizer")
  elif not Path(tokenizer).is_dir():
    raise CheckpointError(f"{tokenizer}: tokenizer folder does not exist")
  return layout, weights, Path(tokenizer)


def clean_prompt(text: str) -> str:
  """Wan's 'whitespace' cleaning: ftfy (if installed), HTML unescape twice, collapse spaces."""
  try:
    import ftfy
    text = ftfy.fix_text(text)
  except ImportError:
    pass
  text = html.unescape(html.unescape(text)).strip()
  return re.sub(r"\s+", " ", text).strip()


def encode(model, tokenizer, texts: list[str], max_length: int = TEXT_LEN) -> list[np.ndarray]:
  """Float32 hidden states of each text's real tokens, `(L_i, d_model)`, L_i <= max_length."""
  import torch

  out = []
  for text in texts:
    enc = tokenizer([clean_prompt(text)], padding="max_length", truncation=True,
                    max_length=max_length, add_special_tokens=True, return_attention_mask=True,
                    return_tensors="pt")
    with torch.no_grad():
      hidden = model(input_ids=enc.input_ids, attention_mask=enc.attention_mask).last_hidden_state
    n = int(enc.attention_mask[0].sum())
    out.append(hidden[0, :n].float().numpy())
  return out
