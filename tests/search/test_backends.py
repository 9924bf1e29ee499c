"""The transformers backend: sampling log-probs equal a forward pass, finished rows stream out exactly once."""

import pytest
import torch
import torch.distributed as dist
from transformers import AutoModelForCausalLM, AutoTokenizer

from trl_mars.search import SamplingConfig, TransformersBackend

PROMPTS = [[{"role": "user", "content": "hi"}], [{"role": "user", "content": "Write add_3 please, in Python."}]]


@pytest.fixture(scope="module")
def model_and_tokenizer(tiny_qwen2_path):
    return AutoModelForCausalLM.from_pretrained(tiny_qwen2_path), AutoTokenizer.from_pretrained(tiny_qwen2_path)


@pytest.mark.parametrize(("temperature", "top_k"), [(0.7, 0), (1.0, 50), (0.0, 0)])
def test_logprobs_are_those_of_the_sampling_distribution(model_and_tokenizer, temperature, top_k):
    model, tok = model_and_tokenizer
    backend = TransformersBackend(model, tok, SamplingConfig(max_new_tokens=12, temperature=temperature, top_k=top_k))
    torch.manual_seed(0)
    for gen in backend.generate(PROMPTS):
        assert len(gen.logprobs) == len(gen.completion_ids) > 0
        ids = torch.tensor([gen.prompt_ids + gen.completion_ids])
        logits = model(ids).logits[0, len(gen.prompt_ids) - 1 : -1].float() / (temperature or 1.0)
        if top_k:
            kth = torch.topk(logits, top_k, dim=-1).values[:, -1:]
            logits = logits.masked_fill(logits < kth, float("-inf"))
        expected = torch.log_softmax(logits, -1).gather(-1, torch.tensor(gen.completion_ids)[:, None]).squeeze(-1)
        torch.testing.assert_close(torch.tensor(gen.logprobs), expected, atol=1e-4, rtol=1e-4)


def test_finished_rows_stream_once_with_their_final_text(model_and_tokenizer):
    model, tok = model_and_tokenizer
    backend = TransformersBackend(model, tok, SamplingConfig(max_new_tokens=20), max_batch_size=3)
    seen: list[tuple[int, str]] = []
    torch.manual_seed(1)
    gens = backend.generate(PROMPTS * 3, on_text=lambda i, text: seen.append((i, text)))
    assert sorted(i for i, _ in seen) == list(range(6))  # every row exactly once, across micro-batches
    assert dict(seen) == {i: g.text for i, g in enumerate(gens)}
    for gen in gens:
        assert tok.eos_token_id not in gen.completion_ids[:-1]  # cut at the first EOS


@pytest.mark.parametrize("synced_gpus", [None, True])
def test_synced_gpus_reaches_generate(model_and_tokenizer, monkeypatch, tmp_path, synced_gpus):
    """Sharded models (FSDP, lockstep search) need ``synced_gpus=True`` in ``generate``; None leaves it to it."""
    model, tok = model_and_tokenizer
    seen = []
    generate = model.generate
    monkeypatch.setattr(model, "generate", lambda **kw: seen.append(kw["synced_gpus"]) or generate(**kw))
    batching = "lockstep" if synced_gpus is None else None  # None: lockstep is what synced_gpus=True gets
    backend = TransformersBackend(
        model, tok, SamplingConfig(max_new_tokens=3), synced_gpus=synced_gpus, batching=batching
    )
    assert backend.batching == "lockstep"
    dist.init_process_group("gloo", init_method=f"file://{tmp_path}/rendezvous", rank=0, world_size=1)
    try:  # synced generation all-reduces its "finished" flag every token
        (out,) = backend.generate([[{"role": "user", "content": "hi"}]])
    finally:
        dist.destroy_process_group()
    assert seen == [synced_gpus] and out.completion_ids
    with pytest.raises(ValueError, match="max_batch_size"):
        TransformersBackend(model, tok, max_batch_size=2, synced_gpus=True)


def test_the_models_own_generation_config_does_not_apply(tiny_qwen2_path):
    """A checkpoint's ``generation_config`` (here a repetition penalty and a suppressed token) must not change what
    is sampled: the recorded log-probs are those of a plain forward pass at the configured temperature. Before the
    fix, ``generate`` applied the model's penalty and the log-probs (and so TIS weights) came from that
    distribution."""
    model, tok = AutoModelForCausalLM.from_pretrained(tiny_qwen2_path), AutoTokenizer.from_pretrained(tiny_qwen2_path)
    with torch.no_grad():  # a sharper random model, so the penalty moves log-probs far beyond round-off
        model.model.embed_tokens.weight.mul_(50)
    model.generation_config.repetition_penalty = 5.0
    model.generation_config.no_repeat_ngram_size = 1
    own = model.generation_config
    backend = TransformersBackend(model, tok, SamplingConfig(max_new_tokens=16, temperature=0.7))
    torch.manual_seed(0)
    gens = backend.generate(PROMPTS)
    assert model.generation_config is own and own.repetition_penalty == 5.0  # restored after generating
    repeated = 0
    for gen in gens:
        ids = torch.tensor([gen.prompt_ids + gen.completion_ids])
        logits = model(ids).logits[0, len(gen.prompt_ids) - 1 : -1].float() / 0.7
        expected = torch.log_softmax(logits, -1).gather(-1, torch.tensor(gen.completion_ids)[:, None]).squeeze(-1)
        torch.testing.assert_close(torch.tensor(gen.logprobs), expected, atol=1e-4, rtol=1e-4)
        seen = set(gen.prompt_ids)
        for t in gen.completion_ids:
            repeated += t in seen
            seen.add(t)
    assert repeated > 0  # tokens no_repeat_ngram_size=1 would have banned were sampled
