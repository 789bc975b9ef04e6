"""``attreid case`` and ``attreid timeline`` on ingested footage (issue 31): a case opened,
marked, noted, shown and exported from the command line; errors as one line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import require

from attreid import cli

require("faiss", "the gallery index (the search extra)")


def _run(args, capsys):
    with pytest.raises(SystemExit) as exit_:
        cli.run([str(a) for a in args])
    out = capsys.readouterr()
    return (exit_.value.code or 0), out.out, out.err


def test_a_case_from_the_command_line(footage_index, tmp_path, capsys):
    index = footage_index[0]
    code, out, _ = _run(["case", "new", index, "cli case"], capsys)
    assert code == 0 and "case 'cli case' opened" in out
    code, out, err = _run(["timeline", index, "--id", 3, "--max-distance", 1e9, "--json"],
                          capsys)
    record = json.loads(out)
    visits = record["visits"]
    assert record["query"]["id"] == 3 and record["rule"] == "distance <= 1e+09"
    ids = [c["id"] for v in visits for c in v["crops"]]
    starts = [v["start_s"] for v in visits]
    assert code == 0 and len(ids) == len(set(ids)) and 3 not in ids and starts == sorted(starts)
    mine = ids[:3]
    assert _run(["case", "mark", index, "cli case", *mine[:2], "--right"], capsys)[0] == 0
    assert _run(["case", "mark", index, "cli case", mine[2], "--wrong", "--note", "hat"],
                capsys)[0] == 0
    code, out, _ = _run(["case", "mark", index, "cli case", mine[2], 99999, "--right"], capsys)
    assert code == 1 and "ids 0.." in out  # all or nothing: mine[2] keeps its wrong mark
    _run(["case", "mark", index, "cli case", mine[2], "--clear"], capsys)
    code, out, _ = _run(["case", "mark", index, "cli case", mine[2], "--clear"], capsys)
    assert "0 sighting(s) cleared" in out and "1 had no mark" in out
    assert _run(["case", "mark", index, "cli case", mine[2], "--wrong", "--note", "hat"],
                capsys)[0] == 0
    assert _run(["timeline", index, "--id", 3, "--max-distance", 1, "--case", "cli case"],
                capsys)[0] == 0
    assert _run(["case", "note", index, "cli case", "two bags"], capsys)[0] == 0
    code, out, _ = _run(["case", "show", index, "cli case", "--json"], capsys)
    record = json.loads(out)
    assert sorted(s["id"] for s in record["timeline"]) == sorted(mine[:2])
    assert record["rejected"][0]["note"] == "hat" and record["notes"][0]["text"] == "two bags"
    assert record["queries"][0]["kind"] == "where else"
    assert all(Path(s["path"]).is_absolute() for s in record["timeline"])
    code, out, _ = _run(["case", "list", index], capsys)
    assert "cli case: 2 confirmed, 1 rejected, 1 note(s)" in out
    code, out, _ = _run(["case", "export", index, "cli case", "--out", tmp_path / "report"],
                        capsys)
    assert code == 0 and (tmp_path / "report" / "cli_case.html").is_file()
    assert (tmp_path / "report" / "cli_case.csv").read_text().count("\n") == 4
    code, out, _ = _run(["case", "show", index, "cli case"], capsys)
    assert code == 0 and "timeline (confirmed)" in out


@pytest.mark.parametrize("args, message", [
    (["case", "show", "{index}", "missing"], "no case 'missing'"),
    (["case", "mark", "{index}", "cli case", "0"], "give one of --right, --wrong, --clear"),
    (["case", "mark", "{index}", "cli case", "99999", "--right"], "no indexed image"),
    (["case", "list", "{tmp}"], "not an index folder"),
    (["timeline", "{index}"], "give --id or --image"),
    (["timeline", "{index}", "--id", "0", "--image", "{index}"], "not both"),
    (["timeline", "{index}", "--id", "99999"], "not in the index"),
])
def test_case_errors_are_one_line(footage_index, tmp_path, capsys, args, message):
    index = footage_index[0]
    _run(["case", "new", index, "cli case"], capsys)
    code, out, err = _run([a.format(index=index, tmp=tmp_path) for a in args], capsys)
    assert code == 1 and message in out + err and "Traceback" not in out + err
