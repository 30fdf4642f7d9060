"""Data: synthetic degradations, few-shot sets, TFDS builders (no TensorFlow), Grain pipeline.

Modules: `degrade` (FoundIR's 20 categories + RealCE), `files` (pair scanning, decoding,
`DataError`), `fewshot` (`python -m vbridge_jax.data.fewshot`), `builders` (TFDS
`paired_folders`, `foundir`, `realce`), `prepare` (`python -m vbridge_jax.data.prepare`),
`clips` (pseudo-temporal clips), `pipeline` (`make_dataset`, `make_iterator`).
Importing this package imports neither TFDS nor Grain.
"""

from vbridge_jax.data.degrade import CATEGORIES, FOUNDIR_CATEGORIES, REALCE_CATEGORY
from vbridge_jax.utils.errors import DataError

__all__ = ["CATEGORIES", "FOUNDIR_CATEGORIES", "REALCE_CATEGORY", "DataError"]
