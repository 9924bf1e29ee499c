"""Refill generation (``TransformersBackend(batching="refill")``): greedy answers equal lockstep ``generate``'s,
finished rows leave the batch at once and pending prompts take their slots (forward rows counted), sampled
log-probs are those of the warped distribution, and settings the path cannot honour are refused by name."""

from __future__ import annotations

import collections

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from trl_mars.search import SamplingConfig, TransformersBackend

PROMPTS = [[{"role": "user", "content": f"Write function number {i} " + "please " * (i % 5)}] for i in range(10)]
GREEDY = SamplingConfig(max_new_tokens=24, temperature=0.0, repetition_penalty=2.0)


def model_with_varied_eos(path: str):
    """The tiny random model, its tokenizer's EOS set to a token its greedy answers reach at different steps (so
    rows finish at different times, as a trained model's do)."""
    model, tok = AutoModelForCausalLM.from_pretrained(path), AutoTokenizer.from_pretrained(path)
    first: dict[int, list[int]] = collections.defaultdict(list)
    for gen in TransformersBackend(model, tok, GREEDY).generate(PROMPTS):
        for token, pos in {t: p for p, t in reversed(list(enumerate(gen.completion_ids)))}.items():
            first[token].append(pos)
    tok.eos_token = tok.convert_ids_to_tokens(max(first, key=lambda t: (len(set(first[t])), len(first[t]))))
    return model, tok


@pytest.fixture(scope="module", params=["qwen2", "llama"])
def model_and_tokenizer(request, tiny_qwen2_path, tiny_llama_path):
    return model_with_varied_eos({"qwen2": tiny_qwen2_path, "llama": tiny_llama_path}[request.param])


def forward_rows(model) -> tuple[list[int], object]:
    rows: list[int] = []
    hook = model.register_forward_pre_hook(lambda m, a, kw: rows.append(kw["input_ids"].shape[0]), with_kwargs=True)
    return rows, hook


@pytest.mark.parametrize("slots", [None, 3])
@pytest.mark.parametrize("min_new_tokens", [0, 8])
def test_greedy_answers_equal_lockstep_generate(model_and_tokenizer, slots, min_new_tokens):
    model, tok = model_and_tokenizer
    sampling = SamplingConfig(**{**GREEDY.__dict__, "min_new_tokens": min_new_tokens})
    lockstep = TransformersBackend(model, tok, sampling, max_batch_size=slots).generate(PROMPTS)
    streamed: list[tuple[int, str]] = []
    rows, hook = forward_rows(model)
    refill = TransformersBackend(model, tok, sampling, max_batch_size=slots, batching="refill").generate(
        PROMPTS, on_text=lambda i, text: streamed.append((i, text))
    )
    hook.remove()
    lengths = [len(g.completion_ids) for g in lockstep]
    assert len(set(lengths)) >= 4 and min(lengths) >= min_new_tokens  # rows finish at different steps
    assert [g.completion_ids for g in refill] == [g.completion_ids for g in lockstep]
    assert [g.text for g in refill] == [g.text for g in lockstep] and [g.prompt_ids for g in refill] == [
        g.prompt_ids for g in lockstep
    ]
    for a, b in zip(refill, lockstep):
        torch.testing.assert_close(torch.tensor(a.logprobs), torch.tensor(b.logprobs), atol=1e-4, rtol=0)
    assert sorted(streamed) == sorted((i, g.text) for i, g in enumerate(refill))  # each row once, when final
    # a row's first token comes from its prefill, each later one from one decode row: nothing rides finished
    prefill_rows = len(PROMPTS)
    assert sum(rows) == prefill_rows + sum(n - 1 for n in lengths)
    assert max(rows) <= (slots or len(PROMPTS))


def test_pending_prompts_take_freed_slots_at_once(model_and_tokenizer):
    """Two slots, ten prompts: a prompt enters at the step after a row ends (FIFO), so request i (n_i tokens) admitted
    at step a_i finishes at step a_i + n_i - 1; the rows stream out in the order of those steps."""
    model, tok = model_and_tokenizer
    finished: list[int] = []
    rows, hook = forward_rows(model)
    gens = TransformersBackend(model, tok, GREEDY, max_batch_size=2, batching="refill").generate(
        PROMPTS, on_text=lambda i, text: finished.append(i)
    )
    hook.remove()
    free_at, finish = [0, 0], []
    for gen in gens:
        slot = min(range(2), key=lambda s: free_at[s])
        finish.append(free_at[slot] + len(gen.completion_ids) - 1)
        free_at[slot] += len(gen.completion_ids)
    assert sorted(finished) == list(range(len(PROMPTS)))
    assert [finish[i] for i in finished] == sorted(finish)
    assert max(rows) == 2


@pytest.mark.parametrize(
    "sampling",
    [
        SamplingConfig(12, 0.7),
        SamplingConfig(12, 1.0, top_k=50),
        SamplingConfig(12, 1.0, top_p=0.9, repetition_penalty=1.3),
    ],  # fmt: skip
)
def test_sampled_logprobs_are_those_of_the_warped_distribution(tiny_qwen2_path, sampling):
    from trl_mars.search.backends import warp_scores

    model, tok = AutoModelForCausalLM.from_pretrained(tiny_qwen2_path), AutoTokenizer.from_pretrained(tiny_qwen2_path)
    torch.manual_seed(0)
    for gen in TransformersBackend(model, tok, sampling, max_batch_size=2, batching="refill").generate(PROMPTS[:4]):
        assert len(gen.logprobs) == len(gen.completion_ids) > 0
        ids = torch.tensor([gen.prompt_ids + gen.completion_ids])
        logits = model(ids).logits[0, len(gen.prompt_ids) - 1 : -1].float()
        seen = torch.stack([torch.isin(torch.arange(logits.shape[-1]), ids[0, : len(gen.prompt_ids) + t])
                            for t in range(len(gen.completion_ids))])  # fmt: skip
        scores = warp_scores(sampling, logits, seen)
        expected = torch.log_softmax(scores, -1).gather(-1, torch.tensor(gen.completion_ids)[:, None]).squeeze(-1)
        torch.testing.assert_close(torch.tensor(gen.logprobs), expected, atol=1e-4, rtol=1e-4)


def test_settings_refill_cannot_honour_are_refused(tiny_qwen2_path):
    tok = AutoTokenizer.from_pretrained(tiny_qwen2_path)
    with pytest.raises(ValueError, match="batching must be one of"):
        TransformersBackend(None, tok, batching="paged")
    with pytest.raises(ValueError, match=r"generation_kwargs \['num_beams'\]"):
        TransformersBackend(None, tok, SamplingConfig(generation_kwargs={"num_beams": 2}), batching="refill")
    with pytest.raises(ValueError, match="synced_gpus"):
        TransformersBackend(None, tok, batching="refill", synced_gpus=True)


def test_the_default_is_refill_unless_generate_must_run(tiny_qwen2_path):
    from trl_mars.search.backends import DEFAULT_BATCHING

    tok = AutoTokenizer.from_pretrained(tiny_qwen2_path)
    assert DEFAULT_BATCHING == "refill" and TransformersBackend(None, tok).batching == "refill"
    kwargs = SamplingConfig(generation_kwargs={"no_repeat_ngram_size": 2})
    assert TransformersBackend(None, tok, kwargs).batching == "lockstep"
    assert TransformersBackend(None, tok, synced_gpus=True).batching == "lockstep"
    assert TransformersBackend(None, tok, batching="lockstep").batching == "lockstep"


@pytest.mark.parametrize(
    "fields, match",
    [
        ({"generation_batching": "paged"}, r"MultiAgentTreeConfig\.generation_batching has an invalid value: 'paged'"),
        (
            {"generation_batching": "refill", "generation_kwargs": {"no_repeat_ngram_size": 2}},
            r"generation_batching='refill' cannot pass generation_kwargs \['no_repeat_ngram_size'\]",
        ),
    ],
)
def test_config_field_is_checked_by_name(tmp_path, fields, match):
    from trl_mars.trainers.mars2_config import MultiAgentTreeConfig

    with pytest.raises(ValueError, match=match):
        MultiAgentTreeConfig(output_dir=str(tmp_path), use_cpu=True, report_to="none", **fields)
    ok = MultiAgentTreeConfig(output_dir=str(tmp_path), use_cpu=True, generation_kwargs={"no_repeat_ngram_size": 2})
    assert ok.generation_batching is None


@pytest.mark.parametrize("batching, expected", [(None, "refill"), ("lockstep", "lockstep")])
def test_the_trainer_generates_as_configured(tmp_path, tiny_qwen2_path, monkeypatch, batching, expected):
    import sys
    from pathlib import Path

    from trl_mars.data.code_tasks import code_task_splits
    from trl_mars.trainers.mars2_trainer import MultiAgentTreeTrainer

    sys.path.insert(0, str(Path(__file__).parents[1] / "trainers"))
    from mars2_helpers import tiny_mars2_config

    seen = []
    generate = TransformersBackend.generate
    monkeypatch.setattr(TransformersBackend, "generate", lambda self, *a, **k: seen.append(self.batching) or generate(self, *a, **k))  # fmt: skip
    train, _ = code_task_splits(2, 0, seed=0)
    args = tiny_mars2_config(tmp_path, [{"name": "solo", "model": tiny_qwen2_path}], generation_batching=batching)
    trainer = MultiAgentTreeTrainer(args=args, train_dataset=train)
    try:
        trees = trainer.run_search(trainer.problems(list(train)))
    finally:
        trainer.sandbox.close()
    assert [len(t) for t in trees] == [2, 2] and seen and set(seen) == {expected}


def test_trl_mars_search_passes_batching(tmp_path, monkeypatch):
    from trl_mars.search import ScriptedBackend
    from trl_mars.search import cli as search_cli

    calls = []

    def load(models, sampling, max_batch_size, chat_template_kwargs, servers, batching):
        calls.append(batching)
        return {name: ScriptedBackend(lambda m: "```python\nx = 1\n```") for name in models}

    monkeypatch.setattr(search_cli, "load_backends", load)
    argv = ["--model", "a=x", "--benchmark", "embedded", "--num-problems", "1", "--max-nodes", "1", "--quiet"]
    for extra in ([], ["--batching", "lockstep"]):
        assert search_cli.main([*argv, *extra, "--output", str(tmp_path / str(len(calls)))]) == 0
    assert calls == ["refill", "lockstep"]
    with pytest.raises(SystemExit):
        search_cli.build_parser().parse_args([*argv, "--batching", "paged", "--output", str(tmp_path)])


def test_a_cache_that_cannot_be_refilled_falls_back_to_generate(tiny_cache):
    """A sliding-window cache keeps only the last tokens of each row: rows cannot be joined. batching=None then
    generates with ``generate`` (same answers); an explicit 'refill' says why it cannot."""
    from trl_mars.search.refill import RefillUnsupported
    from trl_mars.testing import tiny_model_path

    path = tiny_model_path(
        "qwen2", cache_dir=tiny_cache, use_sliding_window=True, sliding_window=8, max_window_layers=0
    )
    model, tok = AutoModelForCausalLM.from_pretrained(path), AutoTokenizer.from_pretrained(path)
    auto = TransformersBackend(model, tok, GREEDY)
    assert auto.batching == "refill"
    assert [g.completion_ids for g in auto.generate(PROMPTS[:3])] == [
        g.completion_ids for g in TransformersBackend(model, tok, GREEDY, batching="lockstep").generate(PROMPTS[:3])
    ]
    assert auto.batching == "lockstep"
    with pytest.raises(RefillUnsupported, match="DynamicSlidingWindowLayer|sliding"):
        TransformersBackend(model, tok, GREEDY, batching="refill").generate(PROMPTS[:3])
