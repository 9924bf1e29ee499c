"""The shared MovieLens loader on the real ml-latest-small release."""

import pytest

from trl_mars.data.movielens import load_movielens, normalize_title, split_year


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("Toy Story (1995)", "toy story"),
        ("Matrix, The (1999)", "the matrix"),
        ("  the MATRIX ", "the matrix"),
        ('"Heat"', "heat"),
        ("Babylon 5", "babylon 5"),
    ],
)
def test_normalize_title(raw, expected):
    assert normalize_title(raw) == expected


def test_split_year():
    assert split_year("Toy Story (1995)") == ("Toy Story", 1995)
    assert split_year("Babylon 5") == ("Babylon 5", None)


def test_load_real_movielens(shared_data):
    ml = load_movielens(shared_data / "movielens")
    assert len(ml.movies) == 9742 and len(ml.ratings) == 100836
    toy = ml.movies[1]
    assert toy.title == "Toy Story (1995)" and toy.year == 1995
    assert toy.genres == ("Adventure", "Animation", "Children", "Comedy", "Fantasy")
    assert "pixar" in toy.tags
    assert ml.by_title()["toy story"].movie_id == 1
    hist = ml.user_histories(min_rating=4.0)
    assert 1 in hist and all(isinstance(m, int) for m in hist[1])
    with pytest.raises(FileNotFoundError, match="movies.csv"):
        load_movielens(shared_data / "nope")
