"""VAEs as streaming decoders: latent frames in, video frames out, a causal cache kept between calls.

    dec = vae.decoder()            # fresh causal state for one video
    for lat in latent_chunks:      # [1, z, f, h, w] normalised latents, in order
        video = dec.decode(lat)    # [1, 3, f', H, W] in [-1, 1]

- `WanVAE` wraps diffusers' `AutoencoderKLWan`: latents are de-normalised exactly as diffusers'
  WanPipeline does (`lat / (1/std) + mean`) and decoded one latent frame at a time through the
  VAE's own causal feature cache, so chunked decoding equals `vae.decode` of the whole video and
  memory does not grow with length. The first latent frame gives 1 frame, every later one 4.
- `FrameVAE` wraps diffusers' `AutoencoderKL` (Stable Diffusion's image VAE, Latte): every latent
  frame is one video frame, decoded on its own after `(1 / scaling_factor) · lat` (LattePipeline's
  decode_latents, which decodes frames independently too).
- `IdentityVAE`: pixel space (the tiny presets): latents are RGB frames in [-1, 1]. It also
  encodes (`encode`: uint8 frames -> latents, the exact inverse of decode + `to_uint8`), for the
  conditions of VDT's tasks (schedule.name=task); the other VAEs only decode here.
- `SoundDecoder`: what the Engine decodes with, for every family: a VAE's decoder, plus, for the
  families that make sound, the split of the AV latent's audio band to the codec (framecast/engine/audio.py).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch


class OneFramePerLatent:
    """VAEs whose every latent frame is one video frame (no temporal compression)."""
    temporal_stride = 1

    @staticmethod
    def video_frames(latent_frames: int) -> int:
        return latent_frames

    @staticmethod
    def latent_frames(video_frames: int) -> int:
        return video_frames


class IdentityVAE(OneFramePerLatent):
    spatial_stride = 1
    z_dim = 3

    def decoder(self) -> "IdentityDecoder":
        return IdentityDecoder()

    @staticmethod
    def encode(frames_FHW3: np.ndarray) -> torch.Tensor:
        """uint8 frames [F, H, W, 3] -> latents [1, 3, F, H, W] float32, `u / 127.5 - 1`: what
        `to_uint8(decoder().decode(lat))` maps back to the same uint8 frames exactly."""
        x = torch.from_numpy(np.ascontiguousarray(frames_FHW3)).float() / 127.5 - 1.0  # (F, H, W, 3)
        return x.permute(3, 0, 1, 2)[None].contiguous()


class IdentityDecoder:
    def decode(self, lat_BCFHW: torch.Tensor) -> torch.Tensor:
        return lat_BCFHW.float().clamp(-1.0, 1.0)


class WanVAE:
    def __init__(self, folder: str | Path, device="cpu", dtype=torch.float32):
        from diffusers import AutoencoderKLWan

        self.vae = AutoencoderKLWan.from_pretrained(Path(folder), torch_dtype=dtype).to(device).eval()
        cfg = self.vae.config
        self.z_dim = cfg.z_dim
        self.temporal_stride = int(getattr(cfg, "scale_factor_temporal", 4))
        self.spatial_stride = int(getattr(cfg, "scale_factor_spatial", 8))
        shape = (1, cfg.z_dim, 1, 1, 1)
        # normalisation constants live where the VAE does (moved once, not per decoded chunk)
        self.device = torch.device(device)
        self.mean = torch.tensor(cfg.latents_mean).view(shape).to(self.device, dtype)
        self.inv_std = (1.0 / torch.tensor(cfg.latents_std).view(shape)).to(self.device, dtype)
        for name in ("clear_cache", "post_quant_conv", "decoder"):
            if not hasattr(self.vae, name):
                raise RuntimeError(f"this diffusers AutoencoderKLWan has no {name!r}; streaming decode needs it")

    def video_frames(self, latent_frames: int) -> int:
        return (latent_frames - 1) * self.temporal_stride + 1

    def latent_frames(self, video_frames: int) -> int:
        return (video_frames - 1) // self.temporal_stride + 1

    def decoder(self) -> "WanDecoder":
        return WanDecoder(self)


class WanDecoder:
    """One video's causal decode state. Not shareable between videos."""

    def __init__(self, wan: WanVAE):
        self.wan = wan
        self.first = True
        wan.vae.clear_cache()
        self.feat_map = wan.vae._feat_map  # the VAE's causal conv cache, owned by this decode

    @torch.no_grad()
    def decode(self, lat_BCFHW: torch.Tensor) -> torch.Tensor:
        vae = self.wan.vae
        # latents may come from the host (a pipeline's finished blocks, a resume record): to the VAE's device
        lat = lat_BCFHW.to(self.wan.device, vae.dtype)
        lat = lat / self.wan.inv_std + self.wan.mean
        x = vae.post_quant_conv(lat)  # 1x1x1 conv: frame-wise, so chunking does not change it
        outs = []
        for i in range(x.shape[2]):
            idx = [0]
            outs.append(vae.decoder(x[:, :, i:i + 1], feat_cache=self.feat_map, feat_idx=idx,
                                    first_chunk=self.first))
            self.first = False
        return torch.cat(outs, dim=2).clamp(-1.0, 1.0).float()


class FrameVAE(OneFramePerLatent):

    def __init__(self, folder: str | Path, device="cpu", dtype=torch.float32):
        from diffusers import AutoencoderKL

        self.vae = AutoencoderKL.from_pretrained(Path(folder), torch_dtype=dtype).to(device).eval()
        cfg = self.vae.config
        self.z_dim = cfg.latent_channels
        self.spatial_stride = 2 ** (len(cfg.block_out_channels) - 1)  # LattePipeline's vae_scale_factor
        self.scaling_factor = float(cfg.scaling_factor)
        self.device = torch.device(device)

    def decoder(self) -> "FrameDecoder":
        return FrameDecoder(self)


class FrameDecoder:
    """Frame-wise decode: no state between calls (kept as an object for the decoder contract)."""

    def __init__(self, frame_vae: FrameVAE):
        self.frame_vae = frame_vae

    @torch.no_grad()
    def decode(self, lat_BCFHW: torch.Tensor) -> torch.Tensor:
        vae = self.frame_vae.vae
        lat = lat_BCFHW.to(self.frame_vae.device, vae.dtype)
        lat = (1 / self.frame_vae.scaling_factor) * lat  # multiply by the reciprocal, as diffusers
        frames = [vae.decode(lat[:, :, i]).sample for i in range(lat.shape[2])]  # one frame at a time: bounded memory
        return torch.stack(frames, dim=2).clamp(-1.0, 1.0).float()


class SoundDecoder:
    """One video's decode state for every model family: the latent's video rows through the video
    VAE's decoder; for families that make sound (`produces_audio`: the AV latent
    [B, C, F, H + band_rows, W]) the last `codec.band_rows` rows are the audio band, decoded by the
    codec (framecast/engine/audio.py) with the absolute index of the block's first frame, so
    decoding block by block gives exactly the samples of decoding all at once.

    `decode(lat)` -> (video [B, 3, F', H', W'], audio float32 [F, samples_per_frame] or None).
    codec None: no band (audio-less families); with a codec and `audio=False` the band is dropped.
    """

    def __init__(self, video_decoder, codec=None, audio: bool = False):
        self.video, self.codec, self.audio = video_decoder, codec, audio and codec is not None
        self.frame = 0  # latent frames decoded so far: the next block's first frame

    def decode(self, lat_BCFHW: torch.Tensor):
        if self.codec is None:
            return self.video.decode(lat_BCFHW), None
        rows, f = self.codec.band_rows, lat_BCFHW.shape[2]
        video = self.video.decode(lat_BCFHW[:, :, :, :-rows])
        wave = None
        if self.audio:
            if video.shape[2] != f:  # the codec's frames are video frames
                raise ValueError(f"the audio band needs one video frame per latent frame (vae.temporal_stride=1); "
                                 f"{f} latent frames decoded to {video.shape[2]} video frames")
            wave = self.codec.decode(lat_BCFHW[0, :, :, -rows:], first_frame=self.frame).reshape(f, -1)
        self.frame += f
        return video, wave
