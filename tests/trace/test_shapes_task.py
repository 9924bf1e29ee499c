"""The synthetic shapes task: rendering, determinism, queries that mean what they say, hard negatives, held-out
scenes, and the rows / evaluation set in the TRACE row schema."""

from __future__ import annotations

import itertools
import re
import sys

import pytest
import torch

from trl_mars.embed.encoder import Encoded
from trl_mars.embed.evaluation import evaluate_retrieval_set
from trl_mars.embed.shapes_task import (
    COLOURS,
    POSITIONS,
    SHAPES,
    TASK_I2T,
    TASK_IT2I,
    TASK_T2I,
    Scene,
    Shape,
    attribute_differences,
    build_shapes_retrieval_task,
    render,
)

OBJECT = rf"({'|'.join(COLOURS)}) ({'|'.join(SHAPES)})"
CELL = {name: i for i, name in enumerate(POSITIONS)}
COUNTS = {"one": 1, "two": 2, "three": 3, "four": 4}


@pytest.fixture(scope="module")
def task():
    return build_shapes_retrieval_task(num_scenes=120, seed=3)


def solve_complex(text: str) -> list[tuple[set[Shape], int]]:
    """Every scene a complex query describes (read the way a person would): the count clause at the end, then the
    first object's row, column or cell, and each next one's relation to an earlier one (``it``: the previous one)."""
    body, clause = re.fullmatch(r"(.*), (and nothing else|\w+ shapes in all|with exactly \w+ objects)", text).groups()
    head, *rest = re.split(r", (?=a )| and (?=a )", body)
    regions = "top row|bottom row|left column|right column|" + "|".join(POSITIONS)
    m = re.fullmatch(rf"a {OBJECT} in the ({regions})", head)
    kinds, region = [(m[1], m[2])], m[3]
    relations = "to the right of|to the left of|directly below|directly above|diagonally across from"
    links = []
    for part in rest:
        m = re.fullmatch(rf"a {OBJECT} ({relations}) (it|the {OBJECT})", part)
        assert m, part
        anchor = len(kinds) - 1 if m[4] == "it" else kinds.index((m[5], m[6]))
        kinds.append((m[1], m[2]))
        links.append((m[3], anchor))

    def fits(cell, where):  # (row, column) of cell inside the named region / relation to the anchor's cell
        r, c = divmod(cell, 2)
        return {"top row": r == 0, "bottom row": r == 1, "left column": c == 0, "right column": c == 1}.get(
            where, where in POSITIONS and POSITIONS[cell] == where
        )

    def related(cell, rel, anchor):
        (r, c), (ra, ca) = divmod(cell, 2), divmod(anchor, 2)
        return {
            "to the right of": r == ra and c == ca + 1,
            "to the left of": r == ra and c == ca - 1,
            "directly below": c == ca and r == ra + 1,
            "directly above": c == ca and r == ra - 1,
            "diagonally across from": r != ra and c != ca,
        }[rel]

    word = re.search(r"\b(one|two|three|four)\b", clause)
    count = COUNTS[word[1]] if word else len(kinds)
    scenes = []
    for cells in itertools.permutations(range(len(POSITIONS)), len(kinds)):
        if fits(cells[0], region) and all(related(cells[i + 1], rel, cells[j]) for i, (rel, j) in enumerate(links)):
            scenes.append(({Shape(cell, *kind) for cell, kind in zip(cells, kinds)}, count))
    return scenes


def apply_edit(source: Scene, text: str) -> Scene:
    """Apply an edit instruction (the only object of the named kind changes)."""
    m = re.fullmatch(rf"make the {OBJECT} ({'|'.join(COLOURS)})", text)
    m2 = re.fullmatch(rf"turn the {OBJECT} into a {OBJECT}", text)
    m3 = re.fullmatch(rf"move the {OBJECT} to the ({'|'.join(POSITIONS)})", text)
    kind = (m or m2 or m3)[1], (m or m2 or m3)[2]
    (index,) = [i for i, o in enumerate(source.objects) if (o.colour, o.shape) == kind]
    obj = source.objects[index]
    if m:
        new = Shape(obj.cell, m[3], obj.shape)
    elif m2:
        new = Shape(obj.cell, m2[3], m2[4])
    else:
        new = Shape(CELL[m3[3]], obj.colour, obj.shape)
    return source.with_object(index, new)


def test_render_draws_each_object_in_its_cell():
    scene = Scene((Shape(0, "red", "square"), Shape(3, "blue", "circle"), Shape(1, "green", "triangle")))
    image = render(scene, size=56)
    assert image.size == (56, 56) and image.mode == "RGB"
    assert image.getpixel((14, 14)) == COLOURS["red"]  # square centre, top left
    assert image.getpixel((42, 42)) == COLOURS["blue"]  # circle centre, bottom right
    assert image.getpixel((42, 18)) == COLOURS["green"]  # triangle body, top right
    assert image.getpixel((14, 42)) == (255, 255, 255)  # empty bottom-left cell
    assert image.getpixel((4, 4)) == COLOURS["red"]  # square corner
    assert image.getpixel((32, 32)) == (255, 255, 255)  # circle's bounding-box corner is not filled
    assert scene.caption == "red square at top left. green triangle at top right. blue circle at bottom right."
    with pytest.raises(ValueError, match="distinct cells"):
        Scene((Shape(0, "red", "square"), Shape(0, "blue", "circle")))


def test_attribute_differences():
    a = Scene((Shape(0, "red", "square"), Shape(3, "blue", "circle")))
    assert attribute_differences(a, a) == 0
    assert attribute_differences(a, a.with_object(0, Shape(0, "green", "square"))) == 1
    assert attribute_differences(a, a.with_object(0, Shape(1, "red", "square"))) == 1
    assert attribute_differences(a, a.with_object(0, Shape(1, "green", "circle"))) == 3
    assert attribute_differences(a, Scene((Shape(0, "red", "square"),))) == -1
    assert attribute_differences(a, Scene((Shape(1, "red", "circle"), Shape(2, "blue", "square")))) == -1


def test_the_task_is_a_function_of_its_seed():
    one, two, other = (build_shapes_retrieval_task(num_scenes=40, seed=s) for s in (5, 5, 6))
    assert [q.text for q in one.train + one.eval] == [q.text for q in two.train + two.eval]
    assert [q.target for q in one.train] == [q.target for q in two.train]
    rows_one, rows_two = one.train_rows(), two.train_rows()
    assert [r["query"] for r in rows_one] == [r["query"] for r in rows_two]
    for a, b in zip(rows_one, rows_two):
        for column in ("query_image", "positive_image", "negative_image"):
            assert (a[column] is None) == (b[column] is None)
            if a[column] is not None:
                assert a[column].tobytes() == b[column].tobytes()
    assert [s.caption for s in one.eval_scenes] != [s.caption for s in other.eval_scenes]


def test_queries_mean_what_they_say(task):
    corpus = task.eval_scenes
    for q in task.eval:
        if q.task_id == TASK_T2I and q.complex:
            ((objects, count),) = solve_complex(q.text)  # the words admit exactly one scene
            matches = [s for s in corpus if set(s.objects) == objects and len(s.objects) == count]
            assert matches == [q.source] and q.relevant == {q.source}, q.text
            assert q.target == f"{q.source.caption} {count} objects."
        elif q.task_id == TASK_T2I:
            colour, shape = re.search(OBJECT, q.text).groups()
            assert q.target == "" and q.source.contains(colour, shape)
            assert q.relevant == {s for s in corpus if s.contains(colour, shape)}
        elif q.task_id == TASK_I2T:
            assert q.text == "" and q.target == "" and q.image_scene == q.source and q.relevant == {q.source}
        else:
            assert q.task_id == TASK_IT2I and q.relevant == {q.source}
            assert attribute_differences(q.image_scene, q.source) == 1
            assert apply_edit(q.image_scene, q.text) == q.source
            assert q.target == q.source.caption
    kinds = {(q.task_id, q.complex) for q in task.eval}
    assert kinds == {(TASK_T2I, False), (TASK_T2I, True), (TASK_I2T, False), (TASK_IT2I, True)}
    assert any(len(q.relevant) > 1 for q in task.eval if q.task_id == TASK_T2I and not q.complex)


def test_hard_negatives_differ_in_exactly_one_attribute_and_miss_the_query(task):
    triples = task.train_triples()
    assert len(triples) == len(task.train) == 4 * len(task.train_scenes)
    for q, positive, negative in triples:
        assert positive == q.source
        assert attribute_differences(positive, negative) == 1, (positive.caption, negative.caption)
        if q.task_id == TASK_T2I and not q.complex:
            assert q.source.contains(q.named.colour, q.named.shape)
            assert not negative.contains(q.named.colour, q.named.shape)
        if q.task_id == TASK_IT2I:
            assert negative == q.image_scene


def test_train_rows_follow_the_row_schema(task):
    rows = task.train_rows()
    triples = task.train_triples()
    columns = {"query", "query_target", "positive", "negative", "query_image", "positive_image", "negative_image"}
    assert all(set(r) == columns for r in rows)
    for row, (q, positive, negative) in zip(rows, triples):
        assert row["query"] == q.text and row["query_target"] == q.target
        if q.task_id == TASK_I2T:  # image -> caption
            assert row["query_image"].tobytes() == render(q.source).tobytes() and row["query"] == ""
            assert row["positive"] == positive.caption and row["positive_image"] is None
            assert row["negative"] == negative.caption and row["negative_image"] is None
        else:  # -> image (text empty: image-only candidates)
            assert row["positive"] == "" and row["positive_image"].tobytes() == render(positive).tobytes()
            assert row["negative"] == "" and row["negative_image"].tobytes() == render(negative).tobytes()
            assert (row["query_image"] is None) == (q.task_id == TASK_T2I)
    no_negative = task.train_rows(hard_negative=False)
    assert "negative" not in no_negative[0] and len(no_negative) == len(rows)
    with_text = build_shapes_retrieval_task(num_scenes=20, candidate_modality="image,text", seed=3).train_rows()
    t2i = next(r for r in with_text if r["query_image"] is None)
    assert t2i["positive"].endswith(".") and t2i["positive_image"] is not None


def test_eval_set_holds_out_scenes_and_pools_by_task(task):
    data = task.eval_set()
    n = len(task.eval_scenes)
    assert not set(task.eval_scenes) & set(task.train_scenes)
    assert not {q.source for q in task.train} & set(task.eval_scenes)
    assert len(data.corpus) == len(data.corpus_images) == 2 * n
    assert all(image is not None and text == "" for text, image in zip(data.corpus[:n], data.corpus_images[:n]))
    assert data.corpus[n:] == [s.caption for s in task.eval_scenes] and data.corpus_images[n:] == [None] * n
    assert data.local_pools == {"task0": list(range(n)), "task3": list(range(n, 2 * n)), "task7": list(range(n))}
    for q, rel, label, image, gold in zip(
        task.eval, data.relevant, data.tasks, data.query_images, data.gold_reasoning
    ):
        assert label == f"task{q.task_id}" and rel <= set(data.local_pools[label]) and gold == q.target
        offset = n if q.task_id == TASK_I2T else 0
        assert rel == {task.eval_scenes.index(s) + offset for s in q.relevant}
        assert (image is None) == (q.image_scene is None)
    assert data.is_complex == [q.complex for q in task.eval]


def test_bad_arguments_are_rejected():
    with pytest.raises(ValueError, match="eval_fraction"):
        build_shapes_retrieval_task(eval_fraction=1.0)
    with pytest.raises(ValueError, match="candidate_modality"):
        build_shapes_retrieval_task(candidate_modality="text")
    with pytest.raises(ValueError, match="tasks must be"):
        build_shapes_retrieval_task(tasks=(1,))
    with pytest.raises(ValueError, match="only 8.* distinct scenes"):  # 48 with one object, 792 with two
        build_shapes_retrieval_task(num_scenes=1000, objects=(1,))
    with pytest.raises(ValueError, match="size"):
        render(Scene(()), size=7)


def test_without_pillow_the_error_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "PIL", None)  # as when Pillow is not installed
    with pytest.raises(ImportError, match=re.escape("pip install 'trl-mars[vision]'")):
        render(Scene(()))


def read_scene(image) -> Scene:
    """Perfect perception: the scene drawn in a rendered image (centre pixel: colour; corners: shape)."""
    size = image.size[0]
    cell, margin = size // 2, max(1, size // 14)
    names = {rgb: name for name, rgb in COLOURS.items()}
    objects = []
    for index in range(len(POSITIONS)):
        x0, y0 = (index % 2) * cell + margin, (index // 2) * cell + margin
        x1, y1 = x0 + cell - 2 * margin - 1, y0 + cell - 2 * margin - 1
        colour = names.get(image.getpixel(((x0 + x1) // 2, (y0 + y1) // 2)))
        if colour is None:
            continue
        if image.getpixel((x0 + 1, y0 + 1)) != (255, 255, 255):
            shape = "square"
        elif image.getpixel((x0 + 1, y1 - 1)) != (255, 255, 255):
            shape = "triangle"
        else:
            shape = "circle"
        objects.append(Shape(index, colour, shape))
    return Scene(tuple(objects))


FEATURES = [f"{c} {s}" for c in COLOURS for s in SHAPES]
FEATURES += [f"{c} {s} at {p}" for c in COLOURS for s in SHAPES for p in POSITIONS] + list(COUNTS)


def features(text: str, image=None) -> set[str]:
    """Objects named in a text (``colour shape``), the ones it places (``... at <cell>``), its object count; and
    everything in the image."""
    found = {f"{m[1]} {m[2]}" for m in re.finditer(OBJECT, text)}
    found |= {
        f"{m[1]} {m[2]} at {m[3]}" for m in re.finditer(rf"{OBJECT} (?:at|in) (?:the )?({'|'.join(POSITIONS)})", text)
    }
    found |= {w for w in COUNTS if re.search(rf"\b{w}\b", text)} | {
        next(w for w, n in COUNTS.items() if n == int(m[1])) for m in re.finditer(r"\b(\d) objects", text)
    }
    if image is not None:
        scene = read_scene(image)
        found |= features(scene.caption) | {next(w for w, n in COUNTS.items() if n == len(scene.objects))}
    return found


class PerceptionEncoder:
    """A fake encoder that sees images perfectly and reads texts literally: the embedding is the indicator of
    ``features``; a reasoned query is embedded from its reasoning, which resolves the query into the target's words."""

    def __init__(self):
        self.model = torch.nn.Linear(1, 1)

    @staticmethod
    def _embed(items) -> torch.Tensor:
        rows = torch.tensor([[float(f in feats) for f in FEATURES] for feats in items])
        return torch.nn.functional.normalize(rows, dim=-1)

    def encode(self, texts, images=None, kind="query", mode="routed", batch_size=32):
        return self.encode_with_details(texts, images, kind, mode, batch_size).embeddings

    def encode_with_details(self, texts, images=None, kind="query", mode="routed", batch_size=32):
        assert mode == "direct" or kind == "candidate", "this fake cannot generate reasoning"
        images = images or [None] * len(texts)
        return Encoded(self._embed(features(t, i) for t, i in zip(texts, images)), [False] * len(texts))

    def encode_with_reasoning(self, texts, reasoning, images=None, batch_size=32):
        images = images or [None] * len(texts)
        items = [features(r) if r else features(t, i) for t, r, i in zip(texts, reasoning, images)]
        return Encoded(self._embed(items), [bool(r) for r in reasoning], list(reasoning))


def test_perception_alone_leaves_complex_queries_ambiguous_the_cot_resolves_them(task):
    """The task needs reasoning: an encoder that perceives every image exactly and matches the query's words
    retrieves simple queries, but not the complex ones; with their CoT (the gold row) it retrieves every one."""
    assert all(read_scene(render(s)) == s for s in task.eval_scenes)  # the perception is exact
    data = task.eval_set()
    results = evaluate_retrieval_set(PerceptionEncoder(), data, modes=("direct",), ks=(1,), pools=("local",))
    direct, gold = results["direct"], results["gold"]
    assert direct["local/hit@1_simple"] == 1.0  # one named object / the image itself: nothing to reason about
    assert direct["local/hit@1/task3"] == 1.0
    assert gold["local/hit@1_complex"] == 1.0  # spelled-out constraints pin the scene down
    assert direct["local/hit@1_complex"] < 0.75, direct["local/hit@1_complex"]


def test_rows_survive_a_datasets_round_trip(task):
    from datasets import Dataset

    rows = task.train_rows()[:24]
    dataset = Dataset.from_list(rows)
    assert dataset.features["positive_image"].__class__.__name__ == "Image"
    for row, back in zip(rows, dataset):
        assert back["query"] == row["query"] and back["query_target"] == row["query_target"]
        for column in ("query_image", "positive_image", "negative_image"):
            if row[column] is None:
                assert back[column] is None
            else:
                assert back[column].convert("RGB").tobytes() == row[column].tobytes()
