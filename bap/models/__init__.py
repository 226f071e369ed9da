"""Backbone zoo (a registry); pretraining on a source domain lives in :mod:`bap.trainer.pretrain`."""

from bap.models.backbones import BACKBONES, BackboneSpec, create_backbone, list_backbones

__all__ = ["BACKBONES", "BackboneSpec", "create_backbone", "list_backbones"]
