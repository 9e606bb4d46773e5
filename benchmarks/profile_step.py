r"""Where the time of one jitted training step goes, by op category, on XLA:CPU.

  python benchmarks/profile_step.py --model=preact_resnet18 --width=16 \
      --methods=standard,fgsm_rs,slat --batch_size=128 --output=FILE.json
  python benchmarks/profile_step.py --model=mnist_cnn --methods=standard --output=FILE.json

For each method of --methods, the training step of benchmarks/step_cost.py (augmentation, the
method's loss with its attack, backward pass, optax update; the method's config file, fixed
random data) is compiled, run --warmup times, timed for --steps steps without the profiler
(`step_seconds`: the median), then run --steps more steps under jax.profiler.trace, each step
inside a TraceAnnotation that marks its wall time (call, execution, block_until_ready).

Per-op times. XLA:CPU runs the compiled program as a graph of thunks, one per HLO instruction
that does work (in the entry computation and in while bodies). The profiler records each thunk's
launch as an event named after its instruction and its completion as an event 'end: <name>'.
Convolutions and large loop fusions complete asynchronously, on the intra-op thread pool, so
their launch event covers only a part (for convolutions a small part) of their run time. An op's
interval is therefore its launch to its completion: the end of the launch event if
'end: <name>' falls inside it, else the moment the completing thread resumed the program. The
executor records 'end: <name>' only after running that continuation, so the completion is the
start of the unbroken run of traced work that ends at 'end: <name>' on its thread (on small
runs, the ops that use an asynchronous op's result launched within microseconds after the
completion so found, never before). Independent thunks run concurrently on several threads:
every instant of a profiled step is shared equally among the ops in flight at that instant, and
instants with none in flight are `gaps` (dispatch, argument handling, executor scheduling,
waiting for a core). The categories, gaps included, thus add up to the profiled step's wall time
(`profiled_step_seconds`, the mean over the profiled steps; shares are fractions of it), which
differs from `step_seconds` by the profiler's overhead and by noise.

Categories. Each op is looked up in the optimized HLO of the executable that ran
(`compiled.as_text()`): its opcode, output shape, metadata op_name and the source stack of its
stack_frame_id. A fusion (or while/call) is classified by the instructions of its computations:
by the convolution in it if it has one, as `copies` if all of them only move data, else by the
category most of them have (instructions without metadata abstain; none left: `other`).
  conv_forward, conv_input_grad, conv_weight_grad: XLA:CPU transposes convolution operands so
    that every convolution reads b01f_01io->b01f; the weight gradient then reads the activations
    with the batch as the contracted feature dim, outputs the kernel with its dims permuted, and
    usually has no op_name. So a convolution whose output shape is a permutation of one of the
    model's kernel shapes (4-d parameters) is a weight gradient; else one whose op_name contains
    'transpose(' (JAX's backward pass) is an input gradient, as are the attacks' gradients with
    respect to the input; the rest are forward.
  batchnorm: source stack through flax/linen/normalization.py, or an op_name naming a BatchNorm
    module (bn1, bn2, final_bn, BatchNorm, batch_norm); forward and backward.
  augmentation: source stack through latentadv.data.transforms.augment (crop, flip, their random
    numbers).
  slat_tap_clip: source stack through latentadv.models.taps.tap (the perturbation's add, the
    per-sample per-channel min/max, the clip and its straight-through gradient; only perturbed
    taps emit ops).
  optimizer: source stack through optax outside optax.losses: the update (trace, decayed
    weights, scaling, the learning-rate schedule), apply_updates, and the metrics' gradient norm.
  copies: copy, transpose, bitcast, reshape and reverse instructions, and fusions of only these
    (layout changes, e.g. the transposes that feed the convolutions). A transpose fused with
    other work goes by the majority: BatchNorm recomputed into the transposed input of a
    weight-gradient convolution counts as batchnorm.
  other: all other ops: the loss, residual adds, ReLUs not fused into BatchNorm, the dense
    head, the input normalisation, the attacks' sign and clip, the methods' random numbers...
  gaps: as above.
The convolution counts by category (`conv_counts`) are there to check the rule: e.g. standard
training of PreActResNet-18 has 20 forward, 20 weight-gradient and 19 input-gradient
convolutions (none for the stem's input), the MNIST CNN 2, 2 and 1.

Writes FILE.json,
  {"model", "width", "batch_size", "steps", "jax_version", "methods": {name: {
     "step_seconds", "profiled_step_seconds",
     "categories": {category: {"seconds": per profiled step, "share": of the profiled step}},
     "conv_counts": {category: convolutions in the HLO},
     "top_ops": [[HLO instruction, category, seconds per profiled step], ...15]}}},
and the same numbers as a markdown table in FILE.md. The shares come from one short run on a
machine that may be busy (other processes stretch ops and gaps alike): orders of magnitude and
comparisons between methods, not precise fractions.
"""

import bisect
import collections
import dataclasses
import glob
import gzip
import json
import os
import re
import statistics
import sys
import tempfile

import jax
from absl import app
from absl import flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from benchmarks import step_cost  # pylint: disable=g-import-not-at-top,wrong-import-position
from latentadv import compilation
from latentadv import parallel
from latentadv.data import transforms  # pylint: disable=g-import-not-at-top,wrong-import-position
from latentadv.models import taps

FLAGS = flags.FLAGS
flags.DEFINE_string('model', 'preact_resnet18', 'Model registry name.')
flags.DEFINE_integer('width', 0, 'PreActResNet width (0 = the config default of 64).')
flags.DEFINE_integer('batch_size', 128, 'Global batch size.')
flags.DEFINE_list('methods', ['standard', 'fgsm_rs', 'slat'], 'Methods to profile.')
flags.DEFINE_integer('warmup', 2, 'Steps run before timing.', lower_bound=1)
flags.DEFINE_integer('steps', 5, 'Steps timed without the profiler, and steps profiled.',
                     lower_bound=1)
flags.DEFINE_string('output', None, 'Where to write the JSON results (and the .md beside it).')

CONV_CATEGORIES = ('conv_forward', 'conv_input_grad', 'conv_weight_grad')
CATEGORIES = (*CONV_CATEGORIES, 'batchnorm', 'augmentation', 'slat_tap_clip', 'optimizer',
              'copies', 'other', 'gaps')
DATA_MOVEMENT = frozenset({'copy', 'transpose', 'bitcast', 'reshape', 'reverse'})
# Instructions that do no work of their own; they abstain when a fusion is classified.
NO_WORK = frozenset({'parameter', 'constant', 'tuple', 'get-tuple-element'})
# Thunks whose computations run as thunks of their own (traced separately).
CONTAINERS = frozenset({'while', 'call', 'conditional'})
BATCHNORM_OP_NAME = re.compile(r'BatchNorm|batch_norm|/bn1/|/bn2/|/final_bn/')
STEP_ANNOTATION = 'profile_step'
# Gap (microseconds) still counted as unbroken work on a thread.
CONTIGUOUS_US = 2.0
TOP_OPS = 15

_INSTRUCTION = re.compile(
    r'^\s+(?:ROOT\s+)?%(?P<name>[^\s=]+)\s*=\s*(?P<shape>.+?)\s(?P<opcode>[a-z][a-z0-9-]*)\('
    r'(?P<rest>.*)$')
_COMPUTATION = re.compile(r'^(?:ENTRY\s+)?%(?P<name>[^\s(]+)\s.*\{\s*$')


@dataclasses.dataclass(frozen=True)
class Instruction:
  """One HLO instruction: its output dims (of the first array in its shape), opcode, metadata
  op_name ('' if none), stack_frame_id (0 if none) and the computations it calls."""
  name: str
  opcode: str
  dims: tuple[int, ...]
  op_name: str
  frame: int
  calls: tuple[str, ...]


def parse_instruction(line: str) -> Instruction | None:
  """The Instruction of one line of HLO text, or None if the line is not an instruction."""
  match = _INSTRUCTION.match(line)
  if not match:
    return None
  dims = re.search(r'\w+\[([\d,]*)\]', match['shape'])
  op_name = re.search(r'op_name="((?:[^"\\]|\\.)*)"', match['rest'])
  frame = re.search(r'stack_frame_id=(\d+)', match['rest'])
  return Instruction(
      name=match['name'], opcode=match['opcode'],
      dims=tuple(int(d) for d in dims[1].split(',') if d) if dims else (),
      op_name=op_name[1] if op_name else '', frame=int(frame[1]) if frame else 0,
      calls=tuple(re.findall(r'(?:calls|to_apply|body|condition)=%([^\s,{}]+)', match['rest'])))


def parse_stack_frames(text: str) -> dict[int, tuple[tuple[str, str], ...]]:
  """{stack_frame_id: ((file, function), ...) innermost frame first} of an HLO module's text.

  The text lists the tables FileNames, FunctionNames, FileLocations and StackFrames, each row
  'id {fields}'; a frame's printed parent_frame_id is its parent's id plus one (1: no parent).
  """
  def table(title):
    section = re.search(rf'^{title}\n(.*?)\n\n', text, re.S | re.M)
    rows = (line.split(' ', 1) for line in section[1].splitlines()) if section else ()
    return {int(row_id): row for row_id, row in rows}
  files = {i: row.strip('"') for i, row in table('FileNames').items()}
  functions = {i: row.strip('"') for i, row in table('FunctionNames').items()}
  locations = {i: dict(re.findall(r'(\w+)=(\d+)', row)) for i, row in
               table('FileLocations').items()}
  frames = {i: dict(re.findall(r'(\w+)=(\d+)', row)) for i, row in table('StackFrames').items()}

  def stack(frame_id):
    entries = []
    while frame_id in frames and len(entries) < len(frames):
      location = locations[int(frames[frame_id]['file_location_id'])]
      entries.append((files[int(location['file_name_id'])],
                      functions[int(location['function_name_id'])]))
      frame_id = int(frames[frame_id]['parent_frame_id']) - 1
    return tuple(entries)
  return {frame_id: stack(frame_id) for frame_id in frames}


class Hlo:
  """The optimized HLO module of an executable, from its text (`compiled.as_text()`)."""

  def __init__(self, text: str):
    self.module = re.match(r'HloModule\s+([^\s,]+)', text)[1]
    self.instructions: dict[str, Instruction] = {}
    self.computations: dict[str, list[str]] = collections.defaultdict(list)
    computation = None
    for line in text.splitlines():
      header = _COMPUTATION.match(line)
      if header:
        computation = header['name']
        continue
      instruction = parse_instruction(line)
      if instruction:
        self.instructions[instruction.name] = instruction
        self.computations[computation].append(instruction.name)
    self.stacks = parse_stack_frames(text)

  def inner(self, name: str) -> tuple[Instruction, ...]:
    """The instructions of the computations that instruction `name` calls, recursively."""
    found = []
    for computation in self.instructions[name].calls:
      for inner_name in self.computations[computation]:
        found.append(self.instructions[inner_name])
        found.extend(self.inner(inner_name))
    return tuple(found)


def conv_category(conv: Instruction, kernel_shapes: set[tuple[int, ...]]) -> str:
  """conv_weight_grad if the convolution's output dims are a permutation of a kernel shape's
  (each as sorted dims), else conv_input_grad if its op_name lies under a 'transpose(' (the
  backward pass), else conv_forward."""
  if tuple(sorted(conv.dims)) in kernel_shapes:
    return 'conv_weight_grad'
  return 'conv_input_grad' if 'transpose(' in conv.op_name else 'conv_forward'


def source_category(instruction: Instruction, hlo: Hlo) -> str | None:
  """augmentation, slat_tap_clip, batchnorm, optimizer or other by the instruction's source
  stack and op_name (see the module docstring); None if it has no metadata."""
  if not (instruction.frame or instruction.op_name):
    return None
  stack = hlo.stacks.get(instruction.frame, ())
  if any(file == transforms.__file__ and function.startswith('augment')
         for file, function in stack):
    return 'augmentation'
  if any(file == taps.__file__ and function == 'tap' for file, function in stack):
    return 'slat_tap_clip'
  if (BATCHNORM_OP_NAME.search(instruction.op_name) or
      any(file.endswith(os.path.join('flax', 'linen', 'normalization.py')) for file, _ in stack)):
    return 'batchnorm'
  optax_dir, losses_dir = f'{os.sep}optax{os.sep}', f'{os.sep}optax{os.sep}losses{os.sep}'
  if any(optax_dir in file and losses_dir not in file for file, _ in stack):
    return 'optimizer'
  return 'other'


def classify(name: str, hlo: Hlo, kernel_shapes: set[tuple[int, ...]]) -> str:
  """The category (CATEGORIES but gaps) of the thunk of HLO instruction `name`: a fusion or
  container by the instructions of its computations, any other instruction by itself."""
  instruction = hlo.instructions[name]
  work = [instruction]
  if instruction.opcode in ('fusion', *CONTAINERS):
    work = [inner for inner in hlo.inner(name) if inner.opcode not in NO_WORK]
  convs = [inner for inner in work if inner.opcode == 'convolution']
  if convs:
    return conv_category(convs[0], kernel_shapes)
  if work and all(inner.opcode in DATA_MOVEMENT for inner in work):
    return 'copies'
  votes = collections.Counter(source_category(inner, hlo) for inner in work)
  votes.pop(None, None)
  if votes:
    return votes.most_common(1)[0][0]
  return source_category(instruction, hlo) or 'other'


def load_trace_events(log_dir: str) -> list[dict]:
  """The complete ('X') events of the one trace that jax.profiler.trace wrote under log_dir."""
  paths = glob.glob(os.path.join(log_dir, '**', '*.trace.json.gz'), recursive=True)
  if len(paths) != 1:
    raise RuntimeError(f'Expected one *.trace.json.gz under {log_dir}, found {paths}.')
  with gzip.open(paths[0], 'rt') as f:
    return [event for event in json.load(f)['traceEvents'] if event.get('ph') == 'X']


def completion_time(launch: dict, end: dict, thread_events: list[dict],
                    thread_ends: list[float]) -> float:
  """When the op of `launch` (a thunk event) completed, in trace microseconds, given its 'end:'
  event and the events (sorted by end time, with those end times) of the thread of `end`.

  If `end` lies inside the launch, the launch's end. Else the start of the unbroken run of
  traced work (gaps of at most CONTIGUOUS_US) that ends before `end` on its thread: the
  continuation that the completing thread ran first (none: the time of `end` itself).
  """
  launch_end = launch['ts'] + launch['dur']
  if end['ts'] <= launch_end:
    return launch_end
  resumed = end['ts']
  for index in range(bisect.bisect_right(thread_ends, end['ts']) - 1, -1, -1):
    event = thread_events[index]
    if thread_ends[index] < resumed - CONTIGUOUS_US:
      break
    resumed = min(resumed, event['ts'])
  return max(resumed, launch_end)


def op_intervals(events: list[dict], hlo: Hlo) -> list[tuple[float, float, str]]:
  """(launch, completion, instruction name) in trace microseconds of every thunk execution of
  hlo's module in the trace events, but of containers whose inner thunks are traced."""
  launches = [event for event in events
              if event.get('args', {}).get('hlo_module') == hlo.module and
              'hlo_op' in event['args']]
  traced = {event['name'] for event in launches}
  containers = {name for name in traced if hlo.instructions[name].opcode in CONTAINERS and
                traced & {inner.name for inner in hlo.inner(name)}}
  ends = collections.defaultdict(list)
  by_thread = collections.defaultdict(list)
  for event in events:
    if event['name'].startswith('end: '):
      ends[event['name'][len('end: '):]].append(event)
    if not event['name'].startswith(('ThreadpoolListener', '$')):
      by_thread[event['tid']].append(event)
  for thread in by_thread.values():
    thread.sort(key=lambda event: event['ts'] + event['dur'])
  thread_ends = {tid: [event['ts'] + event['dur'] for event in thread]
                 for tid, thread in by_thread.items()}
  launches_by_name = collections.defaultdict(list)
  for event in launches:
    launches_by_name[event['name']].append(event)
  intervals = []
  for name, named_launches in launches_by_name.items():
    if name in containers:
      continue
    # Executions of one thunk do not overlap: its k-th launch ends with its k-th 'end:'.
    for launch, end in zip(sorted(named_launches, key=lambda event: event['ts']),
                           sorted(ends[name], key=lambda event: event['ts'])):
      completion = completion_time(launch, end, by_thread[end['tid']], thread_ends[end['tid']])
      intervals.append((launch['ts'], completion, name))
  return intervals


def share_wall_time(intervals: list[tuple[float, float, str]], start: float,
                    stop: float) -> tuple[dict[str, float], float]:
  """({name: microseconds}, gap microseconds) of the window [start, stop]: each instant is
  shared equally among the intervals (launch, completion, name) covering it."""
  boundaries = sorted({start, stop, *(t for begin, end, _ in intervals for t in (begin, end)
                                      if start < t < stop)})
  events = collections.defaultdict(list)
  for index, (begin, end, _) in enumerate(intervals):
    if begin < stop and end > start:
      events[max(begin, start)].append((1, index))
      events[min(end, stop)].append((-1, index))
  active, shares, gaps = set(), collections.defaultdict(float), 0.0
  for left, right in zip(boundaries, boundaries[1:]):
    for sign, index in events[left]:
      (active.add if sign > 0 else active.discard)(index)
    if active:
      for index in active:
        shares[intervals[index][2]] += (right - left) / len(active)
    else:
      gaps += right - left
  return dict(shares), gaps


def profile(entry: list, steps: int, log_dir: str) -> list[dict]:
  """Runs `steps` steps of entry = [step, state, batch, rng] under the profiler, each blocked
  on and annotated as STEP_ANNOTATION, and returns the trace's complete events."""
  options = jax.profiler.ProfileOptions()
  options.python_tracer_level = 0
  with jax.profiler.trace(log_dir, profiler_options=options):
    for _ in range(steps):
      with jax.profiler.TraceAnnotation(STEP_ANNOTATION):
        step_cost.time_steps(entry, 1)
  return load_trace_events(log_dir)


def attribute(events: list[dict], hlo: Hlo, kernel_shapes: set[tuple[int, ...]]) -> dict:
  """{"profiled_step_seconds", "categories", "top_ops"} (see the module docstring), averaged
  over the STEP_ANNOTATION windows of the trace events."""
  windows = [event for event in events if event['name'] == STEP_ANNOTATION]
  intervals = op_intervals(events, hlo)
  seconds = collections.defaultdict(float)
  gaps = 0.0
  for window in windows:
    shares, window_gaps = share_wall_time(intervals, window['ts'], window['ts'] + window['dur'])
    gaps += window_gaps * 1e-6 / len(windows)
    for name, microseconds in shares.items():
      seconds[name] += microseconds * 1e-6 / len(windows)
  category_of = {name: classify(name, hlo, kernel_shapes) for name in seconds}
  totals = dict.fromkeys(CATEGORIES, 0.0)
  totals['gaps'] = gaps
  for name, value in seconds.items():
    totals[category_of[name]] += value
  step = statistics.mean(window['dur'] * 1e-6 for window in windows)
  top = sorted(seconds.items(), key=lambda item: -item[1])[:TOP_OPS]
  return {'profiled_step_seconds': step,
          'categories': {category: {'seconds': value, 'share': value / step}
                         for category, value in totals.items()},
          'top_ops': [[name, category_of[name], value] for name, value in top]}


def conv_counts(hlo: Hlo, kernel_shapes: set[tuple[int, ...]]) -> dict[str, int]:
  """{conv category: number of convolution instructions of that category in the module}."""
  counts = dict.fromkeys(CONV_CATEGORIES, 0)
  for instruction in hlo.instructions.values():
    if instruction.opcode == 'convolution':
      counts[conv_category(instruction, kernel_shapes)] += 1
  return counts


def profile_method(method: str, mesh) -> dict:
  """The results entry of one method (see the module docstring)."""
  config = step_cost.make_config(method, FLAGS.model, FLAGS.width, FLAGS.batch_size)
  images, labels = step_cost.random_batch(config, FLAGS.batch_size)
  step, state, batch, rng = step_cost.compiled_step(config, mesh, images, labels)
  compiled = step.lower(state, batch, rng).compile()
  hlo = Hlo(compiled.as_text())
  kernel_shapes = {tuple(sorted(leaf.shape)) for leaf in jax.tree.leaves(state.params)
                   if leaf.ndim == 4}
  entry = [compiled, state, batch, rng]
  step_cost.time_steps(entry, FLAGS.warmup)
  step_seconds = statistics.median(step_cost.time_steps(entry, 1) for _ in range(FLAGS.steps))
  with tempfile.TemporaryDirectory() as log_dir:
    events = profile(entry, FLAGS.steps, log_dir)
  return {'step_seconds': step_seconds, **attribute(events, hlo, kernel_shapes),
          'conv_counts': conv_counts(hlo, kernel_shapes)}


def table(results: dict) -> str:
  """Markdown table: per category (rows) and method (columns), milliseconds per step and share
  of the profiled step; then each method's five costliest ops."""
  methods = results['methods']
  lines = ['| ms per step | ' + ' | '.join(methods) + ' |', '| --- |' + ' --- |' * len(methods),
           '| step, median unprofiled | ' +
           ' | '.join(f'{1e3 * m["step_seconds"]:.2f}' for m in methods.values()) + ' |',
           '| step, mean profiled | ' +
           ' | '.join(f'{1e3 * m["profiled_step_seconds"]:.2f}' for m in methods.values()) + ' |']
  for category in CATEGORIES:
    cells = (m['categories'][category] for m in methods.values())
    lines.append(f'| {category} | ' + ' | '.join(
        f'{1e3 * c["seconds"]:.2f} ({100 * c["share"]:.1f}%)' for c in cells) + ' |')
  lines.append('| convolutions fwd / in-grad / w-grad | ' + ' | '.join(
      ' / '.join(str(m['conv_counts'][c]) for c in CONV_CATEGORIES)
      for m in methods.values()) + ' |')
  for name, method in methods.items():
    top = ', '.join(f'{op} ({category}, {1e3 * seconds:.2f} ms)'
                    for op, category, seconds in method['top_ops'][:5])
    lines.append(f'\n{name}, costliest ops: {top}')
  return '\n'.join(lines)


def model_width() -> int | None:
  """The PreActResNet width the runs use (--width, or the config's); None for other models."""
  if FLAGS.model != 'preact_resnet18':
    return None
  config = step_cost.make_config('standard', FLAGS.model, FLAGS.width, FLAGS.batch_size)
  return config.model.preact_resnet18.width


def main(argv):
  del argv
  compilation.enable_cache()
  if jax.device_count() != 1:
    raise ValueError('profile_step.py pairs thunk events by name and needs a single device, '
                     f'found {jax.device_count()}.')
  mesh = parallel.make_mesh()
  width = model_width()
  results = {'model': FLAGS.model, 'width': width, 'batch_size': FLAGS.batch_size,
             'steps': FLAGS.steps, 'jax_version': jax.__version__,
             'methods': {method: profile_method(method, mesh) for method in FLAGS.methods}}
  header = (f'{FLAGS.model}{f" width {width}" if width else ""}, batch {FLAGS.batch_size}, '
            f'JAX {jax.__version__} ({jax.default_backend()}): time per training step by op '
            f'category and share of the profiled step ({FLAGS.steps} steps per method; one '
            f'run, possibly on a busy machine).\n\n')
  print(header + table(results))
  if FLAGS.output:
    step_cost.write_results(FLAGS.output, results, header + table(results))


if __name__ == '__main__':
  app.run(main)
