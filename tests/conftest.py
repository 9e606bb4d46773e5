"""Test set-up and fixtures: 8 virtual CPU devices (multi-device code paths run on any
machine), the persistent compilation cache that every entry point uses
(latentadv/compilation.py), the data directory and a trained MNIST MLP. Reference algorithms
the tests compare against live in references.py."""

import os

import flax.linen as nn
import jax
import ml_collections
import optax
import pytest

from latentadv import compilation
from latentadv.data import readers

jax.config.update('jax_num_cpu_devices', 8)
compilation.enable_cache()

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DATA_ROOT = os.path.join(REPO_ROOT, '..', 'shared', 'data')


@pytest.fixture(scope='session')
def data_root() -> str:
  """The directory with the canonical dataset files (mnist/, fashion_mnist/, cifar10/)."""
  return DATA_ROOT


class MLP(nn.Module):
  """784-64-10 MLP on (B, 28, 28, 1) images -> (B, 10) logits, with the models' interface."""

  @nn.compact
  def __call__(self, x, train=False):
    del train
    x = nn.relu(nn.Dense(64)(x.reshape(x.shape[0], -1)))
    return nn.Dense(10, name='head')(x)


def train_classifier(model: nn.Module, images, labels, steps: int = 60, batch: int = 128):
  """Variables of `model` after `steps` Adam (3e-3) steps of CE on consecutive batches of
  images (N, H, W, C) / labels (N,), one jitted scan."""
  x = images[:steps * batch].reshape(steps, batch, *images.shape[1:])
  y = labels[:steps * batch].reshape(steps, batch)
  tx = optax.adam(3e-3)

  @jax.jit
  def train(variables):
    def step(carry, batch):
      variables, opt_state = carry
      grads = jax.grad(lambda v: optax.softmax_cross_entropy_with_integer_labels(
          model.apply(v, batch[0]), batch[1]).mean())(variables)
      updates, opt_state = tx.update(grads, opt_state)
      return (optax.apply_updates(variables, updates), opt_state), None
    (variables, _), _ = jax.lax.scan(step, (variables, tx.init(variables)), (x, y))
    return variables

  return train(model.init(jax.random.key(0), x[0]))


@pytest.fixture(scope='session')
def mnist_mlp(data_root):
  """(MLP(), its variables after train_classifier on MNIST, test images (N, 28, 28, 1) and
  labels (N,) as numpy): an undefended classifier for attack tests."""
  config = ml_collections.ConfigDict(
      dict(name='mnist', source='local', dir=data_root, tfds_data_dir=''))
  images, labels = readers.load_split(config, 'train')
  model = MLP()
  variables = train_classifier(model, images, labels)
  return (model, variables, *readers.load_split(config, 'test'))
