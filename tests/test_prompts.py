"""convert/encode_prompts.py on a tiny random umT5, in the diffusers and the original Wan layouts."""

import os
import re
import stat

import numpy as np
import pytest
import torch

from tests.conftest import load_script
from vbridge_jax.checkpoints import umt5


def _cli():
  return load_script("encode_prompts").main


def _tokenizer(folder):
  """The tiny Unigram tokenizer of convert/tiny_repo.py, trained on the prompts and two more
  sentences."""
  return load_script("tiny_repo").tiny_tokenizer(folder, extra=["a cat on a mat", "rain & fog"])


def _hf_to_wan(state):
  """Hand-written inverse of the key map (Wan's T5Encoder names), for the .pth fixture."""
  out = {}
  names = {"layer.0.layer_norm": "norm1", "layer.0.SelfAttention.q": "attn.q",
           "layer.0.SelfAttention.k": "attn.k", "layer.0.SelfAttention.v": "attn.v",
           "layer.0.SelfAttention.o": "attn.o",
           "layer.0.SelfAttention.relative_attention_bias": "pos_embedding.embedding",
           "layer.1.layer_norm": "norm2", "layer.1.DenseReluDense.wi_0": "ffn.gate.0",
           "layer.1.DenseReluDense.wi_1": "ffn.fc1", "layer.1.DenseReluDense.wo": "ffn.fc2"}
  for k, v in state.items():
    if k == "shared.weight":
      out["token_embedding.weight"] = v
    elif k == "encoder.final_layer_norm.weight":
      out["norm.weight"] = v
    elif m := re.match(r"encoder\.block\.(\d+)\.(.+)\.weight$", k):
      out[f"blocks.{m.group(1)}.{names[m.group(2)]}.weight"] = v
  return out


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
  from transformers import UMT5Config, UMT5EncoderModel

  root = tmp_path_factory.mktemp("umt5")
  tok = _tokenizer(root / "tokenizer")
  torch.manual_seed(0)
  cfg = UMT5Config(vocab_size=len(tok), d_model=16, d_kv=4, d_ff=24, num_layers=2, num_heads=4,
                   relative_attention_num_buckets=8, relative_attention_max_distance=128,
                   feed_forward_proj="gated-gelu", dropout_rate=0.0, is_encoder_decoder=False)
  model = UMT5EncoderModel(cfg).eval()
  with torch.no_grad():  # norms away from 1 so that a swapped norm would show
    for name, p in model.named_parameters():
      if "layer_norm" in name:
        p.uniform_(0.5, 1.5)
  model.save_pretrained(root / "text_encoder")
  wan = root / "wan"
  (wan / "google").mkdir(parents=True)
  tok.save_pretrained(wan / "google" / "umt5-xxl")
  sd = {k: v.clone() for k, v in model.state_dict().items()}
  torch.save(_hf_to_wan(sd), wan / umt5.WAN_PTH_NAME)
  return root, model, tok


def _direct(model, tok, text):
  """Unpadded forward of the cleaned text: what the real tokens' states must equal."""
  ids = tok(umt5.clean_prompt(text), return_tensors="pt").input_ids
  assert ids[0, -1].item() == tok.eos_token_id
  with torch.no_grad():
    return model(input_ids=ids).last_hidden_state[0].numpy()


def test_key_map_covers_every_tensor(tiny):
  _, model, _ = tiny
  wan = _hf_to_wan(model.state_dict())
  hf = {umt5.wan_to_hf_key(k) for k in wan}
  assert None not in hf
  assert hf == set(model.state_dict()) - {"encoder.embed_tokens.weight"}
  assert umt5.wan_to_hf_key("blocks.0.attn.x.weight") is None


def test_diffusers_layout(tiny, tmp_path):
  root, model, tok = tiny
  out = tmp_path / "prompts.npz"
  assert _cli()(["--text-encoder", str(root), "--out", str(out)]) == 0
  data = np.load(out)
  assert set(data.files) == {"positive", "negative", "empty"}
  assert data["empty"].shape[0] == 1  # "" is the end-of-sequence token alone
  for key, text in (("positive", umt5.VBRIDGE_POSITIVE), ("negative", umt5.VBRIDGE_NEGATIVE),
                    ("empty", "")):
    ref = _direct(model, tok, text)
    assert data[key].dtype == np.float32 and data[key].shape == ref.shape
    np.testing.assert_allclose(data[key], ref, atol=1e-5, rtol=0)
  assert data["positive"].shape[0] != data["negative"].shape[0]
  # Custom prompts, given a text_encoder/ folder directly.
  assert _cli()(["--text-encoder", str(root / "text_encoder"), "--out", str(out),
                 "--prompt", "a  cat &amp; a mat", "--negative", "rain"]) == 0
  data = np.load(out)
  np.testing.assert_allclose(data["positive"], _direct(model, tok, "a cat & a mat"), atol=1e-5)


def test_wan_layout_matches(tiny, tmp_path):
  root, model, tok = tiny
  out = tmp_path / "wan.npz"
  assert _cli()(["--text-encoder", str(root / "wan"), "--out", str(out)]) == 0
  data = np.load(out)
  np.testing.assert_allclose(data["positive"], _direct(model, tok, umt5.VBRIDGE_POSITIVE), atol=1e-5)
  np.testing.assert_allclose(data["negative"], _direct(model, tok, umt5.VBRIDGE_NEGATIVE), atol=1e-5)


def test_errors(tiny, tmp_path, capsys):
  root, model, _ = tiny
  bad = tmp_path / "bad"
  bad.mkdir()
  sd = _hf_to_wan(model.state_dict())
  del sd["blocks.1.ffn.fc1.weight"]
  sd["blocks.0.extra.weight"] = torch.zeros(2)
  torch.save(sd, bad / "enc.pth")
  rc = _cli()(["--text-encoder", str(bad / "enc.pth"), "--tokenizer", str(root / "tokenizer"),
               "--out", str(tmp_path / "x.npz")])
  err = capsys.readouterr().err
  assert rc == 1 and "blocks.0.extra.weight" in err and "wi_1" in err and len(err.splitlines()) == 1
  assert not (tmp_path / "x.npz").exists()
  rc = _cli()(["--text-encoder", str(tmp_path / "nope"), "--out", str(tmp_path / "x.npz")])
  assert rc == 1 and "no such file" in capsys.readouterr().err
  rc = _cli()(["--text-encoder", str(bad / "enc.pth"), "--out", str(tmp_path / "x.npz")])
  assert rc == 1 and "pass --tokenizer" in capsys.readouterr().err


def test_prompt_loader_errors_name_the_file_and_key(tmp_path):
  """One loader for restore and training: every fault is a one-line PromptError."""
  from vbridge_jax.data import prompts
  good = np.ones((3, 4), np.float32)
  path = prompts.save(tmp_path / "p", positive=good, negative=good[:2], empty=good[:1])
  assert path.name == "p.npz"
  pos, neg = prompts.load_prompts(path, 4)
  assert pos.shape == (3, 4) and neg.shape == (2, 4)
  cases = {
      "missing.npz": (None, "no such prompt file"),
      "text.npz": (b"not a zip", "not a prompt file"),
      "nopos.npz": (dict(negative=good), "'positive'"),
      "wide.npz": (dict(positive=np.ones((3, 5)), negative=good), "'positive' has shape"),
      "nan.npz": (dict(positive=good * np.nan, negative=good), "non-finite"),
  }
  for name, (content, msg) in cases.items():
    f = tmp_path / name
    if isinstance(content, bytes):
      f.write_bytes(content)
    elif content is not None:
      np.savez(f, **content)
    with pytest.raises(prompts.PromptError, match=msg) as e:
      prompts.load_prompts(f, 4)
    assert name in str(e.value) and "\n" not in str(e.value)
  with pytest.raises(prompts.PromptError, match="tokens"):
    prompts.load(path, 4, ("positive",), text_len=2)
  with pytest.raises(prompts.PromptError, match="'empty'.*encode_prompts"):
    np.savez(tmp_path / "old.npz", positive=good, negative=good)
    prompts.training_context(tmp_path / "old.npz", 4, 8, need_empty=True)


@pytest.mark.parametrize("case", ["directory", "parent_is_file", "read_only_parent"])
def test_unwritable_out_is_refused_before_encoding(tiny, tmp_path, capsys, monkeypatch, case):
  """Issue 23 item 15: --out is checked before the encoder is loaded, not after an hour."""
  root, _, _ = tiny
  loaded = []
  monkeypatch.setattr(umt5, "load_diffusers_encoder", lambda *a: loaded.append(a))
  if case == "directory":
    out = tmp_path / "p.npz"
    out.mkdir()
  elif case == "parent_is_file":
    (tmp_path / "file").write_text("x")
    out = tmp_path / "file" / "sub" / "p.npz"
  else:
    if os.geteuid() == 0:
      pytest.skip("root writes into a read-only folder")
    (tmp_path / "ro").mkdir(mode=0o500)
    out = tmp_path / "ro" / "p.npz"
  rc = _cli()(["--text-encoder", str(root), "--out", str(out)])
  err = capsys.readouterr().err
  assert rc == 1 and err.startswith("error: --out ") and str(out) in err and len(err.splitlines()) == 1
  assert not loaded


def test_output_takes_the_umask(tiny, tmp_path):
  """Issue 23 item 20: the file gets the user's umask (0644 under 022), not mkstemp's 0600."""
  root, _, _ = tiny
  old = os.umask(0o022)
  try:
    assert _cli()(["--text-encoder", str(root), "--out", str(tmp_path / "p")]) == 0
  finally:
    os.umask(old)
  assert stat.S_IMODE((tmp_path / "p.npz").stat().st_mode) == 0o644
  assert [p.name for p in tmp_path.iterdir()] == ["p.npz"]  # no temporary file left
