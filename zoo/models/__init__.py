"""Model families; importing this package registers every architecture with timm."""

from . import cf_deit, cf_resnet, cf_vgg, hovernet, mrl

__all__ = ['cf_deit', 'cf_resnet', 'cf_vgg', 'hovernet', 'mrl']
