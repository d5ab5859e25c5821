"""Throughput of mmloop.teachers.llm against the local OpenAI-compatible server with a fixed per-request latency.

With C requests in flight and L seconds per request, the ideal rate is C / L.
This prints achieved requests/s divided by that ideal (goal: at least 0.9),
including journal writes (SQLite, one durable commit per reply). The server
runs in its own process, so its event loop does not share our GIL.
The default latency, 0.5 s, is on the fast side for an LLM; below about 0.2 s
on this 2-core machine the client's own CPU time per reply (about 2-5 ms in
the openai client) starts to show: 0.2 s gives about 0.9.

    python bench/bench_openai.py [--requests 336] [--concurrency 16] [--latency 0.5]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

GOAL = 0.9


def start_server(latency: float) -> tuple[subprocess.Popen, str]:
    process = subprocess.Popen([sys.executable, str(REPO / "tests/openai_server.py"), "--latency", str(latency)],
                               stdout=subprocess.PIPE, text=True)
    line = process.stdout.readline()
    if not line.startswith("listening on "):
        process.kill()
        raise RuntimeError(f"test server did not start: {line!r}")
    return process, line.split()[-1]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=336)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--latency", type=float, default=0.5)
    args = parser.parse_args()

    from mmloop.config import OpenAIConfig
    from mmloop.teachers import llm
    from mmloop.teachers.journal import Journal, request_key

    process, url = start_server(args.latency)
    try:
        config = OpenAIConfig(model="bench-model", base_url=url, api_key_env=None, temperature=0.0, max_tokens=256,
                              concurrency=args.concurrency, max_concurrency=args.concurrency, timeout=30.0)
        requests = []
        for i in range(args.requests):
            messages = [{"role": "user", "content": f"Question type: colour\nData type: mcq\nbench item {i}"}]
            requests.append(llm.ChatRequest(request_key(config.model, messages, config.generation), messages))
        with tempfile.TemporaryDirectory() as tmp, Journal(Path(tmp) / "bench.sqlite") as journal:
            # Warm up the connection pool and imports outside the timed region.
            llm.Runner(config, journal).run(requests[:args.concurrency])
            timed = requests[args.concurrency:]
            runner = llm.Runner(config, journal)
            start = time.perf_counter()
            results = runner.run(timed)
            elapsed = time.perf_counter() - start
    finally:
        process.terminate()
        process.wait()

    failed = sum(not r.ok for r in results)
    achieved = len(timed) / elapsed
    ideal = args.concurrency / args.latency
    ratio = achieved / ideal
    print(f"requests={len(timed)} concurrency={args.concurrency} latency={args.latency}s failed={failed}")
    print(f"achieved={achieved:.1f} req/s  ideal=concurrency/latency={ideal:.1f} req/s")
    print(f"ratio={ratio:.3f} (goal >= {GOAL})")
    return 0 if ratio >= GOAL and failed == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
