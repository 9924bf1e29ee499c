"""Grading, Challenger parsing, memory bank, corpora (local BM25, SearXNG over loopback), encoders, MovieLens docs."""

import json

import numpy as np
import pytest

from trl_mars.selfplay.corpus import (
    CorpusEnvironment,
    Document,
    LocalCorpus,
    title_similarity,
)
from trl_mars.selfplay.encoders import CodeAbstractionEncoder, HashingEncoder, extract_code
from trl_mars.selfplay.grading import answers_match, extract_boxed, get_grader
from trl_mars.selfplay.memory import MemoryBank
from trl_mars.selfplay.questions import parse_json_question, parse_proposition, parse_tagged_question

DOC = "Heat (1995) is a film. It was released in 1995. Its genres are Action, Crime, Thriller."


def test_boxed_extraction_and_default_grader():
    assert extract_boxed(r"so \boxed{\frac{1}{2}} done") == r"\frac{1}{2}"
    assert extract_boxed(r"\boxed{1} then \boxed{2}") == "2"
    assert extract_boxed("no box") is None and extract_boxed(r"\boxed{unclosed") is None
    assert answers_match(r"\frac{1}{2}", "0.5") and answers_match("50%", "0.5") and answers_match("1,000", "1000")
    assert answers_match("(B)", "b") and answers_match(r"\text{Drama}.", "drama")
    assert not answers_match("1995", "1996") and not answers_match("", "1995")


def test_math_verify_grader_needs_its_package():
    pytest.importorskip("trl_mars")  # always present; the branch below depends on math-verify being absent
    try:
        import math_verify  # noqa: F401
    except ImportError:
        with pytest.raises(ImportError, match="math-verify"):
            get_grader("math_verify")
    with pytest.raises(ValueError, match="grader must be one of"):
        get_grader("sympy")


def test_parse_tagged_question():
    ok = parse_tagged_question(r"<question>What is 2+3?</question> \boxed{5}")
    assert ok.valid and ok.question == "What is 2+3?" and ok.answer == "5"
    assert parse_tagged_question("What is 2+3? \\boxed{5}").error == "missing <question> tags"
    assert not parse_tagged_question("<question>Hi</question>", min_chars=10).valid


def test_parse_json_question_rules():
    question = "In which year was the crime film Heat released in cinemas?"
    good = json.dumps({"question": question, "correct_answer": "1995"})
    parsed = parse_json_question(f"Sure! {good} hope it helps", document=DOC)
    assert parsed.valid and parsed.answer == "1995"
    assert parse_json_question(good, document=DOC.replace("1995", "")).error == "answer not found in the document"
    assert parse_json_question("not json at all {oops").error == "no JSON object"
    assert parse_json_question('["a list"]').error == "no JSON object"
    assert parse_json_question(json.dumps({"question": question})).error == "missing question or correct_answer"
    short = json.dumps({"question": "Year of Heat?", "correct_answer": "1995"})
    assert "shorter" in parse_json_question(short).error
    refers = json.dumps(
        {"question": "According to the document, in which year was Heat released?", "correct_answer": "1995"}
    )
    assert parse_json_question(refers).error == "question refers to the document"
    vague = json.dumps({"question": question, "correct_answer": "an integer"})
    assert parse_json_question(vague).error == "answer is not a short checkable value"
    mcq = json.dumps({"question": f"{question} A) 1990 B) 1995 C) 2000 D) 2005", "correct_answer": "(B)"})
    assert parse_json_question(mcq, question_type="mcq").answer == "B"
    assert not parse_json_question(good, question_type="mcq").valid
    assert parse_json_question(mcq).error == "free-form question has options"
    assert parse_proposition("[Proposition Start] Film noir [Proposition End]") == "Film noir"
    assert parse_proposition("No more topics.") == "no more" and parse_proposition("???") is None


def test_memory_bank_iterations_sampling_round_trip():
    bank = MemoryBank()
    assert bank.embeddings().shape == (0, 0) and bank.sample(3, np.random.default_rng(0)) == []
    bank.add("q1", np.array([1.0, 0.0]), "1", iteration=1)
    bank.add("q2", [0.0, 1.0], "2", iteration=2)
    assert bank.embeddings(before_iteration=2).tolist() == [[1.0, 0.0]]
    assert bank.embeddings(before_iteration=1).shape == (0, 0) and len(bank.embeddings()) == 2
    assert {e.question for e in bank.sample(20, np.random.default_rng(0))} == {"q1", "q2"}
    assert MemoryBank.from_dict(json.loads(json.dumps(bank.to_dict()))).to_dict() == bank.to_dict()


def test_local_corpus_errors_search_and_environment(tmp_path):
    with pytest.raises(ValueError, match="corpus is empty"):
        LocalCorpus([Document("a", "A", "   ")])
    with pytest.raises(ValueError, match="unique doc_id"):
        LocalCorpus([Document("a", "A", "x y"), Document("a", "B", "x z")])
    path = tmp_path / "docs.jsonl"
    rows = [
        {"title": "Comedy", "text": "Comedy films make people laugh.", "level": 2},
        {"title": "Comedy with Romance", "text": "Romantic comedy films: Comedy and Romance.", "level": 3},
        {"title": "Horror", "text": "Horror films frighten.", "level": 2},
    ]
    path.write_text("\n".join(json.dumps(r) for r in rows))
    corpus = LocalCorpus.from_jsonl(path)
    assert corpus.search("romance comedy", 2)[0].title == "Comedy with Romance"
    assert corpus.search("the of and", 3) == []  # only stopwords
    env = CorpusEnvironment(corpus, title_threshold=0.8)
    assert env.title_match == "string"  # bare titles
    # "Comedy with Romance" is not similar enough to "Comedy"
    assert [d.doc_id for d in env.lookup(["Movies", "Comedy"])] == ["0"]
    assert env.lookup(["Movies", "Westerns"]) == []
    assert env.suggest(["Movies", "Comedy"], exclude=["Comedy"], level=3, k=5) == ["Comedy with Romance"]
    env.submit(7, ["Movies", "Horror"])
    assert env.poll() == {7: [corpus.get("2")]} and env.poll() == {}
    assert title_similarity("Toy Story", "toy story") == 1.0 and title_similarity("", "x") == 0.0


def test_hashing_and_code_abstraction_encoders():
    enc = HashingEncoder(dim=256)
    emb = enc.encode(["a heist film in Los Angeles", "a heist movie in Los Angeles", "solve x^2 = 4"])
    assert np.allclose(np.linalg.norm(emb, axis=1), 1.0)
    assert emb[0] @ emb[1] > emb[0] @ emb[2]
    calls = []

    def coder(prompts):
        calls.append(len(prompts))
        return ["<CODE>def solver(n1=2, n2=3):\n    return n1 + n2</CODE>" for _ in prompts]

    code_enc = CodeAbstractionEncoder(coder, enc)
    out = code_enc.encode(["What is 2+3?", "Add 2 and 3.", "What is 2+3?"])
    assert calls == [2]  # two distinct questions, one call; the repeat is cached
    assert np.allclose(out[0], out[1])  # same solver code: same skill embedding
    assert extract_code("<CODE>x = 1") == "x = 1" and extract_code("plain") == "plain"


def test_minilm_encoder_offline():
    from trl_mars.selfplay.encoders import minilm_encoder

    emb = minilm_encoder().encode(["a bank robbery film", "a movie about robbing a bank", "integrate x squared"])
    assert emb.shape == (3, 384)
    assert emb[0] @ emb[1] > 0.5 > emb[0] @ emb[2]


def test_movielens_documents_hold_checkable_facts():
    from trl_mars.data.movielens import load_movielens
    from trl_mars.selfplay.movielens_corpus import build_movielens_documents, movie_questions

    docs = build_movielens_documents(load_movielens(), max_movies=40)
    levels = {d.level for d in docs}
    assert levels == {1, 2, 3, 4} and sum(d.level == 4 for d in docs) == 40
    for doc in (d for d in docs if d.level == 4):
        for _, answer in movie_questions(doc):
            assert answer.casefold() in doc.text.casefold()


def test_warmup_chats_and_fitted_tiny_tokenizer(tmp_path):
    from transformers import AutoTokenizer

    from trl_mars.data.movielens import load_movielens
    from trl_mars.selfplay.movielens_corpus import build_movielens_documents
    from trl_mars.selfplay.warmup import tiny_model_for_warmup, warmup_examples
    from trl_mars.testing import tiny_model_path

    docs = build_movielens_documents(load_movielens(), max_movies=40)
    chats = warmup_examples(docs, "prompt", n=200, seed=0)
    replies = [chat[-1]["content"] for chat in chats]
    assert all(r.startswith(("<question>", "\\boxed{")) for r in replies)  # no tree proposals without a tree
    assert all(parse_tagged_question(r).valid for r in replies if r.startswith("<question>"))
    proposals = [c for c in warmup_examples(docs, "tree", 90) if "[Proposition Start]" in c[-1]["content"]]
    depths = {c[0]["content"].split("Path: ")[1].split(".\n")[0].count(" > ") for c in proposals}
    assert depths == {0, 1, 2}  # genre under Movies, sub-genre under a genre, movie under a sub-genre
    fitted = AutoTokenizer.from_pretrained(tiny_model_for_warmup("qwen2", chats, tmp_path / "tiny"))
    stock = AutoTokenizer.from_pretrained(tiny_model_path("qwen2"))
    tagged = next(r for r in replies if r.startswith("<question>"))
    assert len(fitted(tagged)["input_ids"]) * 2 < len(stock(tagged)["input_ids"])  # ~32 vs ~80 tokens
