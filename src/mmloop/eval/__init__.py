"""Benchmark evaluation, laid out the way benchmarks are defined.

- `benchmarks/`: one module per benchmark format (reader, prompt convention, own metric),
  registered in `benchmarks.BENCHMARKS`; `benchmarks.records` holds the shared reading helpers.
- `items`: benchmark items checked and completed, CircularEval copies, images decoded.
- `prompts`: `PromptConvention`, user turns, replies, multi-round histories.
- `scoring`: the engine: log-likelihood (next token, shared-prefix KV cache, per option) and generation.
- `answers`: reading a generated answer (letter, option text, yes/no, judge).
- `metrics`: exact match and CircularEval, which every benchmark gets.
- `evaluation`: the driver: `evaluate`, `run_benchmark`, `summary`, `format_table`, `badcases`, `publish`.
- `manifest`: the loop's benchmark, named by the bench stage in data/bench/bench.json and loaded
  by the evaluate and sample stages (`loop_benchmark`).
"""
