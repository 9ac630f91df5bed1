"""python -m hapvr.extract on the inputs users hand it: nested folders, duplicate ids, list
files with spaces, single files, .ogv, truncated videos, and a run killed half-way."""

import os
import signal
import subprocess
import sys
import time

import av
import h5py
import numpy as np
import pytest

sys.path.insert(0, os.path.dirname(__file__))
from test_data import _write_video  # noqa: E402

from hapvr.extract import main as extract_main  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _write_ogv(path, seconds=2, fps=4):
    with av.open(str(path), "w", format="ogg") as c:
        s = c.add_stream("libvpx", rate=fps)
        s.width, s.height, s.pix_fmt = 64, 48, "yuv420p"
        for i in range(seconds * fps):
            img = np.full((48, 64, 3), (i * 30) % 256, dtype=np.uint8)
            for p in s.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                c.mux(p)
        for p in s.encode():
            c.mux(p)


def _contents(path):
    with h5py.File(path, "r") as f:
        return {k: f[k][()] for k in f}, dict(f.attrs)


def _run(argv, capsys):
    code = extract_main([str(a) for a in argv])
    return code, capsys.readouterr().err


def test_nested_folders_get_flat_ids_listed_in_the_summary(tmp_path, capsys):
    videos = tmp_path / "v"
    for year in ("2019", "2020"):
        (videos / year).mkdir(parents=True)
        _write_video(videos / year / "beach.avi", seconds=2, fps=4)
    _write_ogv(videos / "clip.ogv")
    (videos / "notes.txt").write_text("not a video")
    out = tmp_path / "f.hdf5"
    code, err = _run(["--videos", videos, "--output", out, "--raw", "--no-progress"], capsys)
    assert code == 0, err
    feats, attrs = _contents(out)
    assert sorted(feats) == ["2019__beach", "2020__beach", "clip"]  # .ogv read in folder mode
    assert feats["clip"].shape == (2, 9, 1752) and attrs["hapvr_space"] == "raw"
    assert "2019/beach.avi -> 2019__beach" in err and "notes.txt" in err
    assert not (tmp_path / "f.hdf5.parts").exists()
    # a rerun finds every id and adds nothing
    code, err = _run(["--videos", videos, "--output", out, "--raw", "--no-progress"], capsys)
    assert code == 0 and "3 already extracted" in err and "0 to extract" in err


def test_duplicate_ids_are_refused_before_anything_is_written(tmp_path, capsys):
    videos = tmp_path / "v"
    videos.mkdir()
    _write_video(videos / "clip.mp4", seconds=2, fps=4)
    _write_video(videos / "clip.avi", seconds=2, fps=4)
    _write_video(videos / "other.mp4", seconds=2, fps=4)
    out = tmp_path / "f.hdf5"
    code, err = _run(["--videos", videos, "--output", out, "--raw", "--no-progress"], capsys)
    assert code == 2
    line = [x for x in err.splitlines() if x.startswith("error:")][0]
    assert "clip:" in line and "clip.mp4" in line and "clip.avi" in line and "ID<TAB>PATH" in line
    assert not out.exists() and not (tmp_path / "f.hdf5.parts").exists()
    # the list-file form the error suggests, with a path holding spaces
    spaced = tmp_path / "my videos"
    spaced.mkdir()
    os.rename(videos / "clip.avi", spaced / "clip copy.avi")
    lst = tmp_path / "list.txt"
    lst.write_text(f"# id<TAB>path\nclip_mp4\t{videos / 'clip.mp4'}\nclip_avi\t{spaced / 'clip copy.avi'}\n"
                   f"{videos / 'other.mp4'}\n\n")
    code, err = _run(["--videos", lst, "--output", out, "--raw", "--no-progress"], capsys)
    assert code == 0, err
    assert sorted(_contents(out)[0]) == ["clip_avi", "clip_mp4", "other"]


def test_a_single_video_file_and_a_path_with_spaces_alone_on_a_line(tmp_path, capsys):
    spaced = tmp_path / "a folder"
    spaced.mkdir()
    _write_video(spaced / "my clip.mp4", seconds=3, fps=4)
    out = tmp_path / "one.hdf5"
    code, err = _run(["--videos", spaced / "my clip.mp4", "--output", out, "--raw", "--no-progress"], capsys)
    assert code == 0, err
    assert list(_contents(out)[0]) == ["my clip"] and _contents(out)[0]["my clip"].shape[0] == 3
    lst = tmp_path / "list.txt"
    lst.write_text(f"{spaced / 'my clip.mp4'}\n")
    code, err = _run(["--videos", lst, "--output", tmp_path / "two.hdf5", "--raw", "--no-progress"], capsys)
    assert code == 0 and list(_contents(tmp_path / "two.hdf5")[0]) == ["my clip"]


def test_truncated_and_broken_videos_are_named_in_warnings_summary_and_file(tmp_path, capsys):
    videos = tmp_path / "v"
    videos.mkdir()
    _write_video(tmp_path / "whole.mkv", seconds=10, fps=4)
    data = (tmp_path / "whole.mkv").read_bytes()
    (videos / "cut.mkv").write_bytes(data[: len(data) // 3])
    _write_video(videos / "fine.mp4", seconds=2, fps=4)
    (videos / "broken.mp4").write_bytes(os.urandom(3000))
    out = tmp_path / "f.hdf5"
    code, err = _run(["--videos", videos, "--output", out, "--raw", "--no-progress"], capsys)
    assert code == 3, err  # finished, with one input failed (listed)
    feats = _contents(out)[0]
    assert sorted(feats) == ["cut", "fine"] and feats["cut"].shape[0] < 10
    assert "warning: cut: truncated" in err and "warning: skipping broken" in err
    assert "failed 1, with warnings 1" in err
    listed = (tmp_path / "f.hdf5.failures.txt").read_text().splitlines()
    assert [x.split("\t")[:2] for x in listed] == [["broken", "failed"], ["cut", "warning"]]


def _cmd(videos, out):
    return [sys.executable, "-m", "hapvr.extract", "--videos", str(videos), "--output", str(out), "--raw",
            "--no-progress"]


def test_killed_run_resumes_to_the_same_file(tmp_path):
    videos = tmp_path / "v"
    videos.mkdir()
    for i in range(10):
        _write_video(videos / f"c{i}.mp4", seconds=3, fps=4, size=(64 + 8 * i, 48))
    env = dict(os.environ, PYTHONPATH=ROOT, OMP_NUM_THREADS="1")
    whole = tmp_path / "whole.hdf5"
    subprocess.run(_cmd(videos, whole), cwd=ROOT, env=env, check=True, capture_output=True, timeout=600)

    out = tmp_path / "killed.hdf5"
    parts = tmp_path / "killed.hdf5.parts"
    proc = subprocess.Popen(_cmd(videos, out), cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None and len(list(parts.glob("*.h5"))) < 3:
        time.sleep(0.05)
    assert proc.poll() is None, "the run ended before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not out.exists() and len(list(parts.glob("*.h5"))) >= 3  # killed half-way, videos kept
    rerun = subprocess.run(_cmd(videos, out), cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    assert "from an interrupted run" in rerun.stderr
    a, b = _contents(whole), _contents(out)
    assert a[1] == b[1] and sorted(a[0]) == sorted(b[0]) == [f"c{i}" for i in range(10)]
    for k in a[0]:
        np.testing.assert_array_equal(a[0][k], b[0][k])
    assert not parts.exists()


@pytest.mark.parametrize("space", ["raw", "whitened"])
def test_extending_an_existing_file_keeps_what_it_held(tmp_path, capsys, space):
    videos = tmp_path / "v"
    videos.mkdir()
    _write_video(videos / "a.mp4", seconds=2, fps=4)
    out = tmp_path / "f.hdf5"
    mode = ["--raw"] if space == "raw" else ["--fit-pca", "1"]
    assert _run(["--videos", videos, "--output", out, *mode, "--no-progress"], capsys)[0] == 0
    before = _contents(out)[0]["a"]
    _write_video(videos / "b.mp4", seconds=3, fps=4)
    code, err = _run(["--videos", videos, "--output", out, *mode, "--no-progress"], capsys)
    assert code == 0, err
    feats, attrs = _contents(out)
    assert sorted(feats) == ["a", "b"] and attrs["hapvr_space"] == space
    np.testing.assert_array_equal(feats["a"], before)
