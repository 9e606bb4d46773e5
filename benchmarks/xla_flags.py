"""Whether an XLA:CPU option (XLA_FLAGS) makes our jitted training step faster, and by how much.

  python benchmarks/xla_flags.py --model=preact_resnet18 --width=16 --methods=standard,slat \
      --batch_size=128 --rounds=5 --steps_per_round=3 --output=FILE.json
  python benchmarks/xla_flags.py --model=mnist_cnn --output=FILE.json \
      --flag_sets='baseline;--xla_cpu_use_onednn=true'

XLA reads XLA_FLAGS once per process, so every flag set (DEFAULT_FLAG_SETS, or the
semicolon-separated --flag_sets; `baseline` = no extra flags, always included) gets its own
persistent worker: this script run with --worker and XLA_FLAGS = the inherited XLA_FLAGS plus the
flag set. A worker builds and compiles the training step of every method of --methods with
benchmarks/step_cost.py, reports the loss of one more step (that is, of the parameters after one
update from the same initial state, on the same batch) and then answers "time <method> <steps>"
lines on stdin with the seconds per step, as JSON lines on stdout. Workers are started one after
the other; the timing runs in interleaved rounds (per round and method, every flag set in turn,
the order rotated by one flag set per round) so that machine noise hits all flag sets alike.

A flag set that this jaxlib's flag parser refuses (unknown flag, illegal value) is `rejected`,
one whose worker dies otherwise (e.g. a compiler crash) is `failed: <message>`; both are reported,
neither stops the run. Note that `XLA_FLAGS=--help` lists only the first ~15 kB of the flags
(the log message is cut), so a flag missing there may still exist: the worker is the test.

Writes FILE.json,
  {"model", "width", "batch_size", "jax_version", "jaxlib_version", "rounds", "steps_per_round",
   "inherited_xla_flags",
   "flag_sets": [{"flags": "baseline" | "--xla_...", "status": "ok" | "rejected" | "failed: ...",
                  "methods": {method: {"seconds": median s/step,
                                       "ratio_to_baseline": s / s_baseline,
                                       "loss_diff_vs_baseline": |loss - loss_baseline|}}}]},
and the same numbers as a markdown table in FILE.md. A ratio below 1 means the flag set is faster.
The ratios come from one run on one machine and mean something only on an otherwise quiet one.
Fast-math flags may change the numerics; the loss difference shows by how much.
"""

import contextlib
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile

import jax
import jaxlib
from absl import app
from absl import flags

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO_ROOT)
from benchmarks import step_cost  # pylint: disable=g-import-not-at-top,wrong-import-position
from latentadv import compilation  # pylint: disable=g-import-not-at-top,wrong-import-position
from latentadv import methods  # pylint: disable=g-import-not-at-top,wrong-import-position
from latentadv import parallel  # pylint: disable=g-import-not-at-top,wrong-import-position

BASELINE = 'baseline'
# Checked against jaxlib 0.10.2. The `individual_*` fusion types are accepted by the flag parser
# though --help lists only dot, eltwise and reduce. XNN_GRAPH_FUSION_MODE_BYPASS_COST_MODEL is
# documented as test-only. XLA:CPU has no flag for its intra-op thread count (the client sizes its
# pool from the CPUs the process may run on; restrict those with taskset), and it links no OpenMP
# runtime, so OMP_NUM_THREADS and the like do not apply.
DEFAULT_FLAG_SETS = (
    BASELINE,
    '--xla_cpu_use_onednn=true',
    '--xla_cpu_experimental_onednn_custom_call=true',
    '--xla_cpu_use_xnnpack=false',
    *(f'--xla_cpu_experimental_{library}_fusion_type={fusion}'
      for library in ('xnn', 'ynn')
      for fusion in ('dot', 'eltwise', 'reduce', 'individual_dot', 'individual_convolution')),
    *(f'--xla_cpu_experimental_xnn_graph_fusion_mode=XNN_GRAPH_FUSION_MODE_{mode}'
      for mode in ('GREEDY', 'GREEDY_SLINKY', 'BYPASS_COST_MODEL')),
    '--xla_cpu_enable_fast_math=true',
    '--xla_cpu_prefer_vector_width=512',
    '--xla_cpu_opt_preset=FAST_RUNTIME',
    '--xla_cpu_multi_thread_eigen=false',
    '--xla_cpu_scheduler_type=CPU_SCHEDULER_TYPE_CONCURRENCY_OPTIMIZED',
)
# What XLA's flag parser logs, fatally, when it refuses XLA_FLAGS.
REJECTION_MARKERS = ('Unknown flag in XLA_FLAGS', 'Flag parsing failed')

FLAGS = flags.FLAGS
flags.DEFINE_string('model', 'mnist_cnn', 'Model registry name.')
flags.DEFINE_integer('width', 0, 'PreActResNet width (0 = the config default of 64).')
flags.DEFINE_list('methods', ['standard', 'slat'], 'Methods whose training steps are timed.')
flags.DEFINE_integer('batch_size', 128, 'Global batch size.')
flags.DEFINE_integer('rounds', 5, 'Interleaved timing rounds.', lower_bound=1)
flags.DEFINE_integer('steps_per_round', 3, 'Steps timed back to back per flag set, method and '
                     'round.', lower_bound=1)
flags.DEFINE_string('flag_sets', None, 'Semicolon-separated flag sets, each one XLA_FLAGS '
                    'addition (space-separated flags) or "baseline"; default DEFAULT_FLAG_SETS.')
flags.DEFINE_string('output', None, 'Where to write the JSON results (and the .md beside it).')
flags.DEFINE_bool('worker', False, 'Internal: run as the worker of one flag set.')
flags.register_validator('methods', lambda names: set(names) <= set(methods.METHODS),
                         f'--methods must name methods of {sorted(methods.METHODS)}.')


class WorkerError(Exception):
  """A worker died; `status` is "rejected" or "failed: <message>", the message says why."""

  def __init__(self, status: str, message: str):
    super().__init__(message)
    self.status = status


class Worker:
  """The worker process of one flag set, with its stderr in a temporary file.

  Starting it waits until the worker has compiled its steps; `losses` is then {method: loss}.
  Raises WorkerError if it dies first. Use as a context manager: leaving it ends the process.
  """

  def __init__(self, flag_set: str):
    self._stderr = tempfile.TemporaryFile(mode='w+')
    extra = '' if flag_set == BASELINE else flag_set
    env = dict(os.environ, XLA_FLAGS=f'{os.environ.get("XLA_FLAGS", "")} {extra}'.strip())
    self._process = subprocess.Popen(
        [sys.executable, os.path.abspath(__file__), '--worker', f'--model={FLAGS.model}',
         f'--width={FLAGS.width}', f'--batch_size={FLAGS.batch_size}',
         f'--methods={",".join(FLAGS.methods)}'],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._stderr, env=env, text=True)
    try:
      self.losses = self._receive()['losses']
    except BaseException:
      self.close()
      raise

  def __enter__(self):
    return self

  def __exit__(self, *exc_info):
    self.close()

  def seconds_per_step(self, method: str, steps: int) -> float:
    """Seconds per step of `steps` back-to-back training steps of `method` in the worker."""
    try:
      self._process.stdin.write(f'time {method} {steps}\n')
      self._process.stdin.flush()
    except BrokenPipeError:
      pass  # it died; _receive says why
    return self._receive()['seconds']

  def close(self):
    """Ends the worker (end of stdin, then a kill if it is still busy, e.g. compiling, after
    5 s) and drops its stderr file."""
    try:
      self._process.stdin.close()
    except BrokenPipeError:
      pass
    try:
      self._process.wait(timeout=5)
    except subprocess.TimeoutExpired:
      self._process.kill()
      self._process.wait()
    self._process.stdout.close()
    self._stderr.close()

  def _receive(self) -> dict:
    """The worker's next JSON line; WorkerError if it ended instead."""
    line = self._process.stdout.readline()
    if line:
      return json.loads(line)
    code = self._process.wait()
    self._stderr.seek(0)
    log = self._stderr.read()
    if any(marker in log for marker in REJECTION_MARKERS):
      raise WorkerError('rejected', f'rejected: {cause(log)}')
    status = f'failed: exit code {code}: {cause(log)}'
    raise WorkerError(status, status)


def cause(log: str) -> str:
  """The telling line of a dead worker's stderr, at most 300 characters: the first illegal-value
  error or fatal XLA log line if any (stack traces and usage texts follow them), without its
  time and thread id, else the last line (for Python, the exception)."""
  lines = [line.strip() for line in log.splitlines() if line.strip()]
  telling = [line for line in lines if re.match(r'F\d{4} |E\d{4} .*Illegal value', line)]
  if telling:
    return re.sub(r'^[FE]\d{4} \S+\s+\d+ ', '', telling[0])[:300]
  return lines[-1][:300] if lines else '(no output)'


def parse_flag_sets(spec: str | None) -> list[str]:
  """The flag sets of --flag_sets (DEFAULT_FLAG_SETS if unset), the baseline first."""
  flag_sets = [s.strip() for s in spec.split(';') if s.strip()] if spec else DEFAULT_FLAG_SETS
  return [BASELINE] + [s for s in flag_sets if s != BASELINE]


def start_workers(flag_sets: list[str], stack: contextlib.ExitStack
                  ) -> tuple[dict[str, Worker], dict[str, str]]:
  """A started Worker, closed by `stack`, for every flag set whose worker comes up, started one
  at a time, and every flag set's status ("ok", or why its worker did not come up, also
  printed)."""
  workers, statuses = {}, {}
  for flag_set in flag_sets:
    print(f'compiling {flag_set} ...', flush=True)
    try:
      workers[flag_set] = stack.enter_context(Worker(flag_set))
      statuses[flag_set] = 'ok'
    except WorkerError as error:
      statuses[flag_set] = error.status
      print(f'  skipping {flag_set}: {error}', flush=True)
  return workers, statuses


def timing_rounds(workers: dict[str, Worker], statuses: dict[str, str]) -> dict:
  """{flag set: {method: [seconds per step per round]}} over --rounds interleaved rounds; a
  worker that dies is dropped from `workers` and its status set."""
  times = {flag_set: {method: [] for method in FLAGS.methods} for flag_set in workers}
  order = list(workers)
  for round_index in range(FLAGS.rounds):
    shift = round_index % len(order)
    for method in FLAGS.methods:
      for flag_set in order[shift:] + order[:shift]:
        if flag_set not in workers:
          continue
        try:
          times[flag_set][method].append(
              workers[flag_set].seconds_per_step(method, FLAGS.steps_per_round))
        except WorkerError as error:
          statuses[flag_set] = error.status
          workers.pop(flag_set).close()
          print(f'  {flag_set} died: {error}', flush=True)
  return times


def summary(flag_sets: list[str], statuses: dict[str, str], workers: dict[str, Worker],
            times: dict) -> list[dict]:
  """The JSON "flag_sets" entries: per flag set its status and, if ok, per method the median
  seconds per step, its ratio to the baseline's and the loss difference to the baseline's
  (None where the baseline failed)."""
  medians = {flag_set: {method: statistics.median(t) for method, t in times[flag_set].items()}
             for flag_set in workers}
  base = workers.get(BASELINE)
  entries = []
  for flag_set in flag_sets:
    entry = {'flags': flag_set, 'status': statuses[flag_set], 'methods': {}}
    if flag_set in workers:
      for method in FLAGS.methods:
        seconds = medians[flag_set][method]
        entry['methods'][method] = {
            'seconds': seconds,
            'ratio_to_baseline': seconds / medians[BASELINE][method] if base else None,
            'loss_diff_vs_baseline':
                abs(workers[flag_set].losses[method] - base.losses[method]) if base else None,
        }
    entries.append(entry)
  return entries


def table(entries: list[dict]) -> str:
  """A markdown table of summary(): a row per flag set and method (one per failed flag set)."""
  def number(value, spec):
    return '' if value is None else format(value, spec)
  rows = ['| flags | status | method | s/step | x baseline | abs loss diff |',
          '|---|---|---|---:|---:|---:|']
  for entry in entries:
    flag_set = f'`{entry["flags"]}`'
    if not entry['methods']:
      rows.append(f'| {flag_set} | {entry["status"].replace("|", "/")} | | | | |')
    for method, result in entry['methods'].items():
      rows.append(f'| {flag_set} | {entry["status"]} | {method} | '
                  f'{number(result["seconds"], ".4f")} | '
                  f'{number(result["ratio_to_baseline"], ".3f")} | '
                  f'{number(result["loss_diff_vs_baseline"], ".2e")} |')
  return '\n'.join(rows)


def serve():
  """The worker: compiles every method's step, writes {"losses": {method: loss}} (the loss of
  the step after the first) and then, per "time <method> <steps>" line on stdin,
  {"seconds": s}, one JSON line each; returns at the end of stdin. Anything else printed goes
  to stderr, so that stdout carries only these lines."""
  replies = os.fdopen(os.dup(1), 'w', buffering=1)
  os.dup2(2, 1)
  mesh = parallel.make_mesh()
  configs = {method: step_cost.make_config(method, FLAGS.model, FLAGS.width, FLAGS.batch_size)
             for method in FLAGS.methods}
  images, labels = step_cost.random_batch(configs[FLAGS.methods[0]], FLAGS.batch_size)
  entries, losses = {}, {}
  for method, config in configs.items():
    step, state, batch, rng = step_cost.compiled_step(config, mesh, images, labels)
    state, metrics = step(state, batch, rng)
    losses[method] = float(metrics['loss'])
    entries[method] = [step, state, batch, rng]
  replies.write(json.dumps({'losses': losses}) + '\n')
  for line in sys.stdin:
    command, method, steps = line.split()
    if command != 'time':
      raise ValueError(f'Unknown command {line!r}.')
    seconds = step_cost.time_steps(entries[method], int(steps))
    replies.write(json.dumps({'seconds': seconds}) + '\n')


def main(argv):
  del argv
  compilation.enable_cache()
  if FLAGS.worker:
    serve()
    return
  flag_sets = parse_flag_sets(FLAGS.flag_sets)
  with contextlib.ExitStack() as stack:
    workers, statuses = start_workers(flag_sets, stack)
    times = timing_rounds(workers, statuses)
    entries = summary(flag_sets, statuses, workers, times)
  results = {
      'model': FLAGS.model, 'width': FLAGS.width, 'batch_size': FLAGS.batch_size,
      'jax_version': jax.__version__, 'jaxlib_version': jaxlib.__version__,
      'rounds': FLAGS.rounds, 'steps_per_round': FLAGS.steps_per_round,
      'inherited_xla_flags': os.environ.get('XLA_FLAGS', ''), 'flag_sets': entries,
  }
  print(table(entries))
  if FLAGS.output:
    step_cost.write_results(
        FLAGS.output, results,
        f'XLA:CPU flag sets, jax {jax.__version__} / jaxlib {jaxlib.__version__}; '
        f'{FLAGS.model}{f" width {FLAGS.width}" if FLAGS.width else ""}, batch '
        f'{FLAGS.batch_size}; seconds per training step, median of {FLAGS.rounds} interleaved '
        f'rounds of {FLAGS.steps_per_round} steps; ratio and loss difference against the '
        f'baseline of the same run.\n\n{table(entries)}')


if __name__ == '__main__':
  app.run(main)
