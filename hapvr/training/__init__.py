"""Training (``python -m hapvr.train``): the configuration, the data of a step (cached views or
streamed videos), the objective on a batch, the trainer with its checkpoints, rounds and
selection on validation, and the report."""
