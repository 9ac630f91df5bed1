"""Video decoding, augmented views and the built-in default corpus / benchmark."""

from hapvr.data.augment import AugmentConfig, StrongView, positive_matrix, strong_view, temporal_edit_indices, weak_view
from hapvr.data.video import LoadReport, VideoDecodeError, center_crop, decode_video, list_videos, load_folder

__all__ = ["AugmentConfig", "LoadReport", "StrongView", "VideoDecodeError", "center_crop", "decode_video", "list_videos",
           "load_folder", "positive_matrix", "strong_view", "temporal_edit_indices", "weak_view"]
