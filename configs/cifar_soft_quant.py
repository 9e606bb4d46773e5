"""Soft-quantised PreActResNet-18 trained on noisy natural CIFAR-10 (Zheng et al. 2018, our
interpretation): eps 8/255, 30 epochs, cyclic LR peak 0.2, batch 128.

The paper is about MNIST; these values carry its idea to CIFAR-10. Evaluate with BPDA
(`--config.eval.suite=bpda` or `autoattack`): the quantiser masks plain gradients.
"""

from latentadv import base_config


def get_config(preset: str = ''):
  """Returns the config; `preset` is 'smoke', 'cpu' or '' (see latentadv/base_config.py)."""
  config = base_config.get_config()
  base_config.set_method(config, 'soft_quant')
  # 8 thresholds, 9 values per channel (about 3 bits, which keeps CIFAR-10 images
  # recognisable): a pixel on a level is 1/16 (about 2 eps) from the nearest threshold, so an
  # eps-perturbation cannot move it to another level.
  config.model.soft_quant.levels = 8
  # Steps of width about +-2 T = +-0.02 (5/255, under eps), sharp next to the spacing 0.125.
  config.model.soft_quant.temperature = 0.01
  # Noise of twice the attack radius, as large as half the grid spacing.
  config.method.soft_quant.noise = 'gaussian'
  config.method.soft_quant.sigma = 16 / 255
  return base_config.apply_preset(config, preset)
