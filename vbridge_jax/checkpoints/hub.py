"""Hugging Face repository ids where a model path is taken: fetch only the files a command reads.

A converter argument that is not an existing local path and reads
`org/name[@revision][/path/in/repo]` (as `from_pretrained` and the official Wan2.2 scripts
take it: `Wan-AI/Wan2.2-TI2V-5B`, `desimfj/V-Bridge@main`,
`Wan-AI/Wan2.2-TI2V-5B/Wan2.2_VAE.pth`) is fetched into the Hugging Face cache with
`huggingface_hub.snapshot_download` and replaced by the local snapshot folder (or the file or
folder `path/in/repo` inside it). Only the files that the command reads are asked for, as
`allow_patterns` (`CONVERT`, `prompts_needs`, `TOKENIZER`): convert never fetches the 11 GB umT5
encoder, encode_prompts never the DiT. The revision is a branch, a tag or a commit hash
(no `/`: for a pull request's `refs/pr/N` give its commit hash).

`snapshot_download` does the rest, unchanged: `HF_HOME` / `HF_HUB_CACHE`, `HF_HUB_OFFLINE`
(the cached snapshot is used as it is), `HF_TOKEN` or a saved login (no token is passed, so
its own lookup holds), resuming an interrupted download, and progress bars. Its errors
(an unknown or gated repository, a missing revision, offline with nothing cached, the network)
become one-line `CheckpointError`s naming the id.

A path whose first component exists locally (`checkpoints/wan22` when `checkpoints/` is a
folder here) is a local path with a typo, never an id; so is anything starting with `/`, `.`
or `~`.
"""

from __future__ import annotations

import dataclasses
import logging
import re
import tempfile
from pathlib import Path, PurePosixPath
from typing import Callable, Sequence

from vbridge_jax.utils.errors import CheckpointError, OutputError


@dataclasses.dataclass(frozen=True)
class Group:
  """One `snapshot_download` call: `allow` and `ignore` patterns (fnmatch, where `*` also
  matches `/`), relative to the folder the argument names."""

  allow: tuple[str, ...]
  ignore: tuple[str, ...] = ()


@dataclasses.dataclass(frozen=True)
class Needs:
  """What a command reads from a repository: `groups` under the folder the argument names;
  when the argument names a folder inside the repository, also `own` (that folder being the
  component itself) and `beside` (relative to its parent); when it names a file, that file
  and `beside`."""

  groups: tuple[Group, ...]
  own: tuple[Group, ...] = ()
  beside: tuple[Group, ...] = ()


_WEIGHTS = ("config.json", "*.safetensors", "*.safetensors.index.json")
# convert/wan_to_jax.py reads (checkpoints.dit.find, checkpoints.vae.find, convert._source_info):
# the original Wan2.2 / V-Bridge / `export --format wan` layout at the root (config.json, its
# safetensors and index, Wan2.2_VAE.pth, an export's model.json), root files only (`*/*`
# ignored, so no text_encoder/*.safetensors); and the diffusers `transformer/` and `vae/`.
CONVERT = Needs(
  (
    Group(_WEIGHTS + ("model.json", "Wan2.2_VAE.pth"), ("*/*",)),
    Group(tuple(f"{d}/{p}" for d in ("transformer", "vae") for p in _WEIGHTS)),
  )
)
# convert/encode_prompts.py reads (checkpoints.umt5.locate): the original umT5 .pth with its
# tokenizer in google/umt5-xxl/, or diffusers' text_encoder/ and tokenizer/ (or a
# text_encoder/ folder named itself, with tokenizer/ beside it).
PROMPT_ENCODER = ("models_t5_umt5-xxl-enc-bf16.pth", "text_encoder/*")
PROMPT_TOKENIZER = ("google/umt5-xxl/*", "tokenizer/*")


def prompts_needs(tokenizer_given: bool = False) -> Needs:
  """encode_prompts' files; with `--tokenizer` given, no tokenizer from the encoder's repo."""
  tok = () if tokenizer_given else PROMPT_TOKENIZER
  return Needs((Group(PROMPT_ENCODER + tok),), own=(Group(_WEIGHTS, ("*/*",)),), beside=(Group(tok),) if tok else ())


# A tokenizer folder of its own (`--tokenizer google/umt5-xxl`): its JSON and SentencePiece
# files, not the weights beside them.
TOKENIZER = Needs((Group(("*.json", "*.model"), ("*/*",)),))

# A `path/in/repo` with one of these suffixes names a file: that file alone is fetched (and,
# with `beside`, the patterns around it, relative to its folder).
FILE_SUFFIXES = (".pth", ".pt", ".safetensors", ".bin", ".json", ".model")

_PART = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
_REVISION = re.compile(r"[A-Za-z0-9._-]+")


@dataclasses.dataclass(frozen=True)
class RepoRef:
  repo_id: str
  revision: str | None = None
  subpath: str = ""  # inside the repository; "" for its root

  def __str__(self) -> str:
    rev = f"@{self.revision}" if self.revision else ""
    return f"{self.repo_id}{rev}{'/' + self.subpath if self.subpath else ''}"


def parse(arg: str | Path) -> RepoRef | None:
  """The repository an argument names, or None when it is (or must be) a local path."""
  text = str(arg)
  if not text or text[0] in "/.~" or "\\" in text or Path(text).exists():
    return None
  parts = text.split("/")
  if len(parts) < 2 or Path(parts[0]).exists() or any(p in ("", ".", "..") for p in parts):
    return None
  org, name_rev, sub = parts[0], parts[1], parts[2:]
  name, at, revision = name_rev.partition("@")
  if not (_PART.fullmatch(org) and _PART.fullmatch(name)) or "--" in org + "/" + name:
    return None
  if at and not _REVISION.fullmatch(revision):
    return None
  if any("@" in p for p in sub):
    return None
  return RepoRef(f"{org}/{name}", revision or None, "/".join(sub))


def check_output(path: str | Path, flag: str = "--out", folder: bool = False) -> Path:
  """One-line `OutputError` unless `path` (a file, or with `folder` a folder) can be written:
  checked before an hour of fetching or encoding, not after. Creates nothing."""
  path = Path(path)
  if path.exists() and (not path.is_dir() if folder else not path.is_file()):
    kind = "not a folder" if folder else "not a file"
    raise OutputError(f"{flag} {path}: exists and is {kind}")
  base = path if folder and path.is_dir() else path.parent
  while not base.exists() and base != base.parent:  # the first folder that will hold it
    base = base.parent
  if not base.is_dir():
    raise OutputError(f"{flag} {path}: {base} is not a folder")
  try:
    tempfile.TemporaryFile(dir=base).close()  # (root on a read-only mount fails here too)
  except OSError as e:
    raise OutputError(f"{flag} {path}: cannot write in {base} ({e.strerror or e})") from None
  return path


def _prefixed(groups: Sequence[Group], folder: str) -> list[Group]:
  if not folder:
    return list(groups)
  return [Group(tuple(f"{folder}/{p}" for p in g.allow), tuple(f"{folder}/{p}" for p in g.ignore)) for g in groups]


def plan(ref: RepoRef, needs: Needs) -> list[Group]:
  """The `snapshot_download` calls for `ref` (see `Needs`)."""
  if not ref.subpath:
    return list(needs.groups)
  sub = PurePosixPath(ref.subpath)
  parent = "" if str(sub.parent) == "." else str(sub.parent)
  if sub.suffix in FILE_SUFFIXES:
    return [Group((str(sub),)), *_prefixed(needs.beside, parent)]
  return [*_prefixed(needs.groups + needs.own, str(sub)), *_prefixed(needs.beside, parent)]


class _NoMatchFilter(logging.Filter):
  """Drops snapshot_download's 'No files matched' warning: a layout's group that matches
  nothing (the root files of a diffusers repository) is expected."""

  def filter(self, record: logging.LogRecord) -> bool:
    return not str(record.getMessage()).startswith("No files matched")


def _reason(e: BaseException) -> str:
  lines = [line.strip() for line in str(e).splitlines() if line.strip()]
  return " ".join(lines[:1])[:300] or type(e).__name__


def _hub_error(ref: RepoRef, revision: str | None, e: BaseException) -> CheckpointError:
  from huggingface_hub import constants
  from huggingface_hub import errors as hub_errors

  at = f"{ref.repo_id}@{revision or 'main'}"
  cache = constants.HF_HUB_CACHE
  incomplete = getattr(hub_errors, "IncompleteSnapshotError", ())
  if isinstance(e, hub_errors.GatedRepoError):
    msg = (
      f"{ref.repo_id} is gated on the Hugging Face Hub: accept its terms at "
      f"https://huggingface.co/{ref.repo_id}, then log in (`hf auth login`) or set HF_TOKEN"
    )
  elif isinstance(e, hub_errors.RepositoryNotFoundError):
    msg = (
      f"no local path, and the Hugging Face Hub has no repository {ref.repo_id} that this "
      "login can read (a private one needs `hf auth login` or HF_TOKEN)"
    )
  elif isinstance(e, hub_errors.RevisionNotFoundError):
    msg = f"the Hugging Face repository {ref.repo_id} has no revision {revision!r}"
  elif incomplete and isinstance(e, incomplete):
    msg = (
      f"the cached snapshot of {at} in {cache} is incomplete and the Hub cannot be "
      f"reached ({'HF_HUB_OFFLINE is set' if constants.HF_HUB_OFFLINE else 'network'})"
    )
  elif isinstance(e, hub_errors.LocalEntryNotFoundError):
    why = "HF_HUB_OFFLINE is set" if constants.HF_HUB_OFFLINE else "the Hub cannot be reached"
    msg = f"no local path, and {at} is not in the Hugging Face cache {cache} ({why})"
  elif isinstance(e, hub_errors.OfflineModeIsEnabled):
    msg = f"{at} is not fully in the Hugging Face cache {cache} and HF_HUB_OFFLINE is set"
  elif isinstance(e, hub_errors.HFValidationError):
    msg = f"no such file or folder, nor a valid Hugging Face repository id ({_reason(e)})"
  elif isinstance(e, hub_errors.HfHubHTTPError):
    msg = f"fetching {at} from the Hugging Face Hub failed ({_reason(e)})"
  elif isinstance(e, OSError):
    msg = (
      f"fetching {at} into the Hugging Face cache {cache} failed "
      f"({e.strerror or _reason(e)}{': ' + str(e.filename) if e.filename else ''})"
    )
  else:
    msg = f"fetching {at} from the Hugging Face Hub failed ({type(e).__name__}: {_reason(e)})"
  return CheckpointError(f"{ref}: {msg}")


def _is_hub_failure(e: BaseException) -> bool:
  """Errors of the download itself (the hub's, the network's, the disk's), not bugs here."""
  module = type(e).__module__ or ""
  return isinstance(e, (OSError, ValueError)) or module.split(".")[0] in (
    "huggingface_hub",
    "httpx",
    "httpx2",
    "httpcore",
    "requests",
    "urllib3",
  )


def fetch(ref: RepoRef, needs: Needs, log: Callable[[str], None] = print) -> Path:
  """Fetches `ref` with one `snapshot_download` per group (all at the commit the first one
  resolved) and returns the local path `ref` names inside the snapshot."""
  try:
    import huggingface_hub
  except ImportError:
    raise CheckpointError(
      f"{ref}: fetching from the Hugging Face Hub needs huggingface_hub (pip install -e '.[convert]')"
    ) from None
  revision = ref.revision
  folder = None
  hub_log = logging.getLogger("huggingface_hub._snapshot_download")
  quiet = _NoMatchFilter()
  for group in plan(ref, needs):
    hub_log.addFilter(quiet)
    try:
      folder = Path(
        huggingface_hub.snapshot_download(
          ref.repo_id, revision=revision, allow_patterns=list(group.allow), ignore_patterns=list(group.ignore) or None
        )
      )
    except Exception as e:  # noqa: BLE001  (only the download's own failures, below)
      if not _is_hub_failure(e):
        raise
      raise _hub_error(ref, ref.revision, e) from None
    finally:
      hub_log.removeFilter(quiet)
    revision = folder.name  # the snapshot's commit: every later group reads the same one
  assert folder is not None
  path = folder / ref.subpath if ref.subpath else folder
  if not path.exists():
    raise CheckpointError(
      f"{ref}: the Hugging Face repository {ref.repo_id} (commit {folder.name[:12]}) has no {ref.subpath}"
    )
  log(f"{ref}: Hugging Face snapshot {folder.name[:12]} at {path}")
  return path


def resolve(arg: str | Path, needs: Needs, log: Callable[[str], None] = print) -> Path:
  """`arg` as a local path: itself when it exists or is no repository id, else its fetched
  snapshot (see the module docstring)."""
  ref = parse(arg)
  if ref is None:
    return Path(arg)
  return fetch(ref, needs, log)
