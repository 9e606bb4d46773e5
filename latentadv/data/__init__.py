"""The input layer: datasets, their files, and the training and evaluation batches.

Modules, each importing only those above it:
  datasets.py: the registry (`DATASETS`), where each dataset's files live, `DataError`.
  sources.py: one random-access source per file format, the only code that reads files.
  transforms.py: uint8 -> [0, 1], the device augmentation, the host crops and resizes.
  readers.py: the entry points `train_batches(config.data, ...)` and
    `eval_split(config.data, ...)`, the batch plan and the two readers ('memory', 'stream').
"""
