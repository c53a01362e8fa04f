"""The worker: a batch round trip, bad images, rejected batches, the kill file, the stage."""
from __future__ import annotations

import io
import json
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

import models_support as ms
from conftest import REPO, cli_env
from pipeline.batches.batchfile import WorkerDirs, remove_tree
from pipeline.batches.results import list_results, read_result
from pipeline.models.batch_run import DONE, REJECTED, SKIPPED, STOPPED, process_batch
from pipeline.stages.worker.entry import work


@pytest.fixture(scope="module")
def embedder():
    return ms.test_embedder()


@pytest.fixture
def dirs(tmp_path) -> WorkerDirs:
    return WorkerDirs.under(tmp_path).ensure()


def _work_once(dirs, embedder, stop=lambda: False):
    return work(dirs, embedder, once=True, checkpoint=lambda: not stop(), stop_requested=stop,
                sleep=lambda s: False, poll_s=0.1)


def test_batch_round_trip_gives_aligned_rows(dirs, embedder):
    path, rows = ms.make_batch(dirs.inbox, "b0001", 7)
    assert _work_once(dirs, embedder)[DONE] == 1
    assert not path.exists()                                   # taken out of the inbox
    result = read_result(dirs.outbox / "b0001", manifest=rows)
    assert result.ids == [r.key for r in rows] and result.failed == []
    assert result.fingerprint == embedder.models.fingerprint()
    # row i of every file is image i: recompute from the archived bg-removed JPEG
    for i in (0, 4, 6):
        fed = Image.open(result.image_path(i)).convert("RGB")
        for name in ("clip_vitb32", "dinov2_large", "dinov3_base"):
            want = embedder.models.get(name).embed_images([fed])[0]
            np.testing.assert_allclose(result.vectors[name][i], want, atol=1e-4)
        want_text = embedder.models.get("clip_vitl14").embed_texts([rows[i].text])[0]
        np.testing.assert_allclose(result.vectors["clip_vitl14_text"][i], want_text, atol=1e-4)


def test_corrupt_and_empty_images_fail_alone(dirs, embedder):
    good = io.BytesIO()
    Image.new("RGB", (40, 30), (90, 60, 30)).save(good, format="PNG")
    truncated = ms.furniture_jpeg(2)[:200]
    path, rows = ms.make_batch(dirs.inbox, "b0002", 6,
                               bad={1: b"", 3: b"garbage, not an image", 4: truncated,
                                    5: good.getvalue()})
    assert _work_once(dirs, embedder)[DONE] == 1
    result = read_result(dirs.outbox / "b0002", manifest=rows)
    assert result.ids == [rows[0].key, rows[2].key, rows[5].key]   # no placeholder rows
    reasons = {(f["listing_id"], f["image_id"]): f["reason"] for f in result.failed}
    assert reasons[rows[1].key] == "empty file (0 bytes)"
    assert reasons[rows[3].key].startswith("undecodable image")
    assert reasons[rows[4].key].startswith("undecodable image")
    assert all(v.shape[0] == 3 for v in result.vectors.values())
    assert sorted(p.name for p in (result.path / "images").iterdir()) == sorted(
        rows[i].image_name for i in (0, 2, 5))                    # no image for a failed row


def test_bad_batch_is_moved_aside_and_the_worker_goes_on(dirs, embedder):
    bad, _ = ms.make_batch(dirs.inbox, "b0003", 3)
    (bad / "images" / "1000_50000.jpg").unlink()
    ms.make_batch(dirs.inbox, "b0004", 2)
    totals = _work_once(dirs, embedder)
    assert totals[REJECTED] == 1 and totals[DONE] == 1
    assert not bad.exists() and (dirs.rejected / "b0003" / "REJECTED.txt").is_file()
    rejection = read_result(dirs.outbox / "b0003")
    assert rejection.status == "rejected" and "have no file" in rejection.reason
    assert read_result(dirs.outbox / "b0004").status == "ok"


def _stop_after_first_chunk():
    calls = []

    def stop():  # the kill file appears once the first chunk of images is embedded
        calls.append(1)
        return len(calls) > 1

    return stop


def test_kill_mid_batch_keeps_the_finished_rows_and_the_next_run_does_only_the_rest(dirs, embedder):
    """A stop in mid-batch leaves no result and the batch untouched in the inbox, but keeps
    the rows already embedded (hours of CPU on a 10,000-image batch): the next run embeds
    only the others, and its result is the one an uninterrupted run gives."""
    path, rows = ms.make_batch(dirs.inbox, "b0005", 12, bad={1: b""})
    before = sorted((p.name, p.stat().st_size) for p in (path / "images").iterdir())
    totals = _work_once(dirs, embedder, stop=_stop_after_first_chunk())
    assert totals[STOPPED] == 1
    assert list_results(dirs.outbox) == []
    assert [p.name for p in dirs.outbox.iterdir()] == [".b0005.kept"]
    assert sorted((p.name, p.stat().st_size) for p in (path / "images").iterdir()) == before
    kept = json.loads((dirs.outbox / ".b0005.kept" / "kept.json").read_text())
    size = embedder.effective_batch_size()
    assert len(kept["ok"]) == size and kept["failed"] == [[1, "empty file (0 bytes)"]]
    assert sorted(p.name for p in (dirs.outbox / ".b0005.kept" / "images").iterdir()) == sorted(
        rows[i].image_name for i in kept["ok"])
    embedded_before = embedder.clock.images["clip_vitb32"]
    assert _work_once(dirs, embedder)[DONE] == 1
    assert embedder.clock.images["clip_vitb32"] - embedded_before == 12 - 1 - size
    resumed = read_result(dirs.outbox / "b0005", manifest=rows)
    assert resumed.ids == [r.key for i, r in enumerate(rows) if i != 1]
    assert [(f["listing_id"], f["image_id"]) for f in resumed.failed] == [rows[1].key]
    assert [p.name for p in dirs.outbox.iterdir()] == ["b0005"]
    # the same batch, never stopped
    _, rows_again = ms.make_batch(dirs.inbox, "b0105", 12, bad={1: b""})
    assert _work_once(dirs, embedder)[DONE] == 1
    whole = read_result(dirs.outbox / "b0105", manifest=rows_again)
    for name in whole.vectors:
        np.testing.assert_allclose(resumed.vectors[name], whole.vectors[name], atol=1e-4)


def test_kept_rows_that_do_not_fit_are_dropped_and_orphans_removed(dirs, embedder):
    path, rows = ms.make_batch(dirs.inbox, "b0009", 10)
    assert _work_once(dirs, embedder, stop=_stop_after_first_chunk())[STOPPED] == 1
    kept = dirs.outbox / ".b0009.kept"
    meta = json.loads((kept / "kept.json").read_text())
    meta["fingerprint"] = "other models"
    (kept / "kept.json").write_text(json.dumps(meta))
    embedded_before = embedder.clock.images["clip_vitb32"]
    assert _work_once(dirs, embedder)[DONE] == 1
    assert embedder.clock.images["clip_vitb32"] - embedded_before == 10   # all of it again
    assert read_result(dirs.outbox / "b0009", manifest=rows).ids == [r.key for r in rows]
    assert not kept.exists()
    # kept rows of a batch that left the inbox (withdrawn by the orchestrator) go at start
    ms.make_batch(dirs.inbox, "b0010", 10)
    assert _work_once(dirs, embedder, stop=_stop_after_first_chunk())[STOPPED] == 1
    remove_tree(dirs.inbox / "b0010")
    _work_once(dirs, embedder)
    assert not (dirs.outbox / ".b0010.kept").exists()


def test_batch_with_a_result_already_is_only_cleaned_up(dirs, embedder):
    path, rows = ms.make_batch(dirs.inbox, "b0006", 2)
    assert process_batch(dirs, path, embedder) == DONE
    again, _ = ms.make_batch(dirs.inbox, "b0006", 2)   # as if the clean-up had not happened
    before = (dirs.outbox / "b0006" / "result.json").read_bytes()
    assert process_batch(dirs, again, embedder) == SKIPPED
    assert not again.exists() and (dirs.outbox / "b0006" / "result.json").read_bytes() == before


def test_model_major_order_gives_the_same_vectors(dirs, embedder):
    """unload_between_models (small GPUs) runs model by model over the batch."""
    from pipeline.models.embed import Embedder
    from pipeline.models.loading import ModelSet
    from pipeline.models.registry import ModelSettings

    unloading = Embedder(ModelSet(ModelSettings(profile="test", device="cpu",
                                                unload_between_models=True)),
                         embedder.remover, batch_size=3, prep_threads=2, prefetch=4)
    _, rows = ms.make_batch(dirs.inbox, "b0007", 5, bad={2: b""})
    assert process_batch(dirs, dirs.inbox / "b0007", unloading) == DONE
    assert unloading.models.loaded_names() == []
    a = read_result(dirs.outbox / "b0007", manifest=rows)
    _, rows8 = ms.make_batch(dirs.inbox, "b0008", 5, bad={2: b""})
    assert process_batch(dirs, dirs.inbox / "b0008", embedder) == DONE
    b = read_result(dirs.outbox / "b0008", manifest=rows8)
    assert a.ids == b.ids and len(a.failed) == 1
    for name in a.vectors:
        np.testing.assert_allclose(a.vectors[name], b.vectors[name], atol=1e-4)


def test_worker_stage_runs_once_from_the_cli(tmp_path):
    root = ms.sandbox_root(tmp_path / "root")
    dirs = WorkerDirs.under(root.path).ensure()
    _, rows = ms.make_batch(dirs.inbox, "b0100", 3)
    out = subprocess.run([sys.executable, "-m", "imageselector", "--root", str(root.path),
                          "run", "worker", "--once"], cwd=REPO, env=cli_env(),
                         capture_output=True, text=True, timeout=180)
    assert out.returncode == 0, out.stderr + out.stdout
    assert read_result(dirs.outbox / "b0100", manifest=rows).ids == [r.key for r in rows]
    hb = json.loads(root.heartbeat_path("worker").read_text())
    assert hb["counters"]["images"] == 3 and hb["counters"]["batches"] == 1
    assert hb["exit"]["code"] == 0


def test_step_seconds_in_each_result_are_that_batch_s_own(dirs, embedder):
    """One embedder serves every batch of a worker process: each result.json must carry the
    seconds of its own batch, not the process's running total."""
    before = dict(embedder.clock.seconds)
    for batch_id in ("b0011", "b0012"):
        ms.make_batch(dirs.inbox, batch_id, 4)
    assert _work_once(dirs, embedder)[DONE] == 2
    per_batch = [json.loads((dirs.outbox / b / "result.json").read_text())["seconds"]
                 for b in ("b0011", "b0012")]
    for step in ("bgremove", "clip_vitb32", "dinov2_large"):
        spent = embedder.clock.seconds[step] - before.get(step, 0.0)
        assert per_batch[0][step] > 0 and per_batch[1][step] > 0
        assert abs(per_batch[0][step] + per_batch[1][step] - spent) < 0.01


def test_damaged_kept_vectors_are_dropped_not_merged(dirs, embedder, caplog):
    path, rows = ms.make_batch(dirs.inbox, "b0013", 10)
    assert _work_once(dirs, embedder, stop=_stop_after_first_chunk())[STOPPED] == 1
    damaged = dirs.outbox / ".b0013.kept" / "dinov2_base.kept.f32"
    damaged.write_bytes(bytes(damaged.stat().st_size))          # zeros: not unit vectors
    embedded_before = embedder.clock.images["dinov2_base"]
    with caplog.at_level("WARNING", logger="imageselector.worker"):
        assert _work_once(dirs, embedder)[DONE] == 1
    assert "not unit length" in caplog.text
    assert embedder.clock.images["dinov2_base"] - embedded_before == 10
    assert read_result(dirs.outbox / "b0013", manifest=rows).ids == [r.key for r in rows]
