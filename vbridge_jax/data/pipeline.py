"""The Grain input pipeline: LQ/GT pairs -> pseudo-temporal clips -> (global) batches.

    ds = make_dataset("demo_set/", size=512, frames=9, global_batch_size=8, seed=42,
                      sharding=NamedSharding(mesh, P(("data", "fsdp"))))
    it = iter(ds)                  # a grain DatasetIterator: get_state()/set_state()
    batch = next(it)               # {"clip": (8, 9, 512, 512, 3) f32, "category": (8,) i32}

Per element: decode LQ and GT (PIL; format from the data), check equal sizes, resize the
short side to `size` (bicubic, antialiased), take the same random `size`x`size` crop of
both, optionally flip both left-right. The resize is done only on the crop window
(PIL's `box`), which equals resize-then-crop but costs a fraction. Batches of
`global_batch_size / process_count` per process, each process reading only its shard of
the shuffled stream (`grain.sharding.ShardByJaxProcess`). The clip (`clips.make_clip`) is
built on the host in numpy, or, when a `NamedSharding` is given, on the devices from the
uint8 crops (9x less host work and transfer); frame 0 is the LQ crop and frame T-1 the GT
crop exactly. Checkpointing: the iterator's `get_state()`/`set_state()`, or through orbax
with `grain.checkpoint.CheckpointSave(it)` / `CheckpointRestore(it)` (see `save_iterator`,
`restore_iterator`); after a restore the next batch is the one that would have come.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any, Sequence

import grain
import jax
import numpy as np
import orbax.checkpoint as ocp
from absl import flags
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P
from PIL import Image

from vbridge_jax.data import clips, video_corpus
from vbridge_jax.data.files import IMAGE_EXTS, category_ids, category_name, open_image, scan_paired_folders
from vbridge_jax.utils.errors import DataError

log = logging.getLogger(__name__)
_FOREVER = 2 ** 40  # length of an endless (balanced) stream


# ---------------------------------------------------------------------------- sources


class FolderRecords:
  """Random-access records of a paired-folder tree: paths, category name, id."""

  def __init__(self, root: str | os.PathLike, skip_bad: bool = False):
    self.name = str(root)
    pairs = scan_paired_folders(root, skip_bad=skip_bad)
    self._items = [(p.lq, p.gt, p.category, p.id) for p in pairs]

  def __len__(self) -> int:
    return len(self._items)

  def __getitem__(self, i: int) -> dict[str, Any]:
    lq, gt, cat, id_ = self._items[i]
    return {"lq": lq, "gt": gt, "name": cat, "id": id_}

  def keys(self) -> list[tuple[str, str]]:
    return [(c, i) for _, _, c, i in self._items]


class TfdsRecords:
  """Random-access records of a prepared TFDS set (array_record), images left encoded."""

  def __init__(self, version_dir: str | os.PathLike, split: str | None):
    import tensorflow_datasets as tfds
    self.name = str(version_dir)
    try:
      builder = tfds.builder_from_directory(os.fspath(version_dir))
    except Exception as e:  # noqa: BLE001 - any TFDS failure is a bad data dir here
      raise DataError(f"not a prepared TFDS data set: {version_dir} ({e})") from e
    splits = sorted(builder.info.splits.keys())
    if split is None:
      split = splits[0] if len(splits) == 1 else "train"
    if split not in splits:
      raise DataError(f"no split {split!r} in {version_dir} (has {', '.join(splits)})")
    skip = tfds.decode.SkipDecoding()
    self._names = list(builder.info.features["category"].names)
    self._ds = builder.as_data_source(split=split, decoders={"lq": skip, "gt": skip})
    if len(self._ds) == 0:
      raise DataError(f"empty data set: split {split!r} of {version_dir}")

  def __len__(self) -> int:
    return len(self._ds)

  def __getitem__(self, i: int) -> dict[str, Any]:
    r = self._ds[i]
    id_ = r["id"].decode() if isinstance(r["id"], bytes) else str(r["id"])
    name = self._names[int(r["category"])]
    return {"lq": r["lq"], "gt": r["gt"], "name": name, "id": id_,
            "where": f"{self.name} record {i} ({name}/{id_})"}

  def keys(self) -> list[tuple[str, str]]:
    """(category, id) of every record; reads every record (images stay encoded)."""
    out = []
    for i in range(len(self._ds)):
      r = self[i]
      out.append((r["name"], r["id"]))
    return out


def _tfds_version_dir(path: Path) -> Path | None:
  if (path / "dataset_info.json").is_file():
    return path
  if path.is_dir():
    versions = sorted((p for p in path.iterdir() if (p / "dataset_info.json").is_file()),
                      key=lambda p: tuple(int(x) for x in p.name.split(".")
                                          if x.isdigit()))
    if versions:
      return versions[-1]
  return None


def open_records(source: str | os.PathLike, *, data_dir: str | os.PathLike | None = None,
                 split: str | None = None, skip_bad: bool = False):
  """`source`: a paired-folder tree, a TFDS version folder, or (with `data_dir`) a TFDS
  name such as `foundir` or `foundir:1.0.0`."""
  if data_dir is not None:
    name, _, version = str(source).partition(":")
    path = Path(data_dir) / name / version if version else Path(data_dir) / name
    found = _tfds_version_dir(path)
    if found is None:
      raise DataError(f"no prepared TFDS data set {source!r} under {data_dir}")
    return TfdsRecords(found, split)
  path = Path(source)
  if not path.exists():
    raise DataError(f"data source does not exist: {path}")
  found = _tfds_version_dir(path)
  if found is not None:
    return TfdsRecords(found, split)
  return FolderRecords(path, skip_bad=skip_bad)


class Records:
  """Several record sources as one, with global category ids (`files.category_ids`)
  and, for drift mode, LQ replaced by model outputs `<drift>/<category>/<id>.<ext>`."""

  def __init__(self, parts: Sequence[Any], drift_outputs: str | os.PathLike | None = None):
    self._parts = list(parts)
    self._offsets = np.cumsum([0] + [len(p) for p in self._parts])
    self._keys: list[tuple[str, str]] | None = None
    names = set()
    for p in self._parts:
      names |= set(getattr(p, "_names", None) or [k[0] for k in p.keys()])
    self.ids = category_ids(names)
    self._drift: dict[tuple[str, str], str] | None = None
    if drift_outputs is not None:
      self._drift = self._drift_paths(Path(drift_outputs))

  def __len__(self) -> int:
    return int(self._offsets[-1])

  def keys(self) -> list[tuple[str, str]]:
    if self._keys is None:
      self._keys = [k for p in self._parts for k in p.keys()]
    return self._keys

  def _drift_paths(self, root: Path) -> dict[tuple[str, str], str]:
    """Model outputs by pair: `<root>/<category>/<id>.*`, or as restore writes a paired tree,
    `<root>/<category folder>/LQ/<id>.*` (the folder may keep its number, `01Blur`)."""
    folders: dict[str, list[Path]] = {}
    for d in sorted(p for p in root.iterdir() if p.is_dir()) if root.is_dir() else []:
      folders.setdefault(category_name(d.name), []).append(d)
    out = {}
    for cat, id_ in self.keys():
      hits = [p for d in folders.get(cat, []) for sub in (d, d / "LQ") if sub.is_dir()
              for p in sorted(sub.glob(f"{id_}.*")) if p.suffix.lower() in IMAGE_EXTS]
      if not hits:
        raise DataError(f"drift mode: no model output {root}/{cat}/{id_}.* (or {cat}/LQ/{id_}.*) "
                        f"for pair {cat}/{id_}")
      out[(cat, id_)] = str(hits[0])
    return out

  def categories(self) -> np.ndarray:
    return np.array([self.ids[c] for c, _ in self.keys()], np.int32)

  def __getitem__(self, i: int) -> dict[str, Any]:
    k = int(np.searchsorted(self._offsets, i, side="right")) - 1
    r = dict(self._parts[k][i - int(self._offsets[k])])
    r["category"] = np.int32(self.ids[r.pop("name")])
    if self._drift is not None:
      r["lq"] = self._drift[(self.keys()[i][0], r["id"])]
    return r


class BalancedRecords:
  """An endless, category-balanced, shuffled view: each round of C draws holds every
  category once (in a seeded order); within a category pairs come in seeded cycles."""

  def __init__(self, records: Records, seed: int):
    self._records, self._seed = records, seed
    cats = records.categories()
    self._groups = [np.flatnonzero(cats == c) for c in np.unique(cats)]

  def __len__(self) -> int:
    return _FOREVER

  def __getitem__(self, i: int) -> dict[str, Any]:
    n = len(self._groups)
    rnd, pos = divmod(int(i), n)
    c = np.random.default_rng([self._seed, 0, rnd]).permutation(n)[pos]
    group = self._groups[c]
    cycle, j = divmod(rnd, len(group))
    order = np.random.default_rng([self._seed, 1, int(c), cycle]).permutation(len(group))
    return self._records[int(group[order[j]])]


# ---------------------------------------------------------------------- transforms


class CropPair(grain.transforms.RandomMap):
  """Decodes a pair, resizes the short side to `size`, same random `crop` x `crop` window
  (default `size`), optional flip. With probability `still` the LQ crop is replaced by the
  GT crop: a still clip, every frame the clean image (see `make_dataset`).

  Returns {"lq", "gt": uint8 (crop, crop, 3), "category": int32}, or None for a bad pair
  when `skip_bad` (a warning names it; the pipeline drops Nones).
  """

  def __init__(self, size: int, *, crop: int | None = None, flips: bool = True,
               allow_upscale: bool = False, skip_bad: bool = False, still: float = 0.0):
    self.size, self.crop, self.flips = size, crop or size, flips
    if self.crop > size:
      raise ValueError(f"crop {self.crop} is larger than the resized short side {size}")
    if not 0.0 <= still <= 1.0:
      raise ValueError(f"still (the still-clip fraction) must be in [0, 1], got {still}")
    self.still = still
    self.allow_upscale, self.skip_bad = allow_upscale, skip_bad
    self.skipped = 0

  def random_map(self, record: dict[str, Any], rng: np.random.Generator):
    try:
      return self._crop(record, rng)
    except DataError as e:
      if not self.skip_bad:
        raise
      self.skipped += 1
      log.warning("skipping bad pair (%d so far in this process): %s", self.skipped, e)
      return None

  def _crop(self, record: dict[str, Any], rng: np.random.Generator) -> dict[str, Any]:
    where = record.get("where")
    lq_name = where or (record["lq"] if isinstance(record["lq"], str) else None)
    gt_name = where or (record["gt"] if isinstance(record["gt"], str) else None)
    lq, gt = open_image(record["lq"], lq_name), open_image(record["gt"], gt_name)
    if lq.size != gt.size:
      raise DataError(f"LQ/GT size mismatch: {lq_name} {lq.size[0]}x{lq.size[1]} vs "
                      f"{gt_name} {gt.size[0]}x{gt.size[1]}")
    w, h = lq.size
    s = self.size
    if min(w, h) < s and not self.allow_upscale:
      raise DataError(f"crop size {s} is larger than the image {w}x{h}: {lq_name}, "
                      f"{gt_name} (set allow_upscale to enlarge small images)")
    scale = s / min(w, h)
    rw, rh = max(s, round(w * scale)), max(s, round(h * scale))
    c = self.crop
    x0, y0 = int(rng.integers(0, rw - c + 1)), int(rng.integers(0, rh - c + 1))
    flip = self.flips and bool(rng.integers(2))
    still = self.still > 0 and bool(rng.random() < self.still)
    out = []
    for im in (lq, gt):
      if rw == w and rh == h:
        im = im.crop((x0, y0, x0 + c, y0 + c))
      else:
        box = (x0 * w / rw, y0 * h / rh, (x0 + c) * w / rw, (y0 + c) * h / rh)
        im = im.resize((c, c), Image.BICUBIC, box=box)
      a = np.asarray(im, dtype=np.uint8)
      out.append(np.ascontiguousarray(a[:, ::-1]) if flip else a)
    if still:
      out[0] = out[1]
    return {"lq": out[0], "gt": out[1], "category": np.int32(record["category"])}


class HostClip(grain.transforms.Map):
  """Batch of uint8 pairs (or a video source's uint8 clips) -> {"clip": float32
  (B, T, S, S, 3) in [-1, 1], "category"} in numpy."""

  def __init__(self, frames: int):
    self.frames = frames

  def map(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    if "clip" in batch:  # a video source's uint8 frames
      clip = batch["clip"].astype(np.float32) / np.float32(127.5) - np.float32(1.0)
    else:
      clip = clips.make_clip(batch["lq"], batch["gt"], self.frames)
    return {"clip": clip, "category": batch["category"]}


class ToGlobal(grain.transforms.Map):
  """Process-local batch -> global jax.Arrays for `sharding` (of the rank-5 clip).

  With a NamedSharding the uint8 crops go to the devices and the clip is blended there;
  otherwise the host clip is placed as it is.
  """

  def __init__(self, sharding: jax.sharding.Sharding, frames: int):
    self.sharding, self.frames = sharding, frames
    if isinstance(sharding, NamedSharding):
      spec = tuple(sharding.spec) + (None,) * (5 - len(sharding.spec))
      self._pair = NamedSharding(sharding.mesh, P(spec[0], spec[2], spec[3], spec[4]))
      self._cat = NamedSharding(sharding.mesh, P(spec[0]))
      self._blend = jax.jit(lambda lq, gt: clips.make_clip(lq, gt, frames, xp=jax.numpy),
                            out_shardings=sharding)
    elif isinstance(sharding, jax.sharding.SingleDeviceSharding):
      self._pair, self._cat, self._blend = None, sharding, None
    else:
      raise ValueError(f"pass a NamedSharding or SingleDeviceSharding, got {sharding}")

  def map(self, batch: dict[str, np.ndarray]) -> dict[str, jax.Array]:
    put = jax.make_array_from_process_local_data
    if "clip" in batch:
      clip = put(self.sharding, batch["clip"])
    else:
      clip = self._blend(put(self._pair, batch["lq"]), put(self._pair, batch["gt"]))
    return {"clip": clip, "category": put(self._cat, batch["category"])}


# ------------------------------------------------------------------------ factories


def make_dataset(
    source: str | os.PathLike | Sequence[str | os.PathLike], *,
    size: int, frames: int, global_batch_size: int, seed: int, crop: int | None = None,
    data_dir: str | os.PathLike | None = None, split: str | None = None,
    sharding: jax.sharding.Sharding | None = None,
    flips: bool = True, balance: bool = False, still: float = 0.0,
    drift_outputs: str | os.PathLike | None = None,
    num_epochs: int | None = None, allow_upscale: bool = False, skip_bad: bool = False,
    worker_count: int = 0, worker_buffer_size: int = 2, read_threads: int = 4,
    prefetch_buffer_size: int = 16,
    shard_options: grain.sharding.ShardOptions | None = None,
) -> grain.IterDataset:
  """The training input pipeline as a grain IterDataset (iterate it for batches).

  Args:
    source: a paired-folder tree `<category>/{LQ,GT}/<id>.<ext>`, a prepared TFDS
      version folder, or with `data_dir` a TFDS name (`foundir`, `realce:1.0.0`); or a
      list of these, concatenated (global category ids, see `files.category_ids`); or
      `"video_corpus"`: the endless synthetic video corpus (`data/video_corpus.py`, seeded
      by `seed`, rendered at the crop size; the pair options do not apply; category 0).
    size: stage size S (short side resized to S, then an S x S crop).
    crop: a smaller square crop after that resize (e.g. the largest multiple of 32 <= S,
      which the VAE and the DiT's patch need); default S.
    frames: clip length T = 4k + 1; frame 0 = LQ, frame T-1 = GT.
    global_batch_size: batch over all processes; each process yields its
      `global_batch_size / process_count` rows (global arrays when `sharding` is given).
    seed: the whole stream (order, crops, flips) is a function of the seed.
    split: TFDS split (default: the only split, else `train`).
    sharding: the clip's sharding; then batches are global `jax.Array`s, otherwise numpy.
    flips: random left-right flips (the same on LQ and GT).
    balance: category-balanced endless stream (each round of C draws has every category).
    still: the fraction of samples whose LQ side is replaced by the GT crop, a still clip
      (every frame the clean image): it teaches a randomly initialised DiT to carry frame 0
      forward, which a pretrained video model already does.
    drift_outputs: drift-corrector mode; the LQ side is replaced by the base model's
      outputs `<drift_outputs>/<category>/<id>.<ext>` (use a short `frames`, e.g. 5).
    num_epochs: None = repeat forever (each epoch reshuffled); ignored with `balance`.
    allow_upscale: enlarge images whose short side is below S (else a DataError).
    skip_bad: skip bad pairs with a warning instead of raising DataError.
    worker_count: grain worker processes (0 = in-process, `read_threads` threads).
    shard_options: default `ShardByJaxProcess(drop_remainder=True)`.

  Yields:
    {"clip": float32 (B, T, S, S, 3) in [-1, 1], "category": int32 (B,)}.
  """
  clips.check_frames(frames)
  if size < 1:
    raise ValueError(f"size must be positive, got {size}")
  shard = shard_options or grain.sharding.ShardByJaxProcess(drop_remainder=True)
  if global_batch_size % shard.shard_count:
    raise ValueError(f"global batch {global_batch_size} is not divisible by the "
                     f"{shard.shard_count} processes")
  local_batch = global_batch_size // shard.shard_count
  sources = [source] if isinstance(source, (str, os.PathLike)) else list(source)
  if not sources:
    raise DataError("no data source given")
  corpus = str(sources[0]) == video_corpus.SOURCE_NAME
  if corpus:
    if len(sources) > 1 or drift_outputs is not None:
      raise DataError(f"data source {video_corpus.SOURCE_NAME!r} stands alone (no other "
                      "sources, no drift outputs)")
    # Endless and seeded record by record: no shuffle, no epochs, no crops or flips.
    ds = grain.MapDataset.source(video_corpus.VideoCorpus(seed, size=crop or size, frames=frames))
  else:
    ds = _pair_records(sources, size=size, crop=crop, flips=flips, balance=balance, still=still,
                       seed=seed, data_dir=data_dir, split=split, skip_bad=skip_bad,
                       drift_outputs=drift_outputs, num_epochs=num_epochs,
                       allow_upscale=allow_upscale)
  if shard.shard_count > 1:  # each process: its contiguous rows of every global batch
    rows = _ProcessRows(ds, global_batch_size, local_batch, shard.shard_index)
    ds = grain.MapDataset.range(len(ds) // global_batch_size * local_batch).map(rows)
  if skip_bad and not corpus:
    ds = ds.filter(_not_none)
  it = ds.to_iter_dataset(grain.ReadOptions(num_threads=read_threads,
                                            prefetch_buffer_size=prefetch_buffer_size))
  it = it.batch(local_batch, drop_remainder=True)
  device_blend = (sharding is not None and isinstance(sharding, jax.sharding.NamedSharding)
                  and not corpus)
  if not device_blend:
    it = it.map(HostClip(frames))
  if worker_count > 0:
    if not flags.FLAGS.is_parsed():  # grain reads absl flags; a library caller has none
      flags.FLAGS.mark_as_parsed()
    it = it.mp_prefetch(grain.MultiprocessingOptions(
        num_workers=worker_count, per_worker_buffer_size=worker_buffer_size))
  if sharding is not None:
    it = it.map(ToGlobal(sharding, frames))
  return it


def _pair_records(sources, *, size, crop, flips, balance, still, seed, data_dir, split,
                  skip_bad, drift_outputs, num_epochs, allow_upscale) -> grain.MapDataset:
  """The paired sources as a MapDataset of cropped uint8 pairs (shuffled or balanced)."""
  records = Records([open_records(s, data_dir=data_dir, split=split, skip_bad=skip_bad)
                     for s in sources], drift_outputs=drift_outputs)
  if balance:
    ds = grain.MapDataset.source(BalancedRecords(records, seed))
  else:
    ds = grain.MapDataset.source(records).shuffle(seed=seed).repeat(num_epochs)
  return ds.random_map(CropPair(size, crop=crop, flips=flips, allow_upscale=allow_upscale,
                                skip_bad=skip_bad, still=still), seed=seed + 1)


class _ProcessRows:
  """Local record j of process p is row `p * local + j % local` of global batch `j // local`,
  so the global batch assembled from all processes is, row for row, the one a single
  process would read (and does not depend on the number of processes)."""

  def __init__(self, ds: grain.MapDataset, global_batch: int, local_batch: int, index: int):
    self.ds, self.global_batch, self.local_batch, self.index = ds, global_batch, local_batch, index

  def __call__(self, j: int) -> Any:
    b, q = divmod(int(j), self.local_batch)
    return self.ds[b * self.global_batch + self.index * self.local_batch + q]


def _not_none(x: Any) -> bool:
  return x is not None


def make_iterator(source, **kwargs) -> grain.DatasetIterator:
  """`iter(make_dataset(source, **kwargs))`: a checkpointable grain DatasetIterator."""
  return iter(make_dataset(source, **kwargs))


def save_iterator(iterator: grain.DatasetIterator, directory: str | os.PathLike) -> None:
  """Saves the iterator state with orbax (one JSON file per process)."""
  with ocp.Checkpointer(grain.checkpoint.CheckpointHandler()) as ckpt:
    ckpt.save(os.path.abspath(directory), args=grain.checkpoint.CheckpointSave(iterator))


def restore_iterator(iterator: grain.DatasetIterator, directory: str | os.PathLike
                     ) -> grain.DatasetIterator:
  """Restores a state written by `save_iterator` (or an orbax manager item) in place."""
  with ocp.Checkpointer(grain.checkpoint.CheckpointHandler()) as ckpt:
    return ckpt.restore(os.path.abspath(directory),
                        args=grain.checkpoint.CheckpointRestore(iterator))

