"""Model families; importing this package registers every architecture with timm."""

from . import cf_deit, cf_resnet, cf_vgg, mrl, mrl_seg

__all__ = ['cf_deit', 'cf_resnet', 'cf_vgg', 'mrl', 'mrl_seg']
