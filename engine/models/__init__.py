"""Backbones: the catalogue, the factory and the offline weight cache."""
from engine.models.registry import (
    BackboneSpec,
    TransferModel,
    backbone_catalogue,
    create_model,
    get_spec,
    list_backbones,
)

__all__ = [
    "BackboneSpec",
    "TransferModel",
    "backbone_catalogue",
    "create_model",
    "get_spec",
    "list_backbones",
]
