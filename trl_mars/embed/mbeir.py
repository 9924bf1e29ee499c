"""M-BEIR (UniIR's universal multimodal retrieval benchmark) in its released layout: training rows and evaluation sets.

Layout (``TIGER-Lab/M-BEIR`` on the Hub; read as ``TIGER-AI-Lab/UniIR:src/data/mbeir_dataset.py`` and
``src/common/mbeir_retriever.py`` read it)::

    <root>/query/{train,val,test}/mbeir_<dataset>_task<N>_<split>.jsonl   one query per line
    <root>/cand_pool/local/mbeir_<dataset>_task<N>[_<split>]_cand_pool.jsonl  a dataset's own pool (MSCOCO: _test)
    <root>/cand_pool/global/mbeir_union_<split>_cand_pool.jsonl           the union pool of every dataset
    <root>/qrels/<split>/mbeir_<dataset>_task<N>_<split>_qrels.txt        "qid 0 did relevance task_id" lines
    <root>/instructions/query_instructions.tsv                           header, then query_modality, cand_modality,
                                                                         dataset name, dataset_id, prompt_1, ...
    <root>/mbeir_images/...                                              image files; ``img_path``s are relative

Query line: ``qid`` (``"<dataset_id>:<n>"``), ``query_txt`` (null for an image-only query), ``query_img_path``
(null for a text-only one), ``query_modality`` (``text``, ``image`` or ``image,text``), ``task_id`` (written by
UniIR's ``mbeir_data_generator.py --assign_task_ids``; derived from the query and positive modalities when absent),
``pos_cand_list`` and ``neg_cand_list`` (candidate ``did``s, or ``{"did": ...}`` objects as on the dataset card).
An optional ``query_target`` (the CoT of a complex query, TRACE's M-BEIR-CoT) is our extension. Candidate line:
``did``, ``txt``, ``img_path``, ``modality``.

Every line is checked when loaded, before any model runs: a missing key, a bad modality or task id, a candidate id
that is not in the pool, or an image file that does not exist raises ``MBEIRError`` naming the file and line.

**Instructions.** As UniIR does, a query's text is ``"<instruction> <query_txt>"``, the instruction picked by (the
qid's dataset id, the query modality, the positive's modality) from ``query_instructions.tsv``: ``prompt_1`` for
evaluation, a seeded random variant for training (UniIR picks a random one). Without that file, the task-level
instruction of ``TASK_INSTRUCTIONS`` is used (our wording, one per task id; M-BEIR's own are per dataset).

**Pools.** ``local``: each query ranks its own dataset/task pool (what TRACE and LamRA report); ``global``: the union
pool (UniIR's ``UNION``). Relevance comes from the qrels file when there is one, else from ``pos_cand_list``
restricted, as in UniIR's evaluation, to candidates of the query's own dataset (OVEN and InfoSeek positives cross
datasets). M-BEIR reports Recall@K as a hit rate (``hit@K`` here): @1/5/10, the headline R@5, R@10 for Fashion200K
and FashionIQ (``HEADLINE_K``).
"""

from __future__ import annotations

import json
import os
import random
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from trl_mars.embed.evaluation import RetrievalSet, evaluate_retrieval_set

# src/data/preprocessing/utils.py (UniIR): dataset ids and task ids (task 5, image -> image,text, is unused).
MBEIR_DATASETS = {
    0: "visualnews",
    1: "fashion200k",
    2: "webqa",
    3: "edis",
    4: "nights",
    5: "oven",
    6: "infoseek",
    7: "fashioniq",
    8: "cirr",
    9: "mscoco",
}
MBEIR_TASKS = {
    0: ("text", "image"),
    1: ("text", "text"),
    2: ("text", "image,text"),
    3: ("image", "text"),
    4: ("image", "image"),
    6: ("image,text", "text"),
    7: ("image,text", "image"),
    8: ("image,text", "image,text"),
}
MODALITIES = ("text", "image", "image,text")
# The 16 (dataset, task) evaluation pairs of M-BEIR (UniIR's retrieval.yaml / dataset_order).
MBEIR_EVAL_SETS = (
    "visualnews_task0", "mscoco_task0", "fashion200k_task0", "webqa_task1", "edis_task2", "webqa_task2",
    "visualnews_task3", "mscoco_task3", "fashion200k_task3", "nights_task4", "oven_task6", "infoseek_task6",
    "fashioniq_task7", "cirr_task7", "oven_task8", "infoseek_task8",
)  # fmt: skip
HEADLINE_K = {"fashion200k": 10, "fashioniq": 10}  # else 5 (the M-BEIR / TRACE tables)
# Task-level instructions used when <root>/instructions/query_instructions.tsv is absent (our wording).
TASK_INSTRUCTIONS = {
    0: "Retrieve an image that matches the given text.",
    1: "Retrieve a passage that answers or matches the given text.",
    2: "Retrieve an image with its text that matches the given text.",
    3: "Retrieve a text that describes the given image.",
    4: "Retrieve an image that is similar to the given image.",
    6: "Retrieve a text that answers the question about the given image.",
    7: "Retrieve an image that matches the given image modified as the text says.",
    8: "Retrieve an image with its text that answers the question about the given image.",
}


class MBEIRError(ValueError):
    """A malformed M-BEIR file, named with its line."""


@dataclass(frozen=True)
class MBEIRCandidate:
    did: str
    text: str
    image_path: str | None  # absolute (joined to the image root)
    modality: str


@dataclass(frozen=True)
class MBEIRQuery:
    qid: str
    text: str
    image_path: str | None  # absolute
    modality: str
    task_id: int
    positives: tuple[str, ...]
    negatives: tuple[str, ...]
    target: str  # CoT ("" for a simple query)
    source: str  # "file:line"

    @property
    def dataset_id(self) -> str:
        return self.qid.split(":", 1)[0]

    def label(self) -> str:
        """``<dataset>_task<N>``, M-BEIR's name for the evaluation set the query belongs to."""
        return f"{MBEIR_DATASETS.get(int(self.dataset_id), self.dataset_id)}_task{self.task_id}"


def _dataset_id(identifier: str, where: str, field: str) -> str:
    prefix, sep, _ = str(identifier).partition(":")
    if not sep or not prefix.isdigit():
        raise MBEIRError(f"{where}: {field} {identifier!r} is not '<dataset_id>:<n>'")
    return prefix


def read_jsonl(path: str | os.PathLike, keys: Sequence[str]) -> list[tuple[str, dict]]:
    """``("file:line", record)`` per non-empty line; ``MBEIRError`` naming the line for bad JSON or missing keys."""
    path = Path(path)
    if not path.is_file():
        raise MBEIRError(f"{path}: no such file")
    out = []
    with path.open(encoding="utf-8") as f:
        for number, line in enumerate(f, start=1):
            if not line.strip():
                continue
            where = f"{path}:{number}"
            try:
                record = json.loads(line)
            except json.JSONDecodeError as err:
                raise MBEIRError(f"{where}: not valid JSON ({err.msg})") from err
            if not isinstance(record, dict):
                raise MBEIRError(f"{where}: expected a JSON object, got {type(record).__name__}")
            missing = [k for k in keys if k not in record]
            if missing:
                raise MBEIRError(f"{where}: missing key(s) {missing}")
            out.append((where, record))
    return out


def _image(path: str | None, image_root: Path, where: str, field: str, check: bool) -> str | None:
    if not path:
        return None
    full = image_root / path
    if check and not full.is_file():
        raise MBEIRError(f"{where}: {field} {path!r} not found under the image root {image_root}")
    return str(full)


def _check_modality(modality, text, image, where: str, field: str) -> None:
    if modality not in MODALITIES:
        raise MBEIRError(f"{where}: {field} {modality!r} is not one of {list(MODALITIES)}")
    if "image" in modality and not image:
        raise MBEIRError(f"{where}: {field} is {modality!r} but there is no image path")
    if "text" in modality and not text:
        raise MBEIRError(f"{where}: {field} is {modality!r} but the text is empty")


def load_candidate_pool(
    path: str | os.PathLike, image_root: str | os.PathLike, check_images: bool = True
) -> dict[str, MBEIRCandidate]:
    """``{did: candidate}`` of a candidate-pool jsonl, in file order; image paths joined to ``image_root`` (and
    checked to exist with ``check_images``)."""
    root = Path(image_root)
    pool: dict[str, MBEIRCandidate] = {}
    for where, r in read_jsonl(path, ("did", "txt", "img_path", "modality")):
        did = str(r["did"])
        _dataset_id(did, where, "did")
        if did in pool:
            raise MBEIRError(f"{where}: duplicate did {did!r}")
        _check_modality(r["modality"], r["txt"], r["img_path"], where, "modality")
        image = _image(r["img_path"], root, where, "img_path", check_images)
        pool[did] = MBEIRCandidate(did, r["txt"] or "", image, r["modality"])
    return pool


def _ids(values, where: str, field: str) -> tuple[str, ...]:
    if not isinstance(values, list):
        raise MBEIRError(f"{where}: {field} must be a list of candidate ids, got {type(values).__name__}")
    out = []
    for v in values:
        did = v.get("did") if isinstance(v, dict) else v
        if did is None:
            raise MBEIRError(f"{where}: {field} has an entry without a did: {v!r}")
        out.append(str(did))
    return tuple(out)


def task_of(query_modality: str, candidate_modality: str) -> int:
    """M-BEIR's task id of (query modality, candidate modality) (UniIR's ``get_mbeir_task_id``)."""
    for task, pair in MBEIR_TASKS.items():
        if pair == (query_modality, candidate_modality):
            return task
    raise ValueError(f"no M-BEIR task maps {query_modality!r} -> {candidate_modality!r}")


def load_queries(
    path: str | os.PathLike,
    pool: dict[str, MBEIRCandidate],
    image_root: str | os.PathLike,
    check_images: bool = True,
    check_negatives: bool = True,
) -> list[MBEIRQuery]:
    """The queries of a query jsonl, every positive (and, with ``check_negatives``, negative) id checked against
    ``pool``."""
    root = Path(image_root)
    keys = ("qid", "query_txt", "query_img_path", "query_modality", "pos_cand_list", "neg_cand_list")
    queries, seen = [], set()
    for where, r in read_jsonl(path, keys):
        qid = str(r["qid"])
        _dataset_id(qid, where, "qid")
        if qid in seen:
            raise MBEIRError(f"{where}: duplicate qid {qid!r}")
        seen.add(qid)
        _check_modality(r["query_modality"], r["query_txt"], r["query_img_path"], where, "query_modality")
        positives = _ids(r["pos_cand_list"], where, "pos_cand_list")
        negatives = _ids(r["neg_cand_list"], where, "neg_cand_list")
        if not positives:
            raise MBEIRError(f"{where}: pos_cand_list is empty")
        unknown = [d for d in positives + (negatives if check_negatives else ()) if d not in pool]
        if unknown:
            raise MBEIRError(f"{where}: candidate id(s) {unknown[:5]} are not in the candidate pool")
        if "task_id" in r:
            task = r["task_id"]
            if not isinstance(task, int) or task not in MBEIR_TASKS:
                raise MBEIRError(f"{where}: task_id {task!r} is not an M-BEIR task ({sorted(MBEIR_TASKS)})")
        else:
            try:
                task = task_of(r["query_modality"], pool[positives[0]].modality)
            except ValueError as err:
                raise MBEIRError(f"{where}: no task_id and {err}") from err
        target = r.get("query_target") or ""
        if not isinstance(target, str):
            raise MBEIRError(f"{where}: query_target must be a string, got {type(target).__name__}")
        image = _image(r["query_img_path"], root, where, "query_img_path", check_images)
        queries.append(
            MBEIRQuery(
                qid, r["query_txt"] or "", image, r["query_modality"], task, positives, negatives, target, where
            )
        )
    return queries


def load_qrels(path: str | os.PathLike) -> dict[str, set[str]]:
    """``{qid: relevant dids}`` of a qrels file (``qid 0 did relevance task_id``; relevance > 0 counts)."""
    path = Path(path)
    qrels: dict[str, set[str]] = {}
    with path.open(encoding="utf-8") as f:
        for number, line in enumerate(f, start=1):
            if not line.strip():
                continue
            parts = line.split()
            if len(parts) != 5 or not parts[3].lstrip("-").isdigit():
                raise MBEIRError(f"{path}:{number}: expected 'qid 0 did relevance task_id', got {line.strip()!r}")
            if int(parts[3]) > 0:
                qrels.setdefault(parts[0], set()).add(parts[2])
    return qrels


def load_instructions(path: str | os.PathLike) -> dict[tuple[str, str, str], list[str]]:
    """``{(dataset_id, query_modality, candidate_modality): [prompt_1, ...]}`` of ``query_instructions.tsv``
    (header line skipped; columns as UniIR's ``_load_query_instructions`` reads them)."""
    path = Path(path)
    table = {}
    with path.open(encoding="utf-8") as f:
        lines = f.read().splitlines()
    for number, line in enumerate(lines[1:], start=2):
        if not line.strip():
            continue
        parts = line.split("\t")
        prompts = [p.strip() for p in parts[4:] if p.strip()]
        if len(parts) < 5 or not prompts:
            raise MBEIRError(f"{path}:{number}: expected query_modality, cand_modality, dataset, dataset_id, prompts")
        table[(parts[3].strip(), parts[0].strip(), parts[1].strip())] = prompts
    return table


class Instructions:
    """Picks a query's instruction: from ``query_instructions.tsv`` when given, else ``TASK_INSTRUCTIONS``."""

    def __init__(self, table: dict[tuple[str, str, str], list[str]] | None = None):
        self.table = table

    @classmethod
    def from_root(cls, root: str | os.PathLike) -> Instructions:
        path = Path(root, "instructions", "query_instructions.tsv")
        return cls(load_instructions(path) if path.is_file() else None)

    def __call__(self, query: MBEIRQuery, candidate_modality: str, rng: random.Random | None = None) -> str:
        """``prompt_1`` (or, with ``rng``, a random variant) for the query's dataset and modalities."""
        if self.table is None:
            return TASK_INSTRUCTIONS[query.task_id]
        prompts = self.table.get((query.dataset_id, query.modality, candidate_modality))
        if not prompts:
            raise MBEIRError(
                f"{query.source}: query_instructions.tsv has no instruction for dataset {query.dataset_id}, "
                f"{query.modality} -> {candidate_modality}"
            )
        return prompts[0] if rng is None else rng.choice(prompts)


def query_text(instruction: str, text: str) -> str:
    """UniIR's query string: ``"<instruction> <query_txt>"`` (the instruction alone for an image-only query)."""
    return f"{instruction} {text}".strip()


def train_rows(
    queries: Sequence[MBEIRQuery],
    pool: dict[str, MBEIRCandidate],
    instructions: Instructions | None = None,
    hard_negatives: int = 0,
    seed: int = 0,
) -> list[dict]:
    """TRACE rows: ``query`` (instruction + text), ``query_target`` (CoT or ""), ``query_image`` (path or None),
    ``positive``/``positive_image`` (a seeded choice among the positives), and ``hard_negatives`` negatives from
    ``neg_cand_list`` (``negative``/``negative_image`` for one, ``negative_<i>``/``negative_<i>_image`` for more;
    wrapping around a short list, as UniIR does); a query without negatives then fails naming its line."""
    if hard_negatives < 0:
        raise ValueError(f"hard_negatives must be >= 0, got {hard_negatives}")
    instructions = instructions or Instructions()
    rng = random.Random(seed)
    rows = []
    for q in queries:
        positive = pool[rng.choice(q.positives)]
        row = {
            "query": query_text(instructions(q, positive.modality, rng), q.text),
            "query_target": q.target,
            "positive": positive.text,
            "query_image": q.image_path,
            "positive_image": positive.image_path,
        }
        if hard_negatives:
            if not q.negatives:
                raise MBEIRError(f"{q.source}: neg_cand_list is empty but hard_negatives={hard_negatives}")
            order = list(q.negatives)
            rng.shuffle(order)
            for i in range(hard_negatives):
                name = "negative" if hard_negatives == 1 else f"negative_{i + 1}"
                negative = pool[order[i % len(order)]]
                row[name], row[f"{name}_image"] = negative.text, negative.image_path
        rows.append(row)
    return rows


def load_mbeir_train(
    root: str | os.PathLike,
    queries: str = "query/union_train/mbeir_union_up_train.jsonl",
    pool: str = "cand_pool/global/mbeir_union_train_cand_pool.jsonl",
    image_root: str | os.PathLike | None = None,
    hard_negatives: int = 0,
    seed: int = 0,
    check_images: bool = True,
) -> list[dict]:
    """``train_rows`` of a query file against a candidate pool (paths relative to ``root``; default: UniIR's union
    training files), with ``root``'s instructions; every line checked first."""
    root = Path(root)
    image_root = Path(image_root) if image_root is not None else root
    candidates = load_candidate_pool(root / pool, image_root, check_images)
    loaded = load_queries(root / queries, candidates, image_root, check_images)
    return train_rows(loaded, candidates, Instructions.from_root(root), hard_negatives, seed)


def local_pool_path(root: str | os.PathLike, name: str, split: str) -> Path:
    """``cand_pool/local/mbeir_<name>_<split>_cand_pool.jsonl`` when it exists (MSCOCO's test pools), else
    ``cand_pool/local/mbeir_<name>_cand_pool.jsonl``."""
    folder = Path(root, "cand_pool", "local")
    specific, shared = folder / f"mbeir_{name}_{split}_cand_pool.jsonl", folder / f"mbeir_{name}_cand_pool.jsonl"
    if specific.is_file():
        return specific
    if shared.is_file():
        return shared
    raise MBEIRError(f"no local candidate pool for {name!r}: neither {specific} nor {shared} exists")


def _check_eval_set_name(name: str) -> None:
    dataset, _, task = name.rpartition("_task")
    if dataset not in MBEIR_DATASETS.values() or not task.isdigit() or int(task) not in MBEIR_TASKS:
        raise ValueError(f"{name!r} is not '<dataset>_task<N>' with an M-BEIR dataset and task id")


def load_mbeir_eval(
    root: str | os.PathLike,
    eval_sets: Sequence[str] = ("cirr_task7",),
    split: str = "test",
    pools: Sequence[str] = ("local",),
    image_root: str | os.PathLike | None = None,
    instructions: Instructions | None = None,
    max_queries: int | None = None,
    check_images: bool = True,
) -> RetrievalSet:
    """The queries of ``eval_sets`` (``"<dataset>_task<N>"``, see ``MBEIR_EVAL_SETS``) of ``split`` as one
    ``RetrievalSet``: corpus = the union pool (``"global"`` in ``pools``) and/or the sets' local pools, each
    distinct did once; ``tasks`` = each query's set name, ``local_pools`` = each set's local pool. Relevance from
    ``qrels/<split>/`` when present, else ``pos_cand_list`` restricted to the query's dataset. ``max_queries``: the
    first ones of each set. Every file is checked before anything is returned."""
    root = Path(root)
    image_root = Path(image_root) if image_root is not None else root
    instructions = instructions or Instructions.from_root(root)
    unknown = [p for p in pools if p not in ("global", "local")]
    if unknown or not pools:
        raise ValueError(f"pools must be a non-empty subset of ('global', 'local'), got {list(pools)}")
    for name in eval_sets:
        _check_eval_set_name(name)
    candidates: dict[str, MBEIRCandidate] = {}
    if "global" in pools:
        candidates.update(
            load_candidate_pool(
                root / "cand_pool" / "global" / f"mbeir_union_{split}_cand_pool.jsonl", image_root, check_images
            )
        )
    local: dict[str, dict[str, MBEIRCandidate]] = {}
    for name in eval_sets:
        local[name] = load_candidate_pool(local_pool_path(root, name, split), image_root, check_images)
        if "global" in pools:
            missing = [d for d in local[name] if d not in candidates]
            if missing:
                raise MBEIRError(f"local pool of {name!r} has dids {missing[:5]} that are not in the union pool")
        for did, candidate in local[name].items():
            candidates.setdefault(did, candidate)
    dids = list(candidates)
    index = {did: i for i, did in enumerate(dids)}
    queries, relevant, labels, texts = [], [], [], []
    for name in eval_sets:
        path = root / "query" / split / f"mbeir_{name}_{split}.jsonl"
        # negatives are not used in evaluation (and may lie outside the evaluated pools)
        set_queries = load_queries(path, candidates, image_root, check_images, check_negatives=False)[:max_queries]
        qrels_path = root / "qrels" / split / f"mbeir_{name}_{split}_qrels.txt"
        qrels = load_qrels(qrels_path) if qrels_path.is_file() else None
        for q in set_queries:
            if q.label() != name:
                raise MBEIRError(f"{q.source}: a {q.label()} query in the file of {name!r}")
            own = [d for d in q.positives if d.split(":", 1)[0] == q.dataset_id] or list(q.positives)
            if qrels is not None:
                rel = qrels.get(q.qid)
                if not rel:
                    raise MBEIRError(f"{qrels_path}: no relevant candidate for qid {q.qid!r} ({q.source})")
                absent = sorted(d for d in rel if d not in local[name])
                if absent:
                    raise MBEIRError(f"{qrels_path}: qid {q.qid!r} has relevant dids {absent[:5]} outside the pool")
            else:
                rel = set(own)
                outside = sorted(d for d in rel if d not in local[name])
                if outside:
                    raise MBEIRError(f"{q.source}: positives {outside[:5]} are not in the local pool of {name!r}")
            positive = candidates[own[0]]  # its modality picks the instruction, as in UniIR's evaluation
            texts.append(query_text(instructions(q, positive.modality), q.text))
            queries.append(q)
            relevant.append({index[d] for d in rel})
            labels.append(name)
    with_cot = any(q.target for q in queries)  # CoT targets (M-BEIR-CoT): complex flags and a gold row
    return RetrievalSet(
        queries=texts,
        corpus=[candidates[d].text for d in dids],
        relevant=relevant,
        is_complex=[bool(q.target) for q in queries] if with_cot else None,
        gold_reasoning=[q.target for q in queries] if with_cot else None,
        query_images=[q.image_path for q in queries],
        corpus_images=[candidates[d].image_path for d in dids],
        tasks=labels,
        local_pools={name: [index[d] for d in local[name]] for name in eval_sets},
    )


def evaluate_mbeir(
    encoder,
    root: str | os.PathLike,
    eval_sets: Sequence[str] = ("cirr_task7",),
    split: str = "test",
    pools: Sequence[str] = ("local",),
    image_root: str | os.PathLike | None = None,
    max_queries: int | None = None,
    **kwargs,
) -> dict[str, dict[str, float]]:
    """Load ``eval_sets`` (``load_mbeir_eval``) and evaluate them (``evaluate_retrieval_set``) on the chosen pools:
    per mode, ``hit@K`` (M-BEIR's Recall@K) overall and per set (``hit@5/cirr_task7``; ``local/`` keys for the local
    pools), the reasoning rate per set and queries/s; the candidates are encoded once for all sets and pools."""
    data = load_mbeir_eval(root, eval_sets, split, pools, image_root, max_queries=max_queries)
    return evaluate_retrieval_set(encoder, data, pools=pools, **kwargs)
