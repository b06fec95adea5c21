"""Backbones: the registry (specs by name), the factory, offline weights and their availability.

``engine.models.registry``      BackboneSpec by name: published figures and preprocessing
``engine.models.factory``       create_model(name, num_classes): pretrained backbone + linear head
``engine.models.availability``  whether the weights load now, in words
``engine.models.supplied``      operator/user weights files, checked key by key and shape by shape
``engine.models.timm_backbones`` the timm family (pretrained_cfg, group_matcher stages, hub cache)
"""
from engine.models.availability import availability, weights_available
from engine.models.factory import TransferModel, create_model
from engine.models.registry import BackboneSpec, get_spec, list_backbones, valid_backbone

__all__ = ["BackboneSpec", "TransferModel", "availability", "create_model", "get_spec", "list_backbones",
           "valid_backbone", "weights_available"]
