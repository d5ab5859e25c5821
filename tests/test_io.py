import json

import pytest

from mmloop import io


def test_atomic_file_is_all_or_nothing(tmp_path):
    target = tmp_path / "out" / "metrics.json"
    io.write_json(target, {"a": 1})
    with pytest.raises(RuntimeError):
        with io.atomic_path(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("killed")
    assert json.loads(target.read_text()) == {"a": 1}
    assert [p.name for p in target.parent.iterdir()] == ["metrics.json"]


def test_atomic_directory_replaces_old_contents(tmp_path):
    target = tmp_path / "model"
    with io.atomic_path(target, directory=True) as tmp:
        (tmp / "old.bin").write_bytes(b"1")
    with io.atomic_path(target, directory=True) as tmp:
        (tmp / "new.bin").write_bytes(b"2")
    assert sorted(p.name for p in target.iterdir()) == ["new.bin"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]


def test_read_json_names_the_file(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text("{nope")
    with pytest.raises(ValueError, match="bad.json"):
        io.read_json(bad)


def test_hashes_are_stable():
    assert io.sha256_bytes(b"abc").startswith("ba7816bf")
    assert io.stable_hash("a", 1) == io.stable_hash("a", 1) != io.stable_hash("a", 2)


def test_published_files_get_the_umask_mode_not_a_private_temp_mode(tmp_path):
    import os

    umask = os.umask(0o022)
    try:
        io.write_text(tmp_path / "report.html", "<p>")
        assert (tmp_path / "report.html").stat().st_mode & 0o777 == 0o644
    finally:
        os.umask(umask)
