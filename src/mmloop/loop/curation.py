"""Curation: the seed set, built the way "COCO is ALL you need" builds its data.

The sources (params `curate.sources`) are read and checked by `mmloop.sources`; every image
is the stored one (`data/store`, through the store index), so a sample's `image` is its
path in the store and `image_sha256` its content hash.

Each image's annotation sources (COCO instances, COCO captions) are merged into ONE
multi-round conversation (format "conversation", category "mixed") whose answers are
either MMBench letters or full sentences:

- `turns_per_image` turns per image, of which up to `caption_turns` are caption turns: each
  a different caption of the image (as a sentence), drawn from the image's stream and put at
  seeded positions; the other turns are question turns. The k-th caption turn asks
  `CAPTION_PROMPTS[k]` (the first `questions.CAPTION_QUESTION`), so no prompt repeats within
  a conversation. (The world has two captions per image and the default asks one; COCO has
  five: raise `caption_turns` and `turns_per_image` together to use them all.)
- Each question turn's family is drawn from `family_weights` (`FamilyMix`). A family
  that can't be asked on the image (`make_question` gives None) or has no further
  distinct question (`questions.question_key`) is dropped for that image and the draw
  repeats over the families that remain; the draw is weighted by each family's running
  deficit, so the dataset's turn mix follows the weights: with the default 2% count and
  2% spatial the seed starves those skills, which is what gives the loop weak spots to find.
- A question turn is multiple choice (MMBench prompt, letter answer) with probability
  `mcq_ratio`, otherwise the question alone answered by the program's full sentence.
- Every turn is recorded in `provenance.program`, a JSON list with one entry per turn:
  {turn, format, program, options, answer} (program null for caption turns), so each
  answer can be re-executed with `questions.answer_program`.

LLaVA and ShareGPT JSON are read as written: the records of one image become one sample
(their turns in file order), `<image>` placeholders stripped, roles mapped to user/assistant.

`provenance.source` is JSON: {"files": the source's files, "ids": the COCO image id or the
LLaVA/ShareGPT record ids, "records": their positions in the file}.

Each image has its own RNG (`stable_hash(seed, image sha256)`) and images are visited in
file order, so the same params and inputs give the same samples and ids. `metrics` counts,
per source, records, images, samples, turns, duplicates, merged records and skipped
records by reason, and warns when the family weights ask for families the data can't answer.
"""

from __future__ import annotations

import json
import os
import random
from collections.abc import Mapping, Sequence
from typing import Any

from mmloop import sources as data_sources
from mmloop.config import CurateConfig
from mmloop.io import stable_hash
from mmloop.questions import CAPTION_QUESTION, dataset_vocabulary
from mmloop.schema import MIXED_CATEGORY, make_sample_id, sample
from mmloop.store import StoredImage, StoreIndex, read_index

TURN_FORMATS = ("mcq", "short", "caption")
# What the caption turns of one image ask, in turn: the k-th caption answers the k-th prompt.
CAPTION_PROMPTS = (CAPTION_QUESTION, "Write a short caption for the image.",
                   "Describe the image in one sentence.", "What does the image show?",
                   "Summarise the image in a few words.")
# How often one family is retried on an image for a question not yet asked there.
QUESTION_ATTEMPTS = 8
# A record with annotations that gave no turn: no family of the weights can be asked on it.
NOTHING_TO_ASK = "no question of curate.family_weights applies"
# A family whose share of the question turns falls below this part of its weight is warned about.
SHORTFALL = 0.5
ATTRIBUTE_FAMILIES = {"colour": "colour", "shape": "colour", "size": "size"}


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

    Up to `caption_turns` caption turns, each a different caption of the image (as a sentence)
    drawn from the image's stream, question turns for the rest. Fewer pairs come back only when
    the image has fewer distinct questions than asked for.
    """
    from mmloop import questions

    distinct = list(dict.fromkeys(sentence(caption) for caption in captions))
    caption_count = min(len(distinct), config.caption_turns, config.turns_per_image)
    wanted = config.turns_per_image - caption_count
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
            if questions.question_key(candidate) not in asked:
                made = candidate
                break
        if made is None:
            # This family has nothing (more) to ask here: draw again from the families that do.
            available.discard(family)
            continue
        asked.add(questions.question_key(made))
        mix.record(family)
        fmt = "mcq" if rng.random() < config.mcq_ratio else "short"
        record = {"format": fmt, "program": made.program,
                  "options": list(made.options) if fmt == "mcq" else [], "answer": made.answer}
        pairs.append((questions.turns(made, fmt, answer_format), record))
    for number, caption in enumerate(rng.sample(distinct, caption_count)):
        pair = [{"role": "user", "content": CAPTION_PROMPTS[number % len(CAPTION_PROMPTS)]},
                {"role": "assistant", "content": caption}]
        pairs.insert(rng.randrange(len(pairs) + 1),
                     (pair, {"format": "caption", "program": None, "options": [], "answer": caption}))
    conversation: list[dict[str, str]] = []
    records: list[dict[str, Any]] = []
    for index, (pair, record) in enumerate(pairs):
        conversation += pair
        records.append({"turn": index, **record})
    return conversation, records


def coco_samples(data: data_sources.CocoData, config: CurateConfig, *, answer_format: str, seed: int,
                 mix: FamilyMix | None = None) -> tuple[list[dict[str, Any]], dict[str, int]]:
    """(one seed conversation per usable image of a COCO source, {skip reason: images})."""
    colours, shapes = dataset_vocabulary({image.stored.sha256: image.objects for image in data.images},
                                         data.vocabulary)
    mix = mix or FamilyMix(config.family_weights)
    rows, skipped = [], {}
    for image in data.images:
        sha = image.stored.sha256
        rng = random.Random(stable_hash(seed, "coco", sha))
        conversation, turn_records = conversation_turns(image.objects, image.captions, config, rng, mix,
                                                        answer_format=answer_format, colours=colours,
                                                        shapes=shapes)
        if not conversation:
            if config.unusable == "error":
                raise ValueError(f"{data.source}: images[{image.position}] (id {image.id!r}): no question of "
                                 f"curate.family_weights can be asked on its annotations and it has no caption "
                                 f"(curate.unusable is 'error'; 'skip' leaves such images out)")
            skipped[NOTHING_TO_ASK] = skipped.get(NOTHING_TO_ASK, 0) + 1
            continue
        rows.append(_seed_row(image.stored, conversation, backend="annotations", program=turn_records,
                              source=_provenance(data.files, [image.id], [image.position])))
    return rows, skipped


# ---------------------------------------------------------------- LLaVA and ShareGPT sources

def conversation_samples(data: data_sources.ConversationData) -> list[dict[str, Any]]:
    """One seed sample per image of a LLaVA or ShareGPT source (its records merged)."""
    return [_seed_row(conversation.stored, conversation.turns, backend=data.kind, program=None,
                      source=_provenance([data.source], conversation.ids, conversation.records))
            for conversation in data.conversations]


# ---------------------------------------------------------------- both

def _provenance(files: Sequence[str], ids: Sequence[Any], records: Sequence[int]) -> str:
    return json.dumps({"files": list(files), "ids": list(ids), "records": list(records)})


def _seed_row(stored: StoredImage, conversation: list[dict[str, str]], *, backend: str, source: str,
              program: Any) -> dict[str, Any]:
    sha = stored.sha256
    question = next(turn["content"] for turn in conversation if turn["role"] == "user")
    return sample(
        sample_id=make_sample_id(sha, conversation, "seed"), parent_ids=[], iteration=0, origin="seed",
        image=stored.path, image_sha256=sha, conversations=conversation, category=MIXED_CATEGORY,
        format="conversation", question=question, options=[],
        answer=conversation[-1]["content"], provenance={"backend": backend, "program": program, "source": source},
    )


def curate(config: CurateConfig, *, answer_format: str, seed: int, data_root: str | os.PathLike = "data",
           index: StoreIndex | None = None) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """The seed samples of every source in params `curate.sources`, and their metrics.

    Images are looked up in the store index of `data_root` (or `index`). A sample whose id an
    earlier one already has (the same image and conversation in two sources) is dropped and
    counted under the source's `duplicates`.
    """
    index = index if index is not None else read_index(data_root)
    mix = FamilyMix(config.family_weights)  # one running mix over every COCO source
    rows: list[dict[str, Any]] = []
    seen: set[str] = set()
    per_source: dict[str, dict[str, Any]] = {}
    coco_objects: list[Any] = []
    for source in config.sources:
        if source.kind == "coco":
            data = data_sources.read_coco(source, data_root, index, max_text_chars=config.max_text_chars,
                                          unusable=config.unusable)
            made, skipped = coco_samples(data, config, answer_format=answer_format, seed=seed, mix=mix)
            coco_objects += [obj for image in data.images for obj in image.objects]
            name, records, merged = data.source, len(data.images) + sum(data.skipped.values()), 0
            skipped = _add_counts(dict(data.skipped), skipped)
        else:
            data = data_sources.read_conversations(source, data_root, index, max_text_chars=config.max_text_chars)
            made, skipped = conversation_samples(data), dict(data.skipped)
            name, records, merged = data.source, data.records, data.merged
        entry = per_source.setdefault(name, {"kind": source.kind, "records": 0, "images": 0, "samples": 0,
                                             "turns": 0, "duplicates": 0, "merged": 0, "skipped": {}})
        entry["records"] += records
        entry["merged"] += merged
        entry["skipped"] = _add_counts(entry["skipped"], skipped)
        entry["images"] += len({row["image_sha256"] for row in made})
        for row in made:
            if row["sample_id"] in seen:
                entry["duplicates"] += 1
                continue
            seen.add(row["sample_id"])
            rows.append(row)
            entry["samples"] += 1
            entry["turns"] += _pairs(row)
    stats = metrics(rows, config, per_source)
    stats["warnings"] = warnings_for(stats, config, per_source, coco_objects)
    if not rows:
        counts = "; ".join(f"{name}: {entry['records']} records, skipped {entry['skipped'] or 'none'}"
                           for name, entry in per_source.items())
        raise ValueError(f"curate.sources gave no usable sample ({counts})")
    return rows, stats


def _add_counts(total: dict[str, int], more: Mapping[str, int]) -> dict[str, int]:
    for key, count in more.items():
        total[key] = total.get(key, 0) + count
    return total


def _pairs(row: Mapping[str, Any]) -> int:
    return sum(1 for turn in row["conversations"] if turn["role"] == "user")


def turn_records(row: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The per-turn records of a curated COCO row (empty for rows without them, e.g. LLaVA)."""
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
        "sources": {name: json.loads(json.dumps(entry)) for name, entry in per_source.items()},
    }


def warnings_for(stats: Mapping[str, Any], config: CurateConfig, per_source: Mapping[str, Mapping[str, Any]],
             coco_objects: Sequence[Any]) -> list[str]:
    """What the stage should tell the user: families the weights select that the COCO data
    can't (or can rarely) answer, and sources that gave no sample."""
    result = []
    if any(entry["kind"] == "coco" for entry in per_source.values()):
        total = sum(weight for weight in config.family_weights.values() if weight > 0)
        asked = sum(stats["families"].values())
        for family, weight in config.family_weights.items():
            if weight <= 0:
                continue
            share = stats["families"][family] / asked if asked else 0.0
            if share >= SHORTFALL * weight / total:
                continue
            message = (f"curate.family_weights gives {family} {weight / total:.1%} of the question turns, but the "
                       f"COCO sources answered {share:.1%} ({stats['families'][family]} turns)")
            attribute = ATTRIBUTE_FAMILIES.get(family)
            if attribute and not any(getattr(obj, attribute) for obj in coco_objects):
                message += (f": {family} questions need the per-object attribute {attribute!r} (COCO "
                            f"`attributes`), which these annotations lack")
            result.append(message)
    for name, entry in per_source.items():
        if not entry["samples"]:
            result.append(f"{name} gave no sample (skipped: {entry['skipped'] or 'none'}, "
                          f"duplicates: {entry['duplicates']})")
    return result
