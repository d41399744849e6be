"""The one resumable loop (loop.RecordLoop): resume, healing, claims, unreadable items, counts."""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from functools import partial
from pathlib import Path

import pytest

from diffusion_classifier.data.images import Unreadable, UnreadableImageError
from diffusion_classifier.loop import RecordLoop, shard
from diffusion_classifier.claims import CLAIM_SUFFIX
from diffusion_classifier.records import MANIFEST, load_record, record_path, save_record, write_json


def _path(folder: Path, key: int) -> Path:
    return record_path(folder, key, 100)


def _load(keys, bad=()):
    """Items are their keys squared; keys in `bad` fail to decode."""
    return ([(k, k * k) for k in keys if k not in bad],
            [(k, Unreadable(k, f"img{k}.png", "a truncated PNG")) for k in keys if k in bad])


def _run(folder, keys, size=2, **kw):
    """Run the loop over keys; each record is {"value": item, "pred", "label"} with pred == label for even keys."""
    seen = []
    loop_kw = {k: kw.pop(k) for k in ("skip_unreadable", "unreadable", "collect") if k in kw}
    bad = kw.pop("bad", ())
    with RecordLoop(folder, partial(_path, folder), ("value", "pred", "label"), show_progress=False, **loop_kw) as loop:
        for group in loop.groups(keys, partial(_load, bad=bad), size, **kw):
            assert 1 <= len(group) <= size
            for k, item in group:
                seen.append(k)
                loop.save(k, {"value": item, "pred": k % 2, "label": 0}, correct=k % 2 == 0)
    return loop.stats, seen


def test_resume_computes_only_missing_records_and_counts_existing_on_request(tmp_path):
    stats, seen = _run(tmp_path, [1, 2, 3])
    assert seen == [1, 2, 3] and stats.done == 3 and stats.skipped == 0
    assert (stats.correct, stats.counted) == (1, 3)
    assert load_record(_path(tmp_path, 2)) == {"value": 4, "pred": 0, "label": 0}
    stats, seen = _run(tmp_path, [1, 2, 3, 4, 5], count_existing=True, correct=lambda r: r["pred"] == r["label"])
    assert seen == [4, 5] and stats.skipped == 3 and stats.done == 2
    assert (stats.correct, stats.counted) == (1 + 1, 3 + 2)  # key 2 found, key 4 computed
    stats, seen = _run(tmp_path, [1, 2, 3, 4, 5], correct=lambda r: r["pred"] == r["label"])
    assert seen == [] and stats.counted == 0  # a finished run reports the accuracy of the records it found
    assert stats.summary("F").startswith("F: accuracy 40.00% over 5 images (0 classified now, 5 already done")
    stats, _ = _run(tmp_path / "empty", [])
    assert stats.summary("F").startswith("F: no images counted")
    # a resume's final line is the accuracy over every record asked for, found or computed, counted or not
    for count in (False, True):
        _run(tmp_path / f"b{count}", [1, 2, 3])  # key 2 right
        stats, seen = _run(tmp_path / f"b{count}", [1, 2, 3, 4, 5], count_existing=count,
                           correct=lambda r: r["pred"] == r["label"])  # key 4 right
        assert seen == [4, 5] and stats.accuracy == (40.0 if count else 50.0)  # the running accuracy
        assert stats.summary("F").startswith("F: accuracy 40.00% over 5 images (2 classified now, 3 already done")
    assert not list(tmp_path.glob(f"*{CLAIM_SUFFIX}"))


def test_broken_records_are_moved_aside_and_recomputed(tmp_path):
    _run(tmp_path, [1, 2])
    _path(tmp_path, 1).write_bytes(b"half a record")
    save_record({"value": 4}, _path(tmp_path, 2))  # readable, but lacks keys
    stats, seen = _run(tmp_path, [1, 2], collect=True)
    assert seen == [1, 2] and stats.repaired == 2
    assert sorted(p.name for p in tmp_path.glob("*.corrupt")) == ["01.pt.corrupt", "02.pt.corrupt"]
    assert stats.records[1]["value"] == 1


def test_an_unreadable_item_stops_the_run_keeping_finished_records(tmp_path):
    with pytest.raises(UnreadableImageError, match=r"img3\.png.*a truncated PNG.*the 2 images finished in this run are saved"):
        _run(tmp_path, [1, 2, 3, 4], size=1, bad={3})
    assert sorted(p.name for p in tmp_path.glob("*.pt")) == ["01.pt", "02.pt"]
    assert not list(tmp_path.glob(f"*{CLAIM_SUFFIX}"))  # the loop let go of every claim on its way out


def test_skip_unreadable_leaves_items_out_and_lists_them_in_the_manifest(tmp_path):
    write_json(tmp_path / MANIFEST, {"settings": {}})
    early = Unreadable(7, "img7.png", "not an image")
    stats, seen = _run(tmp_path, [1, 2, 3, 4], bad={3}, skip_unreadable=True, unreadable=[early])
    assert seen == [1, 2, 4] and [b.index for b in stats.unreadable] == [7, 3]
    assert "2 unreadable skipped: img7.png, img3.png" in stats.summary(tmp_path)
    table = json.loads((tmp_path / MANIFEST).read_text())["unreadable"]
    assert table == {"3": "img3.png: a truncated PNG", "7": "img7.png: not an image"}
    assert not (tmp_path / f"03.pt{CLAIM_SUFFIX}").exists()


def _claim(folder: Path, key: int, pid: int, host: str | None = None) -> None:
    Path(str(_path(folder, key)) + CLAIM_SUFFIX).write_text(
        json.dumps({"pid": pid, "host": host or socket.gethostname(), "time": 0}))


def test_items_claimed_by_a_live_process_are_left_to_it_and_a_dead_ones_taken_over(tmp_path):
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    try:
        _claim(tmp_path, 2, live.pid)
        _claim(tmp_path, 3, dead.pid)
        stats, seen = _run(tmp_path, [1, 2, 3])
        assert seen == [1, 3] and stats.elsewhere == 1
        assert Path(str(_path(tmp_path, 2)) + CLAIM_SUFFIX).exists()  # still the live process's
    finally:
        live.kill()
        live.wait()


def test_wait_collects_what_another_process_finishes(tmp_path, monkeypatch):
    """With wait, the loop ends only when every key has a record; a record another process writes is read back."""
    _claim(tmp_path, 2, os.getppid())  # a live process on this host holds key 2
    waits = []

    def finish_elsewhere(_seconds):  # instead of sleeping: the other process writes its record
        waits.append(1)
        save_record({"value": 4, "pred": 0, "label": 0}, _path(tmp_path, 2))

    monkeypatch.setattr("diffusion_classifier.loop.time.sleep", finish_elsewhere)
    stats, seen = _run(tmp_path, [1, 2, 3], collect=True, wait=True)
    assert seen == [1, 3] and sorted(stats.records) == [1, 2, 3] and waits == [1]
    assert stats.records[2]["value"] == 4 and stats.done == 2


def test_shard_takes_every_nth_and_checks_its_flags():
    assert shard(list(range(10)), 3, 1) == [1, 4, 7]
    with pytest.raises(Exception, match=r"--worker_idx must be in 0\.\.2 for --n_workers 3, got 3"):
        shard([], 3, 3)
