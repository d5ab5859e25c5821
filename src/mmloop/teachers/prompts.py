"""Prompt templates: Jinja2 files with a small YAML front matter, versioned in `prompts/`.

A template file looks like

    ---
    id: generate
    version: 1
    task: generate
    output_schema: {mcq: {...JSON schema of one item...}, short: {...}}
    definitions: {colour: "...", ...}     # any extra keys are passed to the template as `meta`
    ---
    You are ... {{ category }} ...

Two hashes identify what the teacher saw: `file_sha256` (the template file,
i.e. the prompt *version*) and the sha256 of each rendered prompt. Both go into
the provenance of every sample made from it, so any sample can be traced to
the exact text that produced it, and prompt versions can be compared.
"""

from __future__ import annotations

import functools
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mmloop.io import sha256_bytes

PROMPTS_DIR = Path("prompts")
# A regex and yaml.safe_load, not python-frontmatter: the file's exact bytes are hashed as the
# prompt version, and the body must stay byte for byte as written (the library strips it).
_FRONT_MATTER = re.compile(r"\A---[ \t]*\n(.*?)\n---[ \t]*\n", re.S)
REQUIRED_KEYS = ("id", "task")


@dataclass(frozen=True)
class Rendered:
    text: str
    sha256: str


@dataclass(frozen=True)
class PromptTemplate:
    id: str
    version: int
    task: str
    body: str
    path: Path
    file_sha256: str
    output_schema: dict[str, Any] = field(default_factory=dict)
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def name(self) -> str:
        """The prompt id with its version, e.g. 'generate@v2' (what provenance.prompt_id holds)."""
        return f"{self.id}@v{self.version}"

    def render(self, **context: Any) -> Rendered:
        text = _compile(self.body).render(meta=self.meta, **context)
        return Rendered(text, sha256_bytes(text.encode("utf-8")))


@functools.lru_cache(maxsize=64)
def _compile(body: str):
    import jinja2

    # StrictUndefined: a misspelt variable is an error, not a silently empty prompt.
    env = jinja2.Environment(undefined=jinja2.StrictUndefined, keep_trailing_newline=True,
                             trim_blocks=True, lstrip_blocks=True, autoescape=False)
    env.filters["tojson_compact"] = _tojson_compact
    return env.from_string(body)


def _tojson_compact(value: Any) -> str:
    import json

    return json.dumps(value, sort_keys=True, separators=(", ", ": "))


def parse_template(text: str, path: str | os.PathLike = "<string>") -> PromptTemplate:
    import yaml

    path = Path(path)
    match = _FRONT_MATTER.match(text)
    if not match:
        raise ValueError(f"{path}: a prompt template must start with a '---' YAML front matter block")
    try:
        meta = yaml.safe_load(match.group(1)) or {}
    except yaml.YAMLError as err:
        raise ValueError(f"{path}: front matter is not valid YAML: {err}") from None
    if not isinstance(meta, dict):
        raise ValueError(f"{path}: front matter must be a mapping")
    for key in REQUIRED_KEYS:
        if not meta.get(key):
            raise ValueError(f"{path}: front matter field {key!r} is missing")
    schema = meta.pop("output_schema", None) or {}
    if not isinstance(schema, dict):
        raise ValueError(f"{path}: front matter field 'output_schema' must be a mapping")
    body = text[match.end():]
    template = PromptTemplate(
        id=str(meta.pop("id")), version=int(meta.pop("version", 1)), task=str(meta.pop("task")), body=body,
        path=path, file_sha256=sha256_bytes(text.encode("utf-8")), output_schema=schema, meta=meta,
    )
    try:
        _compile(body)
    except Exception as err:  # jinja2.TemplateSyntaxError; keep jinja2 a lazy import
        raise ValueError(f"{path}: template does not compile: {err}") from None
    return template


def load_template(path: str | os.PathLike) -> PromptTemplate:
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: prompt template not found") from None
    return parse_template(text, path)


def versioned_path(path: str | os.PathLike, version: int) -> Path:
    """prompts/generate.j2 -> prompts/generate.v3.j2 (any existing .vN is replaced)."""
    path = Path(path)
    stem = re.sub(r"\.v\d+$", "", path.stem)
    return path.with_name(f"{stem}.v{version}{path.suffix}")


def next_version(path: str | os.PathLike) -> int:
    """One more than the highest version among the template and its siblings .vN files."""
    path = Path(path)
    stem = re.sub(r"\.v\d+$", "", path.stem)
    versions = [load_template(path).version]
    for sibling in path.parent.glob(f"{stem}.v*{path.suffix}"):
        match = re.fullmatch(rf"{re.escape(stem)}\.v(\d+)", sibling.stem)
        if match:
            versions.append(int(match.group(1)))
    return max(versions) + 1


def with_front_matter(meta: dict[str, Any], body: str) -> str:
    """A template file's text from its front matter and body."""
    import yaml

    return "---\n" + yaml.safe_dump(meta, sort_keys=False, allow_unicode=True, width=100) + "---\n" + body
