"""Shared test set-up: 8 fake CPU devices (set before jax is imported), seeds, paths."""

import os

# 8 fake CPU devices for the mesh tests; LLVM optimisation level 0, since the tests are
# tiny and XLA:CPU compilation dominates their time (about 2x faster, same numerics).
_flags = os.environ.get("XLA_FLAGS", "")
for _flag in ("--xla_force_host_platform_device_count=8", "--xla_backend_optimization_level=0"):
  if _flag.split("=")[0] not in _flags:
    _flags += " " + _flag
os.environ["XLA_FLAGS"] = _flags.strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import importlib.util  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
SHARED = REPO.parent / "shared"
FOUNDIR_SAMPLES = SHARED / "data" / "foundir_samples"


@pytest.fixture(scope="session")
def foundir_samples() -> Path:
  """The three real FoundIR test pairs in ../shared (absent in a user's clone: skip)."""
  if not FOUNDIR_SAMPLES.is_dir():
    pytest.skip("../shared/data/foundir_samples is not present")
  return FOUNDIR_SAMPLES


@pytest.fixture(autouse=True, scope="session")
def _torch_threads():
  try:
    import torch
  except ImportError:
    return
  torch.set_num_threads(max(1, os.cpu_count() or 1))


def load_script(name: str):
  """A command-line script of `convert/` (not a package) as a module, e.g. `tiny_repo`."""
  spec = importlib.util.spec_from_file_location(name, REPO / "convert" / f"{name}.py")
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  return mod


@pytest.fixture
def low_compile_effort():
  """Compile time dominates tiny programs; XLA need not optimise them hard."""
  import jax
  old = jax.config.jax_exec_time_optimization_effort
  jax.config.update("jax_exec_time_optimization_effort", -1.0)
  yield
  jax.config.update("jax_exec_time_optimization_effort", old)


def set_fields(config, **fields):
  """Sets dotted config fields (`set_fields(c, **{"data.frames": 5})`); returns the config."""
  for key, value in fields.items():
    node = config
    *path, last = key.split(".")
    for part in path:
      node = node[part]
    node[last] = value
  return config


@pytest.fixture(scope="session")
def test_prior(tmp_path_factory):
  """`configs/prior.py:test`, the test-sized video prior, built once per test session into a
  session cache (`$VBRIDGE_CACHE`, restored afterwards); its model folder."""
  from vbridge_jax.training import prior, trainer
  old = os.environ.get(prior.ENV)
  os.environ[prior.ENV] = str(tmp_path_factory.mktemp("vbridge_cache"))
  try:
    yield trainer.ensure_prior("test", progress=False, log=lambda _: None)
  finally:
    if old is None:
      os.environ.pop(prior.ENV, None)
    else:
      os.environ[prior.ENV] = old


@pytest.fixture(scope="module")
def persistent_compiles(tmp_path_factory):
  """For a test module that trains: identical programs (the resume runs) compile once, and
  XLA spends less effort optimising these tiny programs (compile time dominates: ~35 -> ~22 s
  for a step on a loaded CPU)."""
  import jax
  names = ("jax_compilation_cache_dir", "jax_persistent_cache_min_compile_time_secs",
           "jax_exec_time_optimization_effort")
  old = {n: getattr(jax.config, n) for n in names}
  jax.config.update("jax_compilation_cache_dir", str(tmp_path_factory.mktemp("jax_cache")))
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
  jax.config.update("jax_exec_time_optimization_effort", -1.0)
  yield
  for n, v in old.items():
    jax.config.update(n, v)
