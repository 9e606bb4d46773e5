"""Regularised single-step AT (our reading) on MNIST: the CNN of Wong et al., eps 0.3, 10 epochs."""

from configs import default


def get_config(preset: str = ''):
  """Returns the config; `preset` is 'smoke', 'cpu' or '' (see configs/default.py)."""
  config = default.mnist(default.get_config())
  config.method.name = 'single_step_reg'
  return default.apply_preset(config, preset)
