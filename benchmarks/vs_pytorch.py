"""Our jitted training step against an eager PyTorch implementation of the same step, on CPU.

  python benchmarks/vs_pytorch.py --widths=16,64 --mnist=true --output=FILE.json

For PreActResNet-18 at each width of --widths (CIFAR-shaped batches of --batch_size) and, with
--mnist, the MNIST CNN (batches of 100), and for the methods standard, fgsm_rs and slat, it
times one full training step (augmentation, attack, forward, backward, optimizer update) of
  JAX:     the compiled step of latentadv.train as benchmarks/throughput.py builds it, with the
           method's config file configs/cifar_<method>.py or configs/mnist_<method>.py;
  PyTorch: our own eager CPU re-implementation of the same step (below) and model (the
           torch twin of latentadv/torch_models.py, its taps perturbed by forward hooks;
           PyTorch's default initialisation; SGD momentum 0.9, weight decay 5e-4, lr 0.1 on
           CIFAR; Adam, lr 1e-3 on MNIST), with torch.set_num_threads(os.cpu_count()), as XLA
           on CPU uses every core.
Both run on the same fixed random batch. Everything is compiled and warmed up first, then timed
in interleaved rounds: per round and case, --steps_per_round steps of one framework, then of the
other, the order alternating between rounds, so that machine noise hits both alike. The time
reported is the median over rounds of the seconds per step.

Writes FILE.json,
  {"rows": [{"model": "preact_resnet18" | "mnist_cnn", "width": int | null (mnist_cnn),
             "method": "standard" | "fgsm_rs" | "slat", "jax_seconds": s, "torch_seconds": s,
             "ratio": jax_seconds / torch_seconds}, ...],
   "batch_sizes": {model: B}, "rounds", "steps_per_round", "torch_version", "torch_threads",
   "jax_version", "jax_backend", "jax_devices", "cpu_count"},
and the same rows as a markdown table in FILE.md. A ratio below 1 means JAX is faster. The speed
claims are these ratios from one run on one machine, nothing more.

PyTorch is an optional dependency: pip install -e '.[bench]' (a pinned CPU build).
"""

import contextlib
import functools
import os
import statistics
import sys
import time
from collections.abc import Callable, Iterable, Mapping

import jax
import numpy as np
import torch
import torch.nn.functional as F
from absl import app
from absl import flags
from torch import nn

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from benchmarks import throughput  # pylint: disable=g-import-not-at-top,wrong-import-position
from latentadv import compilation  # pylint: disable=g-import-not-at-top,wrong-import-position
from latentadv import export  # pylint: disable=g-import-not-at-top,wrong-import-position
from latentadv import parallel  # pylint: disable=g-import-not-at-top,wrong-import-position

FLAGS = flags.FLAGS
flags.DEFINE_list('widths', ['16', '64'], 'PreActResNet-18 widths (empty: none).')
flags.DEFINE_bool('mnist', True, 'Also compare the MNIST CNN.')
flags.DEFINE_integer('batch_size', 128, 'Batch size of the CIFAR-shaped runs.')
flags.DEFINE_integer('rounds', 7, 'Interleaved timing rounds.')
flags.DEFINE_integer('steps_per_round', 3, 'Steps timed back to back per framework, case and '
                     'round.')
flags.DEFINE_string('output', None, 'Where to write the JSON results (and the .md beside it).')

METHODS = ('standard', 'fgsm_rs', 'slat')
MNIST_BATCH_SIZE = 100  # as configs/mnist_<method>.py
# Constant PyTorch learning rates per config.optim.optimizer; the step's cost does not depend on
# them (the JAX step follows its config's schedule).
TORCH_LEARNING_RATES = {'sgd': 0.1, 'adam': 1e-3}


def tap(h: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
  """h (B, C, H, W) plus delta (same shape), clipped to h's per-sample, per-channel range over
  the spatial positions, the clip straight-through for gradients (models/taps.py)."""
  moved = h + delta
  clipped = torch.clamp(moved, h.amin(dim=(2, 3), keepdim=True), h.amax(dim=(2, 3), keepdim=True))
  return moved + (clipped - moved).detach()


@contextlib.contextmanager
def tapped(model: nn.Module, names: Iterable[str],
           perturbation: Callable[[str, torch.Tensor], torch.Tensor]):
  """Within the block, `model` (a latentadv.torch_models module) perturbs the feature map h
  (B, C, H, W) of each tap in `names` to tap(h, perturbation(name, h)), with forward hooks on
  the submodules its TAPS name."""
  handles = [model.get_submodule(model.TAPS[name]).register_forward_hook(
      lambda module, inputs, h, name=name: tap(h, perturbation(name, h))) for name in names]
  try:
    yield
  finally:
    for handle in handles:
      handle.remove()


def augment(x: torch.Tensor, padding: int, flip: bool) -> torch.Tensor:
  """Per image of x (B, C, H, W): a random (H, W) crop of x zero-padded by `padding` on each
  side, mirrored left-right with probability 1/2 if `flip`; one gather, same shape out."""
  batch, _, height, width = x.shape
  padded = F.pad(x, (padding,) * 4)
  offsets = torch.randint(0, 2 * padding + 1, (batch, 2))
  rows = offsets[:, :1] + torch.arange(height)  # (B, H)
  columns = torch.arange(width).expand(batch, width)
  if flip:
    columns = torch.where(torch.rand(batch, 1) < 0.5, columns.flip(1), columns)
  columns = offsets[:, 1:] + columns  # (B, W)
  index = torch.arange(batch)[:, None, None]
  # Advanced indices around a slice: the result is (B, H, W, C).
  return padded[index, :, rows[:, :, None], columns[:, None, :]].permute(0, 3, 1, 2)


@contextlib.contextmanager
def running_stats_frozen(model: nn.Module):
  """Within the block, `model`'s BatchNorm layers in train mode normalise with the batch
  statistics but leave their running averages and counters untouched."""
  # With track_running_stats off, a training BatchNorm passes no running buffers to
  # F.batch_norm: batch statistics and no update at all, cheaper than saving and restoring the
  # buffers, or than momentum 0, which still runs the (no-op) update.
  norms = [module for module in model.modules() if isinstance(module, nn.BatchNorm2d)]
  for norm in norms:
    norm.track_running_stats = False
  try:
    yield
  finally:
    for norm in norms:
      norm.track_running_stats = True


def train_on(model: nn.Module, optimizer: torch.optim.Optimizer, x: torch.Tensor,
             labels: torch.Tensor, perturbations: Mapping[str, torch.Tensor] | None = None):
  """One optimizer step on the mean cross-entropy of model(x (B, C, H, W)) against labels (B,),
  with `perturbations` {tap name: tensor shaped like the tap's feature map} added at the taps
  they name (see `tap`)."""
  perturbations = perturbations or {}
  optimizer.zero_grad(set_to_none=True)
  with tapped(model, perturbations, lambda name, h: perturbations[name]):
    loss = F.cross_entropy(model(x), labels)
  loss.backward()
  optimizer.step()


def fgsm_rs_input(model: nn.Module, x: torch.Tensor, labels: torch.Tensor, method) -> torch.Tensor:
  """The FGSM-RS training input (B, C, H, W) for x (B, C, H, W) and labels (B,), with eps and
  the step of `method` (a config.method): a uniform random start in the eps-ball (clipped to
  [0, 1] with clip_start), one signed gradient step, projection to the ball and to [0, 1]."""
  eps = method.eps
  start = x + torch.empty_like(x).uniform_(-eps, eps)
  if method.fgsm_rs.clip_start:
    start = torch.clamp(start, 0.0, 1.0)
  delta = (start - x).requires_grad_()
  with running_stats_frozen(model):
    loss = F.cross_entropy(model(x + delta), labels, reduction='sum')
  grad, = torch.autograd.grad(loss, delta)  # only the input gradient, no parameter gradients
  delta = torch.clamp(delta.detach() + method.fgsm_rs.step * eps * grad.sign(), -eps, eps)
  return torch.clamp(x + delta, 0.0, 1.0)


def slat_inputs(model: nn.Module, x: torch.Tensor, labels: torch.Tensor, method
                ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
  """SLAT's pass 1 for x (B, C, H, W) and labels (B,) with `method` (a config.method): returns
  the perturbed input (B, C, H, W) and {tap: latent step shaped like the tap's feature map},
  from one backward pass at zero perturbations of the input and of the taps."""
  eps, alpha = method.eps, method.slat.alpha
  eps_h = eps if method.slat.eps_h is None else method.slat.eps_h
  x = x.detach().requires_grad_()  # its gradient is that of a zero input perturbation
  zeros = {}  # tap name -> zero perturbation, made at the tap's shape during the forward pass

  def zero(name: str, h: torch.Tensor) -> torch.Tensor:
    zeros[name] = torch.zeros_like(h, requires_grad=True)
    return zeros[name]
  with running_stats_frozen(model), tapped(model, method.slat.taps, zero):
    loss = F.cross_entropy(model(x), labels, reduction='sum')
  grad_x, *grad_taps = torch.autograd.grad(loss, [x, *zeros.values()])
  x_adv = torch.clamp(x.detach() + torch.clamp(alpha * eps * grad_x.sign(), -eps, eps), 0.0, 1.0)
  deltas = {name: torch.clamp(2 * alpha * eps_h * grad.sign(), -eps_h, eps_h)
            for name, grad in zip(zeros, grad_taps)}
  return x_adv, deltas


def torch_model_and_optimizer(config) -> tuple[nn.Module, torch.optim.Optimizer]:
  """The PyTorch twin of `config`'s model (latentadv/torch_models.py, as export.torch_model
  builds it; train mode, PyTorch's default initialisation) and an optimizer of the config's
  kind, momentum and weight decay (learning rate: see TORCH_LEARNING_RATES)."""
  model = export.torch_model(config)
  model.train()
  optim = config.optim
  learning_rate = TORCH_LEARNING_RATES[optim.optimizer]
  if optim.optimizer == 'sgd':
    optimizer = torch.optim.SGD(model.parameters(), lr=learning_rate, momentum=optim.momentum,
                                weight_decay=optim.weight_decay, nesterov=optim.nesterov)
  else:
    optimizer = torch.optim.Adam(model.parameters(), lr=learning_rate,
                                 weight_decay=optim.weight_decay)
  return model, optimizer


def torch_step(config, images: np.ndarray, labels: np.ndarray) -> Callable[[], None]:
  """A function that runs one eager PyTorch training step of config.method.name on images
  (B, H, W, C) and labels (B,): augmentation as config.data says, the attack, the update.
  Run once before it is returned (warm-up)."""
  model, optimizer = torch_model_and_optimizer(config)
  x = torch.from_numpy(images).permute(0, 3, 1, 2).contiguous()
  y = torch.from_numpy(labels).long()
  method = config.method

  def step():
    batch = x
    if config.data.crop_padding or config.data.flip:
      batch = augment(x, config.data.crop_padding, config.data.flip)
    if method.name == 'fgsm_rs':
      train_on(model, optimizer, fgsm_rs_input(model, batch, y, method), y)
    elif method.name == 'slat':
      x_adv, deltas = slat_inputs(model, batch, y, method)
      train_on(model, optimizer, x_adv, y, deltas)
    else:
      train_on(model, optimizer, batch, y)

  step()
  return step


def time_torch(step: Callable[[], None], steps: int) -> float:
  """Seconds per step of `steps` back-to-back calls of `step` (eager CPU PyTorch returns when
  the work is done)."""
  start = time.perf_counter()
  for _ in range(steps):
    step()
  return (time.perf_counter() - start) / steps


def cases() -> list[tuple[str, int | None, str]]:
  """(model, width or None, method) of every comparison the flags ask for."""
  models = [('preact_resnet18', int(width)) for width in FLAGS.widths]
  if FLAGS.mnist:
    models.append(('mnist_cnn', None))
  return [(model, width, method) for model, width in models for method in METHODS]


def timers(model: str, width: int | None, method: str, mesh) -> dict[str, Callable[[int], float]]:
  """{'jax': ..., 'torch': ...}: functions of a step count n that run n training steps of
  `method` on `model` in that framework, on the same random batch, and return seconds per
  step; both compiled and warmed up."""
  batch_size = MNIST_BATCH_SIZE if model == 'mnist_cnn' else FLAGS.batch_size
  config = throughput.make_config(method, model, width or 0, batch_size)
  images, labels = throughput.random_batch(config, batch_size)
  jax_step = throughput.compiled_step(config, mesh, images, labels)
  jax_step.time(1)
  return {'jax': jax_step.time,
          'torch': functools.partial(time_torch, torch_step(config, images, labels))}


def table(rows: list[dict]) -> str:
  """Markdown table of the result rows: model, width, method, seconds per step, ratio."""
  lines = ['| model | width | method | JAX s/step | PyTorch s/step | JAX / PyTorch |',
           '| --- | --- | --- | --- | --- | --- |']
  for row in rows:
    width = '-' if row['width'] is None else row['width']
    lines.append(f'| {row["model"]} | {width} | {row["method"]} | {row["jax_seconds"]:.4f} | '
                 f'{row["torch_seconds"]:.4f} | {row["ratio"]:.2f} |')
  return '\n'.join(lines)


def main(argv):
  del argv
  compilation.enable_cache()
  torch_threads = os.cpu_count()
  torch.set_num_threads(torch_threads)
  torch.manual_seed(0)
  mesh = parallel.make_mesh()
  comparisons = {case: timers(*case, mesh) for case in cases()}
  times = {case: {'jax': [], 'torch': []} for case in comparisons}
  for round_index in range(FLAGS.rounds):
    for case, case_timers in comparisons.items():
      order = ('jax', 'torch') if round_index % 2 == 0 else ('torch', 'jax')
      for framework in order:
        times[case][framework].append(case_timers[framework](FLAGS.steps_per_round))
  rows = []
  for (model, width, method), case_times in times.items():
    jax_seconds = statistics.median(case_times['jax'])
    torch_seconds = statistics.median(case_times['torch'])
    rows.append({'model': model, 'width': width, 'method': method, 'jax_seconds': jax_seconds,
                 'torch_seconds': torch_seconds, 'ratio': jax_seconds / torch_seconds})
  results = {
      'rows': rows,
      'batch_sizes': {'preact_resnet18': FLAGS.batch_size, 'mnist_cnn': MNIST_BATCH_SIZE},
      'rounds': FLAGS.rounds, 'steps_per_round': FLAGS.steps_per_round,
      'torch_version': torch.__version__, 'torch_threads': torch_threads,
      'jax_version': jax.__version__, 'jax_backend': jax.default_backend(),
      'jax_devices': jax.device_count(), 'cpu_count': os.cpu_count(),
  }
  print(table(rows))
  if FLAGS.output:
    throughput.write_results(
        FLAGS.output, results,
        f'JAX {jax.__version__} ({jax.device_count()} {jax.default_backend()} device(s)) '
        f'against PyTorch {torch.__version__} ({torch_threads} threads); seconds per training '
        f'step, median of {FLAGS.rounds} rounds of {FLAGS.steps_per_round} steps; batch '
        f'{FLAGS.batch_size} (PreActResNet-18), {MNIST_BATCH_SIZE} (MNIST CNN).\n\n{table(rows)}')


if __name__ == '__main__':
  app.run(main)
