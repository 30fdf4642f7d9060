"""What the commands share: finding a config file, and `--help` for those that take one.

`resolve_config` finds `--config=FILE[:VARIANT]`: FILE as given when it exists (relative to
the working folder), else the installed config file of that name (`vbridge_jax.configs`,
the repository's `configs/`), so `--config=configs/curriculum.py:tiny` works from any folder.

`--help` of the commands that take a config file (train, aot, restore, evaluate) is one
text for all of them: what the command does, its flags, then the config file's variants
(with the fields each one changes) and every field with its default, as
`--config.FIELD=VALUE` (the spelling that overrides it). Printed to stdout with exit
status 0; absl's own `--help` lists neither variants nor fields and exits 1.

`plain_flags` gives a command's everyday fields plain spellings (restore's `--model=DIR`,
evaluate's `--pred=DIR`, as `--flag=VALUE` or `--flag VALUE`): each is rewritten to its
`--config.FIELD=VALUE` before absl parses, so the config stays the one source; both
spellings with different values are an error. `flag_error` makes absl's and
config_flags' errors one line (a config file's own error, such as an unknown variant,
without the traceback config_flags embeds); `parse_config` is restore's and evaluate's one
way from argv to their config, with those errors.
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
from pathlib import Path
from typing import Any, NoReturn, Sequence

from absl import flags
from ml_collections import config_flags

from vbridge_jax import configs
from vbridge_jax.utils.errors import ConfigError

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


def plain_flags(argv: Sequence[str], names: Sequence[str]) -> list[str]:
  """`argv` with each plain flag `--NAME=VALUE` (or `--NAME VALUE`) of `names` spelt
  `--config.NAME=VALUE`. Raises ConfigError for a plain flag without a value, or when
  `--NAME` and `--config.NAME` are both given with different values."""
  names = set(names)
  out: list[str] = []
  given: dict[str, dict[str, str]] = {}  # field -> {spelling: value}, the last of each
  i = 0
  while i < len(argv):
    a = argv[i]
    if a == "--":  # absl's end of flags: the rest is left as it is
      out.extend(argv[i:])
      break
    flag, eq, value = a.partition("=")
    plain = flag[2:] if flag.startswith("--") and flag[2:] in names else None
    field = flag[len("--config."):] if flag.startswith("--config.") else None
    if plain is None and field not in names:
      out.append(a)
      i += 1
      continue
    if not eq:
      if i + 1 >= len(argv) or argv[i + 1].startswith("--"):
        raise ConfigError(f"{flag} needs a value ({flag}=VALUE)")
      value, i = argv[i + 1], i + 1
    name = plain or field
    given.setdefault(name, {})[flag] = value
    out.append(f"--config.{name}={value}")
    i += 1
  for name, spellings in given.items():
    if len(spellings) > 1 and len(set(spellings.values())) > 1:
      raise ConfigError(f"--{name}={spellings[f'--{name}']!r} and --config.{name}="
                        f"{spellings[f'--config.{name}']!r} disagree: they set the same field, "
                        "give one of them")
  return out


def plain_text(names: Sequence[str]) -> str:
  """`--help`'s lines on the plain flags."""
  return "\n".join([f"  --{n}=VALUE" + " " * max(1, 23 - len(n)) + f"the same as --config.{n}"
                    for n in names])


def flag_error(e: BaseException) -> str:
  """absl's or config_flags' error as one line. A config file that raises (an unknown
  variant, a bad value) reaches absl wrapped in a traceback: only its last line is kept."""
  text = str(e)
  head, sep, trace = text.partition("Error whilst parsing config file:")
  if sep:
    last = [line.strip() for line in trace.strip().splitlines() if line.strip()]
    reason = last[-1] if last else ""
    for kind in ("ValueError: ", "TypeError: "):
      reason = reason.removeprefix(kind)
    text = f"{head.strip().removeprefix('flag ')} {reason}"
  return " ".join(text.split())


def parse_config(argv: Sequence[str], command: str, default: str | None, plain: Sequence[str],
                 what: str):
  """The config of a command's argv (`--config=FILE[:VARIANT]`, `--config.FIELD=VALUE` and the
  `plain` spellings; `default`: the config file when none is given), or a one-line
  ConfigError naming the flag, field or argument at fault. `--help` is the caller's."""
  check_config_file(argv)
  argv = plain_flags(argv, plain)
  fv = flags.FlagValues()
  try:
    holder = config_flags.DEFINE_config_file("config", default, what, flag_values=fv,
                                             lock_config=True, sys_argv=[command, *argv])
    rest = fv([command, *argv])
    value = holder.value
  except (KeyError, AttributeError) as e:
    raise ConfigError(f"unknown config field {str(e).strip(chr(34))} (--help lists them)"
                      ) from None
  except (flags.Error, ValueError, TypeError) as e:
    raise ConfigError(flag_error(e)) from None
  if len(rest) > 1:
    raise ConfigError(f"unexpected arguments: {' '.join(rest[1:])} (settings are "
                      f"--config.FIELD=VALUE)")
  if value is None:
    raise ConfigError(f"--config=FILE is required ({what})")
  return value


def check_config_file(argv: Sequence[str]) -> None:
  """ConfigError unless the file of `--config=FILE[:VARIANT]` (resolved) exists;
  config_flags would report a missing one with a traceback when the config is first read."""
  for i, a in enumerate(argv):
    spec = a.split("=", 1)[1] if a.startswith("--config=") else (
        argv[i + 1] if a == "--config" and i + 1 < len(argv) else None)
    if spec is not None and not Path(spec.split(":", 1)[0]).is_file():
      raise ConfigError(f"--config={spec}: no such config file (nor one of that name among "
                        f"the installed configs: {', '.join(sorted(installed_configs()))})")


def installed_configs() -> list[str]:
  return [p.name for p in CONFIGS_DIR.glob("*.py") if not p.name.startswith("_")]


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


def config_text(argv: Sequence[str], default: str | Path, plain: Sequence[str] = ()) -> str:
  """The config file's first docstring line, its variants and every field's default (with
  the plain spelling of the fields in `plain`)."""
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
  lines += [f"  --config.{k}={v!r}" + (f"  (or --{k})" if k in plain else "")
            for k, v in base.items()]
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
