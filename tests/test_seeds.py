"""Several seeds in one program: seed k of a K-seed run is the single run with seed + k."""

import json
import os
import shutil

import chex
import jax
import numpy as np
import pytest

from latentadv import base_config
from latentadv import checkpoint
from latentadv import evaluate
from latentadv import methods
from latentadv import parallel
from latentadv import seeds
from latentadv import train_state
from latentadv import train
from latentadv import validation
from latentadv.data import datasets
from latentadv.data import readers

from conftest import DATA_ROOT

# Seed k of a K-seed program against the single run with seed + k, after a few steps. The
# vmapped step runs the same arithmetic on the same numbers, but XLA may group and order the
# K models' convolutions and reductions differently from one model's, so float32 rounding
# differs (~1e-7 relative per operation); a sign-of-gradient attack can amplify a difference
# where a gradient entry is near zero. After 8 steps of a small CNN 1e-4 absolute / 1e-3
# relative covers that rounding and is far below the distance between two seeds' models
# (checked in the same test).
ATOL, RTOL = 1e-4, 1e-3


def _smoke_mnist(method: str = 'slat', **overrides):
  config = base_config.mnist(base_config.get_config('smoke'))
  config.method.name = method
  config.data.source = 'local'
  config.data.dir = os.path.join(DATA_ROOT, 'mnist')
  config = base_config.apply_preset(config, 'smoke')
  config.optim.epochs = 1
  config.data.num_train_examples = 256
  config.optim.batch_size = 32
  config.eval.n_examples = 64
  config.eval.periodic_n_examples = 64
  config.eval.batch_size = 64
  config.train.checkpoint_every_steps = 4
  config.train.checkpoints_to_keep = 2
  config.update_from_flattened_dict(overrides)
  return config


@pytest.fixture(scope='module')
def two_seed_run(tmp_path_factory):
  """A 2-seed SLAT run (seeds 5 and 6) with the collapse monitor: (workdir, results, config)."""
  config = _smoke_mnist(**{'seed': 5, 'num_seeds': 2, 'train.collapse_monitor_examples': 128})
  workdir = str(tmp_path_factory.mktemp('two_seeds'))
  return workdir, train.train_and_evaluate(config, workdir), config


def test_seed_k_of_a_two_seed_run_is_the_single_run_with_seed_plus_k(two_seed_run, tmp_path):
  workdir, results, config = two_seed_run
  single_config = _smoke_mnist(**{'seed': 6, 'train.collapse_monitor_examples': 128})
  single = train.train_and_evaluate(single_config, str(tmp_path))

  stacked = [train_state.restore_variables(workdir, config, 'last', k)[1] for k in range(2)]
  alone = train_state.restore_variables(str(tmp_path), single_config, 'last')[1]
  chex.assert_trees_all_close(stacked[1], alone, atol=ATOL, rtol=RTOL)
  distance = max(float(np.abs(a - b).max()) for a, b in zip(
      jax.tree.leaves(stacked[0]['params']), jax.tree.leaves(stacked[1]['params'])))
  assert distance > 100 * ATOL  # the two seeds trained two different models

  assert results['num_seeds'] == 2 and [r['seed'] for r in results['seeds']] == [5, 6]
  record = results['seeds'][1]
  assert [h['epoch'] for h in record['history']] == [h['epoch'] for h in single['history']]
  np.testing.assert_allclose(record['history'][-1]['train_loss'],
                             single['history'][-1]['train_loss'], rtol=RTOL)
  assert abs(record['final']['clean_accuracy'] - single['final']['clean_accuracy']) <= 1 / 64
  assert 'collapse_monitor' in record and record['kept_state']['state'] in ('best', 'last')
  assert record['state'] == record['kept_state']['state']
  assert record['robust_accuracy'] == record['kept_state']['final']['robust_accuracy']
  summary = results['summary']
  assert summary['robust_accuracy']['values'] == [r['robust_accuracy'] for r in results['seeds']]
  assert summary['final']['clean_accuracy']['values'] == [
      r['final']['clean_accuracy'] for r in results['seeds']]
  assert summary['collapsed_in'] == f'{summary["collapsed"]} of 2'


def test_a_two_seed_run_is_evaluated_loaded_and_refused_per_seed(two_seed_run):
  workdir, _, config = two_seed_run
  config = evaluate.workdir_config(workdir, base_config.get_config(), {
      'eval.n_examples': 32, 'eval.pgd.steps': 2, 'eval.pgd.restarts': 1})
  record = evaluate.evaluate_workdir(workdir, config)
  assert [r['seed'] for r in record['seeds']] == [5, 6]
  assert record['summary']['robust_accuracy']['values'] == [
      r['robust_accuracy'] for r in record['seeds']]
  for k in range(2):
    with open(os.path.join(workdir, f'eval_pgd_seed{k}.json')) as f:
      assert json.load(f)['robust_accuracy'] == record['seeds'][k]['robust_accuracy']
    assert os.path.exists(os.path.join(workdir, f'eval_pgd_seed{k}.npz'))
  one = evaluate.evaluate_workdir(workdir, config, seed_index=1)
  assert one['robust_accuracy'] == record['seeds'][1]['robust_accuracy']

  logits = evaluate.load_model(workdir, seed_index=0)(np.zeros((2, 28, 28, 1), np.float32))
  assert logits.shape == (2, 10)
  for bad in (None, 2, -1):
    with pytest.raises(ValueError, match=r'seed_index in \[0, 2\)'):
      evaluate.load_model(workdir, seed_index=bad)


def test_export_takes_one_seed_of_a_two_seed_run(two_seed_run, tmp_path):
  import torch  # pylint: disable=g-import-not-at-top
  from latentadv import export  # pylint: disable=g-import-not-at-top
  workdir, _, config = two_seed_run
  module = export.export_workdir(workdir, config, str(tmp_path / 'model.pt'), seed_index=1)
  images = np.random.default_rng(0).random((4, 28, 28, 1), dtype=np.float32)
  with torch.no_grad():
    logits = module(torch.from_numpy(images).permute(0, 3, 1, 2)).numpy()
  np.testing.assert_allclose(logits, evaluate.load_model(workdir, seed_index=1)(images),
                             atol=1e-4)
  with pytest.raises(ValueError, match='seed_index'):
    export.export_workdir(workdir, config, str(tmp_path / 'other.pt'))


def test_resume_of_a_two_seed_run_is_exact(two_seed_run, tmp_path):
  workdir, results, config = two_seed_run
  interrupted = str(tmp_path / 'interrupted')
  shutil.copytree(workdir, interrupted)
  os.remove(os.path.join(interrupted, 'results.json'))
  last = results['steps']
  assert checkpoint.Checkpoints(interrupted, 4, 2).all_steps() == [4, last]
  shutil.rmtree(os.path.join(interrupted, 'checkpoints', str(last)))
  resumed = train.train_and_evaluate(config, interrupted)
  for k in range(2):
    chex.assert_trees_all_equal(train_state.restore_variables(workdir, config, 'last', k)[1],
                                train_state.restore_variables(interrupted, config, 'last', k)[1])
    for key in ('clean_accuracy', 'pgd_accuracy'):
      assert resumed['seeds'][k]['final'][key] == results['seeds'][k]['final'][key]
    timeless = [[{key: value for key, value in epoch.items() if key != 'train_seconds'}
                 for epoch in run['seeds'][k]['history']] for run in (resumed, results)]
    assert timeless[0] == timeless[1]


@pytest.mark.parametrize('num_seeds,mode,loop', [
    (2, 'data', 'vmap'), (4, 'data', 'unroll'), (8, 'seeds', 'vmap'), (8, 'seeds', 'unroll')])
def test_k_seeds_on_eight_devices_train_each_model_as_its_single_step(num_seeds, mode, loop):
  config = _smoke_mnist('fgsm_rs', **{'num_seeds': num_seeds, 'seed_loop': loop})
  mesh = parallel.make_mesh()
  assert mesh.devices.size == 8
  seed_axis = seeds.SeedAxis(config, mesh)
  assert (seed_axis.mode, seed_axis.loop) == (mode, loop)  # 'auto' sharding
  model = train_state.build_model(config)
  schedule = train_state.learning_rate_schedule(config.optim, 16)
  tx = train_state.make_optimizer(config.optim, schedule)
  step = train.make_train_step(model.apply, methods.METHODS['fgsm_rs'].loss, tx, schedule,
                               config)
  shape = datasets.DATASETS['mnist'].image_shape
  initial = [train_state.init_state(model, tx, jax.random.key(s), shape) for s in seed_axis.seeds]
  data = readers.train_batches(config.data, 16, *seed_axis.reader_args())
  batch = data.batch(3)
  assert batch['image'].shape == (num_seeds, 16, *shape)

  stacked = train.jit_train_step(step, seed_axis.stack(initial), mesh, seed_axis)
  state = jax.device_put(seed_axis.stack(initial), seed_axis.state_sharding())
  new_state, metrics = stacked(state, parallel.global_batch(batch, mesh,
                                                            seed_axis.batch_sharding()),
                               jax.device_put(seed_axis.keys(), seed_axis.state_sharding()))
  assert metrics['loss'].shape == (num_seeds,)
  assert new_state.params['conv1']['kernel'].sharding.spec == (
      seed_axis.state_sharding().spec)
  single = jax.jit(step)
  for k in (0, num_seeds - 1):
    one = single(initial[k], {key: value[k] for key, value in batch.items()},
                 jax.random.key(seed_axis.seeds[k]))[0]
    chex.assert_trees_all_close(seed_axis.select(new_state, k).params, one.params,
                                atol=ATOL, rtol=RTOL)


def test_seed_stack_reads_each_seeds_own_batches():
  config = _smoke_mnist()
  stack = readers.train_batches(config.data, 32, [3, 4], 0, 1)
  for k, seed in enumerate((3, 4)):
    alone = readers.train_batches(config.data, 32, seed, 0, 1)
    for step in (0, 9):
      np.testing.assert_array_equal(stack.batch(step)['label'][k], alone.batch(step)['label'])
  read_ahead = list(stack.batches(0, 2))
  np.testing.assert_array_equal(read_ahead[1]['image'], stack.batch(1)['image'])
  assert not np.array_equal(stack.batch(0)['label'][0], stack.batch(0)['label'][1])
  config.data.pipeline = 'stream'
  streamed = list(readers.train_batches(config.data, 32, [3, 4], 0, 1).batches(8, 10))
  for key in ('image', 'label'):
    np.testing.assert_array_equal(streamed[1][key], stack.batch(9)[key])


@pytest.mark.parametrize('overrides,message', [
    ({'num_seeds': 0}, 'num_seeds'),
    ({'num_seeds': 2, 'train.collapse_monitor_examples': 128, 'train.collapse_stop': True}, 'collapse_stop'),
    ({'seed_sharding': 'models'}, 'seed_sharding'), ({'seed_loop': 'scan'}, 'seed_loop')])
def test_bad_seed_settings_are_one_config_error(overrides, message):
  with pytest.raises(validation.ConfigError, match=message):
    validation.validate(_smoke_mnist(**overrides))


def test_seeds_sharding_that_the_devices_cannot_split_is_a_config_error(tmp_path):
  config = _smoke_mnist(**{'num_seeds': 3, 'seed_sharding': 'seeds'})
  with pytest.raises(validation.ConfigError, match=r"cannot split config.num_seeds = 3 .* 8 "
                     r'devices'):
    train.train_and_evaluate(config, str(tmp_path))


def test_the_seed_loop_unrolls_on_cpu_only_unless_asked():
  assert [seeds.choose_loop('auto', backend) for backend in ('cpu', 'gpu', 'tpu')] == [
      'unroll', 'vmap', 'vmap']
  assert seeds.choose_loop('vmap', 'cpu') == 'vmap'
  assert seeds.choose_loop('unroll', 'gpu') == 'unroll'


def test_summary_counts_collapsed_seeds_and_sample_std():
  def record(clean, pgd, collapsed):
    return {'clean_accuracy': clean, 'robust_accuracy': pgd + 0.1,
            'final': {'clean_accuracy': clean, 'pgd_accuracy': pgd},
            'kept_state': {'collapsed': collapsed, 'final': {'clean_accuracy': clean,
                                                             'pgd_accuracy': pgd + 0.1}},
            'collapse_monitor': {}}
  summary = seeds.summary([record(0.5, 0.0, True), record(0.6, 0.2, False),
                           record(0.7, 0.4, True)])
  assert summary['collapsed'] == 2 and summary['collapsed_in'] == '2 of 3'
  assert summary['clean_accuracy']['values'] == [0.5, 0.6, 0.7]
  assert summary['robust_accuracy']['mean'] == pytest.approx(0.3)
  assert summary['final']['pgd_accuracy']['mean'] == pytest.approx(0.2)
  assert summary['final']['pgd_accuracy']['std'] == pytest.approx(np.sqrt(0.08 / 3))
  assert summary['kept']['pgd_accuracy']['mean'] == pytest.approx(0.3)
