"""FGSM-AT (zero start) on MNIST, the CNN of Wong et al., eps 0.3, Adam, cyclic LR peak 5e-3, 10 epochs, batch 100."""

from latentadv import base_config


def get_config(preset: str = ''):
  """Returns the config; `preset` is 'smoke', 'cpu' or '' (see latentadv/base_config.py)."""
  config = base_config.mnist(base_config.get_config())
  base_config.set_method(config, 'fgsm')
  return base_config.apply_preset(config, preset)
