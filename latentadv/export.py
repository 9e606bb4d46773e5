"""Exports the latest checkpoint of a workdir to PyTorch.

  python -m latentadv.export --workdir=DIR --format=torch [--output=DIR/model.pt]

Converts the Flax variables into the torch.nn twin of the model (latentadv/torch_models.py):
conv kernels HWIO -> OIHW, dense kernels (in, out) -> (out, in), BatchNorm scale, bias, mean
and var -> weight, bias, running_mean, running_var (eps 1e-5 and momentum 0.1 in both). Writes
  model.pt             (OUTPUT) torch.save of the whole module, in eval mode: load it with
                       torch.load(OUTPUT, weights_only=False) where latentadv is installed; it
                       maps images (B, C, H, W) in [0, 1] to logits (B, classes).
  model.state_dict.pt  (beside OUTPUT) its state dict alone, in the reference layout
                       (RobustBench, fast_adversarial), without the input normalisation.
The module computes in float32, whatever config.model.dtype. Soft-quantised models are not
exportable yet. Bad input (no config.json, no or a mismatched checkpoint, an unexportable
model) ends the command with a one-line message and exit code 1; an unknown --format is a flag
error naming the valid ones.

Library: `torch_model(config)`, `to_torch(config, variables)`, `export_workdir(workdir, config,
output)`.
"""

import os
import re
import sys
from collections.abc import Mapping

import ml_collections
import numpy as np
import torch
from absl import app
from absl import flags
from absl import logging

from latentadv import checkpoint
from latentadv import compilation
from latentadv import evaluate
from latentadv import seeds
from latentadv import train_state
from latentadv import torch_models
from latentadv.data import datasets

FORMATS = ('torch',)
EXPORTABLE = ('mnist_cnn', 'preact_resnet18', 'wide_resnet')
# The torch names of the Flax ResNets' parts: a block stage{i}_block{j} (format of i, j - 1),
# its projection shortcut, the final BatchNorm and the head (torch_models.py).
_RESNET_NAMES = {
    'preact_resnet18': ('layer{}.{}', 'shortcut.0', 'bn', 'linear'),
    'wide_resnet': ('block{}.layer.{}', 'convShortcut', 'bn1', 'fc'),
}
_BLOCK = re.compile(r'stage(\d+)_block(\d+)')


class ExportError(ValueError):
  """A model this exporter cannot convert."""


def check_exportable(config: ml_collections.ConfigDict):
  """Raises ExportError unless config.model can be exported (no soft quantiser, a twin)."""
  if config.model.soft_quant.levels > 0:
    raise ExportError('Soft-quantised models (config.model.soft_quant.levels > 0) are not '
                      'exportable yet: their quantiser masks gradients, so an exported model '
                      'would need a BPDA wrapper to be attacked. Evaluate them with '
                      'python -m latentadv.evaluate --config.eval.suite=autoattack (BPDA).')
  if config.model.name not in EXPORTABLE:
    raise ExportError(f'Model {config.model.name!r} has no PyTorch twin yet; exportable '
                      f'models: {", ".join(EXPORTABLE)}.')


def torch_model(config: ml_collections.ConfigDict) -> torch.nn.Module:
  """A freshly initialised torch twin (torch_models.py) of config.model for config.data.

  Raises ExportError for a model that cannot be exported (check_exportable).
  """
  check_exportable(config)
  info = datasets.DATASETS[config.data.name]
  height, width, channels = info.image_shape
  options = config.model[config.model.name]
  if config.model.name == 'preact_resnet18':
    return torch_models.PreActResNet18(info.num_classes, options.width, channels, info.mean,
                                       info.std)
  if config.model.name == 'wide_resnet':
    return torch_models.WideResNet(options.depth, options.widen_factor, info.num_classes,
                                   options.dropout, channels, info.mean, info.std)
  normalization = (info.mean, info.std) if options.normalize else (None, None)
  return torch_models.MnistCNN(info.num_classes, (height, width), channels, *normalization)


def _tensor(array) -> torch.Tensor:
  """A float32 torch copy of a (JAX or NumPy) array."""
  return torch.tensor(np.asarray(array, np.float32))


def _conv(prefix: str, params: Mapping) -> dict[str, torch.Tensor]:
  """{prefix.weight (O, I, kh, kw)[, prefix.bias (O,)]} of a Flax Conv's params, whose kernel
  is (kh, kw, I, O)."""
  state = {f'{prefix}.weight': _tensor(params['kernel']).permute(3, 2, 0, 1).contiguous()}
  if 'bias' in params:
    state[f'{prefix}.bias'] = _tensor(params['bias'])
  return state


def _dense(prefix: str, params: Mapping) -> dict[str, torch.Tensor]:
  """{prefix.weight (out, in), prefix.bias (out,)} of a Flax Dense's kernel (in, out), bias."""
  return {f'{prefix}.weight': _tensor(params['kernel']).T.contiguous(),
          f'{prefix}.bias': _tensor(params['bias'])}


def _batch_norm(prefix: str, params: Mapping, stats: Mapping) -> dict[str, torch.Tensor]:
  """The BatchNorm2d state under prefix of a Flax BatchNorm's params (scale, bias (C,)) and
  batch_stats (mean, var (C,)). Flax does not count updates: num_batches_tracked is 0 (torch
  reads it only with momentum=None)."""
  return {f'{prefix}.weight': _tensor(params['scale']),
          f'{prefix}.bias': _tensor(params['bias']),
          f'{prefix}.running_mean': _tensor(stats['mean']),
          f'{prefix}.running_var': _tensor(stats['var']),
          f'{prefix}.num_batches_tracked': torch.tensor(0)}


def _resnet_state(name: str, params: Mapping, stats: Mapping) -> dict[str, torch.Tensor]:
  """The torch state dict of the Flax PreActResNet18 or WideResNet `name`."""
  block_format, shortcut, final_bn, head = _RESNET_NAMES[name]
  state = _conv('conv1', params['stem_conv'])
  for flax_name, block in params.items():
    match = _BLOCK.fullmatch(flax_name)
    if not match:
      continue
    prefix = block_format.format(int(match[1]), int(match[2]) - 1)
    for norm in ('bn1', 'bn2'):
      state.update(_batch_norm(f'{prefix}.{norm}', block[norm], stats[flax_name][norm]))
    for conv in ('conv1', 'conv2'):
      state.update(_conv(f'{prefix}.{conv}', block[conv]))
    if 'shortcut' in block:
      state.update(_conv(f'{prefix}.{shortcut}', block['shortcut']))
  state.update(_batch_norm(final_bn, params['final_bn'], stats['final_bn']))
  state.update(_dense(head, params['head']))
  return state


def _mnist_cnn_state(params: Mapping, image_shape: tuple[int, int, int]
                     ) -> dict[str, torch.Tensor]:
  """The torch state dict of the Flax MnistCNN for images (H, W, C); fc's kernel rows go from
  the NHWC order of Flax's flatten, (H/4, W/4, 32), to torch's NCHW, (32, H/4, W/4)."""
  height, width, _ = image_shape
  kernel = np.asarray(params['fc']['kernel'])  # (H/4 W/4 32, 100)
  kernel = kernel.reshape(height // 4, width // 4, -1, kernel.shape[-1]).transpose(
      2, 0, 1, 3).reshape(kernel.shape)
  return {**_conv('0', params['conv1']), **_conv('2', params['conv2']),
          **_dense('5', {**params['fc'], 'kernel': kernel}), **_dense('7', params['head'])}


def to_torch(config: ml_collections.ConfigDict, variables: Mapping) -> torch.nn.Module:
  """The torch twin of config's model holding the Flax `variables` ({'params': ...,
  'batch_stats': ...} as state.restore_variables returns), in eval mode.

  Every parameter and buffer of the twin is set (load_state_dict is strict). Raises
  ExportError for a model that cannot be exported (check_exportable).
  """
  module = torch_model(config)
  params = variables['params']
  if config.model.name == 'mnist_cnn':
    state = _mnist_cnn_state(params, datasets.DATASETS[config.data.name].image_shape)
  else:
    state = _resnet_state(config.model.name, params, variables['batch_stats'])
  module.load_state_dict(state)
  return module.eval()


def state_dict_path(output: str) -> str:
  """Where export_workdir writes the state dict beside `output`: DIR/model.state_dict.pt for
  DIR/model.pt."""
  return os.path.splitext(output)[0] + '.state_dict.pt'


def export_workdir(workdir: str, config: ml_collections.ConfigDict,
                   output: str, state: str = 'kept',
                   seed_index: int | None = None) -> torch.nn.Module:
  """Converts the run's `state` in `workdir` (trained with `config`; 'kept': the best state
  where training collapsed, else the last; 'last': the latest checkpoint) to its torch twin,
  writes it to `output` (torch.save of the module) and its state dict to
  state_dict_path(output), and returns the module (eval mode). A run of K > 1 seeds needs
  seed_index in [0, K) (the model of seed config.seed + k).

  Raises ValueError for a missing or bad seed_index, ExportError for a model that cannot be exported, FileNotFoundError without a
  checkpoint, checkpoint.CheckpointError for checkpoints that do not match `config`.
  """
  check_exportable(config)  # before the checkpoint is read
  _, variables = train_state.restore_variables(workdir, config, state, seed_index)
  module = to_torch(config, variables)
  os.makedirs(os.path.dirname(os.path.abspath(output)), exist_ok=True)
  torch.save(module, output)
  torch.save(module.state_dict(), state_dict_path(output))
  return module


def _main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  compilation.enable_cache()
  logging.set_verbosity(logging.WARNING)  # No per-restore INFO lines of orbax.
  output = FLAGS.output or os.path.join(FLAGS.workdir, 'model.pt')
  try:
    config = evaluate.workdir_config(FLAGS.workdir, base_config.get_config(), {})
    module = export_workdir(FLAGS.workdir, config, output, FLAGS.state, FLAGS.seed_index)
  except (ExportError, FileNotFoundError, ValueError, checkpoint.CheckpointError) as error:
    sys.exit(' '.join(f'{type(error).__name__}: {error}'.split()))
  parameters = sum(p.numel() for p in module.parameters())
  print(f'Exported {config.model.name} ({parameters:,} parameters) of {FLAGS.workdir} to '
        f'{output} (module) and {state_dict_path(output)} (state dict), torch '
        f'{torch.__version__}.')


if __name__ == '__main__':
  from latentadv import base_config  # pylint: disable=g-import-not-at-top
  FLAGS = flags.FLAGS
  flags.DEFINE_string('workdir', None, 'Directory of a training run (with config.json).')
  flags.DEFINE_enum('format', 'torch', FORMATS, 'Export format.')
  flags.DEFINE_string('output', None, 'Path of the exported model (default WORKDIR/model.pt).')
  flags.DEFINE_enum('state', 'kept', checkpoint.STATES, checkpoint.STATE_HELP)
  flags.DEFINE_integer('seed_index', None, seeds.SEED_INDEX_HELP + ' Required there.')
  flags.mark_flag_as_required('workdir')
  app.run(_main)
