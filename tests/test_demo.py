import json

from droptrain import cli


def test_demo_trains_and_predicts_a_test_image(tmp_path, capsys):
    assert cli.main(["demo", "--workdir", str(tmp_path), "--epochs", "2"]) == 0
    out = capsys.readouterr().out
    assert (tmp_path / "jobs" / "demo-final" / "output" / "model.tar.gz").is_file()
    line = next(l for l in out.splitlines() if l.strip().startswith('{"predictions"'))
    answer = json.loads(line)
    assert len(answer["predictions"]) == 3
    classes = {p.name for p in (tmp_path / "dataset" / "train").iterdir()}
    assert {p["label"] for p in answer["predictions"]} <= classes
