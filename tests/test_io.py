"""s4d.io: atomic writes that leave the old file whole on failure, strict JSON, file hashes, free ports."""
import ast
import hashlib
import socket
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import ROOT
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


def test_written_files_get_the_permissions_of_any_new_file(tmp_path):
    """Not tempfile.mkstemp's owner-only 0600: a dataset or model written here must stay readable by whoever
    could read a file the user wrote with open() (another account, a container, DVC's cache)."""
    (tmp_path / "plain.txt").write_text("x")
    expected = (tmp_path / "plain.txt").stat().st_mode & 0o777
    for path in (write_text(tmp_path / "a.txt", "x"), write_json(tmp_path / "a.json", {}),
                 save_torch({}, tmp_path / "a.pt")):
        assert path.stat().st_mode & 0o777 == expected, path


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


def test_read_json_with_a_default_returns_it_for_a_missing_or_broken_file(tmp_path):
    assert read_json(tmp_path / "missing.json", None) is None
    (tmp_path / "bad.json").write_text("{not json")
    assert read_json(tmp_path / "bad.json", {}) == {}
    assert read_json(write_json(tmp_path / "ok.json", {"a": 1}), None) == {"a": 1}


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


# ------------------------------------------------------------------ one of each helper, in s4d/io.py only
HELPERS = {"atomic_output", "write_text", "write_bytes", "write_json", "write_csv", "save_figure", "save_torch",
           "read_json", "sha256_file", "free_port"}
OLD_NAMES = {"atomic_write_text", "atomic_torch_save", "write_atomic", "file_sha256"}  # of the removed copies
# Another definition under one of these names, and why it is not a copy.
OTHER_DEFINITIONS = {
    ("tests/test_readers.py", "write_csv"): "writes a dataset's split list from a header and rows (csv module)",
}
# Calls that write or rename files (or open sockets) outside s4d/io.py, per file, and why each one stays.
WRITE_CALLS = ("os.replace", "os.rename", "json.dump", "torch.save", "socket.socket", ".savefig", ".to_csv(path)")
ALLOWED_CALLS = {
    # Moves of finished files and folders, not writes: the thing renamed is already complete.
    # staged face crops swapped with the previous ones (2), staged manifests into place, all in one folder (1)
    ("s4d/data/prepare.py", "os.replace"): 3,
    ("s4d/data/synthetic/generate.py", "os.replace"): 3,  # the rendered dataset folder swapped with the old one
    ("s4d/train/checkpoints.py", "os.replace"): 2,  # a run's outputs moved aside, the staging folder committed
    # Inside a DeepSpeed checkpoint folder that only counts once `latest` (written by s4d.io) names it.
    ("s4d/train/pretrain.py", "torch.save"): 1,
}


def write_calls(tree: ast.AST) -> list[str]:
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
            func = node.func
            if isinstance(func.value, ast.Name) and f"{func.value.id}.{func.attr}" in WRITE_CALLS:
                found.append(f"{func.value.id}.{func.attr}")
            elif func.attr == "savefig":
                found.append(".savefig")
            elif func.attr == "to_csv" and (node.args or any(k.arg == "path_or_buf" for k in node.keywords)):
                found.append(".to_csv(path)")  # to_csv() without a path returns text: no file
    return found


def test_each_file_helper_is_defined_once_and_files_are_written_only_through_it():
    definitions, calls = set(), Counter()
    for folder in ("s4d", "serving", "flows", "benchmarks", "scripts", "tests"):
        for path in sorted((ROOT / folder).rglob("*.py")):
            rel = path.relative_to(ROOT).as_posix()
            if rel == "s4d/io.py":
                continue
            tree = ast.parse(path.read_text(), rel)
            definitions |= {(rel, node.name) for node in ast.walk(tree)
                            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.name in HELPERS | OLD_NAMES}
            if folder != "tests":  # tests write fixtures however they like
                calls.update((rel, call) for call in write_calls(tree))
    assert definitions == set(OTHER_DEFINITIONS)
    assert dict(calls) == ALLOWED_CALLS
    io_defs = {node.name for node in ast.parse((ROOT / "s4d/io.py").read_text()).body
               if isinstance(node, ast.FunctionDef)}
    assert HELPERS <= io_defs


def test_the_guard_sees_the_writers_it_forbids():
    source = '''
import json, os, socket, torch
def f(fig, df, obj, p):
    os.replace(p, p); json.dump(obj, p); torch.save(obj, p); socket.socket()
    fig.savefig(p); df.to_csv(p); df.to_csv(path_or_buf=p); df.to_csv(index=False)
'''
    assert sorted(write_calls(ast.parse(source))) == sorted(
        ["os.replace", "json.dump", "torch.save", "socket.socket", ".savefig", ".to_csv(path)", ".to_csv(path)"])
