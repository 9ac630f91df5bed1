"""Shards on a Dask distributed cluster: a sharded search's fan-out and ``--duplicates`` run on
the workers that hold the index folders, all shards at once.

    python -m hapvr.search --cluster tcp://scheduler:8786 --index /disk0/s0 --index /disk1/s1 query.mp4
    python -m hapvr.search --cluster local:2 --index s0 --index s1 --duplicates

Each shard is a :class:`hapvr.retrieval.shards.Shard` living on one worker as a Dask *actor*: it
opens its folder there once (its coarse index, memory maps, IVF) and answers the coordinator's
questions (proposals, exact scores, descriptor rows, features) with plain arrays; the merge is
:class:`~hapvr.retrieval.shards.ShardedSearcher`'s, so the results are those of the shards
searched in this process, which are those of one index. Shard ``n`` goes to worker ``n`` mod
the number of workers (sorted by address) unless ``workers`` says where, so each folder must
be at its path on its worker (a local disk per machine, or shared storage).

Why Dask distributed and not Ray (docs/scale.md): a shard is a long-lived stateful object pinned
to the machine holding its files, which both express (Dask actors with ``workers=``, Ray actors
with resources); Dask distributed is pure Python (5.2 MB of wheels with its dependencies; no
daemon to install: ``dask scheduler`` / ``dask worker``, or ``LocalCluster`` in one process
tree), installs next to the pinned torch without constraints, and starts a 2-worker local cluster
in about 5 s, which keeps it in the test suite; Ray's wheel alone is 79 MB, with its own object
store and a C++ raylet for features this path does not use. The embedded default stays one process with no service:
``--cluster`` is opt-in, and ``distributed`` an optional dependency (``pip install
'hapvr[cluster]'``).
"""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path

from hapvr.evaluation.engine import EngineConfig
from hapvr.evaluation.scorers import Scorer
from hapvr.retrieval.coarse import CoarseConfig
from hapvr.retrieval.shards import Shard


class ClusterError(ValueError):
    """The cluster cannot be used: no scheduler at the address, no workers, a bad ``local:N``."""


def _distributed():
    try:
        import distributed
    except ImportError:
        raise ImportError("a cluster needs dask distributed: pip install 'hapvr[cluster]' (or pip install "
                          "distributed)") from None
    return distributed


@contextmanager
def connect(address: str, timeout: float = 20.0):
    """A ``distributed.Client``: ``local:N`` starts N worker processes on this machine (one thread
    each; stopped on exit), anything else is a running scheduler's address (``tcp://host:8786``)."""
    distributed = _distributed()
    if address.startswith("local:"):
        n = address.split(":", 1)[1]
        if not n.isdigit() or int(n) < 1:
            raise ClusterError(f"expected local:N with N >= 1 workers, or a scheduler's address, got {address!r}")
        with distributed.LocalCluster(n_workers=int(n), threads_per_worker=1, processes=True,
                                      dashboard_address=None) as cluster, distributed.Client(cluster) as client:
            yield client
        return
    try:
        client = distributed.Client(address, timeout=f"{timeout}s")
    except (OSError, TimeoutError) as exc:
        raise ClusterError(f"no Dask scheduler answered at {address} ({exc})") from None
    with client:
        yield client


class DaskShards:
    """Shards as Dask actors: :class:`~hapvr.retrieval.shards.LocalShards`'s interface, the shards
    asked at the same time. ``paths``: the index folders as the workers see them; ``workers``: the
    worker address of each (default: round robin over the cluster's workers)."""

    def __init__(self, client, paths: list[str | Path], scorer: Scorer, space: dict | None = None,
                 coarse: CoarseConfig = CoarseConfig(), engine: EngineConfig = EngineConfig(),
                 persist_coarse: bool = True, workers: list[str] | None = None):
        if not paths:
            raise ValueError("a sharded search needs at least one index")
        if workers is None:
            known = sorted(client.scheduler_info()["workers"])
            if not known:
                raise ClusterError("the Dask cluster has no workers")
            workers = [known[n % len(known)] for n in range(len(paths))]
        if len(workers) != len(paths):
            raise ValueError(f"{len(paths)} shards but {len(workers)} worker addresses")
        futures = [client.submit(Shard, str(p), scorer, coarse, engine, persist_coarse, space, actor=True,
                                 workers=[w], allow_other_workers=False, pure=False) for p, w in zip(paths, workers)]
        self.client, self.workers, self.actors = client, workers, []
        try:
            for f in futures:
                self.actors.append(f.result())
        except BaseException:
            self.close()
            raise

    def __len__(self) -> int:
        return len(self.actors)

    def ask(self, method: str, args: list[tuple | None]) -> list:
        """``shard.method(*args[n])`` on every shard ``n`` whose ``args[n]`` is not None, at once."""
        pending = [None if a is None else getattr(actor, method)(*a) for actor, a in zip(self.actors, args)]
        return [None if p is None else p.result() for p in pending]

    def each(self, method: str, *args) -> list:
        return self.ask(method, [args] * len(self))

    def close(self) -> None:
        """Closes every shard's files on its worker and lets the actors go."""
        pending = [actor.close() for actor in self.actors]
        for p in pending:
            p.result()
        self.actors = []


@contextmanager
def dask_shards(address: str, paths: list[str | Path], scorer: Scorer, space: dict | None = None,
                coarse: CoarseConfig = CoarseConfig(), engine: EngineConfig = EngineConfig()):
    """:class:`DaskShards` on the cluster at ``address`` (:func:`connect`), closed on exit."""
    with connect(address) as client:
        shards = DaskShards(client, paths, scorer, space, coarse, engine)
        try:
            yield shards
        finally:
            shards.close()
