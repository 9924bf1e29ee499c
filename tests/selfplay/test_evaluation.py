"""Held-out answer accuracy for self-play: offline MovieLens questions outside the corpus, any local/hub QA dataset,
boxed answers graded with the default grader."""

import json

import pytest

from trl_mars.selfplay.evaluation import answer_accuracy, load_qa_dataset, movielens_heldout


def test_movielens_heldout_questions_are_outside_the_corpus():
    from trl_mars.data.movielens import load_movielens, split_year
    from trl_mars.selfplay.movielens_corpus import build_movielens_documents

    qa = movielens_heldout(12, skip=150)
    assert len(qa) == 12 and len({q for q, _ in qa}) == 12
    corpus = build_movielens_documents(load_movielens(), max_movies=150)
    names = {split_year(d.title)[0] for d in corpus if d.level == 4}
    assert not any(f"the film {name} " in q or f"the film {name}," in q for q, _ in qa for name in names)
    kinds = {q.split()[0] for q, _ in qa}
    assert kinds >= {"In", "Name"}  # year and genre questions (cycled per movie)
    with pytest.raises(ValueError, match="held-out movies"):
        movielens_heldout(100_000)


def test_load_qa_dataset_from_a_local_file(tmp_path):
    path = tmp_path / "qa.jsonl"
    rows = [{"problem": "What is 2+3?", "solution": 5}, {"problem": "What is 10/4?", "solution": "5/2"}]
    path.write_text("\n".join(json.dumps(r) for r in rows))
    qa = load_qa_dataset(str(path), question_column="problem", answer_column="solution")
    assert qa == [("What is 2+3?", "5"), ("What is 10/4?", "5/2")]
    assert load_qa_dataset(str(path), question_column="problem", answer_column="solution", limit=1) == qa[:1]
    with pytest.raises(ValueError, match=r"no column 'answer'"):
        load_qa_dataset(str(path), question_column="problem")
    # graded as the trainer grades: 2.5 == 5/2, the second sample of each question has no box
    result = answer_accuracy(lambda qs, k: [[r"\boxed{5}", "five"], [r"\boxed{2.5}", "?"]][: len(qs)], qa, samples=2)
    assert (result.accuracy, result.boxed_rate, result.num_samples) == (0.5, 0.5, 4)


def test_corpus_questions_are_checkable_against_the_corpus_documents():
    """``movielens_heldout(n, skip=0)`` (the recipe's ``--eval_corpus_questions``): questions about the corpus's own
    movies, each gold answer stated by that movie's document (what a document-grounded Challenger can teach)."""
    from trl_mars.data.movielens import load_movielens, split_year
    from trl_mars.selfplay.movielens_corpus import build_movielens_documents

    qa = movielens_heldout(20, skip=0)
    docs = {
        split_year(d.title)[0]: d for d in build_movielens_documents(load_movielens(), max_movies=20) if d.level == 4
    }
    for question, answer in qa:
        name = next(n for n in docs if f"the film {n} " in question or f"the film {n}," in question)
        assert answer in docs[name].text, (question, answer)


def test_load_qa_dataset_from_a_saved_folder_and_parquet(tmp_path):
    from datasets import Dataset

    data = Dataset.from_dict({"question": ["What is 6*7?", "Capital of France?"], "answer": ["42", "Paris"]})
    data.save_to_disk(str(tmp_path / "saved"))
    data.to_parquet(str(tmp_path / "qa.parquet"))
    expected = [("What is 6*7?", "42"), ("Capital of France?", "Paris")]
    assert load_qa_dataset(str(tmp_path / "saved")) == expected
    assert load_qa_dataset(str(tmp_path / "qa.parquet")) == expected
    with pytest.raises(ValueError, match=r"qa\.txt: unsupported file type 'txt'"):
        (tmp_path / "qa.txt").write_text("x")
        load_qa_dataset(str(tmp_path / "qa.txt"))
