"""Benchmark readers: every format read into `schema.bench_item`, with errors naming file, record and field."""

import base64
import io
import json
import warnings

import pytest

from mmloop.eval import benchmarks
from mmloop.eval.benchmarks import aokvqa, jsonl, mmbench, mme, pope, seedbench
from mmloop.io import sha256_bytes
from mmloop.schema import BENCH_ITEM_FIELDS


def png(colour=(255, 0, 0), size=(4, 4)) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", size, colour).save(buffer, format="PNG")
    return buffer.getvalue()


RED, GREEN, BLUE = png((255, 0, 0)), png((0, 255, 0)), png((0, 0, 255))


def check_items(items):
    """Every item has every schema field, a unique str index and its image's hash."""
    assert len({item["index"] for item in items}) == len(items)
    for item in items:
        assert set(BENCH_ITEM_FIELDS) <= set(item)
        assert isinstance(item["index"], str) and isinstance(item["image"], bytes)
        assert item["image_sha256"] == sha256_bytes(item["image"])
        if item["answer_type"] == "yes_no":
            assert item["options"] == [] and item["answer"] in ("yes", "no")
        else:
            assert item["answer"] in "ABCDEFGH"[:len(item["options"])]


def write_jsonl(path, records):
    path.write_text("".join(json.dumps(record) + "\n" for record in records))
    return path


# ---------------------------------------------------------------- MMBench

def write_tsv(path, columns, rows):
    path.write_text("\n".join(["\t".join(columns)] + ["\t".join(str(row.get(c, "")) for c in columns)
                                                       for row in rows]) + "\n")
    return path


B64 = base64.b64encode(RED).decode("ascii")
MMB = ("index", "question", "hint", "A", "B", "C", "D", "E", "answer", "category", "l2-category", "image", "split")


def mmb_row(index, **fields):
    row = {"index": index, "question": "What colour?", "A": "red", "B": "green", "answer": "A",
           "category": "colour", "l2-category": "attribute", "image": B64, "split": "dev"}
    row.update(fields)
    return row


def test_mmbench_circular_groups_nan_hint_partial_options(tmp_path):
    path = write_tsv(tmp_path / "mmb.tsv", MMB, [
        mmb_row(7, hint="NaN", C="blue", D="", E=""),
        mmb_row(1000007, A="green", B="blue", C="red", answer="C", image="7", hint="nan"),
        mmb_row(2000007, A="blue", B="red", C="green", answer="B", image="7", hint="Look up."),
        mmb_row("q-1", A="a", B="b", C="c", D="d", E="e", answer="E", **{"l2-category": ""}),
    ])
    items = mmbench.read_mmbench(path)
    check_items(items)
    assert [item["index"] for item in items] == ["7", "1000007", "2000007", "q-1"]
    assert [item["group"] for item in items] == ["7", "7", "7", None]
    assert [item["hint"] for item in items] == [None, None, "Look up.", None]
    assert items[0]["options"] == ["red", "green", "blue"]  # trailing empty D, E dropped
    assert items[3]["options"] == ["a", "b", "c", "d", "e"] and items[3]["answer"] == "E"
    assert [item["answer"] for item in items[:3]] == ["A", "C", "B"]
    assert all(item["image"] == RED for item in items)
    assert items[0]["image"] is items[1]["image"]  # the referenced image decoded once
    assert items[0]["l2_category"] == "attribute" and items[3]["l2_category"] is None
    assert all(item["answer_type"] == "mcq" and item["direct_answers"] == [] for item in items)
    assert items[0]["split"] == "dev"  # extra columns kept


@pytest.mark.parametrize("row, message", [
    (mmb_row(3, A="", B="x", C="y"), r"mmb\.tsv: row 1 \(index '3'\): field 'A' is empty but a later option"),
    (mmb_row(3, C="", D="blue"), r"mmb\.tsv: row 1 \(index '3'\): field 'C' is empty but a later option"),
    (mmb_row(3, answer="E"), r"mmb\.tsv: row 1 \(index '3'\): field 'answer': 'E' is not among the "
                             r"non-empty options A, B"),
    (mmb_row(0), r"mmb\.tsv: row 1 \(index '0'\): field 'index': '0' repeats row 0"),
])
def test_mmbench_errors(tmp_path, row, message):
    path = write_tsv(tmp_path / "mmb.tsv", MMB, [mmb_row(0), row])
    with pytest.raises(ValueError, match=message):
        mmbench.read_mmbench(path)


# ---------------------------------------------------------------- A-OKVQA

def aok_record(qid, image_id, **fields):
    record = {"question_id": qid, "image_id": image_id, "question": "What is he holding?",
              "choices": ["bat", "ball", "glove", "hat"], "correct_choice_idx": 2,
              "direct_answers": ["glove"] * 7 + ["mitt"] * 3, "difficult_direct_answer": False,
              "rationales": ["It is on his hand."]}
    record.update(fields)
    return record


def test_aokvqa(tmp_path):
    coco = tmp_path / "val2017"
    coco.mkdir()
    (coco / "000000000042.jpg").write_bytes(RED)
    (coco / "custom.png").write_bytes(GREEN)
    path = tmp_path / "aokvqa_v1p0_val.json"
    path.write_text(json.dumps([
        aok_record("q1", 42),
        aok_record("q2", 42, correct_choice_idx=0, difficult_direct_answer=True),
        aok_record("q3", 7, file_name="custom.png", category="sports"),
    ]))
    items = aokvqa.read_aokvqa(path, coco)
    check_items(items)
    assert [item["index"] for item in items] == ["q1", "q2", "q3"]
    assert [item["answer"] for item in items] == ["C", "A", "C"]
    assert items[0]["options"] == ["bat", "ball", "glove", "hat"]
    assert items[0]["direct_answers"] == ["glove"] * 7 + ["mitt"] * 3
    assert [item["difficult_direct_answer"] for item in items] == [False, True, False]
    assert items[0]["rationales"] == ["It is on his hand."]
    assert [item["category"] for item in items] == ["aokvqa", "aokvqa", "sports"]
    assert items[0]["image"] == items[1]["image"] == RED and items[2]["image"] == GREEN
    assert items[0]["image"] is items[1]["image"]  # one read per file
    assert all(item["hint"] is None and item["group"] is None for item in items)


def test_aokvqa_errors(tmp_path):
    coco = tmp_path / "coco"
    coco.mkdir()
    (coco / "000000000042.jpg").write_bytes(RED)
    path = tmp_path / "aok.json"
    test_split = [{key: value for key, value in aok_record(qid, 42).items()
                   if key not in ("correct_choice_idx", "direct_answers")} for qid in ("t1", "t2")]
    path.write_text(json.dumps(test_split))
    with pytest.raises(ValueError, match=r"aok\.json: record 0 \(question_id 't1'\): field 'correct_choice_idx' "
                                         r"is missing: .*aok\.json has no answers"):
        aokvqa.read_aokvqa(path, coco)
    path.write_text(json.dumps([aok_record("q1", 42), aok_record("q2", 42, correct_choice_idx=4)]))
    with pytest.raises(ValueError, match=r"aok\.json: record 1 \(question_id 'q2'\): field 'correct_choice_idx': "
                                         r"4 is not an option number 0\.\.3"):
        aokvqa.read_aokvqa(path, coco)
    path.write_text(json.dumps([aok_record("q1", 42), aok_record("q2", 9)]))
    with pytest.raises(FileNotFoundError, match=r"aok\.json: record 1 \(question_id 'q2'\): field 'image_id': "
                                                r"image file '.*000000000009\.jpg' not found"):
        aokvqa.read_aokvqa(path, coco)


# ---------------------------------------------------------------- POPE

def pope_records():
    return [{"question_id": 1, "image": "a.png", "text": "Is there a dog in the image?", "label": "yes"},
            {"question_id": 2, "image": "a.png", "text": "Is there a cat in the image?", "label": "No"},
            {"question_id": 3, "image": "b.png", "text": "Is there a car in the image?", "label": "YES"}]


def test_pope_jsonl_under_json_name_and_category(tmp_path):
    (tmp_path / "a.png").write_bytes(RED)
    (tmp_path / "b.png").write_bytes(BLUE)
    # POPE ships JSON lines under a .json name.
    path = write_jsonl(tmp_path / "coco_pope_adversarial.json", pope_records())
    items = pope.read_pope(path, tmp_path)
    check_items(items)
    assert [item["index"] for item in items] == ["1", "2", "3"]
    assert [item["answer"] for item in items] == ["yes", "no", "yes"]
    assert all(item["answer_type"] == "yes_no" and item["category"] == "adversarial" for item in items)
    assert all(item["l2_category"] is None for item in items)
    assert items[0]["question"] == "Is there a dog in the image?"
    assert items[0]["image"] is items[1]["image"] and items[2]["image"] == BLUE
    assert {item["category"] for item in pope.read_pope(path, tmp_path, category="coco")} == {"coco"}
    # A JSON list, a category field, and a name that names no split.
    records = pope_records()
    records[0]["category"] = "gqa"
    (tmp_path / "pope.json").write_text(json.dumps(records))
    assert [item["category"] for item in pope.read_pope(tmp_path / "pope.json", tmp_path)] == \
        ["gqa", "pope", "pope"]
    popular = write_jsonl(tmp_path / "aokvqa_pope_Popular.jsonl", pope_records())
    assert {item["category"] for item in pope.read_pope(popular, tmp_path)} == {"popular"}


def test_pope_errors(tmp_path):
    (tmp_path / "a.png").write_bytes(RED)
    records = pope_records()[:2]
    records[1]["label"] = "maybe"
    path = write_jsonl(tmp_path / "coco_pope_random.jsonl", records)
    with pytest.raises(ValueError, match=r"coco_pope_random\.jsonl: line 2 \(question_id '2'\): field 'label': "
                                         r"'maybe' is not yes or no"):
        pope.read_pope(path, tmp_path)
    path = write_jsonl(tmp_path / "coco_pope_random.jsonl", pope_records())
    with pytest.raises(FileNotFoundError, match=r"coco_pope_random\.jsonl: line 3 \(question_id '3'\): "
                                                r"field 'image': image file '.*b\.png' not found"):
        pope.read_pope(path, tmp_path)
    path.write_text(json.dumps(pope_records()[0]) + "\n{not json\n")
    with pytest.raises(ValueError, match=r"coco_pope_random\.jsonl: line 2: not valid JSON"):
        pope.read_pope(path, tmp_path)


# ---------------------------------------------------------------- MME

def make_mme(root):
    # A perception subtask in the images/ + questions_answers_YN/ layout.
    (root / "artwork" / "images").mkdir(parents=True)
    (root / "artwork" / "questions_answers_YN").mkdir()
    (root / "artwork" / "images" / "10002.jpg").write_bytes(RED)
    (root / "artwork" / "questions_answers_YN" / "10002.txt").write_text(
        "Is this photo painted by Titian?\tYes\nIs this photo painted by Monet?\tNo\n")
    # A cognition subtask with images beside their .txt files.
    (root / "code_reasoning").mkdir()
    (root / "code_reasoning" / "0020.png").write_bytes(GREEN)
    (root / "code_reasoning" / "0020.txt").write_text("Does the code print 5?\tNo\n\nDoes it print 6?\tYes\n")
    (root / "OCR").mkdir()
    (root / "OCR" / "0001.jpg").write_bytes(BLUE)
    (root / "OCR" / "0001.txt").write_text("Is the word 'STOP'?\tyes\nIs the word 'GO'?\tno\n")
    (root / "eval_tool").mkdir()  # not a subtask
    return root


def test_mme_folder(tmp_path):
    items = mme.read_mme(make_mme(tmp_path / "MME_Benchmark_release_version"))
    check_items(items)
    assert [item["index"] for item in items] == ["OCR/0001/0", "OCR/0001/1", "artwork/10002/0", "artwork/10002/1",
                                                 "code_reasoning/0020/0", "code_reasoning/0020/1"]
    assert [item["answer"] for item in items] == ["yes", "no", "yes", "no", "no", "yes"]
    assert [item["group"] for item in items] == ["OCR/0001.jpg"] * 2 + ["artwork/10002.jpg"] * 2 + \
        ["code_reasoning/0020.png"] * 2
    assert [item["l2_category"] for item in items] == ["perception"] * 4 + ["cognition"] * 2
    assert [item["category"] for item in items] == ["OCR"] * 2 + ["artwork"] * 2 + ["code_reasoning"] * 2
    assert items[2]["question"] == "Is this photo painted by Titian?" and items[2]["image"] == RED
    assert "code_reasoning" in mme.COGNITION and "existence" not in mme.COGNITION


def test_mme_tables(tmp_path):
    columns = ("index", "image", "question", "answer", "category", "image_path")
    b64 = base64.b64encode(GREEN).decode("ascii")
    path = write_tsv(tmp_path / "MME.tsv", columns, [
        {"index": 0, "image": b64, "question": "Is there a cat?", "answer": "Yes", "category": "existence",
         "image_path": "existence/0.png"},
        {"index": 1, "image": "0", "question": "Is there a dog?", "answer": "No", "category": "existence",
         "image_path": "existence/0.png"},
        {"index": 2, "image": b64, "question": "Is 2+2 4?", "answer": "Yes", "category": "numerical_calculation",
         "image_path": "numerical_calculation/1.png"},
    ])
    items = mme.read_mme(path)
    check_items(items)
    assert [item["group"] for item in items] == ["existence/existence/0.png"] * 2 + \
        ["numerical_calculation/numerical_calculation/1.png"]
    assert [item["l2_category"] for item in items] == ["perception", "perception", "cognition"]
    assert [item["answer"] for item in items] == ["yes", "no", "yes"] and items[1]["image"] == GREEN
    # JSONL: image paths relative to the table's folder; no index field: the line number.
    (tmp_path / "imgs").mkdir()
    (tmp_path / "imgs" / "x.png").write_bytes(RED)
    table = write_jsonl(tmp_path / "mme.jsonl", [
        {"image": "imgs/x.png", "question": "Red?", "answer": "Yes", "category": "color"},
        {"image": "imgs/x.png", "question": "Blue?", "answer": "No", "category": "color"}])
    items = mme.read_mme(table)
    check_items(items)
    assert [item["index"] for item in items] == ["1", "2"]
    assert {item["group"] for item in items} == {"color/imgs/x.png"}


def test_mme_errors(tmp_path):
    root = make_mme(tmp_path / "mme")
    (root / "OCR" / "0001.txt").write_text("Is the word 'STOP'?\tyes\nIs the word 'GO'?\tperhaps\n")
    with pytest.raises(ValueError, match=r"OCR/0001\.txt: line 2: field 'answer': 'perhaps' is not yes or no"):
        mme.read_mme(root)
    (root / "OCR" / "0001.txt").write_text("Is the word 'STOP'? yes\n")
    with pytest.raises(ValueError, match=r"OCR/0001\.txt: line 1: expected 'question<TAB>answer'"):
        mme.read_mme(root)
    (root / "OCR" / "0001.jpg").unlink()
    with pytest.raises(FileNotFoundError, match=r"OCR/0001\.txt: field 'image': no image 0001"):
        mme.read_mme(root)
    with pytest.raises(ValueError, match=r"no MME subtask folders"):
        mme.read_mme(tmp_path / "mme" / "eval_tool")
    table = write_tsv(tmp_path / "MME.tsv", ("index", "image", "question", "answer", "category"),
                      [{"index": 5, "image": B64, "question": "Red?", "answer": "Yes", "category": ""}])
    with pytest.raises(ValueError, match=r"MME\.tsv: row 0 \(index '5'\): field 'category' is empty"):
        mme.read_mme(table)


# ---------------------------------------------------------------- SEED-Bench

def seed_file(path, questions):
    path.write_text(json.dumps({"questions": questions,
                                "question_type": {"Scene Understanding": 1, "Instance Identity": 2}}))
    return path


def seed_question(qid, **fields):
    question = {"question_id": qid, "question": "What is shown?", "choice_a": "a cat", "choice_b": "a dog",
                "choice_c": "a car", "choice_d": "a tree", "answer": "B", "data_id": "1_2.jpg",
                "data_type": "image", "question_type_id": 1, "data_source": "cc3m"}
    question.update(fields)
    return question


def test_seedbench_skips_video_items(tmp_path):
    (tmp_path / "1_2.jpg").write_bytes(RED)
    path = seed_file(tmp_path / "SEED-Bench.json", [
        seed_question("101"),
        seed_question("102", data_type="video", data_id="v.mp4", question_type_id=10),
        seed_question("103", answer="D", question_type_id=2),
        seed_question("104", question_type_id=7),
        seed_question("105", data_type="video", data_id="w.mp4", question_type_id=11),
    ])
    with pytest.warns(UserWarning, match=r"SEED-Bench\.json: skipped 2 non-image SEED-Bench item\(s\) \(2 video\)"):
        items = seedbench.read_seedbench(path, tmp_path)
    check_items(items)
    assert [item["index"] for item in items] == ["101", "103", "104"]
    assert [item["answer"] for item in items] == ["B", "D", "B"]
    assert [item["category"] for item in items] == ["Scene Understanding", "Instance Identity", "7"]
    assert items[0]["options"] == ["a cat", "a dog", "a car", "a tree"]


def test_seedbench_errors(tmp_path):
    (tmp_path / "1_2.jpg").write_bytes(RED)
    path = seed_file(tmp_path / "seed.json", [seed_question("101"), seed_question("102", answer="E")])
    with pytest.raises(ValueError, match=r"seed\.json: questions\[1\] \(question_id '102'\): field 'answer': "
                                         r"'E' is not among the options A, B, C, D"):
        seedbench.read_seedbench(path, tmp_path)
    seed_file(path, [seed_question("101", choice_b="")])
    with pytest.raises(ValueError, match=r"seed\.json: questions\[0\] \(question_id '101'\): field 'choice_b' is "
                                         r"empty but a later option is not"):
        seedbench.read_seedbench(path, tmp_path)
    seed_file(path, [seed_question("101", data_id="missing.jpg")])
    with pytest.raises(FileNotFoundError, match=r"seed\.json: questions\[0\] \(question_id '101'\): field 'data_id': "
                                                r"image file '.*missing\.jpg' not found"):
        seedbench.read_seedbench(path, tmp_path)
    seed_file(path, [seed_question("101", data_type="video")])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(ValueError, match=r"seed\.json: no image items"):
            seedbench.read_seedbench(path, tmp_path)


# ---------------------------------------------------------------- plain JSONL

def test_jsonl(tmp_path):
    (tmp_path / "images").mkdir()
    (tmp_path / "images" / "a.png").write_bytes(RED)
    (tmp_path / "b.png").write_bytes(BLUE)
    path = write_jsonl(tmp_path / "bench.jsonl", [
        {"question": "What colour?", "options": ["red", "blue"], "answer": "blue", "category": "colour",
         "image": "images/a.png", "sample_id": "gen-1"},
        {"question": "What colour?", "options": ["Red", "blue"], "answer": "red", "category": "colour",
         "image": "images/a.png", "hint": "nan", "index": "x7", "l2_category": "attribute", "group": 3},
        {"question": "Is it blue?", "answer": "Yes", "category": "existence", "image": "b.png", "hint": "Look."},
        {"question": "Which?", "options": ["A", "B"], "answer": "A", "category": "letters", "image": "b.png"},
    ])
    items = jsonl.read_jsonl(path)
    check_items(items)
    assert [item["index"] for item in items] == ["1", "x7", "3", "4"]
    assert [item["answer"] for item in items] == ["B", "A", "yes", "A"]  # option text -> its letter
    assert [item["answer_type"] for item in items] == ["mcq", "mcq", "yes_no", "mcq"]
    assert [item["hint"] for item in items] == [None, None, "Look.", None]
    assert items[1]["l2_category"] == "attribute" and items[1]["group"] == "3" and items[0]["group"] is None
    assert items[0]["sample_id"] == "gen-1"  # extra fields kept
    assert items[0]["image"] is items[1]["image"] and items[2]["image"] == BLUE
    # image_dir given: image paths are relative to it.
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "elsewhere" / "b.png").write_bytes(GREEN)
    other = write_jsonl(tmp_path / "other.jsonl", [{"question": "Green?", "answer": "no", "category": "c",
                                                     "image": "b.png"}])
    assert jsonl.read_jsonl(other, tmp_path / "elsewhere")[0]["image"] == GREEN


@pytest.mark.parametrize("record, message", [
    ({"options": ["red", "blue"], "answer": "green"},
     r"bench\.jsonl: line 2: field 'answer': 'green' is neither an option letter \(A, B\) nor the text of an option"),
    ({"options": ["B", "A"], "answer": "A"}, r"line 2: field 'answer': 'A' is ambiguous"),
    ({"options": [], "answer": "blue"}, r"line 2: field 'answer': 'blue' is not yes or no \(an item without options"),
    ({"index": "q1", "question": ""}, r"bench\.jsonl: line 2 \(index 'q1'\): field 'question' is empty"),
    ({"index": 1}, r"bench\.jsonl: line 2 \(index '1'\): field 'index': '1' repeats line 1"),
])
def test_jsonl_errors(tmp_path, record, message):
    (tmp_path / "a.png").write_bytes(RED)
    base = {"question": "What colour?", "options": ["red", "blue"], "answer": "A", "category": "colour",
            "image": "a.png"}
    path = write_jsonl(tmp_path / "bench.jsonl", [base, {**base, **record}])
    with pytest.raises(ValueError, match=message):
        jsonl.read_jsonl(path)


def test_jsonl_missing_image(tmp_path):
    path = write_jsonl(tmp_path / "bench.jsonl", [{"question": "Q?", "answer": "yes", "category": "c",
                                                   "image": "gone.png", "index": "k"}])
    with pytest.raises(FileNotFoundError, match=r"bench\.jsonl: line 1 \(index 'k'\): field 'image': "
                                                r"image file '.*gone\.png' not found"):
        jsonl.read_jsonl(path)


# ---------------------------------------------------------------- dispatch

def test_load_benchmark_guesses_the_format(tmp_path):
    for name, data in (("a.png", RED), ("b.png", BLUE), ("000000000042.jpg", RED), ("1_2.jpg", RED)):
        (tmp_path / name).write_bytes(data)
    mmb = write_tsv(tmp_path / "mmb.tsv", MMB, [mmb_row(0)])
    mme_tsv = write_tsv(tmp_path / "mme.tsv", ("index", "image", "question", "answer", "category"),
                        [{"index": 0, "image": B64, "question": "Red?", "answer": "Yes", "category": "color"}])
    mme_dir = make_mme(tmp_path / "mme")
    pope = write_jsonl(tmp_path / "coco_pope_random.json", pope_records())
    pope_list = tmp_path / "pope_list.json"
    pope_list.write_text(json.dumps(pope_records()))
    pope_jsonl = write_jsonl(tmp_path / "pope.jsonl", pope_records())
    aok = tmp_path / "aok.json"
    aok.write_text(json.dumps([aok_record("q1", 42)]))
    seed = seed_file(tmp_path / "seed.json", [seed_question("101")])
    plain = write_jsonl(tmp_path / "plain.jsonl", [{"question": "Q?", "answer": "yes", "category": "c",
                                                    "image": "a.png"}])
    expected = {mmb: "mmbench", mme_tsv: "mme", mme_dir: "mme", pope: "pope", pope_list: "pope",
                pope_jsonl: "pope", aok: "aokvqa", seed: "seedbench", plain: "jsonl"}
    for path, format in expected.items():
        assert benchmarks.guess_format(path) == format, path
        items = benchmarks.load_benchmark(path)
        check_items(items)
        assert items == benchmarks.load_benchmark(path, format, **({} if format in ("mmbench", "mme")
                                                                else {"image_dir": tmp_path}))
    assert benchmarks.load_benchmark(pope, category="coco")[0]["category"] == "coco"
    assert benchmarks.load_benchmark(pope)[0]["category"] == "random"
    assert set(benchmarks.FORMATS) == {"mmbench", "aokvqa", "pope", "mme", "seedbench", "jsonl"}


def test_load_benchmark_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"nope\.tsv: benchmark file not found"):
        benchmarks.load_benchmark(tmp_path / "nope.tsv")
    odd = tmp_path / "odd.json"
    odd.write_text(json.dumps([{"foo": 1}]))
    with pytest.raises(ValueError, match=r"odd\.json: cannot tell the benchmark format .*"
                                         r"mmbench, aokvqa, pope, mme, seedbench, jsonl"):
        benchmarks.load_benchmark(odd)
    csv = tmp_path / "bench.csv"
    csv.write_text("a,b\n")
    with pytest.raises(ValueError, match=r"bench\.csv: cannot tell the benchmark format"):
        benchmarks.load_benchmark(csv)
    with pytest.raises(ValueError, match=r"unknown benchmark format 'vqav2'; the formats are mmbench"):
        benchmarks.load_benchmark(odd, "vqav2")
    mmb = write_tsv(tmp_path / "mmb.tsv", MMB, [mmb_row(0)])
    with pytest.raises(ValueError, match=r"mmb\.tsv: MMBench TSVs embed their images"):
        benchmarks.load_benchmark(mmb, image_dir=tmp_path)


def test_missing_files_name_the_path(tmp_path):
    for reader, args in ((mmbench.read_mmbench, ()), (aokvqa.read_aokvqa, (tmp_path,)),
                         (pope.read_pope, (tmp_path,)), (mme.read_mme, ()),
                         (seedbench.read_seedbench, (tmp_path,)), (jsonl.read_jsonl, ())):
        with pytest.raises(FileNotFoundError, match=r"gone\.json"):
            reader(tmp_path / "gone.json", *args)


def test_no_heavy_imports_at_module_level():
    import subprocess
    import sys

    code = ("import sys, mmloop.eval.benchmarks, mmloop.eval.evaluation; "
            "print(sorted({'pandas', 'PIL', 'torch', 'transformers'} & set(sys.modules)))")
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          check=True).stdout.strip() == "[]"
