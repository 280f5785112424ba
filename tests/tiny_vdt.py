"""A tiny random VDT (framecast/models/vdt.py) for the VDT tests."""
import torch

from framecast.models.vdt import VdtConfig, VdtModel

C, TEXT_DIM = 3, 8  # latent channels, text width


def tiny_vdt(layers: int = 2, randomize: bool = True, **vdt) -> VdtModel:
    """Width 16 (2 heads x 8), patch 2, MLP 32; `randomize` replaces the zero-init layers (adaLN-Zero,
    temporal_fc, output) with N(0, 0.2) weights so every path carries signal."""
    torch.manual_seed(0)
    model = VdtModel(patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=8, in_channels=C,
                     out_channels=C, text_dim=TEXT_DIM, freq_dim=16, ffn_dim=32, num_layers=layers,
                     vdt=VdtConfig(**vdt))
    if randomize:
        with torch.no_grad():
            for p in model.parameters():
                p.normal_(0, 0.2)
    return model.eval()
