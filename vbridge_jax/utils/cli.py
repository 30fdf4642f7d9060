"""What the commands share: finding a config file, and `--help` for those that take one.

`resolve_config` finds `--config=FILE[:VARIANT]`: FILE as given when it exists (relative to
the working folder), else the installed config file of that name (`vbridge_jax.configs`,
the repository's `configs/`), so `--config=configs/curriculum.py:tiny` works from any folder.

`--help` of the commands that take a config file (train, aot, restore, evaluate) is one
text for all of them: what the command does, its flags, then the config file's variants
(with the fields each one changes) and every field with its default, as
`--config.FIELD=VALUE` (the spelling that overrides it). Printed to stdout with exit
status 0; absl's own `--help` lists neither variants nor fields and exits 1.
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
from pathlib import Path
from typing import Any, NoReturn, Sequence

from vbridge_jax import configs

CONFIGS_DIR = Path(configs.__file__).resolve().parent  # the installed config files
HELP_FLAGS = ("-h", "--help", "--helpshort", "--helpfull", "-?")


def wants_help(argv: Sequence[str]) -> bool:
  return any(a in HELP_FLAGS for a in argv)


def config_file(name: str) -> Path:
  """The installed config file `name` (e.g. "curriculum.py")."""
  return CONFIGS_DIR / name


def resolve_config(spec: str) -> str:
  """`FILE[:VARIANT]` with FILE found: as given when it exists, else the installed config
  file of the same name when FILE is a bare name or sits in a `configs/` folder."""
  file, sep, variant = str(spec).partition(":")
  if not file or Path(file).exists():
    return str(spec)
  installed = CONFIGS_DIR / Path(file).name
  if Path(file).parent.name in ("", "configs") and installed.is_file():
    return f"{installed}{sep}{variant}"
  return str(spec)


def resolve_config_flags(argv: Sequence[str]) -> list[str]:
  """`argv` with the file of `--config=FILE[:VARIANT]` (or `--config FILE`) resolved."""
  out = list(argv)
  for i, a in enumerate(out):
    if a.startswith("--config="):
      out[i] = "--config=" + resolve_config(a.split("=", 1)[1])
    elif a == "--config" and i + 1 < len(out):
      out[i + 1] = resolve_config(out[i + 1])
  return out


def _config_path(argv: Sequence[str], default: str | Path) -> str:
  """The file named by `--config=FILE[:VARIANT]` (or `--config FILE`), else `default`."""
  path = str(default)
  for i, a in enumerate(argv):
    if a.startswith("--config="):
      path = a.split("=", 1)[1]
    elif a == "--config" and i + 1 < len(argv):
      path = argv[i + 1]
  return resolve_config(path).split(":", 1)[0]


def load_config_module(path: str | Path):
  """A config file as a module (config files are loaded by path, as config_flags does)."""
  spec = importlib.util.spec_from_file_location(f"_vbridge_config_{Path(path).stem}", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def fields(node, prefix: str = "") -> list[tuple[str, Any]]:
  """A ConfigDict flattened to `(dotted field, value)` pairs; empty sub-dicts stay one field."""
  out = []
  for k, v in node.items():
    if hasattr(v, "to_dict") and not len(v):
      v = v.to_dict()
    if hasattr(v, "items") and len(v):
      out.extend(fields(v, f"{prefix}{k}."))
    else:
      out.append((f"{prefix}{k}", v))
  return out


def config_text(argv: Sequence[str], default: str | Path) -> str:
  """The config file's first docstring line, its variants and every field's default."""
  path = _config_path(argv, default)
  try:
    module = load_config_module(path)
    base = dict(fields(module.get_config("")))
  except (OSError, ImportError, SyntaxError, AttributeError, ValueError) as e:
    return f"(cannot read the config file {path} to list its fields: {e})"
  variants = list(getattr(module, "VARIANTS", {}) or [""])
  lines = [f"Config file {path}: {(module.__doc__ or '').strip().splitlines()[0]}",
           "Variants (--config=FILE:VARIANT): " +
           ", ".join(repr(v) if v else "(none)" for v in variants)]
  for name in (v for v in variants if v):
    changed = {k: v for k, v in fields(module.get_config(name)) if base.get(k) != v}
    lines.append(f"  {name}: " + (", ".join(f"{k}={v!r}" for k, v in changed.items())
                                  or "the defaults"))
  lines += ["", "Fields (--config.FIELD=VALUE; the defaults of the plain config):"]
  lines += [f"  --config.{k}={v!r}" for k, v in base.items()]
  return "\n".join(lines)


def print_and_exit(*parts: str) -> NoReturn:
  print("\n\n".join(p.strip("\n") for p in parts if p))
  sys.exit(0)


class ArgparseFormatter(argparse.ArgumentDefaultsHelpFormatter):
  """argparse `--help` with every flag's default, unless its help already states one."""

  def _get_help_string(self, action):
    text = action.help or ""
    if "default" in text or action.default in (None, argparse.SUPPRESS) or action.required:
      return text
    return super()._get_help_string(action)
