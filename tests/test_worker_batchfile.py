"""The batch and result formats: what the worker accepts, and what the orchestrator verifies."""
from __future__ import annotations

import json
import os
import signal
import time

import numpy as np
import pytest

import models_support as ms
from pipeline.batches import batchfile, results
from pipeline.batches.batchfile import BatchError, ManifestRow, list_batches, read_batch, write_batch
from pipeline.batches.results import ResultError, ResultWriter, list_results, read_result
from pipeline.models.registry import VECTOR_DIMS, VECTOR_ORDER


def _vectors(n: int, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    out = {}
    for name in VECTOR_ORDER:
        v = rng.standard_normal((n, VECTOR_DIMS[name])).astype(np.float32)
        out[name] = v / np.linalg.norm(v, axis=1, keepdims=True)
    return out


def _write_result(outbox, batch_id, rows, failed=(), seed=0):
    writer = ResultWriter(outbox, batch_id)
    for r in rows:
        writer.add_image(r, ms.furniture_jpeg(r.image_id))
    return writer.commit(rows, _vectors(len(rows), seed), list(failed), "fp123", {"profile": "test"})


def test_batch_round_trip_and_partial_names_ignored(tmp_path):
    path, rows = ms.make_batch(tmp_path, "b1", 4)
    (tmp_path / "b2.partial").mkdir()
    (tmp_path / ".hidden").mkdir()
    assert list_batches(tmp_path) == [path]
    batch = read_batch(path)
    assert batch.batch_id == "b1" and batch.rows == rows
    assert batch.image_path(rows[0]).read_bytes() == ms.furniture_jpeg(0)
    with pytest.raises(BatchError, match="already exists"):
        write_batch(tmp_path, "b1", rows, lambda r: b"x")


@pytest.mark.parametrize("damage, message", [
    (lambda p: (p / "images" / "1000_50000.jpg").unlink(), "have no file"),
    (lambda p: (p / "images" / "9_9.jpg").write_bytes(b"x"), "not in the manifest"),
    (lambda p: (p / "manifest.json").write_text("{nope"), "not valid JSON"),
    (lambda p: _edit_manifest(p, lambda m: m["rows"].append(dict(m["rows"][0]))), "duplicate image"),
    (lambda p: _edit_manifest(p, lambda m: m.update(batch_id="other")), "its folder is"),
    (lambda p: _edit_manifest(p, lambda m: m["rows"][1].update(image_id="x")), "positive integer"),
    (lambda p: _edit_manifest(p, lambda m: m["rows"][1].pop("text")), "exactly listing_id"),
])
def test_bad_batches_are_refused_with_a_reason(tmp_path, damage, message):
    path, _ = ms.make_batch(tmp_path, "b1", 3)
    damage(path)
    with pytest.raises(BatchError, match=message):
        read_batch(path)


def _edit_manifest(path, change):
    m = json.loads((path / "manifest.json").read_text())
    change(m)
    (path / "manifest.json").write_text(json.dumps(m))


def test_result_round_trip_aligned_with_manifest(tmp_path):
    rows = ms.make_rows(5)
    ok = [rows[0], rows[1], rows[3], rows[4]]
    final = _write_result(tmp_path, "b1", ok, failed=[(rows[2], "empty file (0 bytes)")])
    assert list_results(tmp_path) == [final]
    result = read_result(final, manifest=rows)
    assert result.status == "ok" and result.ids == [r.key for r in ok]
    assert list(result.vectors) == list(VECTOR_ORDER)
    for name, v in _vectors(4).items():
        np.testing.assert_array_equal(result.vectors[name], v)
    assert result.failed == [{"listing_id": rows[2].listing_id, "image_id": rows[2].image_id,
                              "reason": "empty file (0 bytes)"}]
    assert result.fingerprint == "fp123"
    assert result.image_path(0).read_bytes() == ms.furniture_jpeg(ok[0].image_id)
    # the same result against a manifest it does not match
    with pytest.raises(ResultError, match="manifest"):
        read_result(final, manifest=list(reversed(rows)))


@pytest.mark.parametrize("damage, message", [
    (lambda p: (p / "dinov2_base.f32").write_bytes(b"\0" * 16), "checksum"),
    (lambda p: (p / "ids.json").write_text('{"rows": []}'), "checksum"),
    (lambda p: (p / "images" / "1000_50000.jpg").write_bytes(b"x"), "checksum"),
    (lambda p: (p / "images" / "1000_50000.jpg").unlink(), "missing"),
    (lambda p: (p / "result.json").write_text("{"), "not valid JSON"),
    (lambda p: (p / "clip_vitl14_text.f32").unlink(), "missing"),
])
def test_damaged_results_are_refused(tmp_path, damage, message):
    final = _write_result(tmp_path, "b1", ms.make_rows(3))
    damage(final)
    with pytest.raises(ResultError, match=message):
        read_result(final)


def test_rejection_result(tmp_path):
    final = results.write_rejection(tmp_path, "b9", "batch b9: duplicate image 1_2")
    result = read_result(final)
    assert result.status == "rejected" and "duplicate image" in result.reason and result.ids == []


def test_result_is_visible_only_when_complete_under_random_kills(tmp_path):
    """SIGKILL at a random moment of a commit: either no visible result or a whole one."""
    rows = ms.make_rows(40)
    vectors = _vectors(40)
    jpegs = {r.key: ms.furniture_jpeg(r.image_id) for r in rows}
    outcomes = {"none": 0, "complete": 0}
    for i in range(20):
        outbox = tmp_path / f"o{i}"
        outbox.mkdir()
        pid = os.fork()
        if pid == 0:  # child: write a result as the worker does, until killed
            try:
                writer = ResultWriter(outbox, "b1")
                for r in rows:
                    writer.add_image(r, jpegs[r.key])
                writer.commit(rows, vectors, [], "fp", {})
            finally:
                os._exit(0)
        time.sleep((i % 10) * 0.004)
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        found = list_results(outbox)
        if not found:
            outcomes["none"] += 1
            continue
        result = read_result(found[0], manifest=rows)  # raises if anything is partial
        assert result.ids == [r.key for r in rows]
        outcomes["complete"] += 1
        batchfile.clean_stale(outbox)
    assert outcomes["none"] + outcomes["complete"] == 20
