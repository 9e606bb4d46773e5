"""Pieces every classifier shares: input normalisation, the linear readout, compute dtypes.

Mixed precision: a model's `dtype` ('float32' or 'bfloat16') is the compute dtype of its Conv,
Dense and BatchNorm layers; their params stay float32 (`param_dtype`), BatchNorm statistics are
reduced and kept in float32, and `readout` returns float32 features and logits.
"""

from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

OUTPUTS = ('logits', 'features')


# PyTorch's default initialisation of nn.Conv2d / nn.Linear: weights and biases uniform in
# +-1/sqrt(fan_in) (variance 1 / (3 fan_in)). Models ported from PyTorch code that relies on it
# (the MNIST CNN, the PreActResNet-18 of fast_adversarial and SLAT) use it.
torch_kernel_init = nn.initializers.variance_scaling(1 / 3, 'fan_in', 'uniform')
# He-normal fan-out initialisation (variance 2 / fan_out), as in the reference WideResNet
# (TRADES) and torchvision ResNets.
he_kernel_init = nn.initializers.variance_scaling(2.0, 'fan_out', 'normal')


def torch_bias_init(fan_in: int):
  """PyTorch's default bias initialiser for a layer with `fan_in` inputs: U(-b, b), b = fan_in^-1/2."""
  bound = fan_in ** -0.5
  return lambda key, shape, dtype=jnp.float32: jax.random.uniform(key, shape, dtype, -bound,
                                                                   bound)


def torch_dense_init(fan_in: int) -> dict:
  """kernel_init and bias_init of a PyTorch-default-initialised layer with `fan_in` inputs."""
  return {'kernel_init': torch_kernel_init, 'bias_init': torch_bias_init(fan_in)}


def normalize(x: jax.Array, mean: Sequence[float], std: Sequence[float]) -> jax.Array:
  """Returns (x - mean) / std for x (B, H, W, C) in [0, 1] and per-channel mean, std (C,)."""
  return (x - jnp.asarray(mean, x.dtype)) / jnp.asarray(std, x.dtype)


def readout(features: jax.Array, num_classes: int, output: str, **dense_options) -> jax.Array:
  """Returns `features` (B, D) itself or the logits (B, num_classes) of the linear 'head'.

  Must be called inside a compact `__call__`: the head is created there as `nn.Dense` named
  'head', so params['head'] holds its kernel (D, num_classes) and bias (num_classes,).
  `dense_options` (e.g. initialisers, the compute dtype) are passed to that nn.Dense. Either
  output is float32, whatever the compute dtype.
  """
  if output not in OUTPUTS:
    raise ValueError(f'output must be one of {OUTPUTS}, got {output!r}.')
  if output == 'features':
    return features.astype(jnp.float32)
  return nn.Dense(num_classes, name='head', **dense_options)(features).astype(jnp.float32)
