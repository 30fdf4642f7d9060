"""The PyTorch reference for DiT tests: diffusers' WanTransformer3DModel with random weights."""

from __future__ import annotations

import numpy as np
import torch
from diffusers import WanTransformer3DModel
from flax import nnx

from vbridge_jax.checkpoints.dit import conversion_plan
from vbridge_jax.checkpoints.io import DictSource, apply_plan
from vbridge_jax.models import DiTConfig, WanDiT


def diffusers_kwargs(cfg: DiTConfig) -> dict:
  return dict(patch_size=cfg.patch_size, num_attention_heads=cfg.num_heads,
              attention_head_dim=cfg.head_dim, in_channels=cfg.in_channels,
              out_channels=cfg.out_channels, text_dim=cfg.text_dim, freq_dim=cfg.freq_dim,
              ffn_dim=cfg.ffn_dim, num_layers=cfg.num_layers, cross_attn_norm=True,
              qk_norm="rms_norm_across_heads", eps=cfg.eps, rope_max_seq_len=cfg.rope_max_seq_len)


def wan_config_json(cfg: DiTConfig) -> dict:
  """The original Wan2.2 config.json for `cfg`."""
  return {"_class_name": "WanModel", "model_type": "ti2v", "dim": cfg.dim, "ffn_dim": cfg.ffn_dim,
          "num_heads": cfg.num_heads, "num_layers": cfg.num_layers, "in_dim": cfg.in_channels,
          "out_dim": cfg.out_channels, "freq_dim": cfg.freq_dim, "text_len": cfg.text_len,
          "eps": cfg.eps, "text_dim": cfg.text_dim, "patch_size": list(cfg.patch_size)}


def make_torch_dit(cfg: DiTConfig, seed: int = 0) -> WanTransformer3DModel:
  """A diffusers DiT with EVERY parameter randomised (norm scales and tables included)."""
  torch.manual_seed(seed)
  model = WanTransformer3DModel(**diffusers_kwargs(cfg)).eval()
  g = torch.Generator().manual_seed(seed + 1)
  with torch.no_grad():
    for name, p in model.named_parameters():
      if "norm" in name:  # norm scales near 1, biases near 0
        p.copy_((1.0 if name.endswith("weight") else 0.0) + 0.2 * torch.randn(p.shape, generator=g))
      elif "scale_shift_table" in name:
        p.copy_(0.5 * torch.randn(p.shape, generator=g))
      elif p.ndim >= 2:
        fan_in = int(np.prod(p.shape[1:]))
        p.copy_(torch.randn(p.shape, generator=g) / np.sqrt(fan_in))
      else:
        p.copy_(0.1 * torch.randn(p.shape, generator=g))
  return model


def jax_from_torch(model: WanTransformer3DModel, cfg: DiTConfig) -> WanDiT:
  """Our model with the torch model's weights, through the diffusers key map."""
  params = apply_plan(DictSource(model.state_dict()), conversion_plan(cfg, "diffusers"), np.float32)
  dit = WanDiT(cfg, rngs=nnx.Rngs(0))
  state = nnx.state(dit)
  nnx.replace_by_pure_dict(state, params)
  nnx.update(dit, state)
  return dit


def torch_forward(model, x: np.ndarray, t: np.ndarray, ctx: np.ndarray, text_len: int) -> np.ndarray:
  """Reference forward: channels-last in and out; context zero-padded as the Wan pipeline does."""
  ctx = np.pad(ctx, ((0, 0), (0, text_len - ctx.shape[1]), (0, 0)))
  with torch.no_grad():
    out = model(hidden_states=torch.from_numpy(x).permute(0, 4, 1, 2, 3),
                timestep=torch.from_numpy(t), encoder_hidden_states=torch.from_numpy(ctx),
                return_dict=False)[0]
  return out.permute(0, 2, 3, 4, 1).numpy()


def inputs(cfg: DiTConfig, batch=2, frames=3, height=4, width=6, text=7, per_token=False, seed=0):
  rng = np.random.default_rng(seed)
  x = rng.standard_normal((batch, frames, height, width, cfg.in_channels)).astype(np.float32)
  ctx = rng.standard_normal((batch, text, cfg.text_dim)).astype(np.float32)
  t = rng.uniform(0, 1000, (batch,)).astype(np.float32)
  if per_token:  # the TI2V path: frame-0 tokens at t = 0
    pt, ph, pw = cfg.patch_size
    per_frame = (height // ph) * (width // pw)
    t = np.repeat(t[:, None], (frames // pt) * per_frame, axis=1)
    t[:, :per_frame] = 0.0
  return x, t, ctx


def max_rel_err(a: np.ndarray, ref: np.ndarray) -> float:
  return float(np.max(np.abs(np.asarray(a, np.float64) - ref)) / np.max(np.abs(ref)))
