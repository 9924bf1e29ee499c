"""Preset fidelity and fixes that need a trainer: preset loss settings, the per-step role under gradient
accumulation, encoders on the trainer's device, token truncation of documents, WIST's expansion rounds, dropping
groups with no valid question, and the linear-time JSON scan."""

import json
import time

import pytest

from trl_mars.selfplay.corpus import LocalCorpus
from trl_mars.selfplay.questions import parse_json_question
from trl_mars.trainers import selfplay_trainer
from trl_mars.trainers.selfplay_config import SelfPlayConfig, default_skill_encoder
from trl_mars.trainers.selfplay_trainer import SelfPlayTrainer

BASE = dict(max_steps=1, report_to="none", per_device_train_batch_size=4, num_generations=2)


def test_presets_set_their_loss_settings(tmp_path):
    """Bug: only the YAML set WIST's loss (dr_grpo, no std scaling, beta 0); the preset left TRL's dapo."""
    wist = SelfPlayConfig(output_dir=str(tmp_path), preset="wist", **BASE)
    assert (wist.loss_type, wist.scale_rewards, wist.beta, wist.epsilon) == ("dr_grpo", "none", 0.0, 0.2)
    assert wist.require_answer_in_document is False and wist.floor_challenger_reward is False
    rzero = SelfPlayConfig(output_dir=str(tmp_path), preset="rzero", **BASE)
    assert (rzero.loss_type, rzero.scale_rewards, rzero.beta, rzero.floor_challenger_reward) == (
        "grpo",
        "group",
        0.01,
        True,
    )
    rdiverse = SelfPlayConfig(output_dir=str(tmp_path), preset="rdiverse", **BASE)
    assert rdiverse.floor_challenger_reward is False  # R_unc - a P_rep - b P_MAP (eq. 11)
    assert rdiverse.skill_encoder == "minilm"  # CPU; the paper's code abstraction on a GPU (below)
    mine = SelfPlayConfig(output_dir=str(tmp_path), preset="wist", loss_type="grpo", beta=0.04, **BASE)
    assert (mine.loss_type, mine.beta) == ("grpo", 0.04)  # explicit values win
    assert (
        default_skill_encoder("rdiverse", gpu=True) == "code" and default_skill_encoder("rzero", gpu=True) == "minilm"
    )
    code = SelfPlayConfig(output_dir=str(tmp_path), preset="rdiverse", skill_encoder="code", **BASE)
    assert (code.skill_coder_model, code.skill_code_embedder) == (
        "Qwen/Qwen2.5-Coder-7B-Instruct",
        "jinaai/jina-code-embeddings-1.5b",
    )


def test_separate_roles_accept_generation_batches_within_one_optimizer_step(tmp_path):
    """Bug: steps_per_generation > 1 spanned optimizer steps and the role was decided once per generation batch
    (only the Challenger trained). A generation batch within one optimizer step is fine."""
    kw = dict(BASE, output_dir=str(tmp_path), preset="rzero", gradient_accumulation_steps=2)
    assert SelfPlayConfig(**kw, steps_per_generation=2).steps_per_generation == 2
    assert SelfPlayConfig(**kw, steps_per_generation=1).gradient_accumulation_steps == 2
    with pytest.raises(ValueError, match=r"steps_per_generation \* num_iterations \(4 \* 1\).*gradient_accumulation"):
        SelfPlayConfig(**kw, steps_per_generation=4)
    assert SelfPlayConfig(**{**kw, "preset": "wist"}, steps_per_generation=4).roles == "shared"  # one merged update


def test_skill_encoder_is_built_on_the_trainers_device(tmp_path, tiny_qwen2_path, monkeypatch):
    """Bug: the code-abstraction encoder's coder was loaded with no device (CPU under a GPU trainer)."""
    calls = []

    def fake_build(*args, **kwargs):
        calls.append(kwargs.get("device"))
        from trl_mars.selfplay.encoders import HashingEncoder

        return HashingEncoder()

    monkeypatch.setattr(selfplay_trainer, "build_skill_encoder", fake_build)
    args = SelfPlayConfig(
        output_dir=str(tmp_path), preset="rdiverse", skill_encoder="code", steps_per_iteration=2, challenger_steps=1,
        **BASE,
    )  # fmt: skip
    from peft import LoraConfig

    trainer = SelfPlayTrainer(tiny_qwen2_path, args=args, peft_config=LoraConfig(r=2, task_type="CAUSAL_LM"))
    assert calls == [trainer.accelerator.device]


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.gpu)])
def test_code_encoder_models_follow_the_device(device, tiny_qwen2_path):
    import torch

    if device == "cuda" and not torch.cuda.is_available():
        pytest.skip("needs a CUDA device")
    from trl_mars.selfplay.encoders import build_skill_encoder

    enc = build_skill_encoder("code", tiny_qwen2_path, tiny_qwen2_path, device=device)
    assert enc.embedder.model.device.type == device
    # the coder generates on the same device; an empty abstraction (a random coder) embeds the question instead
    assert enc.encode(["What is 2+3?", "What is 3+4?"]).shape == (2, 64)


@pytest.fixture(scope="module")
def wist_corpus():
    from trl_mars.data.movielens import load_movielens
    from trl_mars.selfplay.movielens_corpus import build_movielens_documents

    return LocalCorpus(build_movielens_documents(load_movielens(), max_movies=20))


def test_wist_expansion_rounds_truncation_and_dropped_groups(tmp_path, tiny_qwen2_path, wist_corpus):
    """Expansion loops until the level cap or 3 rounds without a new child (was: one round, at most 3 children);
    documents are truncated by tokens (was: 4000 characters); a group with no valid question updates no posterior
    (was: g = 0)."""
    args = SelfPlayConfig(
        output_dir=str(tmp_path), preset="wist", tree_num_proposals=2, document_max_tokens=12,
        tree_corpus_fallback=False, max_completion_length=16, **BASE,
    )  # fmt: skip
    rounds = iter([["A", "A"], ["B", "B"], ["?", "?"], ["C", "C"], ["D", "D"], ["E", "E"], ["F", "F"]])

    class Scripted(SelfPlayTrainer):
        def sample_texts(self, messages, n, role, temperature=None, max_new_tokens=None, greedy=False):
            if messages and "topic tree" in messages[0][-1]["content"]:
                return [[f"[Proposition Start]Topic {x}[Proposition End]" for x in next(rounds, ["?", "?"])]]
            return super().sample_texts(messages, n, role, temperature, max_new_tokens, greedy)

    trainer = Scripted(tiny_qwen2_path, args=args, corpus=wist_corpus)
    movies = 1
    new = trainer.expand_node(movies)  # level 2: cap 4 -> rounds A, B, (none), C, D
    assert [trainer.tree.nodes[c].name for c in new] == ["topic a", "topic b", "topic c", "topic d"]
    assert trainer.counters["policy_children"] == 4 and trainer.counters.get("corpus_fallback_children", 0) == 0
    rounds = iter([["?", "?"]] * 3 + [["G", "G"]])
    assert trainer.expand_node(movies) == []  # 3 rounds with no valid label: stop (fallback off)
    assert next(rounds) == ["G", "G"]  # the 4th round was never sampled
    text = " ".join(f"word{i}" for i in range(100))
    instruction = [{"role": "user", "content": "Ask about: Movies"}]
    assert trainer.document_token_budget(instruction) == 12  # the tiny model's 2048 positions leave room for 12
    short = trainer.truncate_document(text, 12)
    assert len(trainer.processing_class(short, add_special_tokens=False)["input_ids"]) <= 12
    assert text.startswith(short.strip()) and len(short) < len(text)
    assert trainer.truncate_document("a short text", 12) == "a short text"
    # a long page never overflows the model's context: the budget is C - instruction - max_completion_length
    trainer.args.document_max_tokens = 5792
    tokenizer = trainer.processing_class
    prompt = tokenizer.apply_chat_template(instruction, tokenize=False, add_generation_prompt=True)
    used = len(tokenizer(prompt, add_special_tokens=False)["input_ids"]) + args.max_completion_length
    assert trainer.document_token_budget(instruction) == 2048 - used
    # a Challenger round whose questions are all invalid (random model) leaves every posterior untouched
    trainer._challenger_round(1)
    assert trainer.counters["invalid_questions"] == args.num_generations
    assert all(not n.window and n.alpha == n.beta == 1.0 for n in trainer.tree.nodes)


def test_json_scan_is_linear():
    """Bug: 11.6 s for one 16k-character Challenger output with no valid JSON (quadratic rfind scan)."""
    cases = ['{"a": 1 ' + "{ x } " * 2700, "{" * 16_000, "{ ] " * 4000, "}" * 16_000, '"{' * 8000]
    start = time.perf_counter()
    for text in cases:
        assert parse_json_question(text).error == "no JSON object"
    assert time.perf_counter() - start < 1.0
    good = json.dumps(
        {"question": "In which year was the crime film Heat released in cinemas?", "correct_answer": 1995}
    )
    assert parse_json_question("{not json} " + good + " {}").answer == "1995"  # first object that parses
    assert (
        parse_json_question('```json\n{"question": "x}{", "correct_answer": "1"}\n```', min_chars=1).question == "x}{"
    )


def test_both_adapters_enter_the_optimizer_after_an_evaluation(tmp_path, tiny_qwen2_path):
    """Bug: a held-out evaluation before training activated the Solver adapter (freezing the Challenger's), so the
    optimizer was built without the Challenger adapter and the Challenger never learned."""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).parent))
    from selfplay_runs import build_trainer, trainable_report

    trainer = build_trainer(tmp_path, "rdiverse", tiny_qwen2_path, max_steps=1, save_strategy="no")
    trainer.evaluate_heldout([("In which year was the film Heat released?", "1995")])
    before = {n: p.detach().clone() for n, p in trainer.model.named_parameters() if "lora_B.challenger" in n}
    trainer.train()  # step 1 trains the Challenger (scripted rewards give non-zero advantages)
    report = trainable_report(trainer)
    assert report["challenger"]["in_optimizer"] == report["default"]["in_optimizer"] == len(before) * 2
    after = dict(trainer.model.named_parameters())
    assert any(not after[n].detach().equal(v) for n, v in before.items())  # the Challenger adapter moved


def test_wist_oversamples_candidates_keeps_the_ratio_and_bounds_retries(
    tmp_path, tiny_qwen2_path, wist_corpus, monkeypatch
):
    """WIST samples C = 2G Challenger candidates per group and keeps G with the valid:invalid ratio; a group with no
    valid candidate is sampled again at most ``challenger_max_retries`` times, then dropped (was: G candidates, no
    oversampling, no retries). Generation is scripted: group 0 gets 6 valid of 8, group 1 none, ever."""
    from trl import GRPOTrainer

    from trl_mars.selfplay.questions import ParsedQuestion

    args = SelfPlayConfig(
        output_dir=str(tmp_path), preset="wist", challenger_max_retries=2, tree_num_proposals=2,
        max_completion_length=8, **{**BASE, "num_generations": 4, "per_device_train_batch_size": 8},
        num_solver_samples=2,
    )  # fmt: skip
    assert (args.challenger_oversample, SelfPlayConfig(output_dir=str(tmp_path), preset="wist", **BASE)
            .challenger_max_retries) == (2, 4)  # fmt: skip
    rows_per_call = []

    class Scripted(SelfPlayTrainer):
        def parse_question(self, text, context):  # "ok ..." is a valid question, anything else invalid
            if text.startswith("ok"):
                return ParsedQuestion(f"In which year was the film number {text} released?", "1995")
            return ParsedQuestion(error="scripted invalid")

    trainer = Scripted(tiny_qwen2_path, args=args, corpus=wist_corpus)
    tok = trainer.processing_class

    def scripted_generate(self, prompt_ids, images, multimodal_fields, num_generations, **kwargs):
        c = num_generations  # candidates per group
        call = len(rows_per_call)
        rows_per_call.append((len(prompt_ids), c))
        texts = []
        for group in range(len(prompt_ids) // c):
            valid = [4 * i < 3 * c for i in range(c)] if call == 0 and group == 0 else [False] * c
            texts += [f"{'ok' if v else 'no'} {call} {group} {i}" for i, v in enumerate(valid)]
        return [tok(t, add_special_tokens=False)["input_ids"] for t in texts], None

    monkeypatch.setattr(GRPOTrainer, "_generate_single_turn", scripted_generate)
    batch = trainer._challenger_round(2)
    assert rows_per_call == [(16, 8), (8, 8), (8, 8)]  # 2 groups x C = 8, then 2 bounded retries of group 1 alone
    texts = tok.batch_decode(batch["completion_ids"], skip_special_tokens=True)
    group0, group1 = texts[:4], texts[4:]
    assert sum(t.startswith("ok") for t in group0) == 3  # 4 * 6/8 = 3 valid kept, 1 invalid
    assert all(t.startswith("no 2 0") for t in group1)  # the last retry's candidates, all invalid
    assert (trainer.counters["challenger_retries"], trainer.counters["challenger_dropped_groups"]) == (2, 1)
    assert trainer.counters["invalid_questions"] == 1 + 4
    assert trainer._metrics["train"]["selfplay/challenger_candidates_valid_frac"] == [6 / 16]
    assert float(batch["advantages"][4:].abs().sum()) == 0.0  # the dropped group carries no gradient
    updated = [n for n in trainer.tree.nodes if n.window]
    assert updated and all(len(n.window) == 1 for n in updated)  # group 0's path only; group 1 updated nothing
    # no oversampling, no retries (R-Zero's settings): GRPO's own G candidates, unchanged
    rows_per_call.clear()
    trainer.args.challenger_oversample, trainer.args.challenger_max_retries = 1, 0
    batch = trainer._challenger_round(2)
    assert rows_per_call == [(8, 4)]  # G = 4 candidates per group, kept as they are; no retry of group 1
    texts = tok.batch_decode(batch["completion_ids"], skip_special_tokens=True)
    assert texts == [f"{'ok' if i < 3 else 'no'} 0 0 {i}" for i in range(4)] + [f"no 0 1 {i}" for i in range(4)]
    with pytest.raises(ValueError, match="challenger_oversample must be > 0"):
        SelfPlayConfig(output_dir=str(tmp_path), preset="wist", challenger_oversample=0, **BASE)
    with pytest.raises(ValueError, match="challenger_max_retries must be >= 0"):
        SelfPlayConfig(output_dir=str(tmp_path), preset="wist", challenger_max_retries=-1, **BASE)
