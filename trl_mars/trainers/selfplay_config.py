"""Configuration of ``SelfPlayTrainer``: R-Zero, R-Diverse and WIST as presets over one set of fields."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from trl import GRPOConfig

from trl_mars.rewards.selfplay import CHALLENGER_REWARDS
from trl_mars.selfplay.corpus import TITLE_MATCHES
from trl_mars.selfplay.encoders import PAPER_CODE_EMBEDDER, PAPER_CODER, SKILL_ENCODERS
from trl_mars.selfplay.grading import GRADERS

_RZERO = dict(
    roles="separate",
    task_source="prompt",
    challenger_reward="rzero",
    invalid_question_reward=0.0,
    num_solver_samples=10,
    solver_labels="majority",
    band_filter=True,
    question_penalty="bleu",
    map_coef=0.0,
    replay_ratio=0.0,
    steps_per_iteration=20,
    challenger_steps=5,
    min_question_chars=1,
    challenger_oversample=1,
    challenger_max_retries=0,
    require_answer_in_document=True,
    floor_challenger_reward=True,
    loss_type="grpo",
    scale_rewards="group",
    beta=0.01,
)
PRESETS: dict[str, dict] = {
    "rzero": _RZERO,
    # R-Diverse's eq. (11): R_unc - a P_rep - b P_MAP, no floor (a penalised question scores below an invalid one)
    "rdiverse": {
        **_RZERO,
        "question_penalty": "skill",
        "map_coef": 1.0,
        "replay_ratio": 0.3,
        "floor_challenger_reward": False,
    },
    "wist": dict(
        roles="shared",
        task_source="tree",
        challenger_reward="gauss",
        invalid_question_reward=-0.1,
        num_solver_samples=8,
        solver_labels="challenger_gold",
        band_filter=False,
        question_penalty="none",
        map_coef=0.0,
        replay_ratio=0.0,
        steps_per_iteration=10,
        challenger_steps=0,
        min_question_chars=50,
        challenger_oversample=2,
        challenger_max_retries=4,
        floor_challenger_reward=False,
        require_answer_in_document=False,
        loss_type="dr_grpo",
        scale_rewards="none",
        beta=0.0,
    ),
}
"""Paper defaults per method; fields left at None take the preset's value (``rzero``'s when no preset is set)."""

CORPORA = ("movielens", "jsonl", "files", "searxng")


def _check_choice(name: str, value, choices) -> None:
    if value not in choices:
        raise ValueError(f"{name} must be one of {sorted(choices)}, got {value!r}")


def default_skill_encoder(preset: str | None, gpu: bool) -> str:
    """``code`` (R-Diverse's SAM: code abstraction, then a code embedding) for the rdiverse preset on a GPU;
    ``minilm`` otherwise (a 7B coder per question is impractical on a CPU).

    >>> default_skill_encoder("rdiverse", gpu=True), default_skill_encoder("rdiverse", gpu=False)
    ('code', 'minilm')
    """
    return "code" if preset == "rdiverse" and gpu else "minilm"


@dataclass
class SelfPlayConfig(GRPOConfig):
    r"""
    Configuration for [`SelfPlayTrainer`]: a Challenger writes questions, a Solver answers them, both are trained with
    GRPO. Fields set to `None` take the value of `preset` (`"rzero"`, `"rdiverse"` or `"wist"`; R-Zero when unset).

    Parameters:
        preset (`str` or `None`): `rzero`, `rdiverse` or `wist`; fills every field left at `None`.
        roles (`str`): `separate` (Challenger and Solver LoRA adapters on one base, trained alternately; needs a
            `peft_config`) or `shared` (one policy, role-tagged prompts, one merged update).
        task_source (`str`): `prompt` (fixed Challenger prompt, `<question>` tags) or `tree` (WIST domain tree over a
            corpus; JSON questions grounded in path and document).
        challenger_reward (`str`): `rzero` (1 - 2|p - 1/2|, floored at 0 after penalties), `rzero_code`
            (min(p, 1 - p), no floor) or `gauss` (exp(-(p(1-p) - 0.25)^2 / (2 gauss_sigma2))).
        floor_challenger_reward (`bool`): with `rzero`, floor the reward at 0 after penalties (R-Zero) or not
            (R-Diverse's eq. 11, the rdiverse preset).
        invalid_question_reward (`float`): reward of unparseable/invalid Challenger output (0 paper, -1 R-Zero code,
            -0.1 WIST).
        loss_type, scale_rewards, beta: TRL's GRPO fields; left at None they take the preset's (R-Zero/R-Diverse:
            `grpo`, `group`, 0.01; WIST: `dr_grpo`, `none`, 0).
        num_solver_samples (`int`): Solver samples K per question (10 R-Zero paper, 8 WIST).
        solver_labels (`str`): `majority` (pseudo-label = majority answer) or `challenger_gold` (the Challenger's
            own answer).
        band_filter (`bool`): keep only questions with `band_low <= p <= band_high` for the Solver.
        question_penalty (`str`): `none`, `bleu` (R-Zero) or `skill` (R-Diverse SAM on skill embeddings).
        map_coef (`float`): weight b of the memory-augmented penalty (R-Diverse: 1); > 0 keeps a memory bank.
        replay_ratio (`float`): share of each Solver batch replayed from the memory bank (R-Diverse: 0.3).
        steps_per_iteration (`int`): optimizer steps per self-play iteration (memory entries are tagged by it).
        challenger_steps (`int`): with `roles="separate"`, the first steps of each iteration train the Challenger,
            the rest the Solver (decided per optimizer step: a generation batch must not span optimizer steps).
        corpus_title_match (`str`): `string` (bare titles), `embedding` (MiniLM cosine >= max(0.5, batch median), web
            titles) or `auto` (embedding for searxng).
        document_max_tokens (`int`): document truncation in Challenger prompts, in tokens (WIST: 5792).
        challenger_oversample (`int`): each Challenger group samples `challenger_oversample * num_generations`
            candidates and keeps `num_generations` of them with the candidates' valid:invalid ratio (at least one of
            each when both exist; WIST: 2, i.e. C = 16 for G = 8; R-Zero/R-Diverse: 1, no oversampling).
        challenger_max_retries (`int`): a Challenger group whose candidates are all invalid is sampled again, at
            most this many times (WIST: 4; 0 for R-Zero/R-Diverse); after the last it stays all-invalid (zero
            advantage, no tree update: the prompt is dropped).
    """

    preset: str | None = field(default=None, metadata={"help": "rzero, rdiverse or wist: fills fields left unset."})
    loss_type: str | None = field(
        default=None, metadata={"help": "GRPO loss (TRL's); None: the preset's (grpo R-Zero/R-Diverse, dr_grpo WIST)."}
    )
    scale_rewards: str | None = field(
        default=None, metadata={"help": "TRL's reward scaling; None: the preset's (group; none for WIST)."}
    )
    beta: float | None = field(default=None, metadata={"help": "KL coefficient; None: the preset's (0.01; WIST 0)."})
    roles: str | None = field(default=None, metadata={"help": "separate (two LoRA adapters) or shared (one policy)."})
    task_source: str | None = field(default=None, metadata={"help": "prompt (R-Zero) or tree (WIST)."})
    question_type: str = field(default="free", metadata={"help": "WIST question type: free or mcq."})
    min_question_chars: int | None = field(default=None, metadata={"help": "Shortest valid question (WIST: 50)."})
    require_answer_in_document: bool | None = field(
        default=None,
        metadata={"help": "Tree mode: a free-form answer must occur in the document (off in the wist preset)."},
    )
    challenger_reward: str | None = field(default=None, metadata={"help": "rzero, rzero_code or gauss."})
    floor_challenger_reward: bool | None = field(
        default=None,
        metadata={"help": "rzero reward: max(0, r_unc - penalties) (R-Zero) or unfloored (R-Diverse, eq. 11)."},
    )
    gauss_sigma2: float = field(default=0.01, metadata={"help": "sigma^2 of the gauss Challenger reward."})
    invalid_question_reward: float | None = field(default=None, metadata={"help": "Reward of invalid questions."})
    num_solver_samples: int | None = field(default=None, metadata={"help": "Solver samples K per question."})
    solver_labels: str | None = field(default=None, metadata={"help": "majority or challenger_gold."})
    grader: str = field(default="default", metadata={"help": "Answer grader: default or math_verify."})
    solver_max_new_tokens: int | None = field(
        default=None, metadata={"help": "Max tokens of scoring Solver samples (default: max_completion_length)."}
    )
    band_filter: bool | None = field(default=None, metadata={"help": "Keep band_low <= p <= band_high for Solver."})
    band_low: float = field(default=0.3, metadata={"help": "Lower edge of the Solver band."})
    band_high: float = field(default=0.8, metadata={"help": "Upper edge of the Solver band."})
    question_penalty: str | None = field(
        default=None, metadata={"help": "Within-batch repetition penalty: none, bleu or skill."}
    )
    question_penalty_threshold: float = field(default=0.5, metadata={"help": "Average-linkage distance threshold."})
    question_penalty_coef: float = field(default=1.0, metadata={"help": "Weight a of the repetition penalty."})
    map_coef: float | None = field(default=None, metadata={"help": "Weight b of the MAP penalty (R-Diverse: 1)."})
    map_gamma: float = field(default=0.5, metadata={"help": "MAP mix of max and mean terms."})
    map_tau_max: float = field(default=0.5, metadata={"help": "MAP max-similarity margin."})
    map_tau_mean: float = field(default=0.25, metadata={"help": "MAP mean-similarity margin."})
    replay_ratio: float | None = field(default=None, metadata={"help": "Share of Solver groups replayed (0.3)."})
    skill_encoder: str | None = field(
        default=None,
        metadata={"help": "minilm, hashing or code; None: code for rdiverse on a GPU (the paper's SAM), else minilm."},
    )
    skill_coder_model: str | None = field(
        default=None, metadata={"help": f"Code-abstraction LLM (skill_encoder=code; default {PAPER_CODER})."}
    )
    skill_code_embedder: str | None = field(
        default=None, metadata={"help": f"Code embedder (skill_encoder=code; default {PAPER_CODE_EMBEDDER})."}
    )
    steps_per_iteration: int | None = field(default=None, metadata={"help": "Optimizer steps per iteration."})
    challenger_steps: int | None = field(default=None, metadata={"help": "Challenger steps per iteration."})
    challenger_fraction: float = field(
        default=0.5, metadata={"help": "roles=shared: share of each generation batch's groups that are Challenger."}
    )
    solver_pool_size: int = field(
        default=64, metadata={"help": "roles=separate: questions generated and labelled per Solver phase."}
    )
    tree_domains: list[str] = field(default_factory=lambda: ["Movies"], metadata={"help": "Level-1 domains."})
    tree_max_level: int = field(default=4, metadata={"help": "Leaf level of the domain tree."})
    tree_window: int = field(default=5, metadata={"help": "Sliding window W of posterior outcomes."})
    tree_expansion_caps: list[int] = field(
        default_factory=lambda: [4, 4, 8], metadata={"help": "Children added per expansion, levels 2..max_level."}
    )
    tree_num_proposals: int = field(default=5, metadata={"help": "Policy proposals sampled per expansion."})
    tree_proposal_min_count: int = field(default=2, metadata={"help": "Votes a proposed label needs."})
    tree_expansion_max_failed_rounds: int = field(
        default=3, metadata={"help": "An expansion stops after this many proposal rounds add no child (WIST: 3)."}
    )
    tree_corpus_fallback: bool = field(
        default=True, metadata={"help": "When no proposal wins the vote, take child labels from corpus titles."}
    )
    learnability_threshold: float = field(default=0.4, metadata={"help": "g = 1 if best reward > threshold."})
    corpus: str = field(default="movielens", metadata={"help": "movielens, jsonl, files or searxng."})
    corpus_path: str | None = field(default=None, metadata={"help": "Corpus folder/file, or the SearXNG URL."})
    corpus_max_documents: int | None = field(default=None, metadata={"help": "movielens: most-rated movies kept."})
    corpus_docs_per_node: int = field(default=4, metadata={"help": "Documents kept per tree node."})
    corpus_title_match: str = field(
        default="auto",
        metadata={"help": "string (bare titles), embedding (MiniLM, web titles) or auto (embedding for searxng)."},
    )
    corpus_title_threshold: float = field(
        default=0.8, metadata={"help": "corpus_title_match=string: title similarity to keep a document."}
    )
    corpus_embedding_threshold: float = field(
        default=0.5, metadata={"help": "corpus_title_match=embedding: keep cos >= max(this, batch median)."}
    )
    corpus_query_mode: str = field(default="path", metadata={"help": "path (label + ancestors) or label."})
    challenger_oversample: int | None = field(
        default=None,
        metadata={
            "help": "Challenger candidates sampled per group = this * num_generations; num_generations are kept with "
            "the valid:invalid ratio (WIST: 2; R-Zero/R-Diverse: 1)."
        },
    )
    challenger_max_retries: int | None = field(
        default=None,
        metadata={"help": "Re-samplings of a Challenger group with no valid candidate, then it is dropped (WIST: 4)."},
    )
    document_max_tokens: int = field(
        default=5792, metadata={"help": "Document truncation in Challenger prompts, in tokens (WIST: 8192 - 2400)."}
    )
    tree_dump: bool = field(default=True, metadata={"help": "Write domain_tree.json/.html with checkpoints."})

    def __post_init__(self):
        if self.preset is not None:
            _check_choice("preset", self.preset, PRESETS)
        for name, value in PRESETS[self.preset or "rzero"].items():
            if getattr(self, name) is None:
                setattr(self, name, value)
        if self.skill_encoder is None:
            self.skill_encoder = default_skill_encoder(self.preset, torch.cuda.is_available() and not self.use_cpu)
        if self.skill_encoder == "code":
            self.skill_coder_model = self.skill_coder_model or PAPER_CODER
            self.skill_code_embedder = self.skill_code_embedder or PAPER_CODE_EMBEDDER
        _check_choice("roles", self.roles, ("separate", "shared"))
        _check_choice("task_source", self.task_source, ("prompt", "tree"))
        _check_choice("question_type", self.question_type, ("free", "mcq"))
        _check_choice("challenger_reward", self.challenger_reward, CHALLENGER_REWARDS)
        _check_choice("solver_labels", self.solver_labels, ("majority", "challenger_gold"))
        _check_choice("grader", self.grader, GRADERS)
        _check_choice("question_penalty", self.question_penalty, ("none", "bleu", "skill"))
        _check_choice("skill_encoder", self.skill_encoder, SKILL_ENCODERS)
        _check_choice("corpus", self.corpus, CORPORA)
        _check_choice("corpus_query_mode", self.corpus_query_mode, ("path", "label"))
        _check_choice("corpus_title_match", self.corpus_title_match, TITLE_MATCHES)
        if self.corpus in ("jsonl", "files", "searxng") and not self.corpus_path:
            raise ValueError(f"corpus={self.corpus!r} needs corpus_path")
        if not 0.0 <= self.band_low <= self.band_high <= 1.0:
            raise ValueError(
                f"band_low/band_high must satisfy 0 <= low <= high <= 1, got {self.band_low}, {self.band_high}"
            )
        for name in (
            "gauss_sigma2",
            "num_solver_samples",
            "steps_per_iteration",
            "tree_window",
            "tree_num_proposals",
            "document_max_tokens",
            "tree_expansion_max_failed_rounds",
            "challenger_oversample",
        ):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)}")
        for name in (
            "map_coef",
            "question_penalty_coef",
            "min_question_chars",
            "challenger_steps",
            "challenger_max_retries",
        ):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        for name in ("replay_ratio", "challenger_fraction", "map_gamma", "question_penalty_threshold"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {getattr(self, name)}")
        if self.roles == "separate" and not 0 < self.challenger_steps < self.steps_per_iteration:
            raise ValueError(
                f"challenger_steps must be in (0, steps_per_iteration={self.steps_per_iteration}) with roles='separate',"
                f" got {self.challenger_steps}"
            )
        if self.task_source == "tree":
            if not self.tree_domains:
                raise ValueError("tree_domains must name at least one level-1 domain")
            if (
                len(self.tree_expansion_caps) != self.tree_max_level - 1
                or min(self.tree_expansion_caps, default=1) < 1
            ):
                raise ValueError(
                    f"tree_expansion_caps needs {self.tree_max_level - 1} positive caps (levels 2..{self.tree_max_level}),"
                    f" got {self.tree_expansion_caps}"
                )
        if self.max_steps is None or self.max_steps <= 0:
            raise ValueError("max_steps must be > 0: self-play generates its own data and has no epochs")
        super().__post_init__()
        generate_every = self.steps_per_generation * self.num_iterations
        if self.roles == "separate" and self.gradient_accumulation_steps % generate_every:
            raise ValueError(
                "roles='separate' decides the role (Challenger or Solver) per optimizer step, so a generation batch "
                f"must not span optimizer steps: steps_per_generation * num_iterations ({self.steps_per_generation} * "
                f"{self.num_iterations}) must divide gradient_accumulation_steps ({self.gradient_accumulation_steps})"
            )
        rows = self.per_device_train_batch_size * self.steps_per_generation
        if rows % self.num_generations:
            raise ValueError(
                f"per_device_train_batch_size * steps_per_generation ({rows}) must be a multiple of num_generations "
                f"({self.num_generations}): each device builds whole prompt groups"
            )
        if self.roles == "shared" and rows // self.num_generations < 2:
            raise ValueError(
                "roles='shared' needs >= 2 prompt groups per device and generation batch (one Challenger, one Solver): "
                f"raise per_device_train_batch_size * steps_per_generation above num_generations={self.num_generations}"
            )

    @property
    def uses_memory(self) -> bool:
        """A memory bank is kept when the MAP penalty or replay is on."""
        return self.map_coef > 0 or self.replay_ratio > 0

    @property
    def uses_skill_encoder(self) -> bool:
        return self.uses_memory or self.question_penalty == "skill"
