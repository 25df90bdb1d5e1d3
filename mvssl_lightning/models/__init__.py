from mvssl_lightning.models.backbones import BACKBONES, build_backbone
from mvssl_lightning.models.resnet import build_resnet, export_torchvision_state_dict

__all__ = ["BACKBONES", "build_backbone", "build_resnet", "export_torchvision_state_dict"]
