"""Restore degraded images with a converted V-Bridge model (and optionally the drift corrector).

    python -m vbridge_jax.restore [--config=configs/restore.py[:tiny]] --model=DIR \\
        --prompts=FILE.npz --input=PATH --output=DIR [--drift=DIR] \\
        [--config.steps=50 --config.mesh.fsdp=-1 --config.mesh.data=1 ...]

Settings come from `configs/restore.py` (absl + ml_collections `config_flags`, as training;
`--help` lists the variants and every field with its default). The everyday fields have
plain flags: `--model`, `--drift`, `--prompts`, `--input` and `--output` are the same as
`--config.model` ... `--config.output` (`--flag=VALUE` or `--flag VALUE`; both spellings
with different values are an error). `model` is a converter output
holding `dit/` and `vae/` (convert/wan_to_jax.py, or `python -m vbridge_jax.export`); `drift`
a second converted DiT (the corrector, sharing the VAE); `prompts` the `.npz` from
convert/encode_prompts.py. `input` is an image or a folder tree; every image gets a PNG of the
same size at the same relative path under `output` (`vbridge_jax.inference.jobs`: which inputs,
finished outputs, batches and process shares).

Per image, as the authors' inference code does (`vbridge_jax.inference.geometry`): reflect
padding to a multiple of the codec x patch size (or their resize for large images), frame 0
encoded, `frames` frames sampled (UniPC, shift 5, guidance 6 with the last 15% of the steps
unguided: `SamplerConfig`'s defaults, unless the model folder's `model.json` records the
settings its held-out evaluation used: `inference.folder.resolve_settings`), decoded, the last
frame cropped (or zoomed) back. The frame count is the model's own (`model.json`; the
corrector's from its folder) unless `frames` is given. Noise is drawn per image from `seed` and its relative path, so the bytes
do not depend on batching or on the number of processes (on XLA:CPU the number of devices
sharing one process can move a pixel by one level: its threading changes the arithmetic).

Scale: the models are built on the run's mesh with the training config's fields (`mesh.*`,
`logical_axis_rules`, `num_devices`, `distributed.*`): the model axes (fsdp, tensor) shard
the weights, same-size images are batched over the data-parallel axes (data x fsdp). Every
process of a multi-host job runs the same command; `vbridge_jax.aot --steps=restore`
compiles `sample_step`, the step this command runs. Rerunning skips verified outputs and
redoes half-written ones; process 0 writes `restore_summary.json` (counts, failures by file,
seconds per image). A file that cannot be read is reported by name, the rest still run, and
the exit status is then 1. The settings, the order of the checks and the loop: `inference.folder`.
"""

from __future__ import annotations

import sys
import textwrap
from typing import Sequence

from vbridge_jax.inference import folder
from vbridge_jax.utils import cli
from vbridge_jax.utils.errors import VBridgeError

DEFAULT_CONFIG = cli.config_file("restore.py")
PLAIN = ("model", "drift", "prompts", "input", "output")  # --model=X is --config.model=X


def usage(argv: Sequence[str] = ()) -> str:
  """`--help`: what the command does, its flag, the config's variants and every field."""
  flag = ("Flags:\n  --config=FILE[:VARIANT]  config file (default configs/restore.py); "
          "--config.FIELD=VALUE overrides a field\n" + cli.plain_text(PLAIN))
  return "\n\n".join([__doc__.strip(), flag, cli.config_text(argv, DEFAULT_CONFIG, PLAIN),
                      unset_text()])


def unset_text() -> str:
  """`--help`'s note on the fields that default to None."""
  rest = ", ".join(f"{k}={v!r}" for k, v in folder.fallback_settings().items())
  return textwrap.fill(
      "Fields shown as None are unset: a value given in the config or on the command line "
      "wins, else the one the model folder's model.json records (`evaluated_with`: how the "
      "trainer's held-out evaluation restored it, written by python -m vbridge_jax.export), "
      f"else {rest} (vae_dtype=None: the VAE as its folder stores it).", width=95,
      break_long_words=False, break_on_hyphens=False)


def parse(argv: Sequence[str]):
  """argv (without the program name) -> the resolved ConfigDict."""
  argv = cli.resolve_config_flags(argv)
  if cli.wants_help(argv):
    cli.print_and_exit(usage(argv))
  default = str(DEFAULT_CONFIG) if DEFAULT_CONFIG.is_file() else None
  return cli.parse_config(argv, "restore", default, PLAIN, "configs/restore.py[:tiny]")


def main(argv: Sequence[str] | None = None) -> int:
  argv = list(sys.argv[1:] if argv is None else argv)
  try:
    config = parse(argv)
  except VBridgeError as e:  # a bad flag or field, a missing config file, two spellings
    print(f"error: {e}", file=sys.stderr)
    return 1
  try:
    return folder.run(config)
  except (FileNotFoundError, ValueError, VBridgeError) as e:
    print(f"error: {' '.join(str(e).split())}", file=sys.stderr)
    return 1


if __name__ == "__main__":
  sys.exit(main())
