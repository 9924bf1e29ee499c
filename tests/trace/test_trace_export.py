"""sentence-transformers export: the exported folder reproduces TraceEncoder's direct/candidate embeddings."""

from __future__ import annotations

import json

import pytest
import torch
from datasets import Dataset
from transformers import AutoModel, AutoTokenizer

from trl_mars.embed.export import export_sentence_transformers
from trl_mars.trainers.trace_trainer import TraceEmbedTrainer

TEXTS = ["movies tagged pixar", "Heat (1995). Genres: Crime, Thriller. Decade: 1990s. Tags: heist."]


@pytest.fixture
def exported(trace_model_path, trace_args, trace_task, tmp_path):
    dataset = Dataset.from_list(trace_task.train_rows(hard_negative=False)[:8])
    encoder = TraceEmbedTrainer(trace_model_path, args=trace_args(), train_dataset=dataset).encoder()
    encoder.model.eval()
    expected = {kind: encoder.encode(TEXTS, kind=kind, mode="direct") for kind in ("query", "candidate")}
    path = export_sentence_transformers(encoder, tmp_path / "st")
    return path, encoder, expected


def test_export_layout_and_embeddings_without_sentence_transformers(exported):
    path, encoder, expected = exported
    modules = json.loads((path / "modules.json").read_text())
    assert [m["type"].rsplit(".", 1)[-1] for m in modules] == ["Transformer", "Pooling", "Normalize"]
    pooling = json.loads((path / "1_Pooling" / "config.json").read_text())
    assert pooling["pooling_mode_lasttoken"] and not pooling["pooling_mode_mean_tokens"]
    prompts = json.loads((path / "config_sentence_transformers.json").read_text())["prompts"]
    assert prompts == {"query": encoder.parts["query"].prefix, "document": encoder.parts["candidate"].prefix}

    # what sentence-transformers does: prompt + text, tokenizer (post-processor adds the suffix), last token, L2
    tokenizer, model = AutoTokenizer.from_pretrained(path), AutoModel.from_pretrained(path)
    assert tokenizer.padding_side == "left"
    for kind, prompt in (("query", prompts["query"]), ("candidate", prompts["document"])):
        batch = tokenizer([prompt + t for t in TEXTS], padding=True, return_tensors="pt")
        assert tokenizer.decode(batch["input_ids"][0], skip_special_tokens=False).endswith(encoder.parts[kind].suffix)
        with torch.no_grad():
            hidden = model(**batch).last_hidden_state[:, -1]
        torch.testing.assert_close(torch.nn.functional.normalize(hidden, dim=-1), expected[kind], atol=1e-5, rtol=1e-4)


def test_sentence_transformers_loads_the_export(exported):
    st = pytest.importorskip("sentence_transformers")
    path, _, expected = exported
    model = st.SentenceTransformer(str(path), device="cpu")
    for kind, prompt_name in (("query", "query"), ("candidate", "document")):
        got = model.encode(TEXTS, prompt_name=prompt_name, convert_to_tensor=True)
        torch.testing.assert_close(got, expected[kind], atol=1e-5, rtol=1e-4)


def test_trace_encoder_on_the_export_restores_routed_mode(exported, trace_task):
    from trl_mars.embed.encoder import TraceEncoder

    path, encoder, _ = exported
    texts = [q.text for q in trace_task.eval[:6]]
    want = {mode: encoder.encode_with_details(texts, mode=mode) for mode in ("routed", "cot")}
    reloaded = TraceEncoder.from_pretrained(path)
    assert reloaded.settings == encoder.settings
    for mode, expected in want.items():
        got = reloaded.encode_with_details(texts, mode=mode)
        assert got.reasoning == expected.reasoning and got.reasoned == expected.reasoned
        torch.testing.assert_close(got.embeddings, expected.embeddings, atol=1e-5, rtol=1e-4)
