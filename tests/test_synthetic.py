"""Synthetic shape QA: determinism, balance, answers checked against the pixels, JSONL, training step."""

from __future__ import annotations

import collections
import json
from pathlib import Path

import numpy as np
import pytest

from aim_vllm import synthetic

# Whole answer cycles (four values per type, two media for colour and count) for every type.
_BALANCED_N = len(synthetic.QUESTION_TYPES) * 16


def _components(mask: np.ndarray) -> list[np.ndarray]:
    """4-connected components of a boolean [H, W] mask, each as its own mask."""
    labels = np.where(mask, np.arange(1, mask.size + 1).reshape(mask.shape), 0)
    while True:
        padded = np.pad(labels, 1)
        neighbours = [
            padded[1:-1, 1:-1],
            padded[:-2, 1:-1],
            padded[2:, 1:-1],
            padded[1:-1, :-2],
            padded[1:-1, 2:],
        ]
        spread = np.where(mask, np.max(neighbours, axis=0), 0)
        if np.array_equal(spread, labels):
            return [labels == value for value in np.unique(labels) if value]
        labels = spread


def _colour_mask(frame: np.ndarray, colour: str) -> np.ndarray:
    return np.all(frame == synthetic.COLOURS[colour], axis=-1)


def _shape_of(component: np.ndarray) -> str:
    """Classify a drawn shape from three pixels of its bounding box."""
    rows, cols = np.nonzero(component)
    box = component[rows.min() : rows.max() + 1, cols.min() : cols.max() + 1]
    side = box.shape[0]
    if box[0, 0]:
        return "square"
    if box[-1, 0]:
        return "triangle"
    return "circle" if box[side // 4, side // 4] else "cross"


def _centroid(mask: np.ndarray) -> np.ndarray:
    rows, cols = np.nonzero(mask)
    return np.array([cols.mean(), rows.mean()])


def _target(question: str) -> tuple[str, str]:
    """The (colour, shape) a count / frame / direction question names."""
    colour, shape = question.split(" the " if " the " in question else "many ")[1].split()[:2]
    return colour, shape.removesuffix("es" if shape.endswith("sses") else "s")


def _check_against_pixels(item: synthetic.Item) -> None:
    """Recompute the item's answer from its rendered frames alone."""
    frames, q = synthetic.render(item.scene), item.question
    if q.type == "colour":  # the one shape in the picture has the answer colour and the named shape
        shape = q.question.removesuffix("?").split()[-1]
        drawn = [
            (c, _shape_of(m)) for c in synthetic.COLOURS for m in _components(_colour_mask(frames[0], c))
        ]
        assert drawn == [(q.answer_text, shape)]
    elif q.type == "count":  # the named colour draws that many shapes, all of the named shape
        colour, shape = _target(q.question)
        components = _components(_colour_mask(frames[0], colour))
        assert [_shape_of(c) for c in components] == [shape] * int(q.answer_text)
    elif q.type == "frame":  # the named colour appears in the answer frame and stays
        colour, _ = _target(q.question)
        seen = [t + 1 for t, frame in enumerate(frames) if _colour_mask(frame, colour).any()]
        assert seen == list(range(int(q.answer_text), len(frames) + 1))
    else:
        colour, _ = _target(q.question)
        dx, dy = _centroid(_colour_mask(frames[-1], colour)) - _centroid(_colour_mask(frames[0], colour))
        way = ("right" if dx > 0 else "left") if abs(dx) > abs(dy) else ("down" if dy > 0 else "up")
        assert way == q.answer_text and max(abs(dx), abs(dy)) >= 100


def test_same_seed_gives_identical_bytes(tmp_path: Path) -> None:
    """Data sets are reproducible artefacts: the eval's numbers depend on exactly these pixels."""
    a, b, c = (
        synthetic.write_dataset(tmp_path / name, 8, seed) for name, seed in (("a", 3), ("b", 3), ("c", 4))
    )
    files_a = sorted(p.relative_to(a.parent) for p in a.parent.rglob("*") if p.is_file())
    files_b = sorted(p.relative_to(b.parent) for p in b.parent.rglob("*") if p.is_file())
    assert files_a == files_b and len(files_a) == 1 + 2 + 6 * synthetic.NUM_FRAMES  # 2 images, 6 videos
    for rel in files_a:
        assert (a.parent / rel).read_bytes() == (b.parent / rel).read_bytes(), rel
    assert a.read_bytes() != c.read_bytes()


def test_item_does_not_depend_on_dataset_size() -> None:
    """Item i is a function of (seed, i): a larger data set extends a smaller one."""
    small = list(synthetic.iter_items(5, 6))
    large = list(synthetic.iter_items(5, 12))
    assert [i.question for i in small] == [i.question for i in large[:6]]
    assert all(
        np.array_equal(synthetic.render(x.scene), synthetic.render(y.scene))
        for x, y in zip(small, large[:6], strict=True)
    )


def test_answers_and_letters_are_balanced() -> None:
    """No prior wins: per type, each answer value and each letter is equally frequent."""
    items = list(synthetic.iter_items(0, _BALANCED_N))
    by_type = collections.defaultdict(list)
    for item in items:
        by_type[item.question.type].append(item)
    assert set(by_type) == set(synthetic.QUESTION_TYPES)
    for qtype, group in by_type.items():
        assert all(i.question.options == synthetic.answer_values(qtype) for i in group), qtype
        values = collections.Counter(i.question.answer_text for i in group)
        letters = collections.Counter(i.question.answer for i in group)
        assert set(values) == set(synthetic.answer_values(qtype)) and len(set(values.values())) == 1, qtype
        assert set(letters) == set(synthetic.LETTERS) and len(set(letters.values())) == 1, qtype
    media = collections.Counter((i.question.type, i.scene.is_video) for i in items)
    assert (
        media[("colour", True)]
        == media[("colour", False)]
        == media[("count", True)]
        == media[("count", False)]
    )


def test_questions_do_not_leak_answers() -> None:
    """Only the pixels tell the answer: the question names what to look for, never the answer,
    and every item of a type offers the same options in the same order."""
    for item in synthetic.iter_items(1, 64):
        q = item.question
        assert q.answer_text not in q.question.replace("?", "").split()
        assert q.options == synthetic.answer_values(q.type) and len(set(q.options)) == 4
        assert q.options["ABCD".index(q.answer)] == q.answer_text


def test_answers_match_rendered_pixels() -> None:
    """Every question type's answer is recomputed from the frames (colours, components, motion)."""
    for item in synthetic.iter_items(2, 32):
        _check_against_pixels(item)


def test_training_questions_match_pixels() -> None:
    """Every question asked during training is as correct as the data set's, and each scene
    answers the question it was drawn for."""
    rng = np.random.default_rng(0)
    for is_video, frames in ((False, 1), (True, 1), (True, 2), (True, 8)):
        for _ in range(4):
            scene, turns = synthetic.training_example(rng, is_video, frames, 0.0)
            assert turns and scene.is_video == is_video
            for qtype, target, value in synthetic.scene_questions(scene):
                q = synthetic.make_question(qtype, target, value, scene.num_frames)
                _check_against_pixels(synthetic.Item("t", scene, q))


def test_jsonl_round_trip(tmp_path: Path) -> None:
    """What the eval reads is what the generator meant: records, images, frames and .npy videos."""
    path = synthetic.write_dataset(tmp_path, 8, seed=7)
    records = synthetic.read_dataset(path)
    for record, item in zip(records, synthetic.iter_items(7, 8), strict=True):
        assert record == json.loads(json.dumps(synthetic.item_record(item, record["media"])))
        media = synthetic.load_media(record["media"][0], tmp_path)
        frames = synthetic.render(item.scene)
        if item.scene.is_video:
            assert np.array_equal(media, frames)
        else:
            assert np.array_equal(np.asarray(media), frames[0])
    np.save(tmp_path / "clip.npy", frames)
    assert np.array_equal(synthetic.load_media({"type": "video", "path": "clip.npy"}, tmp_path), frames)
    assert "Answer with the letter." in synthetic.prompt_text(records[0]["question"], records[0]["options"])


def test_types_restrict_a_dataset_and_the_free_form_prompt_is_the_bare_question(tmp_path: Path) -> None:
    items = list(synthetic.iter_items(3, 8, types=("colour",)))
    assert {item.question.type for item in items} == {"colour"}
    assert collections.Counter(item.question.answer_text for item in items) == dict.fromkeys(
        synthetic.ANSWER_COLOURS, 2
    )
    for item in items:
        _check_against_pixels(item)
        assert synthetic.prompt_text(item.question.question) == item.question.question
    with pytest.raises(ValueError, match="shape"):
        synthetic.make_item(0, 0, types=("shape",))
    small = list(synthetic.iter_items(3, 8, types=("colour",), colour_size=(16, 24)))
    assert all(16 <= item.scene.shapes[0].size < 24 for item in small)
    assert all(56 <= item.scene.shapes[0].size < 96 for item in items)
    for item in small:
        _check_against_pixels(item)
    from aim_vllm.cli import main

    assert main(["make-synthetic-data", str(tmp_path / "d"), "--n", "3", "--types", "count,frame"]) == 0
    records = synthetic.read_dataset(tmp_path / "d" / "items.jsonl")
    assert [r["type"] for r in records] == ["count", "frame", "count"]
    with pytest.raises(SystemExit):  # the CLI's usage error (exit 2)
        main(["make-synthetic-data", str(tmp_path / "e"), "--colour-size", "24,16"])


def test_read_dataset_rejects_malformed_items(tmp_path: Path) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_text(
        json.dumps({"id": "x", "media": [], "question": "q", "options": ["a", "b"], "answer": "C"})
    )
    with pytest.raises(ValueError, match="bad.jsonl:1"):
        synthetic.read_dataset(path)


def test_cli_writes_a_dataset(tmp_path: Path, capsys) -> None:
    from aim_vllm.cli import main

    assert main(["make-synthetic-data", str(tmp_path / "d"), "--n", "4", "--seed", "1"]) == 0
    assert len(synthetic.read_dataset(tmp_path / "d" / "items.jsonl")) == 4
    assert capsys.readouterr().out.strip().endswith("items.jsonl")


def test_training_step_reduces_loss_on_a_fixed_batch(tiny_model_dir: Path) -> None:
    """Labels cover the answers only, and three AdamW steps on two cheap items lower a finite loss."""
    import torch
    from transformers import LlavaOnevisionForConditionalGeneration, LlavaOnevisionProcessor

    from aim_vllm import training

    torch.manual_seed(0)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as training does: tiny matrices, shared cores (see training.train)
    processor = LlavaOnevisionProcessor.from_pretrained(tiny_model_dir)
    model = LlavaOnevisionForConditionalGeneration.from_pretrained(tiny_model_dir, dtype=torch.float32)
    rng = np.random.default_rng(0)
    batch = []
    for _ in range(2):
        scene, turns = synthetic.training_example(rng, True, 1, 0.5)
        inputs, labels = training.encode(processor, synthetic.render(scene), True, turns)
        answers = processor.tokenizer.decode(inputs["input_ids"][0][labels != -100])
        assert answers == "".join(f"{answer}<|im_end|>" for _, answer in turns)
        batch.append((inputs, labels))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    losses = []
    try:
        for _ in range(3):
            loss = sum(training.answer_loss(model, inputs, labels) for inputs, labels in batch) / len(batch)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
    finally:
        torch.set_num_threads(threads)
    assert all(np.isfinite(losses)) and losses[2] < losses[1] < losses[0], losses


# ---------------------------------------------------------------- the opt-in `position` type

# sha256 of the default data of seed 0 (32 items) and of 24 default training examples, as the
# code before the `position` type generated them: an opt-in type must not change them.
_DEFAULT_DIGEST = "8926fa3bf0effdd959bd2a52546b6f947a011a6de889ccc716737d5625f29c92"


def test_the_position_type_leaves_the_default_data_unchanged() -> None:
    import hashlib

    digest = hashlib.sha256()
    for item in synthetic.iter_items(0, 32):
        digest.update(json.dumps(synthetic.item_record(item, [])).encode())
        digest.update(repr(item.scene).encode())
    for i in range(24):
        scene, turns = synthetic.training_example(np.random.default_rng(i), bool(i % 2), 1 + i % 3, 0.3)
        digest.update(json.dumps(turns).encode())
        digest.update(repr(scene).encode())
    assert "position" not in synthetic.QUESTION_TYPES and "position" in synthetic.ALL_QUESTION_TYPES
    assert digest.hexdigest() == _DEFAULT_DIGEST


def _quadrant_from_pixels(frame: np.ndarray, colour: str) -> str:
    """The quadrant of the one shape of `colour`, from its bounding box (which must not straddle)."""
    (component,) = _components(_colour_mask(frame, colour))
    rows, cols = np.nonzero(component)
    mid = synthetic.IMAGE_SIZE // 2
    assert (cols.max() < mid or cols.min() >= mid) and (rows.max() < mid or rows.min() >= mid)
    return synthetic.QUADRANTS[2 * int(rows.min() >= mid) + int(cols.min() >= mid)]


def test_position_items_are_images_whose_pixels_give_the_answer() -> None:
    """Every position item is one image with one shape of the named colour and kind, wholly inside
    the answer's quadrant; the answers cycle through the four quadrants; the same seed repeats."""
    items = list(synthetic.iter_items(5, 16, types=("position",)))
    assert collections.Counter(item.question.answer_text for item in items) == dict.fromkeys(
        synthetic.QUADRANTS, 4
    )
    for item in items:
        q = item.question
        colour, shape = _target(q.question)
        frame = synthetic.render(item.scene)
        assert not item.scene.is_video and frame.shape[0] == 1 and len(item.scene.shapes) == 1
        assert q.type == "position" and q.options == synthetic.QUADRANTS
        assert q.answer == synthetic.LETTERS[synthetic.QUADRANTS.index(q.answer_text)]
        assert _quadrant_from_pixels(frame[0], colour) == q.answer_text
        assert _shape_of(_components(_colour_mask(frame[0], colour))[0]) == shape.rstrip("?")
    again = synthetic.make_item(5, 3, types=("position",))
    assert again.question == items[3].question and again.scene == items[3].scene


def test_position_training_turns_match_the_pixels() -> None:
    rng = np.random.default_rng(11)
    for _ in range(12):
        scene, turns = synthetic.training_example(rng, False, 1, 0.5, ("position",))
        ((prompt, answer),) = turns
        question = prompt.splitlines()[0]
        colour, _ = _target(question)
        quadrant = _quadrant_from_pixels(synthetic.render(scene)[0], colour)
        assert answer in (quadrant, synthetic.LETTERS[synthetic.QUADRANTS.index(quadrant)])
    with pytest.raises(ValueError, match="no question"):
        synthetic.training_example(rng, True, 2, 0.0, ("position",))  # images only
