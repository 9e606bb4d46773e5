"""Soft-quantised CNN trained on noisy natural MNIST (Zheng et al. 2018, our interpretation):
the CNN of Wong et al., eps 0.3, Adam, cyclic LR peak 5e-3, 10 epochs, batch 100.

Evaluate it with BPDA (`--config.eval.suite=bpda` or `autoattack`): the quantiser masks
plain gradients.
"""

from latentadv import base_config


def get_config(preset: str = ''):
  """Returns the config; `preset` is 'smoke', 'cpu' or '' (see latentadv/base_config.py)."""
  config = base_config.mnist(base_config.get_config())
  base_config.set_method(config, 'soft_quant')
  # One threshold (at 0.5): MNIST pixels sit near 0 or 1, and only a grid spacing 1/K with
  # 0.5 / K > eps = 0.3 keeps such pixels on their level under the attack, i.e. K = 1.
  config.model.soft_quant.levels = 1
  # The step rises from 12 % to 88 % over 0.5 +- 0.1: nearly binary, still trainable.
  config.model.soft_quant.temperature = 0.05
  # Gaussian noise of the attack's size: about 5 % of the 0-pixels cross the threshold, so the
  # model sees the flipped pixels an attack can cause.
  config.method.soft_quant.noise = 'gaussian'
  config.method.soft_quant.sigma = 0.3
  return base_config.apply_preset(config, preset)
