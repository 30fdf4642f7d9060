"""TFDS builders for LQ/GT pair sets, writing array_record with no TensorFlow installed.

Builders (registered names): `paired_folders` (any `<category>/{LQ,GT}` tree),
`foundir` (the FoundIR test layout, split `test`), `realce` (splits `train`/`test`, 13mm
and 26mm LQ -> 52mm GT). Features: `lq`, `gt` (uint8 RGB images), `category`
(ClassLabel), `id` (text). Construct with the source tree, then prepare:

    b = FoundIR(manual_dir=TREE, data_dir=OUT)     # or PairedFolders / RealCE
    b.download_and_prepare()                       # OUT/foundir/1.0.0/*.array_record*

Images are stored as their original bytes when they decode as 8-bit RGB PNG or JPEG
with no EXIF rotation (nothing re-encoded), otherwise re-encoded as PNG as
`files.open_image` decodes them (orientation applied). Every pair is fully decoded while
building, so truncated files, LQ/GT size mismatches, missing partners and empty
categories stop the build with a one-line `DataError` naming the file(s), or are skipped
with `skip_bad=True` and counted once, in one warning for the whole build. TensorFlow is never imported: TFDS
encodes bytes without it and reads array_record through `tfds.data_source` (PIL decoding).
The category names are fixed when the builder is constructed (they come from the tree for
`paired_folders`); read a prepared set with `tfds.builder_from_directory`, which needs
neither the tree nor this module.
"""

from __future__ import annotations

import io
import logging
import os
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import tensorflow_datasets as tfds
from etils import epath
from PIL import Image

from vbridge_jax.data.degrade import FOUNDIR_CATEGORIES, REALCE_CATEGORY
from vbridge_jax.data.files import (
  DataError,
  Pair,
  has_orientation,
  open_image,
  realce_splits,
  scan_foundir,
  scan_paired_folders,
  scan_realce,
)

log = logging.getLogger(__name__)

_INSTRUCTIONS = "Pass the source tree as manual_dir (prepare --manual_dir DIR)."


def encoded_rgb(path: str) -> tuple[bytes, tuple[int, int]]:
  """(bytes to store, (width, height)); decodes fully to catch truncated files."""
  data = Path(path).read_bytes()
  im = open_image(data, name=path)
  with Image.open(io.BytesIO(data)) as raw:
    keep = raw.format in ("PNG", "JPEG") and raw.mode == "RGB"
  if keep and not has_orientation(data):
    return data, im.size
  buf = io.BytesIO()
  im.save(buf, format="PNG", compress_level=1)
  return buf.getvalue(), im.size


class _PairBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
  """Shared logic: category names, features, validated example generation."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "First release."}
  MANUAL_DOWNLOAD_INSTRUCTIONS = _INSTRUCTIONS
  # TFDS's own lookup needs `importlib_resources`, absent on Python >= 3.9.
  code_path = epath.Path(__file__)

  def __init__(self, *, manual_dir: str | os.PathLike | None = None,
               skip_bad: bool = False, file_format: str = "array_record", **kwargs: Any):
    self._tree = Path(manual_dir) if manual_dir is not None else None
    self._skip_bad = skip_bad
    self.problems: list[str] = []  # what skip_bad skipped, reported once after the build
    super().__init__(file_format=file_format, **kwargs)

  @property
  def skipped(self) -> int:
    return len(self.problems)

  def _category_names(self) -> list[str]:
    raise NotImplementedError

  def _info(self) -> tfds.core.DatasetInfo:
    return tfds.core.DatasetInfo(
        builder=self,
        description="LQ/GT image-restoration pairs (vbridge_jax).",
        features=tfds.features.FeaturesDict({
            "lq": tfds.features.Image(shape=(None, None, 3), dtype=np.uint8),
            "gt": tfds.features.Image(shape=(None, None, 3), dtype=np.uint8),
            "category": tfds.features.ClassLabel(names=self._category_names()),
            "id": tfds.features.Text(),
        }),
        supervised_keys=("lq", "gt"),
    )

  def _root(self, dl_manager) -> Path:
    root = self._tree
    if root is None and dl_manager is not None:
      root = Path(dl_manager.manual_dir)
    if root is None or not root.is_dir():
      raise DataError(f"source tree is not a directory: {root}")
    return root

  def download_and_prepare(self, *args, **kwargs):
    if self._tree is not None and "download_config" not in kwargs:
      kwargs["download_config"] = tfds.download.DownloadConfig(manual_dir=str(self._tree))
    self.problems.clear()
    out = super().download_and_prepare(*args, **kwargs)
    if self.problems:
      log.warning("%s: skipped %d bad item(s) in total; first: %s", self.name,
                  len(self.problems), self.problems[0])
    return out

  def _examples(self, pairs: list[Pair]) -> Iterator[tuple[str, dict[str, Any]]]:
    names = self.info.features["category"].names
    for p in pairs:
      try:
        lq, lq_size = encoded_rgb(p.lq)
        gt, gt_size = encoded_rgb(p.gt)
        if lq_size != gt_size:
          raise DataError(f"LQ/GT size mismatch: {p.lq} {lq_size[0]}x{lq_size[1]} vs "
                          f"{p.gt} {gt_size[0]}x{gt_size[1]}")
      except DataError as e:
        if not self._skip_bad:
          raise
        self.problems.append(str(e))
        continue
      yield f"{p.category}/{p.id}", {"lq": lq, "gt": gt,
                                     "category": names.index(p.category), "id": p.id}


class PairedFolders(_PairBuilder):
  """Any `<category>/{LQ,GT}/<id>.<ext>` tree; one split, `train`."""

  def _category_names(self) -> list[str]:
    if self._tree is None:
      return []
    return sorted({p.category for p in scan_paired_folders(
        self._tree, skip_bad=self._skip_bad, check_sizes=False, problems=[])})  # quiet

  def _split_generators(self, dl_manager):
    pairs = scan_paired_folders(self._root(dl_manager), skip_bad=self._skip_bad,
                                problems=self.problems)
    return {"train": self._examples(pairs)}

  def _generate_examples(self, *args):  # pragma: no cover - splits use _examples
    raise NotImplementedError


class Foundir(_PairBuilder):
  """The FoundIR test layout `<NN><Category>/{GT,LQ}/<id>.<ext>`; split `test`."""

  def _category_names(self) -> list[str]:
    return list(FOUNDIR_CATEGORIES)

  def _split_generators(self, dl_manager):
    pairs = scan_foundir(self._root(dl_manager), skip_bad=self._skip_bad,
                         problems=self.problems)
    return {"test": self._examples(pairs)}

  def _generate_examples(self, *args):  # pragma: no cover
    raise NotImplementedError


class Realce(_PairBuilder):
  """RealCE `{train,test}/{13mm,26mm,52mm}/<name>`: ids `<name>_x4`, `<name>_x2`."""

  def _category_names(self) -> list[str]:
    return [REALCE_CATEGORY]

  def _split_generators(self, dl_manager):
    root = self._root(dl_manager)
    return {split: self._examples(scan_realce(root, split, skip_bad=self._skip_bad,
                                              problems=self.problems))
            for split in realce_splits(root)}

  def _generate_examples(self, *args):  # pragma: no cover
    raise NotImplementedError


BUILDERS: dict[str, type[_PairBuilder]] = {
    "paired_folders": PairedFolders, "foundir": Foundir, "realce": Realce}


def builder(name: str, **kwargs: Any) -> _PairBuilder:
  """`builder("foundir", manual_dir=..., data_dir=...)`."""
  if name not in BUILDERS:
    raise DataError(f"unknown builder {name!r}; known: {', '.join(BUILDERS)}")
  return BUILDERS[name](**kwargs)
