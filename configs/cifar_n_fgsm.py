"""N-FGSM on CIFAR-10, PreActResNet-18, eps 8/255, 30 epochs, cyclic LR peak 0.2, batch 128."""

from configs import default


def get_config(preset: str = ''):
  """Returns the config; `preset` is 'smoke', 'cpu' or '' (see configs/default.py)."""
  config = default.get_config()
  config.method.name = 'n_fgsm'
  return default.apply_preset(default.monitor_collapse(config), preset)
