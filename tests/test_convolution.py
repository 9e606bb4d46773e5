"""The models' convolution (models/convolution.py) differentiates as lax.conv_general_dilated."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from latentadv.models import convolution

# (input shape, kernel shape, strides, padding): the models' convolutions (3x3 and strided 3x3,
# the 1x1/2 shortcut, the MNIST CNN's 4x4/2) and a 'SAME'-padded 7x7/2 stem.
CASES = [((3, 9, 9, 3), (3, 3, 3, 5), (1, 1), ((1, 1), (1, 1))),
         ((3, 9, 9, 3), (3, 3, 3, 5), (2, 2), ((1, 1), (1, 1))),
         ((3, 8, 8, 4), (1, 1, 4, 6), (2, 2), ((0, 0), (0, 0))),
         ((3, 12, 12, 1), (4, 4, 1, 8), (2, 2), [(1, 1), (1, 1)]),
         ((2, 16, 16, 3), (7, 7, 3, 8), (2, 2), 'SAME')]
NHWC = ('NHWC', 'HWIO', 'NHWC')


def _inputs(x_shape, k_shape):
  rng = np.random.default_rng(0)
  return (jnp.asarray(rng.standard_normal(x_shape), jnp.float32),
          jnp.asarray(rng.standard_normal(k_shape), jnp.float32))


def _objective(conv, strides, padding):
  """A scalar of (x, k) with a non-trivial cotangent: sum(sin(conv(x, k)))."""
  return lambda x, k: jnp.sum(jnp.sin(conv(x, k, strides, padding, dimension_numbers=NHWC)))


@pytest.mark.parametrize('x_shape,k_shape,strides,padding', CASES)
def test_value_and_both_gradients_match_lax(x_shape, k_shape, strides, padding):
  x, k = _inputs(x_shape, k_shape)
  ours = _objective(convolution.conv_general_dilated, strides, padding)
  reference = _objective(lax.conv_general_dilated, strides, padding)
  chex.assert_trees_all_close(jax.value_and_grad(ours, (0, 1))(x, k),
                              jax.value_and_grad(reference, (0, 1))(x, k), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize('x_shape,k_shape,strides,padding', CASES[1::2])
def test_second_order_gradients_match_lax(x_shape, k_shape, strides, padding):
  # GradAlign differentiates a gradient's norm and direction again, w.r.t. the kernel.
  x, k = _inputs(x_shape, k_shape)

  def input_gradient_norm(conv):
    grad = jax.grad(_objective(conv, strides, padding))
    return lambda k: jnp.sum(grad(x, k) ** 2)

  chex.assert_trees_all_close(
      jax.grad(input_gradient_norm(convolution.conv_general_dilated))(k),
      jax.grad(input_gradient_norm(lax.conv_general_dilated))(k), rtol=1e-3, atol=1e-3)


def test_input_gradient_in_a_rolled_loop_matches_lax():
  x, k = _inputs(*CASES[1][:2])

  def ascend(conv):
    grad = jax.grad(_objective(conv, (2, 2), ((1, 1), (1, 1))))
    return jax.jit(lambda x: lax.fori_loop(0, 3, lambda _, x: x + 0.1 * grad(x, k), x))

  chex.assert_trees_all_close(ascend(convolution.conv_general_dilated)(x),
                              ascend(lax.conv_general_dilated)(x), rtol=1e-4, atol=1e-4)


def test_custom_gradient_on_the_cpu_backend_without_feature_groups_only():
  assert convolution.library_input_gradient(1) == (jax.default_backend() == 'cpu')
  assert not convolution.library_input_gradient(2)
  x, k = _inputs((2, 6, 6, 4), (3, 3, 2, 6))
  grouped = lambda conv: lambda x, k: jnp.sum(jnp.sin(conv(
      x, k, (1, 1), 'SAME', dimension_numbers=NHWC, feature_group_count=2)))
  chex.assert_trees_all_close(jax.grad(grouped(convolution.conv_general_dilated), (0, 1))(x, k),
                              jax.grad(grouped(lax.conv_general_dilated), (0, 1))(x, k),
                              rtol=1e-5, atol=1e-5)
