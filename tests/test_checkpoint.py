"""Checkpoints: exact round trip, atomic save, and a clear error for every bad file."""

from __future__ import annotations

import errno
import json
import os
import stat
import zipfile
from dataclasses import replace

import numpy
import pytest

import minimal_icl.checkpoint as checkpoint_module
from minimal_icl import TransformerConfig, init_params, tree_leaves, tree_map
from minimal_icl.checkpoint import FORMAT, CheckpointError, load_checkpoint, save_checkpoint

CONFIG = TransformerConfig(
    d_token=3, n_blocks=2, n_heads=2, d_head=3, d_mlp=5, layer_norm=True, mlp_skip=True
)


def _params(dtype=numpy.float64, seed=0):
    params = init_params(CONFIG, seed=seed, dtype=dtype)
    rng = numpy.random.default_rng(seed)
    return tree_map(
        lambda p: p + rng.standard_normal(p.shape).astype(dtype), params
    )  # every entry nonzero


def _same_bits(a, b):
    return a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes()


@pytest.mark.parametrize("dtype", [numpy.float64, numpy.float32])
def test_round_trip_is_bitwise_exact(tmp_path, dtype):
    params = _params(dtype)
    extra = {"history/val_loss": numpy.array([2.0, 0.5, 0.1]), "history/step": numpy.arange(3)}
    metadata = {"seed": 3, "note": "ünïcode"}
    path = tmp_path / "model.npz"
    save_checkpoint(path, params, CONFIG, extra=extra, metadata=metadata)
    loaded = load_checkpoint(path, config=CONFIG)
    assert loaded.config == CONFIG and loaded.metadata == metadata
    assert type(loaded.params) is type(params)
    for (n1, a), (n2, b) in zip(tree_leaves(params), tree_leaves(loaded.params)):
        assert n1 == n2 and _same_bits(a, b), n1
    assert set(loaded.extra) == set(extra)
    assert all(_same_bits(loaded.extra[k], v) for k, v in extra.items())


def test_file_holds_text_and_numbers_only(tmp_path):
    path = tmp_path / "model.npz"
    save_checkpoint(path, _params(), CONFIG)
    with numpy.load(path, allow_pickle=False) as archive:
        assert str(archive["format"]) == FORMAT
        assert json.loads(str(archive["config"])) == CONFIG.to_dict()
        names = sorted(k for k in archive.files if k.startswith("params/"))
        assert names == sorted(f"params/{n}" for n, _ in tree_leaves(_params()))
        assert all(archive[k].dtype.kind in "fU" for k in archive.files)


def test_load_to_a_backend(tmp_path, backend):
    path = tmp_path / "model.npz"
    params = _params()
    save_checkpoint(path, params, CONFIG)
    loaded = load_checkpoint(path, xp=backend.xp, device=backend.device)
    for (_, a), (_, b) in zip(tree_leaves(params), tree_leaves(loaded.params)):
        if backend.device is not None:
            assert b.device == backend.device
        assert _same_bits(a, backend.to_numpy(b))


def test_failed_save_leaves_the_old_file_intact(tmp_path, monkeypatch):
    path = tmp_path / "model.npz"
    old = _params(seed=1)
    save_checkpoint(path, old, CONFIG)
    before = path.read_bytes()

    def broken_savez(file, **arrays):  # writes part of an archive, then fails
        file.write(b"PK\x03\x04 partial archive")
        raise OSError("disk full")

    monkeypatch.setattr(checkpoint_module.numpy, "savez", broken_savez)
    with pytest.raises(OSError, match=r"save_checkpoint: cannot write path '.*model\.npz':"
                       r" disk full \(writing the temporary file\)"):
        save_checkpoint(path, _params(seed=2), CONFIG)
    assert path.read_bytes() == before
    assert os.listdir(tmp_path) == ["model.npz"]  # the temporary file is gone
    monkeypatch.undo()

    def broken_replace(src, dst):
        raise OSError("rename failed")

    monkeypatch.setattr(checkpoint_module.os, "replace", broken_replace)
    with pytest.raises(OSError, match=r"rename failed \(moving the temporary file over it\)"):
        save_checkpoint(path, _params(seed=2), CONFIG)
    assert path.read_bytes() == before
    assert os.listdir(tmp_path) == ["model.npz"]
    monkeypatch.undo()
    loaded = load_checkpoint(path)
    assert all(
        _same_bits(a, b) for (_, a), (_, b) in zip(tree_leaves(old), tree_leaves(loaded.params))
    )


def test_save_fsyncs_before_replacing(tmp_path, monkeypatch):
    calls = []
    real_fsync, real_replace = os.fsync, os.replace
    monkeypatch.setattr(
        checkpoint_module.os, "fsync", lambda fd: (calls.append("fsync"), real_fsync(fd))
    )
    monkeypatch.setattr(
        checkpoint_module.os, "replace", lambda a, b: (calls.append("replace"), real_replace(a, b))
    )
    save_checkpoint(tmp_path / "m.npz", _params(), CONFIG)
    assert calls == ["fsync", "replace"]


def _error(path, **kwargs) -> CheckpointError:
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(path, **kwargs)
    error = info.value
    assert isinstance(error, ValueError)
    assert str(path) in str(error)
    return error


def test_missing_file(tmp_path):
    assert "no such file" in str(_error(tmp_path / "absent.npz"))


def test_truncated_and_garbage_files(tmp_path):
    good = tmp_path / "good.npz"
    save_checkpoint(good, _params(), CONFIG)
    data = good.read_bytes()
    for name, content in [
        ("truncated.npz", data[: len(data) // 2]),
        ("garbage.npz", b"not a checkpoint at all"),
        ("empty.npz", b""),
        ("cut_end.npz", data[:-10]),
    ]:
        path = tmp_path / name
        path.write_bytes(content)
        assert "archive" in str(_error(path)), name


def test_corrupted_member_is_reported(tmp_path):
    path = tmp_path / "model.npz"
    save_checkpoint(path, _params(), CONFIG)
    data = bytearray(path.read_bytes())
    position = data.find(b"params/blocks.0.mlp.W1")
    data[position + 200] ^= 0xFF  # flip a byte inside that array's data
    path.write_bytes(bytes(data))
    _error(path)


def _write_npz(path, arrays):
    numpy.savez(path, **arrays)


def _arrays_of(params, config):
    arrays = {
        "format": numpy.asarray(FORMAT),
        "config": numpy.asarray(json.dumps(config.to_dict())),
    }
    arrays.update({f"params/{n}": a for n, a in tree_leaves(params)})
    return arrays


def test_missing_unexpected_and_misshapen_parameters(tmp_path):
    arrays = _arrays_of(_params(), CONFIG)
    missing = dict(arrays)
    del missing["params/blocks.1.mlp.W1"]
    _write_npz(tmp_path / "missing.npz", missing)
    assert "blocks.1.mlp.W1" in str(_error(tmp_path / "missing.npz"))

    wrong = dict(arrays, **{"params/blocks.0.attn.W_Q": numpy.zeros((5, 3))})
    _write_npz(tmp_path / "shape.npz", wrong)
    assert "shape" in str(_error(tmp_path / "shape.npz"))

    extra = dict(arrays, **{"params/blocks.2.mlp.W1": numpy.zeros((5, 3))})
    _write_npz(tmp_path / "unexpected.npz", extra)
    assert "unexpected" in str(_error(tmp_path / "unexpected.npz"))

    integers = dict(arrays, **{"params/blocks.0.mlp.b1": numpy.zeros(5, dtype=numpy.int64)})
    _write_npz(tmp_path / "int.npz", integers)
    assert "dtype" in str(_error(tmp_path / "int.npz"))

    no_config = {k: v for k, v in arrays.items() if k != "config"}
    _write_npz(tmp_path / "noconfig.npz", no_config)
    assert "config" in str(_error(tmp_path / "noconfig.npz"))

    bad_config = dict(arrays, config=numpy.asarray('{"d_token": -1}'))
    _write_npz(tmp_path / "badconfig.npz", bad_config)
    assert "configuration" in str(_error(tmp_path / "badconfig.npz"))

    other_format = dict(arrays, format=numpy.asarray("something/2"))
    _write_npz(tmp_path / "format.npz", other_format)
    assert "format" in str(_error(tmp_path / "format.npz"))


def test_configuration_mismatch(tmp_path):
    path = tmp_path / "model.npz"
    save_checkpoint(path, _params(), CONFIG)
    error = _error(path, config=replace(CONFIG, activation="gelu"))
    assert "activation" in str(error) and "gelu" in str(error)


class Explosive:
    """Unpickling this object would create a file: the test checks it never happens."""

    marker = None

    def __reduce__(self):
        return (open, (str(Explosive.marker), "w"))


def test_pickled_object_is_refused_without_unpickling(tmp_path):
    Explosive.marker = tmp_path / "unpickled.txt"
    arrays = _arrays_of(_params(), CONFIG)
    payload = numpy.empty(1, dtype=object)
    payload[0] = Explosive()
    arrays["extra/payload"] = payload
    path = tmp_path / "pickled.npz"
    numpy.savez(path, **arrays)  # NumPy pickles object arrays by default
    with zipfile.ZipFile(path) as archive:
        assert "extra/payload.npy" in archive.namelist()
    error = _error(path)
    assert "pickle" in str(error)
    assert not Explosive.marker.exists()
    with pytest.raises(ValueError, match="objects"):
        save_checkpoint(tmp_path / "x.npz", _params(), CONFIG, extra={"bad": payload})


# -- the file on disk: mode, stale temporary files, directories ----------------------------


@pytest.mark.parametrize("umask", [0o022, 0o077, 0o002])
def test_file_mode_follows_the_umask(tmp_path, umask):
    old = os.umask(umask)
    try:
        save_checkpoint(tmp_path / "model.npz", _params(), CONFIG)
    finally:
        os.umask(old)
    assert (tmp_path / "model.npz").stat().st_mode & 0o777 == 0o666 & ~umask


def test_a_save_killed_midway_leaves_a_temporary_file_the_next_save_removes(tmp_path):
    """A process killed while writing leaves DIR/.model.npz.PID.tmp; the next save to the
    same path removes it (its process is gone), and the old file was never touched."""
    import subprocess
    import sys

    path = tmp_path / "model.npz"
    save_checkpoint(path, _params(seed=1), CONFIG)
    before = path.read_bytes()
    killed = f"""
import os, numpy
import minimal_icl.checkpoint as c
from minimal_icl import TransformerConfig, init_params
config = TransformerConfig(**{CONFIG.to_dict()!r})
def dying_savez(file, **arrays):
    file.write(b"PK partial")
    file.flush()
    os._exit(9)
c.numpy.savez = dying_savez
c.save_checkpoint({str(path)!r}, init_params(config), config)
"""
    done = subprocess.run([sys.executable, "-c", killed], timeout=120, check=False)
    assert done.returncode == 9
    stale = [name for name in os.listdir(tmp_path) if name.endswith(".tmp")]
    assert len(stale) == 1 and stale[0].startswith(".model.npz.")
    assert path.read_bytes() == before  # the old checkpoint is intact
    other = tmp_path / "other.npz.99.tmp"  # another file's temporary: not ours to remove
    other.write_bytes(b"x")

    save_checkpoint(path, _params(seed=2), CONFIG)
    assert sorted(os.listdir(tmp_path)) == ["model.npz", "other.npz.99.tmp"]
    loaded = load_checkpoint(path)
    assert all(
        _same_bits(a, b)
        for (_, a), (_, b) in zip(tree_leaves(_params(seed=2)), tree_leaves(loaded.params))
    )


def test_a_temporary_file_of_a_running_save_is_left_alone(tmp_path):
    """Only temporary files whose process is gone are stale: a save running in another
    process (here: the parent of this one, which is alive) keeps its file."""
    path = tmp_path / "model.npz"
    running = tmp_path / f".model.npz.{os.getppid()}.tmp"
    running.write_bytes(b"being written")
    save_checkpoint(path, _params(), CONFIG)
    assert running.read_bytes() == b"being written"


def test_a_planted_link_is_not_written_through(tmp_path):
    """The temporary file is created exclusively: a link left at its name (a stale file of
    this very process id) is removed, never followed."""
    target = tmp_path / "precious.txt"
    target.write_text("keep me")
    path = tmp_path / "model.npz"
    os.symlink(target, tmp_path / f".model.npz.{os.getpid()}.tmp")
    save_checkpoint(path, _params(), CONFIG)
    assert target.read_text() == "keep me"
    assert load_checkpoint(path).config == CONFIG


def test_directories_are_named_as_directories(tmp_path):
    folder = tmp_path / "model.npz"
    folder.mkdir()
    error = _error(folder)
    assert "is a directory, not a checkpoint file" in str(error)
    with pytest.raises(ValueError, match=r"path .*model\.npz' is a directory, not a file"):
        save_checkpoint(folder, _params(), CONFIG)
    with pytest.raises(ValueError, match=r"the directory .*absent' does not exist"):
        save_checkpoint(tmp_path / "absent" / "m.npz", _params(), CONFIG)
    assert os.listdir(folder) == []


def test_a_directory_that_refuses_the_file_is_named_with_the_path(tmp_path, monkeypatch):
    """The operating system's error names the temporary file; save_checkpoint's names the
    path given, keeps the error's kind (PermissionError, errno EACCES) and leaves nothing."""
    real_open = os.open

    def refusing_open(file, flags, mode=0o777):
        if str(file).endswith(".tmp"):
            raise PermissionError(errno.EACCES, "Permission denied", file)
        return real_open(file, flags, mode)

    monkeypatch.setattr(checkpoint_module.os, "open", refusing_open)
    path = tmp_path / "model.npz"
    with pytest.raises(PermissionError, match=r"save_checkpoint: cannot write path"
                       r" '.*model\.npz': Permission denied \(creating the temporary file") as info:
        save_checkpoint(path, _params(), CONFIG)
    assert info.value.errno == errno.EACCES
    assert os.listdir(tmp_path) == []


@pytest.mark.skipif(not os.path.isdir("/proc/self"), reason="no /proc file system")
def test_a_path_under_proc_is_named():
    """/proc takes no new files: refused up front where the directory is not writable,
    and by the write where it looks writable (for root), each error naming the path."""
    with pytest.raises((ValueError, OSError)) as info:
        save_checkpoint("/proc/model.npz", _params(), CONFIG)
    assert "path '/proc/model.npz'" in str(info.value)
    assert not os.path.lexists("/proc/model.npz")


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no named pipes")
def test_a_path_that_is_not_a_regular_file_is_not_replaced(tmp_path):
    """A save moves its file over the path: a device (/dev/null) or a pipe there would be
    replaced by a regular file, so it is refused before anything is written."""
    pipe = tmp_path / "model.npz"
    os.mkfifo(pipe)
    with pytest.raises(ValueError, match=r"path .*model\.npz' exists and is not a regular file"):
        save_checkpoint(pipe, _params(), CONFIG)
    assert stat.S_ISFIFO(os.lstat(pipe).st_mode)
    assert os.listdir(tmp_path) == ["model.npz"]


def test_params_that_do_not_match_are_refused_before_writing(tmp_path):
    """Today's file would not load: the check runs before anything is written."""
    other = TransformerConfig(**{**CONFIG.to_dict(), "n_blocks": 3})
    with pytest.raises(ValueError, match=r"params must be a ModelParams with 3 blocks"):
        save_checkpoint(tmp_path / "m.npz", _params(), other)
    assert os.listdir(tmp_path) == []
