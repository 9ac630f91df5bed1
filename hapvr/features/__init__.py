"""Frozen frame features: CNN backbones, 3x3 region pooling, PCA whitening, and teachers."""

from hapvr.features.backbones import BACKBONES, BackboneError, build_backbone
from hapvr.features.extractor import RegionFeatureExtractor
from hapvr.features.pca import PCAWhitening
from hapvr.features.regions import pool_to_grid, region_descriptors
from hapvr.features.teacher import TEACHERS, Teacher

__all__ = ["BACKBONES", "TEACHERS", "BackboneError", "PCAWhitening", "RegionFeatureExtractor", "Teacher",
           "build_backbone", "pool_to_grid", "region_descriptors"]
