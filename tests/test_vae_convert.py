"""Converting the Wan2.2 VAE from both PyTorch layouts through convert/wan_to_jax.py."""

import re
import sys
from pathlib import Path

import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("diffusers")

from tests.test_vae import assert_close, diffusers_tiny, reference, to_cl, video  # noqa: E402
from vbridge_jax.checkpoints import (  # noqa: E402
  CheckpointError,
  convert_path,
  load_vae,  # noqa: E402
)
from vbridge_jax.checkpoints import vae as vae_ckpt  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "convert"))
import wan_to_jax  # noqa: E402

_RES = {"norm1": "residual.0", "conv1": "residual.2", "norm2": "residual.3", "conv2": "residual.6",
        "conv_shortcut": "shortcut"}


def to_original(key: str, num_res_blocks: int = 2) -> str:
  """diffusers key -> Wan2.2_VAE.pth key: the inverse of diffusers' `convert_vae_22`, written
  here independently of vbridge_jax.checkpoints.vae, block by block."""
  parts = key.split(".")
  top = parts[0]
  if top == "quant_conv":
    return ".".join(["conv1"] + parts[1:])
  if top == "post_quant_conv":
    return ".".join(["conv2"] + parts[1:])
  rest = parts[1:]
  name = rest[0]

  def resnet(sub):  # ['norm1', 'gamma'] -> 'residual.0.gamma'
    return [_RES[sub[0]]] + sub[1:]

  if name == "conv_in":
    new = ["conv1"] + rest[1:]
  elif name == "norm_out":
    new = ["head", "0"] + rest[1:]
  elif name == "conv_out":
    new = ["head", "2"] + rest[1:]
  elif name == "mid_block":
    kind, idx, sub = rest[1], int(rest[2]), rest[3:]
    new = ["middle", "1"] + sub if kind == "attentions" else ["middle", str(2 * idx)] + resnet(sub)
  elif name in ("down_blocks", "up_blocks"):
    group = "downsamples" if name == "down_blocks" else "upsamples"
    blk, kind = rest[1], rest[2]
    if kind == "resnets":
      new = [group, blk, group, rest[3]] + resnet(rest[4:])
    else:  # downsampler / upsampler: the entry after the residual blocks
      last = num_res_blocks if name == "down_blocks" else num_res_blocks + 1
      new = [group, blk, group, str(last)] + rest[3:]
  else:
    raise KeyError(key)
  return ".".join([top] + new)


ORIGINAL_PATTERN = re.compile(
    r"^(conv[12]\.(weight|bias)"
    r"|(en|de)coder\.conv1\.(weight|bias)"
    r"|(en|de)coder\.head\.(0\.gamma|2\.(weight|bias))"
    r"|(en|de)coder\.middle\.[02]\.(residual\.(0|3)\.gamma|residual\.(2|6)\.(weight|bias))"
    r"|(en|de)coder\.middle\.1\.(norm\.gamma|(to_qkv|proj)\.(weight|bias))"
    r"|encoder\.downsamples\.\d\.downsamples\.\d\.(residual\.(0|3)\.gamma|(residual\.(2|6)|shortcut|resample\.1|time_conv)\.(weight|bias))"
    r"|decoder\.upsamples\.\d\.upsamples\.\d\.(residual\.(0|3)\.gamma|(residual\.(2|6)|shortcut|resample\.1|time_conv)\.(weight|bias)))$")


@pytest.fixture(scope="module")
def sources(tmp_path_factory):
  root = tmp_path_factory.mktemp("vae_sources")
  ref = diffusers_tiny(seed=3)
  ref.save_pretrained(root / "repo" / "vae")  # a diffusers repository root holding vae/
  orig = {to_original(k): v.clone() for k, v in ref.state_dict().items()}
  assert len(orig) == len(ref.state_dict())
  (root / "wan").mkdir()
  torch.save(orig, root / "wan" / "Wan2.2_VAE.pth")
  return ref, root, orig


def test_original_keys_follow_the_release_layout(sources):
  _, _, orig = sources
  bad = [k for k in orig if not ORIGINAL_PATTERN.match(k)]
  assert not bad, bad[:5]
  assert "encoder.downsamples.0.downsamples.2.resample.1.weight" in orig
  assert "encoder.downsamples.1.downsamples.2.time_conv.weight" in orig
  assert "decoder.upsamples.0.upsamples.3.time_conv.weight" in orig
  assert "decoder.upsamples.2.upsamples.0.shortcut.weight" in orig


def test_converter_map_agrees_with_the_independent_inverse(sources):
  ref, _, _ = sources
  from vbridge_jax.models.configs import VAEConfig
  keys = [(d, w) for _, d, w, _, _ in vae_ckpt.key_map(VAEConfig.tiny())]
  assert sorted(d for d, _ in keys) == sorted(ref.state_dict())
  assert all(w == to_original(d) for d, w in keys)


@pytest.mark.parametrize("layout", ["wan", "diffusers"])
def test_convert_and_load_match_diffusers(sources, tmp_path, layout):
  ref, root, _ = sources
  src = root / ("wan" if layout == "wan" else "repo")
  out = tmp_path / "out"
  assert wan_to_jax.main(["--src", str(src), "--out", str(out)]) == 0
  assert (out / "vae" / "config.json").is_file() and not (out / "dit").exists()
  x = video(1, 32, 48, seed=5)
  z_ref, y_ref = reference(ref, x)
  for path in (out, out / "vae"):
    model = load_vae(path)
    ez = assert_close(model.encode(jnp.asarray(to_cl(x))), z_ref, f"{layout} encode")
    ey = assert_close(model.decode(jnp.asarray(z_ref)), y_ref, f"{layout} decode")
  if layout == "diffusers":  # the config (and its latent statistics) comes from config.json
    np.testing.assert_allclose(model.config.latents_std, ref.config.latents_std)
  print(f"{layout}: relative max errors encode/decode {ez:.2e} / {ey:.2e}")


def test_bfloat16_storage(sources, tmp_path):
  ref, root, _ = sources
  assert wan_to_jax.main(["--src", str(root / "repo" / "vae"), "--out", str(tmp_path), "--dtype", "bfloat16"]) == 0
  model = load_vae(tmp_path, param_dtype="bfloat16")
  assert model.decoder.conv_out.kernel[...].dtype == jnp.bfloat16


def test_find(sources, tmp_path):
  _, root, _ = sources
  f = vae_ckpt.find
  assert f(root / "wan" / "Wan2.2_VAE.pth").layout == "wan"
  assert f(root / "wan").path == root / "wan" / "Wan2.2_VAE.pth"
  assert f(root / "repo").layout == "diffusers" and f(root / "repo").path == root / "repo" / "vae"
  assert f(root / "repo" / "vae").path == root / "repo" / "vae"
  assert f(tmp_path) is None
  (tmp_path / "config.json").write_text('{"_class_name": "WanTransformer3DModel"}')
  assert f(tmp_path) is None
  (tmp_path / "notes.pth").write_bytes(b"")
  assert f(tmp_path / "notes.pth") is None


def _write_bad(root: Path, orig: dict, change) -> Path:
  sd = dict(orig)
  change(sd)
  folder = root / "bad"
  folder.mkdir()
  torch.save(sd, folder / "Wan2.2_VAE.pth")
  return folder


@pytest.mark.parametrize("case", ["missing", "unexpected", "shape"])
def test_bad_checkpoints_name_the_key_and_write_nothing(sources, tmp_path, case, capsys):
  _, _, orig = sources
  key = "decoder.upsamples.1.upsamples.2.residual.6.weight"
  if case == "missing":
    change = lambda sd: sd.pop(key)  # noqa: E731
  elif case == "unexpected":
    key = "decoder.upsamples.1.upsamples.9.residual.6.weight"
    change = lambda sd: sd.__setitem__(key, torch.zeros(1))  # noqa: E731
  else:
    change = lambda sd: sd.__setitem__(key, torch.zeros(3, 3))  # noqa: E731
  src = _write_bad(tmp_path, orig, change)
  out = tmp_path / "out"
  with pytest.raises(CheckpointError, match=re.escape(key)):
    convert_path(src, out, log=lambda _: None)
  assert not (out / "vae").exists()
  assert wan_to_jax.main(["--src", str(src), "--out", str(out)]) == 1
  assert key in capsys.readouterr().err
  assert not (out / "vae").exists()
  with pytest.raises(CheckpointError):
    load_vae(out)
