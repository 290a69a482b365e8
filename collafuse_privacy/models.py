"""Denoisers: diffusers ``UNet2DModel`` presets.

==========  ==================  ==========  =====================================
preset      channels per level  attention   use
==========  ==================  ==========  =====================================
``micro``   (8, 16)             none        tests (8x8 images, seconds on a CPU)
``tiny``    (16, 32, 64)        none        the CPU default (16x16 MNIST)
``small``   (32, 64, 64)        lowest      28x28 / 32x32 on a CPU in an hour
``base``    (64, 128, 256)      two lowest  GPU runs, CIFAR-10 / CelebA 32-64 px
==========  ==================  ==========  =====================================

The server model may be conditioned on the client id or on labels
(``model.server_conditioning``) through ``num_class_embeds``.
"""

from __future__ import annotations

from diffusers import UNet2DModel

from .errors import UserError

PRESETS = {
    "micro": dict(block_out_channels=(8, 16), layers_per_block=1, norm_num_groups=4, attention=()),
    "tiny": dict(block_out_channels=(16, 32, 64), layers_per_block=1, norm_num_groups=8, attention=()),
    "small": dict(block_out_channels=(32, 64, 64), layers_per_block=1, norm_num_groups=8, attention=(2,)),
    "base": dict(block_out_channels=(64, 128, 256), layers_per_block=2, norm_num_groups=32, attention=(1, 2)),
}


def build_unet(preset: str, image_size: int, channels: int, num_class_embeds: int | None = None) -> UNet2DModel:
    """A ``UNet2DModel`` for ``[B, channels, image_size, image_size]`` inputs."""
    p = PRESETS[preset]
    levels = len(p["block_out_channels"])
    if image_size % (2 ** (levels - 1)):
        raise UserError(
            f"data.image_size={image_size} must be divisible by {2 ** (levels - 1)} for model preset '{preset}'"
        )
    down = tuple("AttnDownBlock2D" if i in p["attention"] else "DownBlock2D" for i in range(levels))
    up = tuple("AttnUpBlock2D" if (levels - 1 - i) in p["attention"] else "UpBlock2D" for i in range(levels))
    return UNet2DModel(
        sample_size=image_size,
        in_channels=channels,
        out_channels=channels,
        block_out_channels=p["block_out_channels"],
        layers_per_block=p["layers_per_block"],
        norm_num_groups=p["norm_num_groups"],
        down_block_types=down,
        up_block_types=up,
        attention_head_dim=8,
        num_class_embeds=num_class_embeds,
    )


def num_params(model) -> int:
    return sum(p.numel() for p in model.parameters())


def load_unet(preset: str, image_shape, weights: dict, where) -> UNet2DModel:
    """A ``UNet2DModel`` of ``preset`` for images ``(C, H, W)`` holding ``weights`` (eval mode).

    A class embedding (server conditioning) is sized from the weights themselves.
    """
    n_cls = int(weights["class_embedding.weight"].shape[0]) if "class_embedding.weight" in weights else None
    model = build_unet(preset, int(image_shape[-1]), int(image_shape[0]), n_cls)
    try:
        model.load_state_dict(weights)
    except RuntimeError:
        raise UserError(f"{where}: the weights do not fit the run's model preset {preset!r}") from None
    return model.eval()


def same_architecture(models) -> bool:
    """Whether every model has the first one's parameter names and shapes (so they stack for ``vmap``)."""
    first = [(n, p.shape) for n, p in models[0].named_parameters()]
    return all([(n, p.shape) for n, p in m.named_parameters()] == first for m in models[1:])
