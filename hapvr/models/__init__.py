"""Video similarity models: region attention, the comparator psi and the HAP-VR head."""

from hapvr.models.attention import RegionAttention
from hapvr.models.comparator import MIN_FRAMES, FrameComparator
from hapvr.models.similarity import SimilarityOutput, VideoSimilarityModel, repeat_to_min_length

__all__ = ["MIN_FRAMES", "FrameComparator", "RegionAttention", "SimilarityOutput", "VideoSimilarityModel",
           "repeat_to_min_length"]
