"""Default configuration: every key a run can set, with the CIFAR-10 SLAT recipe as defaults.

Other config files start from `get_config()` and change values; they never add keys (the
returned config is locked, so a typo is an error). Presets are chosen after a colon:
`--config=configs/cifar_slat.py:smoke`.
  smoke: seconds on a CPU (tiny subsets), for tests and for checking a set-up.
  cpu:   a CIFAR/MNIST setting that finishes in well under an hour on 2 CPU cores.
"""

import ml_collections

from latentadv import methods
from latentadv import models
from latentadv.attacks import registry as attacks_registry

PRESETS = ('', 'smoke', 'cpu')


def get_config(preset: str = '') -> ml_collections.ConfigDict:
  """Returns the full default config (CIFAR-10, PreActResNet-18, SLAT), with `preset` applied."""
  config = ml_collections.ConfigDict()
  config.seed = 0
  # Models trained side by side in one program, with seeds seed, ..., seed + num_seeds - 1
  # (latentadv/seeds.py); seed_sharding: 'auto', 'seeds' (whole models per device) or 'data';
  # seed_loop: 'auto' (unroll on CPU, vmap elsewhere), 'vmap' or 'unroll'.
  config.num_seeds = 1
  config.seed_sharding = 'auto'
  config.seed_loop = 'auto'

  config.data = ml_collections.ConfigDict(dict(
      name='cifar10',
      source='tfds',          # 'tfds' (downloads) or 'local' (canonical files in data.dir)
      dir='',                 # directory with the canonical files when source == 'local'
      tfds_data_dir='',       # '' = tfds default (TFDS_DATA_DIR or ~/tensorflow_datasets)
      crop_padding=4,         # random crop after zero-padding by this many pixels (0 = off)
      flip=True,              # random horizontal flip
      num_train_examples=0,   # use only the first n training examples (0 = all)
      # 'memory': the whole split as uint8 in every host's memory (CIFAR, MNIST, Tiny-ImageNet);
      # 'stream': each host reads only its part of each batch from the files
      # (latentadv/data/readers.py)
      pipeline='memory',
      stream_threads=8,       # stream: batches read and decoded in parallel per host
      stream_prefetch=4,      # stream: batches read ahead of the training step
  ))

  config.model = ml_collections.ConfigDict(dict(
      name='preact_resnet18',
      dtype='float32',        # compute dtype, 'float32' or 'bfloat16' (params stay float32)
  ))
  for name, defaults in models.MODEL_DEFAULTS.items():
    config.model[name] = ml_collections.ConfigDict(defaults)
  # Soft-quantisation layer before any model (models/soft_quant.py; method soft_quant needs it).
  config.model.soft_quant = ml_collections.ConfigDict(dict(
      levels=0,               # number K of thresholds (K + 1 output values); 0 = no quantiser
      temperature=0.05,       # sigmoid temperature T in pixel units; smaller = harder steps
      learnable=True,         # thresholds trained (as offsets from the even grid) or fixed
  ))

  config.method = ml_collections.ConfigDict(dict(
      name='slat',
      eps=8 / 255,            # radius in pixel units ([0, 1] images) in the norm below
      norm='linf',            # training threat model: 'linf', or 'l2' (methods pgd, fgsm_rs)
      attack_bn='train',      # BatchNorm mode of attack passes: 'train' (batch stats) or 'eval'
  ))
  for name, method in methods.METHODS.items():
    config.method[name] = method.default_config()

  config.optim = ml_collections.ConfigDict(dict(
      optimizer='sgd',        # 'sgd' (momentum, PyTorch-style weight decay) or 'adam'
      batch_size=128,         # global batch size (all devices, all hosts)
      epochs=30,
      learning_rate=0.2,      # peak learning rate
      schedule='cyclic',      # 'cyclic' (0 -> peak -> 0), 'piecewise', 'cosine', 'constant',
                              # 'interpolate' (linear between interpolate_points)
      cyclic_peak=0.4,        # fraction of training at which the cyclic schedule peaks
      piecewise_boundaries=(0.5, 0.75),  # fractions of training where the LR is multiplied
      piecewise_factor=0.1,
      # (fraction of training, fraction of the peak LR) pairs from 0 to 1, for 'interpolate'
      interpolate_points=((0.0, 0.0), (0.4, 1.0), (1.0, 0.0)),
      momentum=0.9,
      cyclic_momentum_low=0.8,  # SGD momentum at the cyclic LR peak (PyTorch CyclicLR's cycling;
                                # = momentum for a constant momentum)
      nesterov=False,
      weight_decay=5e-4,
  ))

  config.train = ml_collections.ConfigDict(dict(
      log_every_steps=50,
      checkpoint_every_steps=1000,
      checkpoints_to_keep=2,
      eval_every_epochs=1,    # periodic evaluation on a fixed test subset (0 = off)
      # Catastrophic-overfitting monitor (latentadv/collapse_monitor.py): periodic PGD on the first
      # collapse_monitor_examples training examples after each epoch (0 = off, else >= 100; on in
      # every recipe of a single-step method, see set_method); a drop below the best of at least
      # collapse_drop AND at least collapse_relative_drop x the best is a collapse. A collapsed run keeps
      # its best state (what load_model, evaluate and export use) and trains on to the end;
      # collapse_stop stops at the collapse instead.
      collapse_monitor_examples=0,
      collapse_drop=0.05,
      collapse_relative_drop=0.5,
      collapse_stop=False,
  ))

  config.eval = ml_collections.ConfigDict(dict(
      suite='pgd',            # attacks/registry.py: pgd, apgd-ce, apgd-t, fab-t, square, bpda,
                              # autoattack
      norm='linf',            # threat model of the attacks: 'linf' or 'l2' (eps: method.eps)
      batch_size=500,
      attack_loops='rolled',  # step loops: 'rolled' or 'unrolled' (attacks/loops.py)
      n_examples=0,           # final evaluation on the first n test examples (0 = all)
      periodic_n_examples=1000,
      periodic_pgd_steps=10,
      periodic_pgd_restarts=1,
  ))
  # Each attack family's settings (config.eval.pgd.steps, config.eval.apgd.targets, ...): the
  # final evaluation of training is PGD with config.eval.pgd (attacks/pgd.py, apgd.py, fab.py,
  # square.py).
  for key, default_config in attacks_registry.SETTINGS.items():
    config.eval[key] = default_config()

  apply_preset(config, preset)
  config.lock()
  return config


def mnist(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """Switches `config` to the MNIST recipe of Wong et al. 2020 (CNN, eps 0.3, Adam, 10 epochs)."""
  config.data.name = 'mnist'
  config.data.crop_padding = 0
  config.data.flip = False
  config.model.name = 'mnist_cnn'
  config.method.eps = 0.3
  config.method.pgd.steps = 40
  config.method.pgd.step_size = 0.01
  config.optim.optimizer = 'adam'
  config.optim.batch_size = 100
  config.optim.epochs = 10
  config.optim.learning_rate = 5e-3
  config.optim.schedule = 'cyclic'
  config.optim.weight_decay = 0.0
  return config


def tiny_imagenet(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """Switches `config` to Tiny-ImageNet as the SLAT code trains it (64x64, 200 classes, batch
  64, crop with padding 4 + flip, ImageNet normalisation), on PreActResNet-18 (the SLAT and
  Backward Smoothing papers' Tiny-ImageNet model; the SLAT code's config names a WRN-28)."""
  config.data.name = 'tiny_imagenet'
  config.model.name = 'preact_resnet18'
  config.optim.batch_size = 64
  return config


def imagenet(config: ml_collections.ConfigDict, eps: float = 4 / 255
             ) -> ml_collections.ConfigDict:
  """Switches `config` to Wong et al. 2020's ImageNet recipe (fast_adversarial/ImageNet):
  ResNet-50 in bfloat16, streamed ImageNet with random-resized crops, 15 epochs of SGD
  (momentum 0.9, weight decay 1e-4) with the learning rate linear through 0, 0.4, 0.04,
  0.004, 0.0004 at epochs 0, 1, 6, 12, 15, eps 2/255 or 4/255, FGSM step 1.25 eps.
  Differences: one 224-pixel size and batch 512 throughout (theirs resizes progressively,
  128/224/288 pixels at batch 512/224/128), and weight decay on every parameter (theirs
  exempts BatchNorm and biases)."""
  config.data.name = 'imagenet2012'
  config.data.pipeline = 'stream'
  config.data.crop_padding = 0
  config.model.name = 'resnet50'
  config.model.dtype = 'bfloat16'
  config.method.eps = eps
  config.optim.batch_size = 512
  config.optim.epochs = 15
  config.optim.learning_rate = 0.4
  config.optim.schedule = 'interpolate'
  config.optim.interpolate_points = ((0.0, 0.0), (1 / 15, 1.0), (6 / 15, 0.1), (12 / 15, 0.01),
                                     (1.0, 0.001))
  config.optim.weight_decay = 1e-4
  config.train.checkpoint_every_steps = 2500
  config.eval.batch_size = 256
  config.eval.n_examples = 10000
  config.eval.pgd.restarts = 1
  config.eval.periodic_n_examples = 1000
  return config


COLLAPSE_MONITOR_EXAMPLES = {'': 1000, 'smoke': 128, 'cpu': 500}  # per preset


def set_method(config: ml_collections.ConfigDict, name: str) -> ml_collections.ConfigDict:
  """Sets config.method.name = name and the collapse monitor as the method declares: on
  (train.collapse_monitor_examples; apply_preset sizes it) for a single-step method, so that a
  run that overfits catastrophically hands back its best state, not the collapsed one; off
  otherwise. Every recipe chooses its method with it."""
  if name not in methods.METHODS:
    raise ValueError(f'Unknown method {name!r}; registered: {", ".join(methods.METHODS)}.')
  config.method.name = name
  single_step = methods.METHODS[name].single_step
  config.train.collapse_monitor_examples = COLLAPSE_MONITOR_EXAMPLES[''] if single_step else 0
  return config


def apply_preset(config: ml_collections.ConfigDict, preset: str) -> ml_collections.ConfigDict:
  """Applies a named preset ('' = none) in place; see the module docstring."""
  if preset not in PRESETS:
    raise ValueError(f'Unknown preset {preset!r}; choose one of {PRESETS[1:]} (after a colon).')
  if config.train.collapse_monitor_examples:
    config.train.collapse_monitor_examples = COLLAPSE_MONITOR_EXAMPLES[preset]
  if preset == 'smoke':
    config.data.num_train_examples = 512
    config.model.preact_resnet18.width = 8
    config.model.resnet50.width = 8
    config.model.wide_resnet.depth = 10
    config.model.wide_resnet.widen_factor = 1
    config.optim.batch_size = 64
    config.optim.epochs = 2
    config.method.pgd.steps = 3
    config.method.trades.steps = 3
    config.train.log_every_steps = 4
    config.train.checkpoint_every_steps = 8
    config.eval.batch_size = 128
    config.eval.n_examples = 256
    config.eval.pgd.steps = 5
    config.eval.pgd.restarts = 2
    config.eval.fab.steps = 5
    config.eval.periodic_n_examples = 128
    config.eval.periodic_pgd_steps = 3
  elif preset == 'cpu':
    config.data.num_train_examples = 10000
    config.model.preact_resnet18.width = 16
    config.model.wide_resnet.depth = 16
    config.model.wide_resnet.widen_factor = 2
    config.optim.epochs = 10
    config.eval.batch_size = 256
    config.eval.n_examples = 1000
    config.eval.pgd.restarts = 2
    config.eval.periodic_n_examples = 500
  return config
