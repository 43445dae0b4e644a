"""Attribute tables: CelebA's list_attr_celeba.txt (real file) and CelebA30k-style CSVs."""
from __future__ import annotations

import warnings
from contextlib import contextmanager

import numpy as np
import pytest

from facetl.data.load import load_samples
from facetl.data.tables import read_attribute_table, read_table
from facetl.errors import FacetlError

CELEBA = "celeba_attributes/list_attr_celeba.txt"


@contextmanager
def no_warnings():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        yield


def write_csv(path, text: str, encoding: str = "utf-8", newline: str = "\n"):
    path.write_bytes(text.replace("\n", newline).encode(encoding))
    return path


@pytest.fixture
def images(tmp_path, make_image):
    """An image folder with a.jpg ... f.jpg."""
    folder = tmp_path / "img"
    for i, name in enumerate("abcdef"):
        make_image(folder / f"{name}.jpg", 8, seed=i)
    return folder


def labels_by_file(samples) -> dict[str, str]:
    return {p: samples.class_names[label] for p, label in zip(samples.paths, samples.labels)}


# ---------------------------------------------------------------- the real CelebA file


def test_real_celeba_file_reads_all_rows_and_warns_about_the_count(shared_path):
    path = shared_path(CELEBA)
    with pytest.warns(UserWarning, match="202599"):
        names, files, rows = read_table(path)
    assert len(names) == 40 and "Smiling" in names and names[0] == "5_o_Clock_Shadow"
    assert len(files) == len(rows) == 20000
    assert files[0] == "000001.jpg" and files[-1] == "020000.jpg"
    assert all(len(r) == 40 for r in rows[:100])
    assert {v for r in rows[:100] for v in r} == {"1", "-1"}  # no '\r' left over from the CRLF lines


@pytest.fixture
def celeba_cut(shared_path, tmp_path, make_image):
    """The first 40 rows of the real table (CRLF, count line 202599 kept) and 40 tiny images for them."""
    lines = shared_path(CELEBA).read_bytes().split(b"\r\n")
    cut = tmp_path / "list_attr_celeba.txt"
    cut.write_bytes(b"\r\n".join(lines[:42]) + b"\r\n")
    folder = tmp_path / "img_align_celeba"
    rows = [line.decode().split() for line in lines[2:42]]
    for i, row in enumerate(rows):
        make_image(folder / row[0], 8, seed=i)
    return cut, folder, lines[1].decode().split(), rows


def test_cut_down_celeba_table_loads_with_a_count_warning(celeba_cut):
    path, folder, names, rows = celeba_cut
    column = names.index("Smiling")
    with pytest.warns(UserWarning, match="count line says 202599 images, the file has 40 rows"):
        samples = read_attribute_table(path, "Smiling", folder)
    assert samples.class_names == ["not_Smiling", "Smiling"]
    assert samples.paths == [r[0] for r in rows]
    expected = np.array([1 if r[1 + column] == "1" else 0 for r in rows])
    np.testing.assert_array_equal(samples.labels, expected)
    assert 0 < expected.sum() < 40
    assert all(f.is_file() for f in samples.files())


def test_celeba_table_with_a_true_count_does_not_warn(celeba_cut):
    path, folder, _, _ = celeba_cut
    lines = path.read_bytes().split(b"\r\n")
    path.write_bytes(b"\r\n".join([b"40"] + lines[1:]))
    with no_warnings():
        samples = read_attribute_table(path, "Male", folder)
    assert len(samples) == 40


def test_celeba_table_through_load_samples_needs_a_target(celeba_cut):
    path, folder, _, _ = celeba_cut
    with pytest.raises(FacetlError, match="--target"):
        load_samples(str(path), str(folder))
    with pytest.warns(UserWarning):
        samples = load_samples(str(path), str(folder), "Smiling", positive="not_Smiling")
    assert samples.class_names == ["Smiling", "not_Smiling"]


def test_celeba_row_with_wrong_field_count_names_the_line(tmp_path, images):
    path = tmp_path / "attrs.txt"
    path.write_text("2\nSmiling Male\na.jpg 1 -1\nb.jpg 1\n")
    with pytest.raises(FacetlError, match="line 4"):
        read_attribute_table(path, "Smiling", images)


# ---------------------------------------------------------------- CSV layouts


def test_csv_with_filename_column_anywhere(tmp_path, images):
    path = write_csv(tmp_path / "t.csv", "Male,filename,Smiling\n1,a.jpg,1\n-1,b.jpg,-1\n1,c.jpg,1\n")
    samples = read_attribute_table(path, "Smiling", images)
    assert labels_by_file(samples) == {"a.jpg": "Smiling", "b.jpg": "not_Smiling", "c.jpg": "Smiling"}
    samples = read_attribute_table(path, "Male", images)
    assert labels_by_file(samples) == {"a.jpg": "Male", "b.jpg": "not_Male", "c.jpg": "Male"}


def test_csv_with_file_names_in_an_unnamed_first_column(tmp_path, images):
    path = write_csv(tmp_path / "t.csv", "img,Smiling,Male\na.jpg,-1,1\nb.jpg,1,1\n")
    samples = read_attribute_table(path, "Smiling", images)
    assert labels_by_file(samples) == {"a.jpg": "not_Smiling", "b.jpg": "Smiling"}


@pytest.mark.parametrize("negative", ["-1", "0", "0.0", "-1.0"])
def test_negative_values_map_to_class_zero(tmp_path, images, negative):
    path = write_csv(tmp_path / "t.csv", f"filename,Smiling\na.jpg,1\nb.jpg,{negative}\nc.jpg,1.0\n")
    samples = read_attribute_table(path, "Smiling", images)
    assert samples.labels.tolist() == [1, 0, 1]


def test_byte_order_mark_is_not_part_of_the_first_column_name(tmp_path, images):
    path = write_csv(tmp_path / "t.csv", "Smiling,filename\n1,a.jpg\n-1,b.jpg\n", encoding="utf-8-sig")
    assert path.read_bytes().startswith(b"\xef\xbb\xbf")
    samples = read_attribute_table(path, "Smiling", images)
    assert labels_by_file(samples) == {"a.jpg": "Smiling", "b.jpg": "not_Smiling"}


def test_crlf_line_ends(tmp_path, images):
    path = write_csv(tmp_path / "t.csv", "filename,Male,Smiling\na.jpg,1,1\nb.jpg,1,-1\n", newline="\r\n")
    with no_warnings():
        samples = read_attribute_table(path, "Smiling", images)
    assert labels_by_file(samples) == {"a.jpg": "Smiling", "b.jpg": "not_Smiling"}


def test_blank_lines_are_ignored(tmp_path, images):
    path = write_csv(tmp_path / "t.csv", "\nfilename,Smiling\n\na.jpg,1\n   \n,\nb.jpg,-1\n\n\n")
    with no_warnings():
        samples = read_attribute_table(path, "Smiling", images)
    assert labels_by_file(samples) == {"a.jpg": "Smiling", "b.jpg": "not_Smiling"}


def test_extra_columns_and_extra_fields_are_ignored(tmp_path, images):
    path = write_csv(tmp_path / "t.csv",
                     "filename,Smiling,Young,notes\na.jpg,1,1,ok,stray,fields\nb.jpg,-1,-1,\"a, b\"\n")
    samples = read_attribute_table(path, "Smiling", images)
    assert labels_by_file(samples) == {"a.jpg": "Smiling", "b.jpg": "not_Smiling"}


def test_rows_missing_a_value_or_file_name_are_skipped_with_a_warning(tmp_path, images):
    path = write_csv(tmp_path / "t.csv",
                     "filename,Smiling,Male\na.jpg,1,1\nb.jpg,,1\nc.jpg\n,1,1\nd.jpg,-1,1\n")
    with pytest.warns(UserWarning, match="skipped 3 row"):
        samples = read_attribute_table(path, "Smiling", images)
    assert labels_by_file(samples) == {"a.jpg": "Smiling", "d.jpg": "not_Smiling"}


def test_duplicate_file_names_keep_the_first_row(tmp_path, images):
    path = write_csv(tmp_path / "t.csv", "filename,Smiling\na.jpg,1\nb.jpg,-1\na.jpg,-1\n")
    with pytest.warns(UserWarning, match="a.jpg is listed more than once"):
        samples = read_attribute_table(path, "Smiling", images)
    assert samples.paths == ["a.jpg", "b.jpg"]
    assert samples.labels.tolist() == [1, 0]


def test_images_default_to_the_table_folder(tmp_path, make_image):
    make_image(tmp_path / "x.jpg", 8)
    make_image(tmp_path / "sub" / "y.jpg", 8, seed=1)
    path = write_csv(tmp_path / "t.csv", "filename,Smiling\nx.jpg,1\nsub/y.jpg,-1\n")
    samples = read_attribute_table(path, "Smiling", None)
    assert samples.root == tmp_path
    assert all(f.is_file() for f in samples.files())


# ---------------------------------------------------------------- errors


def test_missing_target_column_is_named(tmp_path, images):
    path = write_csv(tmp_path / "t.csv", "filename,Smiling,Male\na.jpg,1,1\nb.jpg,-1,-1\n")
    with pytest.raises(FacetlError, match="'Eyeglasses' not found") as info:
        read_attribute_table(path, "Eyeglasses", images)
    assert "Smiling" in str(info.value) and "Male" in str(info.value)  # the columns there are
    with pytest.raises(FacetlError, match="did you mean Smiling"):
        read_attribute_table(path, "smiling", images)


@pytest.mark.parametrize("value", ["2", "yes", "0.5"])
def test_bad_attribute_value_is_refused(tmp_path, images, value):
    path = write_csv(tmp_path / "t.csv", f"filename,Smiling\na.jpg,1\nb.jpg,{value}\nc.jpg,-1\n")
    with pytest.raises(FacetlError, match=rf"b\.jpg.*Smiling='{value}'"):
        read_attribute_table(path, "Smiling", images)


def test_image_named_but_absent_is_named(tmp_path, images):
    path = write_csv(tmp_path / "t.csv", "filename,Smiling\na.jpg,1\nghost.jpg,-1\nb.jpg,-1\n")
    with pytest.raises(FacetlError, match="ghost.jpg"):
        read_attribute_table(path, "Smiling", images)


def test_missing_image_folder_is_named(tmp_path):
    path = write_csv(tmp_path / "t.csv", "filename,Smiling\na.jpg,1\n")
    with pytest.raises(FacetlError, match="image folder not found.*nowhere"):
        read_attribute_table(path, "Smiling", tmp_path / "nowhere")


def test_single_valued_attribute_is_refused(tmp_path, images):
    path = write_csv(tmp_path / "t.csv", "filename,Smiling\na.jpg,1\nb.jpg,1\n")
    with pytest.raises(FacetlError, match="single value"):
        read_attribute_table(path, "Smiling", images)


def test_empty_and_binary_tables_are_refused(tmp_path, images):
    empty = write_csv(tmp_path / "empty.csv", "\n\n")
    with pytest.raises(FacetlError, match="empty"):
        read_attribute_table(empty, "Smiling", images)
    binary = tmp_path / "t.csv"
    binary.write_bytes(b"\xff\xfe\x00\x81garbage")
    with pytest.raises(FacetlError, match="not UTF-8"):
        read_attribute_table(binary, "Smiling", images)
