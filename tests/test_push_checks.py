"""push-dataset refuses wrong data with a message that names the problem and the option that
fixes it, and prints a summary before anything is sent. Host only (the unix board stands in
for a board: its "flash" is the host's filesystem)."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
from conftest import ROOT, host_env
from mcutrain.formats import SourceError, read_dataset
from mcutrain.formats.checks import describe, load_checked

RNG = np.random.default_rng(20)


def cli(*args: str, cwd=ROOT) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "mcutrain", *args], capture_output=True,
                          text=True, timeout=60, env=host_env(), cwd=cwd)  # fmt: skip


def write(path, text: str):
    path.write_text(text)
    return path


def refused(src, match: str, **options) -> str:
    with pytest.raises(SourceError, match=match) as e:
        load_checked(src, **options)
    return str(e.value)


# -- CSV ----------------------------------------------------------------------------------------


def test_csv_of_features_only_is_refused_not_read_as_hundreds_of_classes(tmp_path):
    rows = "\n".join(",".join(f"{v:.3f}" for v in r) for r in RNG.random((300, 5)))
    msg = refused(write(tmp_path / "f.csv", rows), "not class indices")
    assert "label column 4 (the last)" in msg and "--label-column" in msg and ":1" not in msg


def test_csv_float_labels_are_refused_with_the_line(tmp_path):
    msg = refused(write(tmp_path / "d.csv", "1,2,0\n3,4,1.5\n5,6,0\n"), "not class indices")
    assert "'1.5' on line 2" in msg
    # Whole numbers written as floats are class indices.
    assert load_checked(write(tmp_path / "w.csv", "1,2,0.0\n3,4,1.0\n")).data.y.tolist() == [0, 1]


def test_csv_header_of_column_numbers_is_refused_and_header_option_reads_it(tmp_path):
    src = write(tmp_path / "n.csv", "0,1,2,3\n0.5,0.25,0.1,2\n0.1,0.2,0.3,0\n")
    msg = refused(src, "looks like a header of column numbers")
    assert "--header" in msg and "--no-header" in msg and msg.startswith(f"{src}:1:")
    assert load_checked(src, header=True).data.y.tolist() == [2, 0]
    assert load_checked(src, header=False).data.y.tolist() == [3, 2, 0]


def test_csv_header_with_numbered_columns_and_a_named_label_is_a_header(tmp_path):
    checked = load_checked(write(tmp_path / "h.csv", "0,1,label\n0.5,0.2,1\n0.1,0.3,0\n"))
    assert checked.data.y.tolist() == [1, 0] and checked.data.meta["columns"] == ["0", "1"]


def test_csv_label_column_by_name_index_or_conventional_name(tmp_path):
    src = write(tmp_path / "d.csv", "label,a,b\n1,0.5,7\n0,0.25,8\n")
    assert load_checked(src).data.y.tolist() == [1, 0]  # "label", though not last
    assert load_checked(src, label_column="label").data.x.tolist() == [[0.5, 7], [0.25, 8]]
    assert load_checked(src, label_column=0).data.y.tolist() == [1, 0]
    assert "no column named 'kind' (columns: label, a, b)" in refused(src, "no column", label_column="kind")
    assert "rows have 3 columns (0..2, or -3..-1)" in refused(src, "out of range", label_column=3)
    bare = write(tmp_path / "bare.csv", "1,0.5\n0,0.25\n")
    assert "give the label column's index" in refused(bare, "no header", label_column="label")


def test_csv_uneven_rows_name_the_line(tmp_path):
    msg = refused(write(tmp_path / "u.csv", "a,b,c\n1,2,0\n\n3,4,1\n5,1\n"), "columns")
    assert msg == f"{tmp_path / 'u.csv'}:5: 2 columns, but the header has 3"


def test_csv_non_numeric_feature_names_line_and_column(tmp_path):
    msg = refused(write(tmp_path / "d.csv", "a,b,y\n1,2,0\n3,x,1\n"), "not a number")
    assert msg.startswith(f"{tmp_path / 'd.csv'}:3: column 'b' is 'x'")


def test_csv_mixing_numbers_and_names_as_labels_is_refused(tmp_path):
    msg = refused(write(tmp_path / "d.csv", "1,2,cat\n3,4,dog\n5,6,1\n"), "mixes numbers")
    assert "'1' on line 3" in msg and "'cat' on line 1" in msg


def test_csv_id_column_as_label_is_refused_as_too_many_classes(tmp_path):
    src = write(tmp_path / "d.csv", "id,a,b\n" + "".join(f"{i},{i / 2},{i % 3}\n" for i in range(40)))
    msg = refused(src, "fewer than 2 samples per class", label_column="id")
    assert "label column 'id' (column 0, the first)" in msg
    assert load_checked(src, label_column="b").data.y.max() == 2


@pytest.mark.parametrize("text, match", [
    ("", "empty CSV"), ("\n\n", "empty CSV"), ("a,b,label\n", "a header row and no data rows"),
    ("1\n2\n", "one column only"),
])  # fmt: skip
def test_csv_empty_or_featureless_files_are_refused(tmp_path, text, match):
    refused(write(tmp_path / "e.csv", text), match)


def test_csv_shape_reshapes_flat_rows_and_checks_the_size(tmp_path):
    rows = "".join(",".join(str(v) for v in range(12)) + f",{i % 2}\n" for i in range(4))
    src = write(tmp_path / "img.csv", rows)
    assert load_checked(src, shape=(2, 3, 2)).data.x.shape == (4, 2, 3, 2)
    msg = refused(src, "holds 16 values", shape=(4, 4, 1))
    assert "each sample has 12 (shape (12,))" in msg
    chw = load_checked(src, shape=(2, 2, 3), layout="nchw").data.x
    assert chw.shape == (4, 2, 3, 2) and chw[0, 0, 1].tolist() == [1, 7]  # channel planes 0-5, 6-11


# -- npz and other sources ------------------------------------------------------------------------


def test_channels_first_images_are_refused_naming_layout(tmp_path):
    x = RNG.normal(size=(8, 3, 16, 12)).astype(np.float32)
    np.savez(tmp_path / "d.npz", x=x, y=np.arange(8) % 2)
    msg = refused(tmp_path / "d.npz", "look channels-first")
    assert "--layout nchw to convert them to (16, 12, 3)" in msg and "--layout nhwc" in msg
    converted = load_checked(tmp_path / "d.npz", layout="nchw")
    assert np.array_equal(converted.data.x, x.transpose(0, 2, 3, 1))
    assert "channels-first (3, 16, 12) converted to channels-last (16, 12, 3)" in converted.notes[0]
    assert load_checked(tmp_path / "d.npz", layout="nhwc").data.x.shape == (8, 3, 16, 12)


def test_channels_last_images_pass_untouched(tmp_path):
    np.savez(tmp_path / "d.npz", x=np.zeros((4, 28, 28, 1), np.float32), y=np.arange(4) % 2)
    assert load_checked(tmp_path / "d.npz").data.x.shape == (4, 28, 28, 1)


def test_nchw_layout_needs_channels(tmp_path):
    np.savez(tmp_path / "d.npz", x=np.zeros((4, 12), np.float32), y=np.arange(4) % 2)
    msg = refused(tmp_path / "d.npz", "needs samples with channels first", layout="nchw")
    assert "give --shape C,H,W too" in msg


def test_float_labels_in_npz(tmp_path):
    x = np.zeros((20, 4), np.float32)
    np.savez(tmp_path / "w.npz", x=x, y=(np.arange(20) % 3).astype(np.float32))
    msg = refused(tmp_path / "w.npz", "holds only whole numbers")
    assert "y.astype(int)" in msg and "(N, 1)" in msg
    np.savez(tmp_path / "n.npz", x=x, y=np.full(20, 0.5), class_names=np.array(["a", "b"]))
    assert "must be whole numbers, found 0.5" in refused(tmp_path / "n.npz", "whole numbers")
    np.savez(tmp_path / "c.npz", x=x, y=(np.arange(20) % 2).astype(np.float32),
             class_names=np.array(["a", "b"]))  # fmt: skip
    named = load_checked(tmp_path / "c.npz")
    assert named.data.y.dtype == np.int64 and "class indices" in named.notes[0]
    np.savez(tmp_path / "r.npz", x=x, y=np.linspace(0, 1, 20))  # regression targets pass
    assert "regression" in describe(load_checked(tmp_path / "r.npz"))


@pytest.mark.parametrize("arrays, match", [
    ({"x": np.zeros((0, 4), np.float32), "y": np.zeros(0, int)}, "no samples"),
    ({"x": np.zeros(4, np.float32), "y": np.zeros(4, int)}, "one number per sample"),
    ({"x": np.zeros((4, 2)), "y": np.zeros(3, int)}, "4 samples but labels of shape"),
    ({"x": np.full((4, 2), np.nan), "y": np.zeros(4, int)}, "8 NaN or infinite values"),
    ({"x": np.zeros((4, 2)), "y": np.array([0, 1, -1, 0])}, "0 or more, found -1"),
    ({"x": np.zeros((4, 2)), "y": np.array([0, 1, 99, 0])}, "100 classes for 4 samples"),
    ({"x": np.zeros((4, 2)), "y": np.array([0, 1, 2, 0]), "class_names": np.array(["a", "b"])},
     "a label is 2, but there are 2 class names"),
    ({"x": np.array([["a", "b"]] * 4), "y": np.zeros(4, int)}, "not numbers"),
])  # fmt: skip
def test_wrong_npz_contents_are_refused(tmp_path, arrays, match):
    np.savez(tmp_path / "d.npz", **arrays)
    refused(tmp_path / "d.npz", match)


def test_empty_or_foreign_npz_files_are_refused(tmp_path):
    (tmp_path / "e.npz").write_bytes(b"")
    assert refused(tmp_path / "e.npz", "empty file") == f"{tmp_path / 'e.npz'}: empty file"
    np.save(tmp_path / "a.npy", np.zeros(3))
    (tmp_path / "a.npy").rename(tmp_path / "a.npz")
    refused(tmp_path / "a.npz", "a single .npy array")


def test_csv_options_are_refused_for_other_sources(tmp_path):
    np.savez(tmp_path / "d.npz", x=np.zeros((4, 2)), y=np.zeros(4, int))
    refused(tmp_path / "d.npz", "--label-column is for CSV files", label_column=1)
    refused(tmp_path / "d.npz", "--header is for CSV files", header=True)


def test_summary_lists_shape_dtype_and_classes_with_counts(tmp_path):
    src = write(tmp_path / "d.csv", "a,b,species\n" + "1,2,cat\n" * 3 + "3,4,dog\n")
    text = describe(load_checked(src))
    assert text.splitlines() == [
        "dataset: 4 samples of (2,) float32",
        "  source:  d.csv (csv), label column 'species' (column 2, the last)",
        "  classes: 2: cat 3, dog 1",
    ]
    np.savez(tmp_path / "gap.npz", x=np.zeros((4, 2)), y=np.array([1, 2, 1, 2]))
    assert "no samples of class 0" in describe(load_checked(tmp_path / "gap.npz"))


# -- the command ----------------------------------------------------------------------------------


def test_push_dataset_check_prints_the_summary_and_sends_nothing(tmp_path):
    src = write(tmp_path / "d.csv", "a,b,species\n" + "1,2,cat\n3,4,dog\n" * 5)
    done = cli("push-dataset", str(src), "--check", "--dtype", "int8", "--device", "/dev/null/no")
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0].startswith("dataset: 10 samples of (2,) int8 (scale ") and lines[0].endswith(" B")
    assert lines[1:3] == ["  source:  d.csv (csv), label column 'species' (column 2, the last)",
                          "  classes: 2: cat 5, dog 5"]  # fmt: skip
    assert "not sent" in done.stdout and not list(tmp_path.glob("*.mtd"))


def test_push_dataset_refusal_is_one_line_without_traceback(tmp_path):
    src = write(tmp_path / "f.csv", "\n".join(f"{v:.3f},{v / 2:.3f}" for v in RNG.random(50)))
    done = cli("push-dataset", str(src), "--board", "unix")
    assert done.returncode == 1
    assert done.stderr.count("\n") == 1 and done.stderr.startswith("mcutrain: error: ")
    assert "--label-column" in done.stderr and done.stdout == ""


def test_push_dataset_to_a_name_taken_by_another_file_asks_for_force(tmp_path):
    np.savez(tmp_path / "toy.npz", x=np.zeros((6, 2), np.float32), y=np.arange(6) % 2)
    np.savez(tmp_path / "other.npz", x=np.ones((6, 3), np.float32), y=np.arange(6) % 3)
    dest = tmp_path / "board" / "toy.mtd"
    first = cli("push-dataset", str(tmp_path / "toy.npz"), "--board", "unix", "--dest", str(dest))
    assert first.returncode == 0, first.stderr
    same = cli("push-dataset", str(tmp_path / "toy.npz"), "--board", "unix", "--dest", str(dest))
    assert same.returncode == 0, same.stderr
    assert same.stdout.endswith(f"{dest} is already on the board with the same content: "
                                "nothing sent\n")  # fmt: skip
    again = cli("push-dataset", str(tmp_path / "other.npz"), "--board", "unix", "--dest", str(dest))
    assert again.returncode == 1
    assert again.stderr == (f"mcutrain: error: {dest} is already on the board "
                            f"({dest.stat().st_size} B): pass "
                            "--force to replace it, or --dest to choose another name\n")  # fmt: skip
    assert "dataset: 6 samples of (3,) float32" in again.stdout  # the summary came first
    assert read_dataset(dest).x.shape == (6, 2)  # untouched
    forced = cli("push-dataset", str(tmp_path / "other.npz"), "--board", "unix", "--dest",
                 str(dest), "--force")  # fmt: skip
    assert forced.returncode == 0, forced.stderr
    assert read_dataset(dest).x.shape == (6, 3)


def test_csv_byte_order_mark_is_not_part_of_the_first_name(tmp_path):
    (tmp_path / "bom.csv").write_bytes("label,a\n1,0.5\n0,0.25\n".encode("utf-8-sig"))
    assert load_checked(tmp_path / "bom.csv", label_column="label").data.y.tolist() == [1, 0]
