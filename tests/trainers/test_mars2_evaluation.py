"""``evaluate_search`` takes its settings from the ``eval_*`` config fields (budget, system/agent trees, T+,
reward-model selector, tie-break), which are validated before any model loads."""

import sys
from pathlib import Path

import pytest

from trl_mars.data.code_tasks import code_task_splits
from trl_mars.search import SequenceClassifierRewardModel
from trl_mars.trainers import mars2_trainer
from trl_mars.trainers.mars2_config import MultiAgentTreeConfig
from trl_mars.trainers.mars2_trainer import MultiAgentTreeTrainer

sys.path.insert(0, str(Path(__file__).parent))  # --import-mode=importlib: the helpers sit here
from mars2_helpers import tiny_mars2_config  # noqa: E402


@pytest.mark.parametrize(
    ("field", "value"),
    [("eval_mode", "both"), ("eval_tie_break", "random"), ("eval_max_nodes", 0), ("eval_reward_model", "no model")],
)
def test_bad_evaluation_fields_name_the_field(tmp_path, field, value):
    with pytest.raises(ValueError, match=field):
        MultiAgentTreeConfig(output_dir=str(tmp_path), report_to="none", **{field: value})


def test_reward_model_field_needs_a_one_output_sequence_classifier(tmp_path, tiny_qwen2_path):
    """Checked from the checkpoint's config before any weight loads."""
    from trl_mars.testing import tiny_model_path

    for model, message in (
        (tiny_qwen2_path, "eval_reward_model: .* is not a sequence-classification model"),
        (tiny_model_path("qwen2", cache_dir=tmp_path, head="reward", num_labels=2), "num_labels=1"),
    ):
        with pytest.raises(ValueError, match=message):
            MultiAgentTreeConfig(output_dir=str(tmp_path), report_to="none", eval_reward_model=model)


def test_evaluation_fields_drive_evaluate_search(tmp_path, tiny_qwen2_path, tiny_llama_path, monkeypatch):
    from trl_mars.testing import tiny_model_path

    rm_path = tiny_model_path("qwen2", cache_dir=tmp_path / "rm", head="reward")
    agents = [{"name": "qwen", "model": tiny_qwen2_path}, {"name": "llama", "model": tiny_llama_path}]
    args = tiny_mars2_config(
        tmp_path / "out",
        agents,
        max_nodes=2,
        eval_max_nodes=3,
        eval_mode="agent",
        eval_tplus=True,
        eval_reward_model=rm_path,
        eval_tie_break="earliest",
    )
    _, test = code_task_splits(0, 2, seed=0)
    trainer = MultiAgentTreeTrainer(args=args, train_dataset=test)
    searches, selections = [], []
    run_search = trainer.run_search
    monkeypatch.setattr(
        trainer, "run_search", lambda p, c, a: searches.append((c, list(a), len(p))) or run_search(p, c, a)
    )
    metrics = mars2_trainer.tree_metrics

    def recording_metrics(tree, tie_break, reward_model, question):
        selections.append((tie_break, reward_model, question))
        return metrics(tree, tie_break, reward_model, question)

    monkeypatch.setattr(mars2_trainer, "tree_metrics", recording_metrics)
    out = trainer.evaluate_search(test)
    assert [(a, n) for _, a, n in searches] == [(["qwen"], 2), (["llama"], 2)]  # agent mode: a tree per agent
    for config, _, _ in searches:
        assert config.max_nodes == 3 and config.tplus and config.prompt.feedback == "detailed"
    assert {k.split("/")[0] for k in out} == {"qwen", "llama"} and "qwen/pass@1(mcts)" in out
    assert [q for _, _, q in selections] == [row["question"] for row in test] * 2
    assert all(t == "earliest" and isinstance(rm, SequenceClassifierRewardModel) for t, rm, _ in selections)
    assert selections[0][1] is selections[-1][1]  # loaded once
    assert selections[0][1].model.config._name_or_path == rm_path
    # arguments override the fields
    selections.clear()
    searches.clear()
    out = trainer.evaluate_search(test, max_nodes=1, mode="system", tplus=False, reward_model=lambda q, n: 0.0)
    assert [(c.max_nodes, c.tplus, a) for c, a, _ in searches] == [(1, False, ["qwen", "llama"])]
    assert "pass@1" in out and all(rm(q, None) == 0.0 for _, rm, q in selections)
    trainer.sandbox.close()
