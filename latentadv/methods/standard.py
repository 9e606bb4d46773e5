"""Standard training: cross-entropy on clean inputs (the cost reference, no robustness)."""

import ml_collections

from latentadv.methods import base
from latentadv.methods import common


def default_config() -> ml_collections.ConfigDict:
  """No hyper-parameters beyond the optimizer's."""
  return ml_collections.ConfigDict()


def loss(apply_fn, params, model_state, batch, rng, config):
  """Clean cross-entropy of batch['image'] (B, H, W, C); see methods/common.py for the contract."""
  del config
  return common.train_on(apply_fn, params, model_state, batch['image'], batch['label'], rng)


METHOD = base.Method(name='standard', loss=loss, default_config=default_config)
