"""The models' convolution: `lax.conv_general_dilated` with an input gradient that XLA:CPU runs
at full speed inside loops.

Reverse-mode differentiation turns a convolution with an HWIO kernel into an input-gradient
convolution whose kernel is declared HWOI (JAX swaps the kernel's feature dimensions in the
dimension numbers instead of moving data). Outside a loop, XLA:CPU rewrites such a convolution
into its library (Eigen) form with a transposed copy of the kernel; inside a `while` loop (a
rolled attack or TRADES' inner maximisation) it leaves it alone and emits a generic loop nest,
several times slower (docs/performance.md).

On the cpu backend, `conv_general_dilated` therefore has a custom VJP that computes the input
gradient as the transpose of the same convolution with the kernel transposed to HWOI in memory
and declared so: JAX's rule then declares it HWIO again, the form the library call takes,
inside loops or not. The kernel gradient is JAX's own rule, and each gradient is computed only
when its operand is differentiated. Both are the same sums as JAX's rules (up to float32
summation order) and differentiable again (GradAlign's double backpropagation). On other
backends it is `lax.conv_general_dilated` itself, so accelerator programs are unchanged.

`Conv` is flax.linen.Conv with this convolution; every model builds its convolutions with it.
"""

import functools

import flax.linen as nn
import jax
from jax import lax


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4, 5, 6, 7))
def _conv_with_library_input_gradient(lhs, rhs, window_strides, padding, lhs_dilation,
                                      rhs_dilation, dimension_numbers, precision):
  """lax.conv_general_dilated(lhs, rhs, ...) (no feature groups); its VJP is below."""
  return lax.conv_general_dilated(lhs, rhs, window_strides, padding, lhs_dilation,
                                  rhs_dilation, dimension_numbers, precision=precision)


def _forward(lhs, rhs, *static):
  """The convolution; residuals: both operands, and the names of the gradients needed
  ('lhs', 'rhs': the operands that are differentiated, as dict keys), so that the backward
  pass computes only those."""
  output = _conv_with_library_input_gradient(lhs.value, rhs.value, *static)
  needed = {name: None for name, operand in (('lhs', lhs), ('rhs', rhs)) if operand.perturbed}
  return output, (lhs.value, rhs.value, needed)


def _backward(window_strides, padding, lhs_dilation, rhs_dilation, dimension_numbers,
              precision, residuals, cotangent):
  """(d lhs, d rhs), None where not needed: d lhs through the kernel stored with its feature
  dimensions swapped, d rhs by JAX's rule."""
  lhs, rhs, needed = residuals

  def conv(lhs, rhs, numbers):
    return lax.conv_general_dilated(lhs, rhs, window_strides, padding, lhs_dilation,
                                    rhs_dilation, numbers, precision=precision)

  lhs_cotangent = rhs_cotangent = None
  if 'lhs' in needed:
    out_dim, in_dim, *spatial = dimension_numbers.rhs_spec
    order = list(range(rhs.ndim))
    order[out_dim], order[in_dim] = in_dim, out_dim
    swapped = lax.ConvDimensionNumbers(dimension_numbers.lhs_spec,
                                       (in_dim, out_dim, *spatial), dimension_numbers.out_spec)
    stored_swapped = rhs.transpose(order)
    lhs_cotangent, = jax.linear_transpose(lambda lhs: conv(lhs, stored_swapped, swapped),
                                          lhs)(cotangent)
  if 'rhs' in needed:
    rhs_cotangent, = jax.linear_transpose(lambda rhs: conv(lhs, rhs, dimension_numbers),
                                          rhs)(cotangent)
  return lhs_cotangent, rhs_cotangent


_conv_with_library_input_gradient.defvjp(_forward, _backward, symbolic_zeros=True)


def _static(value):
  """value as a hashable tuple (nested sequences of ints), a string or None."""
  if value is None or isinstance(value, str):
    return value
  return tuple(_static(v) if isinstance(v, (list, tuple)) else v for v in value)


def library_input_gradient(feature_group_count: int) -> bool:
  """Whether conv_general_dilated uses the custom VJP: on the cpu backend, without feature
  groups."""
  return jax.default_backend() == 'cpu' and feature_group_count == 1


def conv_general_dilated(lhs, rhs, window_strides, padding, lhs_dilation=None,
                         rhs_dilation=None, dimension_numbers=None, feature_group_count=1,
                         precision=None):
  """lax.conv_general_dilated (same arguments and result, e.g. lhs (B, H, W, C), rhs
  (kh, kw, C, F) -> (B, H', W', F)); on the cpu backend without feature groups, with the
  custom VJP of this module's docstring (`library_input_gradient`)."""
  if not library_input_gradient(feature_group_count):
    return lax.conv_general_dilated(lhs, rhs, window_strides, padding, lhs_dilation,
                                    rhs_dilation, dimension_numbers, feature_group_count,
                                    precision=precision)
  numbers = lax.conv_dimension_numbers(lhs.shape, rhs.shape, dimension_numbers)
  return _conv_with_library_input_gradient(lhs, rhs, _static(window_strides), _static(padding),
                                           _static(lhs_dilation), _static(rhs_dilation),
                                           numbers, precision)


Conv = functools.partial(nn.Conv, conv_general_dilated=conv_general_dilated)
