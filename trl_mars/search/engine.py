"""Lockstep MARS² tree search over many problems at once.

Every search step picks one expansion per tree in flight (AB-MCTS-A), then makes ONE batched generation call
per distinct model across all those trees; each batch's code goes to the sandbox asynchronously as soon as
it is generated, so scoring one model's batch overlaps with generating the next one's. The search state
(trees, posteriors, RNG, step counter) serialises to JSON and restores exactly.

Backends that declare ``concurrent_requests`` (a vLLM server per agent) are called from threads at the same time
within a step, so a step lasts as long as the slowest agent's batch rather than the sum of them; the others are
called one after the other in the main thread, in the same order as before, and the trees are updated in that order
either way. ``SearchConfig.mode='async'`` drops the steps altogether for such backends (``async_search``): each tree
selects its next expansion as soon as its own last node is scored.

With ``sync`` set (models sharded across processes, e.g. FSDP, where every forward is a collective), all processes
also step in lockstep with each other: they run as many steps as the busiest one and call every model once per
step in the same order, with a throw-away prompt where they have nothing to generate.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from trl_mars.rewards.code_extraction import extract_code
from trl_mars.search.backends import Generation, GenerationBackend, Messages
from trl_mars.search.prompts import PromptConfig, first_prompt, refinement_prompt
from trl_mars.search.selection import DepthSchedule, Order, select_expansion
from trl_mars.search.tree import ROOT, SearchTree
from trl_mars.search.verify import Verdict, Verifier, no_code_verdict


@dataclass(frozen=True)
class SearchProblem:
    """A problem as the search sees it; ``public_tests`` score nodes, ``private_tests`` grade final answers.

    Tests are anything ``trl_mars.sandbox`` accepts (assert lines, HumanEval ``check`` code, stdin/stdout
    cases); ``entry_point`` and ``setup`` are passed to the sandbox with them."""

    problem_id: str
    question: str
    public_tests: Any
    private_tests: Any = None
    entry_point: str | None = None
    setup: str = ""
    preamble: str = ""

    def verify(self, verifier: Verifier, code: str, tests: Any) -> Future[Verdict]:
        """Check ``preamble + code`` (e.g. the prompt's imports before the model's function) against ``tests``."""
        program = f"{self.preamble}\n{code}" if self.preamble else code
        return verifier.submit(program, tests, self.entry_point, self.setup)

    @property
    def grading_tests(self) -> Any:
        return self.public_tests if self.private_tests is None else self.private_tests


SearchMode = Literal["lockstep", "async"]


def accepts_concurrent_requests(backend: GenerationBackend) -> bool:
    """Whether ``backend`` declares that calls from several threads at once are served independently."""
    return bool(getattr(backend, "concurrent_requests", False))


@dataclass
class SearchConfig:
    """Budget and policy of the search. ``tplus`` turns on MARS²-T+ (detailed feedback on refinements + depth
    schedule); ``stop_on_pass`` ends a tree at its first passing node (inference only; training never stops);
    ``max_depth=1`` turns the tree into plain parallel sampling (GEN at the root only).

    ``mode``: ``'lockstep'`` (every tree adds one node per step, one batched call per model per step) or
    ``'async'`` (each tree advances on its own as soon as its last node is scored, with at most ``max_inflight``
    requests in flight per tree; needs backends that declare ``concurrent_requests``, see ``async_search``)."""

    max_nodes: int = 8
    dist: str = "beta"
    order: Order = "node_then_agent"
    tplus: bool = False
    depth_schedule: DepthSchedule = field(default_factory=DepthSchedule)
    prompt: PromptConfig = field(default_factory=PromptConfig)
    stop_on_pass: bool = False
    max_depth: int | None = None
    mode: SearchMode = "lockstep"
    max_inflight: int = 1

    def __post_init__(self) -> None:
        if self.mode not in ("lockstep", "async"):
            raise ValueError(f"mode must be 'lockstep' or 'async', got {self.mode!r}")
        if self.max_inflight < 1:
            raise ValueError(f"max_inflight must be >= 1, got {self.max_inflight}")
        if self.max_inflight > 1 and self.mode != "async":
            raise ValueError(
                f"max_inflight={self.max_inflight} needs mode='async' (lockstep adds one node per tree per step)"
            )
        if self.max_depth is not None and self.max_depth < 1:
            raise ValueError(f"max_depth must be >= 1 or None, got {self.max_depth}")
        if self.max_nodes < 1:
            raise ValueError(f"max_nodes must be >= 1, got {self.max_nodes}")
        if self.dist not in ("beta", "gaussian"):
            raise ValueError(f"dist must be 'beta' or 'gaussian', got {self.dist!r}")
        if self.order not in ("node_then_agent", "agent_then_node"):
            raise ValueError(f"order must be 'node_then_agent' or 'agent_then_node', got {self.order!r}")
        if self.tplus and self.prompt.feedback != "detailed":
            self.prompt = PromptConfig(**{**self.prompt.__dict__, "feedback": "detailed"})


IDLE_PROMPT: Messages = [{"role": "user", "content": "pass"}]
"""What a process generates (and discards) when a lockstep step gives one of its models nothing to do."""


@dataclass
class Request:
    """One expansion asked of a backend: node ``parent`` of tree number ``tree`` refined (or, at the root, answered)
    by ``agent`` from ``prompt``."""

    tree: int
    parent: int
    agent: str
    prompt: Messages


class TreeSearch:
    """Grow MARS² trees with ``agents`` (name -> generation backend) scored by ``verifier``."""

    def __init__(
        self,
        agents: Mapping[str, GenerationBackend],
        verifier: Verifier,
        config: SearchConfig | None = None,
        seed: int = 0,
        system_prompts: Mapping[str, str | None] | None = None,
        sync: Callable[[int], int] | None = None,
    ) -> None:
        """``sync(n)``: the maximum of ``n`` over all processes; set it only when generation is a collective."""
        if not agents:
            raise ValueError("agents must name at least one generation backend")
        self.agents = dict(agents)
        self.system_prompts = {name: (system_prompts or {}).get(name) for name in self.agents}
        self.verifier = verifier
        self.config = config or SearchConfig()
        self.rng = np.random.default_rng(seed)
        self.steps = 0
        self.sync = sync

    def new_trees(self, problems: Sequence[SearchProblem], prefix: str = "") -> list[SearchTree]:
        return [
            SearchTree(f"{prefix}{i}-{p.problem_id}", p.problem_id, dist=self.config.dist)
            for i, p in enumerate(problems)
        ]

    def done(self, tree: SearchTree) -> bool:
        solved = self.config.stop_on_pass and any(n.score >= 1.0 for n in tree.solutions)
        return len(tree) >= self.config.max_nodes or solved

    def run(
        self,
        problems: Sequence[SearchProblem],
        trees: list[SearchTree] | None = None,
        on_step: Callable[[list[SearchTree]], None] | None = None,
    ) -> list[SearchTree]:
        """Search every problem until its budget is spent; pass ``trees`` to continue earlier ones.
        ``on_step(trees)`` is called after each step (progress reporting; in async mode after each node)."""
        trees = trees if trees is not None else self.new_trees(problems)
        if len(trees) != len(problems):
            raise ValueError(f"got {len(trees)} trees for {len(problems)} problems")
        if self.config.mode == "async":
            from trl_mars.search.async_search import run_async

            return run_async(self, problems, trees, on_step)
        while True:
            active = [i for i, t in enumerate(trees) if not self.done(t)]
            if not (self.sync(len(active)) if self.sync is not None else active):
                break
            if self.independent_nodes:
                # no expansion depends on an earlier score: the whole remaining budget is one batched call
                active = [i for i in active for _ in range(self.config.max_nodes - len(trees[i]))]
            self.step(problems, trees, active)
            if on_step is not None:
                on_step(trees)
        return trees

    @property
    def independent_nodes(self) -> bool:
        """GEN only (``max_depth=1``), one agent, no early stop: every node is a root child of that agent, as in
        GRPO's parallel sampling, so nodes need not wait for each other's scores."""
        cfg = self.config
        return cfg.max_depth == 1 and len(self.agents) == 1 and not cfg.stop_on_pass

    def request(
        self, problems: Sequence[SearchProblem], trees: Sequence[SearchTree], i: int, parent: int, agent: str
    ) -> Request:
        """The prompt for expanding node ``parent`` of tree ``i`` with ``agent``."""
        cfg = self.config
        question = problems[i].question
        prompt = (
            first_prompt(question, cfg.prompt)
            if parent == ROOT
            else refinement_prompt(question, trees[i].nodes[parent], cfg.prompt)
        )
        if self.system_prompts[agent]:
            prompt = [{"role": "system", "content": self.system_prompts[agent]}, *prompt]
        return Request(i, parent, agent, prompt)

    def score(self, problem: SearchProblem, text: str) -> tuple[str | None, Future[Verdict] | Verdict]:
        """Start scoring a completion: its extracted code and the verdict (a future while the sandbox runs)."""
        code = extract_code(text, problem.entry_point)
        return code, no_code_verdict() if code is None else problem.verify(self.verifier, code, problem.public_tests)

    def land(
        self, tree: SearchTree, request: Request, gen: Generation, code: str | None, verdict: Verdict, step: int
    ) -> None:
        """Add the scored node ``request`` asked for to ``tree`` (back-propagating its score)."""
        tree.add(
            request.parent,
            request.agent,
            step,
            prompt=request.prompt,
            prompt_ids=list(gen.prompt_ids),
            completion=gen.text,
            completion_ids=list(gen.completion_ids),
            logprobs=list(gen.logprobs),
            code=code,
            score=verdict.score,
            pass_fraction=verdict.pass_fraction,
            feedback=verdict.feedback,
        )

    def step(self, problems: Sequence[SearchProblem], trees: list[SearchTree], active: Sequence[int]) -> None:
        """Add one node to each tree in ``active`` (a tree listed k times gets k nodes, selected together).

        Selection (every RNG draw) happens first, in tree order; then each backend gets one batched call. Backends
        that accept concurrent requests are called from threads at once (unless processes step in lockstep), the
        others in the main thread in order; the nodes are added in the same backend order either way."""
        cfg = self.config
        schedule = cfg.depth_schedule if cfg.tplus else None
        names = list(self.agents)
        by_backend: dict[int, list[Request]] = {}
        for i in active:
            parent, agent = select_expansion(trees[i], names, self.rng, cfg.order, schedule, cfg.max_depth)
            by_backend.setdefault(id(self.agents[agent]), []).append(self.request(problems, trees, i, parent, agent))
        backends = {id(backend): backend for backend in self.agents.values()}
        keys = list(backends if self.sync is not None else by_backend)

        def call(key: int) -> list[tuple[Request, Generation, str | None, Future[Verdict] | Verdict]]:
            requests = by_backend.get(key)
            if not requests:  # lockstep: this process still takes part in the model's collectives
                backends[key].generate([IDLE_PROMPT])
                return []
            checks: dict[int, tuple[str | None, Future[Verdict] | Verdict]] = {}

            def check(i: int, text: str) -> None:
                """Start scoring a completion as soon as it is final, while the batch is still generating."""
                checks[i] = self.score(problems[requests[i].tree], text)

            generations = backends[key].generate([r.prompt for r in requests], on_text=check)
            for i, gen in enumerate(generations):
                if i not in checks:  # a backend that does not stream
                    check(i, gen.text)
            return [(r, gen, *checks[i]) for i, (r, gen) in enumerate(zip(requests, generations, strict=True))]

        concurrent = [k for k in keys if self.sync is None and accepts_concurrent_requests(backends[k])]
        results: dict[int, list] = {}
        with ThreadPoolExecutor(max(len(concurrent), 1), thread_name_prefix="search-agent") as pool:
            futures = {k: pool.submit(call, k) for k in concurrent}
            for key in keys:
                if key not in futures:
                    results[key] = call(key)
            for key, future in futures.items():
                results[key] = future.result()
        for key in keys:
            for request, gen, code, pending in results[key]:
                verdict = pending if isinstance(pending, Verdict) else pending.result()
                self.land(trees[request.tree], request, gen, code, verdict, self.steps)
        self.steps += 1

    def grade(self, problems: Sequence[SearchProblem], trees: Sequence[SearchTree]) -> None:
        """Fill ``private_score`` of every node from the problems' grading (private) tests."""
        jobs = []
        for problem, tree in zip(problems, trees, strict=True):
            for node in tree.solutions:
                if node.code is None:
                    node.private_score = 0.0
                else:
                    jobs.append((node, problem.verify(self.verifier, node.code, problem.grading_tests)))
        for node, future in jobs:
            node.private_score = future.result().score

    def state_dict(self) -> dict:
        return {"rng": self.rng.bit_generator.state, "steps": self.steps}

    def load_state_dict(self, state: dict) -> None:
        self.rng.bit_generator.state = state["rng"]
        self.steps = state["steps"]
