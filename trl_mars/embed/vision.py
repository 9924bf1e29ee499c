"""Images in TRACE prompts (Qwen2-VL family): loading, the image-token placeholder, batched vision inputs, freezing.

An item with an image is embedded from ``prefix + <|vision_start|> <|image_pad|>*N <|vision_end|> + text + suffix``,
what Qwen2-VL's chat template renders for a user turn ``[{"type": "image"}, {"type": "text", "text": text}]``, with
``N = t*h*w / merge_size**2`` for the image's patch grid ``image_grid_thw = (t, h, w)`` (the processor's expansion).
The batch carries ``pixel_values`` (all patches of the images, in row order), ``image_grid_thw`` (one row per image)
and ``mm_token_type_ids`` (1 on image tokens), which the model needs for M-RoPE.

Only the image processor is used (``AutoImageProcessor``), not the ``ProcessorMixin``, so the PIL backend serves
where torchvision (which Qwen2-VL's video processor needs) is absent; the expansion above is the Qwen2-VL /
Qwen2.5-VL rule, so a model whose image processor gives no ``image_grid_thw`` is rejected with an error.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from trl_mars.extras import require

ImageLike = Any
"""A ``PIL.Image.Image``, a path (``str`` / ``os.PathLike``) to an image file, or ``None`` (no image)."""

VISION_TOWER_NAMES = ("visual", "vision_tower", "vision_model")
PROJECTOR_NAMES = ("merger",)
"""The vision tower's submodule that maps patch features to the language model (TRACE trains it)."""


def has_vision(config) -> bool:
    """Whether a model config describes a vision-language model (it has a ``vision_config``)."""
    return getattr(config, "vision_config", None) is not None


def load_image(image: ImageLike, where: str = "image"):
    """An RGB ``PIL.Image`` from a PIL image or a path; a clear error naming ``where`` otherwise."""
    require("PIL", "vision", "images in TRACE prompts", package="pillow")
    from PIL import Image

    if isinstance(image, Image.Image):
        return image.convert("RGB")
    if isinstance(image, str | os.PathLike):
        if not Path(image).is_file():
            raise FileNotFoundError(f"{where}: image file {str(image)!r} does not exist")
        with Image.open(image) as opened:
            return opened.convert("RGB")
    raise TypeError(f"{where}: expected a PIL image, an image path or None, got {type(image).__name__}")


@dataclass(frozen=True)
class VisionSpec:
    """The image processor and the token ids a VLM's prompts use for images."""

    image_processor: Any
    image_token: str
    vision_start: str
    vision_end: str
    image_token_id: int

    @classmethod
    def from_model(cls, config, tokenizer, image_processor) -> VisionSpec:
        """From a VLM config (``image_token_id``, ``vision_start_token_id``, ``vision_end_token_id``)."""
        missing = [
            name
            for name in ("image_token_id", "vision_start_token_id", "vision_end_token_id")
            if getattr(config, name, None) is None
        ]
        if missing or not hasattr(image_processor, "merge_size"):
            raise ValueError(
                f"images need a Qwen2-VL-style model ({type(config).__name__} lacks {missing}) and image processor "
                f"with merge_size ({type(image_processor).__name__}); only the Qwen2-VL family is supported"
            )
        token = tokenizer.convert_ids_to_tokens
        return cls(
            image_processor=image_processor,
            image_token=token(config.image_token_id),
            vision_start=token(config.vision_start_token_id),
            vision_end=token(config.vision_end_token_id),
            image_token_id=config.image_token_id,
        )

    def placeholder(self, num_tokens: int) -> str:
        """The prompt text an image occupies: ``<|vision_start|>`` + ``num_tokens`` image tokens + ``<|vision_end|>``."""
        return self.vision_start + self.image_token * num_tokens + self.vision_end if num_tokens else ""

    def process(self, images: Sequence[ImageLike], where: str = "image") -> ImageBatch:
        """Pixel patches of the non-None ``images``; ``ImageBatch.num_tokens[i]`` is 0 for a row without image."""
        present = [(i, load_image(img, f"{where} {i}")) for i, img in enumerate(images) if img is not None]
        num_patches = [0] * len(images)
        num_tokens = [0] * len(images)
        if not present:
            return ImageBatch(None, None, num_patches, num_tokens)
        out = self.image_processor(images=[img for _, img in present], return_tensors="pt")
        grid = out.get("image_grid_thw")
        if grid is None:
            raise ValueError(f"{type(self.image_processor).__name__} returns no image_grid_thw (not Qwen2-VL-style)")
        merge = self.image_processor.merge_size**2
        for (i, _), thw in zip(present, grid.tolist()):
            num_patches[i] = thw[0] * thw[1] * thw[2]
            num_tokens[i] = num_patches[i] // merge
        return ImageBatch(out["pixel_values"], grid, num_patches, num_tokens)


@dataclass
class ImageBatch:
    """Vision inputs of a list of items: all patches (``(P, D)``), one grid row per image, per-item counts."""

    pixel_values: torch.Tensor | None
    image_grid_thw: torch.Tensor | None
    num_patches: list[int]
    num_tokens: list[int]

    def model_inputs(self, input_ids: torch.Tensor, image_token_id: int) -> dict[str, torch.Tensor]:
        """``pixel_values``, ``image_grid_thw`` and ``mm_token_type_ids`` for ``input_ids``; empty without images."""
        if self.pixel_values is None:
            return {}
        return {
            "pixel_values": self.pixel_values.to(input_ids.device),
            "image_grid_thw": self.image_grid_thw.to(input_ids.device),
            "mm_token_type_ids": (input_ids == image_token_id).long(),
        }


def limit_image_pixels(image_processor, max_pixels: int) -> None:
    """Make a Qwen2-VL image processor resize every image to at most ``max_pixels`` pixels (in place)."""
    size = image_processor.size
    shortest = size["shortest_edge"] if isinstance(size, dict) else size.shortest_edge
    image_processor.size = {"shortest_edge": min(shortest, max_pixels), "longest_edge": max_pixels}


def check_image_tokens(ids: Sequence[int], image_token_id: int, expected: int, where: str) -> None:
    """Raise if truncation (or the text itself) changed the number of image tokens of an item."""
    found = sum(1 for i in ids if i == image_token_id)
    if found != expected:
        raise ValueError(
            f"{where}: {found} image tokens in the prompt, expected {expected}: max_length is too small for the image "
            "(raise max_length or lower the image processor's max_pixels), or the text contains the image token"
        )


def batch_vision_inputs(
    prefix: str, images: ImageBatch, input_ids: torch.Tensor, image_token_id: int
) -> dict[str, torch.Tensor]:
    """A collated group's vision tensors under ``{prefix}_...``, with ``{prefix}_num_patches`` to slice rows."""
    inputs = images.model_inputs(input_ids, image_token_id)
    if not inputs:
        return {}
    out = {f"{prefix}_{key}": value for key, value in inputs.items()}
    out[f"{prefix}_num_patches"] = torch.tensor(images.num_patches, dtype=torch.long)
    return out


def slice_vision_inputs(inputs: dict[str, torch.Tensor], prefix: str, rows: slice) -> dict[str, torch.Tensor]:
    """Model kwargs (``pixel_values``, ``image_grid_thw``, ``mm_token_type_ids``) of the contiguous ``rows`` of a
    collated group; empty when those rows have no image."""
    if f"{prefix}_pixel_values" not in inputs:
        return {}
    patches = inputs[f"{prefix}_num_patches"]
    start, stop, step = rows.indices(patches.shape[0])
    if step != 1:
        raise ValueError("vision inputs can only be sliced by contiguous rows")
    has_image = patches > 0
    first_image, end_image = int(has_image[:start].sum()), int(has_image[:stop].sum())
    if first_image == end_image:
        return {}
    first_patch, end_patch = int(patches[:start].sum()), int(patches[:stop].sum())
    return {
        "pixel_values": inputs[f"{prefix}_pixel_values"][first_patch:end_patch],
        "image_grid_thw": inputs[f"{prefix}_image_grid_thw"][first_image:end_image],
        "mm_token_type_ids": inputs[f"{prefix}_mm_token_type_ids"][rows],
    }


def vision_tower_name(model: torch.nn.Module) -> str | None:
    """Qualified name of the vision tower (a module named ``visual``, ``vision_tower`` or ``vision_model``)."""
    for name, _ in model.named_modules():
        if name.rsplit(".", 1)[-1] in VISION_TOWER_NAMES:
            return name
    return None


def vision_encoder_pattern(model: torch.nn.Module) -> str | None:
    """A regex (``re.fullmatch``) for the module names of the vision encoder: the tower without its projector."""
    tower = vision_tower_name(model)
    if tower is None:
        return None
    keep = "|".join(PROJECTOR_NAMES)
    return rf"(.*\.)?{re.escape(tower.rsplit('.', 1)[-1])}\.(?!(?:{keep})(?:\.|$)).*"


def freeze_vision_encoder(model: torch.nn.Module) -> list[str]:
    """Set ``requires_grad=False`` on the vision encoder's parameters (patch embedding, blocks), keeping the
    projector (``merger``) trainable as TRACE does; returns the frozen parameter names."""
    pattern = vision_encoder_pattern(model)
    if pattern is None:
        return []
    frozen = []
    for name, param in model.named_parameters():
        module = name.rsplit(".", 1)[0]
        if re.fullmatch(pattern, module):
            param.requires_grad_(False)
            frozen.append(name)
    return frozen
