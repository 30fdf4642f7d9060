"""The miniature refuses a rerun with other arguments than its phases were made with, and
senseless counts (issue 23 item 8): before, other --base_steps skipped the export, other
--categories printed the old table, and --base_steps -5 trained about 300 steps."""

import json
import re

import pytest

from vbridge_jax import miniature


@pytest.mark.parametrize("kw, what", [
    (dict(base_steps=-5), "--base_steps=-5"), (dict(drift_steps=0), "--drift_steps=0"),
    (dict(restore_steps=2.5), "--restore_steps=2.5"), (dict(per_category=True), "per_category")])
def test_senseless_counts_refused(tmp_path, capsys, kw, what):
  with pytest.raises(miniature.ConfigError, match=what):
    miniature.run(tmp_path / "wd", log=lambda _: None, **kw)
  assert not (tmp_path / "wd").exists()
  assert miniature.main(["--workdir", str(tmp_path / "wd"), "--base_steps", "-5"]) == 1
  assert "--base_steps=-5 must be" in capsys.readouterr().err


def test_rerun_with_other_arguments_refused(tmp_path, capsys):
  wd = tmp_path / "wd"
  kw = dict(base_steps=2, categories=("Blur",), per_category=1, prior_variant="test")
  inputs = dict(base_steps=2, drift_steps=None, restore_steps=None, per_category=1,
                heldout_per_category=None, drift_per_category=None, size=None,
                base_stages=None, drift_stage=None, drift_init="prior", categories=["Blur"],
                prior_variant="test")
  wd.mkdir()
  (wd / miniature.INPUTS).write_text(json.dumps({"inputs": inputs}))  # a run made these
  for change, what in ((dict(base_steps=3), "base_steps 2 (now 3)"),
                       (dict(categories=("Blur", "Noise")), "categories ['Blur'] (now ['Blur', 'Noise'])")):
    with pytest.raises(miniature.ConfigError, match=r"other arguments: .*" + re.escape(what)):
      miniature.run(wd, log=lambda _: None, **(kw | change))
  assert sorted(p.name for p in wd.iterdir()) == [miniature.INPUTS]  # nothing built
