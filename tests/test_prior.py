"""The video prior: built on first use, cached by content, reused; `init_from="prior:..."`."""

import pytest

from vbridge_jax.checkpoints import load_dit
from vbridge_jax.checkpoints.model_info import read_model_info
from vbridge_jax.configs import curriculum
from vbridge_jax.training import prior, setup, trainer


def test_built_once_then_reused(test_prior):
  said = []
  again = trainer.ensure_prior("test", log=said.append)
  assert again == test_prior and len(said) == 1 and said[0].startswith("video prior: reusing")
  assert read_model_info(test_prior).codec == "pixel"
  cfg = prior.prior_config("test")
  assert load_dit(test_prior).config.dim == 384
  assert test_prior.parent.name == f"test-{prior.prior_key(cfg)}"


def test_the_key_follows_the_recipe_not_the_printing():
  a, b = prior.prior_config("test"), prior.prior_config("test")
  b.progress = not a.progress
  b.num_devices = 3
  assert prior.prior_key(a) == prior.prior_key(b)
  b.optim.lr = 1.0
  assert prior.prior_key(a) != prior.prior_key(b)
  assert prior.prior_key(prior.prior_config("tiny")) != prior.prior_key(a)


def test_a_prior_init_is_checked_without_building_it():
  c = curriculum.get_config("tiny")
  assert c.init_from == "prior:tiny"
  setup.check_config(c)  # a known variant: nothing is built
  assert setup.dit_config(c).dim == 384 and setup.pixel_multiple(c) == 8
  c.init_from = "prior:nope"
  with pytest.raises(setup.ConfigError, match="configs/prior.py has no variant 'nope'"):
    setup.check_config(c)
