"""`imageselector index prune-columns`: after a model was re-embedded twice and a third run
was stopped part-way, the first column (replaced) goes, the column in force and the one of
the re-embed in progress stay, search and `index verify` are unchanged; a dry run removes
nothing; a running re-embed (its lock held) makes it refuse in one line."""
from __future__ import annotations

import os

import pytest

from pipeline.core.db import connect
from pipeline.core.errors import UserError
from pipeline.core.fsutil import try_flock
from pipeline.index import columns as cols
from pipeline.index import verify
from pipeline.reembed.job import job_path, lock_path
from pipeline.reembed.prune import prune_columns
from tests.reembed_support import MODEL, assert_column, build_root, column_embedder, expected_vectors

pytestmark = pytest.mark.timeout(240)


@pytest.fixture(scope="module")
def embedder():
    return column_embedder()


def _reembed(root, embedder, again=False, stop_after=None):
    from imageselector.commands.reembed import slice_loader
    from pipeline.reembed.run import LocalRoute, reembed

    done = []
    conn = connect(root.db_path)
    try:
        return reembed(root, conn, MODEL, LocalRoute(embedder), slice_loader(root, conn, False),
                       should_stop=lambda: stop_after is not None and len(done) >= stop_after,
                       on_slice=lambda *a: done.append(a), again=again)
    finally:
        conn.close()


def _column_dirs(root) -> dict[str, int]:
    out: dict[str, int] = {}
    for folder in cols.folders(sorted(root.embeddings_dir.glob("shard_*"))):
        out[folder.name] = out.get(folder.name, 0) + 1
    return out


def test_prune_removes_the_replaced_column_and_keeps_in_force_and_in_progress(tmp_path, embedder):
    root = build_root(tmp_path / "root")
    first = _reembed(root, embedder)["column_id"]
    second = _reembed(root, embedder, again=True)["column_id"]
    third = _reembed(root, embedder, again=True, stop_after=1)
    assert third["state"] == "stopped" and job_path(root.embeddings_dir, MODEL).exists()
    before = _column_dirs(root)
    assert before == {f"{MODEL}.{first}": 3, f"{MODEL}.{second}": 3, f"{MODEL}.{third['column_id']}": 1}

    listed = prune_columns(root, dry_run=True)
    assert {r["column_id"] for r in listed} == {first} and len(listed) == 3
    assert all(r["bytes"] > 0 for r in listed)
    assert _column_dirs(root) == before                    # a dry run removes nothing

    removed = prune_columns(root)
    assert [r["folder"] for r in removed] == [r["folder"] for r in listed]
    assert _column_dirs(root) == {f"{MODEL}.{second}": 3, f"{MODEL}.{third['column_id']}": 1}
    conn = connect(root.db_path)
    try:
        assert verify(root, conn)[0] == []
        assert_column(root, conn, expected_vectors(root, embedder))
    finally:
        conn.close()
    assert prune_columns(root) == []                       # nothing left to prune
    finished = _reembed(root, embedder)                    # the stopped run resumes and switches
    assert finished["state"] == "switched" and finished["column_id"] == third["column_id"]
    assert {r["column_id"] for r in prune_columns(root)} == {second}


def test_prune_refuses_while_a_reembed_runs(tmp_path):
    root = build_root(tmp_path / "root")
    fd = try_flock(lock_path(root.embeddings_dir, MODEL))
    try:
        with pytest.raises(UserError, match=rf"a `imageselector reembed {MODEL}` is running on this root"):
            prune_columns(root)
    finally:
        os.close(fd)
