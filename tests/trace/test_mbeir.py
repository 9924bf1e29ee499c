"""The M-BEIR loader on fixture files in the released layout (tests/fixtures/mbeir): evaluation sets on local and
global pools, qrels, instructions, training rows, evaluation with a fake encoder, and every bad-file error."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pytest
import torch

from trl_mars.embed.evaluation import image_key
from trl_mars.embed.mbeir import (
    TASK_INSTRUCTIONS,
    Instructions,
    MBEIRError,
    evaluate_mbeir,
    load_candidate_pool,
    load_mbeir_eval,
    load_mbeir_train,
    load_queries,
    task_of,
)

sys.path.insert(0, str(Path(__file__).parent))  # --import-mode=importlib: the helper sits here
from fake_encoder import FakeEncoder  # noqa: E402

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "mbeir"
SETS = ("cirr_task7", "mscoco_task0", "webqa_task1")
CIRR_PROMPT = "Retrieve a day-to-day image that matches the reference image modified as described."
COCO_PROMPT = "Identify the image showcasing the described everyday scene."
WEBQA_PROMPT = "Retrieve passages from Wikipedia that answer the question."


@pytest.fixture
def root(tmp_path) -> Path:
    """A writable copy of the fixture, to break one file at a time."""
    return Path(shutil.copytree(FIXTURE, tmp_path / "mbeir"))


def rewrite(path: Path, edit) -> None:
    """Apply ``edit(records)`` to a jsonl file."""
    records = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    edit(records)
    path.write_text("".join(json.dumps(r) + "\n" for r in records))


def test_local_pools_qrels_and_instructions():
    data = load_mbeir_eval(FIXTURE, SETS, pools=("local",))
    dids = ["8:1", "8:2", "8:3", "9:1", "9:2", "9:3", "2:1", "2:2", "2:3"]  # the local pools, in file order
    assert len(data.corpus) == 9
    assert data.local_pools == {"cirr_task7": [0, 1, 2], "mscoco_task0": [3, 4, 5], "webqa_task1": [6, 7, 8]}
    assert data.tasks == ["cirr_task7"] * 2 + ["mscoco_task0"] * 2 + ["webqa_task1"] * 2
    # cirr from its qrels (relevance 0 of 8:1 does not count); mscoco and webqa from pos_cand_list
    assert data.relevant == [{0}, {1, 2}, {3}, {5}, {6}, {8}]
    assert [dids[min(r)] for r in data.relevant] == ["8:1", "8:2", "9:1", "9:3", "2:1", "2:3"]
    assert data.queries[0] == f"{CIRR_PROMPT} make it red" and data.queries[2] == f"{COCO_PROMPT} a yellow square"
    assert data.queries[5] == f"{WEBQA_PROMPT} How high is Everest?"  # its task id derived: text -> text = 1
    orange = str(FIXTURE / "mbeir_images" / "cirr_images" / "query_orange.png")
    assert data.query_images == [orange, orange, None, None, None, None]
    assert data.corpus[:6] == [""] * 6 and data.corpus[6] == "Paris is the capital of France."
    assert data.corpus_images[0] == str(FIXTURE / "mbeir_images" / "cirr_images" / "red.png")
    assert all(Path(p).is_file() for p in data.corpus_images[:6]) and data.corpus_images[6:] == [None] * 3
    assert data.is_complex == [False, True, False, False, False, False]
    assert data.gold_reasoning[1] == "green or blue, nothing else."


def test_global_pool_is_the_union_file():
    data = load_mbeir_eval(FIXTURE, SETS, pools=("global", "local"), max_queries=1)
    assert len(data.corpus) == 10 and data.corpus[9] == "A news photo of a parade."  # the union's distractor
    assert data.corpus_images[9].endswith("parade.png")
    assert data.local_pools["webqa_task1"] == [6, 7, 8] and len(data.queries) == 3  # max_queries per set


def test_evaluation_on_local_and_global_pools_by_hand():
    data = load_mbeir_eval(FIXTURE, SETS, pools=("global", "local"))
    eye = torch.eye(10).tolist()
    candidates = {(t, image_key(i)): v for t, i, v in zip(data.corpus, data.corpus_images, eye)}
    e = dict(zip(["8:1", "8:2", "8:3", "9:1", "9:2", "9:3", "2:1", "2:2", "2:3", "3:1"], torch.eye(10)))
    wanted = [
        e["8:1"],  # hit at 1
        0.6 * e["8:1"] + 0.4 * e["8:3"],  # 8:1 is not relevant to this query: miss at 1, hit at 2
        e["9:1"],  # hit
        0.9 * e["3:1"] + 0.5 * e["9:3"],  # the union's distractor first; in the local pool 9:3 first
        e["2:1"],  # hit
        0.8 * e["8:2"] + 0.3 * e["2:3"],  # a cirr image first globally; locally 2:3 first
    ]
    queries = {(t, image_key(i)): v.tolist() for t, i, v in zip(data.queries, data.query_images, wanted)}
    encoder = FakeEncoder(queries, candidates)
    results = evaluate_mbeir(encoder, FIXTURE, SETS, pools=("global", "local"), modes=("direct",), ks=(1, 5))
    row = results["direct"]
    assert row["hit@1"] == pytest.approx(3 / 6) and row["local/hit@1"] == pytest.approx(5 / 6)
    assert row["hit@5"] == 1.0 and row["local/hit@5"] == 1.0
    assert row["hit@1/cirr_task7"] == 0.5 and row["local/hit@1/cirr_task7"] == 0.5
    assert row["hit@1/mscoco_task0"] == 0.5 and row["local/hit@1/mscoco_task0"] == 1.0
    assert row["hit@1/webqa_task1"] == 0.5 and row["local/hit@1/webqa_task1"] == 1.0
    assert row["reasoning_rate/cirr_task7"] == 0.0
    (corpus_call,) = [c for c in encoder.calls if c["kind"] == "candidate"]
    assert len(corpus_call["texts"]) == 10  # one encoding of the corpus for both pools and all sets


def test_train_rows_with_instructions_images_and_hard_negatives():
    rows = load_mbeir_train(FIXTURE, hard_negatives=1, seed=0)
    assert len(rows) == 3 and rows == load_mbeir_train(FIXTURE, hard_negatives=1, seed=0)
    columns = {"query", "query_target", "positive", "positive_image", "query_image", "negative", "negative_image"}
    assert all(set(r) == columns for r in rows)
    images = FIXTURE / "mbeir_images" / "cirr_images"
    first = rows[0]
    assert first["query"].endswith(" make it red") and first["query_target"] == "the reference object, now red."
    prompts = ("Retrieve a day-to-day image that matches", "Find the everyday image that the edit")
    assert first["query"].startswith(prompts)
    assert first["query_image"] == str(images / "query_orange.png")
    assert first["positive"] == "" and first["positive_image"] == str(images / "red.png")
    assert first["negative_image"] in {str(images / "green.png"), str(images / "purple.png")}
    assert rows[2]["positive"] == "Paris is the capital of France." and rows[2]["positive_image"] is None
    assert rows[2]["negative"] == "The Nile flows north." and rows[2]["query_image"] is None
    two = load_mbeir_train(FIXTURE, hard_negatives=2)
    assert {"negative_1", "negative_1_image", "negative_2", "negative_2_image"} <= set(two[0])
    assert {two[0]["negative_1_image"], two[0]["negative_2_image"]} == {
        str(images / "green.png"),
        str(images / "purple.png"),
    }
    assert two[1]["negative_1_image"] == two[1]["negative_2_image"] == str(images / "red.png")  # wraps around
    variants = {r["query"] for seed in range(8) for r in load_mbeir_train(FIXTURE, seed=seed)[:1]}
    assert len(variants) == 2  # a random instruction variant per row, as UniIR trains


def test_without_the_instruction_file_the_task_instruction_is_used(root):
    (root / "instructions" / "query_instructions.tsv").unlink()
    data = load_mbeir_eval(root, ("webqa_task1",))
    assert data.queries[0] == f"{TASK_INSTRUCTIONS[1]} What is the capital of France?"
    assert Instructions.from_root(root).table is None
    assert data.is_complex is None and data.gold_reasoning is None  # no query_target in webqa
    assert task_of("image,text", "image") == 7
    with pytest.raises(ValueError, match="no M-BEIR task maps 'image' -> 'image,text'"):
        task_of("image", "image,text")


def test_positives_of_other_datasets_are_dropped_without_qrels(root):
    """UniIR's evaluation keeps only the positives of the query's own dataset (OVEN and InfoSeek cross over)."""

    def cross(records):
        records[0]["pos_cand_list"] = ["9:2", "2:1"]  # a webqa query with an mscoco positive first

    rewrite(root / "query" / "test" / "mbeir_webqa_task1_test.jsonl", cross)
    data = load_mbeir_eval(root, ("webqa_task1",), pools=("global",))
    assert data.relevant[0] == {data.corpus.index("Paris is the capital of France.")}


QUERY = Path("query/test/mbeir_cirr_task7_test.jsonl")
POOL = Path("cand_pool/local/mbeir_cirr_task7_cand_pool.jsonl")


@pytest.mark.parametrize(
    "path, edit, message",
    [
        (
            QUERY,
            lambda r: r[1].pop("pos_cand_list"),
            r"mbeir_cirr_task7_test.jsonl:2: missing key\(s\) \['pos_cand_list'\]",
        ),
        (
            QUERY,
            lambda r: r[0].update(pos_cand_list=["8:99"]),
            r"test.jsonl:1: candidate id\(s\) \['8:99'\] are not in the candidate pool",
        ),
        (
            QUERY,
            lambda r: r[0].update(query_img_path="mbeir_images/none.png"),
            r"test.jsonl:1: query_img_path 'mbeir_images/none.png' not found under the image root",
        ),
        (QUERY, lambda r: r[0].update(query_modality="video"), r"test.jsonl:1: query_modality 'video' is not one of"),
        (
            QUERY,
            lambda r: r[0].update(query_txt=None),
            r"test.jsonl:1: query_modality is 'image,text' but the text is empty",
        ),
        (QUERY, lambda r: r[0].update(task_id=5), r"test.jsonl:1: task_id 5 is not an M-BEIR task"),
        (QUERY, lambda r: r[0].update(task_id=6), r"test.jsonl:1: a cirr_task6 query in the file of 'cirr_task7'"),
        (QUERY, lambda r: r[1].update(qid="8:101"), r"test.jsonl:2: duplicate qid '8:101'"),
        (QUERY, lambda r: r[0].update(qid="cirr-101"), r"test.jsonl:1: qid 'cirr-101' is not '<dataset_id>:<n>'"),
        (QUERY, lambda r: r[0].update(pos_cand_list=[]), r"test.jsonl:1: pos_cand_list is empty"),
        (
            POOL,
            lambda r: r[2].update(img_path="mbeir_images/cirr_images/gone.png"),
            r"cand_pool.jsonl:3: img_path 'mbeir_images/cirr_images/gone.png' not found",
        ),
        (POOL, lambda r: r[1].update(did="8:1"), r"cand_pool.jsonl:2: duplicate did '8:1'"),
        (POOL, lambda r: r[0].pop("modality"), r"cand_pool.jsonl:1: missing key\(s\) \['modality'\]"),
        (
            POOL,
            lambda r: r[0].update(img_path=None),
            r"cand_pool.jsonl:1: modality is 'image' but there is no image path",
        ),
    ],
)
def test_bad_rows_fail_naming_file_and_line(root, path, edit, message):
    rewrite(root / path, edit)
    with pytest.raises(MBEIRError, match=message):
        load_mbeir_eval(root, ("cirr_task7",))


def test_bad_files_fail_before_any_encoding(root):
    encoder = FakeEncoder({}, {})
    (root / QUERY).write_text((root / QUERY).read_text() + "{not json\n")
    with pytest.raises(MBEIRError, match=r"mbeir_cirr_task7_test.jsonl:3: not valid JSON"):
        evaluate_mbeir(encoder, root, ("cirr_task7",))
    assert encoder.calls == []
    qrels = root / "qrels" / "test" / "mbeir_cirr_task7_test_qrels.txt"
    shutil.copy(FIXTURE / QUERY, root / QUERY)
    qrels.write_text("8:101 0 8:1 1 7\n8:102 0 8:2\n")
    with pytest.raises(MBEIRError, match=r"qrels.txt:2: expected 'qid 0 did relevance task_id'"):
        load_mbeir_eval(root, ("cirr_task7",))
    qrels.write_text("8:101 0 8:1 1 7\n8:102 0 9:1 1 7\n")
    with pytest.raises(MBEIRError, match=r"qid '8:102' has relevant dids \['9:1'\] outside the pool"):
        load_mbeir_eval(root, ("cirr_task7",))
    qrels.write_text("8:101 0 8:1 1 7\n")
    with pytest.raises(MBEIRError, match=r"no relevant candidate for qid '8:102'"):
        load_mbeir_eval(root, ("cirr_task7",))
    (root / POOL).unlink()
    with pytest.raises(
        MBEIRError,
        match=r"no local candidate pool for 'cirr_task7': neither .*mbeir_cirr_task7_test_cand_pool.jsonl nor",
    ):
        load_mbeir_eval(root, ("cirr_task7",))
    with pytest.raises(ValueError, match=r"'cirr_task9' is not '<dataset>_task<N>'"):
        load_mbeir_eval(root, ("cirr_task9",))
    with pytest.raises(ValueError, match=r"pools must be a non-empty subset"):
        load_mbeir_eval(root, ("cirr_task7",), pools=("union",))
    with pytest.raises(MBEIRError, match=r"no local candidate pool for 'nights_task4'"):
        load_mbeir_eval(root, ("nights_task4",))
    shutil.copy(FIXTURE / POOL, root / POOL)
    (root / QUERY).unlink()
    with pytest.raises(MBEIRError, match=r"mbeir_cirr_task7_test.jsonl: no such file"):
        load_mbeir_eval(root, ("cirr_task7",))


def test_train_errors_name_the_line(root):
    rewrite(root / "query" / "union_train" / "mbeir_union_up_train.jsonl", lambda r: r[1].update(neg_cand_list=[]))
    with pytest.raises(MBEIRError, match=r"mbeir_union_up_train.jsonl:2: neg_cand_list is empty but hard_negatives=1"):
        load_mbeir_train(root, hard_negatives=1)
    tsv = root / "instructions" / "query_instructions.tsv"
    tsv.write_text("\n".join(tsv.read_text().splitlines()[:2]) + "\n")  # only CIRR's row left
    with pytest.raises(
        MBEIRError, match=r"train.jsonl:3: query_instructions.tsv has no instruction for dataset 2, text -> text"
    ):
        load_mbeir_train(root)
    pool = load_candidate_pool(FIXTURE / POOL, FIXTURE)
    assert list(pool) == ["8:1", "8:2", "8:3"]
    assert load_queries(FIXTURE / QUERY, pool, FIXTURE)[1].positives == ("8:2", "8:3")
    rewrite(
        root / "query" / "union_train" / "mbeir_union_up_train.jsonl", lambda r: r[2].update(neg_cand_list=["7:5"])
    )
    with pytest.raises(MBEIRError, match=r"train.jsonl:3: candidate id\(s\) \['7:5'\] are not in the candidate pool"):
        load_mbeir_train(root)
    rewrite(root / QUERY, lambda r: r[1].update(neg_cand_list=["7:5"]))
    assert len(load_mbeir_eval(root, ("cirr_task7",)).queries) == 2  # evaluation ignores negatives


@pytest.fixture
def saved_model(trace_model_path, trace_args, trace_task, tmp_path):
    from datasets import Dataset

    from trl_mars.trainers.trace_trainer import TraceEmbedTrainer

    dataset = Dataset.from_list(trace_task.train_rows(hard_negative=False)[:8])
    trainer = TraceEmbedTrainer(trace_model_path, args=trace_args(), train_dataset=dataset)
    trainer.save_model(str(tmp_path / "model"))
    return tmp_path / "model"


def test_cli_evaluates_a_saved_model_on_text_sets(saved_model, tmp_path, capsys):
    from trl_mars.embed.encoder import TraceEncoder
    from trl_mars.embed.evaluation import evaluate_retrieval_set
    from trl_mars.embed.mbeir_cli import main

    out = tmp_path / "mbeir.json"
    # webqa_task1's local pool is text only: today's text encoder runs it (the union pool holds images)
    argv = ["--model", str(saved_model), "--root", str(FIXTURE), "--eval_sets", "webqa_task1", "--pools", "local"]
    argv += ["--modes", "direct", "--ks", "1", "5", "--output_json", str(out)]
    results = main(argv)
    printed = capsys.readouterr().out
    assert "[mbeir] 2 queries of webqa_task1; corpus 3" in printed and "local/hit@5/webqa_task1" in printed
    assert out.read_text() == json.dumps(results, indent=2) and set(results) == {"direct"}  # no CoT: no gold row
    data = load_mbeir_eval(FIXTURE, ("webqa_task1",), pools=("local",))
    want = evaluate_retrieval_set(
        TraceEncoder.from_pretrained(saved_model), data, modes=("direct",), ks=(1, 5), pools=("local",)
    )
    assert not any(key.startswith("hit@") for key in results["direct"])  # the global pool was not asked for
    for key in ("local/hit@1", "local/hit@5", "local/recall@5/webqa_task1", "local/mrr@5"):
        assert results["direct"][key] == pytest.approx(want["direct"][key]), key
    assert results["direct"]["local/hit@5"] == 1.0  # a pool of 3 candidates: every query hits in the top 5


def test_cli_rejects_bad_arguments_before_the_model_loads(root, capsys):
    from trl_mars.embed.mbeir_cli import main

    with pytest.raises(SystemExit):
        main(["--model", "none", "--root", str(root), "--eval_sets", "cirr_task9"])
    assert "invalid choice: 'cirr_task9'" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["--model", "none", "--root", str(root), "--ks", "0"])
    rewrite(root / QUERY, lambda r: r[0].pop("qid"))
    with pytest.raises(MBEIRError, match=r"test.jsonl:1: missing key\(s\) \['qid'\]"):
        main(["--model", "no/such/model", "--root", str(root)])  # the data fails first: the model is never read


def test_a_local_pool_outside_the_union_pool_is_rejected(root):
    rewrite(root / "cand_pool" / "global" / "mbeir_union_test_cand_pool.jsonl", lambda r: r.pop(0))  # drop 8:1
    with pytest.raises(MBEIRError, match=r"local pool of 'cirr_task7' has dids \['8:1'\] that are not in the union"):
        load_mbeir_eval(root, ("cirr_task7",), pools=("global",))
    assert len(load_mbeir_eval(root, ("cirr_task7",), pools=("local",)).corpus) == 3  # the union is not read
