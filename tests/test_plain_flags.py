"""Plain flags for the everyday fields (issue 25 item 3): restore's `--model`, `--drift`,
`--prompts`, `--input`, `--output` and evaluate's `--pred`, `--gt`, `--out`, `--protocol`,
each the same as its `--config.FIELD` (utils/cli.py `plain_flags`)."""

from __future__ import annotations

import json

import pytest

from tests.test_data_helpers import save, smooth_image
from vbridge_jax import evaluate, restore
from vbridge_jax.utils import cli
from vbridge_jax.utils.errors import ConfigError


@pytest.mark.parametrize("names", [restore.PLAIN, evaluate.PLAIN])
def test_each_plain_flag_is_its_config_field(names):
  for name in names:
    assert cli.plain_flags([f"--{name}=a/b"], names) == [f"--config.{name}=a/b"]
    assert cli.plain_flags([f"--{name}", "a b"], names) == [f"--config.{name}=a b"]
    assert cli.plain_flags([f"--config.{name}", "x"], names) == [f"--config.{name}=x"]
    # both spellings with one value are fine; with two they are an error naming both
    assert cli.plain_flags([f"--{name}=x", f"--config.{name}=x"], names) == [
        f"--config.{name}=x", f"--config.{name}=x"]
    with pytest.raises(ConfigError, match=f"--{name}='x' and --config.{name}='y' disagree"):
      cli.plain_flags([f"--config.{name}=y", f"--{name}", "x"], names)
    with pytest.raises(ConfigError, match=f"--{name} needs a value"):
      cli.plain_flags([f"--{name}"], names)
    with pytest.raises(ConfigError, match=f"--{name} needs a value"):
      cli.plain_flags([f"--{name}", "--config.steps=2"], names)


def test_other_flags_are_left_alone():
  argv = ["--config=configs/restore.py:tiny", "--config.steps=2", "--modelx=1", "--seed=3", "-v",
          "--", "--model=z"]
  assert cli.plain_flags(argv, restore.PLAIN) == argv
  assert cli.plain_flags(["--model=a", "--", "--model=b"], restore.PLAIN) == [
      "--config.model=a", "--", "--model=b"]


def test_restore_parses_plain_flags():
  cfg = restore.parse(["--config=configs/restore.py:tiny", "--model", "m", "--drift=d",
                       "--prompts=p.npz", "--input", "in", "--output=out", "--config.steps=3"])
  assert (cfg.model, cfg.drift, cfg.prompts, cfg.input, cfg.output, cfg.steps) == (
      "m", "d", "p.npz", "in", "out", 3)


def test_evaluate_parses_plain_flags():
  cfg = evaluate.parse(["--pred=p", "--gt", "g", "--out=o", "--protocol", "foundir"])
  assert (cfg.pred, cfg.gt, cfg.out, cfg.protocol) == ("p", "g", "o", "foundir")


def test_conflicts_are_one_line_and_status_1(capsys):
  assert restore.main(["--model=a", "--config.model=b"]) == 1
  err = capsys.readouterr().err.strip().splitlines()
  assert len(err) == 1 and "--model='a' and --config.model='b'" in err[0]
  assert evaluate.main(["--gt=a", "--config.gt=b"]) == 1
  err = capsys.readouterr().err.strip().splitlines()
  assert len(err) == 1 and "--gt='a' and --config.gt='b'" in err[0]


@pytest.mark.parametrize("command", [restore, evaluate])
def test_help_shows_both_spellings(command, capsys):
  with pytest.raises(SystemExit) as e:
    command.main(["--help"])
  assert e.value.code == 0
  out = capsys.readouterr().out
  for name in command.PLAIN:
    assert f"--{name}=VALUE" in out and f"the same as --config.{name}" in out
    assert f"--config.{name}=" in out and f"(or --{name})" in out


def test_evaluate_end_to_end_with_plain_flags(tmp_path):
  img = smooth_image(0, 24, 24)
  save(tmp_path / "gt" / "Blur" / "GT" / "a.png", img)
  save(tmp_path / "pred" / "Blur" / "a.png", img)
  assert evaluate.main(["--pred", str(tmp_path / "pred"), f"--gt={tmp_path / 'gt'}",
                        "--out", str(tmp_path / "scores"), "--protocol=foundir",
                        "--config.progress=false"]) == 0
  assert json.loads((tmp_path / "scores" / "metrics.json").read_text())["protocol"] == "foundir"
