"""The decoded-data cache behind the IDX reader: same arrays, no stale or broken entries."""

from __future__ import annotations

import gzip

import numpy as np
import pytest

from cl_framework.errors import DataError
from cl_framework.scenarios import decoded_cache, idx
from cl_framework.scenarios.idx import read_idx_images, read_idx_labels


def write_images(path, images: np.ndarray) -> None:
    n, h, w = images.shape
    header = bytes([0, 0, 8, 3]) + b"".join(d.to_bytes(4, "big") for d in (n, h, w))
    path.write_bytes(gzip.compress(header + images.astype(np.uint8).tobytes()))


@pytest.fixture
def cache(tmp_path, monkeypatch):
    folder = tmp_path / "cache"
    monkeypatch.setenv(decoded_cache.CACHE_ENV, str(folder))
    return folder


def test_second_read_comes_from_the_cache_and_equals_the_decoded_array(
    tmp_path, cache, monkeypatch
):
    images = np.random.default_rng(0).integers(0, 256, size=(7, 5, 4), dtype=np.uint8)
    source = tmp_path / "train-images-idx3-ubyte.gz"
    write_images(source, images)
    first = read_idx_images(source)
    assert len(list((cache / "idx").glob("*.npy"))) == 1

    def no_decoding(*args):
        raise AssertionError("decoded again instead of read from the cache")

    monkeypatch.setattr(idx, "_gunzip", no_decoding)
    second = read_idx_images(source)
    assert second.dtype == first.dtype and second.shape == (7, 1, 5, 4)
    assert np.array_equal(second.numpy(), first.numpy())
    assert np.array_equal(second.squeeze(1).numpy(), images)


def test_a_changed_source_is_decoded_afresh(tmp_path, cache):
    source = tmp_path / "images.gz"
    write_images(source, np.zeros((2, 3, 3), dtype=np.uint8))
    assert int(read_idx_images(source).sum()) == 0
    write_images(source, np.full((2, 3, 3), 9, dtype=np.uint8))  # same name and size
    assert int(read_idx_images(source).sum()) == 9 * 18
    assert len(list((cache / "idx").glob("*.npy"))) == 2


def test_an_unreadable_entry_is_ignored_and_rewritten(tmp_path, cache):
    images = np.arange(24, dtype=np.uint8).reshape(2, 3, 4)
    source = tmp_path / "images.gz"
    write_images(source, images)
    read_idx_images(source)
    (entry,) = (cache / "idx").glob("*.npy")
    entry.write_bytes(entry.read_bytes()[:20])  # truncated
    assert np.array_equal(read_idx_images(source).squeeze(1).numpy(), images)
    assert np.array_equal(np.load(entry), images)  # rewritten whole


def test_a_cached_image_file_passed_as_labels_still_fails(tmp_path, cache):
    source = tmp_path / "images.gz"
    write_images(source, np.zeros((2, 3, 3), dtype=np.uint8))
    read_idx_images(source)
    with pytest.raises(DataError, match="wrong IDX magic number"):
        read_idx_labels(source)


def test_an_empty_cache_variable_turns_the_cache_off(tmp_path, monkeypatch):
    monkeypatch.setenv(decoded_cache.CACHE_ENV, "")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    source = tmp_path / "images.gz"
    write_images(source, np.ones((1, 2, 2), dtype=np.uint8))
    assert int(read_idx_images(source).sum()) == 4
    assert decoded_cache.cache_dir() is None
    assert not (tmp_path / "home").exists()


def test_an_unwritable_cache_folder_only_costs_the_caching(tmp_path, monkeypatch):
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where the cache folder would go")
    monkeypatch.setenv(decoded_cache.CACHE_ENV, str(blocker))
    source = tmp_path / "images.gz"
    write_images(source, np.ones((1, 2, 2), dtype=np.uint8))
    assert int(read_idx_images(source).sum()) == 4
