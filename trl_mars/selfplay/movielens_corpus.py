"""A local WIST corpus from MovieLens: domain -> genre -> sub-genre -> movie documents with checkable facts.

Levels match the domain tree: 1 ``Movies`` (catalogue overview), 2 genres, 3 sub-genres ``"<genre> with <genre>"``
(movies carrying both genres), 4 movies (year, genres and user tags as facts). Every fact a question may ask about is
written in the document text, so a document-derived answer is checkable against it.
"""

from __future__ import annotations

import os
from collections import Counter
from itertools import permutations

from trl_mars.data.movielens import Movie, MovieLens, load_movielens, split_year
from trl_mars.selfplay.corpus import Document, LocalCorpus

DOMAIN = "Movies"


def subgenre_title(genre: str, other: str) -> str:
    return f"{genre} with {other}"


def movie_document(movie: Movie, max_tags: int = 8) -> Document:
    """Level-4 document of one movie; facts: ``year``, ``genres``, ``tags``."""
    name, _ = split_year(movie.title)
    year = f"It was released in {movie.year}." if movie.year else "Its release year is not recorded."
    tags = list(movie.tags[:max_tags])
    text = f"{movie.title} is a film. {year} Its genres are {', '.join(movie.genres) or 'not listed'}. " + (
        f"MovieLens users tagged {name} as: {', '.join(tags)}." if tags else ""
    )
    facts = {"year": movie.year, "genres": list(movie.genres), "tags": tags}
    return Document(f"movie:{movie.movie_id}", movie.title, text.strip(), 4, facts)


def _examples(movies: list[Movie], n: int = 8) -> str:
    return "; ".join(m.title for m in movies[:n])


def build_movielens_documents(
    ml: MovieLens, max_movies: int | None = None, min_subgenre_movies: int = 5
) -> list[Document]:
    """Documents for the ``max_movies`` most-rated movies (all when None) and the genres/sub-genres they span."""
    popularity = Counter(movie_id for _, movie_id, _, _ in ml.ratings)
    movies = sorted(ml.movies.values(), key=lambda m: (-popularity[m.movie_id], m.movie_id))
    movies = [m for m in movies if m.genres][:max_movies]
    by_genre: dict[str, list[Movie]] = {}
    by_pair: dict[tuple[str, str], list[Movie]] = {}
    for movie in movies:
        for genre in movie.genres:
            by_genre.setdefault(genre, []).append(movie)
        for pair in permutations(movie.genres, 2):
            by_pair.setdefault(pair, []).append(movie)
    docs = [
        Document(
            "domain:movies",
            DOMAIN,
            f"The MovieLens catalogue holds {len(movies)} movies in {len(by_genre)} genres: "
            + ", ".join(f"{g} ({len(ms)} movies)" for g, ms in sorted(by_genre.items()))
            + ".",
            1,
            {"num_movies": len(movies)},
        )
    ]
    for genre, ms in sorted(by_genre.items()):
        pairs = sorted(((o, len(v)) for (g, o), v in by_pair.items() if g == genre), key=lambda x: -x[1])
        years = [m.year for m in ms if m.year]
        tags = Counter(t for m in ms for t in m.tags[:3]).most_common(8)
        text = (
            f"{genre} is a film genre with {len(ms)} movies"
            + (f" released between {min(years)} and {max(years)}" if years else "")
            + ". Common combinations: "
            + ", ".join(f"{subgenre_title(genre, o)} ({c} movies)" for o, c in pairs[:10])
            + (f". Frequent tags: {', '.join(t for t, _ in tags)}" if tags else "")
            + f". Examples: {_examples(ms)}."
        )
        docs.append(Document(f"genre:{genre}", genre, text, 2, {"num_movies": len(ms)}))
    for (genre, other), ms in sorted(by_pair.items()):
        if len(ms) >= min_subgenre_movies:
            title = subgenre_title(genre, other)
            text = f"{title} films are {genre} movies that are also {other} movies; there are {len(ms)} of them. "
            text += f"Examples: {_examples(ms, 12)}."
            docs.append(Document(f"subgenre:{genre}|{other}", title, text, 3, {"num_movies": len(ms)}))
    docs += [movie_document(m) for m in movies]
    return docs


def movielens_corpus(path: str | os.PathLike | None = None, max_movies: int | None = None) -> LocalCorpus:
    """A BM25 ``LocalCorpus`` over ``build_movielens_documents`` of the MovieLens folder at ``path``."""
    return LocalCorpus(build_movielens_documents(load_movielens(path), max_movies=max_movies))


def movie_questions(doc: Document) -> list[tuple[str, str]]:
    """Checkable (question, answer) pairs of a movie document: its year, its first genre, its top tag."""
    facts, name = doc.facts, split_year(doc.title)[0]
    qa = []
    if facts.get("year"):
        qa.append((f"In which year was the film {name} released? Give the year only.", str(facts["year"])))
    if facts.get("genres"):
        qa.append((f"Name the first genre MovieLens lists for the film {name}, in one word.", facts["genres"][0]))
    if facts.get("tags"):
        qa.append((f"Which tag did MovieLens users give the film {name} most often?", facts["tags"][0]))
    return qa
