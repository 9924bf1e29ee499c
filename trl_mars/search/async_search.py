"""Asynchronous MARS² search: each tree advances as soon as its own last node is scored (``SearchConfig.mode='async'``).

Lockstep search makes every tree wait, at every step, for the longest generation of the whole batch; with
long-tailed answer lengths (reasoning models) most trees sit idle most of the time. Here every tree keeps up to
``max_inflight`` requests in flight on its agents' backends, which must accept concurrent requests (a vLLM server
per agent batches them continuously). When a request's node is scored it is added to its tree (back-propagating
its score) and the tree selects its next expansion from its own posteriors, while the other trees' requests are
still running.

``max_inflight=1`` is the sequential AB-MCTS of each tree: a tree selects only once all its earlier nodes are
scored. Every tree draws from its own random generator (seeded from the search's), so a tree's nodes do not depend
on the order in which the trees' results arrive: with a deterministic backend, a fixed seed gives the same trees
whatever the timing.

``max_inflight > 1`` is asynchronous AB-MCTS within a tree. Its selections see the expansions still in flight as
pending nodes (``with_pending``): each counts as a *virtual loss*, a score of ``PENDING_SCORE`` = 0 recorded on every
arm its real score will update (GEN and the agent's GEN arm at its parent, CONT and the child arm of every node
above, the agent's tree-wide record, the T+ GEN count at the parent's depth), so a second selection is steered
away from the path already being expanded. The virtual observations live in a throw-away copy of the tree's
statistics: when the real score lands it is recorded once, by ``SearchTree.add``, and the tree's budget counts
nodes in flight (at most ``max_nodes - len(tree)`` are launched), so nothing is counted twice.
"""

from __future__ import annotations

import copy
import queue
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TYPE_CHECKING

import numpy as np

from trl_mars.search.selection import select_expansion
from trl_mars.search.tree import SearchTree
from trl_mars.search.verify import Verdict

if TYPE_CHECKING:
    from trl_mars.search.engine import Request, SearchProblem, TreeSearch

PENDING_SCORE = 0.0
"""The virtual score of an expansion in flight (a virtual loss, as in parallel MCTS)."""
MAX_THREADS = 512
"""At most this many requests are in flight at once over all trees (the rest wait for a thread)."""


def with_pending(tree: SearchTree, pending: Sequence[tuple[int, str]], score: float = PENDING_SCORE) -> SearchTree:
    """A copy of ``tree`` whose statistics also count each ``(parent id, agent)`` expansion in flight as a node of
    ``score`` (its nodes are shared, unchanged); ``tree`` itself is left as it is.

    >>> tree = SearchTree("t", "p")
    >>> view = with_pending(tree, [(0, "a")])
    >>> view.stats[0].gen.a, view.stats[0].gen.b, view.agent_scores, view.gen_count_by_depth
    (0.5, 1.5, {'a': [0.0]}, {0: 1})
    >>> tree.stats[0].gen.n, tree.agent_scores
    (0, {})
    """
    view = SearchTree(
        tree.tree_id,
        tree.problem_id,
        tree.dist,
        nodes=list(tree.nodes),
        stats=copy.deepcopy(tree.stats),
        agent_scores={a: list(s) for a, s in tree.agent_scores.items()},
        gen_count_by_depth=dict(tree.gen_count_by_depth),
    )
    for parent, agent in pending:
        view.backpropagate(parent, agent, score)
    return view


def check_async(search: TreeSearch) -> None:
    """Async search needs every agent's backend to accept concurrent requests, and processes not in lockstep."""
    from trl_mars.search.engine import accepts_concurrent_requests

    if search.sync is not None:
        raise ValueError(
            "SearchConfig.mode='async': the processes generate in lockstep (sharded models, FSDP), which needs "
            "mode='lockstep'"
        )
    for name, backend in search.agents.items():
        if not accepts_concurrent_requests(backend):
            raise ValueError(
                f"SearchConfig.mode='async': agent {name!r} generates with {type(backend).__name__}, which does not "
                "accept concurrent requests (concurrent_requests=False); use mode='lockstep', or a backend that "
                "serves concurrent requests (a vLLM server per agent)"
            )


def run_async(
    search: TreeSearch,
    problems: Sequence[SearchProblem],
    trees: list[SearchTree],
    on_step: Callable[[list[SearchTree]], None] | None = None,
) -> list[SearchTree]:
    """Grow ``trees`` asynchronously until each has spent its budget (``TreeSearch.run`` with ``mode='async'``).

    Selection, prompts and tree updates all happen in the calling thread; worker threads only generate (one prompt
    per call) and submit the code to the verifier. A node's ``step`` is its tree's launch count when it was asked
    for (the order of the tree's own expansions). ``on_step(trees)`` is called after each node is added."""
    check_async(search)
    cfg = search.config
    schedule = cfg.depth_schedule if cfg.tplus else None
    names = list(search.agents)
    seeds = search.rng.integers(0, 2**63, size=len(trees))  # one draw per run, in tree order: resumable
    rngs = [np.random.default_rng(int(seed)) for seed in seeds]
    pending: list[list[Request]] = [[] for _ in trees]
    launches = [len(tree) for tree in trees]
    events: queue.SimpleQueue = queue.SimpleQueue()

    def generate(request: Request, step: int) -> None:
        """Worker thread: one request to the agent's backend, then its code to the verifier."""
        try:
            gen = search.agents[request.agent].generate([request.prompt])[0]
            code, verdict = search.score(problems[request.tree], gen.text)
        except BaseException as error:  # noqa: BLE001 - re-raised in the calling thread
            events.put((request, step, None, None, None, error))
            return
        if isinstance(verdict, Verdict):
            events.put((request, step, gen, code, verdict, None))
            return

        def scored(future: Future[Verdict]) -> None:
            try:
                events.put((request, step, gen, code, future.result(), None))
            except BaseException as error:  # noqa: BLE001 - a verifier that raises ends the search
                events.put((request, step, None, None, None, error))

        verdict.add_done_callback(scored)

    def budget_left(i: int) -> bool:
        return not search.done(trees[i]) and len(trees[i]) + len(pending[i]) < cfg.max_nodes

    def fill(i: int) -> None:
        """Launch tree ``i``'s next expansions, up to ``max_inflight`` in flight and its remaining budget."""
        while budget_left(i) and len(pending[i]) < cfg.max_inflight:
            tree = trees[i]
            view = with_pending(tree, [(r.parent, r.agent) for r in pending[i]]) if pending[i] else tree
            parent, agent = select_expansion(view, names, rngs[i], cfg.order, schedule, cfg.max_depth)
            request = search.request(problems, trees, i, parent, agent)
            pending[i].append(request)
            pool.submit(generate, request, launches[i])
            launches[i] += 1

    threads = min(MAX_THREADS, max(1, len(trees) * cfg.max_inflight))
    pool = ThreadPoolExecutor(threads, thread_name_prefix="search-async")
    try:
        for i in range(len(trees)):
            fill(i)
        while any(pending):
            request, step, gen, code, verdict, error = events.get()
            if error is not None:
                raise error
            pending[request.tree] = [r for r in pending[request.tree] if r is not request]
            search.land(trees[request.tree], request, gen, code, verdict, step)
            fill(request.tree)
            if on_step is not None:
                on_step(trees)
    finally:
        pool.shutdown(wait=False, cancel_futures=True)
    return trees
