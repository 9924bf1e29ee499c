"""A text retrieval task built from MovieLens: find the movie a request describes, among all tagged movies.

Corpus item (candidate) = ``"Toy Story (1995). Genres: Adventure, Animation. Decade: 1990s. Tags: pixar, fun."``.
Each query is a set of constraints on one source movie; its relevant set is every corpus movie meeting them all.

- **Simple** query (``complex=False``, empty ``query_target``): one tag, optionally one genre, in catalogue words:
  ``"Comedy movies tagged road trip"``.
- **Complex** query (``complex=True``): a tag plus one or two genres and the decade, all paraphrased
  (``"something with laughs and a love story from the eighties, about road trip"``). Its CoT target restates the
  constraints in catalogue words, in the candidates' own format: ``"Genres: Comedy, Romance. Decade: 1980s. Tags:
  road trip."``; this is the reasoning that TRACE learns to emit before ``<|emb|>``.

Queries of held-out movies form the evaluation set (their source movies are never a training positive).
"""

from __future__ import annotations

import os
import random
from dataclasses import dataclass

from trl_mars.data.movielens import Movie, MovieLens, load_movielens
from trl_mars.embed.evaluation import RetrievalSet

GENRE_PHRASES = {
    "Action": "explosive action",
    "Adventure": "a big adventure",
    "Animation": "cartoon animation",
    "Children": "something for kids",
    "Comedy": "plenty of laughs",
    "Crime": "criminals and heists",
    "Documentary": "real-life facts",
    "Drama": "serious emotional drama",
    "Fantasy": "magic and myths",
    "Film-Noir": "shadowy noir",
    "Horror": "scary frights",
    "IMAX": "giant-screen spectacle",
    "Musical": "song and dance",
    "Mystery": "a puzzling whodunit",
    "Romance": "a love story",
    "Sci-Fi": "futuristic science",
    "Thriller": "nail-biting suspense",
    "War": "battlefields and soldiers",
    "Western": "cowboys and the frontier",
}
DECADE_WORDS = {
    1900: "nineteen-hundreds", 1910: "teens", 1920: "twenties", 1930: "thirties", 1940: "forties", 1950: "fifties",
    1960: "sixties", 1970: "seventies", 1980: "eighties", 1990: "nineties", 2000: "two-thousands",
    2010: "twenty-tens",
}  # fmt: skip
IGNORED_TAGS = frozenset({"in netflix queue"})
SIMPLE_TEMPLATES = ("movies tagged {tag}", "{genre} movies tagged {tag}", "a {genre} film about {tag}")
COMPLEX_TEMPLATES = (
    "something with {genres} from the {decade}, about {tag}",
    "I want a film mixing {genres}, made in the {decade}, involving {tag}",
    "looking for {genres} from the {decade} with {tag}",
)


@dataclass(frozen=True)
class Query:
    """A request about ``source`` (a movie id), its CoT target, and its relevant corpus movie ids."""

    text: str
    target: str
    complex: bool
    source: int
    relevant: frozenset[int]


@dataclass
class RetrievalTask:
    corpus_ids: list[int]
    corpus: list[str]
    train: list[Query]
    eval: list[Query]
    movies: dict[int, Movie]

    def train_rows(self, hard_negative: bool = True, seed: int = 0) -> list[dict[str, str]]:
        """Training rows in sentence-transformers layout: ``query``, ``query_target``, ``positive``[, ``negative``].

        The hard negative shares a genre with the source movie but misses at least one constraint.
        """
        rng = random.Random(seed)
        text = dict(zip(self.corpus_ids, self.corpus))
        rows = []
        for q in self.train:
            row = {"query": q.text, "query_target": q.target, "positive": text[q.source]}
            if hard_negative:
                row["negative"] = text[self._hard_negative(q, rng)]
            rows.append(row)
        return rows

    def eval_set(self) -> RetrievalSet:
        """The held-out queries against the corpus, with complexity flags and gold CoTs (empty for simple ones)."""
        return RetrievalSet(
            queries=[q.text for q in self.eval],
            corpus=list(self.corpus),
            relevant=self.relevant_indices(self.eval),
            is_complex=[q.complex for q in self.eval],
            gold_reasoning=[q.target for q in self.eval],
        )

    def relevant_indices(self, queries: list[Query]) -> list[set[int]]:
        """Each query's relevant movies as corpus indices."""
        index = {movie_id: i for i, movie_id in enumerate(self.corpus_ids)}
        return [{index[m] for m in q.relevant} for q in queries]

    def _hard_negative(self, query: Query, rng: random.Random) -> int:
        genres = set(self.movies[query.source].genres)
        pool = [m for m in self.corpus_ids if m not in query.relevant and genres & set(self.movies[m].genres)]
        return rng.choice(pool or [m for m in self.corpus_ids if m not in query.relevant])


def decade(year: int | None) -> int | None:
    return None if year is None else year // 10 * 10


def content_tags(movie: Movie) -> list[str]:
    return [t for t in movie.tags if t not in IGNORED_TAGS]


def movie_description(movie: Movie, max_tags: int = 5) -> str:
    """Candidate text: title, genres, decade and the most frequent tags."""
    parts = [f"{movie.title}."]
    if movie.genres:
        parts.append(f"Genres: {', '.join(movie.genres)}.")
    if movie.year is not None:
        parts.append(f"Decade: {decade(movie.year)}s.")
    parts.append(f"Tags: {', '.join(content_tags(movie)[:max_tags])}.")
    return " ".join(parts)


def _matches(movie: Movie, tag: str, genres: tuple[str, ...], dec: int | None, max_tags: int) -> bool:
    return (
        tag in content_tags(movie)[:max_tags]
        and set(genres) <= set(movie.genres)
        and (dec is None or decade(movie.year) == dec)
    )


def make_query(
    movie: Movie, complex_query: bool, by_tag: dict[str, list[Movie]], rng: random.Random, max_tags: int
) -> Query:
    """One simple or complex query about ``movie``; ``by_tag`` maps a tag to the corpus movies showing it."""
    tag = rng.choice(content_tags(movie)[:max_tags])
    if complex_query:
        genres = tuple(sorted(rng.sample(movie.genres, min(len(movie.genres), rng.choice((1, 2))))))
        dec = decade(movie.year)
        phrase = " and ".join(GENRE_PHRASES[g] for g in genres)
        text = rng.choice(COMPLEX_TEMPLATES).format(genres=phrase, decade=DECADE_WORDS[dec], tag=tag)
        target = f"Genres: {', '.join(genres)}. Decade: {dec}s. Tags: {tag}."
    else:
        genres = (rng.choice(movie.genres),) if movie.genres and rng.random() < 0.5 else ()
        dec = None
        template = SIMPLE_TEMPLATES[0] if not genres else rng.choice(SIMPLE_TEMPLATES[1:])
        text, target = template.format(tag=tag, genre=genres[0] if genres else ""), ""
    relevant = frozenset(m.movie_id for m in by_tag[tag] if _matches(m, tag, genres, dec, max_tags))
    return Query(text, target, complex_query, movie.movie_id, relevant)


def build_movielens_retrieval_task(
    movielens: MovieLens | None = None,
    path: str | os.PathLike | None = None,
    num_movies: int | None = None,
    eval_fraction: float = 0.2,
    max_tags: int = 5,
    seed: int = 0,
) -> RetrievalTask:
    """Corpus of tagged movies with a known decade and a genre (``num_movies`` of them, sampled, or all); one simple
    and one complex query per movie; ``eval_fraction`` of the movies give the held-out queries."""
    if not 0.0 < eval_fraction < 1.0:
        raise ValueError(f"eval_fraction must be in (0, 1), got {eval_fraction}")
    ml = movielens if movielens is not None else load_movielens(path, with_ratings=False)
    rng = random.Random(seed)
    pool = sorted(
        (m for m in ml.movies.values() if content_tags(m) and m.genres and decade(m.year) in DECADE_WORDS),
        key=lambda m: m.movie_id,
    )
    if num_movies is not None:
        pool = sorted(rng.sample(pool, min(num_movies, len(pool))), key=lambda m: m.movie_id)
    order = list(pool)
    rng.shuffle(order)
    n_eval = max(1, round(eval_fraction * len(order)))
    eval_ids = {m.movie_id for m in order[:n_eval]}
    by_tag: dict[str, list[Movie]] = {}
    for movie in pool:
        for tag in content_tags(movie)[:max_tags]:
            by_tag.setdefault(tag, []).append(movie)
    train, held_out = [], []
    for movie in pool:
        queries = [make_query(movie, complex_query, by_tag, rng, max_tags) for complex_query in (False, True)]
        (held_out if movie.movie_id in eval_ids else train).extend(queries)
    rng.shuffle(train)
    return RetrievalTask(
        corpus_ids=[m.movie_id for m in pool],
        corpus=[movie_description(m, max_tags) for m in pool],
        train=train,
        eval=held_out,
        movies={m.movie_id: m for m in pool},
    )
