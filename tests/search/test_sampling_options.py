"""``repetition_penalty``, ``min_p`` and ``generation_kwargs`` (GRPOConfig's sampling fields) reach both backends,
and the transformers backend records the log-probs of the distribution they define."""

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from trl_mars.search import SamplingConfig, TransformersBackend
from trl_mars.search.backends import VLLMServerBackend

PROMPTS = [[{"role": "user", "content": "hi"}], [{"role": "user", "content": "Write add_3 please, in Python."}]]


@pytest.fixture(scope="module")
def model_and_tokenizer(tiny_qwen2_path):
    return AutoModelForCausalLM.from_pretrained(tiny_qwen2_path), AutoTokenizer.from_pretrained(tiny_qwen2_path)


def expected_logprobs(model, prompt_ids, completion_ids, penalty: float, min_p: float | None) -> torch.Tensor:
    """By hand: logits of each step, divided (x if negative) by ``penalty`` for every token of the prompt and of
    the completion so far, then min-p filtering, then log-softmax at the sampled token."""
    ids = torch.tensor([prompt_ids + completion_ids])
    logits = model(ids).logits[0, len(prompt_ids) - 1 : -1].float()
    out = []
    for t, row in enumerate(logits):
        seen = torch.tensor(sorted(set(prompt_ids + completion_ids[:t])))
        row = row.clone()
        row[seen] = torch.where(row[seen] < 0, row[seen] * penalty, row[seen] / penalty)
        if min_p:
            probs = row.softmax(-1)
            row = row.masked_fill(probs < min_p * probs.max(), float("-inf"))
        out.append(torch.log_softmax(row, -1)[completion_ids[t]])
    return torch.stack(out)


@pytest.mark.parametrize(("penalty", "min_p"), [(1.8, None), (1.0, 0.7), (1.3, 0.6)])
def test_logprobs_follow_the_penalised_distribution(model_and_tokenizer, penalty, min_p):
    model, tok = model_and_tokenizer
    sampling = SamplingConfig(max_new_tokens=10, repetition_penalty=penalty, min_p=min_p)
    torch.manual_seed(0)
    gens = TransformersBackend(model, tok, sampling).generate(PROMPTS)  # two prompts: the short one is padded
    for gen in gens:
        expected = expected_logprobs(model, gen.prompt_ids, gen.completion_ids, penalty, min_p)
        torch.testing.assert_close(torch.tensor(gen.logprobs), expected, atol=1e-4, rtol=1e-4)
    plain = expected_logprobs(model, gens[1].prompt_ids, gens[1].completion_ids, 1.0, None)
    assert not torch.allclose(plain, torch.tensor(gens[1].logprobs), atol=1e-3)  # the options did change it


def test_generation_kwargs_reach_generate(model_and_tokenizer, monkeypatch):
    model, tok = model_and_tokenizer
    seen = []
    generate = model.generate
    monkeypatch.setattr(model, "generate", lambda **kw: seen.append(kw) or generate(**kw))
    sampling = SamplingConfig(max_new_tokens=12, generation_kwargs={"no_repeat_ngram_size": 1})
    torch.manual_seed(0)
    (gen,) = TransformersBackend(model, tok, sampling).generate(PROMPTS[:1])
    assert seen[0]["no_repeat_ngram_size"] == 1
    assert len(set(gen.completion_ids)) == len(gen.completion_ids)  # no token twice


def test_vllm_backend_sends_the_options(tiny_tokenizer):
    calls = []

    class Client:
        def chat(self, messages, **kwargs):
            calls.append(kwargs)
            return {"prompt_ids": [[1]], "completion_ids": [[2]], "logprobs": [[[-0.5]]]}

    sampling = SamplingConfig(
        max_new_tokens=8, repetition_penalty=1.2, min_p=0.1, min_new_tokens=2, generation_kwargs={"seed": 3}
    )
    VLLMServerBackend(Client(), tiny_tokenizer, sampling).generate(PROMPTS[:1])
    (kw,) = calls
    assert (kw["repetition_penalty"], kw["min_p"], kw["max_tokens"]) == (1.2, 0.1, 8)
    assert kw["generation_kwargs"] == {"min_tokens": 2, "seed": 3}


def test_bad_values_are_refused():
    with pytest.raises(ValueError, match="repetition_penalty"):
        SamplingConfig(repetition_penalty=0.0)
    with pytest.raises(ValueError, match="min_p"):
        SamplingConfig(min_p=1.5)
