"""Export a TRACE encoder as a sentence-transformers folder (``SentenceTransformer(path)`` loads it).

Layout: Transformer (weights + a tokenizer whose post-processor appends the chat-template suffix, e.g.
``<|im_end|>\\n<|im_start|>assistant\\n``) -> last-token Pooling -> Normalize, with the prompts ``query`` and
``document`` holding the chat-template prefixes (system instruction + user header). So
``model.encode(texts, prompt_name="query")`` tokenises ``prefix + text + suffix`` and pools the last state, which
is the pre-``<|emb|>`` state of TRACE's ``direct`` mode; ``prompt_name="document"`` gives the candidate embedding.
sentence-transformers cannot decode, so reasoning (``routed``/``cot``) stays with ``TraceEncoder``.

Text-only models only: a vision-language encoder is rejected. sentence-transformers 6.2 loads a VLM folder through
``AutoProcessor``, whose Qwen2-VL processor needs torchvision (for its video processor); that path was not run here
and is not claimed to reproduce TRACE's image embeddings. Serve images with ``TraceEncoder.from_pretrained``.
"""

from __future__ import annotations

import copy
import json
import os
from pathlib import Path

from tokenizers import processors

from trl_mars.embed.encoder import TraceEncoder
from trl_mars.embed.vision import has_vision

MODULES = [
    {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
    {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
    {"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"},
]


def _write_json(path: Path, obj: dict | list) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, indent=2))


def export_sentence_transformers(encoder: TraceEncoder, output_dir: str | os.PathLike) -> Path:
    """Write ``encoder`` as a sentence-transformers model; LoRA adapters are merged into the weights (in place)."""
    if encoder.vision is not None or has_vision(encoder.model.config):
        raise ValueError(
            "export_sentence_transformers is for text-only TRACE models; this one is a vision-language model: load "
            "it with TraceEncoder.from_pretrained(path) and encode(texts, images=...)"
        )
    out = Path(output_dir)
    model = encoder.model
    if hasattr(model, "merge_and_unload"):
        model = model.merge_and_unload()
        encoder.model = model
    model.save_pretrained(out)

    suffix_ids = encoder.parts["query"].suffix_ids
    if suffix_ids != encoder.parts["candidate"].suffix_ids:
        raise ValueError("query and candidate prompts end differently; one tokenizer suffix cannot serve both")
    tokenizer = copy.deepcopy(encoder.tokenizer)
    names = [f"<trace_suffix_{i}>" for i in range(len(suffix_ids))]
    tokenizer.backend_tokenizer.post_processor = processors.TemplateProcessing(
        single=" ".join(["$A", *names]), special_tokens=list(zip(names, suffix_ids))
    )
    tokenizer.padding_side = "left"
    tokenizer.save_pretrained(out)

    hidden = model.config.get_text_config().hidden_size
    _write_json(out / "modules.json", MODULES)
    _write_json(
        out / "sentence_bert_config.json", {"max_seq_length": encoder.settings.max_length, "do_lower_case": False}
    )
    pooling = {f"pooling_mode_{m}": m == "lasttoken" for m in ("cls_token", "mean_tokens", "max_tokens", "lasttoken")}
    _write_json(
        out / "1_Pooling" / "config.json", {"word_embedding_dimension": hidden, **pooling, "include_prompt": True}
    )
    (out / "2_Normalize").mkdir(exist_ok=True)
    prompts = {"query": encoder.parts["query"].prefix, "document": encoder.parts["candidate"].prefix}
    _write_json(
        out / "config_sentence_transformers.json",
        {"prompts": prompts, "default_prompt_name": "document", "similarity_fn_name": "cosine"},
    )
    encoder.settings.save(out)
    return out
