"""The package layout: commands at the top, one folder per concept, no import cycles, imports
at the tops of files, models that know nothing of checkpoints, configs that install."""

import ast
from pathlib import Path

import pytest
import tomllib

from vbridge_jax.utils import cli

REPO = Path(__file__).resolve().parent.parent
PACKAGE = REPO / "vbridge_jax"
# Imported inside functions on purpose: heavy and optional (the convert / video / tpu extras).
LAZY = ("torch", "transformers", "huggingface_hub", "ftfy", "tensorflow_datasets", "imageio",
        "imageio_ffmpeg", "libtpu", "tensorboardX", "jax.experimental.pallas")


def _modules() -> dict[str, Path]:
  out = {}
  for p in [*PACKAGE.rglob("*.py"), *(REPO / "configs").glob("*.py")]:
    if "__pycache__" in p.parts:
      continue
    rel = p.relative_to(REPO).with_suffix("")
    parts = list(rel.parts)
    if parts[0] == "configs":
      parts = ["vbridge_jax", *parts]
    if parts[-1] == "__init__":
      parts = parts[:-1]
    out[".".join(parts)] = p
  return out


def _imports(tree: ast.AST, mods: dict[str, Path]):
  """(node, project modules it names): `from a.b import c` names a.b.c when that is a module."""
  for node in ast.walk(tree):
    if isinstance(node, ast.Import):
      yield node, [a.name for a in node.names if a.name in mods]
    elif isinstance(node, ast.ImportFrom) and node.module:
      subs = [f"{node.module}.{a.name}" for a in node.names if f"{node.module}.{a.name}" in mods]
      rest = [node.module] if len(subs) < len(node.names) and node.module in mods else []
      yield node, subs + rest


def _graph() -> dict[str, set[str]]:
  mods = _modules()
  return {name: {t for _, ts in _imports(ast.parse(p.read_text()), mods) for t in ts} - {name}
          for name, p in mods.items()}


def test_the_module_graph_has_no_cycle():
  graph, state, path = _graph(), {}, []

  def visit(v):
    state[v] = "open"
    path.append(v)
    for w in sorted(graph[v]):
      if state.get(w) == "open":
        pytest.fail("import cycle: " + " -> ".join(path[path.index(w):] + [w]))
      if w not in state:
        visit(w)
    path.pop()
    state[v] = "done"

  for v in sorted(graph):
    if v not in state:
      visit(v)


def test_imports_sit_at_the_top_of_files_except_the_heavy_optional_ones():
  mods, inside = _modules(), []
  for name, p in mods.items():
    tree = ast.parse(p.read_text())
    for fn in ast.walk(tree):
      if not isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
        continue
      for node in ast.walk(fn):
        if isinstance(node, (ast.Import, ast.ImportFrom)):
          mod = node.module if isinstance(node, ast.ImportFrom) else node.names[0].name
          if not (mod or "").startswith(LAZY):
            inside.append(f"{p.relative_to(REPO)}:{node.lineno}: {ast.unparse(node)}")
  assert not inside, "\n".join(inside)


def test_models_import_nothing_of_checkpoints_data_or_training():
  upward = ("vbridge_jax.checkpoints", "vbridge_jax.data", "vbridge_jax.training",
            "vbridge_jax.inference", "vbridge_jax.evaluation")
  bad = {m: sorted(t for t in ts if t.startswith(upward))
         for m, ts in _graph().items() if m.startswith("vbridge_jax.models")}
  assert not any(bad.values()), bad


def test_the_top_of_the_package_is_the_list_of_commands():
  for p in PACKAGE.glob("*.py"):
    if p.name == "__init__.py":
      continue
    text = p.read_text()
    assert 'if __name__ == "__main__":' in text, f"{p.name} is not a command: move it into a folder"


def test_no_sys_path_edits_in_the_package_configs_or_converters():
  hits = [f"{p.relative_to(REPO)}" for folder in ("vbridge_jax", "configs", "convert")
          for p in (REPO / folder).rglob("*.py") if "sys.path" in p.read_text()]
  assert not hits, hits


def test_pyproject_lists_every_package_and_maps_configs():
  tool = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]
  found = {".".join(p.parent.relative_to(REPO).parts) for p in PACKAGE.rglob("__init__.py")
           if "__pycache__" not in p.parts}
  assert set(tool["packages"]) == found | {"vbridge_jax.configs"}
  assert tool["package-dir"] == {"vbridge_jax.configs": "configs"}


def test_config_paths_resolve_from_any_folder(tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)
  installed = cli.config_file("curriculum.py")
  assert cli.resolve_config("configs/curriculum.py:tiny") == f"{installed}:tiny"
  assert cli.resolve_config("curriculum.py") == f"{installed}"
  assert cli.resolve_config_flags(["--config", "configs/restore.py", "--config.x=1"]) == [
      "--config", str(cli.config_file("restore.py")), "--config.x=1"]
  (tmp_path / "configs").mkdir()
  mine = tmp_path / "configs" / "curriculum.py"
  mine.write_text("")
  assert cli.resolve_config("configs/curriculum.py:tiny") == "configs/curriculum.py:tiny"  # the folder's own
  assert cli.resolve_config("elsewhere/curriculum.py") == "elsewhere/curriculum.py"  # left for the error
