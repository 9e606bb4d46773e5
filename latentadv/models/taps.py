"""Named latent taps: points inside a model where a method may add a perturbation.

A tap is the identity unless the caller passes a ``perturbations`` collection that holds a
tensor of the tap's name. Then the tap adds it and keeps the result inside the per-sample,
per-channel value range of the feature map (the SLAT domain clip). As in the SLAT reference
code, the clip is straight-through for gradients: the tap's derivative with respect to both
the feature and the perturbation is the identity everywhere, clipped or not. So gradients read
at delta = 0 are the plain feature gradients, from the same backward pass as the input
gradient, and a clipped feature still passes its gradient on to the weights below it.

Perturbations are float32 whatever the model's compute dtype: a perturbed tap adds and clips
in float32 (a bfloat16 feature map is upcast; the next layer casts back to its dtype).
"""

import flax.linen as nn
import jax
import jax.numpy as jnp

COLLECTION = 'perturbations'
# When a caller makes this collection mutable, every tap records there the per-channel
# standard deviation (C,) of its unperturbed feature map over the batch and spatial positions.
FEATURE_STD = 'feature_std'


def tap(module: nn.Module, name: str, h: jax.Array) -> jax.Array:
  """Returns `h` (B, ..., C) plus the perturbation `name`, clipped to h's per-channel range
  over the spatial positions (per sample), with the identity as the clip's gradient.

  During `init` (all collections mutable) a float32 zero perturbation of h's shape is created
  so that `jax.eval_shape` of an `apply(..., mutable=[COLLECTION])` reports every tap's shape.
  A perturbed tap returns float32; an unperturbed one returns h unchanged. With FEATURE_STD
  mutable (not during init), the tap also records h's per-channel standard deviation, a
  constant for differentiation.
  """
  if module.is_mutable_collection(COLLECTION):
    module.variable(COLLECTION, name, jnp.zeros, h.shape, jnp.float32)
  if module.is_mutable_collection(FEATURE_STD) and not module.is_initializing():
    module.put_variable(FEATURE_STD, name, jax.lax.stop_gradient(
        h.astype(jnp.float32).std(axis=tuple(range(h.ndim - 1)))))
  if not module.has_variable(COLLECTION, name):
    return h
  delta = module.get_variable(COLLECTION, name)
  h = h.astype(jnp.float32)
  moved = h + delta
  spatial_axes = tuple(range(1, h.ndim - 1))
  if not spatial_axes:
    return moved
  low = h.min(axis=spatial_axes, keepdims=True)
  high = h.max(axis=spatial_axes, keepdims=True)
  # The clipped value exactly, with the gradient of `moved` (moved - moved is exactly 0).
  return jax.lax.stop_gradient(jnp.clip(moved, low, high)) + (
      moved - jax.lax.stop_gradient(moved))
