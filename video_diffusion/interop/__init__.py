"""Interoperation with PyTorch: torch.save files and video-diffusion-pytorch weights."""
