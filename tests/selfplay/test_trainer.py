"""SelfPlayTrainer mechanics with the tiny model: tree growth, posteriors, checkpoint/resume, MAP, replay, errors.

A random tiny model writes unparseable questions, so these tests check mechanics, not quality. The R-Diverse test
scripts the Solver's answers and the question parser (test doubles for a trained model) to drive the memory bank.
"""

import json
from pathlib import Path

import pytest
from peft import LoraConfig

from trl_mars.data.movielens import load_movielens
from trl_mars.selfplay.corpus import LocalCorpus
from trl_mars.selfplay.movielens_corpus import build_movielens_documents
from trl_mars.selfplay.questions import ParsedQuestion
from trl_mars.trainers.selfplay_config import SelfPlayConfig
from trl_mars.trainers.selfplay_trainer import SelfPlayTrainer
from trl_mars.utils.checkpoint import STATE_DIR, damaged_file

TINY = dict(
    max_completion_length=8,
    num_generations=2,
    per_device_train_batch_size=4,
    num_solver_samples=3,
    learning_rate=1e-3,
    logging_steps=1,
    report_to="none",
    gradient_checkpointing=False,
)


@pytest.fixture(scope="module")
def movie_corpus():
    return LocalCorpus(build_movielens_documents(load_movielens(), max_movies=40))


def wist_args(output_dir, **overrides):
    kw = dict(TINY, preset="wist", tree_num_proposals=2, steps_per_iteration=2, max_steps=3, save_steps=2)
    return SelfPlayConfig(output_dir=str(output_dir), **{**kw, **overrides})


def test_wist_tree_grows_and_resume_continues_identically(tmp_path, tiny_qwen2_path, movie_corpus):
    full = SelfPlayTrainer(tiny_qwen2_path, args=wist_args(tmp_path / "a"), corpus=movie_corpus)
    assert len(full.tree.nodes) == 2 and full.tree.nodes[1].status == "ready"
    full.train()
    tree = full.tree
    assert len(tree.nodes) > 4 and full.counters["expansions"] > 0  # the tree grew
    # every question of the random model is invalid: WIST drops such groups from the tree update
    assert all(n.alpha == n.beta == 1.0 and not n.window for n in tree.nodes)
    assert len(full.sampled_paths) == 3  # one Challenger group per step
    logs = [row for row in full.state.log_history if "selfplay/tree_nodes" in row]
    assert [row["selfplay/challenger_reward"] for row in logs] == pytest.approx([-0.1] * 3)  # unparseable: WIST value
    assert logs[-1]["selfplay/tree_nodes"] > logs[0]["selfplay/tree_nodes"]
    checkpoint = tmp_path / "a" / "checkpoint-2"
    dumped = json.loads((checkpoint / "domain_tree.json").read_text())
    assert dumped["children"][0]["name"] == "Movies" and (checkpoint / "domain_tree.html").exists()
    assert damaged_file(checkpoint) is None  # the dump is in the checkpoint's checksummed files
    assert "domain_tree.html" in json.loads((checkpoint / STATE_DIR / "complete.json").read_text())["files"]
    full.save_model()
    assert (tmp_path / "a" / "domain_tree.html").exists() and (tmp_path / "a" / "model.safetensors").exists()
    saved = json.loads((checkpoint / STATE_DIR / "rank0.json").read_text())
    assert saved["tree"]["nodes"][1]["docs"] and saved["rng"]["bit_generator"] == "PCG64"
    assert {d["doc_id"] for d in saved["corpus"]["documents"]} >= set(saved["tree"]["nodes"][1]["docs"])

    resumed = SelfPlayTrainer(tiny_qwen2_path, args=wist_args(tmp_path / "b"), corpus=movie_corpus)
    resumed.train(resume_from_checkpoint=str(checkpoint))
    assert resumed.sampled_paths == full.sampled_paths[2:]  # same next paths
    assert resumed.method_state() == full.method_state()  # same tree, posteriors, windows, RNG, counters


def scripted_trainer_cls():
    """Questions always parse (a templated movie question per completion); the Solver answers 1995, 1995, 1990."""
    titles = ["Heat", "Casino", "Se7en"]

    class Scripted(SelfPlayTrainer):
        def parse_question(self, text, context):
            return ParsedQuestion(f"In which year was the film {titles[len(text) % 3]} released?", None)

        def sample_texts(self, messages, n, role, temperature=None, max_new_tokens=None):
            if role != "solver":
                return super().sample_texts(messages, n, role, temperature, max_new_tokens)
            return [[r"\boxed{1995}", r"\boxed{1995}", r"\boxed{1990}"][:n] for _ in messages]

    return Scripted


def test_rdiverse_memory_map_and_replay_with_two_adapters(tmp_path, tiny_qwen2_path):
    args = SelfPlayConfig(
        output_dir=str(tmp_path),
        preset="rdiverse",
        skill_encoder="hashing",
        steps_per_iteration=2,
        challenger_steps=1,
        solver_pool_size=2,
        replay_ratio=0.5,
        max_steps=4,
        save_strategy="no",
        **TINY,
    )
    peft = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM")
    trainer = scripted_trainer_cls()(tiny_qwen2_path, args=args, peft_config=peft)
    assert set(trainer.model.peft_config) == {"default", "challenger"}
    trainer.train()
    logs = {row["step"]: row for row in trainer.state.log_history if "selfplay/iteration" in row}
    # step 1: Challenger, iteration 1, empty bank -> MAP 0; step 2: Solver phase builds the pool (p = 2/3 in band)
    assert logs[1]["selfplay/role_challenger"] == 1.0 and logs[1]["selfplay/map_penalty"] == 0.0
    assert logs[1]["selfplay/solver_success"] == pytest.approx(2 / 3)
    assert logs[2]["selfplay/role_challenger"] == 0.0 and logs[2]["selfplay/solver_pool_size"] == 2.0
    # step 3: iteration 2, the same templated questions are in the bank -> MAP > 0
    assert logs[3]["selfplay/iteration"] == 2.0 and logs[3]["selfplay/map_penalty"] > 0.0
    # step 4: Solver phase of iteration 2 replays one group from iteration 1's memory
    assert logs[4]["selfplay/replayed"] == 1.0 and len(trainer.memory) == 4
    assert {e.label for e in trainer.memory.entries} == {"1995"} and {e.iteration for e in trainer.memory.entries} == {
        1,
        2,
    }

    # R-Diverse's eq. 11, unfloored: two identical questions (P_rep = 2/2) already in the bank (MAP > 0) with
    # r_unc = 1 - 2|2/3 - 1/2| = 2/3 score below an invalid question (0); the floored option gives 0
    refs = [trainer._register({"messages": [], "path": [], "document": None}) for _ in range(2)]
    unfloored = trainer._challenger_rewards(["same", "same"], refs)
    assert unfloored[0] == unfloored[1] < 2 / 3 - 1 < trainer.args.invalid_question_reward == 0.0
    trainer.args.floor_challenger_reward = True
    assert trainer._challenger_rewards(["same", "same"], refs) == [0.0, 0.0]
    trainer.args.floor_challenger_reward = False

    def boom(prediction, reference):
        raise RuntimeError("grader crashed")

    trainer.grade = boom  # a crashing grader counts as a mismatch, never a crash
    ((p, label),) = trainer.score_questions([ParsedQuestion("In which year was Heat released?", None)])
    assert (p, label) == (pytest.approx(2 / 3), "1995") and trainer.counters["grader_errors"] > 0
    trainer.save_model(str(tmp_path / "final"))
    assert (Path(tmp_path) / "final" / "challenger" / "adapter_config.json").exists()


def test_config_errors_name_the_field(tmp_path):
    base = dict(output_dir=str(tmp_path), max_steps=1, report_to="none")
    for bad, match in [
        (dict(preset="alphazero"), "preset"),
        (dict(challenger_reward="ucb"), "challenger_reward"),
        (dict(band_low=0.9, band_high=0.1), "band_low"),
        (dict(replay_ratio=1.5), "replay_ratio"),
        (dict(corpus="jsonl"), "corpus_path"),
        (dict(steps_per_generation=2), "steps_per_generation.*gradient_accumulation_steps"),
        (dict(num_iterations=2), "num_iterations"),
        (dict(corpus_title_match="fuzzy"), "corpus_title_match"),
        (dict(preset="wist", document_max_tokens=0), "document_max_tokens"),
        (dict(preset="rzero", challenger_steps=20), "challenger_steps"),
        (dict(preset="wist", tree_expansion_caps=[4]), "tree_expansion_caps"),
        (dict(per_device_train_batch_size=3, num_generations=2), "divisible by num_generations"),
        (dict(preset="wist", per_device_train_batch_size=2, num_generations=2), "roles='shared'"),
    ]:
        with pytest.raises(ValueError, match=match):
            SelfPlayConfig(**{**base, **bad})
    with pytest.raises(ValueError, match="max_steps"):
        SelfPlayConfig(output_dir=str(tmp_path), report_to="none")
    cfg = SelfPlayConfig(**base, preset="wist", num_solver_samples=3, per_device_train_batch_size=16)
    assert (cfg.challenger_reward, cfg.invalid_question_reward, cfg.num_solver_samples) == ("gauss", -0.1, 3)
    assert SelfPlayConfig(**base, per_device_train_batch_size=8).roles == "separate"  # R-Zero when no preset


def test_bad_input_fails_before_the_model_is_loaded(tmp_path):
    args = SelfPlayConfig(output_dir=str(tmp_path), preset="rzero", max_steps=1, per_device_train_batch_size=8)
    with pytest.raises(ValueError, match="peft_config"):
        SelfPlayTrainer("/nonexistent/model", args=args)
    empty = tmp_path / "empty.jsonl"
    empty.write_text(json.dumps({"title": "Nothing", "text": " "}) + "\n")
    args = SelfPlayConfig(
        output_dir=str(tmp_path),
        preset="wist",
        corpus="jsonl",
        corpus_path=str(empty),
        max_steps=1,
        per_device_train_batch_size=16,
    )
    with pytest.raises(ValueError, match="corpus is empty"):
        SelfPlayTrainer("/nonexistent/model", args=args)
