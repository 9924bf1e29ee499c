"""A synthetic multimodal retrieval task: scenes of coloured shapes rendered with PIL, with captions.

A **scene** puts 2 or 3 objects of distinct kinds (a colour in ``COLOURS``, a shape in ``SHAPES``) in distinct
cells of a 2 x 2 grid (``POSITIONS``). It renders deterministically (no randomness in drawing) to a ``size`` x
``size`` RGB image, one object per ``size/2`` cell: at the default 56 x 56 a cell is one 28 x 28 block, i.e. one merged Qwen2-VL image token.
Its **caption** lists the objects in grid order: ``"red circle at top left. blue square at bottom right."``.

Three tasks, numbered like M-BEIR's (``trl_mars.embed.mbeir.MBEIR_TASKS``):

- ``0`` text -> image. **Simple** queries name one object (``"a scene with a red circle"``, empty
  ``query_target``; relevant: every corpus scene holding a red circle). **Complex** queries pin every object down
  with a row or column and relations, plus a count (``"a yellow triangle in the right column and a green circle
  directly below it, and nothing else"``); their CoT ``query_target`` spells out the cells these imply, in the
  captions' own words (``"yellow triangle at top right. green circle at bottom right. 2 objects."``); the relevant
  set is exactly one scene. Scenes come in families (the same objects in other cells, or with one more object), so
  naming the objects is not enough: the relations must be resolved into cells, which is what the CoT does.
- ``3`` image -> text: the query is a scene image (empty text), the candidate its caption; simple.
- ``7`` (image, text) -> image, composed retrieval as in CIRR: the query is the image of a source scene plus an edit
  (``"make the red circle blue"``); the relevant scene is the edited one; complex, with the edited scene's caption as
  CoT.

Whole families of scenes are held out; evaluation queries are about held-out scenes only and the
evaluation corpus holds the held-out scenes only (as images, or image + caption, and as captions for task 3), so
no evaluation target is ever a training positive. Training rows follow the TRACE row schema (``query``,
``query_target``, ``positive``, ``negative``, ``query_image``, ``positive_image``, ``negative_image``) with a hard
negative that differs from the positive scene in exactly one attribute (one object's colour, shape or cell).
"""

from __future__ import annotations

import importlib
import itertools
import random
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Literal

from trl_mars.embed.evaluation import RetrievalSet
from trl_mars.extras import require

if TYPE_CHECKING:
    from PIL import Image

COLOURS = {"red": (220, 40, 40), "green": (40, 160, 60), "blue": (40, 80, 220), "yellow": (230, 200, 30)}
SHAPES = ("circle", "square", "triangle")
POSITIONS = ("top left", "top right", "bottom left", "bottom right")  # cell i: row i // 2, column i % 2
COUNT_WORDS = {1: "one", 2: "two", 3: "three", 4: "four"}
TASK_T2I, TASK_I2T, TASK_IT2I = 0, 3, 7
CandidateModality = Literal["image", "image,text"]
SIMPLE_TEMPLATES = ("a scene with a {object}", "find the picture showing a {object}", "an image containing a {object}")
COUNT_TEMPLATES = ("and nothing else", "{count} shapes in all", "with exactly {count} objects")


@dataclass(frozen=True, order=True)
class Shape:
    """One object: where it is (a ``POSITIONS`` index), its colour and its shape."""

    cell: int
    colour: str
    shape: str

    @property
    def name(self) -> str:
        return f"{self.colour} {self.shape}"


@dataclass(frozen=True)
class Scene:
    """Objects in distinct cells, kept sorted by cell (so equal scenes compare equal)."""

    objects: tuple[Shape, ...]

    def __post_init__(self):
        cells = [o.cell for o in self.objects]
        if len(set(cells)) != len(cells) or not all(0 <= c < len(POSITIONS) for c in cells):
            raise ValueError(f"objects must sit in distinct cells 0..{len(POSITIONS) - 1}, got cells {cells}")
        object.__setattr__(self, "objects", tuple(sorted(self.objects)))

    @property
    def caption(self) -> str:
        return " ".join(f"{o.name} at {POSITIONS[o.cell]}." for o in self.objects)

    def contains(self, colour: str, shape: str) -> bool:
        return any(o.colour == colour and o.shape == shape for o in self.objects)

    def with_object(self, index: int, new: Shape) -> Scene:
        """This scene with its ``index``-th object replaced by ``new``."""
        return Scene(tuple(new if i == index else o for i, o in enumerate(self.objects)))


def attribute_differences(a: Scene, b: Scene) -> int:
    """How many single-attribute edits (an object's colour, shape or cell) turn ``a`` into ``b``; -1 when the two
    scenes differ otherwise (another object count, or objects that do not pair up one to one)."""
    if len(a.objects) != len(b.objects):
        return -1
    unmatched_a = [o for o in a.objects if o not in b.objects]
    unmatched_b = [o for o in b.objects if o not in a.objects]
    if not unmatched_a:
        return 0
    if len(unmatched_a) != 1:
        return -1
    (x,), (y,) = unmatched_a, unmatched_b
    return (x.cell != y.cell) + (x.colour != y.colour) + (x.shape != y.shape)


def render(scene: Scene, size: int = 56) -> Image.Image:
    """The scene on a white ``size`` x ``size`` RGB canvas, each object filling its cell with a margin."""
    if size < 8 or size % 2:
        raise ValueError(f"size must be an even number >= 8, got {size}")
    require("PIL", "vision", "the synthetic shapes task", package="pillow")
    pil_image, pil_draw = (importlib.import_module(f"PIL.{name}") for name in ("Image", "ImageDraw"))
    image = pil_image.new("RGB", (size, size), (255, 255, 255))
    draw = pil_draw.Draw(image)
    cell, margin = size // 2, max(1, size // 14)
    for obj in scene.objects:
        x0, y0 = (obj.cell % 2) * cell + margin, (obj.cell // 2) * cell + margin
        x1, y1 = x0 + cell - 2 * margin - 1, y0 + cell - 2 * margin - 1
        fill = COLOURS[obj.colour]
        if obj.shape == "circle":
            draw.ellipse((x0, y0, x1, y1), fill=fill)
        elif obj.shape == "square":
            draw.rectangle((x0, y0, x1, y1), fill=fill)
        else:
            draw.polygon([((x0 + x1) / 2, y0), (x1, y1), (x0, y1)], fill=fill)
    return image


def relation(cell: int, anchor: int) -> str:
    """Where ``cell`` lies seen from ``anchor`` on the 2 x 2 grid."""
    (r, c), (ra, ca) = divmod(cell, 2), divmod(anchor, 2)
    if r == ra:
        return "to the right of" if c > ca else "to the left of"
    if c == ca:
        return "directly below" if r > ra else "directly above"
    return "diagonally across from"


@dataclass(frozen=True)
class ShapesQuery:
    """A query about ``source``: text and/or the image of ``image_scene``, its CoT (empty: simple), its task id, its
    relevant scenes and, for a simple query, the object it names."""

    text: str
    target: str
    task_id: int
    source: Scene
    relevant: frozenset[Scene]
    image_scene: Scene | None = None
    named: Shape | None = None

    @property
    def complex(self) -> bool:
        return bool(self.target)


def simple_query(scene: Scene, rng: random.Random) -> tuple[str, Shape]:
    obj = rng.choice(scene.objects)
    return rng.choice(SIMPLE_TEMPLATES).format(object=obj.name), obj


REGIONS = {
    "top row": (0, 1), "bottom row": (2, 3), "left column": (0, 2), "right column": (1, 3),
    **{position: (cell,) for cell, position in enumerate(POSITIONS)},
}  # fmt: skip


def placements(description: list[tuple[str, int | None, str]], cells: int = len(POSITIONS)) -> list[tuple[int, ...]]:
    """Every way to put the described objects in distinct cells: ``description[0] = ("region", None, region)``,
    then ``(relation, index of an earlier object, "")`` per object, as ``complex_query`` writes them."""
    out = []
    for assignment in itertools.permutations(range(cells), len(description)):
        if assignment[0] not in REGIONS[description[0][2]]:
            continue
        if all(relation(assignment[i], assignment[j]) == rel for i, (rel, j, _) in enumerate(description) if i):
            out.append(assignment)
    return out


def complex_query(scene: Scene, rng: random.Random) -> tuple[str, str]:
    """Text that pins every object down only through a row or column for the first one and a relation to an earlier
    one for each next one (an exact cell only when no such description is unique), plus the count; its CoT: the
    scene's caption and the count, i.e. the cells that the relations imply, in the captions' words."""
    order = list(scene.objects)
    rng.shuffle(order)
    regions = [r for r in ("top row", "bottom row", "left column", "right column") if order[0].cell in REGIONS[r]]
    for attempt in range(20):
        region = rng.choice(regions) if attempt < 19 else POSITIONS[order[0].cell]
        description = [("region", None, region)]
        for i, obj in enumerate(order[1:], start=1):
            j = rng.randrange(i)
            description.append((relation(obj.cell, order[j].cell), j, ""))
        if len(placements(description)) == 1:
            break
    parts = [f"a {order[0].name} in the {region}"]
    for i, (rel, j, _) in enumerate(description[1:], start=1):
        parts.append(f"a {order[i].name} {rel} {'it' if j == i - 1 else f'the {order[j].name}'}")
    count = len(scene.objects)
    parts[-1] = f"{parts[-1]}, {rng.choice(COUNT_TEMPLATES).format(count=COUNT_WORDS[count])}"
    text = ", ".join(parts[:-1]) + " and " + parts[-1] if len(parts) > 1 else parts[0]
    return text, f"{scene.caption} {count} objects."


def perturb(scene: Scene, rng: random.Random) -> tuple[int, Shape]:
    """One object (its index) and a copy of it with exactly one attribute changed: colour, shape, or a free cell."""
    index = rng.randrange(len(scene.objects))
    obj = scene.objects[index]
    free = [c for c in range(len(POSITIONS)) if c not in {o.cell for o in scene.objects}]
    kind = rng.choice(("colour", "shape", "cell") if free else ("colour", "shape"))
    if kind == "colour":
        return index, replace(obj, colour=rng.choice([c for c in COLOURS if c != obj.colour]))
    if kind == "shape":
        return index, replace(obj, shape=rng.choice([s for s in SHAPES if s != obj.shape]))
    return index, replace(obj, cell=rng.choice(free))


def edit(scene: Scene, rng: random.Random) -> tuple[Scene, str]:
    """A source scene one attribute away from ``scene`` and the instruction that turns it into ``scene``; the
    edited object is the only one of its colour and shape in the source, so the instruction is unambiguous."""
    for _ in range(100):
        index, changed = perturb(scene, rng)
        source = scene.with_object(index, changed)
        if sum(o.name == changed.name for o in source.objects) == 1:
            break
    else:
        raise ValueError(f"no unambiguous edit leads to {scene.caption!r}")
    target = scene.objects[index]
    if changed.colour != target.colour:
        return source, f"make the {changed.name} {target.colour}"
    if changed.shape != target.shape:
        return source, f"turn the {changed.name} into a {target.name}"
    return source, f"move the {changed.name} to the {POSITIONS[target.cell]}"


def one_attribute_neighbour(scene: Scene, rng: random.Random, avoid: Shape | None = None) -> Scene:
    """A scene differing from ``scene`` in exactly one attribute; with ``avoid`` (a simple query's object), one
    holding no object of that colour and shape."""
    for _ in range(100):
        index, changed = perturb(scene, rng)
        other = scene.with_object(index, changed)
        if avoid is None or not other.contains(avoid.colour, avoid.shape):
            return other
    raise ValueError(f"no one-attribute neighbour of {scene.caption!r} without a {avoid.name}")


def scene_family(rng: random.Random, objects: tuple[int, ...] = (2, 3), arrangements: int = 3) -> list[Scene]:
    """Scenes sharing their objects: ``arrangements`` distinct placements of the same objects (of distinct kinds)
    and, when a cell is free, the first placement plus one more object. Only the cells (and the count) tell them
    apart, so naming the objects is not enough: a query must place them."""
    count = rng.choice(objects)
    kinds = rng.sample([(c, s) for c in COLOURS for s in SHAPES], count + 1)
    family: dict[Scene, None] = {}
    for _ in range(10 * arrangements):
        if len(family) == arrangements:
            break
        cells = rng.sample(range(len(POSITIONS)), count)
        family.setdefault(Scene(tuple(Shape(cell, c, s) for cell, (c, s) in zip(cells, kinds[:count]))))
    first = next(iter(family))
    free = [c for c in range(len(POSITIONS)) if c not in {o.cell for o in first.objects}]
    if free:
        family.setdefault(Scene((*first.objects, Shape(rng.choice(free), *kinds[count]))))
    return list(family)


@dataclass
class ShapesTask:
    """Training and held-out scenes with their queries; ``train_rows()`` and ``eval_set()`` give the data."""

    train_scenes: list[Scene]
    eval_scenes: list[Scene]
    train: list[ShapesQuery]
    eval: list[ShapesQuery]
    size: int = 56
    candidate_modality: CandidateModality = "image"
    seed: int = 0

    def image(self, scene: Scene) -> Image.Image:
        return render(scene, self.size)

    def _candidate(self, scene: Scene, task_id: int) -> tuple[str, Image.Image | None]:
        """(text, image) of the scene as a candidate of ``task_id``: its caption for image -> text, else its image
        (with the caption when ``candidate_modality="image,text"``)."""
        if task_id == TASK_I2T:
            return scene.caption, None
        return (scene.caption if self.candidate_modality == "image,text" else ""), self.image(scene)

    def train_triples(self, hard_negative: bool = True) -> list[tuple[ShapesQuery, Scene, Scene | None]]:
        """(query, positive scene, hard-negative scene or None) per training query. The positive is the query's
        source scene; the hard negative differs from it in exactly one attribute and does not match the query (for an
        edit query: the unedited source scene)."""
        rng = random.Random(self.seed + 1)
        out = []
        for q in self.train:
            negative = None
            if hard_negative:
                negative = q.image_scene if q.task_id == TASK_IT2I else one_attribute_neighbour(q.source, rng, q.named)
            out.append((q, q.source, negative))
        return out

    def train_rows(self, hard_negative: bool = True) -> list[dict]:
        """Rows ``query``, ``query_target``, ``positive``, ``query_image``, ``positive_image`` (+ ``negative``,
        ``negative_image``) of ``train_triples``: texts, and PIL images or None."""
        rows = []
        for q, positive, negative in self.train_triples(hard_negative):
            text, image = self._candidate(positive, q.task_id)
            row = {
                "query": q.text,
                "query_target": q.target,
                "positive": text,
                "query_image": None if q.image_scene is None else self.image(q.image_scene),
                "positive_image": image,
            }
            if negative is not None:
                row["negative"], row["negative_image"] = self._candidate(negative, q.task_id)
            rows.append(row)
        return rows

    def eval_set(self) -> RetrievalSet:
        """Held-out queries against the held-out corpus: each scene as an image candidate (text empty, or its
        caption with ``candidate_modality="image,text"``) and as a caption candidate; per-query task ids and local
        pools (task 3 ranks the captions, tasks 0 and 7 the images)."""
        images = [self._candidate(s, TASK_T2I) for s in self.eval_scenes]
        captions = [self._candidate(s, TASK_I2T) for s in self.eval_scenes]
        corpus = images + captions
        n = len(self.eval_scenes)
        index = {s: i for i, s in enumerate(self.eval_scenes)}
        relevant = [{index[s] + (n if q.task_id == TASK_I2T else 0) for s in q.relevant} for q in self.eval]
        return RetrievalSet(
            queries=[q.text for q in self.eval],
            corpus=[text for text, _ in corpus],
            relevant=relevant,
            is_complex=[q.complex for q in self.eval],
            gold_reasoning=[q.target for q in self.eval],
            query_images=[None if q.image_scene is None else self.image(q.image_scene) for q in self.eval],
            corpus_images=[image for _, image in corpus],
            tasks=[f"task{q.task_id}" for q in self.eval],
            local_pools={
                f"task{t}": list(range(n, 2 * n) if t == TASK_I2T else range(n))
                for t in (TASK_T2I, TASK_I2T, TASK_IT2I)
            },
        )


def _queries(scenes: list[Scene], universe: list[Scene], rng: random.Random, tasks: tuple[int, ...]):
    """Per scene: a simple and a complex text query (task 0), an image query (task 3), an edit query (task 7).
    ``universe`` is the corpus the relevant sets of simple queries are computed over."""
    out = []
    for scene in scenes:
        if TASK_T2I in tasks:
            text, obj = simple_query(scene, rng)
            relevant = frozenset(s for s in universe if s.contains(obj.colour, obj.shape))
            out.append(ShapesQuery(text, "", TASK_T2I, scene, relevant, named=obj))
            text, target = complex_query(scene, rng)
            out.append(ShapesQuery(text, target, TASK_T2I, scene, frozenset({scene})))
        if TASK_I2T in tasks:
            out.append(ShapesQuery("", "", TASK_I2T, scene, frozenset({scene}), image_scene=scene))
        if TASK_IT2I in tasks:
            source, text = edit(scene, rng)
            out.append(ShapesQuery(text, scene.caption, TASK_IT2I, scene, frozenset({scene}), image_scene=source))
    return out


def build_shapes_retrieval_task(
    num_scenes: int = 320,
    eval_fraction: float = 0.2,
    size: int = 56,
    candidate_modality: CandidateModality = "image",
    tasks: tuple[int, ...] = (TASK_T2I, TASK_I2T, TASK_IT2I),
    objects: tuple[int, ...] = (2, 3),
    arrangements: int = 3,
    seed: int = 0,
) -> ShapesTask:
    """``num_scenes`` distinct scenes in families (``scene_family``: ``objects`` objects in ``arrangements``
    placements, plus one with an extra object), about ``eval_fraction`` of them held out as whole families; the
    queries of ``tasks`` on each scene. Everything is a function of the arguments (``seed`` included)."""
    if not 0.0 < eval_fraction < 1.0:
        raise ValueError(f"eval_fraction must be in (0, 1), got {eval_fraction}")
    if candidate_modality not in ("image", "image,text"):
        raise ValueError(f"candidate_modality must be 'image' or 'image,text', got {candidate_modality!r}")
    unknown = sorted(set(tasks) - {TASK_T2I, TASK_I2T, TASK_IT2I})
    if unknown or not tasks:
        raise ValueError(f"tasks must be a non-empty subset of (0, 3, 7), got {tasks}")
    if not objects or not all(1 <= k <= len(POSITIONS) for k in objects):
        raise ValueError(f"objects must be counts in 1..{len(POSITIONS)}, got {objects}")
    if num_scenes < 2:
        raise ValueError(f"num_scenes must be >= 2, got {num_scenes}")
    if arrangements < 1:
        raise ValueError(f"arrangements must be >= 1, got {arrangements}")
    rng = random.Random(seed)
    scenes: dict[Scene, int] = {}  # scene -> its family
    family = stale = 0
    while len(scenes) < num_scenes and stale < 1000:  # 1000 families in a row bringing nothing new: exhausted
        before = len(scenes)
        for scene in scene_family(rng, objects, arrangements):
            if len(scenes) < num_scenes:
                scenes.setdefault(scene, family)
        family, stale = family + 1, 0 if len(scenes) > before else stale + 1
    if len(scenes) < num_scenes:
        raise ValueError(f"only {len(scenes)} distinct scenes with {objects} objects; ask for fewer")
    order = list(scenes)
    n_eval = max(1, round(eval_fraction * num_scenes))
    while n_eval < len(order) - 1 and scenes[order[n_eval]] == scenes[order[n_eval - 1]]:
        n_eval += 1  # whole families are held out, so each held-out scene meets its look-alikes in the corpus
    eval_scenes, train_scenes = order[:n_eval], order[n_eval:]
    train = _queries(train_scenes, train_scenes, rng, tasks)
    rng.shuffle(train)
    held_out = _queries(eval_scenes, eval_scenes, rng, tasks)
    return ShapesTask(train_scenes, eval_scenes, train, held_out, size, candidate_modality, seed)
