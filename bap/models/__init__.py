"""Backbone zoo (a registry) and backbone pretraining on a source domain."""

from bap.models.backbones import BACKBONES, BackboneSpec, create_backbone, list_backbones

__all__ = ["BACKBONES", "BackboneSpec", "create_backbone", "list_backbones"]
