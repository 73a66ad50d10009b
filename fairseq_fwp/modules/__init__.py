from .feature_maps import FEATURE_MAP_CLASSES, FeatureMap, build_feature_map
from .fast_weight_attention import FastWeightAttention
from .fast_weight_memory import FastWeightMemory

__all__ = ["FeatureMap", "FEATURE_MAP_CLASSES", "build_feature_map", "FastWeightAttention", "FastWeightMemory"]
