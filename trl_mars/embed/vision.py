"""Images in TRACE prompts: loading, each VLM family's image-token placement, batched vision inputs, freezing.

An item with an image is embedded from ``prefix + placeholder + text + suffix``, where the placeholder is what the
family's processor expands one image into (``VisionFamily``, one entry per family in ``FAMILIES``):

- **Qwen2-VL / Qwen2.5-VL** (``qwen2_vl``, ``qwen2_5_vl``): ``<|vision_start|> <|image_pad|>*N <|vision_end|>``
  with ``N = t*h*w / merge_size**2`` for the image's patch grid ``image_grid_thw = (t, h, w)``; the forward takes
  ``pixel_values`` (all patches, ``(P, D)``), ``image_grid_thw`` (one row per image) and ``mm_token_type_ids``
  (1 on image tokens, for M-RoPE). The vision tower is ``visual``; its projector ``merger`` stays trainable.
- **LLaVA** (``llava``: a CLIP-style vision tower, a projector and any causal LM): ``<image>*N`` with
  ``N = (H/p)*(W/p) + c - [strategy == "default"]`` for ``(H, W)`` the processed image, ``p`` the vision patch size
  and ``c`` the vision tower's class tokens (1 for CLIP), as ``LlavaProcessor`` expands it; the forward takes
  ``pixel_values`` (``(images, 3, H, W)``). The vision tower is ``vision_tower``; the projector
  (``multi_modal_projector``) lies outside it and stays trainable.

A batch keeps, per item, how many rows of ``pixel_values`` its image owns (``num_patches``: ``t*h*w`` for Qwen2-VL,
1 for LLaVA), so contiguous rows (GradCache chunks) slice their own images. Only the image processor is used
(``AutoImageProcessor``), not the ``ProcessorMixin``, so the PIL backends serve where torchvision is absent.
Adding a family is one ``VisionFamily`` entry; a VLM of another family is rejected with an error naming it.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from trl_mars.extras import require

ImageLike = Any
"""A ``PIL.Image.Image``, a path (``str`` / ``os.PathLike``) to an image file, or ``None`` (no image)."""

TOKEN_TYPE_IDS = "mm_token_type_ids"


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


def _qwen2_vl_counts(out, image_processor, config) -> tuple[list[int], list[int]]:
    """Rows of ``pixel_values`` (patches ``t*h*w``) and image tokens (patches / ``merge_size**2``) per image."""
    grid = out.get("image_grid_thw")
    if grid is None or not hasattr(image_processor, "merge_size"):
        raise ValueError(
            f"{type(image_processor).__name__} gives no image_grid_thw / merge_size: not a Qwen2-VL image processor"
        )
    patches = [t * h * w for t, h, w in grid.tolist()]
    return patches, [p // image_processor.merge_size**2 for p in patches]


CLASS_TOKENS = {"clip_vision_model": 1}
"""Non-patch positions a LLaVA vision tower puts before its patch features (CLIP's class token; SigLIP has none)."""


def _llava_counts(out, image_processor, config) -> tuple[list[int], list[int]]:
    """One ``pixel_values`` row per image; ``(H/p)*(W/p) + class tokens - [strategy == "default"]`` image tokens."""
    pixels = out["pixel_values"]
    height, width = pixels.shape[-2:]
    patch = config.vision_config.patch_size
    tokens = (height // patch) * (width // patch) + CLASS_TOKENS.get(config.vision_config.model_type, 0)
    tokens -= int(config.vision_feature_select_strategy == "default")
    return [1] * pixels.shape[0], [tokens] * pixels.shape[0]


def _qwen2_vl_max_pixels(image_processor, max_pixels: int) -> None:
    size = image_processor.size
    shortest = size["shortest_edge"] if isinstance(size, dict) else size.shortest_edge
    image_processor.size = {"shortest_edge": min(shortest, max_pixels), "longest_edge": max_pixels}


@dataclass(frozen=True)
class VisionFamily:
    """How one VLM family puts an image into a prompt and into the forward.

    ``counts(processor output, image processor, model config)`` gives, per image, its rows of ``pixel_values`` and
    its number of image tokens; ``wrap`` names the config attributes of the token ids around the image tokens (none
    for LLaVA); ``image_keys`` are the processor outputs with one row per image besides ``pixel_values``;
    ``token_type_ids``: the forward takes ``mm_token_type_ids``; ``tower`` / ``projectors``: the vision encoder's
    module name and its submodules that stay trainable when it is frozen; ``max_pixels``: how ``image_max_pixels``
    caps the image processor, None where the family's resolution is fixed.
    """

    counts: Callable[[Any, Any, Any], tuple[list[int], list[int]]]
    wrap: tuple[str, str] | None
    image_keys: tuple[str, ...]
    token_type_ids: bool
    tower: str
    projectors: tuple[str, ...] = ()
    max_pixels: Callable[[Any, int], None] | None = None


QWEN2_VL = VisionFamily(
    counts=_qwen2_vl_counts,
    wrap=("vision_start_token_id", "vision_end_token_id"),
    image_keys=("image_grid_thw",),
    token_type_ids=True,
    tower="visual",
    projectors=("merger",),
    max_pixels=_qwen2_vl_max_pixels,
)
LLAVA = VisionFamily(counts=_llava_counts, wrap=None, image_keys=(), token_type_ids=False, tower="vision_tower")
FAMILIES = {"qwen2_vl": QWEN2_VL, "qwen2_5_vl": QWEN2_VL, "llava": LLAVA}
"""``model_type`` -> its ``VisionFamily``."""


def vision_family(config) -> VisionFamily:
    """The ``VisionFamily`` of a VLM config; a clear error for a family that is not wired."""
    family = FAMILIES.get(config.model_type)
    if family is None:
        raise ValueError(
            f"vision-language model type {config.model_type!r} ({type(config).__name__}) is not supported by TRACE; "
            f"supported: {sorted(FAMILIES)} (add a VisionFamily to trl_mars.embed.vision.FAMILIES)"
        )
    return family


@dataclass(frozen=True)
class VisionSpec:
    """A VLM's family, its image processor and the image token strings and id its prompts use."""

    family: VisionFamily
    config: Any
    image_processor: Any
    image_token: str
    vision_start: str
    vision_end: str
    image_token_id: int

    @classmethod
    def from_model(cls, config, tokenizer, image_processor) -> VisionSpec:
        """From a VLM config (``image_token_id`` and the family's ``wrap`` ids) of a family in ``FAMILIES``."""
        family = vision_family(config)
        names = ("image_token_id", *(family.wrap or ()))
        missing = [name for name in names if getattr(config, name, None) is None]
        if missing:
            raise ValueError(f"{type(config).__name__} lacks {missing}, which {config.model_type} prompts need")
        token = tokenizer.convert_ids_to_tokens
        start, end = (token(getattr(config, name)) for name in family.wrap) if family.wrap else ("", "")
        return cls(family, config, image_processor, token(config.image_token_id), start, end, config.image_token_id)

    def placeholder(self, num_tokens: int) -> str:
        """The prompt text an image occupies: ``num_tokens`` image tokens, wrapped for families that wrap them."""
        return self.vision_start + self.image_token * num_tokens + self.vision_end if num_tokens else ""

    def process(self, images: Sequence[ImageLike], where: str = "image") -> ImageBatch:
        """Vision inputs of the non-None ``images``; ``ImageBatch.num_tokens[i]`` is 0 for a row without image."""
        present = [(i, load_image(img, f"{where} {i}")) for i, img in enumerate(images) if img is not None]
        num_patches = [0] * len(images)
        num_tokens = [0] * len(images)
        if not present:
            return ImageBatch({}, num_patches, num_tokens)
        out = self.image_processor(images=[img for _, img in present], return_tensors="pt")
        rows, tokens = self.family.counts(out, self.image_processor, self.config)
        for (i, _), r, n in zip(present, rows, tokens):
            num_patches[i], num_tokens[i] = r, n
        tensors = {key: out[key] for key in ("pixel_values", *self.family.image_keys)}
        return ImageBatch(tensors, num_patches, num_tokens, self.family.token_type_ids)


@dataclass
class ImageBatch:
    """Vision inputs of a list of items: ``pixel_values`` (``num_patches[i]`` rows per item with an image) and the
    family's per-image tensors, per-item counts, and whether the forward takes ``mm_token_type_ids``."""

    tensors: dict[str, torch.Tensor]
    num_patches: list[int]
    num_tokens: list[int]
    token_type_ids: bool = False

    @property
    def pixel_values(self) -> torch.Tensor | None:
        return self.tensors.get("pixel_values")

    def model_inputs(self, input_ids: torch.Tensor, image_token_id: int) -> dict[str, torch.Tensor]:
        """The forward's vision kwargs for ``input_ids`` (``mm_token_type_ids``: 1 on image tokens); empty without
        images."""
        if not self.tensors:
            return {}
        out = {key: value.to(input_ids.device) for key, value in self.tensors.items()}
        if self.token_type_ids:
            out[TOKEN_TYPE_IDS] = (input_ids == image_token_id).long()
        return out


def limit_image_pixels(vision: VisionSpec, max_pixels: int) -> None:
    """Make the image processor resize every image to at most ``max_pixels`` pixels (in place); an error for a
    family whose resolution is fixed by its vision tower."""
    if vision.family.max_pixels is None:
        raise ValueError(
            f"image_max_pixels is set but {vision.config.model_type} models take images at the fixed resolution of "
            "their vision tower; leave image_max_pixels unset"
        )
    vision.family.max_pixels(vision.image_processor, max_pixels)


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


def slice_vision_inputs(
    inputs: dict[str, torch.Tensor], prefix: str, rows: slice, image_keys: Sequence[str] = ()
) -> dict[str, torch.Tensor]:
    """Model kwargs of the contiguous ``rows`` of a collated group: their ``pixel_values`` rows, their images' rows
    of the family's per-image tensors ``image_keys`` and their ``mm_token_type_ids``; empty when those rows have no
    image."""
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
    out = {"pixel_values": inputs[f"{prefix}_pixel_values"][first_patch:end_patch]}
    out.update({key: inputs[f"{prefix}_{key}"][first_image:end_image] for key in image_keys})
    if f"{prefix}_{TOKEN_TYPE_IDS}" in inputs:
        out[TOKEN_TYPE_IDS] = inputs[f"{prefix}_{TOKEN_TYPE_IDS}"][rows]
    return out


def vision_tower_name(model: torch.nn.Module, family: VisionFamily) -> str | None:
    """Qualified name of the family's vision tower (the first module named ``family.tower``)."""
    for name, _ in model.named_modules():
        if name.rsplit(".", 1)[-1] == family.tower:
            return name
    return None


def vision_encoder_pattern(model: torch.nn.Module) -> str | None:
    """A regex (``re.fullmatch``) for the module names of the vision encoder: the family's tower without its
    projectors (None for a model without a vision tower)."""
    if not has_vision(model.config):
        return None
    family = vision_family(model.config)
    tower = vision_tower_name(model, family)
    if tower is None:
        return None
    keep = rf"(?!(?:{'|'.join(map(re.escape, family.projectors))})(?:\.|$))" if family.projectors else ""
    return rf"(.*\.)?{re.escape(family.tower)}\.{keep}.*"


def freeze_vision_encoder(model: torch.nn.Module) -> list[str]:
    """Set ``requires_grad=False`` on the vision encoder's parameters (patch embedding, blocks), keeping the
    projector trainable as TRACE does; returns the frozen parameter names."""
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
