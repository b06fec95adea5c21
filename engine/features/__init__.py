"""Frozen backbone features, computed once and cached on disk.

Used by the linear probe, the fine-tune's head warm-up, the recipe benchmark and the embedding map:
whatever needs "the backbone's pooled features of this split" asks here.
"""
from engine.features.cache import FeatureSet, rows_features, split_features
from engine.features.extract import FeatureExtractor, feature_extractor, module_extractor

__all__ = ["FeatureSet", "split_features", "rows_features", "FeatureExtractor", "feature_extractor", "module_extractor"]
