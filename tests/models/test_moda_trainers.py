"""MoDA models inside trl-mars: a converted checkpoint by path in our trainers and the search's backend.

MoDA is registered with the transformers Auto classes when `trl_mars.models.moda` is imported (as here); the
trainers load the model by path through those classes.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from trl_mars.models.moda import MoDAForCausalLM, convert_to_moda
from trl_mars.search import SamplingConfig, TransformersBackend

sys.path.insert(0, str(Path(__file__).parents[1] / "rerec"))
from rerec_scripted import scripted_config, scripted_trainer  # noqa: E402

PROMPTS = [[{"role": "user", "content": "hi"}], [{"role": "user", "content": "Write add_3 please, in Python."}]]


@pytest.fixture(scope="module")
def moda_model_path(tmp_path_factory, tiny_qwen2_path) -> str:
    """The tiny Qwen2 converted to MoDA (near identity, depth gates at 0) and saved with its tokenizer."""
    path = tmp_path_factory.mktemp("moda-agent")
    convert_to_moda(tiny_qwen2_path).save_pretrained(path)
    AutoTokenizer.from_pretrained(tiny_qwen2_path).save_pretrained(path)
    return str(path)


def test_search_backend_generates_with_moda_as_with_its_source(tiny_qwen2_path, moda_model_path):
    """Greedy generation through the search's transformers backend (left-padded batch, KV-cached decoding): the
    converted model gives its source's tokens and log-probs, since it computes the same function."""
    tok = AutoTokenizer.from_pretrained(tiny_qwen2_path)
    sampling = SamplingConfig(max_new_tokens=10, temperature=0.0)
    gens = {}
    for name, path in (("source", tiny_qwen2_path), ("moda", moda_model_path)):
        model = AutoModelForCausalLM.from_pretrained(path).eval()
        assert isinstance(model, MoDAForCausalLM) == (name == "moda")
        gens[name] = TransformersBackend(model, tok, sampling).generate(PROMPTS)
    for got, want in zip(gens["moda"], gens["source"]):
        assert got.completion_ids == want.completion_ids and len(got.completion_ids) > 0
        torch.testing.assert_close(torch.tensor(got.logprobs), torch.tensor(want.logprobs), atol=1e-4, rtol=1e-4)


def _rerec_run(tmp_path, model_path, name, resume=None):
    args = scripted_config(
        str(tmp_path / name), per_device_train_batch_size=8, max_steps=2, save_strategy="steps", save_steps=1,
        learning_rate=1e-2,
    )  # fmt: skip
    trainer, seen = scripted_trainer(model_path, args)
    trainer.train(resume_from_checkpoint=resume)
    return trainer, seen


def test_rerec_trains_saves_and_resumes_a_moda_model(tmp_path, moda_model_path):
    """ReasoningRecTrainer (scripted rollouts) on a MoDA path: the weights (depth gates included) move, the
    checkpoint is a MoDA model, and resuming from step 1 replays step 2's batch."""
    full, full_seen = _rerec_run(tmp_path, moda_model_path, "full")
    assert isinstance(full.model, MoDAForCausalLM)
    start = AutoModelForCausalLM.from_pretrained(moda_model_path)
    trained = dict(full.model.named_parameters())
    moved = [n for n, p in start.named_parameters() if not torch.equal(p, trained[n].detach().cpu())]
    assert moved and any(n.endswith("depth_gate") for n in moved)
    ckpt = tmp_path / "full" / "checkpoint-1"
    assert json.loads((ckpt / "config.json").read_text())["model_type"] == "moda"
    reloaded = AutoModelForCausalLM.from_pretrained(ckpt)
    assert isinstance(reloaded, MoDAForCausalLM) and reloaded.config.depth_gate

    resumed, resumed_seen = _rerec_run(tmp_path, moda_model_path, "resumed", resume=str(ckpt))
    assert resumed.state.global_step == 2 and len(resumed_seen) == 1
    assert resumed_seen[0]["completion_ids"] == full_seen[1]["completion_ids"]
    for a, b in zip(resumed_seen[0]["advantages"], full_seen[1]["advantages"]):
        torch.testing.assert_close(torch.tensor(a), torch.tensor(b))


def test_selfplay_trains_saves_and_resumes_a_moda_model(tmp_path, moda_model_path):
    """SelfPlayTrainer (WIST preset, sampled Challenger and Solver) on a MoDA path: trains, checkpoints a MoDA
    model, and a resumed run continues with the same tree paths and method state."""
    from trl_mars.data.movielens import load_movielens
    from trl_mars.selfplay.corpus import LocalCorpus
    from trl_mars.selfplay.movielens_corpus import build_movielens_documents
    from trl_mars.trainers.selfplay_config import SelfPlayConfig
    from trl_mars.trainers.selfplay_trainer import SelfPlayTrainer

    corpus = LocalCorpus(build_movielens_documents(load_movielens(), max_movies=40))

    def args(output_dir):
        return SelfPlayConfig(
            output_dir=str(output_dir), preset="wist", max_completion_length=8, num_generations=2,
            per_device_train_batch_size=4, num_solver_samples=3, learning_rate=1e-3, logging_steps=1,
            report_to="none", gradient_checkpointing=False, tree_num_proposals=2, steps_per_iteration=2,
            max_steps=3, save_steps=2,
        )  # fmt: skip

    full = SelfPlayTrainer(moda_model_path, args=args(tmp_path / "a"), corpus=corpus)
    assert isinstance(full.model, MoDAForCausalLM)
    full.train()
    checkpoint = tmp_path / "a" / "checkpoint-2"
    assert json.loads((checkpoint / "config.json").read_text())["model_type"] == "moda"
    resumed = SelfPlayTrainer(moda_model_path, args=args(tmp_path / "b"), corpus=corpus)
    resumed.train(resume_from_checkpoint=str(checkpoint))
    assert resumed.sampled_paths == full.sampled_paths[2:]
    assert resumed.method_state() == full.method_state()


def test_mars2_trains_saves_and_resumes_a_moda_agent(tmp_path, moda_model_path, monkeypatch):
    """MultiAgentTreeTrainer with one MoDA agent by path (dense letter-share verifier, so advantages are not 0):
    the agent's weights move, its checkpoint is a MoDA model, and a resumed run reaches the last step."""
    sys.path.insert(0, str(Path(__file__).parents[1] / "trainers"))
    from mars2_helpers import tiny_mars2_config
    from test_mars2_learns import LetterShare

    from trl_mars.data.code_tasks import code_task_splits
    from trl_mars.trainers.mars2_trainer import MultiAgentTreeTrainer

    monkeypatch.setattr("trl_mars.search.engine.extract_code", lambda text, entry_point=None: text)
    train, _ = code_task_splits(8, 0, seed=0)

    def run(max_steps, resume=None):
        args = tiny_mars2_config(
            tmp_path / "out", [{"name": "moda", "model": moda_model_path}], max_steps=max_steps, max_nodes=2,
            save_strategy="steps", save_steps=1, max_completion_length=8, shuffle_dataset=False,
        )  # fmt: skip
        trainer = MultiAgentTreeTrainer(args=args, train_dataset=train)
        trainer.search.verifier = LetterShare()
        try:
            trainer.train(resume_from_checkpoint=resume)
        finally:
            trainer.sandbox.close()
        return trainer

    first = run(1)
    model = first.model  # agent 0
    assert isinstance(model, MoDAForCausalLM)
    start = AutoModelForCausalLM.from_pretrained(moda_model_path)
    trained = dict(model.named_parameters())
    assert any(not torch.equal(p, trained[n].detach().cpu()) for n, p in start.named_parameters())
    configs = list((tmp_path / "out" / "checkpoint-1").rglob("config.json"))
    assert configs and all(json.loads(c.read_text())["model_type"] == "moda" for c in configs), configs
    resumed = run(2, resume=True)
    assert resumed.state.global_step == 2


def test_trace_embed_trains_and_saves_a_moda_model(tmp_path, tiny_cache, shared_data):
    """TraceEmbedTrainer on the tiny MovieLens model converted to MoDA (it reads the last hidden states as the
    embedding): every weight moves, and the saved model reloads as MoDA with the added <|emb|> token."""
    from datasets import Dataset

    from trl_mars.embed.movielens_task import build_movielens_retrieval_task
    from trl_mars.embed.tiny import TINY_TRACE_ARGS, tiny_movielens_model_path
    from trl_mars.trainers.trace_config import TraceConfig
    from trl_mars.trainers.trace_trainer import TraceEmbedTrainer

    source = tiny_movielens_model_path(cache_dir=tiny_cache)
    path = tmp_path / "moda-embed"
    convert_to_moda(source, near_identity=False).save_pretrained(path)
    AutoTokenizer.from_pretrained(source).save_pretrained(path)
    task = build_movielens_retrieval_task(path=shared_data / "movielens", num_movies=120, seed=0)
    train = Dataset.from_list(task.train_rows(hard_negative=True)[:16])
    args = TraceConfig(**{**TINY_TRACE_ARGS, "output_dir": str(tmp_path / "out"), "per_device_train_batch_size": 8,
                          "max_steps": 2, "learning_rate": 3e-3, "logging_steps": 1})  # fmt: skip
    trainer = TraceEmbedTrainer(str(path), args=args, train_dataset=train)
    assert isinstance(trainer.model, MoDAForCausalLM)
    before = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}
    trainer.train()
    assert all(not torch.equal(p, before[n]) for n, p in trainer.model.named_parameters())
    trainer.save_model(str(tmp_path / "saved"))
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path / "saved")
    assert isinstance(reloaded, MoDAForCausalLM)
    assert reloaded.get_input_embeddings().num_embeddings == len(trainer.processing_class)


@pytest.mark.parametrize(
    "module", ["mars2_trainer", "selfplay_trainer", "rerec_trainer", "trace_trainer"], ids=lambda m: m.split("_")[0]
)
def test_importing_a_trainer_registers_moda(module):
    """A fresh process that only imports a trainer (as a user's script does) loads MoDA checkpoints by path."""
    code = f"import trl_mars.trainers.{module}\nfrom transformers import AutoConfig\nprint(type(AutoConfig.for_model('moda')).__name__)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "MoDAConfig"
