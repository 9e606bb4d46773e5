"""The one generic trainer: data -> state -> jitted method step -> metrics, checkpoints, eval.

`train_and_evaluate(config, workdir)` trains `config.method.name` on `config.data.name`, resumes
from the latest checkpoint in `workdir` if there is one, evaluates periodically on a fixed test
subset and fully at the end, and writes config.json, results.json, TensorBoard events and
checkpoints into `workdir`.
"""

import os
import time

import jax
import ml_collections
import numpy as np
import optax
from absl import logging

from latentadv import checkpoint
from latentadv import evaluate
from latentadv import metric_log
from latentadv import methods
from latentadv import collapse_monitor
from latentadv import parallel
from latentadv import preemption
from latentadv import seeds
from latentadv import train_state
from latentadv import training_progress
from latentadv import validation
from latentadv.data import datasets
from latentadv.data import readers
from latentadv.data import transforms


def make_train_step(apply_fn, method_loss, tx: optax.GradientTransformation,
                    schedule: optax.Schedule, config: ml_collections.ConfigDict):
  """Returns train_step(state, batch, rng) -> (new state, metrics) (not yet jitted).

  batch = {'image': (B, H, W, C) uint8 in [0, 255] or float32 in [0, 1], 'label': (B,) int32};
  uint8 images are converted to float on the device. The method's noise
  is drawn from fold_in(rng, step), the augmentation from fold_in(rng, step // replays) (one
  augmentation per minibatch, see `minibatch_replays`): both depend only on (seed, step).
  A method with a carry (train_state.init_carry) gets its entries in the batch; one backward
  pass gives the gradients w.r.t. params and carry, and the method updates its carry.
  """
  method = methods.METHODS[config.method.name]
  replays = minibatch_replays(config)

  def train_step(state: train_state.TrainState, batch, rng):
    aug_rng, _ = jax.random.split(jax.random.fold_in(rng, state.step // replays))
    _, method_rng = jax.random.split(jax.random.fold_in(rng, state.step))
    images = transforms.augment(aug_rng, transforms.to_unit_interval(batch['image']),
                                config.data.crop_padding, config.data.flip)

    def loss_fn(params, carry):
      loss, metrics, model_state = method_loss(
          apply_fn, params, state.model_state,
          {'image': images, 'label': batch['label'], **carry}, method_rng, config.method)
      return loss, (metrics, model_state)

    (_, (metrics, model_state)), (grads, carry_grads) = jax.value_and_grad(
        loss_fn, argnums=(0, 1), has_aux=True)(state.params, state.carry)
    carry = method.update_carry(state.carry, carry_grads, config.method)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    new_state = train_state.TrainState(step=state.step + 1, params=optax.apply_updates(state.params, updates),
                           model_state=model_state, opt_state=opt_state, carry=carry)
    metrics = {**metrics, 'grad_norm': optax.global_norm(grads),
               'learning_rate': schedule(state.step)}
    return new_state, metrics
  return train_step


def minibatch_replays(config: ml_collections.ConfigDict) -> int:
  """Optimizer steps trained in a row on each minibatch, as the method declares (else 1).

  Step s trains on minibatch s // replays; `optim.epochs` counts optimizer-step epochs.
  """
  return methods.METHODS[config.method.name].minibatch_replays(config.method)


def jit_train_step(train_step, state: train_state.TrainState, mesh,
                   seed_axis: seeds.SeedAxis | None = None):
  """jax.jit of train_step with replicated state (donated) and a data-sharded batch; with a
  stacked `seed_axis` (K > 1 seeds), of train_step mapped over the leading seed axis of
  state, batch and rng (seed_axis.map_seeds), placed as seed_axis says (metrics then have
  shape (K,))."""
  state_sharding, batch_sharding = parallel.replicated(mesh), parallel.data_sharded(mesh)
  rng_sharding = state_sharding
  if seed_axis is not None and seed_axis.stacked:
    train_step = seed_axis.map_seeds(train_step)
    state_sharding = rng_sharding = seed_axis.state_sharding()
    batch_sharding = seed_axis.batch_sharding()
  state_shardings = jax.tree.map(lambda _: state_sharding, state)
  return jax.jit(train_step, in_shardings=(state_shardings, batch_sharding, rng_sharding),
                 out_shardings=(state_shardings, parallel.replicated(mesh)),
                 donate_argnums=0)


def _check_finite(step_metrics: list[dict], first_step: int,
                  checkpoints: checkpoint.Checkpoints, workdir: str):
  """Raises FloatingPointError naming the first step whose loss or gradient norm is NaN or
  infinite (a non-finite gradient with a finite loss is typically a second-order term); a
  metric of shape (K,) (K seeds) names the seeds.

  Pending checkpoint saves are completed first, so the checkpoint it names is on disk.
  """
  for offset, metrics in enumerate(step_metrics):
    bad = []
    for name in ('loss', 'grad_norm'):
      values = np.atleast_1d(metrics.get(name, 0.0))
      seeds_bad = np.flatnonzero(~np.isfinite(values))
      if len(seeds_bad):
        bad.append(f'{name} is {values[seeds_bad[0]]}' + (
            f' (seed indices {seeds_bad.tolist()})' if values.size > 1 else ''))
    if bad:
      checkpoints.wait_until_finished()
      raise FloatingPointError(
          f'The training {" and ".join(bad)} at step {first_step + offset}; stopping. '
          f'The last good checkpoint is step {checkpoints.latest_step()} in '
          f'{workdir}/checkpoints. Lower config.optim.learning_rate or check the data and the '
          'method config.')


class _PeriodicEval:
  """Clean and PGD accuracy on the first `eval.periodic_n_examples` test examples."""

  def __init__(self, config, evaluator: evaluate.Evaluator, test_images, test_labels):
    n = config.eval.periodic_n_examples
    self._images, self._labels = test_images[:n], test_labels[:n]
    self._evaluator = evaluator

  def __call__(self, variables, seed: int) -> dict:
    """The record of the model `variables` of the run seeded `seed`."""
    return self._evaluator(variables, self._images, self._labels, jax.random.key(seed + 1))


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict:
  """Trains, evaluates and writes the results of the run described by `config` into `workdir`.

  With config.num_seeds = K > 1 it trains K models side by side (latentadv/seeds.py) and
  evaluates, monitors and reports each of them. Returns the results record (also written to
  `workdir/results.json`).
  """
  validation.validate(config)
  os.makedirs(workdir, exist_ok=True)
  mesh = parallel.make_mesh()
  seed_axis = seeds.SeedAxis(config, mesh)
  if seed_axis.mode == 'data':
    parallel.check_batch_size(config.optim.batch_size, 'config.optim.batch_size', mesh)

  train_data = readers.train_batches(config.data, config.optim.batch_size,
                                     *seed_axis.reader_args())
  test_images, test_labels = readers.eval_split(
      config.data, 'test', max(config.eval.n_examples, config.eval.periodic_n_examples)
      if config.eval.n_examples else 0)
  steps_per_epoch = train_data.steps_per_epoch
  total_steps = config.optim.epochs * steps_per_epoch

  model = train_state.build_model(config)
  schedule = train_state.learning_rate_schedule(config.optim, total_steps)
  tx = train_state.make_optimizer(config.optim, schedule)
  image_shape = datasets.DATASETS[config.data.name].image_shape
  carry = train_state.init_carry(config, image_shape)
  rngs, init_rngs = zip(*(jax.random.split(jax.random.key(seed)) for seed in seed_axis.seeds))
  state = jax.device_put(
      seed_axis.stack([train_state.init_state(model, tx, init_rng, image_shape, carry)
                       for init_rng in init_rngs]), seed_axis.state_sharding())
  rng = seed_axis.stack(rngs)  # placed by the jitted step's in_shardings
  checkpoint.check_config(workdir, config.to_dict())
  checkpoints = checkpoint.Checkpoints(workdir, config.train.checkpoint_every_steps,
                                       config.train.checkpoints_to_keep,
                                       remove_interrupted_saves=True)
  progress = {'train_seconds': 0.0}
  restored = checkpoints.restore(checkpoint.abstract_like(state), delete_damaged=True)
  if restored is not None:
    state, progress = restored
    logging.info('Resumed from step %d of %d.', _current_step(state), total_steps)
  per_seed = seeds.seed_records(progress, seed_axis.num_seeds)
  # Written once the checkpoints are known to match, so config.json keeps describing them.
  checkpoint.write_json_atomically(os.path.join(workdir, 'config.json'), config.to_dict())

  train_step = jit_train_step(
      make_train_step(model.apply, methods.METHODS[config.method.name].loss, tx, schedule,
                      config), state, mesh, seed_axis)
  replays = minibatch_replays(config)
  # One periodic PGD evaluator for the test subset and the collapse monitor: compiled once.
  periodic_evaluator = evaluate.from_config(model, mesh, config,
                                            steps=config.eval.periodic_pgd_steps,
                                            restarts=config.eval.periodic_pgd_restarts)
  periodic_eval = _PeriodicEval(config, periodic_evaluator, test_images, test_labels)
  monitor_images, monitor_labels = train_data.first_examples(config.train.collapse_monitor_examples)
  monitors = [collapse_monitor.CollapseMonitor(
      config, periodic_evaluator, monitor_images, monitor_labels, workdir, per_seed[k],
      seed=seed, best_subdir=checkpoint.best_subdir(k if seed_axis.stacked else None))
              for k, seed in enumerate(seed_axis.seeds)]
  writer = metric_log.MetricWriter(workdir, enabled=jax.process_index() == 0)
  tags = [f'seed_{k}/' if seed_axis.stacked else '' for k in range(seed_axis.num_seeds)]

  first_step = _current_step(state)
  n_final = config.eval.n_examples or len(test_labels)
  display = training_progress.Display(
      total_steps, first_step, _evaluation_plan(config, steps_per_epoch, seed_axis.num_seeds,
                                                len(monitor_labels), n_final),
      enabled=jax.process_index() == 0)
  logging.debug('%d epochs x %d steps, global batch %d, %d seed(s) (seed loop %s, sharding '
                '%s), %d device(s).', config.optim.epochs, steps_per_epoch,
                config.optim.batch_size, seed_axis.num_seeds, seed_axis.loop, seed_axis.mode,
                jax.device_count())
  pending, pending_start = [], first_step
  stopped = any(monitor.stopped for monitor in monitors)
  last_step = first_step if stopped else total_steps
  minibatches = parallel.prefetch_to_device(
      train_data.batches(first_step // replays, -(-last_step // replays)), mesh,
      sharding=seed_axis.batch_sharding())
  segment_start = epoch_start = time.perf_counter()
  for step in range(first_step, last_step):
    if step == first_step or step % replays == 0:
      batch = next(minibatches)
    state, metrics = train_step(state, batch, rng)
    pending.append(metrics)
    done = step + 1
    stop = preemption.stop_at(done)
    display.step(done)
    epoch_end = done % steps_per_epoch == 0
    if (done % config.train.log_every_steps == 0 or epoch_end
        or done % config.train.checkpoint_every_steps == 0 or done == total_steps or stop):
      fetched = jax.device_get(pending)
      display.synced(done)
      _check_finite(fetched, pending_start, checkpoints, workdir)
      for k, tag in enumerate(tags):
        writer.write_scalars(done, {f'{tag}train/{name}': float(np.mean(
            [_seed_value(m[name], k) for m in fetched])) for name in fetched[0]})
      if display.time_left.steps_per_second is not None:
        writer.write_scalars(done, {'steps_per_sec': display.time_left.steps_per_second})
      pending, pending_start = [], done
    if epoch_end:
      progress['train_seconds'] += time.perf_counter() - segment_start
      epoch = done // steps_per_epoch
      display.begin_evaluation(_periodic_evaluation(config, epoch, done, seed_axis.num_seeds,
                                                    len(monitor_labels)),
                               f'epoch {epoch} evaluation')
      kept_states = []
      for k, seed in enumerate(seed_axis.seeds):
        record = {'epoch': epoch, 'step': done, 'train_seconds': progress['train_seconds'],
                  **{f'train_{name}': _seed_value(value, k)
                     for name, value in fetched[-1].items()}}
        seed_state = seed_axis.select(state, k)
        if config.train.eval_every_epochs and epoch % config.train.eval_every_epochs == 0:
          result = periodic_eval(seed_state.variables(), seed)
          record.update(clean_accuracy=result['clean_accuracy'],
                        pgd_accuracy=result['pgd_accuracy'])
          writer.write_scalars(done, {f'{tags[k]}eval/clean_accuracy': result['clean_accuracy'],
                                      f'{tags[k]}eval/pgd_accuracy': result['pgd_accuracy']})
        per_seed[k]['history'].append(record)
        kept_states.append(monitors[k].after_epoch(seed_state, epoch, done, per_seed[k]))
      display.end_evaluation()
      for k, seed in enumerate(seed_axis.seeds):
        logging.info('%s', _epoch_line(config, per_seed[k]['history'][-1], fetched, k,
                                       seed if seed_axis.stacked else None,
                                       time.perf_counter() - epoch_start))
      epoch_start = time.perf_counter()
      if not seed_axis.stacked:  # train.collapse_stop may have restored the best state
        state = kept_states[0]
      segment_start = time.perf_counter()
    stopped = any(monitor.stopped for monitor in monitors)
    if stop:
      progress['train_seconds'] += time.perf_counter() - segment_start
    checkpoints.save(done, state, progress, force=done == total_steps or stopped or stop)
    if stop:
      checkpoints.close()
      writer.close()
      display.close()
      raise preemption.training_stopped(done, total_steps, checkpoints.directory)
    if stopped:
      break
  checkpoints.close()
  writer.flush()
  preemption.after_training()

  final = evaluate.from_config(model, mesh, config, steps=config.eval.pgd.steps,
                               restarts=config.eval.pgd.restarts)
  display.begin_evaluation(
      _final_evaluation(config, total_steps, n_final, seed_axis.num_seeds + sum(
          monitor.keeps_best for monitor in monitors)),
      f'final evaluation: {_pgd_name(config.eval.pgd.steps, config.eval.pgd.restarts)} on '
      f'{n_final} test examples')
  seed_results = []
  for k, (seed, monitor, tag) in enumerate(zip(seed_axis.seeds, monitors, tags)):

    def final_evaluation(variables, which: str, seed=seed, k=k) -> dict:
      # Resumable: a rerun continues from the verdicts of the finished batches.
      progress_path = os.path.join(workdir, f'final_eval_{which}' + (
          f'_seed{k}' if seed_axis.stacked else '') + '.progress.npz')
      return final(variables, test_images[:n_final], test_labels[:n_final],
                   jax.random.key(seed + 2), progress_path=progress_path)

    seed_state = seed_axis.select(state, k)
    final_result = final_evaluation(seed_state.variables(), 'last')
    kept = {'state': 'last', 'epoch': int(seed_state.step) // steps_per_epoch,
            'step': int(seed_state.step), 'final': final_result}
    if monitor.keeps_best:
      best = monitor.record['best']
      kept = {'state': 'best', 'epoch': best['epoch'], 'step': best['step'],
              'final': final_evaluation(monitor.restore_best(seed_state).variables(), 'best')}
    monitor.close()
    writer.write_scalars(total_steps, {
        f'{tag}final/clean_accuracy': final_result['clean_accuracy'],
        f'{tag}final/pgd_accuracy': final_result['pgd_accuracy'],
        f'{tag}final/kept_clean_accuracy': kept['final']['clean_accuracy'],
        f'{tag}final/kept_pgd_accuracy': kept['final']['pgd_accuracy']})
    seed_results.append({
        'seed': seed, 'clean_accuracy': kept['final']['clean_accuracy'],
        'robust_accuracy': kept['final']['robust_accuracy'], 'state': kept['state'],
        'final': final_result,
        'kept_state': {**kept, 'collapsed': monitor.enabled and bool(monitor.record['collapses'])},
        'history': per_seed[k]['history'], **monitor.results()})
  display.end_evaluation()
  display.close()
  writer.close()
  images_seen = total_steps * config.optim.batch_size
  results = {
      'method': config.method.name, 'dataset': config.data.name, 'model': config.model.name,
      'eps': config.method.eps, 'epochs': config.optim.epochs, 'steps': total_steps,
      'batch_size': config.optim.batch_size, 'devices': jax.device_count(),
      'train_seconds': progress['train_seconds'],
      'images_per_second': images_seen / max(progress['train_seconds'], 1e-9),
  }
  if seed_axis.stacked:
    results.update(num_seeds=seed_axis.num_seeds, seed_sharding=seed_axis.mode,
                   seed_loop=seed_axis.loop,
                   total_images_per_second=seed_axis.num_seeds * results['images_per_second'],
                   seeds=seed_results, summary=seeds.summary(seed_results))
  else:
    results.update({key: value for key, value in seed_results[0].items() if key != 'seed'})
  checkpoint.write_json_atomically(os.path.join(workdir, 'results.json'), results)
  _log_results(config, seed_results, results.get('summary'),
               f'{training_progress.format_duration(progress["train_seconds"])} of training; '
               f'{os.path.join(workdir, "results.json")}')
  return results


def _current_step(state: train_state.TrainState) -> int:
  """The train step of `state` (every seed's is the same), read from this process's data."""
  return int(np.asarray(state.step.addressable_data(0)).reshape(-1)[0])


def _seed_value(value, k: int) -> float:
  """Seed k's entry of a per-step metric: a scalar (one seed) or an array (K,)."""
  return float(np.asarray(value).reshape(-1)[k])


def _pgd_name(steps: int, restarts: int) -> str:
  """'PGD-10' for one restart, else 'PGD-50-10'."""
  return f'PGD-{steps}' + (f'-{restarts}' if restarts > 1 else '')


def _periodic_evaluation(config: ml_collections.ConfigDict, epoch: int, step: int,
                         num_seeds: int, n_monitor: int) -> training_progress.Evaluation:
  """The evaluations after `epoch` (ending at `step`) of `num_seeds` models: the periodic test
  evaluation where the epoch has one, and the collapse monitor on `n_monitor` examples."""
  tested = config.train.eval_every_epochs and epoch % config.train.eval_every_epochs == 0
  n_examples = n_monitor + (config.eval.periodic_n_examples if tested else 0)
  return training_progress.Evaluation(training_progress.PERIODIC, step, num_seeds * (
      training_progress.attack_work(n_examples, config.eval.periodic_pgd_steps,
                                    config.eval.periodic_pgd_restarts)))


def _final_evaluation(config: ml_collections.ConfigDict, step: int, n_final: int,
                      evaluations: int) -> training_progress.Evaluation:
  """The final evaluation after `step`: `evaluations` model states on `n_final` examples."""
  return training_progress.Evaluation(training_progress.FINAL, step, evaluations * (
      training_progress.attack_work(n_final, config.eval.pgd.steps, config.eval.pgd.restarts)))


def _evaluation_plan(config: ml_collections.ConfigDict, steps_per_epoch: int, num_seeds: int,
                     n_monitor: int, n_final: int) -> list[training_progress.Evaluation]:
  """Every evaluation of a run: after each epoch the periodic ones that it has, at the end
  the final evaluation of each model's last state on `n_final` test examples."""
  periodic = [_periodic_evaluation(config, epoch, epoch * steps_per_epoch, num_seeds, n_monitor)
              for epoch in range(1, config.optim.epochs + 1)]
  final = _final_evaluation(config, config.optim.epochs * steps_per_epoch, n_final, num_seeds)
  return [evaluation for evaluation in periodic if evaluation.work] + [final]


def _percent(fraction: float) -> str:
  """'43.0 %'."""
  return f'{100 * fraction:.1f} %'


def _epoch_line(config: ml_collections.ConfigDict, record: dict, fetched: list[dict], k: int,
                seed: int | None, seconds: float) -> str:
  """'epoch 3/10  loss 1.93  train 28.6 %  clean 43.0 %  PGD-10 31.6 %  monitor 29.2 %  212 s':
  the mean loss and training accuracy of model k over the steps in `fetched` (those since the
  last metrics fetch), the periodic evaluation and collapse monitor of its epoch `record` where
  they ran, and the epoch's seconds; `seed` is named in a run of several."""
  parts = [f'epoch {record["epoch"]}/{config.optim.epochs}']
  if seed is not None:
    parts.append(f'seed {seed}')
  means = {name: np.mean([_seed_value(m[name], k) for m in fetched])
           for name in ('loss', 'accuracy') if name in fetched[-1]}
  if 'loss' in means:
    parts.append(f'loss {means["loss"]:.2f}')
  if 'accuracy' in means:
    parts.append(f'train {_percent(means["accuracy"])}')
  pgd = _pgd_name(config.eval.periodic_pgd_steps, config.eval.periodic_pgd_restarts)
  if 'pgd_accuracy' in record:
    parts += [f'clean {_percent(record["clean_accuracy"])}',
              f'{pgd} {_percent(record["pgd_accuracy"])}']
  if 'monitor_pgd_accuracy' in record:
    parts.append(f'monitor {_percent(record["monitor_pgd_accuracy"])}')
  parts.append(training_progress.format_duration(seconds))
  return '  '.join(parts)


def _log_results(config: ml_collections.ConfigDict, seed_results: list[dict],
                 summary: dict | None, note: str):
  """Logs the final evaluation as a small table: per model (a seed record of results.json)
  its last state and, where the collapse monitor kept the best one, that state, the kept one
  marked; then for several models the mean and std of the kept states (their `summary`).
  Warns for each model that collapsed."""
  stacked = summary is not None
  pgd = _pgd_name(config.eval.pgd.steps, config.eval.pgd.restarts)
  rows = [['seed'] * stacked + ['state', 'epoch', 'clean', pgd, '']]
  for result in seed_results:
    kept = result['kept_state']
    states = [('last', kept['epoch'] if kept['state'] == 'last' else config.optim.epochs,
               result['final'])]
    if kept['state'] == 'best':
      states.append(('best', kept['epoch'], kept['final']))
    for name, epoch, record in states:
      rows.append([str(result['seed'])] * stacked + [
          name, str(epoch), _percent(record['clean_accuracy']),
          _percent(record['robust_accuracy']), '(kept)' if name == kept['state'] else ''])
  widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
  numeric = [header not in ('state', '') for header in rows[0]]
  lines = ['  '.join(cell.rjust(width) if right else cell.ljust(width)
                     for cell, width, right in zip(row, widths, numeric)).rstrip()
           for row in rows]
  if stacked:
    lines.append('kept states: ' + ', '.join(
        f'{label} {100 * summary[key]["mean"]:.1f} +- {100 * summary[key]["std"]:.1f} %'
        for label, key in (('clean', 'clean_accuracy'), (pgd, 'robust_accuracy'))))
  logging.info('Result on %d test examples (%s):\n%s', seed_results[0]['final']['n_examples'],
               note, '\n'.join('  ' + line for line in lines))
  for result in seed_results:
    kept = result['kept_state']
    if kept['state'] == 'best':
      logging.warning(
          'Training%s collapsed (catastrophic overfitting); kept the state of epoch %d. '
          'load_model, latentadv.evaluate and latentadv.export use it (state=\'last\' / '
          '--state=last for the last state).',
          f' (seed {result["seed"]})' if stacked else '', kept['epoch'])
