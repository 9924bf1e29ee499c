"""Configuration of ``TraceEmbedTrainer`` (TRACE, arXiv 2603.02929).

Extends ``trl.SFTConfig``: TRACE's generative half is teacher-forced SFT on the CoT, and SFTConfig already carries
what a TRACE run needs besides its own fields (``max_length``, ``model_init_kwargs``, ``chat_template_path``,
the TRL training defaults). Its dataset preparation is bypassed (``dataset_kwargs={"skip_prepare_dataset": True}``):
TRACE batches are built by ``trl_mars.embed.collator.TraceCollator`` from sentence-transformers-style columns.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from trl import SFTConfig

from trl_mars.embed.prompts import DEFAULT_CANDIDATE_INSTRUCTION, DEFAULT_QUERY_INSTRUCTION, EMB_TOKEN
from trl_mars.embed.sampler import BATCH_SAMPLERS


@dataclass
class TraceConfig(SFTConfig):
    """``L = lambda_gen * L_gen + lambda_ret * L_ret`` (see ``trl_mars.losses.trace``) plus inference settings.

    Paper defaults: lr 2e-4, cosine schedule, 1 epoch, lambda_gen = lambda_ret = 1; the temperature (unstated in
    the paper) defaults to LamRA's 0.05.
    """

    learning_rate: float = field(default=2e-4, metadata={"help": "AdamW learning rate (TRACE: 2e-4)."})
    lr_scheduler_type: str = field(default="cosine", metadata={"help": "Learning-rate schedule (TRACE: cosine)."})
    max_length: int | None = field(
        default=512, metadata={"help": "Max tokens of a query (prompt + CoT + <|emb|>) or a candidate."}
    )
    emb_token: str = field(default=EMB_TOKEN, metadata={"help": "The embedding token added to the tokenizer."})
    lambda_gen: float = field(default=1.0, metadata={"help": "Weight of the generative CE on CoT + <|emb|>."})
    lambda_ret: float = field(default=1.0, metadata={"help": "Weight of the query->candidate InfoNCE."})
    temperature: float = field(default=0.05, metadata={"help": "InfoNCE temperature tau (cosine / tau)."})
    gather_across_devices: bool = field(
        default=True, metadata={"help": "All-gather embeddings across ranks so every rank sees the global batch."}
    )
    mini_batch_size: int | None = field(
        default=None,
        metadata={"help": "GradCache chunk size (rows per forward); None embeds the whole batch with gradients."},
    )
    query_instruction: str = field(
        default=DEFAULT_QUERY_INSTRUCTION, metadata={"help": "System prompt of queries (routing instruction)."}
    )
    candidate_instruction: str = field(
        default=DEFAULT_CANDIDATE_INSTRUCTION, metadata={"help": "System prompt of candidates (never reason)."}
    )
    batch_sampler: str = field(
        default="no_duplicates",
        metadata={
            "help": "'no_duplicates': no two rows of a (global) batch share a candidate text, so no positive is "
            "scored as another query's negative; 'random': the Trainer's shuffled batches."
        },
    )
    max_target_length: int = field(
        default=256, metadata={"help": "Max query-target tokens (CoT + <|emb|>) in training; longer CoTs are cut."}
    )
    max_reasoning_tokens: int = field(
        default=128, metadata={"help": "Max CoT tokens decoded at inference before <|emb|> is forced."}
    )
    image_max_pixels: int | None = field(
        default=None,
        metadata={
            "help": "Vision-language models: resize every image to at most this many pixels (the Qwen2-VL image "
            "processor's max_pixels; image tokens = pixels / 28^2 at most), saved with the model. None keeps the "
            "processor's setting. Qwen2-VL family only: rejected for LLaVA (its vision tower's resolution is fixed)."
        },
    )
    freeze_vision_tower: bool = field(
        default=True,
        metadata={
            "help": "Vision-language models: the vision encoder (patch embedding and blocks) gets no gradient "
            "(requires_grad=False, and no LoRA adapters there); its projector (Qwen2-VL's merger, LLaVA's "
            "multi_modal_projector) stays trainable, "
            "as in TRACE. False trains the vision tower too (fully, or through LoRA where the target modules match). "
            "No effect on a text-only model."
        },
    )

    def __post_init__(self):
        self._check_trace_fields()
        self.dataset_kwargs = {**(self.dataset_kwargs or {}), "skip_prepare_dataset": True}
        self.remove_unused_columns = False
        super().__post_init__()
        if self.lambda_gen == 0 and self.ddp_find_unused_parameters is None:
            # without L_gen an untied lm_head gets no gradient, which DDP must be told about
            self.ddp_find_unused_parameters = True

    def _check_trace_fields(self) -> None:
        if self.lambda_gen < 0 or self.lambda_ret < 0:
            raise ValueError(f"lambda_gen and lambda_ret must be >= 0, got {self.lambda_gen} and {self.lambda_ret}")
        if self.lambda_gen == 0 and self.lambda_ret == 0:
            raise ValueError("lambda_gen and lambda_ret are both 0: there is nothing to train")
        if not self.temperature > 0:
            raise ValueError(f"temperature must be > 0, got {self.temperature}")
        if self.mini_batch_size is not None and self.mini_batch_size < 1:
            raise ValueError(f"mini_batch_size must be >= 1 or None, got {self.mini_batch_size}")
        if self.batch_sampler not in BATCH_SAMPLERS:
            raise ValueError(f"batch_sampler must be one of {BATCH_SAMPLERS}, got {self.batch_sampler!r}")
        if not self.emb_token:
            raise ValueError("emb_token must be a non-empty string")
        if self.max_target_length < 1:
            raise ValueError(f"max_target_length must be >= 1 (room for <|emb|>), got {self.max_target_length}")
        if self.image_max_pixels is not None and self.image_max_pixels < 28 * 28:
            raise ValueError(f"image_max_pixels must be >= 784 (one 28x28 image token), got {self.image_max_pixels}")
        if self.max_reasoning_tokens < 1:
            raise ValueError(f"max_reasoning_tokens must be >= 1, got {self.max_reasoning_tokens}")
        longest = max(self.max_target_length, self.max_reasoning_tokens + 1)
        if self.max_length is None or self.max_length <= longest:
            raise ValueError(
                f"max_length ({self.max_length}) must be an int larger than max_target_length "
                f"({self.max_target_length}) and max_reasoning_tokens + 1 ({self.max_reasoning_tokens + 1})"
            )
        unsupported = {
            "packing": self.packing,
            "padding_free": self.padding_free,
            "assistant_only_loss": self.assistant_only_loss,
            "completion_only_loss": bool(self.completion_only_loss),
            "use_liger_kernel": self.use_liger_kernel,
        }
        enabled = [name for name, value in unsupported.items() if value]
        if enabled:
            raise ValueError(f"{enabled} are SFT options that TRACE does not use; leave them unset")
        if self.loss_type != "nll":
            raise ValueError(
                f"loss_type must be 'nll' for TRACE (its CE is computed by the trainer), got {self.loss_type!r}"
            )
