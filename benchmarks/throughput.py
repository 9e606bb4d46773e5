"""Training-step throughput of every method on whatever device JAX has, within a time budget.

  python benchmarks/throughput.py                                # every method, fp32 and bf16
  python benchmarks/throughput.py --width=16 --budget_s=300 --methods=standard,fgsm_rs,slat

One device (the first JAX sees), random data, nothing to download. Cases, in this order, for
each dtype of --dtypes: every method of --methods (one model, K = 1), then K models of
--seeds_method side by side in one program (latentadv/seeds.py) for each K > 1 of --num_seeds
and each seed loop of --seed_loops. Each case is the method's recipe (configs/cifar_<method>.py,
or configs/mnist_<method>.py for --model=mnist_cnn) with the model, width, batch and dtype set,
compiled ahead of time; XLA's cost analysis of the compiled program gives its FLOPs. All
compiled cases are then timed in interleaved rounds (A, B, C, A, B, C, ...) so that machine
noise hits each alike; a round runs enough steps to last about --round_s; the median round is
reported.

The budget: cases are compiled while less than (1 - --timing_fraction) of --budget_s is
spent; the timing rounds then run while the budget lasts, each case's round only if it fits
in what is left. Whatever was measured when the budget is spent is written; cases not reached
are listed as such.

Reported per case: seconds per step, its ratio to `standard` at the same dtype (K = 1) or, for
K seeds, the speedup K * seconds(K = 1) / seconds(K) over K single runs, images per second,
FLOPs per step, TFLOP/s and the fraction of the device's peak rate: the datasheet figure of
PEAK_TFLOPS for the device kind and dtype, or --peak_tflops; 'unknown' otherwise (CPUs).
XLA's cost analysis counts the body of a `while` loop once, so the FLOPs of a program with
rolled loops around convolutions (PGD-AT's and TRADES' inner attacks) are a lower bound,
marked '>=' (the RNG's loops on a CPU hold no products and do not count).

Writes <--output_dir>/throughput_<device kind>.json ({"machine": {...}, "settings": {...},
"runs": [...], "not_measured": [...]}) and the .md beside it.
"""

import dataclasses
import datetime
import importlib
import json
import os
import re
import statistics
import sys
import time

import jax
import numpy as np
from absl import app
from absl import flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from latentadv import compilation  # pylint: disable=g-import-not-at-top,wrong-import-position
from latentadv import methods  # pylint: disable=g-import-not-at-top,wrong-import-position
from latentadv import parallel  # pylint: disable=g-import-not-at-top,wrong-import-position
from latentadv import seeds  # pylint: disable=g-import-not-at-top,wrong-import-position
from latentadv import train  # pylint: disable=g-import-not-at-top,wrong-import-position
from latentadv import train_state  # pylint: disable=g-import-not-at-top,wrong-import-position
from latentadv.data import datasets  # pylint: disable=g-import-not-at-top,wrong-import-position

FLAGS = flags.FLAGS
RESULTS_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'results')

# Datasheet peak rates per chip in TFLOP/s, dense (without structured sparsity), by a substring
# of jax.Device.device_kind (lower case), first match wins. float32 on NVIDIA GPUs: the TF32
# tensor-core rate, at which XLA runs float32 convolutions and matmuls at JAX's default
# precision; on TPUs the default precision multiplies float32 in bfloat16 passes, so both
# dtypes get the bfloat16 rate.
PEAK_TFLOPS = (
    ('nvl', 'an NVL variant: no figure here, pass --peak_tflops', {}),
    ('h100 pcie', 'NVIDIA H100 PCIe', {'float32': 378.0, 'bfloat16': 756.0}),
    ('h100', 'NVIDIA H100 SXM', {'float32': 494.7, 'bfloat16': 989.4}),
    ('h200', 'NVIDIA H200 SXM', {'float32': 494.7, 'bfloat16': 989.4}),
    ('a100', 'NVIDIA A100', {'float32': 156.0, 'bfloat16': 312.0}),
    ('tpu v4', 'TPU v4', {'float32': 275.0, 'bfloat16': 275.0}),
    ('tpu v5 lite', 'TPU v5e', {'float32': 197.0, 'bfloat16': 197.0}),
    ('tpu v5e', 'TPU v5e', {'float32': 197.0, 'bfloat16': 197.0}),
    ('tpu v5', 'TPU v5p', {'float32': 459.0, 'bfloat16': 459.0}),
    ('tpu v6', 'TPU v6e (Trillium)', {'float32': 918.0, 'bfloat16': 918.0}),
)


def define_flags():
  """Defines this script's flags; called only when it runs as a script, so that other
  benchmarks (vs_pytorch.py) can import its helpers and define flags of the same names."""
  flags.DEFINE_list('methods', None, 'Methods (default: every registered one).')
  flags.DEFINE_list('dtypes', ['float32', 'bfloat16'], 'Model compute dtypes.')
  flags.DEFINE_string('model', 'preact_resnet18', 'preact_resnet18 (CIFAR-10 recipes) or '
                      'mnist_cnn (MNIST recipes).')
  flags.DEFINE_integer('width', 0, 'PreActResNet-18 width (0 = the recipe\'s 64).')
  flags.DEFINE_integer('batch_size', 128, 'Batch size of each model.')
  flags.DEFINE_string('seeds_method', 'slat', 'Method of the K-seed cases.')
  flags.DEFINE_list('num_seeds', ['2', '4', '8'], 'Values of K > 1 for the K-seed cases.')
  flags.DEFINE_list('seed_loops', ['vmap', 'unroll'], 'How the K models run (config.seed_loop).')
  flags.DEFINE_float('budget_s', 480.0, 'Seconds for compiling and timing, all cases together.')
  flags.DEFINE_float('timing_fraction', 0.3, 'Share of the budget kept for the timing rounds.')
  flags.DEFINE_integer('rounds', 5, 'Interleaved timing rounds per case (at most).')
  flags.DEFINE_float('round_s', 0.5, 'Seconds a round of one case should last (at least one '
                     'step).')
  flags.DEFINE_list('peak_tflops', [], 'The device\'s peak TFLOP/s: one number for every '
                    'dtype, or dtype:rate pairs (e.g. float32:495,bfloat16:989); default: '
                    'PEAK_TFLOPS by device kind.')
  flags.DEFINE_string('notes', '', 'Notes on the machine (e.g. other jobs running).')
  flags.DEFINE_string('output_dir', RESULTS_DIR, 'Directory for throughput_<device>.json/.md.')


def make_config(method: str, model: str, width: int, batch_size: int):
  """The recipe of `method` for the model's dataset (configs/mnist_<method>.py for mnist_cnn,
  else configs/cifar_<method>.py), with the model, width (0 = the recipe's) and batch size
  set."""
  dataset = 'mnist' if model == 'mnist_cnn' else 'cifar'
  config = importlib.import_module(f'configs.{dataset}_{method}').get_config()
  config.model.name = model
  if width:
    config.model.preact_resnet18.width = width
  config.method.name = method
  config.optim.batch_size = batch_size
  return config


def random_batch(config, batch_size: int) -> tuple[np.ndarray, np.ndarray]:
  """Fixed random images (batch_size, H, W, C) float32 in [0, 1] of the config's dataset
  shape and int32 labels (batch_size,) in [0, classes)."""
  info = datasets.DATASETS[config.data.name]
  rng = np.random.default_rng(0)
  images = rng.random((batch_size, *info.image_shape), dtype=np.float32)
  labels = rng.integers(0, info.num_classes, batch_size).astype(np.int32)
  return images, labels


@dataclasses.dataclass
class CompiledStep:
  """The training step of one config compiled ahead of time, with its state and inputs.

  `state` is replaced by each call's new state (the step donates it)."""
  program: jax.stages.Compiled
  state: train_state.TrainState
  batch: dict
  rng: jax.Array
  compile_seconds: float

  def time(self, steps: int) -> float:
    """Seconds per step of `steps` steps run back to back, blocking on the results."""
    start = time.perf_counter()
    for _ in range(steps):
      self.state, metrics = self.program(self.state, self.batch, self.rng)
    jax.block_until_ready((self.state, metrics))
    return (time.perf_counter() - start) / steps

  def flops(self) -> float | None:
    """FLOPs of one step by XLA's cost analysis (None if the backend reports none)."""
    flops = (self.program.cost_analysis() or {}).get('flops')
    return None if flops is None else float(flops)

  def flops_lower_bound(self) -> bool:
    """Whether flops() is a lower bound: the program has a `while` loop that runs a
    convolution or a matrix product, whose body XLA's cost analysis counts once."""
    return loops_run_products(self.program.as_text())


# Convolutions and matrix products in optimized HLO: XLA's own ops, and the cuDNN and cuBLAS
# calls that replace them on NVIDIA GPUs.
_PRODUCT = re.compile(r'\b(convolution|dot)\(|__cudnn\$conv|__cublas')


def loops_run_products(hlo: str) -> bool:
  """Whether a `while` loop of the HLO module text `hlo` runs a convolution or a matrix
  product in its body or in a computation its body calls (not, e.g., the RNG's loops)."""
  computations, name = {}, None
  for line in hlo.splitlines():
    if line and not line[0].isspace() and line.rstrip().endswith('{'):
      name = re.search(r'%?([\w.\-]+) ', line.removeprefix('ENTRY ')).group(1)
      computations[name] = []
    elif name is not None:
      computations[name].append(line)
  texts = {name: '\n'.join(lines) for name, lines in computations.items()}

  def runs_products(name: str, seen: set) -> bool:
    seen.add(name)
    if _PRODUCT.search(texts[name]):
      return True
    return any(runs_products(called, seen) for called in re.findall(r'%([\w.\-]+)', texts[name])
               if called in texts and called not in seen)

  return any(runs_products(body, set()) for body in re.findall(r'\bbody=%?([\w.\-]+)', hlo)
             if body in texts)


def compiled_step(config, mesh, images: np.ndarray, labels: np.ndarray) -> CompiledStep:
  """The training step of config.method.name as `config` sets it up (model, dtype,
  augmentation, optimizer) on `mesh`, for images (B, H, W, C) and labels (B,), compiled. With
  config.num_seeds = K > 1, the step of K models side by side (latentadv/seeds.py), each on
  the same batch."""
  seed_axis = seeds.SeedAxis(config, mesh)
  model = train_state.build_model(config)
  schedule = train_state.learning_rate_schedule(config.optim, 1000)
  tx = train_state.make_optimizer(config.optim, schedule)
  shape = images.shape[1:]
  carry = train_state.init_carry(config, shape)
  state = jax.device_put(
      seed_axis.stack([train_state.init_state(model, tx, jax.random.key(seed), shape, carry)
                       for seed in seed_axis.seeds]), seed_axis.state_sharding())
  batch = parallel.global_batch(
      seed_axis.stack([{'image': images, 'label': labels}] * seed_axis.num_seeds), mesh,
      seed_axis.batch_sharding())
  rng = jax.device_put(seed_axis.keys(1), seed_axis.state_sharding())
  step = train.jit_train_step(
      train.make_train_step(model.apply, methods.METHODS[config.method.name].loss, tx,
                            schedule, config), state, mesh, seed_axis)
  start = time.perf_counter()
  program = step.lower(state, batch, rng).compile()
  return CompiledStep(program, state, batch, rng, time.perf_counter() - start)


def write_results(output: str, results: dict, markdown: str | None = None):
  """Writes `results` as JSON to `output` and, when given, `markdown` to the .md beside it."""
  with open(output, 'w') as f:
    json.dump(results, f, indent=2)
  if markdown is not None:
    with open(os.path.splitext(output)[0] + '.md', 'w') as f:
      f.write(markdown + '\n')


def device_slug(device: jax.Device) -> str:
  """The device kind in lower case with runs of other characters than [a-z0-9] as '_'
  ('cpu', 'nvidia_h100_80gb_hbm3', 'tpu_v5_lite')."""
  return re.sub(r'[^a-z0-9]+', '_', device.device_kind.lower()).strip('_')


def peak_rates(device: jax.Device, dtypes: list[str], override: list[str]
               ) -> tuple[dict[str, float | None], str]:
  """({dtype: peak TFLOP/s or None}, where the figures come from) for `device`: `override`
  (['989'] for every dtype, or ['float32:495', 'bfloat16:989']), else PEAK_TFLOPS."""
  if override:
    if len(override) == 1 and ':' not in override[0]:
      return {dtype: float(override[0]) for dtype in dtypes}, '--peak_tflops'
    given = dict(item.split(':') for item in override)
    return {dtype: float(given[dtype]) if dtype in given else None for dtype in dtypes}, (
        '--peak_tflops')
  kind = device.device_kind.lower()
  for pattern, name, rates in PEAK_TFLOPS:
    if pattern in kind:
      return {dtype: rates.get(dtype) for dtype in dtypes}, (
          f'datasheet, {name}' if rates else name)
  return {dtype: None for dtype in dtypes}, 'unknown'


def cases(methods_: list[str], dtypes: list[str], seeds_method: str, counts: list[int],
          loops: list[str]) -> list[tuple[str, str, str, int]]:
  """(method, dtype, seed loop, K) of every case in measuring order: per dtype, every method
  single ('single', 1), then seeds_method's K-seed cases per K and loop."""
  order = []
  for dtype in dtypes:
    order += [(method, dtype, 'single', 1) for method in methods_]
    order += [(seeds_method, dtype, loop, count) for count in counts for loop in loops
              if count > 1]
  return order


def summarise(case: tuple[str, str, str, int], step: CompiledStep, samples: list[float],
              steps_per_round: int, batch_size: int, peak: float | None) -> dict:
  """The JSON record of one measured case (seconds None if no round was timed)."""
  method, dtype, loop, count = case
  seconds = statistics.median(samples) if samples else None
  flops = step.flops()
  rate = flops / seconds / 1e12 if flops and seconds else None
  return {
      'method': method, 'dtype': dtype, 'seed_loop': loop, 'num_seeds': count,
      'compile_seconds': step.compile_seconds, 'seconds': seconds,
      'seconds_per_round': samples, 'steps_per_round': steps_per_round,
      'images_per_second': count * batch_size / seconds if seconds else None,
      'flops': flops, 'flops_lower_bound': step.flops_lower_bound(), 'tflops_per_second': rate,
      'peak_fraction': rate / peak if rate and peak else None}


def add_ratios(runs: list[dict]):
  """Adds 'x_standard' (seconds over standard's at the same dtype, K = 1 rows) and, to K-seed
  rows, 'speedup_vs_single_runs' (K * seconds(K = 1) / seconds(K)), where both were timed."""
  single = {(run['method'], run['dtype']): run['seconds'] for run in runs
            if run['num_seeds'] == 1 and run['seconds']}
  for run in runs:
    if run['num_seeds'] == 1:
      standard = single.get(('standard', run['dtype']))
      run['x_standard'] = run['seconds'] / standard if run['seconds'] and standard else None
    else:
      alone = single.get((run['method'], run['dtype']))
      run['speedup_vs_single_runs'] = (run['num_seeds'] * alone / run['seconds']
                                       if run['seconds'] and alone else None)


def _number(value, spec: str, missing: str = '-') -> str:
  return missing if value is None else format(value, spec)


def model_name(settings: dict) -> str:
  """The model of the settings in words, e.g. 'preact_resnet18 of width 16'."""
  if settings['model'] != 'preact_resnet18':
    return settings['model']
  width = settings['width'] or '64 (the recipe default)'
  return f'preact_resnet18 of width {width}'


def markdown(results: dict) -> str:
  """The results as a description and two markdown tables (methods; K seeds)."""
  machine, settings = results['machine'], results['settings']
  lines = [
      f'Training-step throughput on {machine["device_kind"]} ({machine["platform"]}, JAX '
      f'{machine["jax_version"]}, {machine["cpu_count"]} CPU cores), '
      f'{model_name(settings)}, batch {settings["batch_size"]} per model, random data; '
      f'median of up to {settings["rounds"]} '
      f'interleaved rounds; budget {settings["budget_s"]:.0f} s, '
      f'{results["elapsed_seconds"]:.0f} s used; compile seconds are loading times where '
      "JAX's persistent compilation cache held the program. Peak rate: "
      f'{machine["peak_source"]}.'
      + (f' Notes: {machine["notes"]}' if machine['notes'] else ''), '',
      '| method | dtype | ms / step | x standard | images/s | GFLOP / step | TFLOP/s '
      '| fraction of peak | compile s | rounds |', '|' + ' --- |' * 10]

  def common(run):
    flops = _number(run['flops'] and run['flops'] / 1e9, '.4g')
    if run['flops_lower_bound'] and run['flops']:
      flops = '>= ' + flops
    return (f'{_number(run["images_per_second"], ".0f")} | {flops} | '
            f'{_number(run["tflops_per_second"], ".3f")} | '
            f'{_number(run["peak_fraction"], ".3f", missing="unknown")} | '
            f'{run["compile_seconds"]:.1f} | {len(run["seconds_per_round"])} |')

  for run in results['runs']:
    if run['num_seeds'] == 1:
      lines.append(f'| {run["method"]} | {run["dtype"]} | '
                   f'{_number(run["seconds"] and 1e3 * run["seconds"], ".2f")} | '
                   f'{_number(run["x_standard"], ".2f")} | {common(run)}')
  seeded = [run for run in results['runs'] if run['num_seeds'] > 1]
  if seeded:
    lines += ['', f'K models of {settings["seeds_method"]} in one program; speedup = K x the '
              'single step\'s seconds / the K-seed step\'s.', '',
              '| dtype | seed loop | K | ms / step | speedup vs K single runs | images/s (all K) '
              '| GFLOP / step | TFLOP/s | fraction of peak | compile s | rounds |',
              '|' + ' --- |' * 11]
    for run in seeded:
      lines.append(f'| {run["dtype"]} | {run["seed_loop"]} | {run["num_seeds"]} | '
                   f'{_number(run["seconds"] and 1e3 * run["seconds"], ".2f")} | '
                   f'{_number(run["speedup_vs_single_runs"], ".2f")} | {common(run)}')
  if results['not_measured']:
    lines += ['', 'Not reached within the budget: ' + ', '.join(
        f'{c["method"]} {c["dtype"]} {c["seed_loop"]} K={c["num_seeds"]}'
        for c in results['not_measured']) + '.']
  return '\n'.join(lines)


def measure(order: list[tuple[str, str, str, int]], mesh, start: float, budget_s: float
            ) -> tuple[dict, dict, dict]:
  """Compiles the cases of `order` while the compile share of the budget (counted from the
  perf_counter time `start`) lasts, then times them in interleaved rounds while the budget
  lasts. Returns ({case: CompiledStep}, {case: [seconds per step of each round]},
  {case: steps per round})."""
  spent = lambda: time.perf_counter() - start  # pylint: disable=unnecessary-lambda-assignment
  compile_until = (1 - FLAGS.timing_fraction) * budget_s
  steps, estimates, longest = {}, {}, 0.0
  for case in order:
    if spent() + longest > compile_until:
      break
    case_start = time.perf_counter()
    method, dtype, loop, count = case
    config = make_config(method, FLAGS.model, FLAGS.width, FLAGS.batch_size)
    config.model.dtype = dtype
    config.num_seeds, config.seed_loop = count, 'unroll' if loop == 'single' else loop
    images, labels = random_batch(config, FLAGS.batch_size)
    steps[case] = compiled_step(config, mesh, images, labels)
    estimates[case] = steps[case].time(1)  # the first run: allocation and warm-up
    longest = max(longest, time.perf_counter() - case_start)
    print(f'compiled {case}: {steps[case].compile_seconds:.1f} s, first step '
          f'{estimates[case]:.3f} s', flush=True)
  per_round = {case: max(1, round(FLAGS.round_s / estimate))
               for case, estimate in estimates.items()}
  samples = {case: [] for case in steps}
  for _ in range(FLAGS.rounds):
    timed = False
    for case, step in steps.items():
      if spent() + per_round[case] * estimates[case] > budget_s:
        continue
      samples[case].append(step.time(per_round[case]))
      estimates[case] = samples[case][-1]
      timed = True
    if not timed:
      break
  return steps, samples, per_round


def main(argv):
  del argv
  start = time.perf_counter()
  compilation.enable_cache()
  device = jax.devices()[0]
  mesh = parallel.make_mesh([device])
  method_names = FLAGS.methods or list(methods.METHODS)
  counts = sorted({int(k) for k in FLAGS.num_seeds})
  order = cases(method_names, FLAGS.dtypes, FLAGS.seeds_method, counts, FLAGS.seed_loops)
  peaks, peak_source = peak_rates(device, FLAGS.dtypes, FLAGS.peak_tflops)
  steps, samples, per_round = measure(order, mesh, start, FLAGS.budget_s)
  runs = [summarise(case, steps[case], samples[case], per_round[case], FLAGS.batch_size,
                    peaks[case[1]]) for case in order if case in steps]
  add_ratios(runs)
  results = {
      'machine': {'platform': device.platform, 'device_kind': device.device_kind,
                  'devices_used': 1, 'devices_seen': jax.device_count(),
                  'cpu_count': os.cpu_count(), 'jax_version': jax.__version__,
                  'peak_tflops': peaks, 'peak_source': peak_source, 'notes': FLAGS.notes,
                  'measured_at': datetime.datetime.now(datetime.timezone.utc).isoformat(
                      timespec='seconds')},
      'settings': {'model': FLAGS.model, 'width': FLAGS.width, 'batch_size': FLAGS.batch_size,
                   'methods': method_names, 'dtypes': FLAGS.dtypes,
                   'seeds_method': FLAGS.seeds_method, 'num_seeds': counts,
                   'seed_loops': FLAGS.seed_loops, 'budget_s': FLAGS.budget_s,
                   'timing_fraction': FLAGS.timing_fraction, 'rounds': FLAGS.rounds,
                   'round_s': FLAGS.round_s},
      'runs': runs,
      'not_measured': [dict(zip(('method', 'dtype', 'seed_loop', 'num_seeds'), case))
                       for case in order if case not in steps],
      'elapsed_seconds': time.perf_counter() - start,
  }
  text = markdown(results)
  print(text)
  os.makedirs(FLAGS.output_dir, exist_ok=True)
  write_results(os.path.join(FLAGS.output_dir, f'throughput_{device_slug(device)}.json'),
                results, text)


if __name__ == '__main__':
  define_flags()
  app.run(main)
