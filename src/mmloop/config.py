"""params.yaml as typed config: one pydantic model per section, each default defined once, here.

A stage names the keys it reads (`PARAMS` in its module, the same list as its `params` in
dvc.yaml) and gets them through `stage.begin`. The whole file is checked (wrong types and unknown keys
fail with `section.key` and the value), but the stage gets a view that holds only what it
declared: reading anything else raises, so a stage cannot read a key DVC does not track.
Library functions take one section's model, never the params dict.

params.yaml lists every key with its value, so DVC sees every value a stage uses; the
defaults here equal those values (a test checks) and serve `mmloop eval` and the tests.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Any, Literal, get_args

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

BASE_ITERATION = "0"
PARAMS_FILE = "params.yaml"
# Set to a file path, every declared key a stage reads is appended there (tests/test_graph.py).
RECORD_READS_ENV = "MMLOOP_RECORD_READS"

# The choices of a few keys, named once; other modules read the tuples.
AnswerFormat = Literal["letter", "option"]
Strategy = Literal["abs", "uniform"]
EvalMode = Literal["loglik", "generate"]
RoundSource = Literal["same_image", "generic"]
Device = Literal["auto", "cpu", "cuda", "mps"]
Dtype = Literal["auto", "float32", "bfloat16", "float16"]
Unusable = Literal["error", "skip"]  # what curate does with a record it can ask nothing about
ANSWER_FORMATS, STRATEGIES, EVAL_MODES, ROUND_SOURCES, DEVICES, DTYPES, UNUSABLE = (
    get_args(choice) for choice in (AnswerFormat, Strategy, EvalMode, RoundSource, Device, Dtype, Unusable))


class Section(BaseModel):
    # strict: "5" is not 5 and "yes" is not true; extra: an unknown key is a typo, not a no-op.
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


# ---------------------------------------------------------------- the embedded world

class Splits(Section):
    seed: int = Field(6400, ge=0)
    pool: int = Field(6000, ge=0)
    bench: int = Field(2400, ge=0)  # 800 items per family


class WorldConfig(Section):
    image_size: int = Field(64, ge=8)
    grid: int = Field(4, ge=1)
    max_objects: int = Field(4, ge=1)
    min_objects: int = Field(1, ge=1)
    shapes: list[str] = ["circle", "square", "triangle"]
    colours: list[str] = ["red", "green", "blue", "yellow", "purple", "orange"]
    sizes: list[str] = ["small", "large"]
    splits: Splits = Splits()

    @model_validator(mode="after")
    def _drawable(self) -> "WorldConfig":
        from mmloop.world.scenes import COLOUR_RGB, SHAPES_DRAWN, SIZE_FRACTION

        if self.image_size % self.grid:
            raise ValueError(f"image_size ({self.image_size}) must be a multiple of grid ({self.grid})")
        if not self.min_objects <= self.max_objects <= self.grid * self.grid:
            raise ValueError(f"min_objects/max_objects must satisfy 1 <= min <= max <= grid^2, "
                             f"got {self.min_objects}/{self.max_objects}")
        for name, allowed in (("shapes", SHAPES_DRAWN), ("colours", tuple(COLOUR_RGB)),
                              ("sizes", tuple(SIZE_FRACTION))):
            values = getattr(self, name)
            if not values or any(value not in allowed for value in values):
                raise ValueError(f"{name} must be a non-empty subset of {list(allowed)}, got {values}")
        return self

    @property
    def cell(self) -> int:
        return self.image_size // self.grid


# ---------------------------------------------------------------- seed and benchmark

class CocoSource(Section):
    kind: Literal["coco"]
    instances: str
    captions: str | None = None
    image_folder: str | None = None

    @property
    def files(self) -> list[str]:
        return [path for path in (self.instances, self.captions) if path]


class LlavaSource(Section):
    """LLaVA JSON (a list of {id, image, conversations: [{from, value}]}) or ShareGPT JSON (a list of
    {id, images: [path], messages: [{role, content}]} or the from/value form); records of one
    image are merged into one conversation."""

    kind: Literal["llava", "sharegpt"]
    path: str
    image_folder: str

    @property
    def files(self) -> list[str]:
        return [self.path]


Source = Annotated[CocoSource | LlavaSource, Field(discriminator="kind")]


class CurateConfig(Section):
    sources: list[Source] = Field(
        default_factory=lambda: [CocoSource(kind="coco", instances="data/world/instances_seed.json",
                                            captions="data/world/captions_seed.json")],
        min_length=1)
    # A record with nothing usable (an image without annotations or captions): "skip" counts it in
    # metrics/curate.json, "error" stops the stage naming it.
    unusable: Unusable = "skip"
    max_text_chars: int = Field(4000, ge=1)  # longest caption or conversation turn accepted
    turns_per_image: int = Field(6, ge=1)
    caption_turns: int = Field(1, ge=0)  # caption turns per image, each a different caption (COCO has five)
    mcq_ratio: float = Field(0.75, ge=0.0, le=1.0)
    family_weights: dict[str, float] = {"colour": 0.02, "shape": 0.24, "size": 0.24, "existence": 0.24,
                                        "count": 0.02, "spatial": 0.24}

    @field_validator("family_weights")
    @classmethod
    def _known_families(cls, weights: dict[str, float]) -> dict[str, float]:
        from mmloop.questions import FAMILIES

        unknown = sorted(set(weights) - set(FAMILIES))
        if unknown:
            raise ValueError(f"unknown family(ies) {unknown} (known: {', '.join(FAMILIES)})")
        negative = {family: weight for family, weight in weights.items() if not weight >= 0}
        if negative:
            raise ValueError(f"weights must be non-negative, got {negative}")
        if not sum(weights.values()) > 0:
            raise ValueError("no family has a positive weight")
        return {family: weights[family] for family in FAMILIES if family in weights}


class BenchConfig(Section):
    name: str = "shapes"
    items_per_family: int = Field(800, ge=1)  # the embedded world's benchmark (source null)
    # Any file `mmloop eval` reads (MMBench TSV, POPE, MME, SEED-Bench, A-OKVQA, JSONL): the
    # benchmark every iteration is measured on. null: the embedded world's.
    source: str | None = None
    format: str | None = None  # guessed from the file when null
    image_dir: str | None = None  # where the file's image paths are relative to (default: its folder)

    @property
    def files(self) -> list[str]:
        return [path for path in (self.source, self.image_dir) if path]


class PoolConfig(Section):
    """The unlabeled images the sampler picks from: a COCO instances file (its annotations feed the
    annotations teacher) or a plain image folder (valid for the openai teacher)."""

    kind: Literal["coco", "folder"] = "coco"
    instances: str | None = "data/world/instances_pool.json"  # kind coco
    image_folder: str | None = None  # coco: where file_names are relative to (default: data/); folder: the folder

    @model_validator(mode="after")
    def _complete(self) -> "PoolConfig":
        if self.kind == "coco" and not self.instances:
            raise ValueError("pool kind 'coco' needs pool.instances")
        if self.kind == "folder" and not self.image_folder:
            raise ValueError("pool kind 'folder' needs pool.image_folder")
        return self

    @property
    def files(self) -> list[str]:
        return [path for path in ((self.instances if self.kind == "coco" else None), self.image_folder) if path]


class StoreConfig(Section):
    """How images enter data/store: once each, content-addressed, decode-checked and normalised."""

    max_pixels: int = Field(50_000_000, ge=1)  # larger images are refused (decompression bombs)
    link: bool = True  # hard-link an unchanged file into the store when the filesystem allows


# ---------------------------------------------------------------- models

class PretrainedClip(Section):
    model: str
    pretrained: str = ""


class TinyClip(Section):
    width: int = Field(128, ge=8)
    layers: int = Field(3, ge=1)
    embed_dim: int = Field(128, ge=8)
    context_length: int = Field(32, ge=4)


class ClipConfig(Section):
    pretrained: PretrainedClip | None = None  # open_clip's weights instead of training the tiny CLIP
    epochs: int = Field(1, ge=1)
    batch_size: int = Field(128, ge=1)
    lr: float = Field(0.001, gt=0)
    threads: int = Field(2, ge=1)
    model: TinyClip = TinyClip()
    eval_candidates: int = Field(10, ge=2)


class Optimisation(Section):
    """What the base stage and the LoRA rounds share."""

    epochs: float = Field(gt=0)
    batch_size: int = Field(ge=1)
    lr: float = Field(gt=0)
    warmup_ratio: float = Field(0.05, ge=0.0, lt=1.0)
    weight_decay: float = Field(0.0, ge=0.0)
    max_grad_norm: float = Field(1.0, gt=0)
    threads: int = Field(2, ge=1)
    logging_steps: int = Field(10, ge=1)  # DVCLive's step-level loss and learning rate
    save_steps: int = Field(200, ge=1)  # checkpoint interval: a killed run resumes from the newest
    gradient_checkpointing: bool = False  # less memory for a slower step (large models on a GPU)


class BaseConfig(Optimisation):
    model: str | None = None  # a hub id or local path: used as iteration 0 instead of the tiny LLaVA
    epochs: float = Field(1.5, gt=0)
    batch_size: int = Field(8, ge=1)
    lr: float = Field(0.001, gt=0)
    tiny: dict[str, int | float] = {}  # overrides of the tiny LLaVA's architecture (models.vlm.DEFAULT_CONFIG)


class TrainConfig(Optimisation):
    epochs: float = Field(5, gt=0)
    batch_size: int = Field(8, ge=1)
    lr: float = Field(0.002, gt=0)
    lora_r: int = Field(16, ge=1)
    lora_alpha: int = Field(32, ge=1)
    lora_dropout: float = Field(0.0, ge=0.0, lt=1.0)
    replay_ratio: float = Field(0.2, ge=0.0)  # replayed samples per kept sample of this iteration
    train_vision: bool = False  # also train the vision tower fully (frozen by default)


class PreferenceConfig(Optimisation):
    """A preference round (SENA): DPO on self-generated pairs plus the image-alignment term, LoRA on
    the previous model (its own reference). Dropout is off during DPO (TRL's `disable_dropout`: the
    policy and reference passes must see the same network), so there is no LoRA dropout setting."""

    epochs: float = Field(1, gt=0)
    batch_size: int = Field(8, ge=1)
    lr: float = Field(5e-5, gt=0)
    beta: float = Field(0.1, gt=0)  # SENA's DPO beta
    alignment_weight: float = Field(1.0, ge=0)  # 0: plain DPO
    description_prompt: str = Field("Describe the image in detail.", min_length=1)  # the alignment term's user turn
    lora_r: int = Field(16, ge=1)
    lora_alpha: int = Field(32, ge=1)
    train_vision: bool = False  # also train the vision tower fully (frozen by default)


class SenaConfig(Section):
    """SENA's self-generated preference data: the previous model asks, checks, answers, describes
    and refines on pool images; its answer on a DDPM-noised image is the rejected one."""

    images: int = Field(600, ge=1)  # pool images per iteration (drawn with the iteration's seed)
    max_question_tries: int = Field(3, ge=1)
    temperature: float = Field(0.9, gt=0)  # sampling of the self-asked questions
    max_new_tokens: int = Field(48, ge=1)
    noise_t: int = Field(600, ge=0, le=1000)  # forward-diffusion step of the rejected answer's image (of 1000)
    self_check: bool = True  # ablation: false uses the first question unchecked
    self_enhance: bool = True  # ablation: false makes the first answer the chosen one
    batch_size: int = Field(16, ge=1)
    threads: int = Field(2, ge=1)


class ComputeConfig(Section):
    """Where and in what precision the VLM stages run."""

    device: Device = "auto"  # auto: cuda when there is one, else cpu
    dtype: Dtype = "auto"  # auto: bfloat16 on cuda, float32 elsewhere


# ---------------------------------------------------------------- the loop's phases

class EvaluateConfig(Section):
    batch_size: int = Field(128, ge=1)
    mode: EvalMode = "loglik"
    circular: bool = False
    rounds: int = Field(0, ge=0)
    round_source: RoundSource = "same_image"
    judge: str | None = None  # "package.module:function", extraction's last resort in generate mode
    max_new_tokens: int = Field(16, ge=1)
    threads: int = Field(2, ge=1)


class SampleConfig(Section):
    strategy: Strategy = "abs"
    budget: int = Field(4000, ge=0)
    smoothing: float = Field(1.0, gt=0)  # > 0: with 0 a category's weight can reach 0
    in_context: int = Field(2, ge=0)
    top_k: int = Field(16, ge=1)
    random_ratio: float = Field(0.2, ge=0.0, le=1.0)


class BatchApi(Section):
    enabled: bool = False
    poll_interval: float = Field(30.0, gt=0)
    wait: float = Field(0.0, ge=0)  # seconds to keep polling a submitted batch before giving up for now


class OpenAIConfig(Section):
    """An OpenAI-compatible chat endpoint (OpenAI, vLLM, SGLang, llama.cpp server, ollama)."""

    model: str
    base_url: str | None = None
    api_key_env: str | None = "OPENAI_API_KEY"  # the key's environment variable; null for local servers
    prompt: str = "prompts/generate.j2"
    journal: str | None = None  # default: .mmloop/journal.sqlite
    image_mode: Literal["image", "caption"] = "image"
    image_max_side: int = Field(512, ge=16)
    items_per_request: int = Field(1, ge=1)
    concurrency: int = Field(8, ge=1)  # starting limit of requests in flight (adapted between the two below)
    min_concurrency: int = Field(1, ge=1)
    max_concurrency: int = Field(64, ge=1)
    rpm: int | None = Field(None, ge=1)
    tpm: int | None = Field(None, ge=1)
    max_attempts: int = Field(6, ge=1)
    backoff_base: float = Field(0.5, ge=0)
    backoff_max: float = Field(30.0, ge=0)
    timeout: float = Field(120.0, gt=0)
    # A teacher whose requests keep failing stops the stage after this many failures in a row.
    max_consecutive_failures: int = Field(20, ge=1)
    prices: dict[str, dict[str, float]] | None = None  # model -> {input, output} USD per 1M tokens
    batch: BatchApi = BatchApi()
    # Sampling parameters passed through to the endpoint when set.
    temperature: float | None = None
    top_p: float | None = None
    max_tokens: int | None = None
    max_completion_tokens: int | None = None
    seed: int | None = None
    stop: list[str] | None = None
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    response_format: dict[str, Any] | None = None
    n: int | None = None
    extra_body: dict[str, Any] = {}

    @model_validator(mode="before")
    @classmethod
    def _no_secret(cls, values: Any) -> Any:
        if isinstance(values, dict) and "api_key" in values:
            raise ValueError("api_key is not allowed: name an environment variable in api_key_env instead "
                             "(secrets never go into params)")
        return values

    @property
    def generation(self) -> dict[str, Any]:
        """The sampling parameters sent with every request."""
        keys = ("temperature", "top_p", "max_tokens", "max_completion_tokens", "seed", "stop",
                "presence_penalty", "frequency_penalty", "response_format", "n")
        values = {key: getattr(self, key) for key in keys if getattr(self, key) is not None}
        return {**values, **self.extra_body}

    def api_key(self) -> str:
        if not self.api_key_env:
            return "not-needed"  # local servers (vLLM, llama.cpp, ollama) accept any key
        key = os.environ.get(self.api_key_env)
        if not key:
            raise RuntimeError(f"environment variable {self.api_key_env} (params generate.openai.api_key_env) "
                               "is not set; export the API key there")
        return key


class GenerateConfig(Section):
    backend: Literal["annotations", "openai"] = "annotations"
    format_mix: dict[str, float] = {"mcq": 0.75, "short": 0.25}
    openai: OpenAIConfig | None = None

    @model_validator(mode="after")
    def _backend_configured(self) -> "GenerateConfig":
        if self.backend == "openai" and self.openai is None:
            raise ValueError("backend 'openai' needs generate.openai (at least its model)")
        return self


class EvolvePrompts(Section):
    """The openai teacher's evolution templates: one per operator, and the judge."""

    perception: str = "prompts/evolve_perception.j2"
    reasoning: str = "prompts/evolve_reasoning.j2"
    interaction: str = "prompts/evolve_interaction.j2"
    judge: str = "prompts/evolve_judge.j2"

    @property
    def files(self) -> list[str]:
        return [self.perception, self.reasoning, self.interaction, self.judge]


class EvolveConfig(Section):
    """MMEvol's instruction evolution between generation and elimination (the teacher of
    generate.backend evolves its own rows; the openai teacher uses generate.openai's endpoint)."""

    rounds: int = Field(0, ge=0)  # 0: no evolution
    # Operator draw probabilities (perception-heavy, as MMEvol's split).
    operator_weights: dict[str, float] = {"perception": 0.5, "reasoning": 0.3, "interaction": 0.2}
    # final: each generated row is replaced by its newest kept descendant (as many rows as generated,
    # so training sees the same number of samples); all: the generated rows plus every kept child.
    keep: Literal["final", "all"] = "final"
    # The blind check: the current model answers each surviving child with its image replaced by a
    # blank one; a child it answers right with probability >= chance + blind_margin * (1 - chance)
    # does not need the image and is dropped (visually_independent). null: no blind check.
    blind_margin: float | None = Field(0.5, gt=0.0, lt=1.0)
    prompts: EvolvePrompts = EvolvePrompts()

    @field_validator("operator_weights")
    @classmethod
    def _weights(cls, weights: dict[str, float]) -> dict[str, float]:
        from mmloop.loop.evolution import check_weights

        check_weights(weights)
        return weights


class EliminateConfig(Section):
    clip_min: float | None = None  # null: calibrated on the batch (clip_mismatch_quantile)
    clip_mismatch_quantile: float = Field(0.1, ge=0.0, le=1.0)
    near_duplicate: float = Field(0.95, gt=0.0, le=1.0)


class Iteration(Section):
    prev: str
    # How the iteration trains: sft (LoRA on the teacher's kept data, with replay), preference (DPO
    # on the model's own pairs, SENA) or both (SFT, then DPO on the result). dvc.yaml passes it on
    # the selfgen and train command lines, so every iteration names it in params.yaml.
    train: Literal["sft", "preference", "both"]


class LoopConfig(Section):
    seed: int = 0  # varies the iterations' draws only: world and base model stay the same
    iterations: dict[str, Iteration] = {"1": Iteration(prev="0", train="sft"), "2": Iteration(prev="1", train="sft")}

    @model_validator(mode="after")
    def _chain(self) -> "LoopConfig":
        for name in self.iterations:
            seen, key = [], name
            while key != BASE_ITERATION:
                if key in seen:
                    raise ValueError(f"iterations has a cycle through {key!r}")
                if key not in self.iterations:
                    raise ValueError(f"iterations.{seen[-1]}.prev names {key!r}, which is not an iteration")
                seen.append(key)
                key = self.iterations[key].prev
        return self


class Params(Section):
    seed: int = 0
    # How a multiple-choice reply names its choice, in seed, generated data and evaluation alike.
    answer_format: AnswerFormat = "option"
    world: WorldConfig = WorldConfig()
    store: StoreConfig = StoreConfig()
    curate: CurateConfig = CurateConfig()
    pool: PoolConfig = PoolConfig()
    bench: BenchConfig = BenchConfig()
    clip: ClipConfig = ClipConfig()
    compute: ComputeConfig = ComputeConfig()
    base: BaseConfig = BaseConfig()
    evaluate: EvaluateConfig = EvaluateConfig()
    sample: SampleConfig = SampleConfig()
    generate: GenerateConfig = GenerateConfig()
    evolve: EvolveConfig = EvolveConfig()
    eliminate: EliminateConfig = EliminateConfig()
    train: TrainConfig = TrainConfig()
    sena: SenaConfig = SenaConfig()
    preference: PreferenceConfig = PreferenceConfig()
    loop: LoopConfig = LoopConfig()


# ---------------------------------------------------------------- loading

def _describe(error: dict[str, Any]) -> str:
    where = ".".join(str(part) for part in error["loc"] if not str(part).startswith(("function-", "tagged-union")))
    return f"{where or '(top level)'}: {error['msg']} (got {error['input']!r})"


def parse(raw: Any, source: str | os.PathLike = PARAMS_FILE) -> Params:
    """The typed params, or a ValueError naming each wrong `section.key` and its value."""
    if not isinstance(raw, dict):
        raise ValueError(f"{source}: expected a mapping at the top level, got {type(raw).__name__}")
    try:
        return Params.model_validate(raw)
    except ValidationError as err:
        problems = "\n  ".join(_describe(error) for error in err.errors())
        raise ValueError(f"{source}: {err.error_count()} invalid parameter(s):\n  {problems}") from None


def read(path: str | os.PathLike = PARAMS_FILE) -> Params:
    import yaml

    with Path(path).open(encoding="utf-8") as handle:
        return parse(yaml.safe_load(handle) or {}, path)


class StageParams:
    """The declared keys of the params, and nothing else.

    `view.sample` is the SampleConfig when "sample" is declared; with only leaves declared
    ("world.colours"), `view.world` returns a view of those leaves. Every read is recorded
    when RECORD_READS_ENV names a file."""

    def __init__(self, params: BaseModel, declared: tuple[str, ...], stage: str, prefix: str = ""):
        self._params, self._declared, self._stage, self._prefix = params, declared, stage, prefix

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_"):
            raise AttributeError(name)
        key = f"{self._prefix}{name}"
        value = getattr(self._params, name)
        if key in self._declared:
            _record(self._stage, key)
            return value
        if any(declared.startswith(key + ".") for declared in self._declared):
            return StageParams(value, self._declared, self._stage, prefix=key + ".")
        raise KeyError(f"stage {self._stage!r} reads params key {key!r} but does not declare it "
                       f"(declared: {', '.join(self._declared)}); add it to the stage's PARAMS and dvc.yaml")


def _record(stage: str, key: str) -> None:
    target = os.environ.get(RECORD_READS_ENV)
    if target:
        with open(target, "a", encoding="utf-8") as handle:
            handle.write(f"{stage}\t{key}\n")


# ---------------------------------------------------------------- the chain of iterations and seeds

def ancestry(loop: LoopConfig, name: str) -> list[str]:
    """Iteration names from `name` back to the base model ("0"), newest first."""
    chain, key = [], str(name)
    while key != BASE_ITERATION:
        if key not in loop.iterations:
            raise KeyError(f"params.yaml: loop.iterations has no iteration {key!r} (have {sorted(loop.iterations)})")
        chain.append(key)
        key = loop.iterations[key].prev
    return chain + [BASE_ITERATION]


def stage_seed(seed: int, stage: str, iteration: str | int = BASE_ITERATION, loop_seed: int = 0) -> int:
    """A per-stage, per-iteration RNG seed derived from the one global seed.

    Iteration stages also mix in `loop.seed`, so `dvc exp run -S loop.seed=1` repeats the
    loop with other draws (sampling, generation, training) on the same world and base model.
    """
    from mmloop.io import stable_hash

    parts: list[Any] = [int(seed), stage, str(iteration)]
    if str(iteration) != BASE_ITERATION:
        parts.append(int(loop_seed))
    return int(stable_hash(*parts, length=8), 16)
