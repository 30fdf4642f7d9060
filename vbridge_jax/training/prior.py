"""The tiny video prior, built on first use and cached by content: `init_from="prior:VARIANT"`.

The paper fine-tunes Wan2.2-TI2V-5B, a video model pretrained on web-scale footage. The tiny
model's stand-in is pretrained here, as a video generator on the synthetic corpus
(`data/video_corpus.py`), by `configs/prior.py` (its `VARIANT`). A training config whose
`init_from` is `prior:VARIANT` (`configs/curriculum.py:tiny` sets `prior:tiny`) gets the
exported model folder of that run:

- the folder is `$VBRIDGE_CACHE/priors/<VARIANT>-<key>/model` (default cache
  `~/.cache/vbridge_jax`), where `key` hashes the prior's resolved config and the corpus
  generator's source, so a changed recipe or corpus builds a new prior and an unchanged one
  is reused by every later run, in any workdir;
- on first use it is trained (`run/`, the trainer's progress bar; a killed build resumes
  from its last checkpoint) and exported (`python -m vbridge_jax.export`'s code path) by
  `trainer.ensure_prior`; reuse prints one line. This module holds the names, the key and
  the paths, and trains nothing.

Why built rather than shipped: the prior is ~15 MB of float32 weights, a fifth of the
repository's budget for one binary that every corpus change would replace, and XLA:CPU's
arithmetic differs between CPU kinds, so a shipped file could not be regenerated bit for bit
anyway; building it costs a few minutes once per machine.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import jax

from vbridge_jax.configs import prior as prior_configs
from vbridge_jax.data import video_corpus
from vbridge_jax.utils.errors import ConfigError

PREFIX = "prior:"
ENV = "VBRIDGE_CACHE"


def is_prior(init_from: str) -> bool:
  return str(init_from).startswith(PREFIX)


def variant_of(init_from: str) -> str:
  return str(init_from)[len(PREFIX):]


def cache_root() -> Path:
  return Path(os.environ.get(ENV) or Path.home() / ".cache" / "vbridge_jax")


def prior_config(variant: str):
  """`configs/prior.py`'s `variant` (a ConfigError naming the known ones if unknown)."""
  if variant not in prior_configs.VARIANTS:
    raise ConfigError(f"init_from={PREFIX}{variant}: configs/prior.py has no variant {variant!r} "
                      f"(it has {', '.join(repr(v) for v in prior_configs.VARIANTS)})")
  return prior_configs.get_config(variant)


def prior_key(config) -> str:
  """12 hex digits over the resolved prior config and the corpus generator's source."""
  h = hashlib.sha256()
  cfg = json.loads(config.to_json_best_effort())
  for field in ("progress", "num_devices"):  # how it prints, and on how many of this host's
    cfg.pop(field, None)                    # devices it runs, do not change the recipe
  h.update(json.dumps(cfg, sort_keys=True).encode())
  h.update(Path(video_corpus.__file__).read_bytes())
  return h.hexdigest()[:12]


def model_dir(variant: str, config=None) -> Path:
  """Where prior `variant`'s model folder is (or will be) cached (`config`: its resolved
  config, when the caller has it)."""
  config = prior_config(variant) if config is None else config
  return cache_root() / "priors" / f"{variant}-{prior_key(config)}" / "model"


def is_built(variant: str) -> bool:
  return (model_dir(variant) / "model.json").is_file()


def devices_for(batch: int) -> int:
  """The largest count of this host's devices that divides the global batch; one on a CPU
  host, whose (fake) devices would share the same cores."""
  if jax.devices()[0].platform == "cpu":
    return 1
  n = jax.local_device_count()
  while batch % n:
    n -= 1
  return n
