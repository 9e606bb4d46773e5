"""Regularised single-step AT (our reading) on CIFAR-10: PreActResNet-18, eps 8/255, 30 epochs."""

from latentadv import base_config


def get_config(preset: str = ''):
  """Returns the config; `preset` is 'smoke', 'cpu' or '' (see latentadv/base_config.py)."""
  config = base_config.get_config()
  base_config.set_method(config, 'single_step_reg')
  return base_config.apply_preset(config, preset)
