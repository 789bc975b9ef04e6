"""`attreid predict --data FOLDER` on a plain folder of crops (issue 28's Done-when: "any folder
of crops"): with none of the dataset layouts' markers, every image under it (any depth) is
predicted as the gallery; an empty folder is one line."""

from __future__ import annotations

import shutil

import numpy as np
import pytest

from attreid import cli


def _run(args, capsys):
    with pytest.raises(SystemExit) as exit_:
        cli.run([str(a) for a in args])
    out = capsys.readouterr()
    return (exit_.value.code or 0), out.out + out.err


def test_a_plain_folder_of_crops_is_predicted(tiny_checkpoint, synth_market, tmp_path, capsys):
    crops = tmp_path / "crops"
    (crops / "camera2").mkdir(parents=True)
    names = sorted(p.name for p in (synth_market / "query").glob("*.jpg"))[:5]
    for i, name in enumerate(names):
        shutil.copy(synth_market / "query" / name, crops / ("camera2" if i % 2 else "") / name)
    code, text = _run(["predict", tiny_checkpoint, "--data", crops, "--out", tmp_path / "p",
                       "--backend", "torch-fp32"], capsys)
    assert code == 0, text
    features = np.load(tmp_path / "p" / "features.npz", allow_pickle=True)
    assert sorted(p.rsplit("/", 1)[-1] for p in features["paths"].tolist()) == names
    assert set(features["split"].tolist()) == {"gallery"}
    assert features["embeddings"].shape[0] == 5
    (tmp_path / "empty").mkdir()
    code, text = _run(["predict", tiny_checkpoint, "--data", tmp_path / "empty", "--out",
                       tmp_path / "q"], capsys)
    assert code == 1 and "no images, and none of the dataset layouts' markers" in text
    assert "Traceback" not in text
