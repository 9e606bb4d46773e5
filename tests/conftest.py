"""Test set-up: 8 virtual CPU devices (multi-device code paths run on any machine) and the
persistent compilation cache that every entry point uses (latentadv/compilation.py)."""

import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from latentadv import compilation
from latentadv.attacks import losses
from latentadv.attacks import norms
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


def pgd_minimal_eps(logits_fn, x, y, norm: str, upper: float, bisections: int = 8,
                    steps: int = 100) -> np.ndarray:
  """(B,) the smallest eps, to `bisections` halvings of [0, upper], at which PGD-`steps` in
  `norm` (CE, step eps / 10, a random start in the ball, any iterate counts) fools each point
  of x (B, H, W, C); `upper` where even that does not. A reference for minimal-norm attacks.
  The PGD loop is rolled (as pgd.fooled_in_restart, whose 100 unrolled steps compile slowly)."""
  def fooled_at(eps, rng):
    eps = eps[:, None, None, None]

    def objective(z):
      logits = logits_fn(z)
      return losses.cross_entropy(logits, y).sum(), logits.argmax(-1) != y

    def step(_, carry):
      x_adv, fooled = carry
      grad, wrong = jax.grad(objective, has_aux=True)(x_adv)
      x_adv = norms.project(x_adv + eps / 10 * norms.steepest_direction(grad, norm), x, eps, norm)
      return x_adv, fooled | wrong

    start = norms.project(x + norms.sample_ball(rng, x.shape, x.dtype, eps, norm), x, eps, norm)
    x_adv, fooled = jax.lax.fori_loop(0, steps, step, (start, jnp.zeros(y.shape, bool)))
    return fooled | (logits_fn(x_adv).argmax(-1) != y)

  fooled_at = jax.jit(fooled_at)
  lo, hi = np.zeros(len(y)), np.full(len(y), upper)
  for i in range(bisections):
    mid = (lo + hi) / 2
    fooled = np.asarray(fooled_at(jnp.asarray(mid, jnp.float32), jax.random.key(i)))
    lo, hi = np.where(fooled, lo, mid), np.where(fooled, mid, hi)
  return hi


def random_hyperplane_problems(b_scale: tuple[float, float]):
  """(t, w, b) for 40 projection problems in 50 dimensions: points t in [0, 1] (10 coordinates
  on the box's faces), sparse normals w and offsets b whose reach is a factor drawn from
  b_scale times that of a random point of the box (factors above 1 can be out of reach)."""
  rng = np.random.default_rng(0)
  t = rng.uniform(0, 1, (40, 50))
  t[:, :10] = rng.choice([0.0, 1.0], (40, 10))
  w = rng.normal(size=(40, 50)) * (rng.uniform(size=(40, 50)) > 0.2)
  b = (w * rng.uniform(0, 1, (40, 50))).sum(1) * rng.uniform(*b_scale, 40)
  return t, w, b


def set_key(config, dotted: str, value):
  """Sets config.<dotted> (e.g. 'model.soft_quant.levels') to value."""
  *parents, name = dotted.split('.')
  node = config
  for part in parents:
    node = node[part]
  node[name] = value
