"""Every command against missing, damaged and foreign-but-valid inputs: exit 1, one ``error:``
line naming the input, no traceback (issue 21, item 8). Run in this process through the console
entry point's handler (``attreid.cli.run``), so an exception that escapes it fails the test."""

from __future__ import annotations

import pytest

from attreid import cli
from attreid.utils.checkpoint import load_checkpoint, save_checkpoint


@pytest.fixture(scope="module")
def inputs(tiny_checkpoint, synth_market, search_index, tmp_path_factory):
    """Named bad inputs: {name: path}, plus the good ones the commands need beside them."""
    root = tmp_path_factory.mktemp("bad_inputs")
    garbage = root / "garbage.pt"
    garbage.write_bytes(b"not a checkpoint at all" * 10)
    state = load_checkpoint(tiny_checkpoint)
    state["model"] = {("other." + k): v for k, v in state["model"].items()}
    save_checkpoint(root / "foreign.pt", state)
    (root / "empty_dir").mkdir()
    (root / "not_an_index").mkdir()
    (root / "not_an_index" / "meta.sqlite").write_bytes(b"garbage")
    (root / "a_file").write_text("a file where --out needs a folder")
    return {"missing_pt": root / "missing.pt", "garbage_pt": garbage,
            "foreign_pt": root / "foreign.pt", "missing_dir": root / "missing_dir",
            "empty_dir": root / "empty_dir", "not_an_index": root / "not_an_index",
            "good_pt": tiny_checkpoint, "data": synth_market, "index": search_index,
            "out": root / "out", "a_file": root / "a_file"}


CASES = [  # (command words with {placeholders}, the input that is bad)
    ("evaluate {missing_pt} --data {data} --out {out}", "missing_pt"),
    ("evaluate {garbage_pt} --data {data} --out {out}", "garbage_pt"),
    ("evaluate {foreign_pt} --data {data} --out {out}", "foreign_pt"),
    ("evaluate {good_pt} --data {missing_dir} --out {out}", "missing_dir"),
    ("evaluate {good_pt} --data {empty_dir} --out {out}", "empty_dir"),
    ("predict {garbage_pt} --data {data} --out {out}", "garbage_pt"),
    ("predict {foreign_pt} --data {data} --out {out}", "foreign_pt"),
    ("predict {good_pt} --data {empty_dir} --out {out}", "empty_dir"),
    ("export {missing_pt} --out {out}/m.onnx", "missing_pt"),
    ("export {foreign_pt} --out {out}/m.onnx", "foreign_pt"),
    ("index build {garbage_pt} --images {data}/query --out {out}/ix", "garbage_pt"),
    ("index build {foreign_pt} --images {data}/query --out {out}/ix", "foreign_pt"),
    ("index build {good_pt} --images {missing_dir} --out {out}/ix", "missing_dir"),
    ("index add {not_an_index} --images {data}/query", "not_an_index"),
    ("index add {missing_dir} --images {data}/query", "missing_dir"),
    ("search {not_an_index} --attributes gender=female", "not_an_index"),
    ("search {index} --image {missing_pt}", "missing_pt"),
    ("search {index} --image {garbage_pt}", "garbage_pt"),
    ("serve {not_an_index}", "not_an_index"),
    ("compare {missing_dir}", "missing_dir"),
    ("compare {empty_dir}", "empty_dir"),
    ("train -c demo --data {missing_dir} --out {out}/t", "missing_dir"),
    ("train -c demo --data {empty_dir} --out {out}/t", "empty_dir"),
    ("data summary {missing_dir}", "missing_dir"),
    ("data check {empty_dir}", "empty_dir"),
    # an output under a file: the file system's error, naming the path, as one line
    ("synth --ids 4 --out {a_file}/synth", "a_file"),
    ("evaluate {good_pt} --data {data} --out {a_file}/eval", "a_file"),
    ("predict {good_pt} --data {data} --out {a_file}/pred", "a_file"),
    ("export {good_pt} --out {a_file}/m.onnx", "a_file"),
    ("index build {good_pt} --images {data}/query --out {a_file}/ix", "a_file"),
    ("train -c demo --data {data} --out {a_file}/t --set optim.epochs=1", "a_file"),
]


@pytest.mark.parametrize("words, bad", CASES, ids=[c[0].split(" {")[0] + "-" + c[1]
                                                     for c in CASES])
def test_bad_input_is_one_error_line_and_exit_1(inputs, capsys, monkeypatch, words, bad):
    monkeypatch.delenv("ATTREID_DEBUG", raising=False)
    monkeypatch.setenv("COLUMNS", "400")  # one line per message, for the assertion below
    args = [word.format(**inputs) for word in words.split()]
    with pytest.raises(SystemExit) as exit_info:
        cli.run(args)
    out = capsys.readouterr()
    text = out.out + out.err
    assert exit_info.value.code == 1, text
    assert "error:" in text and "Traceback" not in text, text
    assert inputs[bad].name in text, text  # the message names what was wrong


@pytest.mark.parametrize("words", [
    "train -c demo --data {empty_dir} --out {new}",
    "train -c demo --data {data} --out {new} --resume",  # nothing to resume
    "predict {good_pt} --data {empty_dir} --out {new}",
])
def test_a_refused_command_leaves_no_empty_output_folder(inputs, tmp_path, capsys, words):
    """The output folder made for a command that is then refused is removed again."""
    new = tmp_path / "never_written"
    args = [word.format(**inputs, new=new) for word in words.split()]
    with pytest.raises(SystemExit) as exit_info:
        cli.run(args)
    assert exit_info.value.code == 1, capsys.readouterr().out
    assert not new.exists()
    kept = tmp_path / "kept"
    kept.mkdir()
    with pytest.raises(SystemExit):
        cli.run([word.format(**inputs, new=kept) for word in words.split()])
    assert kept.is_dir()  # a folder that was there before stays
