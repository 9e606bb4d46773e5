"""EAE, regularised single-step AT and Free-AT: each method's defining property and its cost.

Every method also runs through the contract test of test_methods.py (it iterates the registry).
"""

import os

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from latentadv import base_config
from latentadv import checkpoint
from latentadv import methods
from latentadv import parallel
from latentadv import train_state
from latentadv import train
from latentadv.data import datasets
from latentadv.data import readers
from latentadv.methods import common
from latentadv.methods import eae
from latentadv.methods import single_step_reg
from test_methods import _loss, _setup

from conftest import DATA_ROOT


def _count_in_jaxpr(jaxpr) -> int:
  """Convolutions in a jaxpr, including nested ones (jit, custom_vjp, ...)."""
  total = 0
  for eqn in jaxpr.eqns:
    total += eqn.primitive.name == 'conv_general_dilated'
    for value in eqn.params.values():
      for inner in value if isinstance(value, (list, tuple)) else [value]:
        inner = getattr(inner, 'jaxpr', inner)
        if hasattr(inner, 'eqns'):
          total += _count_in_jaxpr(inner)
  return total


# ----------------------------------------------------------------------------------------- EAE

def _features_and_head(batch=64, dim=12, classes=5, seed=0):
  keys = jax.random.split(jax.random.key(seed), 3)
  features = jax.nn.relu(jax.random.normal(keys[0], (batch, dim)))
  head = {'kernel': jax.random.normal(keys[1], (dim, classes)),
          'bias': 0.1 * jax.random.normal(keys[2], (classes,))}
  return features, head


def test_eae_step_reaches_the_linear_heads_boundary_for_seeds_only():
  features, head = _features_and_head()
  logits = eae.head_logits(head, features)
  # Labels: the prediction for 3/4 of the examples (correct), another class for the rest.
  labels = logits.argmax(-1).at[48:].set((logits.argmax(-1)[48:] + 1) % logits.shape[1])
  step, seeds = jax.jit(lambda h: eae.latent_step(head, h, labels, quantile=0.5, overshoot=0.0,
                                                  eps_latent=1e6))(features)
  z, labels_np = np.asarray(logits), np.asarray(labels)
  others = np.where(np.eye(z.shape[1], dtype=bool)[labels_np], -np.inf, z)
  runner_up = others.argmax(-1)
  margin = z[np.arange(len(z)), labels_np] - others.max(-1)  # z_y - z_j
  expected_seeds = (margin > 0) & (margin < np.quantile(margin, 0.5))
  np.testing.assert_array_equal(np.asarray(seeds), expected_seeds)
  assert 5 <= expected_seeds.sum() < (margin > 0).sum()
  assert not np.asarray(step)[~expected_seeds].any()

  moved = np.asarray(eae.head_logits(head, features + step))
  rows = np.flatnonzero(expected_seeds)
  gap = moved[rows, runner_up[rows]] - moved[rows, labels_np[rows]]
  np.testing.assert_allclose(gap, 0.0, atol=1e-4)  # on the boundary z_j = z_y
  assert (margin[rows] > 1e-2).all()  # ... starting clearly off it

  # Overshoot crosses the boundary; the cap bounds the step's L2 norm.
  overshot, _ = eae.latent_step(head, features, labels, quantile=0.5, overshoot=0.1,
                                eps_latent=1e6)
  crossed = np.asarray(eae.head_logits(head, features + overshot))
  assert (crossed[rows, runner_up[rows]] > crossed[rows, labels_np[rows]]).all()
  capped, _ = eae.latent_step(head, features, labels, quantile=0.5, overshoot=0.0,
                              eps_latent=0.05)
  norms = np.linalg.norm(np.asarray(capped)[rows], axis=-1)
  uncapped = np.linalg.norm(np.asarray(step)[rows], axis=-1)
  np.testing.assert_allclose(norms, np.minimum(uncapped, 0.05), rtol=1e-5)
  assert (uncapped > 0.05).any()


def _method_convolutions(name: str) -> int:
  """Convolutions in the parameter gradient of method `name`'s loss on the MNIST CNN."""
  config, model, params, state, batch = _setup('mnist_cnn', method=name)
  def loss_of_params(p):
    return methods.METHODS[name].loss(model.apply, p, state, batch, jax.random.key(0),
                                      config.method)[0]
  return _count_in_jaxpr(jax.make_jaxpr(jax.grad(loss_of_params))(params).jaxpr)


def test_eae_spends_no_backward_pass_on_the_example():
  """The latent step is closed-form: the EAE step has exactly standard training's convolutions."""
  standard = _method_convolutions('standard')
  assert standard > 0
  assert _method_convolutions('eae') == standard


def test_eae_adds_the_latent_term_to_one_standard_forward_pass():
  """The clean CE is standard training's; the loss adds lam times the seeds' CE at h + r."""
  config, model, params, state, batch = _setup('mnist_cnn', method='eae', batch=16)
  config.method.eae.lam = 0.5
  rng = jax.random.key(2)
  # Seeds need a batch more than half correct (q = 0.5): label 12 of 16 with the predictions.
  logits, _ = jax.jit(lambda x: common.forward(model.apply, params, state, x, rng, train=True))(
      batch['image'])
  batch = {**batch, 'label': batch['label'].at[:12].set(logits.argmax(-1)[:12])}
  standard_loss, _, _ = _loss('standard', config, model, params, state, batch, rng)
  loss, metrics, _ = _loss('eae', config, model, params, state, batch, rng)
  assert float(metrics['ce']) == pytest.approx(float(standard_loss), rel=1e-5)
  assert float(loss) == pytest.approx(float(metrics['ce'] + 0.5 * metrics['latent_ce']),
                                      rel=1e-5)
  assert 0 < float(metrics['seed_fraction']) <= 0.5
  assert float(metrics['latent_ce']) > 0


# ----------------------------------------------------------------------- single-step regulariser

_TERMS = ('logit_pairing', 'random_start_gap', 'linearity')


def _reg_value_and_grad(config, model, params, state, batch, rng, name='single_step_reg'):
  def loss_fn(p):
    loss, metrics, _ = methods.METHODS[name].loss(model.apply, p, state, batch, rng,
                                                  config.method)
    return loss, metrics
  return jax.jit(jax.value_and_grad(loss_fn, has_aux=True))(params)


def _mnist_reg_setup():
  config, model, params, state, batch = _setup('mnist_cnn', method='single_step_reg', batch=16)
  config.method.eps = 0.3
  return config, model, params, state, batch


def test_single_step_reg_without_regularisers_is_fgsm():
  config, model, params, state, batch = _mnist_reg_setup()
  for term in _TERMS:
    config.method.single_step_reg[term] = 0.0
  rng = jax.random.key(3)
  (loss, metrics), grads = _reg_value_and_grad(config, model, params, state, batch, rng)
  (fgsm_loss, _), fgsm_grads = _reg_value_and_grad(config, model, params, state, batch, rng,
                                                   name='fgsm')
  assert float(loss) == pytest.approx(float(fgsm_loss), rel=1e-6)
  chex.assert_trees_all_close(grads, fgsm_grads, rtol=1e-5, atol=1e-7)
  assert all(float(metrics[term]) == 0.0 for term in _TERMS)


@pytest.mark.parametrize('term', _TERMS)
def test_each_regulariser_alone_adds_its_weighted_term_and_moves_the_gradient(term):
  config, model, params, state, batch = _mnist_reg_setup()
  for other in _TERMS:
    config.method.single_step_reg[other] = 0.0
  rng = jax.random.key(3)
  (fgsm_loss, _), fgsm_grads = _reg_value_and_grad(config, model, params, state, batch, rng)
  weight = 0.7
  config.method.single_step_reg[term] = weight
  (loss, metrics), grads = _reg_value_and_grad(config, model, params, state, batch, rng)
  assert float(metrics[term]) > 1e-4
  assert all(float(metrics[other]) == 0.0 for other in _TERMS if other != term)
  assert float(metrics['ce']) == pytest.approx(float(fgsm_loss), rel=1e-6)
  assert float(loss) == pytest.approx(float(fgsm_loss + weight * metrics[term]), rel=1e-5)
  moved = jax.tree.map(lambda a, b: float(jnp.abs(a - b).max()), grads, fgsm_grads)
  assert max(jax.tree.leaves(moved)) > 1e-5


class _LinearModel(nn.Module):
  """Logits = W x + b on flattened images: CE is smooth in x, curved only through softmax."""

  @nn.compact
  def __call__(self, x, train=False, output='logits'):
    del train, output
    return nn.Dense(10)(x.reshape((x.shape[0], -1)))


def test_linearity_term_is_second_order_small_for_a_linear_model():
  """R3 is the remainder of the first-order expansion of CE(W x + b): at most
  0.25 ||W delta||^2 per example (softmax CE's Hessian in the logits has norm <= 1/2), which
  is tiny against the first-order change at a small eps. A wrong inner product or sign fails."""
  config, _, _, _, batch = _setup('mnist_cnn', method='single_step_reg', batch=16)
  eps = 1e-3
  config.method.eps = eps
  model = _LinearModel()
  params = jax.jit(model.init)(jax.random.key(0), batch['image'])['params']
  x, y = batch['image'], batch['label']
  _, metrics, _ = jax.jit(lambda p: single_step_reg.loss(
      model.apply, p, {}, batch, jax.random.key(1), config.method))(params)
  grad = common.input_gradient(lambda x: model.apply({'params': params}, x), x, y)
  delta = jnp.clip(x + eps * jnp.sign(grad), 0, 1) - x
  first_order = np.abs(np.asarray((delta * grad).reshape(16, -1).sum(-1))).mean()
  w_delta = model.apply({'params': params}, delta) - params['Dense_0']['bias']
  bound = 0.25 * float((w_delta ** 2).sum(-1).mean())
  assert 0 < float(metrics['linearity']) <= bound * (1 + 1e-3) + 1e-7
  assert bound < 0.05 * first_order


# ------------------------------------------------------------------------------------ Free-AT

def _free_config(replays=8, crop_padding=0, flip=False):
  config = base_config.apply_preset(base_config.mnist(base_config.get_config('smoke')), 'smoke')
  config.method.name = 'free'
  config.method.free.replays = replays
  config.optim.batch_size = 16
  config.data.crop_padding, config.data.flip = crop_padding, flip
  return config


def _free_step(config, mesh=None, learning_rate=None):
  """(model, jitted train step, initial state with the carry, a fixed batch (16, 28, 28, 1))."""
  model = train_state.build_model(config)
  if learning_rate is not None:
    config.optim.schedule, config.optim.learning_rate = 'constant', learning_rate
  schedule = train_state.learning_rate_schedule(config.optim, 100)
  tx = train_state.make_optimizer(config.optim, schedule)
  shape = datasets.DATASETS[config.data.name].image_shape
  mesh = mesh or parallel.make_mesh(jax.devices()[:1])
  state = jax.device_put(
      train_state.init_state(model, tx, jax.random.key(0), shape,
                           train_state.init_carry(config, shape)), parallel.replicated(mesh))
  step = train.jit_train_step(
      train.make_train_step(model.apply, methods.METHODS['free'].loss, tx, schedule, config),
      state, mesh)
  rng = np.random.default_rng(0)
  batch = {'image': rng.random((16, *shape), dtype=np.float32),
           'label': rng.integers(0, 10, 16).astype(np.int32)}
  return model, step, state, parallel.global_batch(batch, mesh)


def test_free_perturbation_carries_over_between_replays_and_minibatches():
  config = _free_config()
  eps = config.method.eps
  model, step, state, batch = _free_step(config)
  other_batch = {'image': 1.0 - batch['image'], 'label': (batch['label'] + 3) % 10}
  rng = jax.random.key(1)

  @jax.jit
  def loss_and_delta_grad(params, delta, batch):
    """The Free-AT loss at delta and its gradient w.r.t. delta, computed independently."""
    def loss(delta):
      x = jnp.clip(batch['image'] + delta, 0, 1)
      return common.cross_entropy(model.apply({'params': params}, x), batch['label'])
    return jax.value_and_grad(loss)(delta)

  np.testing.assert_array_equal(state.carry['perturbation'], 0.0)
  deltas = [np.zeros(batch['image'].shape, np.float32)]
  for current in (batch, batch, other_batch):  # two replays, then the next minibatch
    expected_loss, grad = loss_and_delta_grad(state.params, state.carry['perturbation'], current)
    state, metrics = step(state, current, rng)
    # Each step starts from the perturbation the previous one left, whatever the batch.
    assert float(metrics['loss']) == pytest.approx(float(expected_loss), rel=1e-5)
    expected = np.clip(deltas[-1] + eps * np.sign(np.asarray(grad)), -eps, eps)
    np.testing.assert_allclose(state.carry['perturbation'], expected, atol=1e-6)
    deltas.append(np.asarray(state.carry['perturbation']))
  assert np.abs(deltas[1]).max() == pytest.approx(eps)
  assert not np.array_equal(deltas[1], deltas[2])


def test_free_step_has_one_backward_pass():
  """Free's step computes weight and perturbation gradients in one backward pass: the only
  convolution beyond standard training's is the input gradient of the first convolution
  (standard training does not need it). A second pass would add at least three."""
  counts = {}
  for name in ('standard', 'free'):
    config = _free_config()
    config.method.name = name
    model = train_state.build_model(config)
    schedule = train_state.learning_rate_schedule(config.optim, 100)
    tx = train_state.make_optimizer(config.optim, schedule)
    shape = datasets.DATASETS[config.data.name].image_shape
    state = train_state.init_state(model, tx, jax.random.key(0), shape,
                                 train_state.init_carry(config, shape))
    step = train.make_train_step(model.apply, methods.METHODS[name].loss, tx, schedule, config)
    batch = {'image': jnp.zeros((16, *shape)), 'label': jnp.zeros(16, jnp.int32)}
    counts[name] = _count_in_jaxpr(jax.make_jaxpr(step)(state, batch, jax.random.key(0)).jaxpr)
  assert counts['standard'] > 0
  assert counts['free'] == counts['standard'] + 1


def test_free_replays_share_one_augmentation_per_minibatch():
  """With eps = 0 and a zero learning rate every replay of a minibatch sees the same augmented
  images (the same loss); the next replay group draws a new augmentation."""
  config = _free_config(replays=3, crop_padding=4, flip=True)
  config.method.eps = 0.0
  _, step, state, batch = _free_step(config, learning_rate=0.0)
  losses = []
  for _ in range(6):
    state, metrics = step(state, batch, jax.random.key(1))
    losses.append(float(metrics['loss']))
  assert losses[0] == losses[1] == losses[2]
  assert losses[3] == losses[4] == losses[5]
  assert losses[3] != losses[0]


def test_free_one_device_and_eight_devices_take_the_same_steps():
  results = []
  for devices in (jax.devices()[:1], jax.devices()):
    _, step, state, batch = _free_step(_free_config(), mesh=parallel.make_mesh(devices))
    for _ in range(3):
      state, metrics = step(state, batch, jax.random.key(1))
    results.append(jax.device_get((state.params, state.carry, metrics)))
  chex.assert_trees_all_close(results[0], results[1], rtol=2e-4, atol=2e-5)


def test_trainer_replays_each_minibatch_and_checkpoints_the_perturbation(tmp_path, monkeypatch):
  config = _free_config(replays=4)
  config.data.source = 'local'
  config.data.dir = os.path.join(DATA_ROOT, 'mnist')
  config.optim.batch_size = 64
  config.train.eval_every_epochs = 0
  served = []
  original_batch = readers.MemoryBatches.batch

  def recording_batch(self, index):
    served.append(index)
    return original_batch(self, index)
  monkeypatch.setattr(readers.MemoryBatches, 'batch', recording_batch)
  results = train.train_and_evaluate(config, str(tmp_path))
  steps_per_epoch = 512 // 64
  assert results['steps'] == config.optim.epochs * steps_per_epoch == 16
  # 16 optimizer steps on 4 minibatches: each read once, in order, and trained on 4 times.
  assert served == [0, 1, 2, 3]

  model = train_state.build_model(config)
  tx = train_state.make_optimizer(config.optim, train_state.learning_rate_schedule(config.optim, 1))
  abstract = jax.eval_shape(lambda rng: train_state.init_state(
      model, tx, rng, (28, 28, 1), train_state.init_carry(config, (28, 28, 1))), jax.random.key(0))
  restored, _ = checkpoint.Checkpoints(str(tmp_path), 1, 1).restore(abstract)
  delta = np.asarray(restored.carry['perturbation'])
  assert delta.shape == (64, 28, 28, 1)
  assert np.abs(delta).max() == pytest.approx(config.method.eps)
  # The evaluator's loader restores a Free-AT checkpoint (carry included) too.
  train_state.restore_variables(str(tmp_path), config)
