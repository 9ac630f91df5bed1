"""Video similarity models: region attention, the comparator psi and the HAP-VR head."""

from hapvr.models.attention import RegionAttention
from hapvr.models.comparator import MIN_FRAMES, FrameComparator
from hapvr.models.padding import repeat_to_min_length
from hapvr.models.similarity import HEADS, SimilarityOutput, VideoSimilarityModel

__all__ = ["HEADS", "MIN_FRAMES", "FrameComparator", "RegionAttention", "SimilarityOutput", "VideoSimilarityModel",
           "repeat_to_min_length"]
