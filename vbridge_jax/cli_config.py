"""`--config FILE[:VARIANT]` for the argparse commands (restore, evaluate).

The file's `get_config(VARIANT)` (ml_collections) gives a value for each option, named as
the flag with `_` for `-` (`cfg_skip` for `--cfg-skip`); `--config.KEY=VALUE` (or
`--config.KEY VALUE`) overrides one of them; a flag given on the command line wins over
both. An empty string in the config means "not set" for an option without a default.
"""

from __future__ import annotations

import argparse
import importlib.util
from pathlib import Path
from typing import Any

import ml_collections

_TRUE, _FALSE = {"true", "1", "yes"}, {"false", "0", "no"}


def load(spec: str) -> ml_collections.ConfigDict:
  """`FILE[:VARIANT]` -> `get_config(VARIANT)` of that file."""
  path, _, variant = spec.partition(":") if not Path(spec).is_file() else (spec, "", "")
  if not Path(path).is_file():
    raise ValueError(f"{path}: no such config file")
  mod_spec = importlib.util.spec_from_file_location(f"_config_{Path(path).stem}", path)
  module = importlib.util.module_from_spec(mod_spec)
  try:
    mod_spec.loader.exec_module(module)
    return module.get_config(variant or None)
  except (ValueError, AttributeError, ImportError, SyntaxError) as e:
    raise ValueError(f"{path}: {str(e).splitlines()[0]}") from None


def _parse_value(key: str, text: str, current: Any) -> Any:
  if isinstance(current, bool):
    if text.lower() not in _TRUE | _FALSE:
      raise ValueError(f"--config.{key}={text}: not a boolean")
    return text.lower() in _TRUE
  try:
    return type(current)(text) if isinstance(current, (int, float)) else text
  except ValueError:
    raise ValueError(f"--config.{key}={text}: not of type {type(current).__name__}") from None


def split_argv(argv: list[str]) -> tuple[str | None, list[tuple[str, str]], list[str]]:
  """argv -> (config spec or None, [(key, value)] overrides, the other arguments)."""
  spec, overrides, rest = None, [], []
  i = 0
  while i < len(argv):
    a = argv[i]
    if a == "--config" or a.startswith("--config.") or a.startswith("--config="):
      name, eq, value = a.partition("=")
      if not eq:
        if i + 1 >= len(argv):
          raise ValueError(f"{a}: needs a value")
        value, i = argv[i + 1], i + 1
      if name == "--config":
        spec = value
      else:
        overrides.append((name[len("--config."):], value))
    else:
      rest.append(a)
    i += 1
  return spec, overrides, rest


def parse(parser: argparse.ArgumentParser, argv: list[str], required: list[str]) -> argparse.Namespace:
  """parser.parse_args with config-file defaults; `required` are dests that must end up set."""
  try:
    spec, overrides, rest = split_argv(argv)
    config = load(spec) if spec else ml_collections.ConfigDict()
    if overrides and not spec:
      raise ValueError("--config.KEY needs --config FILE")
    for key, text in overrides:
      if key not in config:
        raise ValueError(f"--config.{key}: {spec} has no option {key!r}")
      config[key] = _parse_value(key, text, config[key])
    actions = {a.dest: a for a in parser._actions}
    defaults = {}
    for key, value in config.items():
      if key not in actions or key == "help":
        raise ValueError(f"{spec}: {key!r} is not an option of this command")
      action = actions[key]
      if value == "" and action.default is None:
        continue
      if action.choices is not None and value not in action.choices:
        raise ValueError(f"{spec}: {key}={value!r} is not one of {', '.join(map(str, action.choices))}")
      defaults[key] = value
  except ValueError as e:
    parser.error(str(e))
  parser.set_defaults(**defaults)
  args = parser.parse_args(rest)
  missing = [actions[d].option_strings[0] for d in required if getattr(args, d) in (None, "")]
  if missing:
    parser.error(f"the following arguments are required (as flags or in --config): {', '.join(missing)}")
  return args
