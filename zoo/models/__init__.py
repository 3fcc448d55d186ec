"""Model families; importing this package registers every architecture with timm."""
from . import cf_resnet
