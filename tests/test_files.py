"""service.files: a file replaced whole or not at all."""

from __future__ import annotations

import stat

import pytest

from service.files import TEMP_PREFIX, replacing, write_atomic


def test_write_atomic_replaces_the_content_readable_by_every_worker_user(tmp_path):
    path = tmp_path / "aliases.yaml"
    path.write_text("old\n")
    write_atomic(path, "new\n")
    assert path.read_text() == "new\n"
    assert stat.S_IMODE(path.stat().st_mode) == 0o644
    assert [p.name for p in tmp_path.iterdir()] == ["aliases.yaml"]


def test_a_failed_write_leaves_the_old_file_and_no_temporary_one(tmp_path):
    path = tmp_path / "out.csv"
    path.write_text("complete\n")
    with pytest.raises(RuntimeError, match="disk went away"), replacing(path, text=True) as out:
        out.write("half a")
        assert any(p.name.startswith(TEMP_PREFIX) for p in tmp_path.iterdir())
        raise RuntimeError("disk went away")
    assert path.read_text() == "complete\n"
    assert [p.name for p in tmp_path.iterdir()] == ["out.csv"]


def test_replacing_a_file_that_does_not_exist_yet_creates_it(tmp_path):
    path = tmp_path / "backup.tar.gz"
    with replacing(path, mode=0o600) as out:
        out.write(b"\x1f\x8b")
    assert path.read_bytes() == b"\x1f\x8b"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
