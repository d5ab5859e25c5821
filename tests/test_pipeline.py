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

from checkout import copy_checkout

REPO = Path(__file__).resolve().parents[1]

# Small enough to run in a few minutes on two cores; the same stages and code as the default.
TINY = {
    "world": {"splits": {"seed": 400, "pool": 400, "bench": 160}},
    "bench": {"items_per_family": 20},
    "clip": {"epochs": 1},
    "base": {"epochs": 1},
    "sample": {"budget": 120},
    "evolve": {"rounds": 2},  # the default loop does not evolve; this one runs every stage's code
    "train": {"epochs": 1},
    "sena": {"images": 24, "max_new_tokens": 16},
    "preference": {"lr": 0.005},
    # Iteration 2 trains by SFT, then by preference on the model's own pairs (SENA).
    "loop": {"iterations": {"1": {"prev": "0", "train": "sft"}, "2": {"prev": "1", "train": "both"}}},
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
    root = copy_checkout(tmp_path_factory.mktemp("mmloop"))
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
    assert set(stale) == {"curate", "evaluate-base", *(f"{stage}@{name}" for stage in ("generate", "evolve", "evaluate")
                                                          for name in iterations)}
    # Downstream of those, through the outputs each stage reads (dvc.lock), is everything but the
    # stages upstream of them: world, store, bench, clip.
    lock = yaml.safe_load((root / "dvc.lock").read_text())["stages"]
    reached, grew = set(stale), True
    while grew:
        outs = [out["path"] for name in reached for out in lock[name].get("outs", [])]
        found = {name for name, entry in lock.items()
                 if any(dep["path"] == out or dep["path"].startswith(out + "/") or out.startswith(dep["path"] + "/")
                        for dep in entry.get("deps", []) for out in outs)}
        grew = not found <= reached
        reached |= found
    assert reached == set(lock) - {"world", "store", "bench", "clip"}


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
def test_evolution_is_judged_per_round_and_its_chain_reaches_the_image(repo):
    import pyarrow.parquet as pq

    root, env = repo
    stats = json.loads((root / "metrics" / "evolve" / "iter=1.json").read_text())
    assert [entry["round"] for entry in stats["rounds"]] == [1, 2]
    for entry in stats["rounds"]:
        assert entry["evolved"] == entry["kept"] + sum(entry["dropped"].values()) > 0
    children = pq.read_table(root / "data" / "iter=1" / "evolution.parquet").to_pylist()
    generated = pq.read_table(root / "data" / "iter=1" / "generated.parquet").to_pylist()
    evolved = pq.read_table(root / "data" / "iter=1" / "evolved.parquet").to_pylist()
    assert len(evolved) == len(generated)  # keep: final replaces, it does not add
    assert all(row["reject_reason"] is None or not row["kept"] for row in children)
    second = [row for row in children if row["provenance"]["round"] == 2 and row["kept"]]
    assert second, "no child survived round 2"
    out = _run(["mmloop", "lineage", second[0]["sample_id"]], root, env)
    assert out.count("[evolved, iteration 1") == 2 and "evolved: round 2 by" in out and "evolved: round 1 by" in out
    assert "[generated, iteration 1" in out and "[query, iteration 1" in out and "[badcase, iteration 0" in out


@pytest.mark.slow
def test_a_preference_iteration_trains_on_the_models_own_pairs(repo):
    import pyarrow.parquet as pq

    root, env = repo
    pairs = pq.read_table(root / "data" / "iter=2" / "pairs.parquet").to_pylist()
    dropped = pq.read_table(root / "data" / "iter=2" / "pairs_dropped.parquet").to_pylist()
    assert len(pairs) + len(dropped) >= 24 and pairs
    assert all(row["answer"] and row["rejected"] and row["noise_t"] == 600 for row in pairs)
    assert all(row["reject_reason"] for row in dropped)
    assert pq.read_table(root / "data" / "iter=1" / "pairs.parquet").num_rows == 0  # iteration 1 is sft
    stats = json.loads((root / "metrics" / "train" / "iter=2.json").read_text())
    assert stats["mode"] == "both" and stats["kept"] > 0 and stats["preference"]["pairs"] == len(pairs)
    out = _run(["mmloop", "lineage", pairs[0]["sample_id"]], root, env)
    assert "[preference, iteration 2" in out and f"noise t=600 seed {pairs[0]['noise_seed']}" in out


def _free_port() -> int:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _tree(root: Path) -> dict[str, int]:
    """{path: modification time} of the files under `root`, git's and DVC's own aside."""
    return {str(path.relative_to(root)): path.stat().st_mtime_ns for path in root.rglob("*")
            if path.is_file() and path.relative_to(root).parts[0] not in (".git", ".dvc")}


@pytest.mark.slow
def test_the_train_stage_runs_data_parallel_under_accelerate_launch(repo, tmp_path):
    """`accelerate launch stages/train.py 1 0 sft` with two processes (gloo on the CPU): the Trainer
    sees a world of 2, each process takes half the batches, and only the first writes outputs.
    Before the tests that change the fixture's repo, so it trains on the first repro's data."""
    import pyarrow.parquet as pq
    import torch
    from PIL import Image

    from mmloop.models import chat, vlm

    source, env = repo
    single = json.loads((source / "metrics" / "train" / "iter=1.json").read_text())
    # A copy, so the shared fixture is left as it is; DVC's cache and git are not read by the stage.
    root = tmp_path / "repo"
    skip = {source / ".git", source / ".dvc" / "cache"}
    shutil.copytree(source, root, ignore=lambda folder, names: [name for name in names if Path(folder) / name in skip])
    outputs = [root / "models" / "iter=1", root / "data" / "iter=1" / "replay_pool.parquet",
               root / "metrics" / "train" / "iter=1.json", root / "metrics" / "train" / "live" / "iter=1",
               root / "metrics" / "startup" / "train@1.json"]
    for path in outputs:  # what the stage writes is written by this run
        shutil.rmtree(path) if path.is_dir() else path.unlink(missing_ok=True)
    before = _tree(root)

    # `--cpu` would take accelerate's simple launcher, which starts one process (several only
    # through mpirun); `--multi_gpu` starts them through torchrun, and on the CPU the Trainer
    # (use_cpu) joins them with gloo. No GPU is used, whatever the machine has.
    launcher = Path(sys.executable).parent / "accelerate"
    args = [str(launcher), "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
            "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", str(_free_port()),
            "stages/train.py", "1", "0", "sft"]
    result = subprocess.run(args, cwd=root, env=dict(env, CUDA_VISIBLE_DEVICES=""), capture_output=True, text=True,
                            timeout=1200)
    assert result.returncode == 0, f"{' '.join(args)} failed:\n{result.stdout[-4000:]}\n{result.stderr[-4000:]}"

    stats = json.loads((root / "metrics" / "train" / "iter=1.json").read_text())
    assert stats["processes"] == 2 and single["processes"] == 1
    assert stats["records"] == single["records"] and stats["kept"] == single["kept"]
    # The same batches, dealt out between the two processes: half the optimizer steps.
    assert abs(stats["steps"] - single["steps"] / 2) <= 1, (stats["steps"], single["steps"])
    print(f"steps: {single['steps']} on 1 process, {stats['steps']} on 2")

    # Only the first process wrote, and nothing was left half-written.
    written = {name for name, modified in _tree(root).items() if before.get(name) != modified}
    assert written, "the run wrote nothing"
    expected = [str(path.relative_to(root)) for path in outputs]
    stray = {name for name in written if not any(name == out or name.startswith(out + "/") for out in expected)}
    assert stray == set()
    assert not [path for path in (root / "models").iterdir() if path.name.startswith(".iter=1")]
    assert not (root / "models" / ".checkpoints" / "iter=1").exists()
    assert len(pq.read_table(root / "data" / "iter=1" / "replay_pool.parquet")) > 0

    model, processor = vlm.load(root / "models" / "iter=1")
    record = pq.read_table(root / "data" / "iter=1" / "kept.parquet").slice(0, 1).to_pylist()[0]
    text = chat.render(processor, chat.messages(record["conversations"][:1]), add_generation_prompt=True)
    with Image.open(root / "data" / record["image"]) as image:
        inputs = processor(text=[text], images=[[image.convert("RGB")]], return_tensors="pt",
                           add_special_tokens=chat.adds_special_tokens(processor, text))
    with torch.no_grad():
        logits = model(**inputs).logits
    assert logits.shape[:2] == inputs["input_ids"].shape and torch.isfinite(logits).all()


@pytest.mark.slow
def test_appending_an_iteration_runs_only_its_stages(repo):
    root, env = repo
    params = yaml.safe_load((root / "params.yaml").read_text())
    params["loop"]["iterations"]["3"] = {"prev": "2", "train": "sft"}
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    out = _run(["dvc", "repro"], root, env)
    ran = {line.split("'")[1] for line in out.splitlines() if line.startswith("Running stage")}
    assert ran == {"sample@3", "generate@3", "evolve@3", "eliminate@3", "selfgen@3", "train@3", "evaluate@3",
                   "aggregate"}


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
    assert stale == {f"{stage}@{name}" for stage in ("sample", "generate", "evolve", "eliminate", "selfgen", "train")
                     for name in iterations}


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
    # The openai teacher evolved its own rows, each child judged against its parent.
    children = pq.read_table(root / "data" / "iter=1" / "evolution.parquet").to_pylist()
    assert children and all(row["provenance"]["prompt_id"].startswith("evolve_") for row in children)
    assert any(row["kept"] and row["provenance"]["judge_note"] for row in children)
    with open(root / "metrics" / "history.csv") as handle:
        assert [row["iteration"] for row in csv.DictReader(handle)] == ["0", "1", "2", "3"]
    leaked = subprocess.run(["grep", "-rlF", "--exclude-dir=.git", secret, str(root)], capture_output=True, text=True)
    assert leaked.stdout == ""

