from mvssl_lightning.models.amdim import AMDIMEncoder, AMDIMHead, build_amdim_encoder
from mvssl_lightning.models.backbones import BACKBONES, build_backbone
from mvssl_lightning.models.resnet import build_resnet, export_torchvision_state_dict, torchvision_resnet

__all__ = [
    "AMDIMEncoder",
    "AMDIMHead",
    "BACKBONES",
    "build_amdim_encoder",
    "build_backbone",
    "build_resnet",
    "export_torchvision_state_dict",
    "torchvision_resnet",
]
