"""The input pipeline's costs: host memory and step time of the in-memory path with uint8 or
float32 images, and the streaming path's throughput per host, decoding included.

  python benchmarks/input_pipeline.py --data_dir=../shared/data/cifar10 \
      --output=benchmarks/results/input_pipeline.json

1. In-memory path: bytes of the CIFAR-10 training split held per process as float32 (before)
   and as uint8 (now), and seconds per training step (SLAT, `cifar_slat.py:cpu` model and
   batch) with each step fed a fresh host batch of either dtype through
   parallel.global_batch, timed in interleaved rounds (median).
2. Streaming path: images per second that one host's StreamBatches delivers (threads as
   --threads) from CIFAR-10's binary files, and from folders of JPEG files written here: a
   64x64 Tiny-ImageNet-like folder, and an ImageNet-like folder of larger images of varying
   size that are decoded and random-resized-cropped to 224x224. The synthetic images are
   smooth (low-frequency noise) so that they compress and decode like photographs.
"""

import os
import statistics
import sys
import tempfile
import time

import jax
import numpy as np
from absl import app
from absl import flags
from PIL import Image

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from benchmarks import step_cost  # pylint: disable=g-import-not-at-top,wrong-import-position
from configs import cifar_slat
from latentadv import compilation
from latentadv import parallel
from latentadv.data import readers
from latentadv.data import transforms

FLAGS = flags.FLAGS
flags.DEFINE_string('data_dir', '', 'Directory of the CIFAR-10 binary files.')
flags.DEFINE_string('output', None, 'Where to write the JSON results (and .md beside it).')
flags.DEFINE_integer('rounds', 5, 'Interleaved timing rounds of the in-memory comparison.')
flags.DEFINE_integer('steps_per_round', 5, 'Steps per dtype and round.')
flags.DEFINE_integer('threads', 8, 'StreamBatches threads (config.data.stream_threads).')
flags.DEFINE_integer('stream_batches', 20, 'Batches read per streaming measurement.')


def memory_path(config, mesh) -> dict:
  """Host bytes of the training split and median seconds per step fed float32 or uint8."""
  images, labels = readers.load_split(config.data, 'train', dtype=np.uint8)
  result = {'train_split_bytes_float32': int(images.size * 4),
            'train_split_bytes_uint8': int(images.nbytes)}
  streams = {'float32': readers.MemoryBatches(transforms.to_unit_interval(images[:10000]),
                                              labels[:10000], config.optim.batch_size,
                                              config.seed),
             'uint8': readers.MemoryBatches(images[:10000], labels[:10000],
                                            config.optim.batch_size, config.seed)}
  entries = {}
  for dtype, train_stream in streams.items():
    first = train_stream.batch(0)
    entries[dtype] = list(step_cost.compiled_step(config, mesh, first['image'], first['label']))
  times = {dtype: [] for dtype in streams}
  for _ in range(FLAGS.rounds):
    for dtype, train_stream in streams.items():
      step, state, _, rng = entries[dtype]
      start = time.perf_counter()
      for s in range(FLAGS.steps_per_round):
        state, metrics = step(state, parallel.global_batch(train_stream.batch(s), mesh), rng)
      jax.block_until_ready((state, metrics))
      entries[dtype][1] = state
      times[dtype].append((time.perf_counter() - start) / FLAGS.steps_per_round)
  for dtype, values in times.items():
    result[f'step_seconds_{dtype}'] = statistics.median(values)
  result['step_ratio_uint8_over_float32'] = (result['step_seconds_uint8']
                                             / result['step_seconds_float32'])
  return result


def _smooth_image(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
  """uint8 (height, width, 3): bilinearly upsampled 1/8-resolution noise."""
  small = rng.integers(0, 256, (max(1, height // 8), max(1, width // 8), 3), np.uint8)
  return np.asarray(Image.fromarray(small).resize((width, height), Image.BILINEAR))


def _write_folder(root: str, sizes: list[tuple[int, int]], name: str, classes: int = 10) -> None:
  """The training split of folder dataset `name` (its layout, datasets.FOLDER_LAYOUTS) under
  root/: smooth images of `sizes` in `classes` class folders."""
  rng = np.random.default_rng(0)
  wnids = [f'n{c:08d}' for c in range(classes)]
  os.makedirs(root)
  with open(os.path.join(root, 'wnids.txt'), 'w') as f:  # read by the tiny_imagenet layout only
    f.write('\n'.join(wnids) + '\n')
  for i, (height, width) in enumerate(sizes):
    folder = os.path.join(root, 'train', wnids[i % classes],
                          *(['images'] if name == 'tiny_imagenet' else []))
    os.makedirs(folder, exist_ok=True)
    Image.fromarray(_smooth_image(rng, height, width)).save(
        os.path.join(folder, f'{i}.JPEG'), quality=90)


def throughput(batches: readers.Batches) -> float:
  """Images per second of batches(1, 1 + n) after one warm-up batch (n = --stream_batches)."""
  batches.batch(0)
  start = time.perf_counter()
  count = sum(len(b['label']) for b in batches.batches(1, 1 + FLAGS.stream_batches))
  return count / (time.perf_counter() - start)


def stream_path(config) -> dict:
  """Images per second of one host's StreamBatches on three kinds of data."""
  result = {'threads': FLAGS.threads, 'cores': os.cpu_count()}
  data_config = config.data.copy_and_resolve_references()
  data_config.pipeline, data_config.num_train_examples = 'stream', 0
  data_config.stream_threads = FLAGS.threads

  def stream(name: str, directory: str, batch_size: int) -> readers.Batches:
    data_config.name, data_config.dir = name, directory
    return readers.train_batches(data_config, batch_size, 0, 0, 1)
  result['cifar10_binary_images_per_second'] = throughput(stream('cifar10', FLAGS.data_dir, 128))
  rng = np.random.default_rng(1)
  with tempfile.TemporaryDirectory() as tmp:
    tiny = os.path.join(tmp, 'tiny')
    _write_folder(tiny, [(64, 64)] * 1500, 'tiny_imagenet')
    result['jpeg_64px_images_per_second'] = throughput(stream('tiny_imagenet', tiny, 64))
    large = os.path.join(tmp, 'large')
    sizes = [(int(rng.integers(300, 500)), int(rng.integers(350, 500))) for _ in range(700)]
    _write_folder(large, sizes, 'imagenet2012')
    result['jpeg_imagenet_like_pixels'] = float(np.mean([h * w for h, w in sizes]))
    result['jpeg_imagenet_like_images_per_second'] = throughput(
        stream('imagenet2012', large, 32))
  return result


def main(argv):
  del argv
  compilation.enable_cache()
  config = cifar_slat.get_config('cpu')
  config.data.source, config.data.dir = 'local', FLAGS.data_dir
  mesh = parallel.make_mesh()
  memory = memory_path(config, mesh)
  streamed = stream_path(config)
  markdown = '\n'.join([
      '| in-memory path (CIFAR-10 training split, SLAT step, width 16, batch 128) | float32 '
      '(before) | uint8 (now) | uint8 / float32 |', '| --- | --- | --- | --- |',
      f'| host memory of the split (MB) | {memory["train_split_bytes_float32"] / 1e6:.0f} | '
      f'{memory["train_split_bytes_uint8"] / 1e6:.0f} | 0.25 |',
      f'| seconds per step, fed from the host | {memory["step_seconds_float32"]:.3f} | '
      f'{memory["step_seconds_uint8"]:.3f} | {memory["step_ratio_uint8_over_float32"]:.3f} |',
      '', f'| streaming path, one host ({streamed["cores"]} cores, {FLAGS.threads} threads) | '
      'images/s |', '| --- | --- |',
      f'| CIFAR-10 binary files (memory-mapped) | {streamed["cifar10_binary_images_per_second"]:.0f} |',
      f'| 64x64 JPEG folder (Tiny-ImageNet-like) | {streamed["jpeg_64px_images_per_second"]:.0f} |',
      f'| ImageNet-like JPEGs (~{streamed["jpeg_imagenet_like_pixels"] / 1e3:.0f} kpixel), '
      f'random-resized crop to 224 | {streamed["jpeg_imagenet_like_images_per_second"]:.0f} |'])
  print(markdown)
  if FLAGS.output:
    step_cost.write_results(FLAGS.output, {'memory': memory, 'stream': streamed}, markdown)


if __name__ == '__main__':
  app.run(main)
