"""ReRec reward terms and RAAE advantages against hand-computed values."""

import math

import pytest
import torch

from trl_mars.rewards.rerec import (
    extract_boxed,
    format_score,
    mentions,
    ndcg_at_k,
    ndcg_score,
    parse_ground_truth,
    pas,
    penalised_spans,
    qas,
    raae_advantages,
    raae_token_rewards,
    same_title,
    segment_spans,
    token_pieces,
    wrong_titles,
)


def test_boxed_extraction_and_format():
    assert extract_boxed("reasoning\n\\boxed{Toy Story (1995)}") == ["Toy Story (1995)"]
    assert extract_boxed("\\boxed{Heat; Up ;} then \\boxed{Alien}") == ["Heat", "Up"]  # first box only
    assert extract_boxed("no answer here") is None
    assert extract_boxed("\\boxed{}") is None  # empty box = no box (authors' regex needs content)
    assert format_score("\\boxed{Heat}") == 0.5
    assert format_score("Heat") == -0.5
    assert parse_ground_truth("Heat (1995); Up (2009)") == ["Heat (1995)", "Up (2009)"]
    assert parse_ground_truth(["Heat (1995)"]) == ["Heat (1995)"]


def test_title_matching_is_case_article_and_year_robust():
    assert same_title("toy story", "Toy Story (1995)")
    assert same_title("The Matrix (1999)", "Matrix, The (1999)")
    assert same_title("MATRIX, THE", "the matrix")
    assert not same_title("Total Recall (1990)", "Total Recall (2012)")  # remakes stay distinct
    assert not same_title("Toy Story 2", "Toy Story (1995)")


def test_ndcg_hand_computed():
    gt = ["Heat (1995)", "Up (2009)"]
    assert ndcg_at_k(["heat"], gt, 1) == 1.0
    assert ndcg_at_k(["Alien (1979)"], gt, 1) == 0.0
    # k=2, hit at rank 2 only: (1/log2 3) / (1 + 1/log2 3)
    expected = (1 / math.log2(3)) / (1 + 1 / math.log2(3))
    assert ndcg_at_k(["Alien", "Up"], gt, 2) == pytest.approx(expected)
    # duplicates count once: "Heat; heat (1995)" is one prediction, so rank 2 is Up
    assert ndcg_at_k(["Heat", "heat (1995)", "Up"], gt, 2) == pytest.approx(1.0)
    # a single relevant item with k=3: IDCG = 1
    assert ndcg_at_k(["Alien", "Brazil", "Up"], ["Up (2009)"], 3) == pytest.approx(0.5)
    assert ndcg_score("no box", gt, 1) == -0.5
    assert ndcg_score("\\boxed{Up; Heat}", gt, 2) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="ground_truth"):
        ndcg_at_k(["Up"], [], 1)


def test_qas_and_pas_hand_computed():
    a = frozenset({"genre:Drama", "genre:War", "decade:1990s"})
    b = frozenset({"genre:Drama", "genre:War", "tag:tom hanks"})
    pred = frozenset({"genre:War", "tag:tom hanks"})
    # target = {Drama, War}; pred shares War -> 1/2
    assert qas(pred, [a, b]) == 0.5
    assert qas(None, [a, b]) == 0.0  # unknown predicted title
    assert qas(pred, [frozenset({"x"}), frozenset({"y"})]) == 0.0  # empty target
    assert qas(pred, [None, b]) == pytest.approx(2 / 3)  # unknown ground-truth items are skipped
    assert pas(torch.tensor([1.0, 0.0]), [torch.tensor([1.0, 1.0]), torch.tensor([0.0, 1.0])]) == pytest.approx(
        1 / math.sqrt(2)
    )
    assert pas(None, [torch.tensor([1.0])]) == 0.0


def test_wrong_titles_and_penalised_segments():
    text = "Heat (1995) is a crime film.\nUp is animated.\nI pick Heat.\nheat is lowercase\n\\boxed{Heat}"
    assert wrong_titles(text, ["Up (2009)"]) == ["Heat"]
    assert wrong_titles(text, ["Heat (1995)"]) == []  # correct answer: nothing to penalise
    assert wrong_titles("no box", ["Up"]) == []
    spans = penalised_spans(text, ["Heat"])
    assert [text[a:b] for a, b in spans] == ["Heat (1995) is a crime film.", "I pick Heat."]  # box line skipped
    assert not mentions("a heated debate", "Heat")  # word-bounded
    assert mentions("I think The Matrix fits", "Matrix, The (1999)")
    para = "Heat first.\nstill Heat\n\nUp second.\n\n\\boxed{Heat}"
    assert [para[a:b] for a, b in segment_spans(para, "paragraph")] == [
        "Heat first.\nstill Heat",
        "Up second.",
        "\\boxed{Heat}",
    ]
    assert [para[a:b] for a, b in penalised_spans(para, ["Heat"], "paragraph")] == ["Heat first.\nstill Heat"]


def test_token_rewards_follow_character_spans():
    pieces = ["Heat", " is", " bad", ".\n", "Up", " ok", "\n", "\\boxed{Heat}"]
    text = "".join(pieces)
    spans = penalised_spans(text, ["Heat"])
    # r = 1.0, w = 0.3: the first line's 4 tokens get 0.7 (".\n" overlaps the line's '.')
    assert raae_token_rewards(1.0, pieces, spans, 0.3) == pytest.approx([0.7] * 4 + [1.0] * 4)
    # negative reward is pushed down, not up: r - w|r|
    assert raae_token_rewards(-0.5, pieces, spans, 0.3)[0] == pytest.approx(-0.65)


def test_token_pieces_with_multibyte_characters():
    # a toy byte-level decoder: each id is one byte; a lone leading byte of "é" decodes to U+FFFD
    data = "Amélie\nx".encode()

    def decode(ids):
        return bytes(data[i] for i in ids).decode("utf-8", errors="replace")

    pieces = token_pieces(list(range(len(data))), decode)
    assert "".join(pieces) == "Amélie\nx"
    assert pieces[2] == "" and pieces[3] == "é"  # the first byte of é waits for the second


def test_raae_advantages_hand_computed_and_zero_variance():
    # one group of G=2: tokens [1, 1] and [0.7, 1, pad]; valid tokens {1, 1, 0.7, 1}
    rewards = torch.tensor([[1.0, 1.0, 0.0], [0.7, 1.0, 5.0]])
    mask = torch.tensor([[1, 1, 0], [1, 1, 0]])
    mean = (1 + 1 + 0.7 + 1) / 4
    std = math.sqrt(((1 - mean) ** 2 * 3 + (0.7 - mean) ** 2) / 4)
    adv = raae_advantages(rewards, mask, num_generations=2, eps=1e-6)
    expected = torch.tensor(
        [[(1 - mean) / (std + 1e-6)] * 2 + [0.0], [(0.7 - mean) / (std + 1e-6), (1 - mean) / (std + 1e-6), 0.0]]
    )
    torch.testing.assert_close(adv, expected)
    # all-correct group: every token has the same reward -> advantages are 0, not NaN
    same = raae_advantages(torch.full((3, 4), 1.07), torch.ones(3, 4), num_generations=3)
    assert torch.isfinite(same).all() and same.abs().max() < 1e-6


def test_raae_advantages_split_across_processes_use_global_statistics():
    torch.manual_seed(0)
    rewards, mask = torch.rand(6, 5), (torch.rand(6, 5) > 0.3).long()
    full = raae_advantages(rewards, mask, num_generations=3)
    # two "processes" of 3 rows each: the group of rows 0-2 sits on process 0, rows 3-5 on process 1 ...
    halves = [(rewards[:3], mask[:3], 0), (rewards[3:], mask[3:], 3)]
    stats = [
        torch.stack([(r.double() * m).sum(1), (r.double() ** 2 * m).sum(1), m.sum(1).double(), torch.ones(3)], 1)
        for r, m, _ in halves
    ]
    for r, m, offset in halves:
        local = raae_advantages(r, m, 3, gather=lambda s: torch.cat(stats), row_offset=offset)
        torch.testing.assert_close(local, full[offset : offset + 3])
    # ... and groups straddling processes (G=2, 3 rows each) also match the single-process result
    full2 = raae_advantages(rewards, mask, num_generations=2)
    for r, m, offset in halves:
        local = raae_advantages(r, m, 2, gather=lambda s: torch.cat(stats), row_offset=offset)
        torch.testing.assert_close(local, full2[offset : offset + 3])


def test_a_right_answer_with_an_extra_boxed_title_is_not_penalised():
    text = "Heat is tense.\nUp is animated.\n\\boxed{Heat; Up}"
    assert wrong_titles(text, ["Heat (1995)"]) == []  # NDCG@1 = 1: right, the extra title is not "wrong"
    assert wrong_titles("Up is animated.\n\\boxed{Up; Heat}", ["Heat (1995)"]) == ["Up"]  # first box is wrong
    assert wrong_titles("\\boxed{Up; Heat}", ["Heat (1995)"], k=2) == []  # Heat is within the top 2


def test_mentions_are_whole_titles_only():
    assert not mentions("I would pick up something lighter.", "Up (2009)")  # common word, other case
    assert mentions("Up is a fine film.", "Up (2009)")
    assert mentions("so Toy Story, then", "Toy Story (1995)")
    others = ["Toy Story 2 (1999)", "Toy Story (1995)"]
    assert not mentions("Toy Story 2 is the sequel.", "Toy Story (1995)", others)  # part of a longer title
    assert mentions("Toy Story 2 follows Toy Story.", "Toy Story (1995)", others)  # the second one is whole
    text = "Toy Story 2 is a sequel.\nI pick up Toy Story.\n\\boxed{Toy Story}"
    spans = penalised_spans(text, wrong_titles(text, ["Heat (1995)"]), others=others)
    assert [text[a:b] for a, b in spans] == ["I pick up Toy Story."]


def test_raae_scale_modes_hand_computed():
    # two groups of G=2, one token each: group 0 rewards {1, 0}, group 1 rewards {0.5, 0.5}
    rewards, mask = torch.tensor([[1.0], [0.0], [0.5], [0.5]]), torch.ones(4, 1)
    group = raae_advantages(rewards, mask, 2, eps=0.0 + 1e-12)
    torch.testing.assert_close(group.flatten(), torch.tensor([1.0, -1.0, 0.0, 0.0]))
    batch_std = torch.tensor([1.0, 0.0, 0.5, 0.5]).std(unbiased=False).item()  # sqrt(0.125)
    batch = raae_advantages(rewards, mask, 2, eps=0.0 + 1e-12, scale="batch")
    torch.testing.assert_close(batch.flatten(), torch.tensor([0.5, -0.5, 0.0, 0.0]) / batch_std)
    none = raae_advantages(rewards, mask, 2, scale="none")
    torch.testing.assert_close(none.flatten(), torch.tensor([0.5, -0.5, 0.0, 0.0]))
    with pytest.raises(ValueError, match="scale must be one of"):
        raae_advantages(rewards, mask, 2, scale="max")


def test_all_wrong_groups_are_zeroed_only_on_request():
    # G=2, both completions box the same wrong title (r = 0.05); the second mentions it in a reasoning line, so
    # that token gets 0.7 * 0.05 = 0.035. GRPO (one reward per completion) gives both 0; RAAE's token-level
    # normalisation gives the unpenalised tokens +0.577: mean 0.04625, std sqrt(1.6875e-4) / 2
    rewards = torch.tensor([[0.05, 0.05], [0.035, 0.05], [1.07, 1.07], [0.05, 0.05]])
    mask = torch.ones(4, 2)
    paper = raae_advantages(rewards, mask, 2)
    std = math.sqrt(1.6875e-4) / 2
    assert paper[0, 0] == pytest.approx(0.00375 / (std + 1e-6), rel=1e-4) == pytest.approx(0.577, abs=1e-3)
    correct = torch.tensor([False, False, True, False])
    zeroed = raae_advantages(rewards, mask, 2, correct=correct)
    assert zeroed[:2].abs().max() == 0  # all-wrong group: no advantage
    torch.testing.assert_close(zeroed[2:], paper[2:])  # a group with a right answer is unchanged
