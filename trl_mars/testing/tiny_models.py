"""Offline tiny models: a locally trained byte-level BPE tokenizer, tiny Qwen2/Llama causal LMs and tiny
Qwen2-VL / Qwen2.5-VL / LLaVA (CLIP vision + Llama) vision-language models (with their image processor).

Everything is built from configs on the spot (no hub access) and saved with ``save_pretrained`` so that
every code path loads it by path, exactly as it would load ``Qwen/Qwen3-8B``.
"""

from __future__ import annotations

import hashlib
import math
import os
import tempfile
from collections.abc import Iterable
from importlib import resources
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import (
    AutoModelForCausalLM,
    AutoModelForImageTextToText,
    AutoModelForSequenceClassification,
    LlamaConfig,
    LlavaConfig,
    PretrainedConfig,
    PreTrainedTokenizerFast,
    Qwen2_5_VLConfig,
    Qwen2Config,
    Qwen2VLConfig,
)

from trl_mars.data.locations import cache_dir as default_cache_dir

SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
CHAT_TEMPLATE = resources.files("trl_mars.testing").joinpath("chat_template.jinja").read_text()
VL_CHAT_TEMPLATE = resources.files("trl_mars.testing").joinpath("chat_template_vl.jinja").read_text()
"""ChatML that also renders content blocks: ``{"type": "image"}`` as ``<|vision_start|><|image_pad|><|vision_end|>``
(as Qwen2-VL's template does) and ``{"type": "text"}`` as its text."""
VISION_TOKENS = ("<|vision_start|>", "<|vision_end|>", "<|image_pad|>", "<|video_pad|>")
LLAVA_IMAGE_TOKEN = "<image>"
TINY_VLM_ARCHS = ("qwen2_vl", "qwen2_5_vl", "llava")
ARCH_VISION_TOKENS = {"qwen2_vl": VISION_TOKENS, "qwen2_5_vl": VISION_TOKENS, "llava": (LLAVA_IMAGE_TOKEN,)}
"""The image special tokens each tiny VLM's tokenizer gets."""
ARCH_CHAT_TEMPLATES = {
    "qwen2_vl": VL_CHAT_TEMPLATE,
    "qwen2_5_vl": VL_CHAT_TEMPLATE,
    "llava": VL_CHAT_TEMPLATE.replace("<|vision_start|><|image_pad|><|vision_end|>", LLAVA_IMAGE_TOKEN),
}
"""The block-aware ChatML of each tiny VLM: an image block renders as the family's (unexpanded) image token(s)."""
TINY_ARCHS = ("qwen2", "llama")
HEADS = {"causal-lm": AutoModelForCausalLM, "reward": AutoModelForSequenceClassification}
"""``head`` of a tiny model: a causal LM, or a one-label sequence classifier (a reward model, as TRL trains)."""


def default_corpus() -> list[str]:
    """Text the tokenizer is trained on: the embedded code tasks (prompts + solutions) and some prose."""
    from trl_mars.data.code_tasks import generate_tasks

    texts = []
    for task in generate_tasks(num_tasks=150, seed=1234):
        texts += [task.question, task.canonical_solution, "\n".join(task.tests)]
    texts += [
        "You are a helpful assistant. Think step by step, then answer.",
        "Here are the results of running your code. Fix the code so that all tests pass.",
        "The quick brown fox jumps over the lazy dog. 0123456789",
    ]
    return texts


def build_tiny_tokenizer(corpus: Iterable[str] | None = None, vocab_size: int = 1024) -> PreTrainedTokenizerFast:
    """Train a byte-level BPE tokenizer (ChatML specials, left padding) on ``corpus``; deterministic."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(list(corpus if corpus is not None else default_corpus()), trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=None,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        padding_side="left",
        chat_template=CHAT_TEMPLATE,
        model_max_length=2048,
    )


def tiny_config(arch: str, tokenizer: PreTrainedTokenizerFast, **overrides) -> PretrainedConfig:
    """A small decoder config for ``arch`` in {"qwen2", "llama"}: GQA (4 query / 2 KV heads), tied embeddings."""
    if arch not in TINY_ARCHS:
        raise ValueError(f"arch must be one of {TINY_ARCHS}, got {arch!r}")
    kwargs = dict(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=2048,
        tie_word_embeddings=True,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=None,
    )
    kwargs.update(overrides)
    return (Qwen2Config if arch == "qwen2" else LlamaConfig)(**kwargs)


def save_tiny_model(
    arch: str,
    path: str | os.PathLike,
    tokenizer: PreTrainedTokenizerFast | None = None,
    seed: int = 0,
    head: str = "causal-lm",
    **overrides,
) -> Path:
    """Build a randomly initialised tiny ``arch`` model (``head``: see ``HEADS``) and save it with its tokenizer at
    ``path``."""
    if head not in HEADS:
        raise ValueError(f"head must be one of {sorted(HEADS)}, got {head!r}")
    tokenizer = tokenizer if tokenizer is not None else build_tiny_tokenizer()
    torch.manual_seed(seed)
    if head == "reward":
        overrides = {"num_labels": 1, **overrides}
    model = HEADS[head].from_config(tiny_config(arch, tokenizer, **overrides))
    if getattr(model, "generation_config", None) is not None:  # a sequence classifier does not generate
        model.generation_config.pad_token_id = tokenizer.pad_token_id
        model.generation_config.eos_token_id = tokenizer.eos_token_id
        model.generation_config.bos_token_id = None
    path = Path(path)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def tiny_model_path(
    arch: str = "qwen2", cache_dir: str | os.PathLike | None = None, head: str = "causal-lm", **overrides
) -> str:
    """Path of a cached tiny model (built on first use), keyed by architecture, head and config overrides.

    The cache is ``cache_dir``, else the package's cache (``$TRL_MARS_CACHE``, default ``~/.cache/trl_mars``,
    see ``trl_mars.data.locations``); writes are atomic renames, so concurrent processes never see a half-written
    model.
    """
    root = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    named = (arch, sorted(overrides.items())) if head == "causal-lm" else (arch, head, sorted(overrides.items()))
    key = hashlib.sha256(repr(named).encode()).hexdigest()[:12]
    target = root / f"tiny-{arch}{'' if head == 'causal-lm' else '-' + head}-{key}"
    if not (target / "config.json").exists():
        root.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(dir=root, prefix=".staging-"))
        save_tiny_model(arch, staging, head=head, **overrides)
        try:
            staging.rename(target)
        except OSError:  # another process won the race; its copy is identical
            pass
    return str(target)


def tiny_vlm_config(
    arch: str, tokenizer: PreTrainedTokenizerFast, image_pixels: int = 56 * 56, **overrides
) -> PretrainedConfig:
    """A tiny VLM config, image ids from ``tokenizer``. Qwen2-VL / Qwen2.5-VL: the text model of ``tiny_config``
    (M-RoPE sections 2/3/3 of the 16-dim heads), a one- or two-block vision tower with 14-pixel patches and 2x2
    merging. LLaVA: a two-layer CLIP vision tower on ``sqrt(image_pixels)``-pixel square images with 28-pixel
    patches (features of its last layer, class token dropped) and a tiny Llama.

    ``overrides`` go to the text config (``hidden_size`` also sizes the vision tower's output).
    """
    if arch not in TINY_VLM_ARCHS:
        raise ValueError(f"arch must be one of {TINY_VLM_ARCHS}, got {arch!r}")
    missing = [t for t in ARCH_VISION_TOKENS[arch] if t not in tokenizer.get_vocab()]
    if missing:
        raise ValueError(f"the tokenizer lacks the vision tokens {missing}; build it with add_vision_tokens()")
    if arch == "llava":
        return _tiny_llava_config(tokenizer, image_pixels, **overrides)
    text = dict(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=2048,
        rope_parameters={"rope_type": "default", "rope_theta": 1e4, "mrope_section": [2, 3, 3]},
        tie_word_embeddings=True,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=None,
    )
    text.update(overrides)
    if arch == "qwen2_vl":
        vision = dict(depth=1, embed_dim=32, hidden_size=text["hidden_size"], num_heads=2, mlp_ratio=2)
    else:
        vision = dict(
            depth=2,
            hidden_size=32,
            intermediate_size=64,
            out_hidden_size=text["hidden_size"],
            num_heads=2,
            window_size=56,
            fullatt_block_indexes=[1],
        )
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in VISION_TOKENS}
    return (Qwen2VLConfig if arch == "qwen2_vl" else Qwen2_5_VLConfig)(
        text_config=text,
        vision_config=vision,
        image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"],
        tie_word_embeddings=text["tie_word_embeddings"],
    )


def _tiny_llava_config(tokenizer: PreTrainedTokenizerFast, image_pixels: int, **overrides) -> LlavaConfig:
    side = math.isqrt(image_pixels)
    if side * side != image_pixels or side % 28:
        raise ValueError(f"a tiny LLaVA takes square images of a multiple of 28 pixels a side, got {image_pixels}")
    text = tiny_config("llama", tokenizer, **overrides).to_dict()
    vision = dict(
        model_type="clip_vision_model",
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        image_size=side,
        patch_size=28,
        projection_dim=32,
    )
    return LlavaConfig(
        text_config=text,
        vision_config=vision,
        image_token_index=tokenizer.convert_tokens_to_ids(LLAVA_IMAGE_TOKEN),
        vision_feature_layer=-1,  # the last of the two layers, so every vision parameter gets a gradient
        vision_feature_select_strategy="default",
        projector_hidden_act="gelu",
        tie_word_embeddings=text["tie_word_embeddings"],
    )


def add_vision_tokens(tokenizer: PreTrainedTokenizerFast, arch: str = "qwen2_vl") -> PreTrainedTokenizerFast:
    """Add ``arch``'s image special tokens (Qwen2-VL's image/video tokens, LLaVA's ``<image>``) and its block-aware
    chat template to ``tokenizer`` (in place)."""
    new = [t for t in ARCH_VISION_TOKENS[arch] if t not in tokenizer.get_vocab()]
    if new:
        tokenizer.add_special_tokens({"additional_special_tokens": new}, replace_extra_special_tokens=False)
    tokenizer.chat_template = ARCH_CHAT_TEMPLATES[arch]
    return tokenizer


def _tiny_image_processor(arch: str, image_pixels: int):
    """Qwen2-VL's processor resizing to about ``image_pixels`` pixels; LLaVA's CLIP processor (resize + centre crop
    to the vision tower's square)."""
    if arch == "llava":
        from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

        side = math.isqrt(image_pixels)
        return CLIPImageProcessorPil(size={"shortest_edge": side}, crop_size={"height": side, "width": side})
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    return Qwen2VLImageProcessorPil(min_pixels=image_pixels, max_pixels=image_pixels)


def save_tiny_vlm(
    path: str | os.PathLike,
    arch: str = "qwen2_vl",
    tokenizer: PreTrainedTokenizerFast | None = None,
    image_pixels: int = 56 * 56,
    seed: int = 0,
    **overrides,
) -> Path:
    """Build a randomly initialised tiny VLM and save it at ``path`` with its tokenizer (plus the vision tokens) and
    its image processor, so ``AutoModelForImageTextToText`` / ``AutoImageProcessor`` load it. At 56x56 pixels an
    image is 4 image tokens in both families: Qwen2-VL's 4x4 patch grid after 2x2 merging, LLaVA's 2x2 patches."""
    tokenizer = add_vision_tokens(tokenizer if tokenizer is not None else build_tiny_tokenizer(), arch)
    torch.manual_seed(seed)
    config = tiny_vlm_config(arch, tokenizer, image_pixels=image_pixels, **overrides)
    model = AutoModelForImageTextToText.from_config(config)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.bos_token_id = None
    path = Path(path)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    _tiny_image_processor(arch, image_pixels).save_pretrained(path)
    return path


def tiny_vlm_path(
    arch: str = "qwen2_vl",
    cache_dir: str | os.PathLike | None = None,
    tokenizer_corpus: Iterable[str] | None = None,
    vocab_size: int = 1024,
    **overrides,
) -> str:
    """Path of a cached tiny VLM (built on first use; atomic rename as ``tiny_model_path``), keyed by architecture,
    tokenizer corpus, vocabulary size and overrides (``image_pixels``, text-config fields)."""
    root = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    corpus = None if tokenizer_corpus is None else list(tokenizer_corpus)
    named = (
        arch,
        vocab_size,
        sorted(overrides.items()),
        None if corpus is None else hashlib.sha256("\x00".join(corpus).encode()).hexdigest(),
    )
    key = hashlib.sha256(repr(named).encode()).hexdigest()[:12]
    target = root / f"tiny-{arch}-{key}"
    if not (target / "config.json").exists():
        root.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(dir=root, prefix=".staging-"))
        save_tiny_vlm(staging, arch, tokenizer=build_tiny_tokenizer(corpus, vocab_size=vocab_size), **overrides)
        try:
            staging.rename(target)
        except OSError:  # another process won the race; its copy is identical
            pass
    return str(target)
