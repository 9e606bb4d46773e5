"""Model registry: build a classifier by name, initialise it, and list its latent taps."""

import dataclasses
from collections.abc import Mapping, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from latentadv.models.mnist_cnn import MnistCNN
from latentadv.models.preact_resnet import CONV_INITS, PreActResNet18
from latentadv.models.resnet50 import INITS as RESNET50_INITS
from latentadv.models.resnet50 import ResNet50
from latentadv.models.soft_quant import SoftQuantized, has_quantiser, straight_through
from latentadv.models.taps import COLLECTION
from latentadv.models.wide_resnet import WideResNet

MODELS = {
    'mnist_cnn': MnistCNN,
    'preact_resnet18': PreActResNet18,
    'resnet50': ResNet50,
    'wide_resnet': WideResNet,
}

# Model-specific options of each model as configured by default (config.model.<name>).
MODEL_DEFAULTS = {
    'mnist_cnn': {'normalize': False},  # raw pixels, as the reference (Wong et al.) model
    'preact_resnet18': {'width': 64, 'init': 'torch'},  # 'torch' | 'he' (preact_resnet.py)
    'resnet50': {'width': 64, 'init': 'torch', 'zero_init_residual': False},  # torchvision's
    'wide_resnet': {'depth': 28, 'widen_factor': 10, 'dropout': 0.3},
}

# Config option -> model field, where the option's name would shadow a flax Module method.
_OPTION_FIELDS = {'init': 'initialization'}
_COMMON_FIELDS = ('parent', 'name', 'num_classes', 'mean', 'std', 'dtype')
# Compute dtypes of a model (config.model.dtype); 'bfloat16' is for accelerators.
DTYPES = ('float32', 'bfloat16')


def create_model(name: str, options: Mapping, *, num_classes: int, mean: Sequence[float],
                 std: Sequence[float], soft_quant: Mapping | None = None,
                 dtype: str = 'float32') -> nn.Module:
  """Returns the registered model `name` with model-specific `options` (e.g. {'width': 64}).

  mean and std are per-channel (C,) sequences; the model normalises its [0, 1] input with them.
  `soft_quant` ({'levels', 'temperature', 'learnable'}, as config.model.soft_quant) puts a
  soft-quantisation layer before the model when levels > 0 (models/soft_quant.py).
  `dtype` (one of DTYPES) is the compute dtype; params and outputs stay float32.
  Raises ValueError for an unknown name or option, listing the valid ones.
  """
  if name not in MODELS:
    raise ValueError(f'Unknown model {name!r}; valid models: {", ".join(sorted(MODELS))}.')
  cls = MODELS[name]
  option_of_field = {field: option for option, field in _OPTION_FIELDS.items()}
  valid = sorted(option_of_field.get(f.name, f.name) for f in dataclasses.fields(cls)
                 if f.name not in _COMMON_FIELDS)
  unknown = sorted(set(options) - set(valid))
  if unknown:
    raise ValueError(f'Unknown options {unknown} for model {name!r}; valid options: {valid}.')
  fields = {_OPTION_FIELDS.get(option, option): value for option, value in options.items()}
  model = cls(num_classes=num_classes, mean=tuple(mean), std=tuple(std), dtype=jnp.dtype(dtype),
              **fields)
  if soft_quant and soft_quant['levels'] > 0:
    return SoftQuantized(model, **soft_quant)
  return model


def init_variables(model: nn.Module, rng: jax.Array, input_shape: Sequence[int]) -> dict:
  """Initialises `model` on zeros of input_shape (B, H, W, C).

  Returns {'params': ..., 'batch_stats': ...} ('batch_stats' only if the model has BatchNorm),
  without the zero 'perturbations' collection that init creates at the taps.
  """
  if len(input_shape) != 4:
    raise ValueError(f'input_shape must be (B, H, W, C), got {tuple(input_shape)}.')
  variables = jax.jit(model.init)(rng, jnp.zeros(input_shape, jnp.float32))
  return {key: value for key, value in variables.items() if key != COLLECTION}


def tap_shapes(apply_fn, variables: Mapping, x_shape: Sequence[int]
               ) -> dict[str, jax.ShapeDtypeStruct]:
  """{tap name: ShapeDtypeStruct (B, ..., C)} of every tap of `apply_fn` for inputs x_shape.

  Computed abstractly (jax.eval_shape of an apply with the taps' collection mutable): no FLOPs.
  """
  variables = {key: value for key, value in variables.items() if key != COLLECTION}
  x = jax.ShapeDtypeStruct(tuple(x_shape), jnp.float32)
  _, state = jax.eval_shape(
      lambda v, x: apply_fn(v, x, mutable=[COLLECTION]), variables, x)
  return dict(state[COLLECTION])
