"""nanocodec.files.write_atomic: umask-normal permissions, and a failure mid-write keeps the old file."""
import os
import stat

import pytest

from nanocodec import files
from nanocodec.files import write_atomic


@pytest.mark.parametrize("umask", [0o022, 0o077, 0o002])
def test_written_files_get_the_permissions_the_umask_gives(tmp_path, umask):
    old = os.umask(umask)
    try:
        write_atomic(tmp_path / "new.json", "{}")
        write_atomic(tmp_path / "old.bin", b"1")
        write_atomic(tmp_path / "old.bin", b"2")  # replacing a file too
        with open(tmp_path / "plain", "w"):
            pass
    finally:
        os.umask(old)
    plain = stat.S_IMODE(os.stat(tmp_path / "plain").st_mode)
    assert plain == 0o666 & ~umask
    for name in ("new.json", "old.bin"):
        assert stat.S_IMODE(os.stat(tmp_path / name).st_mode) == plain


def test_text_is_utf8_and_bytes_are_kept(tmp_path):
    write_atomic(tmp_path / "t", "é\n")
    write_atomic(tmp_path / "b", bytes(range(256)))
    assert (tmp_path / "t").read_bytes() == "é\n".encode("utf-8")
    assert (tmp_path / "b").read_bytes() == bytes(range(256))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b", "t"]


@pytest.mark.parametrize("fails", ["write", "fsync", "replace"])
def test_a_failure_mid_write_leaves_the_old_file_and_no_temporary(tmp_path, monkeypatch, fails):
    path = tmp_path / "data.bin"
    write_atomic(path, b"old contents")
    written = []

    def broken(*args, **kwargs):
        raise OSError(28, "No space left on device")

    if fails == "write":  # the disk fills after part of the data went out
        real_fdopen = os.fdopen

        def fdopen(fd, mode, *args, **kwargs):
            f = real_fdopen(fd, mode, *args, **kwargs)
            real_write = f.write

            def write(data):
                written.append(real_write(data[:5]))
                f.flush()
                broken()
            f.write = write
            return f
        monkeypatch.setattr(files.os, "fdopen", fdopen)
    else:
        monkeypatch.setattr(files.os, fails, broken)
    with pytest.raises(OSError, match="No space"):
        write_atomic(path, b"new contents that never fully arrive")
    assert path.read_bytes() == b"old contents"
    assert [p.name for p in tmp_path.iterdir()] == ["data.bin"]
    assert written == ([5] if fails == "write" else [])


def test_an_interrupt_mid_write_leaves_the_old_file(tmp_path, monkeypatch):
    path = tmp_path / "tokenizer.json"
    write_atomic(path, "old")

    def interrupted(fd):
        raise KeyboardInterrupt

    monkeypatch.setattr(files.os, "fsync", interrupted)
    with pytest.raises(KeyboardInterrupt):
        write_atomic(path, "new")
    assert path.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["tokenizer.json"]


def test_the_tokenizer_and_its_hf_export_are_not_left_private(tmp_path):
    """bpe's own writer used to leave mkstemp's 0600: files others on the machine could not read."""
    from nanocodec.bpe import Tokenizer

    tok = Tokenizer([(97, 98)])
    tok.save(tmp_path / "tokenizer.json")
    tok.to_hf(tmp_path / "hf.json")
    umask = os.umask(0)
    os.umask(umask)
    for path in (tmp_path / "tokenizer.json", tmp_path / "hf.json"):
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o666 & ~umask, path
    assert Tokenizer.load(tmp_path / "tokenizer.json").merges == tok.merges


def _data_folder(tmp_path):
    """The two files of a prepared folder a checkpoint copies: tokenizer.json and manifest.json."""
    import json

    from nanocodec.bpe import Tokenizer

    data = tmp_path / "data"
    data.mkdir()
    Tokenizer([(97, 98)]).save(data / "tokenizer.json")
    (data / "manifest.json").write_text(json.dumps({"kind": "jpeg", "codec": {"size": 16}}))
    return data


def test_every_checkpoint_file_follows_the_umask(tmp_path):
    """safetensors creates its file 0600; a checkpoint's weights must be as readable as its config."""
    import torch

    from nanocodec import checkpoint

    data = _data_folder(tmp_path)
    old = os.umask(0o002)
    try:
        checkpoint.save(tmp_path / "ck", {"w": torch.zeros(3)}, {}, step=1, model_config={}, train_config={}, data_dir=data)
    finally:
        os.umask(old)
    modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in (tmp_path / "ck").iterdir() if p.is_file()}
    assert checkpoint.WEIGHTS in modes and checkpoint.CONFIG in modes
    assert set(modes.values()) == {0o664}, modes


def test_a_save_hashes_each_file_once_and_its_check_after_the_rename_reads_nothing_again(tmp_path, monkeypatch):
    """The check that a save reads back whole (and the next save's check of the one it replaces) use
    the digests taken in staging, carried over the renames; a 7B save must not re-read its weights."""
    import hashlib

    import torch

    from nanocodec import checkpoint

    data = _data_folder(tmp_path)
    hashed = []
    digest = hashlib.file_digest
    monkeypatch.setattr(hashlib, "file_digest", lambda f, name: hashed.append(os.path.basename(f.name)) or digest(f, name))
    for step in (1, 2):
        hashed.clear()
        checkpoint.save(tmp_path / "ck", {"w": torch.zeros(3)}, {}, step=step, model_config={}, train_config={}, data_dir=data)
        assert sorted(hashed) == sorted(checkpoint.CHECKSUMMED)
    (tmp_path / "ck" / checkpoint.WEIGHTS).write_bytes(b"changed")  # a file changed on disk is hashed again
    with pytest.raises(checkpoint.CheckpointError):
        checkpoint.load_training(tmp_path / "ck")
