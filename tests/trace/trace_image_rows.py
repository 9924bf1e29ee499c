"""Rows with images for the multimodal TRACE tests and their torchrun worker: 56x56 two-colour PIL images.

The tests run with ``--import-mode=importlib``: ``conftest.py`` registers this module under its name, so
``from trace_image_rows import ...`` works in the tests; under torchrun the worker's folder is on ``sys.path``.
"""

from __future__ import annotations

COLOURS = {"red": (220, 30, 30), "green": (30, 200, 30), "blue": (30, 30, 220), "yellow": (230, 220, 40)}
WORDS = "red green blue yellow left right half and of the a photo Query. Item. <|im_start|>system\n<|im_end|>\n"


def tiny_trace_vlm_path(cache_dir, arch: str = "qwen2_vl") -> str:
    """A tiny VLM (Qwen2-VL: 4x4 patches = 4 image tokens; LLaVA: 2x2 patches = 4 image tokens) with a tokenizer
    trained on the rows' words."""
    from trl_mars.testing import tiny_vlm_path

    return tiny_vlm_path(arch, cache_dir=cache_dir, tokenizer_corpus=[WORDS] * 20, vocab_size=400)


def two_colour_image(left: str, right: str):
    from PIL import Image

    image = Image.new("RGB", (56, 56), COLOURS[left])
    image.paste(Image.new("RGB", (28, 56), COLOURS[right]), (28, 0))
    return image


def image_rows(n: int = 16) -> list[dict]:
    """``n`` rows mixing every modality: image-only, text+image and text queries; image-only and text+image
    positives; text and text+image hard negatives; every third query (from row 1) has a reasoning target."""
    names = list(COLOURS)
    rows = []
    for i in range(n):
        left, right = names[i % 4], names[(i // 4) % 4]
        kind = i % 3  # 0: image only, 1: text + image, 2: text only
        rows.append(
            {
                "query": "" if kind == 0 else f"the {left} left half" if kind == 1 else f"{left} left {right} right",
                "query_image": None if kind == 2 else two_colour_image(left, right),
                "query_target": f"{left} left of {right}" if kind == 1 else "",
                "positive": f"a photo of {left} and {right}" if i % 2 else "",
                "positive_image": two_colour_image(left, right),
                "negative": f"a photo of {right} and {left}",
                "negative_image": two_colour_image(right, left) if i % 2 else None,
            }
        )
    return rows
