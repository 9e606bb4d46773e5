"""Named latent taps: points inside a model where a method may add a perturbation.

A tap is the identity unless the caller passes a ``perturbations`` collection that holds a
tensor of the tap's name. Then the tap adds it and keeps the result inside the per-sample,
per-channel value range of the feature map (the SLAT domain clip). The clip is written with
strict inequalities so that at a zero perturbation the tap's derivative with respect to both
the feature and the perturbation is exactly the identity: gradients read at delta = 0 are the
plain feature gradients, from the same backward pass as the input gradient.

Perturbations are float32 whatever the model's compute dtype: a perturbed tap adds and clips
in float32 (a bfloat16 feature map is upcast; the next layer casts back to its dtype).
"""

import flax.linen as nn
import jax
import jax.numpy as jnp

COLLECTION = 'perturbations'


def tap(module: nn.Module, name: str, h: jax.Array) -> jax.Array:
  """Returns `h` (B, ..., C) plus the perturbation `name`, clipped to h's per-channel range.

  During `init` (all collections mutable) a float32 zero perturbation of h's shape is created
  so that `jax.eval_shape` of an `apply(..., mutable=[COLLECTION])` reports every tap's shape.
  A perturbed tap returns float32; an unperturbed one returns h unchanged.
  """
  if module.is_mutable_collection(COLLECTION):
    module.variable(COLLECTION, name, jnp.zeros, h.shape, jnp.float32)
  if not module.has_variable(COLLECTION, name):
    return h
  delta = module.get_variable(COLLECTION, name)
  h = h.astype(jnp.float32)
  moved = h + delta
  spatial_axes = tuple(range(1, h.ndim - 1))
  if not spatial_axes:
    return moved
  low = jax.lax.stop_gradient(h.min(axis=spatial_axes, keepdims=True))
  high = jax.lax.stop_gradient(h.max(axis=spatial_axes, keepdims=True))
  return jnp.where(moved < low, low, jnp.where(moved > high, high, moved))
