"""The fault campaign: smoke training runs interrupted, out of disk, and fed damaged inputs.

  python benchmarks/faults.py --data_dir=../shared/data --tries=20 \
      --output=benchmarks/results/faults.json

Trains configs/mnist_fgsm_rs.py:smoke on 1,024 MNIST examples (2 epochs of 16 steps, a
checkpoint every 8 steps, the collapse monitor on, a final PGD evaluation) once without
interruption, then:

- interruptions: --tries runs, each stopped once by SIGKILL or SIGTERM (alternately) at a
  random moment, during a checkpoint save, during the collapse monitor's best-state save,
  during the final evaluation or while results.json is written (the test hook
  LATENTADV_PAUSE_AT=write:results.json, latentadv/preemption.py), then resumed with the same
  command to the end (a run that ends before its signal is started again and signalled
  sooner, up to 4 times). A run survived if the resumed run ended with exit status 0; it is
  bitwise equal if its results.json (without timing fields) and its last and kept parameters
  equal the uninterrupted run's bit for bit.
- a full disk: the run trains into a small tmpfs (needs `unshare -m`, i.e. root or user
  namespaces; skipped otherwise), which fills up during a checkpoint save; then the tmpfs is
  enlarged and the same command resumes.
- damaged inputs: a truncated CIFAR-10 batch file, an MNIST label out of range, a checkpoint
  with a NaN, a damaged newest checkpoint step, a misspelt config key, a workdir written by
  another config. Each must end with one line naming the file (or key) and the fix, and leave
  every file as it was; the damaged newest step is instead skipped with a warning, and the run
  resumes from the step before to the same end.

Prints a table (fault, tries, survived, bitwise equal) and writes it to --output (.json and
.md beside it); docs/preemption.md quotes it.
"""

import collections
import gzip
import hashlib
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time

import numpy as np
import orbax.checkpoint as ocp
from absl import app
from absl import flags

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO_ROOT)
from benchmarks import same_run  # pylint: disable=g-import-not-at-top,wrong-import-position
from latentadv import checkpoint  # pylint: disable=g-import-not-at-top,wrong-import-position
from latentadv import preemption

FLAGS = flags.FLAGS
TOTAL_STEPS = 32
_RUN_FLAGS = ('--config=configs/mnist_fgsm_rs.py:smoke', '--config.data.source=local',
              '--config.data.num_train_examples=1024')
MOMENTS = ('a random moment', 'a checkpoint save', "the collapse monitor's best-state save",
           'the final evaluation', 'the write of results.json')
_ATTEMPTS = 4


def main_command(workdir: str, data_dir: str, *overrides: str) -> list[str]:
  """`python -m latentadv.main` training the campaign's run into `workdir`."""
  return [sys.executable, '-m', 'latentadv.main', *_RUN_FLAGS, f'--workdir={workdir}',
          f'--config.data.dir={os.path.join(data_dir, "mnist")}', *overrides]


def bitwise_equal(reference: str, workdir: str) -> bool:
  """True if `workdir` ended as `reference` did (benchmarks/same_run.py): every entry of
  results.json but the timings, and every train state checkpointed last (last and best),
  bit for bit."""
  found, notes = same_run.differences(reference, workdir)
  return not found and not notes


def _saving(directory: str) -> bool:
  """True while orbax writes a step into `directory` (its temporary folder exists)."""
  try:
    return any('orbax-checkpoint-tmp' in name for name in os.listdir(directory))
  except FileNotFoundError:
    return False


def _interrupt(workdir: str, data_dir: str, moment: str, number: int, delay: float,
               log_path: str) -> dict:
  """Starts a run, sends it signal `number` at `moment`, waits for it; what happened."""
  env = dict(os.environ)
  if moment == MOMENTS[4]:
    env[preemption.PAUSE_VARIABLE] = 'write:results.json'
  with open(log_path, 'w') as log:
    run = subprocess.Popen(main_command(workdir, data_dir), cwd=REPO_ROOT, env=env,
                           stdout=subprocess.DEVNULL, stderr=log)
  start = time.monotonic()
  checkpoints = os.path.join(workdir, 'checkpoints')
  final_checkpoint = os.path.join(checkpoints, str(TOTAL_STEPS))
  ready_at = None
  while run.poll() is None:
    if moment == MOMENTS[0]:
      ready = time.monotonic() - start >= delay
    elif moment == MOMENTS[1]:
      ready = _saving(checkpoints)
    elif moment == MOMENTS[2]:
      ready = _saving(os.path.join(workdir, checkpoint.BEST_SUBDIR))
    elif moment == MOMENTS[3]:
      ready = os.path.isdir(final_checkpoint) and not _saving(checkpoints)
      if ready and ready_at is None:
        ready_at = time.monotonic()
      ready = ready and time.monotonic() - ready_at >= delay
    else:
      with open(log_path) as log:
        ready = 'paused at write:results.json' in log.read()
    if ready:
      run.send_signal(number)
      break
    time.sleep(0.002)
  status = run.wait()
  landed = moment
  if status == 0:
    landed = 'after the end (missed)'
  elif moment in MOMENTS[1:3] and number == signal.SIGKILL:
    folder = checkpoints if moment == MOMENTS[1] else os.path.join(workdir,
                                                                   checkpoint.BEST_SUBDIR)
    landed = moment if _saving(folder) else 'just after the save'
  expected = -signal.SIGKILL if number == signal.SIGKILL else preemption.EXIT_CODE
  with open(log_path) as log:
    if number == signal.SIGTERM and preemption.INSTALLED not in log.read():
      landed, expected = 'start-up, before the handlers', -signal.SIGTERM
  return {'moment': moment, 'signal': signal.Signals(number).name,
          'seconds_after_start': round(time.monotonic() - start, 2), 'landed': landed,
          'exit_status': status, 'expected_exit_status': status == expected or status == 0}


def interruptions(reference: str, base: str, data_dir: str, tries: int, seed: int,
                  run_seconds: float) -> list[dict]:
  """`tries` interrupted and resumed runs; one record each."""
  rng = random.Random(seed)
  numbers = (signal.SIGKILL, signal.SIGTERM)
  targeted = max(8, tries // 2)  # each moment with each signal at least once
  plan = [(MOMENTS[1 + (k // 2) % 4], numbers[k % 2]) for k in range(targeted)]
  plan += [(MOMENTS[0], numbers[k % 2]) for k in range(tries - targeted)]
  records = []
  for k, (moment, number) in enumerate(plan):
    workdir = os.path.join(base, f'try_{k}')
    fraction = rng.uniform(0, 1)
    for attempt in range(1, _ATTEMPTS + 1):
      # A run that ended before its signal is run again, signalled sooner.
      delay = fraction * (run_seconds if moment == MOMENTS[0] else 0.5) / attempt
      record = _interrupt(workdir, data_dir, moment, number, delay,
                          os.path.join(base, f'try_{k}.log'))
      if record['exit_status'] != 0:
        break
      run_seconds = min(run_seconds, record['seconds_after_start'])
      if attempt < _ATTEMPTS:
        shutil.rmtree(workdir)
    record['attempts'] = attempt
    resumed = subprocess.run(main_command(workdir, data_dir), cwd=REPO_ROOT,
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    record['survived'] = (record['expected_exit_status'] and resumed.returncode == 0
                          and os.path.exists(os.path.join(workdir, 'results.json')))
    record['bitwise_equal'] = record['survived'] and bitwise_equal(reference, workdir)
    print(f'try {k}: {record}', flush=True)
    records.append(record)
    shutil.rmtree(workdir)
  return records


def disk_full(reference: str, base: str, data_dir: str) -> dict:
  """The run on a tmpfs too small for its checkpoints, then resumed on an enlarged one."""
  mount = os.path.join(base, 'tmpfs')
  os.makedirs(mount)
  workdir = os.path.join(mount, 'run')
  copy = os.path.join(base, 'disk_full_run')
  command = ' '.join(main_command(workdir, os.path.abspath(data_dir)))
  script = (f'mount -t tmpfs -o size=4500k tmpfs {mount} && cd {REPO_ROOT} && '
            f'{{ {command} 2> {base}/full.log; echo $? > {base}/full.status; }}; '
            f'ls {workdir}/checkpoints > {base}/full.steps; '
            f'mount -o remount,size=64m {mount} && {command} 2> {base}/resumed.log; '
            f'echo $? > {base}/resumed.status; cp -r {workdir} {copy}')
  namespace = subprocess.run(['unshare', '-m', 'sh', '-c', script], capture_output=True,
                             text=True)
  if not os.path.exists(os.path.join(base, 'resumed.status')):
    return {'fault': 'disk full during a checkpoint save', 'skipped':
            f'no tmpfs here (unshare -m: {namespace.stderr.strip()[:200]})'}

  def read(name):
    with open(os.path.join(base, name)) as f:
      return f.read()
  last_line = read('full.log').strip().splitlines()[-1]
  resumed = int(read('resumed.status')) == 0
  return {'fault': 'disk full during a checkpoint save', 'tries': 1,
          'one_line_error': last_line, 'exit_status': int(read('full.status')),
          'steps_left': read('full.steps').split(),
          'survived': int(read('full.status')) == 1 and 'DiskFullError' in last_line and resumed,
          'bitwise_equal': resumed and bitwise_equal(reference, copy)}


def digest(directory: str) -> str:
  """A hash of every file's path and content under `directory`."""
  hashed = hashlib.sha256()
  for root, _, files in sorted(os.walk(directory)):
    for name in sorted(files):
      path = os.path.join(root, name)
      hashed.update(path.encode())
      with open(path, 'rb') as f:
        hashed.update(f.read())
  return hashed.hexdigest()


def damaged_cifar(base: str, data_dir: str) -> str:
  """A CIFAR-10 folder of links to the real files in `data_dir`/cifar10, except for
  data_batch_1.bin: its first 1,000,000 bytes only (an interrupted copy)."""
  folder = os.path.join(base, 'cifar10_truncated')
  os.makedirs(folder)
  source = os.path.abspath(os.path.join(data_dir, 'cifar10'))
  for name in os.listdir(source):
    os.symlink(os.path.join(source, name), os.path.join(folder, name))
  os.remove(os.path.join(folder, 'data_batch_1.bin'))
  with open(os.path.join(source, 'data_batch_1.bin'), 'rb') as f:
    head = f.read(1_000_000)
  with open(os.path.join(folder, 'data_batch_1.bin'), 'wb') as f:
    f.write(head)
  return folder


def mnist_with_a_bad_label(base: str, data_dir: str) -> str:
  """A copy of the MNIST folder whose training label 0 is 10 (out of range)."""
  folder = os.path.join(base, 'mnist_bad_label')
  shutil.copytree(os.path.join(data_dir, 'mnist'), folder)
  path = os.path.join(folder, 'train-labels-idx1-ubyte.gz')
  with gzip.open(path, 'rb') as f:
    data = bytearray(f.read())
  data[8] = 10  # after the 8-byte header
  with gzip.open(path, 'wb') as f:
    f.write(bytes(data))
  return folder


def put_nan_in_checkpoint(workdir: str, step: int, subdir: str = 'checkpoints'):
  """Rewrites the state of checkpoint `step` in `workdir`/`subdir` with a NaN in the first
  value of params/conv1/kernel (the MNIST CNN's first layer)."""
  path = os.path.abspath(os.path.join(workdir, subdir, str(step), 'state'))
  checkpointer = ocp.StandardCheckpointer()
  tree = checkpointer.restore(path)
  kernel = np.array(tree['params']['conv1']['kernel'])
  kernel.reshape(-1)[0] = np.nan
  tree['params']['conv1']['kernel'] = kernel
  checkpointer.save(f'{path}.nan', tree)
  checkpointer.wait_until_finished()
  shutil.rmtree(path)
  os.rename(f'{path}.nan', path)


def damaged_inputs(reference: str, base: str, data_dir: str) -> list[dict]:
  """Each damaged input: the run's last line, its exit status, whether files changed."""
  cases = []
  truncated = damaged_cifar(base, data_dir)
  cases.append(('a truncated CIFAR-10 batch file', os.path.join(base, 'cifar_run'), truncated,
                [sys.executable, '-m', 'latentadv.main', '--config=configs/cifar_fgsm_rs.py:smoke',
                 f'--workdir={os.path.join(base, "cifar_run")}', '--config.data.source=local',
                 f'--config.data.dir={truncated}'], ['data_batch_1.bin', 'Fix']))
  bad_label = mnist_with_a_bad_label(base, data_dir)
  cases.append(('an MNIST label out of range', os.path.join(base, 'label_run'), bad_label,
                [*main_command(os.path.join(base, 'label_run'), data_dir),
                 f'--config.data.dir={bad_label}'], ['train-labels-idx1-ubyte.gz', 'Fix']))
  nan_dir = os.path.join(base, 'nan_run')
  shutil.copytree(reference, nan_dir)
  os.remove(os.path.join(nan_dir, 'results.json'))
  put_nan_in_checkpoint(nan_dir, TOTAL_STEPS)
  cases.append(('a checkpoint with a NaN', nan_dir, nan_dir, main_command(nan_dir, data_dir),
                [f'checkpoints/{TOTAL_STEPS}', 'NaN', 'Fix']))
  misspelt = os.path.join(base, 'misspelt_run')
  cases.append(('a misspelt config key', misspelt, base,
                [*main_command(misspelt, data_dir), '--config.optim.learnig_rate=0.1'],
                ['--config.optim.learnig_rate', 'learning_rate', 'Fix']))
  other = os.path.join(base, 'other_config_run')
  shutil.copytree(reference, other)
  cases.append(('a workdir written by another config', other, other,
                [*main_command(other, data_dir), '--config.method.eps=0.2'],
                ['config.json', 'method.eps', 'Fix']))
  records = []
  for fault, workdir, watched, command, fragments in cases:
    before = digest(watched) if os.path.isdir(watched) else None
    run = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True)
    last_line = (run.stderr.strip().splitlines() or [''])[-1]
    unchanged = before == (digest(watched) if os.path.isdir(watched) else None)
    if fault == 'a misspelt config key':
      unchanged = not os.path.exists(workdir)
    ok = run.returncode == 1 and all(f in last_line for f in fragments) and unchanged
    records.append({'fault': fault, 'tries': 1, 'survived': ok, 'bitwise_equal': None,
                    'exit_status': run.returncode, 'one_line_error': last_line,
                    'nothing_changed': unchanged})
    print(records[-1], flush=True)

  damaged = os.path.join(base, 'damaged_step_run')
  shutil.copytree(reference, damaged)
  os.remove(os.path.join(damaged, 'results.json'))
  newest = os.path.join(damaged, 'checkpoints', str(TOTAL_STEPS), 'state')
  rng = np.random.default_rng(0)
  for root, _, files in os.walk(os.path.join(newest, 'd')):
    for name in files:
      path = os.path.join(root, name)
      with open(path, 'wb') as f:
        f.write(rng.bytes(os.path.getsize(path)))
  run = subprocess.run(main_command(damaged, data_dir), cwd=REPO_ROOT, capture_output=True,
                       text=True)
  warning = next((line for line in run.stderr.splitlines()
                  if f'Checkpoint at step {TOTAL_STEPS}' in line), '')
  records.append({'fault': 'a damaged newest checkpoint step', 'tries': 1,
                  'survived': run.returncode == 0, 'exit_status': run.returncode,
                  'one_line_error': warning[warning.find('Checkpoint'):],
                  'bitwise_equal': run.returncode == 0 and bitwise_equal(reference, damaged)})
  print(records[-1], flush=True)
  return records


def table(interrupted: list[dict], others: list[dict]) -> list[dict]:
  """Rows (fault, tries, survived, bitwise_equal): interruptions grouped by signal and moment."""
  groups = collections.defaultdict(list)
  for record in interrupted:
    groups[f'{record["signal"]} during {record["moment"]}'.replace(
        'during a random', 'at a random')].append(record)
  rows = [{'fault': fault, 'tries': len(records),
           'survived': sum(r['survived'] for r in records),
           'bitwise_equal': sum(r['bitwise_equal'] for r in records),
           'landed': collections.Counter(r['landed'] for r in records)}
          for fault, records in sorted(groups.items())]
  rows.append({'fault': 'all interruptions', 'tries': len(interrupted),
               'survived': sum(r['survived'] for r in interrupted),
               'bitwise_equal': sum(r['bitwise_equal'] for r in interrupted)})
  for record in others:
    if 'skipped' in record:
      rows.append({'fault': record['fault'], 'tries': 0, 'survived': 0, 'bitwise_equal': 0,
                   'note': record['skipped']})
      continue
    rows.append({'fault': record['fault'], 'tries': 1, 'survived': int(record['survived']),
                 'bitwise_equal': ('n/a' if record['bitwise_equal'] is None
                                   else int(record['bitwise_equal'])),
                 'note': record['one_line_error'][:160]})
  return rows


def markdown(rows: list[dict], command: str) -> str:
  """The table as Markdown, with the command that made it."""
  lines = [f'Fault campaign: `{command}`', '',
           '| fault | tries | survived | bitwise equal | note |', '|---|---|---|---|---|']
  for row in rows:
    note = row.get('note') or ', '.join(f'{n} {where}' for where, n in
                                         sorted(row.get('landed', {}).items())
                                         if not row['fault'].endswith(where))
    lines.append(f'| {row["fault"]} | {row["tries"]} | {row["survived"]} | '
                 f'{row["bitwise_equal"]} | {note.replace("|", "/")} |')
  return '\n'.join(lines) + '\n'


def main(argv):
  del argv
  base = tempfile.mkdtemp(prefix='faults_')
  data_dir = FLAGS.data_dir
  reference = os.path.join(base, 'reference')
  start = time.monotonic()
  subprocess.run(main_command(reference, data_dir), cwd=REPO_ROOT, check=True,
                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
  run_seconds = time.monotonic() - start
  print(f'uninterrupted run: {run_seconds:.1f} s', flush=True)
  others = [disk_full(reference, base, data_dir)]
  print(others[0], flush=True)
  others += damaged_inputs(reference, base, data_dir)
  interrupted = interruptions(reference, base, data_dir, FLAGS.tries, FLAGS.seed, run_seconds)
  rows = table(interrupted, others)
  command = (f'python benchmarks/faults.py --data_dir={FLAGS.data_dir} --tries={FLAGS.tries} '
             f'--seed={FLAGS.seed} --output={FLAGS.output}')
  # The campaign's temporary folder is $TMP in what it writes.
  text = markdown(rows, command).replace(base, '$TMP')
  print(text)
  if FLAGS.output:
    with open(FLAGS.output, 'w') as f:
      f.write(json.dumps({'command': command, 'uninterrupted_run_seconds': run_seconds,
                          'rows': rows, 'interruptions': interrupted, 'other_faults': others},
                         indent=2).replace(base, '$TMP'))
    with open(os.path.splitext(FLAGS.output)[0] + '.md', 'w') as f:
      f.write(text)
  shutil.rmtree(base)


if __name__ == '__main__':
  flags.DEFINE_string('data_dir', os.path.join('..', 'shared', 'data'),
                      'Directory with mnist/ and cifar10/ (the canonical files).')
  flags.DEFINE_integer('tries', 20, 'Interrupted runs (at least 8 of them at the named moments).')
  flags.DEFINE_integer('seed', 0, 'Seed of the random moments.')
  flags.DEFINE_string('output', None, 'Where to write the JSON results (and .md beside it).')
  app.run(main)
