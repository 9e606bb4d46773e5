"""Noisy-natural training of a soft-quantised network (Zheng et al. 2018): an interpretation.

The paper was withdrawn and has no public code; this is our reading of its description. The
model must have the soft-quantisation input layer (config.model.soft_quant.levels > 0, see
models/soft_quant.py). Each step trains on the cross-entropy at x + n clipped to [0, 1], with
n ~ N(0, sigma^2) ('gaussian') or n ~ U(-eps, eps) ('uniform', eps = config.method.eps): one
forward and one backward pass, no attack. Its robustness must be measured with BPDA through
the quantiser (the evaluator's straight-through surrogate), not only with plain gradients.
"""

import jax
import jax.numpy as jnp
import ml_collections

from latentadv.methods import base
from latentadv.methods import common

NOISES = ('gaussian', 'uniform')


def default_config() -> ml_collections.ConfigDict:
  """noise: 'gaussian' or 'uniform'; sigma: the Gaussian standard deviation (pixel units)."""
  return ml_collections.ConfigDict(dict(noise='gaussian', sigma=16 / 255))


def noisy_input(x: jax.Array, rng: jax.Array, noise: str, sigma, eps) -> jax.Array:
  """x (B, H, W, C) plus N(0, sigma^2) or U(-eps, eps) noise per element, clipped to [0, 1]."""
  if noise == 'gaussian':
    n = sigma * jax.random.normal(rng, x.shape, x.dtype)
  elif noise == 'uniform':
    n = jax.random.uniform(rng, x.shape, x.dtype, -eps, eps)
  else:
    raise ValueError(f'noise must be one of {NOISES}, got {noise!r}.')
  return jnp.clip(x + n, 0.0, 1.0)


def loss(apply_fn, params, model_state, batch, rng, config):
  """Cross-entropy at the noisy version of batch['image'] (B, H, W, C)."""
  noise_rng, train_rng = jax.random.split(rng)
  x = noisy_input(batch['image'], noise_rng, config.soft_quant.noise, config.soft_quant.sigma,
                  config.eps)
  return common.train_on(apply_fn, params, model_state, x, batch['label'], train_rng)


def check(config, require: base.Require):
  """The noise is one of NOISES, and the model has the soft-quantisation layer it trains."""
  noise = config.method.soft_quant.noise
  require(noise in NOISES, 'method.soft_quant.noise', noise, f'one of {sorted(NOISES)}')
  levels = config.model.soft_quant.levels
  require(levels > 0, 'model.soft_quant.levels', levels,
          'levels > 0 with method soft_quant, which trains the soft-quantised model: set '
          'config.model.soft_quant.levels (e.g. --config.model.soft_quant.levels=2)')


METHOD = base.Method(name='soft_quant', loss=loss, default_config=default_config, check=check)
