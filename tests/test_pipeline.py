"""End to end: the real `dvc repro` on a tiny configuration, in a temporary copy of the repo."""

import csv
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]

# Small enough to run in a few minutes on two cores; the same stages and code as the default.
TINY = {
    "world": {"splits": {"seed": 400, "pool": 400, "bench": 160}},
    "bench": {"items_per_family": 20},
    "clip": {"epochs": 1},
    "base": {"epochs": 1},
    "sample": {"budget": 120},
    "train": {"epochs": 1},
}


def _merge(base, override):
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            _merge(base[key], value)
        else:
            base[key] = value
    return base


def _run(args, cwd, env):
    result = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True)
    assert result.returncode == 0, f"{' '.join(args)} failed:\n{result.stdout[-4000:]}\n{result.stderr[-4000:]}"
    return result.stdout


@pytest.fixture(scope="module")
def repo(tmp_path_factory):
    root = tmp_path_factory.mktemp("mmloop")
    files = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                           cwd=REPO, capture_output=True, text=True, check=True).stdout.split("\0")
    for name in filter(None, files):
        source = REPO / name
        if source.is_file():
            (root / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, root / name)
    params = _merge(yaml.safe_load((root / "params.yaml").read_text()), TINY)
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}", CI="true")
    for args in (["git", "init", "-q"], ["git", "add", "-A"],
                 ["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "tiny"]):
        _run(args, root, env)
    # Every params key a stage reads is recorded, to compare with what it declares.
    _run(["dvc", "repro"], root, dict(env, MMLOOP_RECORD_READS=str(root / "reads.tsv")))
    return root, env


@pytest.mark.slow
def test_repro_writes_the_history(repo):
    root, _ = repo
    with open(root / "metrics" / "history.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert [row["iteration"] for row in rows] == ["0", "1", "2"]
    assert {"overall", "count", "spatial"} <= set(rows[0])


@pytest.mark.slow
def test_each_stage_reads_every_params_key_it_declares(repo):
    from mmloop import graph

    root, _ = repo
    read: dict[str, set[str]] = {}
    for line in (root / "reads.tsv").read_text().splitlines():
        stage, key = line.split("\t")
        read.setdefault(stage, set()).add(key)
    declared = {path.stem: set(graph.load_stage_module(path).PARAMS) for path in (root / "stages").glob("*.py")}
    # The openai teacher's keys are read only with that backend (another test runs it).
    assert {stage: keys for stage, keys in declared.items() if keys} == read


def _stale(root, env, edit, undo) -> dict:
    edit()
    try:
        return json.loads(_run(["dvc", "status", "--json"], root, env))
    finally:
        undo()


@pytest.mark.slow
def test_answer_format_makes_the_stages_that_read_it_stale_and_everything_downstream(repo):
    root, env = repo
    original = (root / "params.yaml").read_text()
    params = yaml.safe_load(original)
    params["answer_format"] = "letter"
    stale = _stale(root, env, lambda: (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False)),
                   lambda: (root / "params.yaml").write_text(original))
    iterations = params["loop"]["iterations"]
    assert set(stale) == {"curate", "evaluate-base", *(f"{stage}@{name}" for stage in ("generate", "evaluate")
                                                          for name in iterations)}
    # Downstream of those, through the outputs each stage reads (dvc.lock), is everything but world, bench, clip.
    lock = yaml.safe_load((root / "dvc.lock").read_text())["stages"]
    reached, grew = set(stale), True
    while grew:
        outs = [out["path"] for name in reached for out in lock[name].get("outs", [])]
        found = {name for name, entry in lock.items()
                 if any(dep["path"] == out or dep["path"].startswith(out + "/") or out.startswith(dep["path"] + "/")
                        for dep in entry.get("deps", []) for out in outs)}
        grew = not found <= reached
        reached |= found
    assert reached == set(lock) - {"world", "bench", "clip"}


@pytest.mark.slow
def test_editing_a_source_file_named_in_params_makes_curate_stale(repo):
    root, env = repo
    source = root / yaml.safe_load((root / "params.yaml").read_text())["curate"]["sources"][0]["captions"]
    original = source.read_bytes()
    stale = _stale(root, env, lambda: source.write_bytes(original + b"\n"), lambda: source.write_bytes(original))
    changed = [entry["changed deps"] for entry in stale["curate"] if "changed deps" in entry]
    assert changed == [{str(source.relative_to(root)): "modified"}]


@pytest.mark.slow
def test_editing_the_question_programs_makes_eliminate_stale(repo):
    root, env = repo
    module = root / "src" / "mmloop" / "questions.py"
    original = module.read_text()
    stale = _stale(root, env, lambda: module.write_text(original + "\n# edited\n"), lambda: module.write_text(original))
    assert {"eliminate@1", "eliminate@2", "curate", "bench"} <= set(stale)


@pytest.mark.slow
def test_lineage_of_a_kept_sample_reaches_its_bad_case(repo):
    import pyarrow.parquet as pq

    root, env = repo
    kept = pq.read_table(root / "data" / "iter=2" / "kept.parquet").to_pylist()
    assert kept, "iteration 2 kept nothing"
    out = _run(["mmloop", "lineage", kept[0]["sample_id"]], root, env)
    assert "[query, iteration 2" in out and "[badcase, iteration 1" in out


@pytest.mark.slow
def test_appending_an_iteration_runs_only_its_stages(repo):
    root, env = repo
    params = yaml.safe_load((root / "params.yaml").read_text())
    params["loop"]["iterations"]["3"] = {"prev": "2"}
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    out = _run(["dvc", "repro"], root, env)
    ran = {line.split("'")[1] for line in out.splitlines() if line.startswith("Running stage")}
    assert ran == {"sample@3", "generate@3", "eliminate@3", "train@3", "evaluate@3", "aggregate"}


@pytest.mark.slow
def test_a_new_loop_seed_leaves_world_and_base_model_alone(repo):
    root, env = repo
    original = (root / "params.yaml").read_text()
    params = yaml.safe_load(original)
    params["loop"]["seed"] = 1
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    try:
        stale = set(json.loads(_run(["dvc", "status", "--json"], root, env)))
    finally:
        (root / "params.yaml").write_text(original)
    iterations = params["loop"]["iterations"]
    assert stale == {f"{stage}@{name}" for stage in ("sample", "generate", "eliminate", "train") for name in iterations}


@pytest.mark.slow
def test_the_loop_runs_with_the_openai_teacher_on_a_local_server(repo):
    """generate.backend: openai against the fault-injecting local server: the rerun regenerates
    through HTTP, the kept data comes from the teacher, and the key reaches no file."""
    import uuid

    import pyarrow.parquet as pq

    from openai_server import FaultConfig, OpenAIServer

    root, env = repo
    secret = f"sk-test-{uuid.uuid4().hex}"
    server = OpenAIServer(FaultConfig(fault_rate=0.2, timeout_sleep=1.0, seed=3, expected_key=secret)).start()
    try:
        params = yaml.safe_load((root / "params.yaml").read_text())
        params["generate"]["backend"] = "openai"
        params["generate"]["openai"] = {
            "model": "gpt-test", "base_url": server.url, "api_key_env": "MMLOOP_TEST_KEY", "concurrency": 8,
            "timeout": 0.5, "backoff_base": 0.01, "backoff_max": 0.2, "max_attempts": 10, "image_mode": "image",
            "image_max_side": 64, "prompt": "prompts/generate.j2"}
        (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
        # The teacher now reads its template and the previous bad cases: declare them.
        _run(["mmloop", "graph", "--write"], root, env)
        out = _run(["dvc", "repro"], root, dict(env, MMLOOP_TEST_KEY=secret))
        attempts = sum(server.counters.attempts.values())
    finally:
        server.stop()
    assert "Running stage 'generate@1'" in out and attempts > 0 and server.counters.unauthorised == 0
    kept = pq.read_table(root / "data" / "iter=1" / "kept.parquet").to_pylist()
    assert kept and all(row["provenance"]["backend"] == "openai" for row in kept)
    with open(root / "metrics" / "history.csv") as handle:
        assert [row["iteration"] for row in csv.DictReader(handle)] == ["0", "1", "2", "3"]
    leaked = subprocess.run(["grep", "-rlF", "--exclude-dir=.git", secret, str(root)], capture_output=True, text=True)
    assert leaked.stdout == ""
