"""s4d.io: atomic writes that leave the old file whole on failure, strict JSON, file hashes, free ports."""
import hashlib
import socket
from pathlib import Path

import numpy as np
import pytest
import torch

from s4d.io import atomic_output, free_port, read_json, save_torch, sha256_file, write_json, write_text


def leftovers(folder):
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


def test_json_round_trip_with_numpy_values_and_paths(tmp_path):
    path = write_json(tmp_path / "sub" / "m.json", {"uar": np.float32(0.5), "n": np.int64(3),
                                                    "v": np.arange(3), "where": tmp_path})
    assert path.read_text().endswith("}\n")
    assert read_json(path) == {"uar": 0.5, "n": 3, "v": [0, 1, 2], "where": str(tmp_path)}
    assert leftovers(tmp_path / "sub") == []


def test_a_failed_write_keeps_the_previous_file_and_leaves_no_temp(tmp_path):
    path = write_json(tmp_path / "m.json", {"uar": 0.5})
    before = path.read_bytes()
    with pytest.raises(ValueError, match="Out of range float"):  # NaN is not JSON
        write_json(path, {"uar": float("nan")})
    with pytest.raises(TypeError, match="object is not JSON serialisable"):
        write_json(path, {"x": object()})
    with pytest.raises(RuntimeError, match="half-way"):
        with atomic_output(path) as tmp:
            tmp.write_text("{half")
            raise RuntimeError("died half-way")
    assert path.read_bytes() == before and leftovers(tmp_path) == []


def test_atomic_output_keeps_the_suffix_for_writers_that_read_it(tmp_path):
    with atomic_output(tmp_path / "plot.png") as tmp:
        assert tmp.parent == tmp_path and tmp.suffix == ".png" and tmp.name.startswith(".plot.png.")
        tmp.write_bytes(b"png")
    assert (tmp_path / "plot.png").read_bytes() == b"png" and leftovers(tmp_path) == []
    write_text(tmp_path / "a.md", "# a\n")
    assert (tmp_path / "a.md").read_text() == "# a\n"


def test_save_torch_round_trip(tmp_path):
    save_torch({"w": torch.arange(4.0)}, tmp_path / "ckpt" / "model.pt")
    assert torch.equal(torch.load(tmp_path / "ckpt" / "model.pt")["w"], torch.arange(4.0))
    assert leftovers(tmp_path / "ckpt") == []


def test_read_json_names_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.json does not exist"):
        read_json(tmp_path / "missing.json")
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(ValueError, match="bad.json is not valid JSON"):
        read_json(tmp_path / "bad.json")


def test_sha256_file_matches_the_published_vector_and_hashlib_across_chunks(tmp_path):
    (tmp_path / "abc").write_bytes(b"abc")  # FIPS 180-2 example
    assert sha256_file(tmp_path / "abc") == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    data = np.random.default_rng(0).integers(0, 256, (3 << 20) + 5, dtype=np.uint8).tobytes()  # > 3 chunks
    (tmp_path / "big").write_bytes(data)
    assert sha256_file(tmp_path / "big") == hashlib.sha256(data).hexdigest()


def test_free_port_can_be_bound_on_loopback():
    port = free_port()
    assert 1024 <= port <= 65535
    with socket.socket() as s:
        s.bind(("127.0.0.1", port))


def test_write_csv_and_save_figure_write_whole_files_or_keep_the_old_one(tmp_path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import pandas as pd

    from s4d.io import save_figure, write_csv

    path = write_csv(tmp_path / "t.csv", pd.DataFrame({"id": ["00001"], "n": [3]}))
    assert path.read_text() == "id,n\n00001,3\n"  # no index column
    fig, ax = plt.subplots(figsize=(2, 2))
    ax.plot([0, 1], [1, 0])
    png = save_figure(fig, tmp_path / "f.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"  # the suffix picked the format
    plt.close(fig)
    before = png.read_bytes()

    class DiesHalfWay:  # a figure whose renderer fails after writing part of the file
        def savefig(self, path, dpi):
            Path(path).write_bytes(b"\x89PNG half")
            raise MemoryError("renderer died")

    with pytest.raises(MemoryError):
        save_figure(DiesHalfWay(), png)
    assert png.read_bytes() == before and leftovers(tmp_path) == []
