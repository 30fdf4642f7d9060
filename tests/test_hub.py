"""Hugging Face repository ids as converter paths (vbridge_jax/checkpoints/hub.py), offline.

Each test builds a hub cache in huggingface_hub's own layout
(`HF_HOME/hub/models--org--name/snapshots/<commit>/...`, `refs/<branch or tag>` holding the
commit), sets HF_HOME and HF_HUB_OFFLINE, and converts from the id: the result must equal
converting the local folder. The patterns asked for are checked against listings of the real
repositories' files.
"""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import huggingface_hub
import jax
import numpy as np
import pytest
import torch
from flax import nnx
from huggingface_hub import constants
from huggingface_hub import errors as hub_errors
from huggingface_hub.utils import filter_repo_objects

from tests.conftest import REPO, load_script
from tests.test_convert_dit import write_wan_layout
from vbridge_jax.checkpoints import hub, load_dit, load_vae, vae
from vbridge_jax.models import DiTConfig, VAEConfig

COMMIT_A = "a" * 40
COMMIT_B = "b" * 40
TEXT_ENCODER_BYTES = 3 << 20  # a stand-in for the 11 GB umT5 .pth of the original layout


@pytest.fixture(scope="module")
def repos(tmp_path_factory):
  """Local repositories: `diffusers` (tiny_repo.py), `wan` (the same weights in the original
  layout, with a text encoder file and its tokenizer), `dit_b` (another DiT, seed 1)."""
  tiny = load_script("tiny_repo")
  root = tmp_path_factory.mktemp("repos")
  tiny.write(root / "diffusers", seed=0)
  dit = tiny.tiny_dit(0)
  cfg = DiTConfig.from_diffusers(json.loads((root / "diffusers" / "transformer" / "config.json").read_text()))
  wan = write_wan_layout(dit, cfg, root / "wan")
  vcfg = VAEConfig.from_diffusers(json.loads((root / "diffusers" / "vae" / "config.json").read_text()))
  sd = tiny.tiny_vae(0).state_dict()
  torch.save({wkey: sd[dkey].clone() for _, dkey, wkey, _, _ in vae.key_map(vcfg)}, wan / vae.WAN_FILE)
  (wan / "models_t5_umt5-xxl-enc-bf16.pth").write_bytes(b"\0" * TEXT_ENCODER_BYTES)
  shutil.copytree(root / "diffusers" / "tokenizer", wan / "google" / "umt5-xxl")
  (wan / "configuration.json").write_text("{}")
  tiny.tiny_dit(1).save_pretrained(root / "dit_b" / "transformer")
  return root


def _cache(home: Path, repo_id: str, snapshots: dict, refs: dict) -> Path:
  """A hub cache entry: snapshots {commit: local folder}, refs {name: commit}."""
  entry = home / "hub" / ("models--" + repo_id.replace("/", "--"))
  for commit, src in snapshots.items():
    shutil.copytree(src, entry / "snapshots" / commit)
  for name, commit in refs.items():
    (entry / "refs" / name).parent.mkdir(parents=True, exist_ok=True)
    (entry / "refs" / name).write_text(commit)
  return entry


@pytest.fixture
def offline(tmp_path, monkeypatch):
  """HF_HOME in tmp_path, offline; huggingface_hub reads both at import, so its constants
  are set too (the subprocess test below sets only the environment)."""
  home = tmp_path / "hf_home"
  monkeypatch.setenv("HF_HOME", str(home))
  monkeypatch.setenv("HF_HUB_OFFLINE", "1")
  monkeypatch.delenv("HF_HUB_CACHE", raising=False)
  monkeypatch.setattr(constants, "HF_HUB_CACHE", str(home / "hub"))
  monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
  return home


@pytest.fixture
def calls(monkeypatch):
  """Every snapshot_download call's arguments (the real function still runs)."""
  seen = []
  real = huggingface_hub.snapshot_download

  def spy(repo_id, **kw):
    seen.append((repo_id, kw))
    return real(repo_id, **kw)

  monkeypatch.setattr(huggingface_hub, "snapshot_download", spy)
  return seen


def _convert(*args):
  return load_script("wan_to_jax").main([str(a) for a in args])


def _params(out: Path) -> dict:
  flat = {}
  for name, loader in (("dit", load_dit), ("vae", load_vae)):
    if (out / name).is_dir():
      state = nnx.to_pure_dict(nnx.state(loader(out), nnx.Param))
      for path, leaf in jax.tree_util.tree_flatten_with_path(state)[0]:
        flat[(name, jax.tree_util.keystr(path))] = np.asarray(leaf)
  return flat


def _same(a: Path, b: Path) -> None:
  pa, pb = _params(a), _params(b)
  assert pa and pa.keys() == pb.keys()
  for k in pa:
    np.testing.assert_array_equal(pa[k], pb[k], err_msg=str(k))


# --------------------------------------------------------------------------- parsing, patterns


def test_parse(tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)
  assert hub.parse("Wan-AI/Wan2.2-TI2V-5B") == hub.RepoRef("Wan-AI/Wan2.2-TI2V-5B")
  assert hub.parse("desimfj/V-Bridge@v1.0") == hub.RepoRef("desimfj/V-Bridge", "v1.0")
  assert hub.parse(f"a/b@{COMMIT_A}/vae/x.json") == hub.RepoRef("a/b", COMMIT_A, "vae/x.json")
  assert str(hub.parse("a/b@main/vae")) == "a/b@main/vae"
  (tmp_path / "checkpoints").mkdir()
  (tmp_path / "org" / "name").mkdir(parents=True)
  for local in (
    "checkpoints/wan22",
    "org/name",
    "/abs/x",
    "./a/b",
    "../a/b",
    "~/a/b",
    "single",
    "a/b@",
    "a/b@x/y@z",
    "a--b/c",
    "a/b//c",
    "a/../b",
    "-a/b",
  ):
    assert hub.parse(local) is None, local
  assert hub.resolve("org/name", hub.CONVERT) == Path("org/name")  # local, nothing fetched


# What the Hub lists for the repositories the README names (the V-Bridge release is in the
# original Wan layout; a few files of it are guessed, as it may also hold other files).
WAN_OFFICIAL = [
  ".gitattributes",
  "README.md",
  "LICENSE.txt",
  "Wan2.2_VAE.pth",
  "assets/logo.png",
  "config.json",
  "configuration.json",
  "diffusion_pytorch_model-00001-of-00003.safetensors",
  "diffusion_pytorch_model-00002-of-00003.safetensors",
  "diffusion_pytorch_model-00003-of-00003.safetensors",
  "diffusion_pytorch_model.safetensors.index.json",
  "examples/i2v_input.JPG",
  "google/umt5-xxl/special_tokens_map.json",
  "google/umt5-xxl/spiece.model",
  "google/umt5-xxl/tokenizer.json",
  "google/umt5-xxl/tokenizer_config.json",
  "models_t5_umt5-xxl-enc-bf16.pth",
]
WAN_DIFFUSERS = [
  ".gitattributes",
  "README.md",
  "model_index.json",
  "scheduler/scheduler_config.json",
  "text_encoder/config.json",
  "text_encoder/model-00001-of-00003.safetensors",
  "text_encoder/model-00002-of-00003.safetensors",
  "text_encoder/model-00003-of-00003.safetensors",
  "text_encoder/model.safetensors.index.json",
  "tokenizer/special_tokens_map.json",
  "tokenizer/spiece.model",
  "tokenizer/tokenizer.json",
  "tokenizer/tokenizer_config.json",
  "transformer/config.json",
  "transformer/diffusion_pytorch_model-00001-of-00002.safetensors",
  "transformer/diffusion_pytorch_model-00002-of-00002.safetensors",
  "transformer/diffusion_pytorch_model.safetensors.index.json",
  "vae/config.json",
  "vae/diffusion_pytorch_model.safetensors",
]
VBRIDGE = [
  ".gitattributes",
  "README.md",
  "config.json",
  "diffusion_pytorch_model.safetensors",
  "model.json",
  "text_encoder/model.safetensors",
  "extra/notes.txt",
]


def _selected(files, groups):
  return {
    f
    for g in groups
    for f in filter_repo_objects(files, allow_patterns=list(g.allow), ignore_patterns=list(g.ignore) or None)
  }


def test_patterns_take_exactly_what_each_command_reads():
  ref = hub.RepoRef("o/n")
  convert = hub.plan(ref, hub.CONVERT)
  assert _selected(WAN_OFFICIAL, convert) == {
    "Wan2.2_VAE.pth",
    "config.json",
    "diffusion_pytorch_model.safetensors.index.json",
    *(f"diffusion_pytorch_model-0000{i}-of-00003.safetensors" for i in (1, 2, 3)),
  }
  assert _selected(WAN_DIFFUSERS, convert) == {f for f in WAN_DIFFUSERS if f.startswith(("transformer/", "vae/"))}
  assert _selected(VBRIDGE, convert) == {"config.json", "diffusion_pytorch_model.safetensors", "model.json"}
  vae_only = hub.plan(hub.RepoRef("o/n", None, "Wan2.2_VAE.pth"), hub.CONVERT)
  assert _selected(WAN_OFFICIAL, vae_only) == {"Wan2.2_VAE.pth"}
  assert _selected(WAN_DIFFUSERS, hub.plan(hub.RepoRef("o/n", None, "vae"), hub.CONVERT)) == {
    "vae/config.json",
    "vae/diffusion_pytorch_model.safetensors",
  }
  prompts = hub.prompts_needs()
  encoder_and_tokenizer = {f for f in WAN_DIFFUSERS if f.startswith(("text_encoder/", "tokenizer/"))}
  assert _selected(WAN_OFFICIAL, hub.plan(ref, prompts)) == {
    "models_t5_umt5-xxl-enc-bf16.pth",
    *(f for f in WAN_OFFICIAL if f.startswith("google/")),
  }
  assert _selected(WAN_DIFFUSERS, hub.plan(ref, prompts)) == encoder_and_tokenizer
  pth = hub.RepoRef("o/n", None, "models_t5_umt5-xxl-enc-bf16.pth")  # the file + its tokenizer
  assert _selected(WAN_OFFICIAL, hub.plan(pth, prompts)) == _selected(WAN_OFFICIAL, hub.plan(ref, prompts))
  folder = hub.RepoRef("o/n", None, "text_encoder")  # the folder itself + tokenizer/ beside it
  assert _selected(WAN_DIFFUSERS, hub.plan(folder, prompts)) == encoder_and_tokenizer
  given = hub.prompts_needs(tokenizer_given=True)
  assert _selected(WAN_DIFFUSERS, hub.plan(ref, given)) == {f for f in WAN_DIFFUSERS if f.startswith("text_encoder/")}
  assert _selected(WAN_DIFFUSERS, hub.plan(folder, given)) == _selected(WAN_DIFFUSERS, hub.plan(ref, given))
  umt5_repo = [
    "config.json",
    "pytorch_model.bin",
    "spiece.model",
    "special_tokens_map.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "sub/x.json",
  ]
  assert _selected(umt5_repo, hub.plan(ref, hub.TOKENIZER)) == set(umt5_repo) - {"pytorch_model.bin", "sub/x.json"}


# --------------------------------------------------------------------------- converting from ids


@pytest.mark.parametrize("layout", ["diffusers", "wan"])
def test_convert_from_id_equals_local_folder(repos, offline, calls, tmp_path, layout):
  _cache(offline, f"Wan-AI/{layout}", {COMMIT_A: repos / layout}, {"main": COMMIT_A})
  assert _convert("--src", repos / layout, "--out", tmp_path / "local") == 0
  assert _convert("--src", f"Wan-AI/{layout}", "--out", tmp_path / "hub") == 0
  assert (tmp_path / "hub" / "dit").is_dir() and (tmp_path / "hub" / "vae").is_dir()
  _same(tmp_path / "local", tmp_path / "hub")
  assert [c[0] for c in calls] == [f"Wan-AI/{layout}"] * 2
  assert calls[0][1]["revision"] is None and calls[1][1]["revision"] == COMMIT_A  # pinned
  for _, kw in calls:
    assert "token" not in kw  # HF_TOKEN and saved logins stay in force
    assert not any("text_encoder" in p or "umt5" in p for p in kw["allow_patterns"])


def test_revisions_and_vae_file_alone(repos, offline, calls, tmp_path):
  _cache(
    offline, "o/dit", {COMMIT_A: repos / "diffusers", COMMIT_B: repos / "dit_b"}, {"main": COMMIT_A, "v1": COMMIT_B}
  )
  assert _convert("--src", repos / "dit_b", "--out", tmp_path / "b") == 0
  for rev in ("v1", COMMIT_B):
    assert _convert("--src", f"o/dit@{rev}", "--out", tmp_path / rev) == 0
    _same(tmp_path / "b", tmp_path / rev)
  assert _convert("--src", "o/dit@main/transformer", "--out", tmp_path / "main") == 0
  assert _convert("--src", repos / "diffusers" / "transformer", "--out", tmp_path / "a") == 0
  _same(tmp_path / "a", tmp_path / "main")
  _cache(offline, "Wan-AI/wan", {COMMIT_A: repos / "wan"}, {"main": COMMIT_A})
  calls.clear()
  assert _convert("--src", "Wan-AI/wan/Wan2.2_VAE.pth", "--out", tmp_path / "vae") == 0
  assert [kw["allow_patterns"] for _, kw in calls] == [["Wan2.2_VAE.pth"]]
  # The file alone is fetched and converted, as a local path to it is: the VAE, not the DiT
  # that the cached snapshot also holds after an earlier fetch.
  assert _convert("--src", repos / "wan" / vae.WAN_FILE, "--out", tmp_path / "vae_local") == 0
  _same(tmp_path / "vae_local", tmp_path / "vae")
  assert sorted(p.name for p in (tmp_path / "vae").iterdir() if p.is_dir()) == ["vae"]


def test_fetch_takes_only_the_files_asked_for(repos, tmp_path, monkeypatch):
  """Online, as the Hub does it: a fake snapshot_download that copies the files the patterns
  select from a 'remote' repository holding a large text encoder: convert gets none of it."""
  remote = repos / "wan"
  snap = tmp_path / "snap" / COMMIT_A

  def fake(repo_id, *, revision=None, allow_patterns=None, ignore_patterns=None, **kw):
    files = [str(p.relative_to(remote)) for p in remote.rglob("*") if p.is_file()]
    for f in filter_repo_objects(files, allow_patterns=allow_patterns, ignore_patterns=ignore_patterns):
      (snap / f).parent.mkdir(parents=True, exist_ok=True)
      shutil.copy(remote / f, snap / f)
    return str(snap)

  monkeypatch.setattr(huggingface_hub, "snapshot_download", fake)
  assert _convert("--src", "Wan-AI/Wan2.2-TI2V-5B", "--out", tmp_path / "out") == 0
  got = sorted(str(p.relative_to(snap)) for p in snap.rglob("*") if p.is_file())
  assert got == sorted(
    [
      "config.json",
      "diffusion_pytorch_model.safetensors.index.json",
      vae.WAN_FILE,
      "diffusion_pytorch_model-00001-of-00002.safetensors",
      "diffusion_pytorch_model-00002-of-00002.safetensors",
    ]
  )
  _convert("--src", remote, "--out", tmp_path / "local")
  _same(tmp_path / "local", tmp_path / "out")


def _hub_exc(cls, msg="404 Client Error. Repository Not Found for url: https://huggingface.co/x"):
  e = cls.__new__(cls)  # without an HTTP response object
  Exception.__init__(e, msg)
  return e


def test_errors_are_one_line_naming_the_id(repos, offline, tmp_path, capsys, monkeypatch):
  def run(src, out="out"):
    rc = _convert("--src", src, "--out", tmp_path / out)
    err = capsys.readouterr().err
    assert rc == 1 and len(err.strip().splitlines()) == 1 and err.startswith("error: "), err
    assert not (tmp_path / out).exists()
    return err

  err = run("Wan-AI/Wan2.2-TI2V-5B")  # offline, nothing cached
  assert "Wan-AI/Wan2.2-TI2V-5B" in err and "not in the Hugging Face cache" in err and "HF_HUB_OFFLINE" in err
  _cache(offline, "o/n", {COMMIT_A: repos / "dit_b"}, {"main": COMMIT_A})
  assert "o/n@v9" in run("o/n@v9")  # a revision the cache does not have
  assert "has no nope" in run("o/n/nope")
  (tmp_path / "file").write_text("x")
  seen = []
  monkeypatch.setattr(huggingface_hub, "snapshot_download", lambda *a, **k: seen.append(a))
  assert "--out" in run("o/n", out="file/sub") and not seen  # refused before any download
  cases = [
    (hub_errors.RepositoryNotFoundError, "has no repository o/n"),
    (hub_errors.GatedRepoError, "is gated"),
    (hub_errors.RevisionNotFoundError, "has no revision"),
    (hub_errors.HfHubHTTPError, "fetching o/n@main from the Hugging Face Hub failed"),
  ]
  for cls, msg in cases:
    monkeypatch.setattr(huggingface_hub, "snapshot_download", lambda *a, e=_hub_exc(cls), **k: (_ for _ in ()).throw(e))
    assert msg in run("o/n"), cls

  def full(*a, **k):
    raise OSError(28, "No space left on device")

  monkeypatch.setattr(huggingface_hub, "snapshot_download", full)
  assert "No space left on device" in run("o/n")


def test_through_the_environment(repos, tmp_path):
  """HF_HOME and HF_HUB_OFFLINE as a user sets them, read by huggingface_hub at import."""
  home = tmp_path / "hf"
  _cache(home, "o/wan", {COMMIT_A: repos / "wan"}, {"main": COMMIT_A})
  env = {k: v for k, v in os.environ.items() if not k.startswith("HF_")}
  env |= {"HF_HOME": str(home), "HF_HUB_OFFLINE": "1", "JAX_PLATFORMS": "cpu"}
  proc = subprocess.run(
    [
      sys.executable,
      str(REPO / "convert" / "wan_to_jax.py"),
      "--src",
      "o/wan/Wan2.2_VAE.pth",
      "--out",
      str(tmp_path / "out"),
    ],
    env=env,
    capture_output=True,
    text=True,
    check=False,
  )
  assert proc.returncode == 0, proc.stderr
  assert "o/wan/Wan2.2_VAE.pth: Hugging Face snapshot aaaaaaaaaaaa" in proc.stdout
  proc = subprocess.run(
    [sys.executable, str(REPO / "convert" / "wan_to_jax.py"), "--src", "o/other", "--out", str(tmp_path / "out2")],
    env=env,
    capture_output=True,
    text=True,
    check=False,
  )
  assert proc.returncode == 1 and str(home / "hub") in proc.stderr and "HF_HUB_OFFLINE" in proc.stderr


def test_encode_prompts_from_id(repos, offline, calls, tmp_path):
  _cache(offline, "Wan-AI/diffusers", {COMMIT_A: repos / "diffusers"}, {"main": COMMIT_A})
  enc = load_script("encode_prompts").main
  assert enc(["--text_encoder", str(repos / "diffusers"), "--out", str(tmp_path / "local.npz")]) == 0
  assert enc(["--text_encoder", "Wan-AI/diffusers", "--out", str(tmp_path / "hub.npz")]) == 0
  local, fetched = np.load(tmp_path / "local.npz"), np.load(tmp_path / "hub.npz")
  for k in ("positive", "negative", "empty"):
    np.testing.assert_array_equal(local[k], fetched[k])
  assert not any("transformer" in p or "vae" in p for _, kw in calls for p in kw["allow_patterns"])
  calls.clear()  # a tokenizer given as an id: the encoder's repository supplies none
  assert (
    enc(
      [
        "--text_encoder",
        "Wan-AI/diffusers/text_encoder",
        "--tokenizer",
        "Wan-AI/diffusers/tokenizer",
        "--out",
        str(tmp_path / "tok.npz"),
      ]
    )
    == 0
  )
  np.testing.assert_array_equal(np.load(tmp_path / "tok.npz")["positive"], local["positive"])
  asked = [p for _, kw in calls for p in kw["allow_patterns"]]
  assert "tokenizer/*.json" in asked and "tokenizer/*" not in asked
  assert not any(p.startswith(("transformer", "vae")) for p in asked)
