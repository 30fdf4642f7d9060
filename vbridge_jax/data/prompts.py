"""The prompt-embedding file: one reader for restore and training, one atomic writer.

`convert/encode_prompts.py` writes an `.npz` with float32 arrays `(L_i, text_dim)`, the umT5
hidden states of each prompt's real tokens (the DiT zero-pads the context to its
`text_len`):

- `positive`: the V-Bridge restoration prompt (restore and training);
- `negative`: the negative prompt (restore's classifier-free guidance);
- `empty`: the empty prompt `""`, which training uses for the fraction `data.text_drop` of
  samples (the authors drop the caption to `""` for 10% of samples; docs/fidelity.md).
  Restore ignores it; files written before it existed lack it.

Every problem raises `PromptError` with a one-line message naming the file and the key.
"""

from __future__ import annotations

import os
import zipfile
import zlib
from pathlib import Path

import numpy as np

from vbridge_jax.utils import atomic
from vbridge_jax.utils.errors import PromptError

KEYS = ("positive", "negative", "empty")


def load(path: str | os.PathLike, text_dim: int, keys: tuple[str, ...] = ("positive", "negative"),
         text_len: int | None = None, optional: tuple[str, ...] = ()) -> dict[str, np.ndarray]:
  """The arrays `keys` (and those of `optional` that the file has) as float32
  `(L, text_dim)`, L <= `text_len`."""
  path = Path(path)
  if not path.is_file():
    raise PromptError(f"{path}: no such prompt file (make one with convert/encode_prompts.py)")
  try:
    data = np.load(path, allow_pickle=False)
    if not isinstance(data, np.lib.npyio.NpzFile):  # a .npy array: one unnamed array
      raise PromptError(f"{path}: not a prompt file (one .npy array, not an .npz holding "
                        f"{', '.join(repr(k) for k in keys)}; make one with "
                        "convert/encode_prompts.py)")
    with data:
      present = set(data.files)
      for key in keys:
        if key not in present:
          hint = (" (written before the empty prompt was stored: rerun "
                  "convert/encode_prompts.py)" if key == "empty" else "")
          raise PromptError(f"{path}: no '{key}' array in the prompt file{hint}")
      out = {}
      for k in keys + optional:
        if k in present:
          a = data[k]
          if a.dtype.kind != "f":
            raise PromptError(f"{path}: '{k}' holds {a.dtype} values; prompt embeddings are "
                              "floating point (convert/encode_prompts.py writes float32)")
          out[k] = np.asarray(a, np.float32)
  except PromptError:
    raise
  except (OSError, ValueError, EOFError, zipfile.BadZipFile, zlib.error, KeyError) as e:
    # not an npz, truncated or damaged (a bad zip, a bad CRC), pickled objects
    raise PromptError(f"{path}: not a prompt file, or a damaged one "
                      f"({str(e).splitlines()[0] if str(e) else e!r})") from None
  for key, a in out.items():
    if a.ndim != 2 or a.shape[1] != text_dim or a.shape[0] < 1:
      raise PromptError(f"{path}: '{key}' has shape {a.shape}; the model needs (L, {text_dim})")
    if text_len is not None and a.shape[0] > text_len:
      raise PromptError(f"{path}: '{key}' has {a.shape[0]} tokens; the model takes at most "
                        f"{text_len}")
    if not np.all(np.isfinite(a)):
      raise PromptError(f"{path}: '{key}' holds non-finite values")
  return out


def load_prompts(path: str | os.PathLike, text_dim: int) -> tuple[np.ndarray, np.ndarray]:
  """`(positive, negative)` for restoring."""
  p = load(path, text_dim, ("positive", "negative"))
  return p["positive"], p["negative"]


def training_context(path: str | os.PathLike | None, text_dim: int, text_len: int,
                     need_empty: bool) -> np.ndarray:
  """`(2, L, text_dim)` float32: row 0 the positive prompt, row 1 the empty prompt, both
  zero-padded to the longer (the DiT zero-pads to `text_len` anyway, so this changes nothing).

  Without a file (random-weight runs) both rows are zeros. Without `need_empty` a file
  that lacks `empty` gives a zero row 1, which training then never selects.
  """
  if not path:
    return np.zeros((2, text_len, text_dim), np.float32)
  keys = ("positive", "empty") if need_empty else ("positive",)
  p = load(path, text_dim, keys, text_len, optional=("empty",))
  empty = p.get("empty", np.zeros((1, text_dim), np.float32))
  n = max(p["positive"].shape[0], empty.shape[0])
  out = np.zeros((2, n, text_dim), np.float32)
  out[0, :p["positive"].shape[0]] = p["positive"]
  out[1, :empty.shape[0]] = empty
  return out


def save(path: str | os.PathLike, **arrays: np.ndarray) -> Path:
  """Writes the arrays as float32 into `path` (`.npz` added if missing) atomically."""
  unknown = set(arrays) - set(KEYS)
  if unknown:
    raise PromptError(f"{path}: unknown prompt keys {sorted(unknown)} (known: {', '.join(KEYS)})")
  out = Path(path)
  if out.suffix != ".npz":
    out = out.with_suffix(out.suffix + ".npz")
  out.parent.mkdir(parents=True, exist_ok=True)
  with atomic.replacing(out) as tmp:
    np.savez(tmp, **{k: np.asarray(v, np.float32) for k, v in arrays.items()})
  return out
