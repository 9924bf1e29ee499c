"""ReasoningRecTrainer (ReRec): GRPO for reasoning recommenders with dual-graph rewards, RAAE and a curriculum.

A drop-in ``GRPOTrainer``: same constructor (plus ``item_graph`` / ``item_embeddings``), same logging, saving,
PEFT and vLLM options. Differences from GRPO:

- default reward functions: format, NDCG@K, QAS (item-attribute graph) and PAS (LightGCN embeddings), weighted
  ``[format_weight, 1, qas_weight, pas_weight]``;
- RAAE: after TRL scores a batch, the (B, T) token rewards (segments naming a wrong title are penalised) are
  normalised per prompt group over all valid tokens, with statistics gathered across processes, and handed
  to TRL's loss as ``advantages``;
- online curriculum: each epoch's query order comes from ``OnlineCurriculum`` (mastered queries dropped, the
  rest easy to hard); the epoch is closed at the optimizer step that ends it (before that step's checkpoint),
  and the state is saved in every checkpoint and restored on resume;
- exact resume: GRPO's generation buffer is saved with every checkpoint, so resuming inside a buffer
  (``steps_per_generation > 1``) continues on the same completions, bit-identically, and no rollout is
  counted twice by the curriculum.
"""

from __future__ import annotations

import inspect
import math
import textwrap
from pathlib import Path
from typing import Any

import torch
from datasets import Dataset
from torch.utils.data import Sampler
from transformers import TrainerCallback
from trl import GRPOTrainer
from trl.trainer.utils import RepeatSampler

import trl_mars.models.moda  # noqa: F401 - registers model_type "moda": MoDA checkpoints load by path
from trl_mars.rec.curriculum import OnlineCurriculum
from trl_mars.rec.graphs import ItemAttributeGraph, graph_coverage
from trl_mars.rec.lightgcn import ItemEmbeddings
from trl_mars.rec.reward_funcs import completion_text, rerec_reward_funcs
from trl_mars.rec.tasks import check_rerec_dataset
from trl_mars.rewards.rerec import (
    ndcg_score,
    parse_ground_truth,
    penalised_spans,
    raae_advantages,
    raae_token_rewards,
    token_pieces,
    wrong_titles,
)
from trl_mars.trainers.rerec_config import ReRecConfig
from trl_mars.utils.checkpoint import MethodStateMixin

QUERY_INDEX_COLUMN = "rerec_query_index"
GENERATION_BUFFER_FILE = "rerec_generation_buffer"
_CALCULATE_REWARDS_PARAMS = inspect.signature(GRPOTrainer._calculate_rewards).parameters


class CurriculumSampler(Sampler[int]):
    """GRPO's repeat-sampling over the curriculum's current order, cycled to a fixed epoch length.

    Every epoch has ``num_queries // batch_size`` generation batches (as without a curriculum), so the
    Trainer's step/epoch accounting, LR schedule and resume skipping stay exact; when queries have been
    mastered, the remaining order (easy to hard) is walked again to fill the epoch.
    """

    def __init__(self, curriculum: OnlineCurriculum, mini_repeat_count: int, batch_size: int, repeat_count: int):
        self.curriculum = curriculum
        self.mini_repeat_count, self.batch_size, self.repeat_count = mini_repeat_count, batch_size, repeat_count

    def _epoch_queries(self) -> list[int]:
        order = self.curriculum.order
        length = self.curriculum.num_queries // self.batch_size * self.batch_size
        return [order[i % len(order)] for i in range(length)]

    def __iter__(self):
        queries = self._epoch_queries()
        for position in RepeatSampler(
            queries, self.mini_repeat_count, self.batch_size, self.repeat_count, shuffle=False
        ):
            yield queries[position]

    def __len__(self) -> int:
        return len(self._epoch_queries()) * self.mini_repeat_count * self.repeat_count


class _CurriculumEpochEnd(TrainerCallback):
    """Closes a curriculum epoch at the optimizer step that ends a data epoch, before that step's checkpoint."""

    def __init__(self, trainer: ReasoningRecTrainer):
        self.trainer = trainer

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step % self.trainer.steps_per_epoch() == 0:
            self.trainer.curriculum.end_epoch()


class ReasoningRecTrainer(MethodStateMixin, GRPOTrainer):
    """GRPO with ReRec's dual-graph reward, reasoning-aware token advantages and online curriculum.

    Datasets need ``prompt`` and ``ground_truth`` (a list of titles or a ``;``-separated string) columns, and
    optionally ``candidates`` (checked to contain the ground truth). ``item_graph`` is required when
    ``qas_weight > 0`` and ``item_embeddings`` when ``pas_weight > 0`` (unless ``reward_funcs`` is given).
    """

    _tag_names = ["trl", "trl-mars", "rerec"]
    _name = "ReRec"
    _paper = {
        "title": "ReRec: Reasoning-Augmented LLM-based Recommendation Assistant via Reinforcement Fine-tuning",
        "id": "2604.07851",
        # docstyle-ignore
        "citation": textwrap.dedent("""\
            @inproceedings{huang2026rerec,
                title        = {{ReRec: Reasoning-Augmented LLM-based Recommendation Assistant via Reinforcement Fine-tuning}},
                author       = {Jiani Huang and others},
                booktitle    = {Proceedings of ACL},
                year         = 2026,
                eprint       = {arXiv:2604.07851},
            }"""),
    }

    def __init__(
        self,
        model,
        reward_funcs=None,
        args: ReRecConfig | None = None,
        train_dataset: Dataset | None = None,
        eval_dataset=None,
        processing_class=None,
        reward_processing_classes=None,
        callbacks=None,
        optimizers=(None, None),
        peft_config=None,
        item_graph: ItemAttributeGraph | None = None,
        item_embeddings: ItemEmbeddings | None = None,
        **kwargs,
    ):
        if args is None:
            name = model if isinstance(model, str) else model.config._name_or_path
            args = ReRecConfig(f"{name.split('/')[-1]}-ReRec")
        if not isinstance(args, ReRecConfig):
            raise TypeError(f"args must be a ReRecConfig, got {type(args).__name__}")
        if not {"inputs", "completions"} <= set(_CALCULATE_REWARDS_PARAMS):
            raise RuntimeError(
                "this TRL version's GRPOTrainer._calculate_rewards has no inputs/completions parameters"
            )
        if train_dataset is not None:
            check_rerec_dataset(train_dataset, "train_dataset")
        eval_sets = eval_dataset if isinstance(eval_dataset, dict) else {"eval_dataset": eval_dataset}
        for name, dataset in eval_sets.items():
            if dataset is not None:
                check_rerec_dataset(dataset, name if name == "eval_dataset" else f"eval_dataset[{name!r}]")
        if reward_funcs is None:
            reward_funcs = self._default_reward_funcs(args, item_graph, item_embeddings)
            if isinstance(train_dataset, Dataset):
                self._check_graphs_match(args, train_dataset, item_graph, item_embeddings)
        if args.use_curriculum:
            if not isinstance(train_dataset, Dataset):
                raise ValueError("use_curriculum=True needs a map-style datasets.Dataset as train_dataset")
            if QUERY_INDEX_COLUMN in train_dataset.column_names:
                train_dataset = train_dataset.remove_columns(QUERY_INDEX_COLUMN)
            train_dataset = train_dataset.add_column(QUERY_INDEX_COLUMN, list(range(len(train_dataset))))
        super().__init__(
            model,
            reward_funcs,
            args=args,
            train_dataset=train_dataset,
            eval_dataset=eval_dataset,
            processing_class=processing_class,
            reward_processing_classes=reward_processing_classes,
            callbacks=callbacks,
            optimizers=optimizers,
            peft_config=peft_config,
            **kwargs,
        )
        self.curriculum: OnlineCurriculum | None = None
        if args.use_curriculum:
            self.curriculum = OnlineCurriculum(
                len(train_dataset),
                tau=args.curriculum_tau,
                min_queries=args.generation_batch_size // self.num_generations,
                shuffle_first=self.shuffle_dataset,
                seed=args.seed,
            )
            self.add_callback(_CurriculumEpochEnd(self))
        self._scored_batch: tuple[list[dict], list, torch.Tensor] | None = None

    @staticmethod
    def _default_reward_funcs(args: ReRecConfig, item_graph, item_embeddings) -> list:
        """ReRec's reward terms; sets ``args.reward_weights`` to their weights unless the user gave some."""
        if args.qas_weight > 0 and item_graph is None:
            raise ValueError(
                "item_graph is required when qas_weight > 0 (pass an ItemAttributeGraph or set qas_weight=0)"
            )
        if args.pas_weight > 0 and item_embeddings is None:
            raise ValueError(
                "item_embeddings is required when pas_weight > 0 (pass LightGCN ItemEmbeddings or set pas_weight=0)"
            )
        funcs = rerec_reward_funcs(
            args.ndcg_k, item_graph if args.qas_weight > 0 else None, item_embeddings if args.pas_weight > 0 else None
        )
        weights = [args.format_weight, 1.0] + [args.qas_weight] * (args.qas_weight > 0)
        weights += [args.pas_weight] * (args.pas_weight > 0)
        if args.reward_weights is None:
            args.reward_weights = weights
        elif len(args.reward_weights) != len(funcs):
            raise ValueError(
                f"reward_weights has {len(args.reward_weights)} entries but there are {len(funcs)} rewards"
            )
        return funcs

    @staticmethod
    def _check_graphs_match(args: ReRecConfig, dataset: Dataset, item_graph, item_embeddings) -> None:
        """Fail before any compute when a weighted graph reward knows none of the dataset's ground-truth items
        (it would silently score 0, e.g. MovieLens graphs on another catalogue)."""
        titles = [t for value in dataset["ground_truth"] for t in parse_ground_truth(value)]
        graphs = [
            ("qas_weight", args.qas_weight, "item_graph", item_graph, "--item_attributes_path"),
            ("pas_weight", args.pas_weight, "item_embeddings", item_embeddings, "--interactions_path"),
        ]
        for weight_name, weight, graph_name, graph, flag in graphs:
            if weight <= 0:
                continue
            found, total, missing = graph_coverage(titles, graph.lookup)
            if found == 0:
                raise ValueError(
                    f"{weight_name}={weight} but {graph_name} knows none of the {total} ground-truth titles of "
                    f"train_dataset (e.g. {missing}): build it from your items (recipes/rerec.py {flag}) or set "
                    f"{weight_name}=0"
                )

    def _get_train_sampler(self, dataset=None) -> Sampler:
        if self.curriculum is None or (dataset is not None and dataset is not self.train_dataset):
            return super()._get_train_sampler(dataset)
        return CurriculumSampler(
            self.curriculum,
            mini_repeat_count=self.num_generations,
            batch_size=self.args.generation_batch_size // self.num_generations,
            repeat_count=self.num_iterations * self.args.steps_per_generation,
        )

    def steps_per_epoch(self) -> int:
        """Optimizer steps per data epoch (fixed under the curriculum): ceil(chunks * reuse / grad_accum)."""
        chunks = self.curriculum.num_queries // (self.args.generation_batch_size // self.num_generations)
        batches = chunks * self.num_iterations * self.args.steps_per_generation
        return max(1, math.ceil(batches / self.args.gradient_accumulation_steps))

    def _calculate_rewards(self, *args, **kwargs):
        rewards_per_func = super()._calculate_rewards(*args, **kwargs)
        bound = inspect.signature(super()._calculate_rewards).bind(*args, **kwargs).arguments
        self._scored_batch = (bound["inputs"], bound["completions"], rewards_per_func)
        return rewards_per_func

    def _generate_and_score_completions(self, inputs):
        output = super()._generate_and_score_completions(inputs)
        rows, completions, rewards_per_func = self._scored_batch
        self._scored_batch = None
        texts = [completion_text(c) for c in completions]
        truths = [parse_ground_truth(row["ground_truth"]) for row in rows]
        mode = "train" if self.model.training else "eval"
        if mode == "train" and self.curriculum is not None:
            self._record_difficulty(rows, texts, truths)
        if self.args.use_raae:
            candidate_lists = [list(row.get("candidates") or []) for row in rows]
            output["advantages"] = self._raae(output, rewards_per_func, texts, truths, candidate_lists, mode)
        return output

    def _record_difficulty(self, rows: list[dict], texts: list[str], truths: list[list[str]]) -> None:
        """Add this batch's NDCG@K per (query, completion), gathered from every process, to the curriculum."""
        local = torch.tensor(
            [[row[QUERY_INDEX_COLUMN], ndcg_score(t, g, self.args.ndcg_k)] for row, t, g in zip(rows, texts, truths)],
            dtype=torch.float64,
            device=self.accelerator.device,
        )
        pairs = self.accelerator.gather(local).cpu()
        self.curriculum.record(pairs[:, 0].long().tolist(), pairs[:, 1].tolist())
        self._metrics["train"]["curriculum/active_queries"].append(float(len(self.curriculum.order)))

    def _raae(
        self,
        output: dict,
        rewards_per_func: torch.Tensor,
        texts: list[str],
        truths: list[list[str]],
        candidate_lists: list[list[str]],
        mode: str,
    ):
        """(B, T) RAAE advantages of this process's rows from the global per-completion rewards; a mention of a
        wrong title inside a longer candidate title (``candidate_lists``) is not penalised."""
        device = self.accelerator.device
        batch = len(texts)
        rows = slice(self.accelerator.process_index * batch, (self.accelerator.process_index + 1) * batch)
        scorable = ~torch.isnan(rewards_per_func).all(dim=1)
        rewards = (rewards_per_func * self.reward_weights.to(device).unsqueeze(0)).nansum(dim=1)
        rewards, scorable = rewards[rows], scorable[rows]
        mask = output["completion_mask"] * scorable.unsqueeze(1).to(output["completion_mask"].dtype)
        token_rewards = rewards.unsqueeze(1).expand_as(mask).clone().float()
        penalised = 0
        for i, (text, truth, candidates) in enumerate(zip(texts, truths, candidate_lists)):
            wrong = wrong_titles(text, truth, self.args.ndcg_k)
            if not wrong:
                continue
            ids = output["completion_ids"][i][output["completion_mask"][i].bool()].tolist()
            pieces = token_pieces(ids, lambda x: self.processing_class.decode(x, skip_special_tokens=True))
            spans = penalised_spans("".join(pieces), wrong, self.args.raae_segment, candidates)
            if spans:
                penalised += 1
                values = raae_token_rewards(rewards[i].item(), pieces, spans, self.args.raae_penalty)
                token_rewards[i, : len(values)] = torch.tensor(values, device=device)
        num_generations = self.num_generations if mode == "train" else self.num_generations_eval
        correct = None
        if self.args.raae_zero_all_wrong:
            ndcg = [ndcg_score(t, g, self.args.ndcg_k) for t, g in zip(texts, truths)]
            correct = torch.tensor([value > 0 for value in ndcg], device=device)
        advantages = raae_advantages(
            token_rewards,
            mask,
            num_generations,
            eps=self.args.raae_eps,
            gather=self.accelerator.gather,
            row_offset=rows.start,
            scale=self.args.scale_rewards,
            correct=correct,
        )
        counts = self.accelerator.gather(torch.tensor([penalised, batch], device=device, dtype=torch.float32))
        counts = counts.view(-1, 2).sum(0)
        self._metrics[mode]["raae/penalised_frac"].append((counts[0] / counts[1]).item())
        return advantages

    def _buffer_file(self, checkpoint_dir: str | Path) -> Path:
        return Path(checkpoint_dir) / f"{GENERATION_BUFFER_FILE}_rank{self.accelerator.process_index}.pt"

    def save_method_files(self, checkpoint_dir: Path) -> None:
        """Save GRPO's generation buffer and micro-step counter (this process's), so that a checkpoint inside a
        buffer (``steps_per_generation > 1``) resumes on the buffered completions instead of regenerating."""
        torch.save({"step": self._step, "buffer": self._buffered_inputs}, self._buffer_file(checkpoint_dir))

    def _load_generation_buffer(self) -> None:
        path = self._buffer_file(self.resumed_from)
        if not path.exists():
            raise FileNotFoundError(f"{path} is missing: the checkpoint has no ReRec generation buffer")
        saved = torch.load(path, map_location=self.accelerator.device, weights_only=False)
        self._step, self._buffered_inputs = saved["step"], saved["buffer"]

    def method_state(self) -> dict[str, Any]:
        return {"curriculum": None if self.curriculum is None else self.curriculum.state_dict()}

    def load_method_state(self, state: dict[str, Any]) -> None:
        if (self.curriculum is None) != (state.get("curriculum") is None):
            raise ValueError("use_curriculum differs between this run and the checkpoint being resumed")
        if self.curriculum is not None:
            self.curriculum.load_state_dict(state["curriculum"])
        self._load_generation_buffer()
