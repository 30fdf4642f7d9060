"""Reading PyTorch tensors and writing converted components.

Readers stream one tensor at a time (safetensors through the `safetensors` package, with no
torch needed; pickles only through torch's `weights_only=True` loader). Writers put a component
(`dit`, `vae`) into `OUT/<name>/` as `config.json` + orbax `params/`, atomically: the
component is written beside its final place and renamed into it, so a failed conversion
leaves nothing behind.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import shutil
import struct
import zipfile
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Mapping, Sequence

import jax
import ml_dtypes
import numpy as np
import orbax.checkpoint as ocp

try:  # the convert extra; the rest of the package runs without it
  from safetensors import safe_open
except ImportError:  # pragma: no cover
  safe_open = None

from vbridge_jax.utils import atomic
from vbridge_jax.utils.errors import CheckpointError

FORMAT_VERSION = 1
# Stored chunks of converted parameters are at most this large, so that a process restoring
# into a sharded layout reads about its own slices rather than whole stacked tensors.
CHUNK_BYTES = 64 << 20


# ---------------------------------------------------------------------------------------------
# Tensor sources
# ---------------------------------------------------------------------------------------------

# What `safe_open(framework="numpy")` returns (bfloat16 as ml_dtypes.bfloat16); it cannot make
# the float8 types in numpy, which are refused by name rather than read wrongly.
_ST_READABLE = frozenset({"F64", "F32", "F16", "BF16", "I64", "I32", "I16", "I8", "U8", "BOOL"})


class TensorSource:
  """A read-only mapping from key to tensor, read lazily. `name` is used in messages."""

  name: str

  def keys(self) -> list[str]:
    raise NotImplementedError

  def shape(self, key: str) -> tuple[int, ...]:
    raise NotImplementedError

  def get(self, key: str) -> np.ndarray:
    """The tensor as a numpy array (float types as float32)."""
    raise NotImplementedError

  def __contains__(self, key: str) -> bool:
    return key in set(self.keys())


class SafetensorsSource(TensorSource):
  """One or more `.safetensors` files, read one tensor at a time by the `safetensors` package
  (`safe_open(framework="numpy", backend="pread")`: bf16 included, no torch, and no memory map
  that would keep the file's pages in the process; benchmarks/safetensors_io.py measured it
  against the memory-mapped reader this replaced)."""

  def __init__(self, files: Sequence[Path], name: str | None = None):
    self.name = name or ", ".join(str(f) for f in files)
    self._handles: dict[Path, Any] = {}
    self._index: dict[str, tuple[Path, tuple[int, ...], str]] = {}
    for f in map(Path, files):
      handle = self._handle(f)
      try:
        entries = [(key, handle.get_slice(key)) for key in handle.keys()]
        entries = [(key, tuple(sl.get_shape()), sl.get_dtype()) for key, sl in entries]
      except Exception as e:  # safetensors' Rust errors
        raise CheckpointError(f"{f}: cannot read the safetensors header ({_reason(e)})") from None
      for key, shape, dtype in entries:
        if key in self._index:
          raise CheckpointError(f"{f}: tensor {key!r} also appears in {self._index[key][0]}")
        self._index[key] = (f, shape, dtype)

  def _handle(self, path: Path) -> Any:
    if path not in self._handles:
      if safe_open is None:
        raise CheckpointError(f"{path}: reading .safetensors needs the safetensors package "
                              f"(pip install 'vbridge_jax[convert]')")
      try:
        self._handles[path] = safe_open(str(path), framework="numpy", backend="pread")
      except Exception as e:  # SafetensorError for a bad header or a short file, OSError
        raise CheckpointError(f"{path}: not a readable safetensors file (damaged or truncated: "
                              f"{_reason(e)})") from None
    return self._handles[path]

  def keys(self) -> list[str]:
    return list(self._index)

  def __contains__(self, key: str) -> bool:
    return key in self._index

  def shape(self, key: str) -> tuple[int, ...]:
    return self._index[key][1]

  def get(self, key: str) -> np.ndarray:
    path, _, dtype = self._index[key]
    if dtype not in _ST_READABLE:
      raise CheckpointError(f"{path}: tensor {key!r} has unsupported dtype {dtype}")
    try:
      arr = self._handle(path).get_tensor(key)
    except Exception as e:  # an I/O error after the header was read
      raise CheckpointError(f"{path}: cannot read tensor {key!r} ({_reason(e)})") from None
    # The array is the reader's own copy: a float32 one is returned as it is.
    return arr.astype(np.float32, copy=False) if _floating(arr) else arr


class DictSource(TensorSource):
  """An in-memory state dict (numpy arrays or torch tensors), e.g. a live PyTorch model's."""

  def __init__(self, tensors: Mapping[str, Any], name: str = "<state dict>"):
    self.name = name
    self._t = dict(tensors)

  def keys(self) -> list[str]:
    return list(self._t)

  def __contains__(self, key: str) -> bool:
    return key in self._t

  def shape(self, key: str) -> tuple[int, ...]:
    return tuple(self._t[key].shape)

  def get(self, key: str) -> np.ndarray:
    t = self._t[key]
    if hasattr(t, "detach"):  # a torch tensor
      t = t.detach().float().numpy() if t.is_floating_point() else t.detach().numpy()
    return _as_float32(np.asarray(t))


class TorchPickleSource(DictSource):
  """A `.pth`/`.pt` state dict, opened only with torch's `weights_only=True` loader.

  Zip files (torch >= 1.6) are memory-mapped; a legacy (non-zip) file cannot be, and is
  read whole, still with `weights_only=True`."""

  def __init__(self, path: Path):
    try:
      import torch
    except ImportError:
      raise CheckpointError(f"{path}: reading .pth needs torch (pip install 'vbridge_jax[convert]')") from None
    try:
      sd = torch.load(path, map_location="cpu", weights_only=True,
                      mmap=zipfile.is_zipfile(path))
    except Exception as e:  # torch raises many types for a bad pickle
      raise CheckpointError(f"{path}: cannot load with torch.load(weights_only=True): {str(e).splitlines()[0]}") from None
    for wrap in ("state_dict", "model", "module"):
      if isinstance(sd, dict) and set(sd) == {wrap}:
        sd = sd[wrap]
    if not isinstance(sd, Mapping):
      raise CheckpointError(f"{path}: holds a {type(sd).__name__}, not a state dict")
    super().__init__({k: v for k, v in sd.items() if hasattr(v, "shape")}, name=str(path))


def _floating(arr: np.ndarray) -> bool:
  return arr.dtype.kind == "f" or arr.dtype == ml_dtypes.bfloat16


def _as_float32(arr: np.ndarray) -> np.ndarray:
  return arr.astype(np.float32) if _floating(arr) else np.array(arr)


def safetensors_files(folder: Path) -> list[Path]:
  """The weight files of a folder: an index's shards if there is an index, else every file."""
  folder = Path(folder)
  indexes = sorted(folder.glob("*.safetensors.index.json"))
  if indexes:
    try:
      index = json.loads(indexes[0].read_text())
      shards = sorted(set(index["weight_map"].values()))
    except (OSError, json.JSONDecodeError, KeyError, AttributeError) as e:
      raise CheckpointError(f"{indexes[0]}: not a safetensors index ({e})") from None
    files = [folder / s for s in shards]
    for f in files:
      if not f.is_file():
        raise CheckpointError(f"{indexes[0]}: shard {f.name} is missing")
    return files
  return sorted(folder.glob("*.safetensors"))


# ---------------------------------------------------------------------------------------------
# Conversion plans
# ---------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Rule:
  """One target parameter: from one source key, or a stack of per-layer keys.

  `fn` maps the source array to the target layout (e.g. a transpose); `shape` is the shape
  the source tensor must have (checked before `fn`).
  """

  keys: tuple[str, ...]
  shape: tuple[int, ...]
  fn: Callable[[np.ndarray], np.ndarray] | None = None
  stacked: bool = False


def apply_plan(source: TensorSource, plan: Mapping[tuple[str, ...], Rule], dtype: Any,
               progress: Callable[[Iterable], Iterable] | None = None) -> dict:
  """Builds the nested target dict, one tensor at a time.

  Every missing, unexpected or wrongly shaped tensor is reported (by source name and key) in
  one `CheckpointError` before anything is converted.
  """
  wanted = {k for r in plan.values() for k in r.keys}
  have = set(source.keys())
  problems = []
  missing = sorted(wanted - have)
  if missing:
    problems.append(f"missing tensor(s) {_short(missing)}")
  unexpected = sorted(have - wanted)
  if unexpected:
    problems.append(f"unexpected tensor(s) {_short(unexpected)}")
  for rule in plan.values():
    for k in rule.keys:
      if k in have and source.shape(k) != rule.shape:
        problems.append(f"tensor {k!r} has shape {source.shape(k)}, expected {rule.shape}")
  if problems:
    raise CheckpointError(f"{source.name}: " + "; ".join(problems[:6]))
  out: dict = {}
  items: Iterable = plan.items()
  if progress is not None:
    items = progress(list(items))
  for path, rule in items:
    arrays = (_cast(rule.fn(source.get(k)) if rule.fn else source.get(k), dtype) for k in rule.keys)
    if rule.stacked:
      first = next(arrays)
      value = np.empty((len(rule.keys),) + first.shape, first.dtype)
      value[0] = first
      for i, a in enumerate(arrays, start=1):
        value[i] = a
    else:
      value = next(arrays)
    node = out
    for p in path[:-1]:
      node = node.setdefault(p, {})
    node[path[-1]] = value
  return out


def _cast(a: np.ndarray, dtype: Any) -> np.ndarray:
  return np.ascontiguousarray(a.astype(dtype) if a.dtype.kind == "f" else a)


def _short(keys: list[str], n: int = 4) -> str:
  shown = ", ".join(repr(k) for k in keys[:n])
  return shown + (f" and {len(keys) - n} more" if len(keys) > n else "")


# ---------------------------------------------------------------------------------------------
# Converted components on disk: OUT/<name>/{config.json, params/}
# ---------------------------------------------------------------------------------------------


def write_component(out: Path, name: str, config: Mapping[str, Any], params: dict,
                    source: str = "") -> Path:
  """Writes `out/<name>/` atomically; an existing component is replaced only on success."""
  out = Path(out).resolve()
  out.mkdir(parents=True, exist_ok=True)
  final = out / name
  tmp = atomic.temp_dir(out, prefix=f".{name}.", suffix=".tmp")  # with the user's umask
  try:
    meta = {"component": name, "format": FORMAT_VERSION, "config": dict(config), "source": source}
    (tmp / "config.json").write_text(json.dumps(meta, indent=2) + "\n")
    _save_params(tmp / "params", params)
    old = None
    if final.exists():
      old = out / f".{name}.old"
      shutil.rmtree(old, ignore_errors=True)
      os.replace(final, old)
    os.replace(tmp, final)
    if old is not None:
      shutil.rmtree(old, ignore_errors=True)
  except BaseException:
    shutil.rmtree(tmp, ignore_errors=True)
    raise
  return final


class _UnretrievedWriteFailures(logging.Filter):
  """Drops asyncio's "... exception was never retrieved" records whose exception is a
  failed write (`atomic.write_failure`): after a failed save (a full disk) each of orbax's
  and tensorstore's writers would print one, with its traceback, when collected at some
  later moment, after the command's one-line error about that same failure."""

  def filter(self, record: logging.LogRecord) -> bool:
    if not str(record.msg).split("\n", 1)[0].endswith(" exception was never retrieved"):
      return True  # asyncio's message names the class: Task, Future, _GatheringFuture
    exc = record.exc_info[1] if record.exc_info else None
    return exc is None or atomic.write_failure(exc) is None


logging.getLogger("asyncio").addFilter(_UnretrievedWriteFailures())


def _save_params(path: Path, params: dict) -> None:
  """Saves a nested dict of numpy arrays with orbax, holding about one copy in memory.

  orbax copies numpy leaves whole before writing, but writes jax arrays under a byte
  budget. So each leaf is moved to a CPU jax array in place (the dict is consumed: its
  numpy arrays are released one by one), and the extra memory while writing is about the
  largest tensor rather than a second copy of the model.
  """

  cpu = jax.devices("cpu")[0]
  budget_gb = max(0.25, max((a.nbytes for a in jax.tree.leaves(params)), default=0) / 1e9 * 1.01)

  def to_device(node: dict) -> None:
    for k in list(node):
      if isinstance(node[k], dict):
        to_device(node[k])
      else:
        node[k] = jax.device_put(node.pop(k), cpu)

  to_device(params)
  handler = ocp.PyTreeCheckpointHandler(save_concurrent_gb=budget_gb)
  save_args = jax.tree.map(lambda _: ocp.SaveArgs(chunk_byte_size=CHUNK_BYTES), params)
  # A failed write (a full disk) comes back as the exception, which the commands turn into
  # one line; orbax would also log it, with a traceback per writer thread.
  absl_logger = logging.getLogger("absl")
  level = absl_logger.level
  absl_logger.setLevel(logging.CRITICAL)
  try:
    with ocp.Checkpointer(handler) as ckptr:
      ckptr.save(path, args=ocp.args.PyTreeSave(params, save_args=save_args))
  finally:
    absl_logger.setLevel(level)


def find_component(path: Path, name: str) -> Path:
  """`path` is a converter output `OUT` (holding `OUT/<name>`) or the component folder.

  A `config.json` that is there but cannot be read is a `CheckpointError` naming it."""
  path = Path(path)
  for cand in (path / name, path):
    meta = cand / "config.json"
    if meta.is_file():
      try:
        comp = json.loads(meta.read_text()).get("component")
      except (OSError, ValueError, AttributeError) as e:
        raise CheckpointError(f"{meta}: damaged component config ({_reason(e)}); convert the "
                              f"model again (convert/wan_to_jax.py)") from None
      if comp == name:
        return cand
  raise CheckpointError(f"{path}: no converted {name!r} component here (expected {path}/{name}/config.json "
                        f"written by convert/wan_to_jax.py)")


def read_component_config(folder: Path) -> dict[str, Any]:
  try:
    meta = json.loads((Path(folder) / "config.json").read_text())
  except (OSError, ValueError) as e:
    raise CheckpointError(f"{folder}/config.json: cannot read it ({_reason(e)})") from None
  if meta.get("format") != FORMAT_VERSION:
    raise CheckpointError(f"{folder}/config.json: format {meta.get('format')} is not {FORMAT_VERSION}")
  if not isinstance(meta.get("config"), dict):
    raise CheckpointError(f"{folder}/config.json: holds no model config")
  return meta["config"]


def _reason(e: BaseException) -> str:
  """The innermost cause of an error, on one short line (tensorstore's are pages long)."""
  while (nxt := e.__cause__ or e.__context__) is not None and not isinstance(nxt, StopIteration):
    e = nxt
  text = " ".join(str(e).split()) or type(e).__name__
  return text if len(text) <= 240 else text[:240] + " ..."


def restore_params(folder: Path, abstract: Any) -> Any:
  """Restores `folder/params` into the structure, dtypes and shardings of `abstract`.

  `abstract` is a nested dict of arrays or `jax.ShapeDtypeStruct`s. With shardings on
  them, each process reads only the stored chunks (`CHUNK_BYTES`) that overlap the slices
  its devices hold, so the full tensors are never assembled on one host; values are cast to
  the abstract dtypes. Before anything is read,
  the stored names and shapes are checked against `abstract`, and a mismatch is reported
  by parameter name. A damaged folder (no `params/`, unreadable metadata, a missing or
  truncated chunk) is a one-line `CheckpointError` naming the folder and what is wrong.
  """

  path = Path(folder).resolve() / "params"
  if not path.is_dir():
    raise CheckpointError(f"{Path(folder).resolve()}: the converted parameters (params/) are "
                          f"missing; convert the model again (convert/wan_to_jax.py)")
  with ocp.StandardCheckpointer() as ckptr:
    try:
      meta = ckptr.metadata(path)
      stored = meta.item_metadata.tree if meta is not None and meta.item_metadata else None
    except Exception as e:  # orbax raises many types
      raise CheckpointError(f"{path}: cannot read the stored parameters' metadata: "
                            f"{_reason(e)}") from None
    if not isinstance(stored, Mapping):
      raise CheckpointError(f"{path}: the stored parameters' metadata is missing or damaged "
                            f"(_METADATA); convert the model again")
    _check_tree(path, stored, abstract)
    try:
      return ckptr.restore(path, abstract)
    except (ValueError, KeyError, FileNotFoundError) as e:
      if "OUT_OF_RANGE" in _reason(e) or "NOT_FOUND" in _reason(e) or "DATA_LOSS" in _reason(e):
        raise CheckpointError(f"{path}: a stored chunk is missing or truncated: "
                              f"{_reason(e)}") from None
      raise CheckpointError(f"{path}: does not match the model: {_reason(e)}") from None
    except Exception as e:  # tensorstore's read errors
      raise CheckpointError(f"{path}: a stored chunk is missing or damaged: {_reason(e)}") from None


def _check_tree(path: Path, stored: Mapping, abstract: Mapping) -> None:
  have = {"/".join(k): tuple(v.shape) for k, v in flatten(stored)}
  want = {"/".join(k): tuple(v.shape) for k, v in flatten(abstract)}
  if missing := sorted(want.keys() - have.keys()):
    raise CheckpointError(f"{path}: lacks parameter(s) {_short(missing)} of the model")
  if unexpected := sorted(have.keys() - want.keys()):
    raise CheckpointError(f"{path}: holds parameter(s) {_short(unexpected)} the model does not have")
  for k in sorted(want):
    if have[k] != want[k]:
      raise CheckpointError(f"{path}: parameter {k} has shape {have[k]}, the model {want[k]}")


def string_keys(tree: Any) -> Any:
  """A nested dict (an nnx pure dict, whose list indices are ints) with string keys, as
  stored parameter trees have them; leaves unchanged."""
  if isinstance(tree, Mapping):
    return {str(k): string_keys(v) for k, v in tree.items()}
  return tree


def rekey_like(template: Any, tree: Any) -> Any:
  """`tree` (string keys) re-keyed like `template` (whose list indices may be ints)."""
  if isinstance(template, Mapping):
    return {k: rekey_like(v, tree[str(k)]) for k, v in template.items()}
  return tree


def flatten(tree: Mapping, prefix: tuple[str, ...] = ()) -> Iterator[tuple[tuple[str, ...], Any]]:
  for k, v in tree.items():
    if isinstance(v, Mapping):
      yield from flatten(v, prefix + (str(k),))
    else:
      yield prefix + (str(k),), v


# ---------------------------------------------------------------------------------------------
# Writing PyTorch layouts: safetensors files, sharded above a size limit
# ---------------------------------------------------------------------------------------------

# numpy dtype name -> safetensors name. The writer is this project's own: the package's
# `save_file` needs a whole shard in memory at once (benchmarks/safetensors_io.py).
_ST_NAMES = {"float64": "F64", "float32": "F32", "float16": "F16", "bfloat16": "BF16", "int64": "I64",
             "int32": "I32", "int16": "I16", "int8": "I8", "uint8": "U8", "bool": "BOOL",
             "float8_e4m3fn": "F8_E4M3", "float8_e5m2": "F8_E5M2"}
WEIGHTS_NAME = "diffusion_pytorch_model"


TensorSpec = tuple[str, tuple[int, ...], Any, Callable[[], np.ndarray]]  # key, shape, dtype, get


def shard_groups(sizes: Sequence[int], max_shard_bytes: int) -> list[list[int]]:
  """Indices of tensors of byte `sizes`, in order, cut into shards of at most
  `max_shard_bytes` (a tensor larger than that is a shard of its own)."""
  shards: list[list[int]] = [[]]
  used = 0
  for i, size in enumerate(sizes):
    if shards[-1] and used + size > max_shard_bytes:
      shards.append([])
      used = 0
    shards[-1].append(i)
    used += size
  return shards


def write_safetensors(folder: Path, tensors: Sequence[TensorSpec],
                      max_shard_bytes: int = 5 << 30, name: str = WEIGHTS_NAME) -> list[Path]:
  """Writes `(key, shape, dtype, get)` tensors as `name.safetensors`, or as shards
  `name-0000i-of-0000n.safetensors` plus `name.safetensors.index.json` (the layout of
  diffusers' `save_pretrained` and of the Wan2.2 release) when they exceed `max_shard_bytes`.

  Each tensor is made by its `get()` only when its bytes are written (one at a time). No
  torch: the format is an 8-byte header length, a JSON header, then the raw bytes.
  """
  folder = Path(folder)
  folder.mkdir(parents=True, exist_ok=True)
  sizes = [int(np.prod(shape, dtype=np.int64)) * np.dtype(dtype).itemsize for _, shape, dtype, _ in tensors]
  shards = shard_groups(sizes, max_shard_bytes)
  n = len(shards)
  names = ([f"{name}.safetensors"] if n == 1 else
           [f"{name}-{k + 1:05d}-of-{n:05d}.safetensors" for k in range(n)])
  for fname, idx in zip(names, shards):
    header: dict[str, Any] = {"__metadata__": {"format": "pt"}}
    offset = 0
    for i in idx:
      key, shape, dtype, _ = tensors[i]
      if np.dtype(dtype).name not in _ST_NAMES:
        raise CheckpointError(f"{key}: dtype {np.dtype(dtype).name} has no safetensors name")
      header[key] = {"dtype": _ST_NAMES[np.dtype(dtype).name], "shape": list(shape),
                     "data_offsets": [offset, offset + sizes[i]]}
      offset += sizes[i]
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)
    with open(folder / fname, "wb") as fh:
      fh.write(struct.pack("<Q", len(raw)))
      fh.write(raw)
      for i in idx:
        key, shape, dtype, get = tensors[i]
        a = get()
        if a.shape != tuple(shape) or a.dtype != np.dtype(dtype):
          raise CheckpointError(f"{key}: made {a.shape} {a.dtype}, declared {tuple(shape)} {np.dtype(dtype)}")
        fh.write(np.ascontiguousarray(a).tobytes())
  if n > 1:
    weight_map = {tensors[i][0]: fname for fname, idx in zip(names, shards) for i in idx}
    index = {"metadata": {"total_size": sum(sizes)}, "weight_map": weight_map}
    (folder / f"{name}.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n")
  return [folder / f for f in names]
