"""Tests for the evaluator: suites, the still-robust bookkeeping, sharding, BPDA, foolbox, any
JAX classifier (latentadv.robustness) and resumable evaluation."""

import json
import logging
import os
from typing import Any

import flax.linen as nn
import foolbox
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from conftest import MLP
from conftest import train_classifier
import latentadv
from latentadv import base_config
from latentadv import evaluate
from latentadv import models
from latentadv import parallel
from latentadv import train
from latentadv import train_state
from latentadv.attacks import registry
from latentadv.attacks.attack import Attack
from latentadv.data import readers
from latentadv.evaluate import progress as progress_lib
from latentadv.models import soft_quant

EPS = 0.06  # Leaves the undefended MLP below partly robust under PGD.


@pytest.fixture(scope='module')
def mnist(data_root):
  """(train images, train labels, first 256 test images, their labels) of MNIST."""
  config = ml_collections.ConfigDict(
      dict(name='mnist', source='local', dir=data_root, tfds_data_dir=''))
  train_images, train_labels = readers.load_split(config, 'train')
  test_images, test_labels = readers.load_split(config, 'test')
  return train_images, train_labels, test_images[:256], test_labels[:256]


@pytest.fixture(scope='module')
def mlp(mnist):
  """(model, trained variables) of the MLP."""
  model = MLP()
  return model, train_classifier(model, mnist[0], mnist[1])


def _eval_config(changes: dict):
  """The smoke preset's config.eval with few steps, then `changes` ({'a.b': value})."""
  config = base_config.get_config('smoke').eval
  config.update_from_flattened_dict({'pgd.steps': 10, 'pgd.restarts': 2, 'apgd.steps': 10,
                                     'apgd.targets': 3, 'square.queries': 100, **changes})
  return config


def _evaluator(model, suite, mesh=None, eps=EPS, **changes):
  attacks = registry.build_suite(suite, _eval_config(changes), eps,
                                 has_quantiser=soft_quant.has_quantiser(model))
  return evaluate.Evaluator(model.apply, mesh or parallel.make_mesh(jax.devices()[:1]),
                            attacks, eps=eps, batch_size=64,
                            surrogate_apply_fn=soft_quant.straight_through(model).apply)


def test_autoattack_suite_records_a_consistent_worst_case(mnist, mlp):
  model, variables = mlp
  _, _, x, y = mnist
  record, examples = _evaluator(model, 'autoattack').evaluate(variables, x, y,
                                                              jax.random.key(0))
  assert (record['clean_accuracy'] >= record['apgd-ce_accuracy'] >= record['apgd-t_accuracy']
          >= record['square_accuracy'] == record['robust_accuracy'])
  assert 0 < record['robust_accuracy'] < record['clean_accuracy']
  fooled = examples['fooled_by_apgd-ce'] | examples['fooled_by_apgd-t'] | examples[
      'fooled_by_square']
  np.testing.assert_array_equal(examples['robust'], examples['correct'] & ~fooled)
  assert not (fooled & ~examples['correct']).any()  # Only correct points are attacked.
  # Each attack ran only on the points the ones before it left robust.
  assert not (examples['fooled_by_apgd-ce'] & examples['fooled_by_apgd-t']).any()
  assert record['attacks']['apgd-t']['targets'] == 3 and record['n_examples'] == len(y)


def test_results_are_deterministic_for_a_seed(mnist, mlp):
  model, variables = mlp
  _, _, x, y = mnist
  evaluator = _evaluator(model, 'pgd')
  first = evaluator.evaluate(variables, x, y, jax.random.key(3))[1]
  second = evaluator.evaluate(variables, x, y, jax.random.key(3))[1]
  for key in first:
    np.testing.assert_array_equal(first[key], second[key])


def test_runs_attack_only_the_points_still_robust(mlp):
  """A fake attack fooling example i in run i % 3 (i is written into pixel (0, 0))."""
  traced_shapes = []

  def fooled(logits_fn, x, y, rng, run):
    del logits_fn, y, rng
    traced_shapes.append(x.shape)
    return jnp.round(x[:, 0, 0, 0] * 1000).astype(jnp.int32) % 3 == run

  model, variables = mlp
  n = 200
  x = np.zeros((n, 28, 28, 1), np.float32)
  x[:, 0, 0, 0] = np.arange(n) / 1000
  predictions = np.asarray(model.apply(variables, x).argmax(-1))
  labels = np.where(np.arange(n) % 5 == 0, (predictions + 1) % 10, predictions)
  attack = Attack('fake', 2, fooled, {})
  evaluator = evaluate.Evaluator(model.apply, parallel.make_mesh(jax.devices()[:1]), [attack],
                                 eps=0.0, batch_size=64)
  record, examples = evaluator.evaluate(variables, x, labels, jax.random.key(0))
  correct = np.arange(n) % 5 != 0
  np.testing.assert_array_equal(examples['correct'], correct)
  expected = correct & (np.arange(n) % 3 < 2)
  np.testing.assert_array_equal(examples['fooled_by_fake'], expected)
  np.testing.assert_array_equal(examples['robust'], correct & ~expected)
  assert record['fake_accuracy'] == pytest.approx((correct & ~expected).mean())
  # Padded to 64 / 2^k: each size compiled once, the last batches cheaper than full ones.
  assert len(set(traced_shapes)) == len(traced_shapes) > 1
  assert {shape[0] for shape in traced_shapes} <= {64, 32, 16, 8}


def test_eight_devices_give_the_results_of_one(mnist, mlp):
  model, variables = mlp
  _, _, x, y = mnist
  one = _evaluator(model, 'pgd').evaluate(variables, x, y, jax.random.key(1))[1]
  eight = _evaluator(model, 'pgd', mesh=parallel.make_mesh()).evaluate(
      variables, x, y, jax.random.key(1))[1]
  for key in one:
    np.testing.assert_array_equal(one[key], eight[key])


def test_bpda_breaks_a_quantised_model_that_masks_its_gradient(mnist):
  """A near-hard 4-level quantiser (T = 1e-3) zeroes input gradients almost everywhere: PGD
  through it fails, BPDA does not (measured: PGD 47 %, BPDA 0 % robust)."""
  model = soft_quant.SoftQuantized(MLP(), levels=4, temperature=1e-3, learnable=False)
  variables = train_classifier(model, mnist[0], mnist[1])
  _, _, x, y = mnist
  eps = 0.3
  gradient = jax.grad(lambda x: optax.softmax_cross_entropy_with_integer_labels(
      model.apply(variables, x), y).sum())(jnp.asarray(x))
  assert np.mean(np.abs(np.asarray(gradient)) > 1e-6) < 0.05  # Zero almost everywhere.
  plain = _evaluator(model, 'pgd', eps=eps)(variables, x, y, jax.random.key(0))
  bpda = _evaluator(model, 'bpda', eps=eps)(variables, x, y, jax.random.key(0))
  assert plain['clean_accuracy'] > 0.85
  assert bpda['robust_accuracy'] < 0.05 and plain['robust_accuracy'] > 0.3
  assert bpda['attacks']['bpda']['straight_through']
  autoattack = _evaluator(model, 'autoattack', eps=eps)(variables, x, y, jax.random.key(0))
  assert autoattack['attacks']['apgd-ce']['straight_through']


def test_our_pgd_is_no_weaker_than_foolbox(mnist, mlp):
  """Independent check: foolbox's L-inf PGD on the same model and points (1 restart)."""
  model, variables = mlp
  _, _, x, y = mnist
  steps, step_size = 20, EPS / 4
  ours = _evaluator(model, 'pgd', **{'pgd.steps': steps, 'pgd.restarts': 1,
                                     'pgd.step_size': 0.25})(
      variables, x, y, jax.random.key(0))
  fmodel = foolbox.JAXModel(jax.jit(lambda x: model.apply(variables, x)), bounds=(0, 1))
  attack = foolbox.attacks.LinfPGD(steps=steps, abs_stepsize=step_size, random_start=True)
  _, _, success = attack(fmodel, jnp.asarray(x), jnp.asarray(y), epsilons=EPS)
  theirs = 1 - float(np.mean(np.asarray(success)))
  assert abs(ours['clean_accuracy'] - np.mean(np.asarray(fmodel(jnp.asarray(x))).argmax(-1)
                                              == y)) < 1e-9
  assert ours['robust_accuracy'] <= theirs + 0.01, (ours['robust_accuracy'], theirs)


class TinyCNN(nn.Module):
  """A 3x3 convolution (8 channels, stride 2) and a dense head on (B, 28, 28, 1) images; the
  fields are those the trainer passes to a registered model (normalisation: none)."""
  num_classes: int = 10
  mean: tuple = (0.0,)
  std: tuple = (1.0,)
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, train=False):
    del train
    x = nn.relu(nn.Conv(8, (3, 3), strides=2)(x))
    return nn.Dense(self.num_classes, name='head')(x.reshape(x.shape[0], -1))


@pytest.mark.parametrize('suite', ['pgd', 'autoattack'])
def test_rolled_and_unrolled_attacks_give_the_same_verdicts(mnist, suite):
  """Every attack's per-example flags with its step loops rolled equal those with them
  unrolled, on a small convolutional network; FAB-T's norms agree to float32 round-off (XLA
  fuses the two programs differently)."""
  model = TinyCNN()
  variables = train_classifier(model, mnist[0], mnist[1])
  _, _, x, y = mnist
  results = {loop: _evaluator(model, suite, attack_loops=loop, **{'fab.steps': 10}).evaluate(
                 variables, x, y, jax.random.key(4))
             for loop in ('rolled', 'unrolled')}
  (rolled_record, rolled), (unrolled_record, unrolled) = results['rolled'], results['unrolled']
  assert rolled.keys() == unrolled.keys()
  for key in rolled:
    if rolled[key].dtype.kind == 'f':
      np.testing.assert_allclose(rolled[key], unrolled[key], rtol=1e-5, err_msg=key)
    else:
      np.testing.assert_array_equal(rolled[key], unrolled[key], err_msg=key)
  assert 0 < rolled_record['robust_accuracy'] < rolled_record['clean_accuracy']
  looped = [name for name, settings in unrolled_record['attacks'].items()
            if 'unrolled' in settings]
  assert looped and all(unrolled_record['attacks'][name]['unrolled'] for name in looped)
  assert not any(rolled_record['attacks'][name]['unrolled'] for name in looped)


def test_records_compile_and_run_seconds_per_attack(mnist, mlp):
  """Each attack's compile and run seconds add up to its seconds; a second evaluation by the
  same Evaluator reuses every compiled program."""
  model, variables = mlp
  _, _, x, y = mnist
  evaluator = _evaluator(model, 'autoattack')
  first, second = (evaluator.evaluate(variables, x[:100], y[:100], jax.random.key(0))[0]
                   for _ in range(2))
  for name, attack in first['attacks'].items():
    assert attack['compile_seconds'] > 0, name
    assert attack['run_seconds'] > 0, name
    assert attack['compile_seconds'] + attack['run_seconds'] == pytest.approx(attack['seconds'])
    assert attack['batch_sizes'] and set(attack['batch_sizes']) <= {64, 32, 16, 8}
    assert second['attacks'][name]['compile_seconds'] == 0
    assert second['attacks'][name]['batch_sizes'] == attack['batch_sizes']
  assert first['compile_seconds'] > sum(a['compile_seconds'] for a in first['attacks'].values())
  assert first['compile_seconds'] + first['run_seconds'] == pytest.approx(first['seconds'])
  assert second['compile_seconds'] == 0


@pytest.mark.parametrize('n,sizes', [(67, [8, 64]), (600, [8, 16, 64, 256]), (256, [256]),
                                     (3, [8])])
def test_a_run_is_split_into_full_batches_and_halved_sizes(n, sizes):
  # batch_size 256: 67 points run as 64 + 8 (not padded to 128), 600 as 2 x 256 + 64 + 16 + 8.
  seen = []

  def never_fooled(logits_fn, x, y, rng, run):
    del logits_fn, rng, run
    seen.append(x.shape[0])
    return jnp.zeros(y.shape, bool)

  def always_class_zero(variables, x, train):
    del variables, train
    return jnp.zeros((x.shape[0], 10)).at[:, 0].set(1.0)

  attack = Attack('never', 1, never_fooled, {})
  evaluator = evaluate.Evaluator(always_class_zero, parallel.make_mesh(jax.devices()[:1]),
                                 [attack], eps=EPS, batch_size=256)
  record, per_example = evaluator.evaluate({}, np.zeros((n, 4, 4, 1), np.float32),
                                           np.zeros(n, np.int32), jax.random.key(0))
  assert record['attacks']['never']['batch_sizes'] == sizes
  assert sorted(set(seen)) == sizes
  assert record['robust_accuracy'] == 1.0 and per_example['robust'].shape == (n,)


@pytest.fixture(scope='module')
def cnn_workdir(tmp_path_factory, data_root):
  """(workdir, config) of a training run of TinyCNN (defined here, registered as model
  'tiny_cnn' while this module's tests run): one epoch of standard training on 512 MNIST
  images by the trainer, then its final evaluation on 96 test images, at eps 0.05."""
  with pytest.MonkeyPatch.context() as patch:
    patch.setitem(models.MODELS, 'tiny_cnn', TinyCNN)
    patch.setitem(models.MODEL_DEFAULTS, 'tiny_cnn', {})
    config = base_config.apply_preset(base_config.mnist(base_config.get_config()), 'smoke')
    config.model.name, config.method.name, config.method.eps = 'tiny_cnn', 'standard', 0.05
    config.data.update(source='local', dir=os.path.join(data_root, 'mnist'))
    config.optim.epochs = 1
    config.train.eval_every_epochs = 0
    config.eval.update(n_examples=96, batch_size=32)
    config.eval.pgd.update(steps=2, restarts=1)
    workdir = str(tmp_path_factory.mktemp('tiny_cnn'))
    train.train_and_evaluate(config, workdir)
    yield workdir, config


def _workdir_eval(workdir: str, changes: dict) -> tuple[dict, dict[str, np.ndarray]]:
  """evaluate_workdir of `workdir` with its saved config and `changes` ({'eval.x': value}):
  the eval_<suite>.json record, without its timing fields, and the .npz arrays."""
  config = evaluate.workdir_config(workdir, base_config.get_config(), changes)
  evaluate.evaluate_workdir(workdir, config)
  path = os.path.join(workdir, f'eval_{config.eval.suite}')
  with open(f'{path}.json') as f:
    record = json.load(f)
  for entry in (record, *record['attacks'].values()):
    for key in ('seconds', 'compile_seconds', 'run_seconds'):
      del entry[key]
  with np.load(f'{path}.npz') as saved:
    return record, dict(saved)


def test_robustness_of_a_jax_classifier_equals_its_workdir_evaluation(cnn_workdir):
  """latentadv.robustness on a plain function of the CNN (its parameters from the run's
  checkpoint) gives the per-example verdicts of `python -m latentadv.evaluate`'s path on
  the run, on all 8 devices."""
  workdir, config = cnn_workdir
  record, through_workdir = _workdir_eval(workdir, {'eval.suite': 'apgd-ce',
                                                    'eval.apgd.steps': 5})
  _, variables = train_state.restore_variables(workdir, config)
  images, labels = readers.eval_split(config.data, 'test', config.eval.n_examples)
  model = TinyCNN()
  ours, per_example = latentadv.robustness(
      jax.jit(lambda x: model.apply(variables, x)), images.astype(np.float32) / 255, labels,
      eps=config.method.eps, suite='apgd-ce', batch_size=config.eval.batch_size,
      seed=config.seed + 2, settings={'apgd': {'steps': 5}})
  assert per_example.keys() == through_workdir.keys()
  for key, value in through_workdir.items():
    np.testing.assert_array_equal(per_example[key], value, err_msg=key)
  assert 0 < ours['robust_accuracy'] < ours['clean_accuracy']
  assert ours['robust_accuracy'] == record['robust_accuracy']
  assert ours['attacks']['apgd-ce']['steps'] == 5


class _Interrupted(Exception):
  """Stands in for a kill after some batches."""


@pytest.fixture
def saved_batches(monkeypatch):
  """Counts Progress.put calls (finished batches) in ['count']; raises _Interrupted after the
  ['interrupt_after']-th (None: never)."""
  counter = {'count': 0, 'interrupt_after': None}
  put = progress_lib.Progress.put

  def counting_put(self, batch, outputs):
    put(self, batch, outputs)
    counter['count'] += 1
    if counter['count'] == counter['interrupt_after']:
      raise _Interrupted
  monkeypatch.setattr(progress_lib.Progress, 'put', counting_put)
  return counter


def test_an_interrupted_evaluation_resumes_to_the_files_of_an_uninterrupted_one(
    cnn_workdir, saved_batches, caplog):
  workdir, _ = cnn_workdir
  caplog.set_level(logging.INFO, logger='absl')
  changes = {'eval.suite': 'pgd', 'eval.pgd.steps': 3, 'eval.pgd.restarts': 3}
  uninterrupted = _workdir_eval(workdir, changes)
  batches = saved_batches['count']
  assert batches > 6  # clean, then runs on fewer and fewer points
  progress = os.path.join(workdir, 'eval_pgd.progress.npz')
  assert not os.path.exists(progress)  # removed when the evaluation finished
  for suffix in ('json', 'npz'):
    os.remove(os.path.join(workdir, f'eval_pgd.{suffix}'))

  saved_batches.update(count=0, interrupt_after=5)
  with pytest.raises(_Interrupted):
    _workdir_eval(workdir, changes)
  assert os.path.exists(progress) and not os.path.exists(os.path.join(workdir, 'eval_pgd.json'))
  saved_batches.update(count=0, interrupt_after=None)
  resumed = _workdir_eval(workdir, changes)
  assert saved_batches['count'] == batches - 5  # only the batches not saved ran
  assert 'Resuming the evaluation from 5 finished batches' in caplog.text
  assert resumed[0] == uninterrupted[0]
  assert resumed[1].keys() == uninterrupted[1].keys()
  for key, value in uninterrupted[1].items():
    np.testing.assert_array_equal(resumed[1][key], value, err_msg=key)

  saved_batches.update(count=0, interrupt_after=3)
  with pytest.raises(_Interrupted):
    _workdir_eval(workdir, changes)
  saved_batches.update(count=0, interrupt_after=None)
  caplog.clear()
  other = _workdir_eval(workdir, {**changes, 'eval.pgd.steps': 2})
  assert 'other settings (changed: attacks); starting afresh' in caplog.text
  assert 'Resuming' not in caplog.text
  assert other[0]['attacks']['pgd']['steps'] == 2


@pytest.mark.parametrize('kwargs,message', [
    (dict(batch_size=12), 'batch_size = 12 must be divisible'),
    (dict(settings={'apdg': {'steps': 5}}), 'apdg'),
    (dict(settings={'apgd': {'step': 5}}), 'step'),
    (dict(suite='autoatack'), 'autoatack'),
    (dict(norm='l1'), 'l1')])
def test_robustness_names_a_bad_argument(kwargs, message):
  images, labels = np.zeros((4, 28, 28, 1), np.float32), np.zeros(4, np.int32)
  with pytest.raises((ValueError, KeyError, AttributeError), match=message):
    latentadv.robustness(lambda x: x.reshape(4, -1)[:, :10], images, labels, eps=0.1,
                         **kwargs)


def test_training_evaluator_uses_the_method_norm():
  model = MLP()
  config = base_config.get_config()
  config.method.name, config.method.norm = 'pgd', 'l2'
  evaluator = evaluate.from_config(model, parallel.make_mesh(jax.devices()[:1]), config,
                                   steps=2, restarts=1)
  assert evaluator.attacks[0].settings['norm'] == 'l2'
