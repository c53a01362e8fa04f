"""`imageselector reembed MODEL` on a sandbox index: three shards of old vectors over images
that sit in the all-image tars. The re-embed (forked children) is killed by pid after its
first slice, stopped gracefully once, killed three times at random moments, then resumed
to the end. After each stop: `index verify` passes and search sees the old column or the
whole new one, never a mix. At the end every row of the model holds the vector of its own
tarred image, search finds an image by its new vector, and no other model's file changed."""
from __future__ import annotations

import hashlib
import os
import random
import shutil
import select
import signal
import time

import pytest

from pipeline.core.db import connect
from pipeline.core.root import Root
from pipeline.index import columns as cols
from pipeline.index import verify
from pipeline.reembed.status import reembed_progress
from tests.index_support import FP
from tests.reembed_support import (MODEL, assert_column, build_root, column_embedder,
                                    expected_vectors)

pytestmark = pytest.mark.timeout(180)


@pytest.fixture(scope="module")
def template(tmp_path_factory):
    return build_root(tmp_path_factory.mktemp("reembed") / "root").path


@pytest.fixture(scope="module")
def embedder():
    return column_embedder()


@pytest.fixture
def root(template, tmp_path):
    shutil.copytree(template, tmp_path / "root")
    return Root(tmp_path / "root").ensure()


def _files_sha(root) -> dict[str, str]:
    """Every file of the store except the model's derived file, what a re-embed adds and
    the files it must rewrite (image_index.json holds every model's hash)."""
    out = {}
    base = root.embeddings_dir
    for dirpath, _dirs, files in os.walk(base):
        for name in files:
            p = os.path.join(dirpath, name)
            rel = os.path.relpath(p, base)
            if f"{os.sep}{cols.COLUMNS_DIR}{os.sep}" in rel or name in (
                    f"{MODEL}.faiss", "image_index.json", "derived.json", cols.COLUMNS_NAME) \
                    or name.startswith(".") or name.startswith("reembed_"):
                continue
            out[rel] = hashlib.sha256(open(p, "rb").read()).hexdigest()
    return out


def _search_top(root, vector) -> tuple[int, float]:
    from pipeline.search.engine import SearchEngine
    from pipeline.search.settings import SearchSettings

    hit = SearchEngine(root.embeddings_dir, SearchSettings()).search_vectors({MODEL: vector[None, :]}, k=1)[0]
    return hit.listing_id, hit.models[MODEL][1]


def _killed(root, embedder, delay_s: float | None) -> bool:
    """The re-embed in a forked child of this process (the model already loaded), killed
    (SIGKILL, by pid) once it has finished a slice: there and then (``delay_s`` None: it
    waits in its progress callback), or ``delay_s`` after letting it go on (a random moment
    in the next slices: reading, embedding, writing files, or the switch). False when the
    child had no slice left to do (it only finished the switch) and exited by itself."""
    from imageselector.commands.reembed import slice_loader
    from pipeline.reembed.run import LocalRoute, reembed

    done_r, done_w = os.pipe()
    go_r, go_w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(done_r)
        os.close(go_w)
        # OpenMP (libgomp: faiss, torch) is not fork-safe: a thread pool the parent made
        # earlier in the suite deadlocks the child's first parallel region; one thread runs inline
        import faiss
        import torch

        faiss.omp_set_num_threads(1)
        torch.set_num_threads(1)

        def finished(w, done, total):
            os.write(done_w, b".")
            os.read(go_r, 1)

        try:
            conn = connect(root.db_path)
            reembed(root, conn, MODEL, LocalRoute(embedder), slice_loader(root, conn, False),
                    on_slice=finished)
        finally:
            os._exit(0)
    os.close(done_w)
    os.close(go_r)
    killed = False
    try:
        ready, _, _ = select.select([done_r], [], [], 120)
        if not ready:   # a hung child must fail this test, not stall the whole suite
            os.kill(pid, signal.SIGKILL)
            killed = True
            raise AssertionError("the forked re-embed did not finish a slice in 120 s (hung)")
        if os.read(done_r, 1) != b".":
            return False
        if delay_s is not None:
            os.close(go_w)                     # a closed pipe: every later read returns at once
            go_w = None
            time.sleep(delay_s)
        os.kill(pid, signal.SIGKILL)
        killed = True
    finally:
        os.close(done_r)
        if go_w is not None:
            os.close(go_w)
        _, status = os.waitpid(pid, 0)
    if killed:       # (the child may have ended by itself just before the signal)
        assert os.WIFSIGNALED(status) or os.WEXITSTATUS(status) == 0
    else:
        assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0
    return killed


def _consistent(root, expected, probe_key) -> bool:
    """verify passes; search sees the old column, or (switched) the new one: never a mix.
    Returns whether the column is switched on."""
    conn = connect(root.db_path)
    try:
        problems, _ = verify(root, conn)
        assert problems == []
        switched = bool(cols.read_lines(root.embeddings_dir))
        listing, score = _search_top(root, expected[probe_key])
        assert (score > 0.99 and listing == probe_key[0]) if switched else score < 0.99
        return switched
    finally:
        conn.close()


def test_reembed_killed_resumed_switches_once_every_shard_is_done(root, embedder):
    from imageselector.commands.reembed import slice_loader
    from pipeline.reembed.run import LocalRoute, reembed

    before = _files_sha(root)
    expected = expected_vectors(root, embedder)
    probe_key = sorted(expected)[7]
    assert _search_top(root, expected[probe_key])[1] < 0.99    # the old column: not this vector

    assert _killed(root, embedder, None)          # after its first slice, nothing switched
    assert not _consistent(root, expected, probe_key)

    conn = connect(root.db_path)
    load = slice_loader(root, conn, text_needed=False)
    stopped = reembed(root, conn, MODEL, LocalRoute(embedder), load, should_stop=lambda: True)
    assert stopped["state"] == "stopped" and stopped["slices"] == 1
    assert not _consistent(root, expected, probe_key)
    [progress] = reembed_progress(root.embeddings_dir)       # the status snapshot's section
    assert (progress["model"], progress["slices_done"], progress["slices_total"],
            progress["rows_done"], progress["rows_total"], progress["switched"]) == \
        (MODEL, 2, 6, 8, 20, False)                           # shard 0's two batch lines

    rng = random.Random(21)
    for _ in range(3):                            # killed at random moments after a slice
        _killed(root, embedder, rng.uniform(0.0, 0.03))
        if _consistent(root, expected, probe_key):
            break
    done = reembed(root, conn, MODEL, LocalRoute(embedder), load)
    assert done["state"] == "switched"
    assert done["fingerprint_now"] == embedder.fingerprint() != FP
    [line] = cols.read_lines(root.embeddings_dir)
    assert sorted(line["shards"]) == ["0", "1", "2"]

    problems, summary = verify(root, conn)
    assert problems == [] and summary["rows"] == 20
    assert_column(root, conn, expected)          # each row holds its own image's new vector
    listing, score = _search_top(root, expected[probe_key])
    assert listing == probe_key[0] and score > 0.99
    assert _files_sha(root) == before            # no other model's file, no shard part changed
    assert not (root.embeddings_dir / f"reembed_{MODEL}.json").exists()
    assert reembed_progress(root.embeddings_dir) == []
    # the same command again (the weights unchanged): nothing computed, nothing switched
    repeat = reembed(root, conn, MODEL, LocalRoute(embedder), load)
    assert repeat["already"] and repeat["slices"] == 0 and repeat["column_id"] == line["column_id"]
    assert len(cols.read_lines(root.embeddings_dir)) == 1
    forced = reembed(root, conn, MODEL, LocalRoute(embedder), load, again=True)
    assert forced["state"] == "switched" and forced["column_id"] != line["column_id"]
    assert len(cols.read_lines(root.embeddings_dir)) == 2 and verify(root, conn)[0] == []
    conn.close()


def test_a_model_with_a_text_tower_gets_both_columns_switched(root):
    """clip_vitb32: the image vectors and the text tower's (the listing texts from the DB)
    are one column switch; verify passes and the text rows are the texts' vectors."""
    from imageselector.commands.reembed import slice_loader
    from pipeline.reembed.run import LocalRoute, reembed
    from pipeline.stages.orchestrate.ledger import text_for

    conn = connect(root.db_path)
    titles = {lid: f"Walnut chair {lid}" for (lid,) in conn.execute(
        "SELECT DISTINCT listing_id FROM image_status")}
    first = min(titles)
    with conn:                                   # one listing without a row: the empty text
        conn.executemany("INSERT INTO listings_static(listing_id, snapshot_timestamp, title, "
                         "materials) VALUES (?, 0, ?, '[\"oak\"]')",
                         [(lid, t) for lid, t in titles.items() if lid != first])
    clip = column_embedder("clip_vitb32")
    done = reembed(root, conn, "clip_vitb32", LocalRoute(clip), slice_loader(root, conn, True))
    assert done["state"] == "switched" and done["vectors"] == ["clip_vitb32", "clip_vitb32_text"]
    assert verify(root, conn)[0] == []
    expected = expected_vectors(root, clip)
    assert_column(root, conn, expected, "clip_vitb32")
    text_of = {lid: text_for(t, '["oak"]') for lid, t in titles.items() if lid != first}
    text_of[first] = text_for(None, None)
    tower = clip.models.get("clip_vitb32")
    keys = sorted(expected)
    want = dict(zip(keys, tower.embed_texts([text_of[lid] for lid, _ in keys])))
    assert_column(root, conn, want, "clip_vitb32_text")
    conn.close()


def test_reembed_refuses_an_unknown_model_in_one_line(root):
    from tests.support import run_cli

    out = run_cli("reembed", "clip_vitz99", root=root)
    assert out.returncode != 0
    assert "unknown model 'clip_vitz99'" in out.stderr and out.stderr.count("\n") <= 2
