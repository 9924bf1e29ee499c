"""``TraceEmbedTrainer``: TRACE (arXiv 2603.02929), a causal LM that reasons, then emits ``<|emb|>``.

One teacher-forced query forward gives both losses: ``L_gen`` (CE on ``CoT; <|emb|>``, which also teaches routing:
simple queries learn to emit ``<|emb|>`` first) and the query embedding (pre-``<|emb|>`` state). Candidates are
``[prompt; <|emb|>]``. ``L = lambda_gen * L_gen + lambda_ret * InfoNCE(q, [c; negatives])`` with embeddings
gathered across ranks (local gradient kept). ``mini_batch_size`` switches to GradCache: embeddings are computed
without gradients, ``dL/de`` is cached, and each chunk is re-run with gradients when the Trainer calls backward.

Vision-language models (a family of ``trl_mars.embed.vision.FAMILIES``: Qwen2-VL, Qwen2.5-VL, LLaVA; loaded with
their image processor): rows may carry images (``query_image``, ``positive_image``, ``<negative>_image``); every
forward, the GradCache replay included, gets the rows' vision inputs (``pixel_values``, plus ``image_grid_thw`` /
``mm_token_type_ids`` for Qwen2-VL), so the vision tower runs inside the replayed forward.
``freeze_vision_tower`` (default) keeps the vision encoder frozen and LoRA off it. Other VLM families are rejected.
"""

from __future__ import annotations

import math
import re
import textwrap
from collections.abc import Callable
from functools import partial
from typing import Any

import torch
from datasets import Dataset, IterableDataset
from torch.utils.data import DataLoader
from transformers import AutoImageProcessor, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase, set_seed
from transformers.processing_utils import ProcessorMixin
from trl import SFTTrainer
from trl.trainer.utils import create_model_from_path

import trl_mars.models.moda  # noqa: F401 - registers model_type "moda": MoDA checkpoints load by path
from trl_mars.embed.collator import IMAGE_SUFFIX, TraceCollator, check_columns, image_columns, negative_columns
from trl_mars.embed.encoder import EncoderSettings, TraceEncoder, accepts_logits_to_keep, last_hidden_and_logits
from trl_mars.embed.evaluation import image_key
from trl_mars.embed.prompts import add_emb_token, prompt_parts
from trl_mars.embed.sampler import NoDuplicatesBatchSampler
from trl_mars.embed.vision import (
    VisionSpec,
    freeze_vision_encoder,
    has_vision,
    limit_image_pixels,
    slice_vision_inputs,
    vision_encoder_pattern,
    vision_family,
)
from trl_mars.losses.trace import (
    IGNORE_INDEX,
    embed_chunks,
    gathered_info_nce,
    generative_ce,
    info_nce,
    pool_pre_token,
    replay_chunks,
)
from trl_mars.trainers.trace_config import TraceConfig
from trl_mars.utils.checkpoint import MethodStateMixin

Inputs = dict[str, torch.Tensor]


def _column_names(dataset: Dataset | IterableDataset) -> list[str]:
    names = dataset.column_names
    return list(names) if names is not None else list(next(iter(dataset)).keys())


def emb_trainable_peft_config(peft_config, model: PreTrainedModel, emb_id: int):
    """Make the ``<|emb|>`` rows trainable under LoRA via PEFT's ``trainable_token_indices``.

    The input row is always added (``embed_tokens``); with untied embeddings, the ``lm_head`` row too, because the
    model must learn to *generate* ``<|emb|>``. Tied heads follow the embedding adapter.
    """
    indices = peft_config.trainable_token_indices
    indices = {"embed_tokens": list(indices)} if isinstance(indices, list) else dict(indices or {})
    modules = ["embed_tokens"] if model.config.get_text_config().tie_word_embeddings else ["embed_tokens", "lm_head"]
    for name in modules:
        indices[name] = sorted({*indices.get(name, []), emb_id})
    peft_config.trainable_token_indices = indices
    return peft_config


def exclude_vision_encoder(peft_config, model: PreTrainedModel):
    """Keep LoRA off the vision encoder: its module names are added to ``peft_config.exclude_modules`` (a regex)."""
    pattern = vision_encoder_pattern(model)
    if pattern is None:
        return peft_config
    user = peft_config.exclude_modules
    if isinstance(user, str):
        pattern = f"(?:{user})|(?:{pattern})"
    elif user:
        pattern = "|".join([f"(?:{pattern})", *(rf"(?:(.*\.)?{re.escape(name)})" for name in user)])
    peft_config.exclude_modules = pattern
    return peft_config


class TraceEmbedTrainer(MethodStateMixin, SFTTrainer):
    """Train a generative LM into a TRACE embedder; ``self.encoder()`` gives a ``TraceEncoder`` on the live model."""

    _tag_names = ["trl", "trl-mars", "trace"]
    _name = "TRACE"
    _paper = {
        "title": "TRACE",  # the full title was not available offline; see the arXiv id
        "id": "2603.02929",
        # docstyle-ignore
        "citation": textwrap.dedent("""\
            @article{hao2026trace,
                title   = {{TRACE}},
                author  = {Hao and Wang and Yang and Wang and Guo and Wang},
                journal = {arXiv preprint arXiv:2603.02929},
                year    = 2026
            }"""),
    }
    loss_is_scaled_for_ga = False  # compute_loss returns a per-batch mean; the Trainer divides by the GA steps

    def __init__(
        self,
        model: str | PreTrainedModel,
        args: TraceConfig | None = None,
        train_dataset: Dataset | IterableDataset | None = None,
        eval_dataset: Dataset | dict[str, Dataset] | None = None,
        processing_class: PreTrainedTokenizerBase | None = None,
        callbacks=None,
        optimizers=(None, None),
        peft_config=None,
        quantization_config=None,
    ):
        model_id = model if isinstance(model, str) else model.config._name_or_path
        args = args if args is not None else TraceConfig(f"{model_id.split('/')[-1]}-TRACE")
        if not isinstance(args, TraceConfig):
            raise TypeError(f"args must be a TraceConfig, got {type(args).__name__}")
        if train_dataset is None:
            raise ValueError("train_dataset is required")
        check_columns(_column_names(train_dataset), "train")
        if args.batch_sampler == "no_duplicates" and not isinstance(train_dataset, Dataset):
            raise ValueError(
                "batch_sampler='no_duplicates' needs a map-style datasets.Dataset as train_dataset; "
                "set batch_sampler='random' for an IterableDataset"
            )
        evals = eval_dataset if isinstance(eval_dataset, dict) else {"eval": eval_dataset} if eval_dataset else {}
        for name, dataset in evals.items():
            check_columns(_column_names(dataset), name)

        set_seed(args.seed)  # the new <|emb|> row is sampled around the mean embedding: make it reproducible
        if isinstance(model, str):
            model = self._load_model(model, args, quantization_config)
        if has_vision(model.config):
            vision_family(model.config)  # an unsupported VLM family is rejected before anything else
        tokenizer, image_processor = self._processing(processing_class, model, model_id)
        vision = VisionSpec.from_model(model.config, tokenizer, image_processor) if image_processor else None
        if args.image_max_pixels is not None:
            if vision is None:
                raise ValueError(f"image_max_pixels is set but the model {model_id!r} has no image processor")
            limit_image_pixels(vision, args.image_max_pixels)
        images = sorted({c for d in [train_dataset, *evals.values()] for c in image_columns(_column_names(d))})
        if images and image_processor is None:
            kind = "has no vision tower" if not has_vision(model.config) else "has no image processor"
            raise ValueError(
                f"the datasets have image columns {images} but the model {model_id!r} {kind}; use a vision-language "
                "model (e.g. Qwen2-VL) saved with its image processor, or pass processing_class=its processor"
            )
        emb_id, _ = add_emb_token(tokenizer, args.emb_token)
        if model.get_input_embeddings().num_embeddings < len(tokenizer):
            model.resize_token_embeddings(len(tokenizer))
        if has_vision(model.config):
            if args.freeze_vision_tower:
                freeze_vision_encoder(model)
                if peft_config is not None:
                    peft_config = exclude_vision_encoder(peft_config, model)
            if args.ddp_find_unused_parameters is None:
                # a batch without images leaves the vision tower (its projector, at least) without gradient
                args.ddp_find_unused_parameters = True
        if peft_config is not None:
            peft_config = emb_trainable_peft_config(peft_config, model, emb_id)
        super().__init__(
            model=model,
            args=args,
            train_dataset=train_dataset,
            eval_dataset=eval_dataset,
            processing_class=tokenizer,
            callbacks=callbacks,
            optimizers=optimizers,
            peft_config=peft_config,
        )
        self.emb_token_id = emb_id
        self.image_processor = image_processor
        self.vision = vision
        self.data_collator = TraceCollator(
            tokenizer=tokenizer,
            emb_token_id=emb_id,
            query_parts=prompt_parts(tokenizer, args.query_instruction),
            candidate_parts=prompt_parts(tokenizer, args.candidate_instruction),
            max_length=args.max_length,
            max_target_length=args.max_target_length,
            vision=self.vision,
        )
        self.negative_columns = negative_columns(_column_names(train_dataset))
        self.counts = {"queries_seen": 0, "reasoning_queries_seen": 0}
        self._logits_to_keep = accepts_logits_to_keep(self.model)

    @staticmethod
    def _processing(processing_class, model: PreTrainedModel, model_id: str) -> tuple[PreTrainedTokenizerBase, object]:
        """The tokenizer and, for a vision-language model, its image processor (None otherwise).

        ``processing_class`` may be a tokenizer or a processor (its ``tokenizer`` and ``image_processor`` are used);
        by default both load from ``model_id`` (the image processor from ``preprocessor_config.json``).
        """
        if isinstance(processing_class, ProcessorMixin):
            return processing_class.tokenizer, getattr(processing_class, "image_processor", None)
        tokenizer = processing_class if processing_class is not None else AutoTokenizer.from_pretrained(model_id)
        image_processor = None
        if has_vision(model.config):
            try:
                image_processor = AutoImageProcessor.from_pretrained(model_id)
            except OSError:  # no preprocessor_config.json: the model can only be trained on text
                image_processor = None
        return tokenizer, image_processor

    @staticmethod
    def _load_model(model_id: str, args: TraceConfig, quantization_config) -> PreTrainedModel:
        kwargs = dict(args.model_init_kwargs or {})
        if quantization_config is not None:
            kwargs["quantization_config"] = quantization_config
        if args.distributed_state.distributed_type in ("MULTI_GPU", "DEEPSPEED"):
            kwargs["device_map"] = None
        kwargs.setdefault("trust_remote_code", args.trust_remote_code)
        args.model_init_kwargs = None  # consumed here (the token must be added before PEFT wraps the model)
        return create_model_from_path(model_id, **kwargs)

    def get_train_dataloader(self) -> DataLoader:
        """With ``batch_sampler="no_duplicates"``, batches from ``NoDuplicatesBatchSampler`` over the rows' candidates
        (positive and hard negatives, each a (text, image) pair); otherwise the Trainer's."""
        if self.args.batch_sampler != "no_duplicates":
            return super().get_train_dataloader()
        texts = ["positive", *self.negative_columns]
        present = set(self.train_dataset.column_names)
        columns = [c for t in texts for c in (t, t + IMAGE_SUFFIX) if c in present]
        keys = [
            frozenset((row[t], image_key(row.get(t + IMAGE_SUFFIX))) for t in texts)
            for row in self.train_dataset.select_columns(columns)
        ]
        sampler = NoDuplicatesBatchSampler(
            keys,
            self._train_batch_size,
            self.accelerator.num_processes,
            drop_last=self.args.dataloader_drop_last,
            seed=self.args.data_seed if self.args.data_seed is not None else self.args.seed,
            epoch_fn=lambda: math.floor((self.state.epoch or 0.0) + 1e-9),
        )
        loader = DataLoader(
            self.train_dataset,
            batch_sampler=sampler,
            collate_fn=self.data_collator,
            num_workers=self.args.dataloader_num_workers,
            pin_memory=self.args.dataloader_pin_memory,
        )
        return self.accelerator.prepare(loader)

    # ---------------------------------------------------------------- forward pieces
    def _hidden(self, model, inputs: Inputs, prefix: str, rows: slice) -> torch.Tensor:
        """Last hidden states of rows ``rows`` of group ``prefix``, with their images' vision inputs."""
        vision = slice_vision_inputs(inputs, prefix, rows, self.vision.family.image_keys if self.vision else ())
        ids, mask = inputs[f"{prefix}_input_ids"][rows], inputs[f"{prefix}_attention_mask"][rows]
        return last_hidden_and_logits(model, ids, mask, self._logits_to_keep, **vision)[0]

    def _query_forward(self, model, inputs: Inputs, rows: slice) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Query embeddings, summed CE on ``CoT; <|emb|>`` and, per row, whether the first-step route is right."""
        ids, labels = inputs["query_input_ids"][rows], inputs["query_labels"][rows]
        hidden = self._hidden(model, inputs, "query", rows)
        lm_head = self.accelerator.unwrap_model(model).get_output_embeddings()
        ce_sum, _ = generative_ce(hidden, labels, lm_head)
        with torch.no_grad():
            first_target = (labels != IGNORE_INDEX).int().argmax(dim=1)
            route_state = hidden[torch.arange(ids.shape[0], device=ids.device), first_target - 1]
            emits_emb = lm_head(route_state).argmax(-1) == self.emb_token_id
            route_correct = emits_emb != inputs["query_reasons"][rows]
        return pool_pre_token(hidden, ids, self.emb_token_id), ce_sum, route_correct

    def _candidate_forward(self, model, inputs: Inputs, prefix: str, rows: slice) -> tuple[torch.Tensor, torch.Tensor]:
        ids = inputs[f"{prefix}_input_ids"][rows]
        hidden = self._hidden(model, inputs, prefix, rows)
        return pool_pre_token(hidden, ids, self.emb_token_id), hidden.new_zeros(())

    def _retrieval_loss(self, q: torch.Tensor, c: torch.Tensor, n: torch.Tensor | None) -> torch.Tensor:
        if self.args.gather_across_devices and self.accelerator.num_processes > 1:
            return gathered_info_nce(q, c, self.args.temperature, n)
        return info_nce(q, c, self.args.temperature, n)

    def _embed_groups(self, model, inputs: Inputs) -> list[tuple[str, Callable]]:
        groups = [("candidate", partial(self._candidate_forward, model, inputs, "candidate"))]
        if "negative_input_ids" in inputs:
            groups.append(("negative", partial(self._candidate_forward, model, inputs, "negative")))
        return groups

    # ---------------------------------------------------------------- losses
    def compute_loss(self, model, inputs: Inputs, return_outputs: bool = False, num_items_in_batch=None):
        use_cache = self.args.mini_batch_size is not None and torch.is_grad_enabled()
        loss, metrics = self._cached_loss(model, inputs) if use_cache else self._direct_loss(model, inputs)
        self._record(metrics, inputs)
        return (loss, {}) if return_outputs else loss

    def _direct_loss(self, model, inputs: Inputs) -> tuple[torch.Tensor, dict[str, Any]]:
        all_rows = slice(None)
        q, ce_sum, route_correct = self._query_forward(model, inputs, all_rows)
        embedded = {name: fn(all_rows)[0] for name, fn in self._embed_groups(model, inputs)}
        ret = self._retrieval_loss(q, embedded["candidate"], embedded.get("negative"))
        gen = ce_sum / self._num_target_tokens(inputs)
        loss = self.args.lambda_ret * ret + self.args.lambda_gen * gen
        return loss, {"ret": ret, "gen": gen, "route": route_correct, "q": q, "c": embedded["candidate"]}

    def _cached_loss(self, model, inputs: Inputs) -> tuple[torch.Tensor, dict[str, Any]]:
        """GradCache: no-grad embeddings, cached ``dL/de``, chunked replay in a backward hook on the loss."""
        chunk, n_queries = self.args.mini_batch_size, inputs["query_input_ids"].shape[0]
        routes: list[torch.Tensor] = []

        def query_pass1(rows: slice) -> tuple[torch.Tensor, torch.Tensor]:
            emb, ce_sum, route_correct = self._query_forward(model, inputs, rows)
            routes.append(route_correct)
            return emb, ce_sum

        q, ce_total, q_states = embed_chunks(query_pass1, n_queries, chunk)
        groups = [("query", lambda rows: self._query_forward(model, inputs, rows)[:2], q, q_states)]
        for name, fn in self._embed_groups(model, inputs):
            emb, _, states = embed_chunks(fn, inputs[f"{name}_input_ids"].shape[0], chunk)
            groups.append((name, fn, emb, states))
        reps = {name: emb.requires_grad_() for name, _, emb, _ in groups}
        with torch.enable_grad():
            ret = self._retrieval_loss(reps["query"], reps["candidate"], reps.get("negative"))
            (self.args.lambda_ret * ret).backward()
        n_tokens = self._num_target_tokens(inputs)
        gen = ce_total / n_tokens
        loss = torch.tensor(self.args.lambda_ret * ret.item() + self.args.lambda_gen * gen, device=q.device)
        loss.requires_grad_()
        weights = {"query": self.args.lambda_gen / n_tokens}
        no_sync = getattr(model, "no_sync", None)

        # The query group is replayed last, so its final chunk is the one DDP synchronises: it is the only group
        # whose backward reaches every trainable parameter (an untied lm_head gets gradient from L_gen only).
        replay_order = [*groups[1:], groups[0]]

        def replay(grad_output: torch.Tensor) -> None:
            with self.compute_loss_context_manager():
                for i, (name, fn, _, states) in enumerate(replay_order):
                    last = i == len(replay_order) - 1
                    replay_chunks(
                        fn, chunk, states, reps[name].grad, weights.get(name, 0.0), grad_output, no_sync, last
                    )

        loss.register_hook(replay)
        metrics = {
            "ret": ret.detach(),
            "gen": torch.tensor(gen, device=q.device),
            "route": torch.cat(routes),
            "q": q,
            "c": reps["candidate"],
        }
        return loss, metrics

    @staticmethod
    def _num_target_tokens(inputs: Inputs) -> float:
        return max(int((inputs["query_labels"][:, 1:] != IGNORE_INDEX).sum()), 1)

    # ---------------------------------------------------------------- logging, state, saving
    def _record(self, metrics: dict[str, Any], inputs: Inputs) -> None:
        mode = "train" if self.model.training else "eval"
        with torch.no_grad():
            q, c = metrics["q"].detach(), metrics["c"].detach()
            in_batch_top1 = (q @ c.T).argmax(-1) == torch.arange(q.shape[0], device=q.device)
            values = {
                "loss_ret": metrics["ret"].detach().float().mean(),
                "loss_gen": metrics["gen"].detach().float().mean(),
                "routing_accuracy": metrics["route"].float().mean(),
                "reasoning_fraction": inputs["query_reasons"].float().mean(),
                "in_batch_accuracy": in_batch_top1.float().mean(),
            }
        for key, value in values.items():
            self._metrics[mode][key].append(self.accelerator.gather_for_metrics(value.reshape(1)).mean().item())
        if mode == "train":
            self.counts["queries_seen"] += int(inputs["query_reasons"].numel())
            self.counts["reasoning_queries_seen"] += int(inputs["query_reasons"].sum())

    def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys=None):
        inputs = self._prepare_inputs(inputs)
        with torch.no_grad(), self.compute_loss_context_manager():
            loss = self.compute_loss(model, inputs)
        return loss.detach(), None, None

    def method_state(self) -> dict[str, Any]:
        return {"emb_token": self.args.emb_token, "emb_token_id": self.emb_token_id, **self.counts}

    def load_method_state(self, state: dict[str, Any]) -> None:
        if state["emb_token_id"] != self.emb_token_id:
            raise ValueError(
                f"checkpoint was trained with {state['emb_token']!r} = id {state['emb_token_id']}, but this tokenizer "
                f"maps {self.args.emb_token!r} to {self.emb_token_id}"
            )
        self.counts = {key: int(state[key]) for key in self.counts}

    def encoder_settings(self) -> EncoderSettings:
        return EncoderSettings(
            emb_token=self.args.emb_token,
            query_instruction=self.args.query_instruction,
            candidate_instruction=self.args.candidate_instruction,
            max_length=self.args.max_length,
            max_reasoning_tokens=self.args.max_reasoning_tokens,
        )

    def encoder(self) -> TraceEncoder:
        """A ``TraceEncoder`` over the model being trained (switch it to ``eval()`` before encoding)."""
        model = self.accelerator.unwrap_model(self.model)
        return TraceEncoder(model, self.processing_class, self.encoder_settings(), self.image_processor)

    def save_model(self, output_dir: str | None = None, _internal_call: bool = False) -> None:
        """Save weights and tokenizer (with ``<|emb|>``), the image processor of a VLM, plus ``trace_encoder.json``
        for ``TraceEncoder``."""
        super().save_model(output_dir, _internal_call)
        if self.args.should_save:
            self.encoder_settings().save(output_dir or self.args.output_dir)
            if self.image_processor is not None:
                self.image_processor.save_pretrained(output_dir or self.args.output_dir)
