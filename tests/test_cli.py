"""`mmloop` command-line errors: one clear line naming the culprit and what to do, no traceback.

(`mmloop eval`'s runs are tested with the tiny model in test_evaluation.py.)"""

import base64
import io

import pytest

from mmloop import cli
from mmloop.eval.benchmarks.mmbench import write_mmbench
from mmloop.models import vlm
from mmloop.world.benchmark import mmbench_row


@pytest.fixture
def bench(tmp_path):
    """A one-item MMBench TSV with a PIL-made image."""
    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (8, 8), (255, 0, 0)).save(buffer, format="PNG")
    path = tmp_path / "bench.tsv"
    write_mmbench([mmbench_row(0, "What colour is it?", ["red", "blue"], "red", "colour",
                               base64.b64encode(buffer.getvalue()).decode())], path)
    return path


def _eval(capsys, bench, model, *extra):
    code = cli.main(["eval", "--model", str(model), "--bench", str(bench), "--params",
                     str(bench.parent / "no-params.yaml"), "--threads", "1", *extra])
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return code, err.strip().splitlines()[-1]  # the error's one line (library warnings may come before it)


def test_eval_with_a_missing_model_folder(tmp_path, bench, capsys):
    missing = tmp_path / "models" / "iter=9"
    code, err = _eval(capsys, bench, missing)
    assert code == 1
    assert err.startswith(f"mmloop eval: --model {missing}: model folder not found; pass a folder holding a saved model")


def test_eval_with_a_hub_id_that_cannot_be_reached_offline(tmp_path, bench, capsys, monkeypatch):
    import huggingface_hub.constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.chdir(tmp_path)  # no folder named like the id's organisation here
    code, err = _eval(capsys, bench, "no-such-org/no-such-vlm")
    assert code == 1
    assert err.startswith("mmloop eval: --model no-such-org/no-such-vlm: no such local folder, and not loadable as a "
                          "hub id (")
    assert "HF_HUB_OFFLINE=1" in err


def test_load_names_a_file_or_a_folder_without_a_model(tmp_path):
    (tmp_path / "weights.safetensors").write_bytes(b"")
    with pytest.raises(vlm.ModelNotFoundError, match=r"weights\.safetensors: is a file, not a model folder; pass"):
        vlm.load(tmp_path / "weights.safetensors")
    (tmp_path / "empty").mkdir()
    with pytest.raises(vlm.ModelNotFoundError, match=r"empty: this folder holds no saved model \(no config\.json\); pass"):
        vlm.load(tmp_path / "empty")
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "config.json").write_text("not JSON")
    with pytest.raises(vlm.ModelNotFoundError, match=r"broken: cannot load a model from this folder \(.+config\.json"
                                                     r".+ not a valid JSON file\.\); pass"):
        vlm.load(tmp_path / "broken")
    with pytest.raises(FileNotFoundError, match=r"iter=3: model folder not found"):  # still a FileNotFoundError
        vlm.load(tmp_path / "iter=3")


def test_an_invalid_param_names_the_key_and_the_value(tmp_path, bench, capsys, monkeypatch):
    """`seed: zero` in params.yaml: the error names `seed` and 'zero' (strict parsing, nothing reads
    the value before it is checked)."""
    params = tmp_path / "params.yaml"
    params.write_text("seed: zero\n")
    code = cli.main(["eval", "--model", str(tmp_path / "model"), "--bench", str(bench), "--params", str(params)])
    err = capsys.readouterr().err
    assert code == 1 and "Traceback" not in err
    assert f"{params}: 1 invalid parameter(s)" in err and "seed: Input should be a valid integer (got 'zero')" in err

    # `mmloop graph` reads params.yaml too: the same message, no traceback.
    (tmp_path / "dvc.yaml").write_text("stages: {}\n")
    monkeypatch.chdir(tmp_path)
    assert cli.main(["graph"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("mmloop graph: params.yaml: 1 invalid parameter(s)")
    assert "seed: Input should be a valid integer (got 'zero')" in err
