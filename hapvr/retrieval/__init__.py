"""Search over an indexed video collection: an on-disk index of region features
(:mod:`~hapvr.retrieval.index_store`), a coarse stage over per-segment descriptors
(:mod:`~hapvr.retrieval.coarse`), exact re-ranking by a scorer and near-duplicate detection
(:mod:`~hapvr.retrieval.search`). :mod:`~hapvr.retrieval.codecs` codes stored frames smaller
(product quantisation); :mod:`~hapvr.retrieval.shards` searches several index folders as one,
in this process or on a Dask cluster (:mod:`~hapvr.retrieval.cluster`).
:mod:`~hapvr.retrieval.planted` makes synthetic collections with planted copies for tests and
benchmarks.

The one-call ``search(store, scorer, query)`` is not re-exported here: the name would hide the
``hapvr.retrieval.search`` module (import it from there)."""

from hapvr.retrieval.codecs import ProductQuantizer
from hapvr.retrieval.coarse import CoarseConfig, CoarseIndex, DescriptorConfig, coarse_index, video_descriptors
from hapvr.retrieval.index_store import IndexLockedError, IndexStore, feature_space
from hapvr.retrieval.search import (
    DEFAULT_CANDIDATES,
    DuplicatePair,
    Duplicates,
    DuplicatesConfig,
    Hit,
    Searcher,
    SearchResult,
    duplicates,
    score_videos,
)
from hapvr.retrieval.shards import ShardedSearcher, shard_of

__all__ = [
    "DEFAULT_CANDIDATES",
    "CoarseConfig",
    "CoarseIndex",
    "DescriptorConfig",
    "DuplicatePair",
    "Duplicates",
    "DuplicatesConfig",
    "Hit",
    "IndexLockedError",
    "IndexStore",
    "ProductQuantizer",
    "SearchResult",
    "Searcher",
    "ShardedSearcher",
    "coarse_index",
    "duplicates",
    "feature_space",
    "score_videos",
    "shard_of",
    "video_descriptors",
]
