"""Pieces every classifier shares: input normalisation and the linear readout."""

from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

OUTPUTS = ('logits', 'features')


def normalize(x: jax.Array, mean: Sequence[float], std: Sequence[float]) -> jax.Array:
  """Returns (x - mean) / std for x (B, H, W, C) in [0, 1] and per-channel mean, std (C,)."""
  return (x - jnp.asarray(mean, x.dtype)) / jnp.asarray(std, x.dtype)


def readout(features: jax.Array, num_classes: int, output: str) -> jax.Array:
  """Returns `features` (B, D) itself or the logits (B, num_classes) of the linear 'head'.

  Must be called inside a compact `__call__`: the head is created there as `nn.Dense` named
  'head', so params['head'] holds its kernel (D, num_classes) and bias (num_classes,).
  """
  if output not in OUTPUTS:
    raise ValueError(f'output must be one of {OUTPUTS}, got {output!r}.')
  if output == 'features':
    return features
  return nn.Dense(num_classes, name='head')(features)
