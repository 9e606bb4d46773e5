"""PGD-AT on MNIST with the Madry et al. recipe as run by Wong et al. 2020: the CNN, eps 0.3,
PGD-40 with step 0.01, Adam with a flat learning rate of 1e-4, batch 50, 100 epochs.

The cyclic 5e-3 recipe of the single-step configs does not suit PGD-AT: on this CNN it stays
at chance (loss 2.30) for at least 3 epochs.
"""

from latentadv import base_config


def get_config(preset: str = ''):
  """Returns the config; `preset` is 'smoke', 'cpu' or '' (see latentadv/base_config.py)."""
  config = base_config.mnist(base_config.get_config())
  base_config.set_method(config, 'pgd')
  config.optim.schedule = 'constant'
  config.optim.learning_rate = 1e-4
  config.optim.batch_size = 50
  config.optim.epochs = 100
  return base_config.apply_preset(config, preset)
