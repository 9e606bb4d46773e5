"""FGSM-AT (zero start) on MNIST, the CNN of Wong et al., eps 0.3, Adam, cyclic LR peak 5e-3, 10 epochs, batch 100."""

from configs import default


def get_config(preset: str = ''):
  """Returns the config; `preset` is 'smoke', 'cpu' or '' (see configs/default.py)."""
  config = default.mnist(default.get_config())
  config.method.name = 'fgsm'
  return default.apply_preset(default.monitor_collapse(config), preset)
