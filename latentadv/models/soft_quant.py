"""Soft-quantisation input layer (Zheng et al. 2018) and its straight-through (BPDA) surrogate.

*Interpretation*: the paper was withdrawn and has no public code. Our reading of it:
q(x) = (1/K) sum_k sigmoid((x - t_k) / T), elementwise, right after the [0, 1] input and before
the model's own normalisation. The K thresholds start on the even grid t_k = (k - 0.5) / K,
k = 1..K, so that as T -> 0 the layer rounds x in [0, 1] to the nearest of the K + 1 values
0, 1/K, ..., 1. Learnable thresholds are parametrised as offsets from that grid (initialised
to 0), so weight decay pulls them back to the grid, not towards 0.

A quantiser masks gradients: at a small T its input gradient is ~0 away from the thresholds.
`straight_through` gives the surrogate that an attack must also use (BPDA, Athalye et al.
2018): the same forward value with the identity as the quantiser's gradient.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp


def initial_thresholds(levels: int) -> jax.Array:
  """The evenly spaced starting thresholds (levels,): (k - 0.5) / levels for k = 1..levels."""
  return (jnp.arange(levels, dtype=jnp.float32) + 0.5) / levels


def soft_quantize(x: jax.Array, thresholds: jax.Array, temperature: float) -> jax.Array:
  """(1/K) sum_k sigmoid((x - thresholds[k]) / temperature) for every element of x.

  x has any shape, thresholds is (K,); the result has x's shape, values in (0, 1), and is
  increasing in x.
  """
  steps = jax.nn.sigmoid((x[..., None] - thresholds) / temperature)
  return steps.mean(axis=-1)


class SoftQuantizer(nn.Module):
  """The soft-quantisation layer (an interpretation, see the module docstring).

  With `learnable`, params hold 'threshold_offsets' (levels,) added to the initial grid;
  otherwise the thresholds are the fixed grid and the layer has no variables. With
  `straight_through` the output value is unchanged, its gradient w.r.t. x is the identity and
  w.r.t. the thresholds 0 (for attacks, not for training).
  """
  levels: int
  temperature: float
  learnable: bool = True
  straight_through: bool = False

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    """Maps x (B, H, W, C) to q(x) of the same shape."""
    thresholds = initial_thresholds(self.levels)
    if self.learnable:
      thresholds = thresholds + self.param('threshold_offsets', nn.initializers.zeros,
                                           (self.levels,))
    quantized = soft_quantize(x, thresholds, self.temperature)
    if not self.straight_through:
      return quantized
    # x - stop_gradient(x) is exactly 0 in value and has derivative 1: the forward value is
    # bit-identical to q(x), the gradient is the identity.
    return jax.lax.stop_gradient(quantized) + (x - jax.lax.stop_gradient(x))


class SoftQuantized(nn.Module):
  """`model` applied to the soft-quantised input: model(q(x)).

  The wrapper shares `model`'s scope (`nn.share_scope`), so its variables are exactly the
  model's (same names, 'head' and the latent taps unchanged) plus params['soft_quant'] when
  the thresholds are learnable. Arguments after x (train, output, ...) go to `model`.
  """
  model: nn.Module
  levels: int
  temperature: float
  learnable: bool = True
  straight_through: bool = False

  def setup(self):
    nn.share_scope(self, self.model)
    self.soft_quant = SoftQuantizer(self.levels, self.temperature, self.learnable,
                                    self.straight_through)

  def __call__(self, x: jax.Array, *args, **kwargs) -> jax.Array:
    """Returns model(q(x), *args, **kwargs) for images x (B, H, W, C) in [0, 1]."""
    return self.model(self.soft_quant(x), *args, **kwargs)


def has_quantiser(model: nn.Module) -> bool:
  """Whether `model` soft-quantises its input (and so masks input gradients)."""
  return isinstance(model, SoftQuantized)


def straight_through(model: nn.Module) -> nn.Module:
  """The BPDA surrogate of `model`: same variables and outputs, identity quantiser gradient.

  A model without a quantiser is returned unchanged.
  """
  if has_quantiser(model):
    return model.clone(straight_through=True)
  return model
