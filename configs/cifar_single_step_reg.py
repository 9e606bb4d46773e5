"""Regularised single-step AT (our reading) on CIFAR-10: PreActResNet-18, eps 8/255, 30 epochs."""

from configs import default


def get_config(preset: str = ''):
  """Returns the config; `preset` is 'smoke', 'cpu' or '' (see configs/default.py)."""
  config = default.get_config()
  config.method.name = 'single_step_reg'
  return default.apply_preset(config, preset)
