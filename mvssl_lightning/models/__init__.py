from mvssl_lightning.models.resnet import build_resnet, export_torchvision_state_dict

__all__ = ["build_resnet", "export_torchvision_state_dict"]
