"""Files: how hapvr writes them so that nothing is lost, and how it reads what users hand in.

- :mod:`~hapvr.io.files`: the one atomic write (temporary file, fsync, rename, folder fsync) and
  the one writer's lock.
- :mod:`~hapvr.io.serialization`: every ``.pt`` and annotation pickle is read as data, never code.
- :mod:`~hapvr.io.records`: append-only JSON lines, each with its checksum (score cache, index journal).
- :mod:`~hapvr.io.checkpoint`: the training checkpoint, the default-model file and the model
  settings both describe.
- :mod:`~hapvr.io.staging`: finished videos kept one small file each until a run merges them.
"""
