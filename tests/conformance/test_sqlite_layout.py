"""The SQLite file's layout version (`PRAGMA user_version`, `sqlite_store.LAYOUT_VERSION`).

A coordinator lays out a file of an older layout as its own and stamps it; a file a newer
version laid out it refuses to open (`StoreUnavailable`) and leaves exactly as it found it, so
that an older coordinator started by mistake on an upgraded file cannot rebuild the indexes
the newer one names. The pin below ties the layout to its version: change the tables, the key
columns, the indexes or the cold fields, and it fails until `LAYOUT_VERSION` is raised with it.
"""
from __future__ import annotations

import gc
import hashlib
import os
import sqlite3

import pytest

from fleet import errors
from fleet.store import Query
from shared.stores import sqlite_query
from shared.stores.sqlite_store import LAYOUT_VERSION, SqliteStore

#: The layout `LAYOUT_VERSION` names, as `layout_digest` reads it off a new file.
PINNED = {1: "7b0cf75a8e370259", 2: "08735f78f0b0abd1"}


def layout_of(path: str) -> tuple[int, list[tuple]]:
    """A file's layout version and what its schema holds (every table and index, with its SQL)."""
    conn = sqlite3.connect(path)
    try:
        (version,) = conn.execute("PRAGMA user_version").fetchone()
        schema = conn.execute("SELECT type, name, tbl_name, sql FROM sqlite_master ORDER BY type, name").fetchall()
    finally:
        conn.close()
    return version, schema


def layout_digest(path: str) -> str:
    _, schema = layout_of(path)
    cold = sorted((container, sorted(fields)) for container, fields in sqlite_query.COLD.items())
    return hashlib.sha256(repr((schema, cold)).encode()).hexdigest()[:16]


def set_version(path: str, version: int) -> None:
    conn = sqlite3.connect(path)
    conn.execute(f"PRAGMA user_version = {version}")
    conn.close()


def test_a_new_file_is_stamped_with_this_layout_version(tmp_path):
    path = str(tmp_path / "new.db")
    SqliteStore(path).close()

    assert layout_of(path)[0] == LAYOUT_VERSION


def test_the_layout_is_the_one_its_version_names(tmp_path):
    path = str(tmp_path / "new.db")
    SqliteStore(path).close()

    assert PINNED.get(LAYOUT_VERSION) == layout_digest(path), (
        "the file layout changed: raise sqlite_store.LAYOUT_VERSION and pin the new layout's digest "
        f"({layout_digest(path)}) under it"
    )


def test_a_file_of_an_older_layout_is_laid_out_anew_and_stamped(tmp_path):
    # Given a file written before the layout had a version, one of its indexes missing
    path = str(tmp_path / "old.db")
    SqliteStore(path).close()
    conn = sqlite3.connect(path)
    conn.execute("DROP INDEX jobs_created")
    conn.execute("PRAGMA user_version = 0")
    conn.commit()
    conn.close()

    # When this version opens it
    store = SqliteStore(path)
    store.close()

    # Then it holds this version's layout, stamped as such
    assert layout_of(path)[0] == LAYOUT_VERSION
    assert layout_digest(path) == PINNED[LAYOUT_VERSION]


def test_a_file_a_newer_version_laid_out_is_refused_and_left_as_it_is(tmp_path):
    # Given a file a newer version laid out: a layout version above ours, an index of its own
    path = str(tmp_path / "newer.db")
    store = SqliteStore(path)
    store.create("jobs", {"id": "j1", "productId": "web", "stage": "queued", "createdAt": "2026-01-01T00:00:00.000Z"})
    store.close()
    conn = sqlite3.connect(path)
    conn.execute("DROP INDEX jobs_created")
    conn.execute("CREATE INDEX jobs_created ON docs(container, k_createdAt DESC) WHERE container = 'jobs'")
    conn.execute(f"PRAGMA user_version = {LAYOUT_VERSION + 1}")
    conn.commit()
    conn.close()
    before = layout_of(path)

    # When this version opens it
    with pytest.raises(errors.StoreUnavailable) as refused:
        SqliteStore(path)

    # Then it refuses, saying why and what to run, and the file is as the newer version left it
    assert refused.value.reason is errors.StoreFault.UNAVAILABLE
    message = str(refused.value)
    assert "newer version" in message and f"layout {LAYOUT_VERSION + 1}" in message and path in message
    assert layout_of(path) == before

    # and the newer version (here: the file set back to ours) finds its job where it was
    set_version(path, LAYOUT_VERSION)
    store = SqliteStore(path)
    assert [doc["id"] for doc in store.query(Query("jobs", "web")).items] == ["j1"]
    store.close()


def test_a_refused_opening_keeps_no_connection_open(tmp_path):
    path = str(tmp_path / "newer.db")
    SqliteStore(path).close()
    set_version(path, LAYOUT_VERSION + 1)
    gc.collect()  # stores earlier tests left to the collector close their files now, not below
    gc.disable()
    try:
        open_files = len(os.listdir("/proc/self/fd"))
        for _ in range(20):
            with pytest.raises(errors.StoreUnavailable):
                SqliteStore(path)
        left_open = len(os.listdir("/proc/self/fd")) - open_files
    finally:
        gc.enable()

    assert left_open == 0


def test_a_read_only_file_of_the_unversioned_layout_still_opens_for_reads(tmp_path):
    # Given a file of this layout written before the layout had a version, now read-only
    path = str(tmp_path / "old.db")
    store = SqliteStore(path)
    store.create("jobs", {"id": "j1", "productId": "web", "stage": "queued", "createdAt": "2026-01-01T00:00:00.000Z"})
    store.close()
    set_version(path, 0)

    # When this version opens it read-only, it reads it, and leaves it unstamped
    store = SqliteStore(f"file:{path}?mode=ro")
    assert [doc["id"] for doc in store.query(Query("jobs", "web")).items] == ["j1"]
    store.close()
    assert layout_of(path)[0] == 0
    assert not os.path.exists("file:")  # a URI is no directory to make
