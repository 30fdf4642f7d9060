"""Analytic FLOP counts of the Wan2.2 DiT and the peak rates of the chips it runs on.

A matmul of `(n, k) @ (k, m)` counts `2 n k m` FLOPs; elementwise work (norms, RoPE,
softmax, AdaLN) is left out, as is usual for model-FLOPs utilisation (MFU). The count
follows what `vbridge_jax.models.wan_dit` computes, per sample with `L` video tokens and the
text context padded to `text_len` tokens:

- per block: self-attention q/k/v/o `8 L D^2`, scores and values `4 L^2 D`; cross-attention
  q/o `4 L D^2`, k/v on the text `4 T D^2`, scores and values `4 L T D`; FFN `4 L D F`;
- outside the blocks: patch embedding and output projection, the text embedder (on `T`
  tokens), and the time embedding with its 6-way projection, once per row of timesteps:
  per latent frame for the TI2V trainer and sampler (frame 0 gets t = 0; the DiT computes
  the modulation per frame and broadcasts it over the frame's tokens), per token for
  per-token timesteps, once for a single timestep per sample.

Training: the backward pass of a trained weight matmul costs twice its forward (input and
weight gradients), a frozen one once (input gradient), a matmul of two activations twice.
Inputs (latents, text, timesteps) need no gradient. So a full fine-tune is about 3x the
forward; LoRA about 2x plus the adapters. Model FLOPs count
that; hardware FLOPs add the forward that rematerialisation recomputes (`full`: every
block; `save_dots`: the attention matmuls, whose batch dimensions keep them out of the
saved set). Kernel-internal recomputation (flash/splash backward) is not counted.

`DEVICES` holds peak dense bf16 FLOP/s, HBM size and bandwidth per device kind (vendor
datasheets); `device_spec(kind)` matches `jax.Device.device_kind` strings to it.
"""

from __future__ import annotations

import dataclasses
from typing import Iterable

LORA_ROLES = ("q", "k", "v", "o", "ffn")


@dataclasses.dataclass(frozen=True)
class DeviceSpec:
  """One accelerator chip: peak dense bf16 matmul rate, HBM capacity and bandwidth."""

  name: str
  peak_bf16_flops: float  # FLOP/s
  hbm_bytes: float
  hbm_bandwidth: float  # bytes/s


GiB = 1024 ** 3
DEVICES: dict[str, DeviceSpec] = {
    "v4": DeviceSpec("TPU v4", 275e12, 32 * GiB, 1.2e12),
    "v5e": DeviceSpec("TPU v5e", 197e12, 16 * GiB, 0.819e12),
    "v5p": DeviceSpec("TPU v5p", 459e12, 95 * GiB, 2.765e12),
    "v6e": DeviceSpec("TPU v6e", 918e12, 32 * GiB, 1.64e12),
    "a100-40": DeviceSpec("NVIDIA A100 40GB", 312e12, 40e9, 1.555e12),
    "a100": DeviceSpec("NVIDIA A100 80GB", 312e12, 80e9, 2.039e12),
    "h100": DeviceSpec("NVIDIA H100 SXM", 989e12, 80e9, 3.35e12),
    "h100-pcie": DeviceSpec("NVIDIA H100 PCIe", 756e12, 80e9, 2.0e12),
    "h200": DeviceSpec("NVIDIA H200", 989e12, 141e9, 4.8e12),
}

# (substring of the lower-cased device_kind, key); the first match wins, so specific first.
_KIND_PATTERNS = (
    ("v5 lite", "v5e"), ("v5e", "v5e"), ("v5litepod", "v5e"),
    ("v6 lite", "v6e"), ("v6e", "v6e"),
    ("v5p", "v5p"), ("tpu v5", "v5p"),
    ("tpu v4", "v4"),
    ("h200", "h200"),
    ("h100 pcie", "h100-pcie"), ("h100", "h100"),
    ("a100-sxm4-40", "a100-40"), ("a100-pcie-40", "a100-40"), ("a100", "a100"),
)


def device_spec(kind: str) -> DeviceSpec | None:
  """The spec for a `jax.Device.device_kind` (or a key of `DEVICES`); None if unknown."""
  k = kind.strip().lower()
  if k in DEVICES:
    return DEVICES[k]
  for pattern, key in _KIND_PATTERNS:
    if pattern in k:
      return DEVICES[key]
  return None


# ------------------------------------------------------------------------------ token counts


def video_tokens(frames: int, height: int, width: int, patch_size=(1, 2, 2), *,
                 vae_stride: tuple[int, int, int] = (4, 16, 16)) -> int:
  """DiT tokens of a `frames x height x width` clip (Wan2.2 VAE: 4x temporal, 16x spatial)."""
  st, sh, sw = vae_stride
  if (frames - 1) % st:
    raise ValueError(f"frames={frames} is not 1 + {st}k")
  lf, lh, lw = 1 + (frames - 1) // st, height // sh, width // sw
  pt, ph, pw = patch_size
  if lf % pt or lh % ph or lw % pw or height % sh or width % sw:
    raise ValueError(f"{frames}x{height}x{width} gives latents {lf}x{lh}x{lw}, not a multiple of "
                     f"the patch {tuple(patch_size)} (sizes must be multiples of {sh * ph})")
  return (lf // pt) * (lh // ph) * (lw // pw)


# ----------------------------------------------------------------------------------- forward


def _cfg_dims(cfg) -> tuple[int, int, int, int, int]:
  patch = cfg.patch_size[0] * cfg.patch_size[1] * cfg.patch_size[2]
  return cfg.dim, cfg.ffn_dim, cfg.num_layers, patch * cfg.in_channels, patch * cfg.out_channels


def forward_parts(cfg, tokens: int, *, text_len: int | None = None,
                  time_rows: int | None = None) -> dict[str, float]:
  """Forward FLOPs of one sample, by matmul group (all layers summed).

  `time_rows`: the rows of timesteps the time embedding runs on per sample (the latent
  frame count for per-frame timesteps, 1 for one timestep; None: per token).

  Weight matmuls: `patch`, `proj_out`, `text1`/`text2` (text embedder), `time1`/`time2`
  (time embedder), `time_proj`, `self_qkvo`, `cross_qo`, `cross_kv` (on the text), `ffn`;
  activation x activation: `attention`.
  """
  d, f, n, pin, pout = _cfg_dims(cfg)
  L, T = float(tokens), float(cfg.text_len if text_len is None else text_len)
  n_time = L if time_rows is None else float(time_rows)
  return {
      "patch": 2 * L * pin * d, "proj_out": 2 * L * d * pout,
      "text1": 2 * T * cfg.text_dim * d, "text2": 2 * T * d * d,
      "time1": 2 * n_time * cfg.freq_dim * d, "time2": 2 * n_time * d * d,
      "time_proj": 2 * n_time * 6 * d * d,
      "self_qkvo": n * 8 * L * d * d, "cross_qo": n * 4 * L * d * d, "cross_kv": n * 4 * T * d * d,
      "ffn": n * 4 * L * d * f,
      "attention": n * (4 * L * L * d + 4 * L * T * d),
  }


_BLOCK_WEIGHTS = ("self_qkvo", "cross_qo", "cross_kv", "ffn")


def forward_flops(cfg, tokens: int, batch: int = 1, **kw) -> float:
  """Forward FLOPs of the DiT on `batch` samples of `tokens` video tokens each."""
  return batch * sum(forward_parts(cfg, tokens, **kw).values())


def lora_forward_parts(cfg, tokens: int, rank: int, targets: Iterable[str] = LORA_ROLES, *,
                       text_len: int | None = None) -> tuple[float, float]:
  """Forward FLOPs of the LoRA adapters (`x A B`) of one sample: (all, `x A` on the text)."""
  d, f, n = cfg.dim, cfg.ffn_dim, cfg.num_layers
  L, T = float(tokens), float(cfg.text_len if text_len is None else text_len)
  targets = set(targets)
  unknown = targets - set(LORA_ROLES)
  if unknown:
    raise ValueError(f"LoRA targets {sorted(unknown)} are not among {', '.join(LORA_ROLES)}")
  one = lambda rows, din, dout: 2 * rows * rank * (din + dout)
  total = text_in = 0.0
  for role, cross_rows in {"q": L, "k": T, "v": T, "o": L}.items():
    if role in targets:
      total += one(L, d, d) + one(cross_rows, d, d)
      text_in += 2 * T * d * rank if role in ("k", "v") else 0.0
  if "ffn" in targets:
    total += one(L, d, f) + one(L, f, d)
  return n * total, n * text_in


# ---------------------------------------------------------------------------------- training


@dataclasses.dataclass(frozen=True)
class StepFlops:
  """FLOPs of one training step over the global batch."""

  model: float  # forward + backward, what MFU counts
  hardware: float  # + remat recomputation
  forward: float
  tokens: int  # video tokens in the batch


def train_step_flops(cfg, tokens: int, batch: int, *, finetune: str = "full", lora_rank: int = 64,
                     lora_targets: Iterable[str] = LORA_ROLES, remat: str | None = None,
                     text_len: int | None = None, time_rows: int | None = None) -> StepFlops:
  """Model and hardware FLOPs of one step; `remat` defaults to `cfg.remat`; `time_rows` as
  in `forward_parts` (the trainer: its latent frame count).

  Exact for the matmuls the step must run: no input gradient into the latents, the text or
  the timesteps, and with LoRA no backward at all through frozen matmuls fed only by those
  (embedders, time projection, cross-attention k/v on the text).
  """
  if finetune not in ("full", "lora"):
    raise ValueError(f"finetune={finetune!r} is not one of full, lora")
  remat = cfg.remat if remat is None else remat
  p = forward_parts(cfg, tokens, text_len=text_len, time_rows=time_rows)
  fwd = sum(p.values())
  weights = fwd - p["attention"]
  if finetune == "full":
    backward = 2 * weights - (p["patch"] + p["text1"] + p["time1"]) + 2 * p["attention"]
  else:
    lora, lora_text_in = lora_forward_parts(cfg, tokens, lora_rank, lora_targets, text_len=text_len)
    fwd += lora
    backward = (p["self_qkvo"] + p["cross_qo"] + p["ffn"] + p["proj_out"] + 2 * p["attention"]
                + 2 * lora - lora_text_in)
  if remat == "full":
    extra = sum(p[k] for k in _BLOCK_WEIGHTS) + p["attention"]
    if finetune == "lora":
      extra += lora
  elif remat == "save_dots":
    extra = p["attention"]
  elif remat == "none":
    extra = 0.0
  else:
    raise ValueError(f"remat={remat!r} is not one of none, full, save_dots")
  model = fwd + backward
  return StepFlops(model=batch * model, hardware=batch * (model + extra), forward=batch * fwd,
                   tokens=batch * tokens)


def sampling_flops(cfg, tokens: int, batch: int = 1, *, steps: int = 50, guided_steps: int | None = None,
                   text_len: int | None = None) -> float:
  """DiT FLOPs of a sampling run: one forward per step, two on guided (CFG) steps."""
  guided = steps if guided_steps is None else guided_steps
  return (steps + guided) * forward_flops(cfg, tokens, batch, text_len=text_len)


def mfu(model_flops: float, seconds: float, peak_flops: float, num_devices: int = 1) -> float:
  """Model FLOPs utilisation of a step that took `seconds` on `num_devices` chips."""
  if seconds <= 0 or peak_flops <= 0 or num_devices < 1:
    raise ValueError("mfu needs positive seconds, peak and device count")
  return model_flops / (seconds * peak_flops * num_devices)


def throughput(steps_per_sec: float, step: StepFlops, device_kind: str,
               num_devices: int) -> dict[str, float]:
  """Log fields for a training step rate: `tokens_per_sec` and, on a known device kind,
  `mfu` (model FLOPs over the devices' peak bf16 rate); unknown devices get tokens/s only."""
  out = {"tokens_per_sec": steps_per_sec * step.tokens}
  spec = device_spec(device_kind)
  if spec is not None and steps_per_sec > 0:
    out["mfu"] = steps_per_sec * step.model / (spec.peak_bf16_flops * num_devices)
  return out
