"""Curation: the seed set, built the way "COCO is ALL you need" builds its data.

Each image's annotation sources (COCO instances, COCO captions) are merged into ONE
multi-round conversation (format "conversation", category "mixed") whose answers are
either MMBench letters or full sentences:

- `turns_per_image` turns per image. With captions, one of them (at a seeded position)
  is the caption turn (`questions.CAPTION_QUESTION` -> one of the image's captions, as
  a sentence); the others are question turns.
- Each question turn's family is drawn from `family_weights` (`FamilyMix`). A family
  that can't be asked on the image (`make_question` gives None) or has no further
  distinct question is dropped for that image and the draw repeats over the families
  that remain; the draw is weighted by each family's running deficit, so the dataset's
  turn mix follows the weights: with the default 2% count and 2% spatial the seed
  starves those skills, which is what gives the loop weak spots to find.
- A question turn is multiple choice (MMBench prompt, letter answer) with probability
  `mcq_ratio`, otherwise the question alone answered by the program's full sentence.
- Every turn is recorded in `provenance.program`, a JSON list with one entry per turn:
  {turn, format, program, options, answer} (program null for the caption turn), so each
  answer can be re-executed with `questions.answer_program`.

LLaVA JSON (`kind: llava`) is read as is: one seed sample per record, `<image>`
placeholders stripped, roles human -> user and gpt -> assistant.

Each image has its own RNG (`stable_hash(seed, image sha256)`) and images are visited in
file order, so the same params and inputs give the same samples and ids.
"""

from __future__ import annotations

import os
import random
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from mmloop.config import CocoSource, CurateConfig, LlavaSource
from mmloop.io import read_json, sha256_file, stable_hash
from mmloop.schema import MIXED_CATEGORY, make_sample_id, sample

TURN_FORMATS = ("mcq", "short", "caption")
LLAVA_ROLES = {"human": "user", "gpt": "assistant", "system": "system"}
IMAGE_PLACEHOLDER = re.compile(r"[ \t]*<image>[ \t]*\n?")
# How often one family is retried on an image for a question not yet asked there.
QUESTION_ATTEMPTS = 8


# ---------------------------------------------------------------- images

class _ImageResolver:
    """Image references relative to the data root (or absolute outside it), hashed once each."""

    def __init__(self, data_root: str | os.PathLike):
        self.data_root = Path(data_root)
        self._root = self.data_root.resolve()
        self._hashes: dict[Path, str] = {}

    def resolve(self, folder: str | os.PathLike, name: str, where: str,
                sha256: str | None = None) -> tuple[str, str]:
        """(stored image path, sha256) of `folder / name`; the file must exist unless its hash is given."""
        path = (Path(folder) / name).resolve()
        try:
            stored = path.relative_to(self._root).as_posix()
        except ValueError:
            stored = str(path)
        if sha256:
            return stored, str(sha256)
        if not path.is_file():
            raise FileNotFoundError(f"{where}: field 'image' {name!r}: file {path} not found")
        if path not in self._hashes:
            self._hashes[path] = sha256_file(path)
        return stored, self._hashes[path]


# ---------------------------------------------------------------- COCO sources

def sentence(text: str) -> str:
    """A caption as a full sentence: single spaces, capital first letter, final full stop."""
    text = " ".join(str(text).split())
    if not text:
        return text
    text = text[0].upper() + text[1:]
    return text if text[-1] in ".!?" else text + "."


class FamilyMix:
    """Draws question families so that the running mix over all images follows the weights.

    Each draw weighs a family by its deficit, `weight * (turns + 1) - asked`, over the
    families still askable on the current image. A family that an image can't ask (a lone
    object has one colour question) thus catches up on later images instead of handing its
    share to the others, and a 2% family stays at 2%.
    """

    def __init__(self, weights: Mapping[str, float]):
        total = sum(weight for weight in weights.values() if weight > 0)
        self.weights = {name: weight / total for name, weight in weights.items() if weight > 0}
        self.asked = dict.fromkeys(self.weights, 0)
        self.turns = 0

    def draw(self, available: Sequence[str], rng: random.Random) -> str:
        names = sorted(available)
        deficits = [max(self.weights[name] * (self.turns + 1) - self.asked[name], 0.0) for name in names]
        if not any(deficits):
            deficits = [self.weights[name] for name in names]
        return rng.choices(names, weights=deficits)[0]

    def record(self, family: str) -> None:
        self.asked[family] += 1
        self.turns += 1


def conversation_turns(objects: Sequence[Any], captions: Sequence[str], config: CurateConfig,
                       rng: random.Random, mix: FamilyMix, *, answer_format: str, colours: Sequence[str],
                       shapes: Sequence[str]) -> tuple[list[dict[str, str]], list[dict[str, Any]]]:
    """(conversation, per-turn records) for one image: up to `turns_per_image` user/assistant pairs.

    Fewer pairs come back only when the image has fewer distinct questions than asked for.
    """
    from mmloop import questions

    wanted = config.turns_per_image - (1 if captions else 0)
    available = set(mix.weights)
    asked: set[str] = set()
    pairs: list[tuple[list[dict[str, str]], dict[str, Any]]] = []
    while len(pairs) < wanted and available:
        family = mix.draw(available, rng)
        made = None
        for _ in range(QUESTION_ATTEMPTS):
            candidate = questions.make_question(family, objects, rng, colours=colours, shapes=shapes)
            if candidate is None:
                break
            if candidate.question not in asked:
                made = candidate
                break
        if made is None:
            # This family has nothing (more) to ask here: draw again from the families that do.
            available.discard(family)
            continue
        asked.add(made.question)
        mix.record(family)
        fmt = "mcq" if rng.random() < config.mcq_ratio else "short"
        record = {"format": fmt, "program": made.program,
                  "options": list(made.options) if fmt == "mcq" else [], "answer": made.answer}
        pairs.append((questions.turns(made, fmt, answer_format), record))
    if captions:
        caption = sentence(rng.choice(list(captions)))
        pair = [{"role": "user", "content": questions.CAPTION_QUESTION},
                {"role": "assistant", "content": caption}]
        pairs.insert(rng.randrange(len(pairs) + 1),
                     (pair, {"format": "caption", "program": None, "options": [], "answer": caption}))
    conversation: list[dict[str, str]] = []
    records: list[dict[str, Any]] = []
    for index, (pair, record) in enumerate(pairs):
        conversation += pair
        records.append({"turn": index, **record})
    return conversation, records


def _captions_by_image(captions_coco: Mapping[str, Any], instances_images: Sequence[Mapping[str, Any]],
                       source: str) -> dict[Any, list[str]]:
    """{instances image id: [caption, ...]}. Images are matched by sha256 or file_name when the
    captions file lists its images, else by id."""
    rows = captions_coco.get("annotations")
    if not isinstance(rows, list):
        raise ValueError(f"{source}: COCO captions has no 'annotations' list")
    ids = {image["id"] for image in instances_images}
    translate: dict[Any, Any] = {}
    if isinstance(captions_coco.get("images"), list):
        by_identity = {}
        for image in instances_images:
            for key in ("sha256", "file_name"):
                if image.get(key):
                    by_identity.setdefault((key, image[key]), image["id"])
        for position, image in enumerate(captions_coco["images"]):
            if "id" not in image:
                raise ValueError(f"{source}: images[{position}] has no 'id' field")
            for key in ("sha256", "file_name"):
                if (key, image.get(key)) in by_identity:
                    translate[image["id"]] = by_identity[(key, image[key])]
                    break
    result: dict[Any, list[str]] = {}
    for position, row in enumerate(rows):
        where = f"{source}: annotations[{position}] (id {row.get('id')})"
        for name in ("image_id", "caption"):
            if name not in row:
                raise ValueError(f"{where} has no {name!r} field")
        if not isinstance(row["caption"], str) or not row["caption"].strip():
            raise ValueError(f"{where}: field 'caption' must be a non-empty string, got {row['caption']!r}")
        image_id = translate.get(row["image_id"], row["image_id"] if not translate else None)
        if image_id not in ids:
            raise ValueError(f"{where}: image_id {row['image_id']!r} matches no image of the instances file")
        result.setdefault(image_id, []).append(row["caption"])
    return result


def _vocabulary(objects_by_key: Mapping[str, Sequence[Any]], categories: Sequence[Mapping[str, Any]]
                ) -> tuple[list[str], list[str]]:
    """(colours, shapes) distractors come from: the dataset's own, colours topped up to four."""
    from mmloop.questions import COLOURS

    seen = sorted({obj.colour for objects in objects_by_key.values() for obj in objects if obj.colour})
    colours = list(dict.fromkeys([*seen, *COLOURS]))[: max(len(seen), 4)]
    shapes = [str(category["name"]) for category in categories]
    return colours, shapes


def coco_samples(source: CocoSource, config: CurateConfig, *, answer_format: str, seed: int, resolver: _ImageResolver,
                 mix: FamilyMix | None = None) -> list[dict[str, Any]]:
    """One seed conversation per image of a COCO instances (+ captions) source."""
    from mmloop.questions import image_key, objects_by_image

    instances_path = str(source.instances)
    coco = read_json(instances_path)
    objects_by_key = objects_by_image(coco, source=instances_path)
    captions_path = source.captions
    captions = (_captions_by_image(read_json(captions_path), coco["images"], str(captions_path))
                if captions_path else {})
    colours, shapes = _vocabulary(objects_by_key, coco["categories"])
    folder = source.image_folder or resolver.data_root
    mix = mix or FamilyMix(config.family_weights)
    provenance_source = ",".join(str(path) for path in (instances_path, captions_path) if path)

    rows = []
    for position, image in enumerate(coco["images"]):
        where = f"{instances_path}: images[{position}] (id {image.get('id')})"
        if not image.get("file_name"):
            raise ValueError(f"{where} has no 'file_name' field")
        stored, sha = resolver.resolve(folder, image["file_name"], where, image.get("sha256"))
        objects = objects_by_key[image_key(image)]
        rng = random.Random(stable_hash(seed, "coco", sha))
        conversation, turn_records = conversation_turns(objects, captions.get(image["id"], []), config, rng,
                                                        mix, answer_format=answer_format, colours=colours,
                                                        shapes=shapes)
        if not conversation:
            continue
        rows.append(_seed_row(stored, sha, conversation, backend="annotations", source=provenance_source,
                              program=turn_records))
    return rows


# ---------------------------------------------------------------- LLaVA sources

def llava_conversation(turns: Any, where: str) -> list[dict[str, str]]:
    """LLaVA `conversations` as schema turns; errors name `where` and the turn."""
    if not isinstance(turns, list) or not turns:
        raise ValueError(f"{where}: field 'conversations' must be a non-empty list, got {turns!r}")
    result = []
    for index, turn in enumerate(turns):
        at = f"{where}: conversations[{index}]"
        if not isinstance(turn, Mapping):
            raise ValueError(f"{at} must be an object {{from, value}}, got {turn!r}")
        role = LLAVA_ROLES.get(turn.get("from"))
        if role is None:
            raise ValueError(f"{at}: field 'from' must be one of {', '.join(LLAVA_ROLES)}, got {turn.get('from')!r}")
        value = turn.get("value")
        if not isinstance(value, str):
            raise ValueError(f"{at}: field 'value' must be a string, got {value!r}")
        content = IMAGE_PLACEHOLDER.sub(" ", value).strip()
        if not content:
            raise ValueError(f"{at}: field 'value' is empty once '<image>' is removed")
        result.append({"role": role, "content": content})
    dialogue = [turn["role"] for turn in result if turn["role"] != "system"]
    for index, role in enumerate(dialogue):
        expected = "user" if index % 2 == 0 else "assistant"
        if role != expected:
            raise ValueError(f"{where}: field 'conversations' must alternate human/gpt starting with human "
                             f"(turn {index} is {role!r})")
    if len(dialogue) < 2:
        raise ValueError(f"{where}: field 'conversations' needs a human turn and a gpt answer")
    return result


def llava_samples(source: LlavaSource, *, resolver: _ImageResolver) -> list[dict[str, Any]]:
    """One seed sample per record of a LLaVA JSON list."""
    path = str(source.path)
    records = read_json(path)
    if not isinstance(records, list):
        raise ValueError(f"{path}: LLaVA JSON must be a list of records, got {type(records).__name__}")
    rows = []
    for index, record in enumerate(records):
        where = f"{path}: record {index}"
        if not isinstance(record, Mapping):
            raise ValueError(f"{where}: must be an object {{id, image, conversations}}, got {record!r}")
        where = f"{path}: record {index} (id {record.get('id')!r})"
        image = record.get("image")
        if not isinstance(image, str) or not image:
            raise ValueError(f"{where}: field 'image' must be a non-empty path, got {image!r}")
        conversation = llava_conversation(record.get("conversations"), where)
        stored, sha = resolver.resolve(source.image_folder, image, where)
        rows.append(_seed_row(stored, sha, conversation, backend="llava", source=path, program=None))
    return rows


# ---------------------------------------------------------------- both

def _seed_row(image: str, sha: str, conversation: list[dict[str, str]], *, backend: str, source: str,
              program: Any) -> dict[str, Any]:
    return sample(
        sample_id=make_sample_id(sha, conversation, "seed"), parent_ids=[], iteration=0, origin="seed",
        image=image, image_sha256=sha, conversations=conversation, category=MIXED_CATEGORY,
        format="conversation", question=conversation[0]["content"], options=[],
        answer=conversation[-1]["content"], provenance={"backend": backend, "program": program, "source": source},
    )


def curate(config: CurateConfig, *, answer_format: str, seed: int, data_root: str | os.PathLike = "data"
           ) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """The seed samples of every source in params `curate.sources`, and their metrics.

    A sample whose id an earlier one already has (the same image and conversation in two
    sources) is dropped and counted under the source's `duplicates`.
    """
    resolver = _ImageResolver(data_root)
    mix = FamilyMix(config.family_weights)  # one running mix over every COCO source
    rows: list[dict[str, Any]] = []
    seen: set[str] = set()
    per_source: dict[str, dict[str, Any]] = {}
    for source in config.sources:
        if source.kind == "coco":
            made = coco_samples(source, config, answer_format=answer_format, seed=seed, resolver=resolver, mix=mix)
            name = str(source.instances)
        else:
            made = llava_samples(source, resolver=resolver)
            name = str(source.path)
        entry = per_source.setdefault(name, {"kind": source.kind, "samples": 0, "turns": 0, "duplicates": 0})
        for row in made:
            if row["sample_id"] in seen:
                entry["duplicates"] += 1
                continue
            seen.add(row["sample_id"])
            rows.append(row)
            entry["samples"] += 1
            entry["turns"] += _pairs(row)
    return rows, metrics(rows, config, per_source)


def _pairs(row: Mapping[str, Any]) -> int:
    return sum(1 for turn in row["conversations"] if turn["role"] == "user")


def turn_records(row: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The per-turn records of a curated COCO row (empty for rows without them, e.g. LLaVA)."""
    import json

    text = (row.get("provenance") or {}).get("program")
    records = json.loads(text) if text else []
    return records if isinstance(records, list) else []


def metrics(rows: Sequence[Mapping[str, Any]], config: CurateConfig,
            per_source: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    """samples, turns, turns per family (count and share), turn formats, per-source counts."""
    from mmloop.questions import FAMILIES

    families = {family: 0 for family in FAMILIES}
    # "open": turns without a per-turn record (LLaVA conversations).
    formats = {name: 0 for name in (*TURN_FORMATS, "open")}
    incomplete = 0
    for row in rows:
        records = turn_records(row)
        for record in records:
            formats[record["format"]] += 1
            if record["program"]:
                families[record["program"]["family"]] += 1
        formats["open"] += _pairs(row) - len(records)
        if records and len(records) < config.turns_per_image:
            incomplete += 1
    asked = sum(families.values())
    return {
        "samples": len(rows),
        "turns": sum(_pairs(row) for row in rows),
        "families": families,
        "family_share": {family: round(count / asked, 4) if asked else 0.0 for family, count in families.items()},
        "formats": formats,
        "incomplete_samples": incomplete,
        "sources": {name: dict(entry) for name, entry in per_source.items()},
    }
