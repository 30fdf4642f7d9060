"""What a component converter is: `Found` (a component located on disk) and `Converter`.

Each component module (`checkpoints.dit`, `checkpoints.vae`) defines one `Converter`;
`checkpoints.convert` runs them all.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Callable


@dataclasses.dataclass(frozen=True)
class Found:
  """A component located on disk: its name, layout (e.g. 'wan', 'diffusers') and files."""

  name: str
  layout: str
  path: Path


@dataclasses.dataclass(frozen=True)
class Converter:
  name: str
  find: Callable[[Path], Found | None]
  convert: Callable[[Found, Any], tuple[dict, dict]]
