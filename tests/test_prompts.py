"""Prompt tables: rows equal the reference CSVs, the shipped CSVs are what the script writes, errors are clear."""
import csv
import subprocess
import sys
from pathlib import Path

import pytest

from diffusion_classifier.data.prompts import (
    DATASET_PROMPTS,
    PromptTable,
    check_classidx,
    dataset_prompts,
    read_prompts,
    write_prompts_csv,
)

REPO = Path(__file__).resolve().parent.parent
REFERENCE = Path("/work/shared/data/reference_prompts")
# our dataset name -> reference file name (the reference ships CIFAR-100's rows as "blurry" prompts)
REFERENCE_FILES = {n: f"{n}_prompts.csv" for n in
                   ["aircraft", "cifar10", "flowers", "food", "imagenet", "mnist", "objectnet", "pets", "stl10"]}
REFERENCE_FILES["cifar100"] = "cifar100_blurry_prompts.csv"
ALL = ["pets", "flowers", "stl10", "mnist", "cifar10", "cifar100", "food", "caltech101", "imagenet", "objectnet",
       "aircraft", "imagenetv2", "imagenetA", "imagenet_sketch", "eurosat", "digits", "fashion_mnist"]


def _reference_rows(path):
    with open(path, newline="") as f:
        return [(r["prompt"], r["classname"], int(r["classidx"])) for r in csv.DictReader(f)]


@pytest.mark.skipif(not REFERENCE.is_dir(), reason="reference prompt CSVs not on this machine")
@pytest.mark.parametrize("name", sorted(REFERENCE_FILES))
def test_rows_equal_reference(name):
    ref = REFERENCE / REFERENCE_FILES[name]
    assert dataset_prompts(name).rows() == _reference_rows(ref)
    assert read_prompts(ref).rows() == _reference_rows(ref)


@pytest.mark.skipif(not REFERENCE.is_dir(), reason="reference prompt CSVs not on this machine")
@pytest.mark.parametrize("name", sorted(REFERENCE_FILES))
def test_written_bytes_equal_reference(name, tmp_path):
    write_prompts_csv(tmp_path / "p.csv", dataset_prompts(name))
    assert (tmp_path / "p.csv").read_bytes() == (REFERENCE / REFERENCE_FILES[name]).read_bytes()


@pytest.mark.parametrize("name", ALL)
def test_shipped_csv_is_what_write_prompts_produces(name, tmp_path):
    assert name in DATASET_PROMPTS
    write_prompts_csv(tmp_path / "p.csv", dataset_prompts(name))
    assert (REPO / "prompts" / f"{name}_prompts.csv").read_bytes() == (tmp_path / "p.csv").read_bytes()


@pytest.mark.slow  # launches a script as a separate process
def test_script_writes_selected_datasets(tmp_path):
    subprocess.run([sys.executable, str(REPO / "scripts" / "write_prompts.py"), "--out_dir", str(tmp_path),
                    "--dataset", "pets", "digits"], check=True, capture_output=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["digits_prompts.csv", "pets_prompts.csv"]
    assert (tmp_path / "pets_prompts.csv").read_bytes() == (REPO / "prompts" / "pets_prompts.csv").read_bytes()


def test_script_names_each_csv_as_the_entry_scripts_read_it(tmp_path, capsys):
    """Every dataset's CSV goes to <dataset>_prompts.csv, what --prompt_path defaults to (digits_c included)."""
    from conftest import load_script

    written = load_script("scripts/write_prompts.py").main(["--out_dir", str(tmp_path)])
    assert sorted(p.name for p in written) == sorted(f"{name}_prompts.csv" for name in DATASET_PROMPTS)
    for path in written:
        assert path.read_bytes() == (REPO / "prompts" / path.name).read_bytes(), path.name


def test_digits_rows_mirror_mnist():
    t = dataset_prompts("digits")
    assert t.classidx == list(range(10))
    assert t.prompts[7] == "a photo of the number: '7'."
    assert t.classnames[7] == "seven"
    assert t.prompts == dataset_prompts("mnist").prompts


def test_imagenet_variants():
    imagenet = dataset_prompts("imagenet")
    assert dataset_prompts("imagenetv2").rows() == imagenet.rows()
    a = dataset_prompts("imagenetA")
    assert a.classidx == list(range(200))
    # ImageNet-A's first class is n01498041 stingray (ImageNet-1k index 6), its last n12267677 acorn (988)
    assert a.classnames[0] == imagenet.classnames[6] == "stingray"
    assert a.classnames[-1] == imagenet.classnames[988] == "acorn"


def test_eurosat_follows_torchvision_folder_order():
    t = dataset_prompts("eurosat")
    assert t.classnames == sorted(t.classnames)  # torchvision's EuroSAT is an ImageFolder: sorted folder names
    assert t.prompts[0] == "a centered satellite photo of annual crop land."


def test_pets_order_is_the_breed_id_order():
    names = dataset_prompts("pets").classnames
    assert names == sorted(names, key=str.lower)  # Oxford-IIIT class ids follow case-insensitive breed order


def test_flowers_order_agrees_with_torchvision():
    from torchvision.datasets import Flowers102

    ours = dataset_prompts("flowers").classnames
    differ = [i for i, (a, b) in enumerate(zip(ours, Flowers102.classes)) if a != b]
    assert differ == [15, 59, 92]  # spellings only: globe flower, pink and yellow dahlia, air plant


def test_roundtrip_with_quotes_and_extra_columns(tmp_path):
    rows = [('a "quoted", comma prompt.', "x", 1), ("plain.", "y", 0)]
    write_prompts_csv(tmp_path / "p.csv", rows)
    assert read_prompts(tmp_path / "p.csv").rows() == rows
    (tmp_path / "q.csv").write_text("classidx,extra,prompt,classname\n3,zz,hello,h\n")
    assert read_prompts(tmp_path / "q.csv") == PromptTable(["hello"], ["h"], [3])
    # a float column as pandas writes it (3.0) is the integer it holds
    (tmp_path / "f.csv").write_text("prompt,classname,classidx\nhello,h,3.0\nbye,b,12.\n")
    assert read_prompts(tmp_path / "f.csv") == PromptTable(["hello", "bye"], ["h", "b"], [3, 12])


def test_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.csv"):
        read_prompts(tmp_path / "nope.csv")


def test_missing_column_names_missing_and_found(tmp_path):
    (tmp_path / "p.csv").write_text("prompt,label\na,1\n")
    with pytest.raises(ValueError) as e:
        read_prompts(tmp_path / "p.csv")
    msg = str(e.value)
    assert "missing column(s) classname, classidx" in msg and "found prompt, label" in msg
    assert "\n" not in msg


@pytest.mark.parametrize("value", ["-1", "two", "1.5", "", ".0", "-1.0", "1.0.0"])
def test_bad_classidx_names_row(tmp_path, value):
    (tmp_path / "p.csv").write_text(f"prompt,classname,classidx\na,a,0\nb,b,{value}\n")
    with pytest.raises(ValueError, match=r"data row 2 \(line 3\) has classidx"):
        read_prompts(tmp_path / "p.csv")


def test_empty_prompt_is_named_and_spaced_or_capitalised_headers_are_read(tmp_path, capsys):
    (tmp_path / "e.csv").write_text("prompt,classname,classidx\na photo of a 0.,zero,0\n  ,one,1\n")
    assert read_prompts(tmp_path / "e.csv").classidx == [0, 1]  # scored, as the reference scores it
    err = capsys.readouterr().err
    assert "data row 2 (line 3) has an empty prompt (classidx 1)" in err and "unconditional" in err
    (tmp_path / "s.csv").write_text("Prompt, ClassName, classidx ,notes\nhello,h,3,x\n")
    assert read_prompts(tmp_path / "s.csv") == PromptTable(["hello"], ["h"], [3])


def test_empty_and_header_only(tmp_path):
    (tmp_path / "e.csv").write_text("")
    with pytest.raises(ValueError, match="empty file"):
        read_prompts(tmp_path / "e.csv")
    (tmp_path / "h.csv").write_text("prompt,classname,classidx\n")
    with pytest.raises(ValueError, match="no rows"):
        read_prompts(tmp_path / "h.csv")


def test_a_quote_left_open_and_a_column_given_twice_are_named(tmp_path):
    (tmp_path / "q.csv").write_text('prompt,classname,classidx\na 12" record,one,1\n"the ""best"" shot",two,2\n'
                                     '"abc,zero,0\nd,e,3\n')
    with pytest.raises(ValueError, match=r"q\.csv line 4: unexpected end of data \(a quoted field must end with a "
                                         r"closing quote"):
        read_prompts(tmp_path / "q.csv")
    (tmp_path / "q.csv").write_text('prompt,classname,classidx\na 12" record,one,1\n"the ""best"" shot",two,2\n')
    assert read_prompts(tmp_path / "q.csv").prompts == ['a 12" record', 'the "best" shot']
    (tmp_path / "d.csv").write_text("prompt,classname,classidx,Classidx\na,a,0,9\n")
    with pytest.raises(ValueError, match=r"d\.csv: column classidx appears 2 times in the header \(prompt, classname, "
                                         r"classidx, Classidx\)"):
        read_prompts(tmp_path / "d.csv")


def test_check_classidx():
    t = PromptTable(["a", "b", "c"], ["a", "b", "c"], [0, 9, 12])
    check_classidx(t, 13)
    msg = r"cifar10\.csv: classidx 12 \(row 3\) is out of range: the dataset has 10 classes"
    with pytest.raises(ValueError, match=msg):
        check_classidx(t, 10, source="cifar10.csv")


def test_a_row_naming_another_class_of_the_dataset_is_named(tmp_path, capsys):
    from diffusion_classifier.data.prompts import check_names

    (tmp_path / "p.csv").write_text("prompt,classname,classidx\na zero,zero,1\na one,one,0\na two,two,2\n")
    table = read_prompts(tmp_path / "p.csv")
    check_names(table, ["zero", "one", "two"], "p.csv")
    assert "data row 1 names 'zero' with classidx 1, but 'zero' is class 0" in capsys.readouterr().err
    check_names(table, ["one", "zero", "two"])  # the dataset's own order: consistent
    check_names(table, ["crane", "crane", "two"])  # names the dataset does not use, or shares, are not checked
    check_names(table, [])
    assert capsys.readouterr().err == ""
