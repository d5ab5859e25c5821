"""dvc.yaml declares exactly what each stage reads: its code, its data, its params."""

from pathlib import Path

import yaml

from mmloop import graph

REPO = Path(__file__).resolve().parents[1]


def stages():
    document = yaml.safe_load((REPO / "dvc.yaml").read_text())
    for name, stage in document["stages"].items():
        body = stage.get("do", stage)
        script, args = graph.stage_command(body)
        yield name, body, script, args


def test_every_stage_declares_its_import_closure():
    missing = {}
    for name, body, script, _ in stages():
        deps = set(body.get("deps", []))
        closure = graph.import_closure(REPO / script, REPO / "src" / "mmloop")
        absent = sorted(str(path.relative_to(REPO)) for path in closure if str(path.relative_to(REPO)) not in deps)
        if absent:
            missing[name] = absent
    assert missing == {}, "stages importing project modules their deps do not list: " + "; ".join(
        f"{stage}: {', '.join(files)}" for stage, files in missing.items())


def test_every_stage_declares_the_params_and_data_its_module_names():
    from mmloop import config

    params = config.read(REPO / "params.yaml")
    for name, body, script, args in stages():
        deps, keys = graph.stage_declarations(REPO, script, args, params)
        assert body.get("deps") == deps, f"stage {name}: deps differ from what {script} reads"
        assert body.get("params", []) == keys, f"stage {name}: params differ from {script}'s PARAMS"


def test_dvc_yaml_is_what_mmloop_graph_writes():
    assert graph.check(REPO) == []


def test_closure_follows_function_level_imports_and_package_inits(tmp_path):
    package = tmp_path / "src" / "mmloop"
    (package / "teachers").mkdir(parents=True)
    for name in ("__init__.py", "teachers/__init__.py", "unused.py"):
        (package / name).write_text("")
    (package / "core.py").write_text("def late():\n    from mmloop.teachers import remote\n")
    (package / "teachers" / "remote.py").write_text("import json\nfrom mmloop import core\n")
    script = tmp_path / "stage.py"
    script.write_text("import os\nfrom mmloop.core import late\n")
    found = {str(path.relative_to(package)) for path in graph.import_closure(script, package)}
    assert found == {"__init__.py", "core.py", "teachers/__init__.py", "teachers/remote.py"}


def test_a_file_named_in_params_but_not_declared_stops_the_stage(tmp_path, monkeypatch):
    import pytest

    from mmloop import stage

    (tmp_path / "dvc.yaml").write_text(yaml.safe_dump({"stages": {"curate": {"cmd": "x", "deps": ["a.json"]}}}))
    monkeypatch.chdir(tmp_path)
    stage.check_declared("curate", ["a.json"])
    with pytest.raises(SystemExit, match="reads b.json .*mmloop graph --write"):
        stage.check_declared("curate", ["a.json", "b.json"])
