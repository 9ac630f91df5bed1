"""python -m hapvr.index and python -m hapvr.search as a user runs them on a folder of real
decoded clips: build (and resume), search with segments, duplicates, add, remove, bad input."""

import json
import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(__file__))
from test_api import _frames, _write, default, use_default  # noqa: E402,F401  (fixtures)

from hapvr.index import main as index_main  # noqa: E402
from hapvr.search import main as search_main  # noqa: E402


@pytest.fixture(scope="module")
def collection(default):  # noqa: F811
    d = default[0] / "collection"
    d.mkdir(exist_ok=True)
    source = _frames(12, 0)
    for i in range(4):
        _write(d / f"other{i}.mp4", _frames(8, 10 + i))
    _write(d / "source.mp4", source)
    _write(d / "reupload.mp4", source)  # a whole copy
    _write(d / "excerpt.mp4", _frames(2, 20) + source[4:10] + _frames(2, 21))  # seconds 4-10 of source at 2-8
    return d


def _one_error(err):
    lines = [x for x in err.splitlines() if x.startswith("error:")]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def test_index_search_duplicates(use_default, collection, tmp_path, capsys):
    index = tmp_path / "my.index"
    assert index_main(["build", "--videos", str(collection), "--index", str(index), "--no-progress"]) == 0
    assert "added 7" in capsys.readouterr().err
    # a rerun adds nothing (a killed build resumes the same way)
    assert index_main(["build", "--videos", str(collection), "--index", str(index), "--no-progress"]) == 0
    assert "added 0, already present 7" in capsys.readouterr().err

    out = tmp_path / "r.json"
    assert search_main(["--index", str(index), str(collection / "excerpt.mp4"), "--top", "3", "--json", str(out)]) == 0
    table = capsys.readouterr().out
    assert "excerpt" in table
    result = json.loads(out.read_text())
    q = result["queries"][0]
    assert q["query"] == str(collection / "excerpt.mp4")
    ids = [r["id"] for r in q["results"]]
    assert ids[0] == "excerpt" and set(ids[1:3]) == {"source", "reupload"}
    src = next(r for r in q["results"] if r["id"] == "source")
    seg = src["segments"][0]
    got = (seg["query_start"], seg["query_end"], seg["target_start"], seg["target_end"])
    # The copied part is inside the segment, whose ends may run a frame or two into the unrelated
    # frames around it where these toy clips score above the bar (docs/localization.md, "Ends").
    assert got[0] <= 2 and got[1] >= 8 and got[2] <= 4 and got[3] >= 10, got
    assert (2 - got[0]) + (got[1] - 8) <= 1 and (4 - got[2]) + (got[3] - 10) <= 2, got
    assert list(src) == ["id", "similarity", "segments", "reason", "query_view", "target_view"]
    assert src["reason"] is None  # reason: only without a segment
    assert src["query_view"] is None and src["target_view"] is None  # whole frames: no --insets
    # exhaustive gives the same top results here
    assert search_main(["--index", str(index), str(collection / "excerpt.mp4"), "--top", "3", "--exhaustive",
                        "--json", str(out), "--no-segments"]) == 0
    assert [r["id"] for r in json.loads(out.read_text())["queries"][0]["results"]] == ids

    dup_json, dup_csv = tmp_path / "d.json", tmp_path / "d.csv"
    assert search_main(["--index", str(index), "--duplicates", "--json", str(dup_json), "--csv", str(dup_csv)]) == 0
    found = json.loads(dup_json.read_text())
    # one cluster: the same video twice; the excerpt is part of both, a link outside clusters
    assert [c["videos"] for c in found["clusters"]] == [["reupload", "source"]]
    assert [(x["a"], x["b"], x["relation"]) for x in found["clusters"][0]["links"]] == [("reupload", "source", "same")]
    parts = {(p["a"], p["b"]): p["relation"] for p in found["pairs"] if "excerpt" in (p["a"], p["b"])}
    assert set(parts) == {("excerpt", "reupload"), ("excerpt", "source")}, parts
    # 6 of the excerpt's 10 s are 6 of the source's 12 s: neither holds the other
    assert set(parts.values()) == {"share a part"}, parts
    assert all("other" not in p["a"] + p["b"] for p in found["pairs"])
    assert dup_csv.read_text().startswith("a,b,similarity,relation,coverage_a,coverage_b,cluster,segments")

    assert index_main(["remove", "--index", str(index), "reupload"]) == 0
    assert index_main(["info", "--index", str(index)]) == 0
    assert "6 videos" in capsys.readouterr().out


@pytest.mark.parametrize("case", ["empty index", "unreadable query", "no decodable frame", "no index",
                                  "other model", "query and duplicates", "symmetric without duplicates",
                                  "remove unknown id", "ivfpq on a small index"])
def test_search_bad_input(use_default, collection, tmp_path, capsys, case):
    index = tmp_path / "i"
    (tmp_path / "junk.mp4").write_bytes(os.urandom(3000))
    (tmp_path / "empty").mkdir()
    if case == "empty index":
        assert index_main(["build", "--videos", str(tmp_path / "empty"), "--index", str(index)]) == 2
        capsys.readouterr()
        from hapvr.api import load_model
        from hapvr.retrieval.building import model_space
        from hapvr.retrieval.index_store import IndexStore

        IndexStore.create(index, model_space(load_model()), (9, 64)).close()
        argv = ["--index", str(index), str(collection / "source.mp4")]
        needle = "empty"
    else:
        assert index_main(["build", "--videos", str(collection / "other0.mp4"), "--index", str(index),
                           "--no-progress"]) == 0
        capsys.readouterr()
        argv, needle = {
            "unreadable query": (["--index", str(index), str(tmp_path / "nope.mp4")], "QUERY"),
            "no decodable frame": (["--index", str(index), str(tmp_path / "junk.mp4")], "junk.mp4"),
            "no index": (["--index", str(tmp_path / "nowhere"), str(collection / "source.mp4")], "--index"),
            "other model": (["--index", str(index), str(collection / "source.mp4"), "--fps", "2"], "fps"),
            "query and duplicates": (["--index", str(index), str(collection / "source.mp4"), "--duplicates"],
                                     "--duplicates"),
            "symmetric without duplicates": (["--index", str(index), str(collection / "source.mp4"), "--symmetric"],
                                             "--symmetric goes with --duplicates"),
            "remove unknown id": (None, "zz"),
            "ivfpq on a small index": (["--index", str(index), str(collection / "source.mp4"), "--coarse", "ivfpq"],
                                       "IVF lists of PQ codes (--coarse ivfpq) are trained on at least 256"),
        }[case]
    if case == "remove unknown id":
        code = index_main(["remove", "--index", str(index), "zz"])
    else:
        code = search_main(argv)
    assert code == 2
    assert needle in _one_error(capsys.readouterr().err)


def test_a_query_shorter_than_the_minimum_is_repeated_not_refused(use_default, collection, tmp_path, capsys):
    index = tmp_path / "i"
    assert index_main(["build", "--videos", str(collection), "--index", str(index), "--no-progress"]) == 0
    one = tmp_path / "one_second.mp4"
    _write(one, _frames(12, 0)[:1])
    out = tmp_path / "r.json"
    assert search_main(["--index", str(index), str(one), "--json", str(out), "--checkpoint",
                        str(tmp_path.parent / "unused")]) == 2  # the checkpoint must exist
    capsys.readouterr()
    assert search_main(["--index", str(index), str(one), "--json", str(out)]) == 0
    top = json.loads(out.read_text())["queries"][0]["results"][0]
    assert top["id"] in {"source", "reupload"} and top["similarity"] > 0.9


def test_coarse_kind_nprobe_threads_and_duplicate_proposals(use_default, collection, tmp_path, capsys):
    import faiss
    import torch

    index = tmp_path / "i"
    assert index_main(["build", "--videos", str(collection), "--index", str(index), "--no-progress"]) == 0
    query = str(collection / "excerpt.mp4")
    threads = torch.get_num_threads(), faiss.omp_get_max_threads()
    torch.set_num_threads(2)
    faiss.omp_set_num_threads(2)
    try:
        capsys.readouterr()
        out = tmp_path / "ivf.json"
        assert search_main(["--index", str(index), query, "--coarse", "ivf", "--nprobe", "1", "--threads", "1",
                            "--no-segments", "--top", "3", "--json", str(out)]) == 0
        assert torch.get_num_threads() == 1 and faiss.omp_get_max_threads() == 1
    finally:
        torch.set_num_threads(threads[0])
        faiss.omp_set_num_threads(threads[1])
    assert "coarse stage (ivf)" in capsys.readouterr().out
    assert (index / "coarse-ivf.faiss").is_file()  # trained on first use, saved for the next search
    ivf = [r["id"] for r in json.loads(out.read_text())["queries"][0]["results"]]
    assert ivf[0] == "excerpt" and set(ivf[1:]) == {"source", "reupload"}
    assert search_main(["--index", str(index), query, "--coarse", "flat", "--no-segments", "--top", "3",
                        "--json", str(out)]) == 0
    assert "coarse stage (flat)" in capsys.readouterr().out  # 7 videos: auto would be flat too
    assert [r["id"] for r in json.loads(out.read_text())["queries"][0]["results"]] == ivf

    def proposals(*extra):
        assert search_main(["--index", str(index), "--duplicates", "--coarse", "ivf", *extra]) == 0
        out = capsys.readouterr().out
        line = next(x for x in out.splitlines() if "candidate pairs" in x)
        return int(line.split(" candidate pairs")[0].split(", ")[-1]), out

    # 7 videos: 21 pairs with the default 10 neighbours; with each video proposing its nearest one,
    # at most 6 (source and reupload propose each other)
    one, _ = proposals("--neighbours", "1")
    assert 4 <= one <= 6
    near, out = proposals("--neighbours", "1", "--min-coarse", "0.99")  # identical frames only
    assert near == 1 and "cluster 1: reupload, source" in out


def test_ctrl_c_during_a_build_keeps_what_is_done_and_says_how_to_continue(use_default, collection, tmp_path,
                                                                            capsys, monkeypatch):
    """Ctrl-C after two videos: one line saying what was saved, exit 130; the same command continues."""
    from hapvr.api import VideoModel

    index = tmp_path / "i"
    real, calls = VideoModel.features, []

    def interrupted_after_two(self, video):
        calls.append(video)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(self, video)

    monkeypatch.setattr(VideoModel, "features", interrupted_after_two)
    assert index_main(["build", "--videos", str(collection), "--index", str(index), "--no-progress"]) == 130
    err = capsys.readouterr().err
    assert err.strip().splitlines()[-1] == f"interrupted: 2 videos saved in {index}; run the same command to continue"
    assert "Traceback" not in err
    monkeypatch.setattr(VideoModel, "features", real)
    assert index_main(["build", "--videos", str(collection), "--index", str(index), "--no-progress"]) == 0
    assert "added 5, already present 2" in capsys.readouterr().err


def test_a_closed_pipe_ends_quietly(use_default, collection, tmp_path):
    """``search --duplicates | head -1``: the first line, then a quiet exit (no BrokenPipeError)."""
    import subprocess

    index = tmp_path / "i"  # built with a checkpoint, which the index records for the search in another process
    assert index_main(["build", "--videos", str(collection), "--index", str(index), "--checkpoint",
                       str(use_default / "checkpoint.pt"), "--no-progress"]) == 0
    env = dict(os.environ, PYTHONPATH=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    proc = subprocess.run(f"{sys.executable} -m hapvr.search --index {index} --duplicates --threshold -1 | head -c 1",
                          shell=True, capture_output=True, text=True, env=env)
    assert proc.stdout and "Traceback" not in proc.stderr and "BrokenPipe" not in proc.stderr, proc.stderr


def test_exit_codes_of_partial_and_total_failure(use_default, collection, tmp_path, capsys):
    """0: all done; 3: finished with some inputs failed (listed); 2: no input could be used."""
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "junk.mp4").write_bytes(os.urandom(3000))
    assert index_main(["build", "--videos", str(broken), "--index", str(tmp_path / "a"), "--no-progress"]) == 2
    assert "none of the 1 videos could be used" in _one_error(capsys.readouterr().err)
    mixed = tmp_path / "mixed"
    mixed.mkdir()
    (mixed / "junk.mp4").write_bytes(os.urandom(3000))
    (mixed / "source.mp4").write_bytes((collection / "source.mp4").read_bytes())
    assert index_main(["build", "--videos", str(mixed), "--index", str(tmp_path / "b"), "--no-progress"]) == 3
    assert "failed 1 (listed in" in capsys.readouterr().err


def test_an_empty_folder_of_frames_as_query_says_so(use_default, collection, tmp_path, capsys):
    index = tmp_path / "i"
    assert index_main(["build", "--videos", str(collection), "--index", str(index), "--no-progress"]) == 0
    (tmp_path / "frames").mkdir()
    assert search_main(["--index", str(index), str(tmp_path / "frames")]) == 2
    assert "is a folder of frames, and it holds none" in _one_error(capsys.readouterr().err)


def test_search_takes_the_model_and_fps_from_the_index(use_default, collection, tmp_path, capsys):
    """An index built with --baseline --fps 2 is searched with them without repeating them; a
    mismatch names only what differs."""
    index = tmp_path / "i"
    assert index_main(["build", "--videos", str(collection), "--index", str(index), "--baseline", "--fps", "2",
                       "--no-progress"]) == 0
    capsys.readouterr()
    assert search_main(["--index", str(index), str(collection / "excerpt.mp4"), "--top", "1"]) == 0
    assert search_main(["--index", str(index), str(collection / "excerpt.mp4"), "--fps", "1"]) == 2
    line = _one_error(capsys.readouterr().err)
    assert "model.fps: 2.0 -> 1.0" in line and "scorer" not in line and len(line) < 400, line
