"""Tests for the PyTorch export: the exported twin of every model computes our logits."""

import os
import subprocess
import sys

import jax
import numpy as np
import pytest
import torch

from conftest import DATA_ROOT
from conftest import REPO_ROOT
from latentadv import base_config
from latentadv import checkpoint
from latentadv import evaluate
from latentadv import export
from latentadv import parallel
from latentadv import train
from latentadv import torch_models
from latentadv.data import readers

MODELS = {'mnist_cnn': torch_models.MnistCNN, 'preact_resnet18': torch_models.PreActResNet18,
          'wide_resnet': torch_models.WideResNet}
# Keys of the reference layouts (fast_adversarial's MNIST Sequential, RobustBench's ResNets).
REFERENCE_KEYS = {
    'mnist_cnn': {'0.weight', '0.bias', '2.weight', '2.bias', '5.weight', '5.bias', '7.weight',
                  '7.bias'},
    'preact_resnet18': {'conv1.weight', 'layer1.0.bn1.running_var', 'layer2.0.shortcut.0.weight',
                        'layer4.1.conv2.weight', 'bn.running_mean', 'linear.weight'},
    'wide_resnet': {'conv1.weight', 'block1.layer.0.bn1.running_var',
                    'block2.layer.0.convShortcut.weight', 'block3.layer.0.conv2.weight',
                    'bn1.running_mean', 'fc.weight'},
}


def _tiny_config(model: str):
  """The smoke preset of `model` (PreActResNet-18 width 8, WRN-10-1 with dropout 0.3), cut to
  2 steps of standard training and a tiny final evaluation."""
  config = base_config.get_config('smoke')
  if model == 'mnist_cnn':
    config = base_config.apply_preset(base_config.mnist(config), 'smoke')
  config.model.name = model
  config.method.name = 'standard'
  config.data.source = 'local'
  config.data.dir = os.path.join(DATA_ROOT, config.data.name)
  config.data.num_train_examples = 64
  config.optim.batch_size = 32
  config.optim.epochs = 1
  config.train.eval_every_epochs = 0
  config.eval.update(dict(n_examples=8, batch_size=8))
  config.eval.pgd.update(dict(steps=1, restarts=1))
  return config


def _torch_logits(module: torch.nn.Module, images: np.ndarray) -> np.ndarray:
  """module's logits (B, classes) for NHWC images (B, H, W, C)."""
  with torch.no_grad():
    return module(torch.from_numpy(images).permute(0, 3, 1, 2)).numpy()


@pytest.mark.parametrize('model', MODELS)
def test_exported_model_and_state_dict_compute_our_logits(model, tmp_path, monkeypatch):
  config = _tiny_config(model)
  workdir = str(tmp_path / 'run')
  # Speed only, the export reads values alone: training on one device spares orbax slicing
  # arrays replicated on 8; XLA takes ~15 s on a CPU to compile the PreActResNet's init with
  # threefry keys, ~2 s with rbg keys.
  make_mesh = parallel.make_mesh
  monkeypatch.setattr(parallel, 'make_mesh',
                      lambda devices=None: make_mesh(devices or jax.devices()[:1]))
  with jax.default_prng_impl('rbg'):
    train.train_and_evaluate(config, workdir)
  images = readers.load_split(config.data, 'test')[0][:64]
  ours = np.asarray(jax.jit(evaluate.load_model(workdir))(images))

  if model == 'mnist_cnn':  # the CLI, once
    output = str(tmp_path / 'export' / 'model.pt')
    result = subprocess.run(
        [sys.executable, '-m', 'latentadv.export', f'--workdir={workdir}', '--format=torch',
         f'--output={output}'], cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.startswith('Exported mnist_cnn (') and output in result.stdout
  else:
    output = str(tmp_path / 'model.pt')
    export.export_workdir(workdir, config, output)

  module = torch.load(output, weights_only=False)
  assert type(module) is MODELS[model] and not module.training
  np.testing.assert_allclose(_torch_logits(module, images), ours, rtol=0, atol=1e-4)

  state = torch.load(export.state_dict_path(output))
  assert REFERENCE_KEYS[model] <= set(state)
  if model == 'mnist_cnn':
    assert set(state) == REFERENCE_KEYS[model]
  else:  # 2 training steps moved every BatchNorm's running statistics off their 0 / 1 start.
    for key in [key for key in state if key.endswith('running_var')]:
      assert np.abs(state[key].numpy() - 1).max() > 1e-3, key
      assert np.abs(state[key.replace('_var', '_mean')].numpy()).max() > 1e-3, key
  fresh = export.torch_model(config)
  fresh.load_state_dict(state)
  np.testing.assert_allclose(_torch_logits(fresh.eval(), images), ours, rtol=0, atol=1e-4)


def test_unexportable_model_and_missing_checkpoint_are_clear_errors(tmp_path):
  config = _tiny_config('mnist_cnn')
  checkpoint.write_json_atomically(str(tmp_path / 'config.json'), config.to_dict())
  with pytest.raises(FileNotFoundError, match='No checkpoint in'):
    export.export_workdir(str(tmp_path), config, str(tmp_path / 'model.pt'))
  config.model.soft_quant.levels = 4
  with pytest.raises(export.ExportError, match='not exportable yet'):
    export.export_workdir(str(tmp_path), config, str(tmp_path / 'model.pt'))
  assert not os.path.exists(tmp_path / 'model.pt')
