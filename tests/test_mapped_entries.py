"""Memory-mapped cache entries: damaged or incomplete entries and a full disk are refused in one line, never used."""

from __future__ import annotations

import errno
import json
import logging
import os
import shutil
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from kd_lightning._distributed import on_every_rank
from kd_lightning.cache.mapped import RowWriter, allocate, open_entry, publish
from kd_lightning.cache.teacher.streamed import _disk_entry
from kd_lightning.errors import ConfigError, InvalidDataError

LAYOUT = {"filled": ((2, 5), torch.bool), "logits": ((2, 5, 3), torch.float32)}
NAMES = set(LAYOUT)


def filled_entry(directory: Path, value: float = 1.0) -> Path:
    allocate(directory, LAYOUT)
    with RowWriter(directory, NAMES) as rows:
        for view in (0, 1):
            rows.write("logits", view, torch.arange(5), torch.full((5, 3), value))
            rows.write("filled", view, torch.arange(5), torch.ones(5, dtype=torch.bool))
    return directory


def test_rows_written_in_any_order_by_several_writers_land_byte_exact(tmp_path):
    # Two writers (two ranks) interleave rows of the same pages; each writes only its rows' bytes.
    allocate(tmp_path / "k", LAYOUT)
    logits = torch.randn(2, 5, 3)
    with RowWriter(tmp_path / "k", NAMES) as first, RowWriter(tmp_path / "k", NAMES) as second:
        for view in (0, 1):
            for writer, index in ((first, torch.tensor([4, 0, 2])), (second, torch.tensor([3, 1]))):
                writer.write("logits", view, index, logits[view, index].double())  # stored as the layout's dtype
                writer.write("filled", view, index, torch.ones(len(index), dtype=torch.bool))
            first.write("logits", view, torch.tensor([], dtype=torch.long), torch.empty(0, 3))
    entry = open_entry(tmp_path / "k", NAMES, verify=False)  # unpublished: no checksums yet
    assert torch.equal(entry["logits"], logits) and bool(entry["filled"].all())


def test_allocate_reserves_the_blocks_and_open_entry_reads_back_what_was_written(tmp_path):
    entry_dir = filled_entry(tmp_path / "k.partial", value=2.5)
    size = (tmp_path / "k.partial" / "logits.bin").stat()
    assert size.st_size == 2 * 5 * 3 * 4 and size.st_blocks * 512 >= size.st_size  # not a sparse file
    entry = open_entry(entry_dir, NAMES, verify=False)
    assert bool(entry["filled"].all()) and torch.equal(entry["logits"], torch.full((2, 5, 3), 2.5))


def no_room(*args) -> None:
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def test_a_disk_without_the_room_is_refused_up_front_in_one_line(tmp_path, monkeypatch):
    monkeypatch.setattr(shutil, "disk_usage", lambda path: SimpleNamespace(total=2**40, used=2**40, free=2**20))
    big = {"logits": ((1000, 1281167, 10), torch.float32)}
    with pytest.raises(ConfigError, match=rf"no room for a cache entry of 47.73 GiB under {tmp_path} .*cache_dir"):
        allocate(tmp_path / "k.partial", big)
    assert list(tmp_path.iterdir()) == []  # nothing was created


def test_a_disk_that_fills_while_reserving_is_refused_and_the_folder_removed(tmp_path, monkeypatch):
    monkeypatch.setattr(os, "posix_fallocate", no_room)
    with pytest.raises(ConfigError, match=rf"no room for a cache entry of 130 B under {tmp_path} .*cache_dir"):
        allocate(tmp_path / "k.partial", LAYOUT)
    assert list(tmp_path.iterdir()) == []  # the half-made folder is gone


def test_a_directory_that_is_a_file_is_refused_in_one_line(tmp_path):
    (tmp_path / "cache").write_text("not a folder")
    with pytest.raises(ConfigError, match=rf"teacher_cache.directory {tmp_path / 'cache'}: .* is a file"):
        allocate(tmp_path / "cache" / "k.partial", LAYOUT, setting="teacher_cache.directory")


def zero_bytes(path: Path, start: int, count: int) -> None:
    with open(path, "r+b") as file:
        file.seek(start)
        file.write(bytes(count))


def test_zeroed_bytes_in_a_published_entry_are_refused_naming_the_file(tmp_path):
    layout = {"filled": ((2, 1000), torch.bool), "logits": ((2, 1000, 8), torch.float32)}
    allocate(tmp_path / "k.partial", layout)
    with RowWriter(tmp_path / "k.partial", set(layout)) as rows:
        for view in (0, 1):
            rows.write("logits", view, torch.arange(1000), torch.randn(1000, 8))
            rows.write("filled", view, torch.arange(1000), torch.ones(1000, dtype=torch.bool))
    publish(tmp_path / "k.partial", tmp_path / "k.streamed")
    assert open_entry(tmp_path / "k.streamed", set(layout))["logits"].shape == (2, 1000, 8)
    zero_bytes(tmp_path / "k.streamed" / "logits.bin", 30_000, 4096)  # a few KB in the middle, size unchanged
    with pytest.raises(InvalidDataError, match=r"cache file .*k\.streamed/logits\.bin is damaged.*delete") as caught:
        open_entry(tmp_path / "k.streamed", set(layout))
    assert "\n" not in str(caught.value)


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda d: os.truncate(d / "logits.bin", 10), "logits.bin is missing or not 120 bytes"),
        (lambda d: (d / "logits.bin").unlink(), "logits.bin is missing or not 120 bytes"),
        (lambda d: (d / "entry.json").unlink(), "cannot read cache entry"),
        (lambda d: (d / "entry.json").write_text('{"filled": {"shape": [2, 5], "dty'), "cannot read cache entry"),
        (
            lambda d: (d / "entry.json").write_text(json.dumps({"filled": {"shape": [2, 5], "dtype": "bool"}})),
            r"lists the tensors \['filled'\], not \['filled', 'logits'\]",
        ),
        (lambda d: zero_bytes(d / "filled.bin", 2, 4), r"filled\.bin is damaged \(its checksum does not match\)"),
    ],
    ids=["truncated_file", "missing_file", "missing_layout", "truncated_layout", "layout_lost_a_tensor", "zeroed"],
)
def test_a_damaged_entry_is_refused_in_one_line_saying_to_delete_it(tmp_path, damage, message):
    entry_dir = tmp_path / "k.streamed"
    publish(filled_entry(tmp_path / "k.partial"), entry_dir)
    damage(entry_dir)
    with pytest.raises(InvalidDataError, match=message) as caught:
        open_entry(entry_dir, NAMES)
    assert "delete" in str(caught.value) and "\n" not in str(caught.value)


def test_concurrent_publishes_keep_the_first_entry_and_remove_the_second(tmp_path):
    final = tmp_path / "k.streamed"
    publish(filled_entry(tmp_path / "k.partial-a", value=1.0), final)
    publish(filled_entry(tmp_path / "k.partial-b", value=2.0), final)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["k.streamed"]
    assert torch.equal(open_entry(final, NAMES)["logits"], torch.ones(2, 5, 3))


def one_process(cache_dir: Path, fill) -> tuple[SimpleNamespace, SimpleNamespace, SimpleNamespace]:
    """What ``_disk_entry`` reads of the cache, the trainer and the cache filler, for one process."""
    strategy = SimpleNamespace(broadcast=lambda obj, src=0: obj)
    trainer = SimpleNamespace(world_size=1, global_rank=0, is_global_zero=True, strategy=strategy)
    settings = SimpleNamespace(store=SimpleNamespace(cache_dir=cache_dir, setting="teacher_cache.directory"))
    filler = SimpleNamespace(names=lambda: NAMES, layout=lambda key: LAYOUT, fill=fill)
    return settings, trainer, filler


def fill_all(write, key: str, but: int | None = None) -> None:
    for view in (0, 1):
        index = torch.tensor([i for i in range(5) if (view, i) != (1, but)])
        write("filled", view, index, torch.ones(len(index), dtype=torch.bool))


def fill_all_but_one(write, key: str) -> None:
    fill_all(write, key, but=4)


def test_unfilled_rows_are_refused_while_filling_and_on_a_cache_hit(tmp_path, caplog):
    settings, trainer, filler = one_process(tmp_path, fill_all_but_one)
    with caplog.at_level(logging.INFO), pytest.raises(RuntimeError, match="1 sample views were streamed to no rank"):
        _disk_entry(settings, trainer, "k", filler)
    (partial,) = tmp_path.iterdir()  # left for inspection, and its path logged
    assert partial.name.startswith("k.partial-") and f"delete its unpublished folder {partial}" in caplog.text

    publish(partial, tmp_path / "k.streamed")  # as if published by a run that did not check
    with pytest.raises(InvalidDataError, match=rf"{tmp_path / 'k.streamed'} has no outputs for 1 sample views.*delete"):
        _disk_entry(settings, trainer, "k", filler)


@pytest.mark.parametrize("call", ["pwrite", "replace"], ids=["writing_rows", "publishing"])
def test_a_disk_that_fills_during_the_fill_is_one_line_and_leaves_no_partial_files(tmp_path, monkeypatch, call):
    settings, trainer, filler = one_process(tmp_path, fill_all)
    monkeypatch.setattr(os if call == "pwrite" else Path, call, no_room)
    with pytest.raises(
        ConfigError, match=rf"no room for a cache entry of .* under {tmp_path} .*teacher_cache.directory"
    ):
        _disk_entry(settings, trainer, "k", filler)
    assert list(tmp_path.iterdir()) == []


def test_a_fill_warns_of_unpublished_folders_of_the_same_entry(tmp_path, caplog):
    stale = tmp_path / "k.partial-0badf00d"
    stale.mkdir()
    settings, trainer, filler = one_process(tmp_path, fill_all)
    with caplog.at_level(logging.WARNING):
        entry = _disk_entry(settings, trainer, "k", filler)
    assert bool(entry["filled"].all())
    assert "1 unpublished folder(s) of this entry" in caplog.text and str(stale) in caplog.text


class TwoRanks:
    """Rank 0 of two, whose partner (rank 1) failed with ``partner_error`` (what the collectives report)."""

    def __init__(self, partner_error: Exception | None) -> None:
        self.partner_error, self.root_device = partner_error, torch.device("cpu")

    def reduce(self, tensor: torch.Tensor, reduce_op: str) -> torch.Tensor:
        assert reduce_op == "min"
        return torch.minimum(tensor, torch.tensor(1 if self.partner_error else 2))

    def broadcast(self, obj, src: int = 0):
        return obj if src == 0 else self.partner_error


def rank_zero_of_two(partner_error: Exception | None) -> SimpleNamespace:
    return SimpleNamespace(world_size=2, global_rank=0, is_global_zero=True, strategy=TwoRanks(partner_error))


def test_a_failure_on_any_rank_is_raisedon_every_rank():
    trainer = rank_zero_of_two
    assert on_every_rank(trainer(None), lambda: 7) == 7
    with pytest.raises(InvalidDataError, match="cannot decode a stored image"):
        on_every_rank(trainer(InvalidDataError("cannot decode a stored image")), lambda: 7)

    def fails() -> None:
        raise ConfigError("no room")

    with pytest.raises(ConfigError, match="no room"):  # this rank failed first: its own error
        on_every_rank(trainer(InvalidDataError("later")), fails)
