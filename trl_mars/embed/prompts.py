"""Prompt layout shared by training, inference and the sentence-transformers export.

A text is embedded from ``prefix + text + suffix (+ target)``, where ``prefix``/``suffix`` are the model's chat
template rendered around the user text (system instruction first, generation prompt last). Queries are followed by
the target ``[CoT; <|emb|>]``, candidates by ``<|emb|>`` only. ``prefix + text`` is tokenised as one string (so a
sentence-transformers prompt prefix gives the same ids) and truncated on the right so the suffix and target survive.
An item with an image has the image's placeholder between the prefix and the text (``trl_mars.embed.vision``).
"""

from __future__ import annotations

from dataclasses import dataclass

from transformers import PreTrainedTokenizerBase

EMB_TOKEN = "<|emb|>"
DEFAULT_QUERY_INSTRUCTION = (
    "Represent the user's request for retrieval. For a simple request output only the embedding token. "
    "For a complex request first write a concise description of what is wanted, then the embedding token."
)
DEFAULT_CANDIDATE_INSTRUCTION = "Represent this item for retrieval. Your output must be only the embedding token."
_SENTINEL = "\x00TRACE_TEXT\x00"


@dataclass(frozen=True)
class PromptParts:
    """The chat-template text before and after the user text, and the suffix token ids."""

    prefix: str
    suffix: str
    suffix_ids: tuple[int, ...]


def prompt_parts(tokenizer: PreTrainedTokenizerBase, instruction: str) -> PromptParts:
    """Render the chat template (system = ``instruction``, user = placeholder) and split it around the user text."""
    if not getattr(tokenizer, "chat_template", None):
        raise ValueError("the tokenizer has no chat_template; set one (e.g. SFTConfig.chat_template_path)")
    messages = [{"role": "system", "content": instruction}, {"role": "user", "content": _SENTINEL}]
    rendered = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    if rendered.count(_SENTINEL) != 1:
        raise ValueError("the chat template must render the user content verbatim exactly once")
    prefix, suffix = rendered.split(_SENTINEL)
    return PromptParts(prefix, suffix, tuple(tokenizer(suffix, add_special_tokens=False)["input_ids"]))


def prompt_ids(
    tokenizer: PreTrainedTokenizerBase, parts: PromptParts, text: str, max_tokens: int, image: str = ""
) -> list[int]:
    """Token ids of ``prefix + image + text`` (right-truncated to fit) followed by the suffix; at most ``max_tokens``
    ids. ``image`` is an image's placeholder text (``VisionSpec.placeholder``), empty for a text-only item."""
    budget = max_tokens - len(parts.suffix_ids)
    if budget <= 0:
        raise ValueError(
            f"max length {max_tokens} leaves no room for the text after the {len(parts.suffix_ids)} suffix ids"
        )
    ids = tokenizer(parts.prefix + image + text, add_special_tokens=False)["input_ids"][:budget]
    return [*ids, *parts.suffix_ids]


def emb_token_id(tokenizer: PreTrainedTokenizerBase, emb_token: str = EMB_TOKEN) -> int:
    """Id of the single special token ``emb_token``; raises if the tokenizer does not know it as one token."""
    ids = tokenizer(emb_token, add_special_tokens=False)["input_ids"]
    if len(ids) != 1 or emb_token not in tokenizer.get_vocab():
        raise ValueError(f"{emb_token!r} is not a single token of this tokenizer; add it with add_emb_token()")
    return ids[0]


def add_emb_token(tokenizer: PreTrainedTokenizerBase, emb_token: str = EMB_TOKEN) -> tuple[int, bool]:
    """Add ``emb_token`` as an additional special token if missing; returns ``(id, added)``."""
    added = emb_token not in tokenizer.get_vocab()
    if added:
        tokenizer.add_special_tokens({"additional_special_tokens": [emb_token]}, replace_extra_special_tokens=False)
    return emb_token_id(tokenizer, emb_token), added
