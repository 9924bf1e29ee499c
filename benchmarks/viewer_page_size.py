"""Size of the tree viewer's page for a HumanEval-sized run, against embedding every node field.

Synthetic trees shaped like a ``trl-mars search --mode both`` run with two agents on HumanEval: 164 problems x 3
runs (system, one per agent), ``--nodes`` per tree in a random shape, each node with a HumanEval-length prompt
(``--prompt-tokens`` ids), a ``--completion-tokens`` completion (about 4 characters a token) with its ids and
log-probs, code and detailed feedback, as the search records them. "all fields" is the JSON of every node field
(what the viewer embedded before it carried only what it shows). Prints a table, then one JSON line.

    python benchmarks/viewer_page_size.py [--problems 164] [--nodes 8] [--completion-tokens 512]
"""

from __future__ import annotations

import argparse
import json
import random
import time
from dataclasses import asdict

from trl_mars.search.tree import SearchTree
from trl_mars.search.viewer import render_html


def synthetic_trees(problems: int, nodes: int, prompt_tokens: int, completion_tokens: int) -> list[SearchTree]:
    rng = random.Random(0)
    trees = []
    for run, agents in (("system", ["qwen", "llama"]), ("agent:qwen", ["qwen"]), ("agent:llama", ["llama"])):
        for p in range(problems):
            tree = SearchTree(f"{run}/HumanEval/{p}", f"HumanEval/{p}")
            question = f"Complete the following Python function.\n\n```python\ndef f_{p}(x):\n    " + "doc " * 100
            for step in range(nodes):
                parent = 0 if step < 2 or rng.random() < 0.4 else rng.randrange(1, len(tree.nodes))
                code = f"def f_{p}(x):\n" + "".join(f"    y{i} = x + {i}\n" for i in range(12)) + "    return y0\n"
                score = float(rng.random() < 0.3)
                tree.add(
                    parent,
                    rng.choice(agents),
                    step,
                    prompt=[{"role": "user", "content": question}],
                    prompt_ids=[rng.randrange(150_000) for _ in range(prompt_tokens)],
                    completion="x" * (4 * completion_tokens - len(code)) + code,
                    completion_ids=[rng.randrange(150_000) for _ in range(completion_tokens)],
                    logprobs=[-rng.random() * 3 for _ in range(completion_tokens)],
                    code=code,
                    score=score,
                    pass_fraction=score or rng.random(),
                    feedback={"summary": "Passed 1 of 3 tests.", "detailed": "Test 0: FAIL\n  input: 3\n" * 4},
                    private_score=score,
                )
            trees.append(tree)
    return trees


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--problems", type=int, default=164)
    parser.add_argument("--nodes", type=int, default=8)
    parser.add_argument("--prompt-tokens", type=int, default=300)
    parser.add_argument("--completion-tokens", type=int, default=512)
    args = parser.parse_args()
    trees = synthetic_trees(args.problems, args.nodes, args.prompt_tokens, args.completion_tokens)
    start = time.perf_counter()
    page = render_html(trees)
    seconds = time.perf_counter() - start
    all_fields = json.dumps({t.tree_id: [asdict(n) for n in t.nodes] for t in trees})
    row = {
        "trees": len(trees),
        "nodes": sum(map(len, trees)),
        "page_mb": len(page.encode()) / 1e6,
        "all_fields_mb": len(all_fields.encode()) / 1e6,
        "render_s": seconds,
    }
    print(f"{'trees':>6} {'nodes':>6} {'page MB':>9} {'all fields MB':>14} {'render s':>9}")
    print(
        f"{row['trees']:>6} {row['nodes']:>6} {row['page_mb']:>9.2f} {row['all_fields_mb']:>14.2f} "
        f"{row['render_s']:>9.2f}"
    )
    print(json.dumps(row))


if __name__ == "__main__":
    main()
