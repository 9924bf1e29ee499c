"""Self-play reward pieces against hand-computed values."""

import math

import numpy as np
import pytest

from trl_mars.rewards.selfplay import (
    average_linkage_clusters,
    band_mask,
    bleu_repetition_penalty,
    challenger_reward,
    cluster_share_penalty,
    gauss_reward,
    learnability,
    majority_label,
    map_penalty,
    sentence_bleu,
    skill_repetition_penalty,
)


@pytest.mark.parametrize(
    "correct, expected", [(0, 0.044), (1, 0.372), (2, 0.823), (3, 0.988), (4, 1.0), (6, 0.823), (8, 0.044)]
)
def test_gauss_table_k8(correct, expected):
    assert gauss_reward(correct / 8) == pytest.approx(expected, abs=5e-4)


def test_challenger_reward_variants():
    assert challenger_reward(0.5, "rzero") == 1.0
    assert challenger_reward(0.3, "rzero") == pytest.approx(0.6)
    assert challenger_reward(0.3, "rzero", penalty=0.7) == 0.0  # floored after penalties
    # R-Diverse (eq. 11): no floor, so a penalised question scores below an invalid one (0)
    assert challenger_reward(0.3, "rzero", penalty=0.7, floor=False) == pytest.approx(-0.1)
    assert challenger_reward(0.3, "rzero_code", penalty=0.7) == pytest.approx(-0.4)  # min(p, 1-p), no floor
    assert challenger_reward(0.5, "gauss", penalty=0.25) == pytest.approx(0.75)
    with pytest.raises(ValueError, match="challenger reward kind"):
        challenger_reward(0.5, "ucb")
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        challenger_reward(1.5)


def test_learnability_and_band():
    assert [learnability(r) for r in (0.5, 0.3, 0.4, -0.1)] == [1, 0, None, 0]
    assert band_mask([0.2, 0.3, 0.8, 0.9]) == [False, True, True, False]
    with pytest.raises(ValueError, match="band"):
        band_mask([0.5], low=0.9, high=0.1)


def test_majority_label_counts_empty_answers_in_denominator():
    assert majority_label(["5", "5", "7", None, ""]) == ("5", pytest.approx(0.4))
    assert majority_label([None, ""]) == (None, 0.0)
    equal_numbers = lambda a, b: float(eval(a)) == float(eval(b))  # noqa: E731, S307 - test grader
    assert majority_label(["0.5", "1/2", "3"], equal_numbers) == ("0.5", pytest.approx(2 / 3))


def test_majority_label_survives_grader_exceptions():
    def boom(a, b):
        raise RuntimeError("grader crashed")

    assert majority_label(["a", "b", "a"], boom) == ("a", pytest.approx(2 / 3))


def test_sentence_bleu_hand_computed():
    hyp, ref = "the cat sat on the mat".split(), "the cat sat on a mat".split()
    # clipped precisions 5/6, 3/5, 2/4, 1/3; BP = 1
    assert sentence_bleu(hyp, ref) == pytest.approx((5 / 6 * 3 / 5 * 2 / 4 * 1 / 3) ** 0.25)
    # no matching unigram: 0 (NLTK returns 0 before smoothing)
    assert sentence_bleu("a b c d".split(), "w x y z".split()) == 0.0
    # one matching unigram of 4: p = (1/4, 0.1/3, 0.1/2, 0.1/1) with method1's epsilon = 0.1 on the zero orders
    assert sentence_bleu("a b c d".split(), "a x y z".split()) == pytest.approx((0.25 * 0.1 / 3 * 0.05 * 0.1) ** 0.25)
    # brevity penalty exp(1 - r/c) for a 2-token prefix of a 4-token reference; orders 3, 4 have no hypothesis
    # n-gram: 0/1 -> epsilon (as NLTK), not skipped
    assert sentence_bleu("a b".split(), "a b c d".split()) == pytest.approx(math.exp(1 - 2) * (0.1 * 0.1) ** 0.25)


def test_average_linkage_hand_case():
    d = np.array(
        [
            [0.0, 0.1, 0.6, 0.7],
            [0.1, 0.0, 0.4, 0.5],
            [0.6, 0.4, 0.0, 0.2],
            [0.7, 0.5, 0.2, 0.0],
        ]
    )
    # merges {0,1} at 0.1 and {2,3} at 0.2; then average distance (0.6+0.7+0.4+0.5)/4 = 0.55 >= 0.5: stop
    assert average_linkage_clusters(d, 0.5) == [0, 0, 1, 1]
    assert cluster_share_penalty([0, 0, 1, 1]) == [0.5] * 4
    # single linkage would merge at 0.4 < 0.45; average linkage does not
    assert len(set(average_linkage_clusters(d, 0.45))) == 2
    assert average_linkage_clusters(d, 0.56) == [0, 0, 0, 0]
    # a distance exactly at the threshold is not merged (sklearn's distance_threshold semantics)
    assert average_linkage_clusters(np.array([[0.0, 0.5], [0.5, 0.0]]), 0.5) == [0, 1]


def test_bleu_repetition_penalty_hand_case():
    penalties = bleu_repetition_penalty(["what is two plus two", "what is two plus two", "name a red fruit"])
    assert penalties == pytest.approx([2 / 3, 2 / 3, 1 / 3])
    assert bleu_repetition_penalty([]) == []


def test_skill_repetition_penalty_on_cosine():
    emb = np.array([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0]])  # first two: cos ~0.994, third orthogonal
    assert skill_repetition_penalty(emb) == pytest.approx([2 / 3, 2 / 3, 1 / 3])


def test_map_penalty_hand_case_and_empty_bank():
    query = np.array([[1.0, 0.0]])
    # cos to memory = [1, 0]: max term [1 - 0.5]+ = 0.5, mean term [0.5 - 0.25]+ = 0.25 -> 0.5*0.5 + 0.5*0.25
    assert map_penalty(query, np.array([[1.0, 0.0], [0.0, 2.0]])) == pytest.approx([0.375])
    assert map_penalty(query, np.zeros((0, 2))) == [0.0]
    assert map_penalty(query, None) == [0.0]
    assert map_penalty(query, np.array([[0.0, 1.0]])) == [0.0]
    with pytest.raises(ValueError, match="gamma"):
        map_penalty(query, query, gamma=2.0)


# Reference values from NLTK 3.10.4:
#   python -c "from nltk.translate.bleu_score import sentence_bleu, SmoothingFunction as S; \
#     print(sentence_bleu([REF.split()], HYP.split(), smoothing_function=S().method1))"
NLTK_METHOD1 = [
    ("what", "what", 0.1778279410038923),
    ("what is", "what is", 0.316227766016838),
    ("what is two", "what is three", 0.24028114141347542),
    ("seven", "eight", 0.0),
    ("how many primes", "how many primes are there below 100", 0.14823156396438122),
    ("How many primes are there below 100 ?", "How many primes are below 50 ?", 0.38260294162784475),
    ("a b c d e", "a b c d e", 1.0),
    ("Find x if 2x + 3 = 7", "Find y if 3y - 2 = 10", 0.03655552228545124),
]


@pytest.mark.parametrize(("hyp", "ref", "expected"), NLTK_METHOD1)
def test_sentence_bleu_matches_nltk_method1_including_short_questions(hyp, ref, expected):
    """Bug: questions under 4 tokens skipped the missing n-gram orders instead of NLTK's 0/1 -> epsilon."""
    assert sentence_bleu(hyp.split(), ref.split()) == pytest.approx(expected, rel=1e-12, abs=1e-15)


def test_sentence_bleu_matches_live_nltk():
    nltk_bleu = pytest.importorskip("nltk.translate.bleu_score")  # in the test extra
    smooth = nltk_bleu.SmoothingFunction().method1
    words = "how many ways can we choose two of the seven primes below twenty".split()
    rng = np.random.default_rng(0)
    for _ in range(200):
        hyp = list(rng.choice(words, size=int(rng.integers(1, 9))))
        ref = list(rng.choice(words, size=int(rng.integers(1, 9))))
        expected = nltk_bleu.sentence_bleu([ref], hyp, smoothing_function=smooth)
        assert sentence_bleu(hyp, ref) == pytest.approx(expected, rel=1e-12, abs=1e-15), (hyp, ref)
