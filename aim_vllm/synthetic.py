"""Deterministic synthetic image/video QA: coloured shapes on a plain grey background.

Every item is a 384x384 image or an 8-frame 384x384 video (LLaVA-OneVision's native SigLIP size,
so an image is one anyres crop and a frame is 196 pooled tokens) and one question of four types:

| type        | question                                          | options (A-D)            | media        |
| ----------- | ------------------------------------------------- | ------------------------ | ------------ |
| `colour`    | What colour is the {shape}?                       | red, green, blue, yellow | image, video |
| `count`     | How many {colour} {shape}s are there?             | 1, 2, 3, 4               | image, video |
| `frame`     | In which frame does the {colour} {shape} appear?  | 2, 4, 6, 8               | video        |
| `direction` | Which direction does the {colour} {shape} move?   | left, right, up, down    | video        |
| `position`  | Where is the {colour} {shape}?                    | top left, top right,     | image        |
|             |                                                   | bottom left, bottom right|              |

Scenes are built so that each answer is one visual statistic, learnable by a model trained from
scratch in minutes on a CPU (`aim_vllm.training`): a scene holds only the shape(s) the question
is about. The colour question shows one shape; the counted shapes all have the named colour,
shape and one size (the count is an area ratio); the `frame` shape appears in that frame and
stays until the end; the `direction` shape moves 100-200 pixels in a straight line. Each type
offers the same four options in the same order, so the letter is a label of the answer: the
answer is only in the pixels, and answers (hence letters) are balanced over a data set. Shapes
are drawn without anti-aliasing in exact colours and never overlap, so every answer can be
checked from the pixels (`tests/test_synthetic.py` counts connected components).

`position` is opt-in (`ALL_QUESTION_TYPES`; not in the default `QUESTION_TYPES`, so the default
data sets and training streams are unchanged): one shape of `POSITION_SIZE`, wholly inside the
quadrant that is the answer (at least `_MARGIN` pixels from the centre lines). Its answer is
where the shape is, not what it is, so a model can only read it from positions: the model of
`training.RECIPES["qwen-position"]` has a patch-local encoder and reads it from M-RoPE alone.

## Data set format (`write_dataset`, `aim-vllm make-synthetic-data`)

`DIR/items.jsonl`, one JSON object per line, media files next to it (paths relative to DIR):

    {"id": "syn-s0-000003", "type": "direction",
     "media": [{"type": "video", "path": "media/000003"}],
     "question": "Which direction does the red circle move?",
     "options": ["left", "right", "up", "down"], "answer": "A", "answer_text": "left"}

- `media`: a list (one entry here). `"image"`: a PNG file. `"video"`: a directory of PNG frames
  named in playing order (`00.png`, `01.png`, ...), or a `.npy` array [frames, H, W, 3] uint8.
  `load_media` reads both.
- `options`: the choices in letter order A, B, C, D; `answer`: the correct letter;
  `answer_text`: the correct option's text, also the expected free-form answer.
- The text to send after the media is `prompt_text(question, options)` for multiple choice (the
  model answers with the letter) or `prompt_text(question)`, the bare question, for a free-form
  answer (the model answers with `answer_text`): the model trained by `aim_vllm.training` saw
  exactly these two.

Everything is a pure function of (seed, index, types): item i is the same whatever the data set
size, and the same seed gives byte-identical files. `types` (default: all four) restricts a data
set to some question types, e.g. those a model was trained on.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

IMAGE_SIZE = 384
NUM_FRAMES = 8
# Exact RGB fills, far apart from each other and from every background grey.
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30),
    "green": (30, 170, 60),
    "blue": (40, 80, 230),
    "yellow": (245, 220, 30),
    "purple": (150, 50, 190),
    "orange": (250, 140, 20),
    "white": (250, 250, 250),
}
ANSWER_COLOURS = ("red", "green", "blue", "yellow")  # the colour options; the others are distractors
SHAPES = ("square", "circle", "triangle", "cross")
PLURALS = {"square": "squares", "circle": "circles", "triangle": "triangles", "cross": "crosses"}
BACKGROUNDS = ((90, 90, 90), (128, 128, 128), (170, 170, 170))
DIRECTIONS = ("left", "right", "up", "down")
QUESTION_TYPES = ("colour", "count", "frame", "direction")  # the default types
ALL_QUESTION_TYPES = (*QUESTION_TYPES, "position")  # with the opt-in ones
QUADRANTS = ("top left", "top right", "bottom left", "bottom right")  # (row, column) = divmod(i, 2)
POSITION_SIZE = (28, 57)  # [low, high) side of a position question's shape (1-2 Qwen tokens)
LETTERS = "ABCD"
MAX_COUNT = 4  # count answers are 1..MAX_COUNT, the four options
COUNT_AREA = 48 * 48  # pixels of every counted shape, whatever its kind: the count is an area ratio
FRAME_AREA = 64 * 64  # pixels of a `frame` shape: the frames it is seen in are an area ratio
COLOUR_SIZE = (56, 96)  # [low, high) side of a colour question's shape (training and default data)
_MARGIN = 6  # pixels between shapes, and between a shape and the border
_STEP = {"left": (-1, 0), "right": (1, 0), "up": (0, -1), "down": (0, 1)}
MC_INSTRUCTION = "Answer with the letter."


@dataclass(frozen=True)
class Shape:
    """One object: its centre in each frame (one entry per frame) and the frames it is seen in."""

    shape: str
    colour: str
    size: int  # side of its bounding square, pixels
    centres: tuple[tuple[int, int], ...]
    visible: tuple[int, ...]  # frame indices (0-based)


@dataclass
class Scene:
    background: tuple[int, int, int]
    num_frames: int  # 1 for an image
    is_video: bool
    shapes: list[Shape] = field(default_factory=list)


@dataclass(frozen=True)
class Question:
    type: str
    question: str
    options: tuple[str, ...]  # in letter order
    answer: str  # letter
    answer_text: str


@dataclass
class Item:
    id: str
    scene: Scene
    question: Question


# ---------------------------------------------------------------- rendering


def render(scene: Scene) -> np.ndarray:
    """Frames [F, 384, 384, 3] uint8 (F = 1 for an image)."""
    frames = []
    for t in range(scene.num_frames):
        img = Image.new("RGB", (IMAGE_SIZE, IMAGE_SIZE), scene.background)
        draw = ImageDraw.Draw(img)
        for s in scene.shapes:
            if t in s.visible:
                _draw_shape(draw, s.shape, s.centres[t], s.size, COLOURS[s.colour])
        frames.append(np.asarray(img))
    return np.stack(frames)


def _draw_shape(draw: ImageDraw.ImageDraw, shape: str, centre: tuple[int, int], size: int, fill) -> None:
    cx, cy = centre
    h = size // 2
    x0, y0, x1, y1 = cx - h, cy - h, cx - h + size - 1, cy - h + size - 1
    if shape == "square":
        draw.rectangle((x0, y0, x1, y1), fill=fill)
    elif shape == "circle":
        draw.ellipse((x0, y0, x1, y1), fill=fill)
    elif shape == "triangle":
        draw.polygon(((cx, y0), (x0, y1), (x1, y1)), fill=fill)
    elif shape == "cross":
        bar = size // 3
        draw.rectangle((x0, cy - bar // 2, x1, cy - bar // 2 + bar - 1), fill=fill)
        draw.rectangle((cx - bar // 2, y0, cx - bar // 2 + bar - 1, y1), fill=fill)
    else:
        raise ValueError(f"unknown shape {shape!r}; expected one of {', '.join(SHAPES)}")


# ---------------------------------------------------------------- scenes


class _Canvas:
    """Places shapes so that their bounding boxes (over all frames) never overlap."""

    def __init__(self, rng: np.random.Generator, num_frames: int):
        self.rng, self.num_frames, self.boxes = rng, num_frames, []

    def _free(self, box: tuple[int, int, int, int]) -> bool:
        x0, y0, x1, y1 = box
        return all(
            x1 + _MARGIN <= a0 or a1 + _MARGIN <= x0 or y1 + _MARGIN <= b0 or b1 + _MARGIN <= y0
            for a0, b0, a1, b1 in self.boxes
        )

    def place(self, size: int, move: tuple[int, int] = (0, 0)) -> tuple[tuple[int, int], ...] | None:
        """Centres per frame of a `size` shape moving by `move` pixels in total, or None if full."""
        dx, dy = move
        half, rest = size // 2, size - size // 2  # a shape covers [c - half, c + rest)
        for _ in range(200):
            x = int(
                self.rng.integers(_MARGIN + half - min(0, dx), IMAGE_SIZE - _MARGIN - rest - max(0, dx) + 1)
            )
            y = int(
                self.rng.integers(_MARGIN + half - min(0, dy), IMAGE_SIZE - _MARGIN - rest - max(0, dy) + 1)
            )
            box = (x - half + min(0, dx), y - half + min(0, dy), x + rest + max(0, dx), y + rest + max(0, dy))
            if self._free(box):
                self.boxes.append(box)
                steps = max(1, self.num_frames - 1)
                return tuple(
                    (x + round(dx * t / steps), y + round(dy * t / steps)) for t in range(self.num_frames)
                )
        return None


def _quadrant_centre(rng: np.random.Generator, quadrant: int, size: int) -> tuple[int, int]:
    """A centre that keeps a `size` shape inside `quadrant` (`QUADRANTS` index), `_MARGIN` inside."""
    half, mid = size // 2, IMAGE_SIZE // 2  # a shape covers [c - half, c - half + size)
    row, column = divmod(quadrant, 2)
    x0, y0 = column * mid + _MARGIN + half, row * mid + _MARGIN + half
    return int(rng.integers(x0, x0 + mid - 2 * _MARGIN - size + 1)), int(
        rng.integers(y0, y0 + mid - 2 * _MARGIN - size + 1)
    )


def quadrant_of(shape: Shape) -> str | None:
    """The quadrant (`QUADRANTS`) that holds the whole shape in every frame, or None."""
    half, rest, mid, found = shape.size // 2, shape.size - shape.size // 2, IMAGE_SIZE // 2, set()
    for cx, cy in shape.centres:
        column = 0 if cx + rest <= mid else 1 if cx - half >= mid else None
        row = 0 if cy + rest <= mid else 1 if cy - half >= mid else None
        found.add(None if row is None or column is None else QUADRANTS[2 * row + column])
    return found.pop() if len(found) == 1 else None


def area_size(shape: str, area: int) -> int:
    """The size at which `shape` covers about `area` pixels (within 3%)."""
    per_unit = {"square": 1.0, "circle": math.pi / 4, "triangle": 0.5, "cross": 5 / 9}[shape]
    return round(math.sqrt(area / per_unit))


def _add(scene: Scene, canvas: _Canvas, shape: str, colour: str, size: int, **kw) -> bool:
    visible = kw.pop("visible", tuple(range(scene.num_frames)))
    centres = canvas.place(size, **kw)
    if centres is not None:
        scene.shapes.append(Shape(shape, colour, size, centres, visible))
    return centres is not None


def make_scene(
    rng: np.random.Generator,
    qtype: str,
    value: str,
    is_video: bool,
    num_frames: int,
    colour_size: tuple[int, int] = COLOUR_SIZE,
):
    """A scene whose `qtype` question has the answer `value`, and that question's target.

    `colour_size`: [low, high) side in pixels of the one shape of a colour question.

    Returns (scene, target): the shape name (`colour`), or the (colour, shape) the question
    names (`count`, `frame`, `direction`).
    """
    if qtype not in ALL_QUESTION_TYPES:
        raise ValueError(f"unknown question type {qtype!r}; expected one of {', '.join(ALL_QUESTION_TYPES)}")
    scene = Scene(BACKGROUNDS[int(rng.integers(len(BACKGROUNDS)))], num_frames if is_video else 1, is_video)
    canvas = _Canvas(rng, scene.num_frames)
    shape = str(rng.choice(SHAPES))
    if qtype == "position":  # one static shape inside the quadrant `value`
        colour = str(rng.choice(ANSWER_COLOURS))
        size = int(rng.integers(*POSITION_SIZE))
        centre = _quadrant_centre(rng, QUADRANTS.index(value), size)
        scene.shapes.append(
            Shape(shape, colour, size, (centre,) * scene.num_frames, tuple(range(scene.num_frames)))
        )
        return scene, (colour, shape)
    if qtype == "colour":  # one shape
        _add(scene, canvas, shape, value, int(rng.integers(*colour_size)))
        return scene, shape
    colour = str(rng.choice(ANSWER_COLOURS if qtype == "count" else list(COLOURS)))
    if qtype == "count":  # `value` equal shapes
        for _ in range(int(value)):
            _add(scene, canvas, shape, colour, area_size(shape, COUNT_AREA))
    elif qtype == "frame":  # appears in frame `value` (1-based) and stays
        _add(
            scene,
            canvas,
            shape,
            colour,
            area_size(shape, FRAME_AREA),
            visible=tuple(range(int(value) - 1, num_frames)),
        )
    else:  # moves 100-200 pixels in a straight line over the video
        dist = int(rng.integers(100, 201))
        _add(
            scene,
            canvas,
            shape,
            colour,
            int(rng.integers(56, 81)),
            move=tuple(d * dist for d in _STEP[value]),
        )
    assert len(scene.shapes) >= (int(value) if qtype == "count" else 1), "the targets always fit"
    return scene, (colour, shape)


# ---------------------------------------------------------------- questions


def answer_values(qtype: str, num_frames: int = NUM_FRAMES) -> tuple[str, ...]:
    """The four options of a question type, in letter order (frames: quarters of the video)."""
    return {
        "colour": ANSWER_COLOURS,
        "count": tuple(str(i) for i in range(1, MAX_COUNT + 1)),
        "frame": tuple(str(num_frames * i // 4) for i in range(1, 5)),
        "direction": DIRECTIONS,
        "position": QUADRANTS,
    }[qtype]


def question_text(qtype: str, target) -> str:
    if qtype == "colour":
        return f"What colour is the {target}?"
    colour, shape = target
    if qtype == "count":
        return f"How many {colour} {PLURALS[shape]} are there?"
    if qtype == "frame":
        return f"In which frame does the {colour} {shape} appear?"
    if qtype == "position":
        return f"Where is the {colour} {shape}?"
    return f"Which direction does the {colour} {shape} move?"


def make_question(qtype: str, target, value: str, num_frames: int = NUM_FRAMES) -> Question:
    """The question about `target` whose answer is `value`, with its type's four options."""
    options = answer_values(qtype, num_frames)
    return Question(qtype, question_text(qtype, target), options, LETTERS[options.index(value)], value)


def prompt_text(question: str, options: list[str] | tuple[str, ...] | None = None) -> str:
    """The text after the media: multiple choice (answer: the letter) or the bare question (a word)."""
    if options is None:
        return question
    lines = [f"{letter}. {option}" for letter, option in zip(LETTERS, options, strict=True)]
    return "\n".join([question, *lines, MC_INSTRUCTION])


def scene_questions(scene: Scene) -> list[tuple[str, object, str]]:
    """Every (type, target, answer) question this scene answers under the rules of `make_scene`."""
    shapes, frames, found = scene.shapes, scene.num_frames, []
    static = [s for s in shapes if len(s.visible) == frames and s.centres[0] == s.centres[-1]]
    if len(shapes) == 1 and shapes[0].colour in ANSWER_COLOURS:
        found.append(("colour", shapes[0].shape, shapes[0].colour))
        if not scene.is_video and (quadrant := quadrant_of(shapes[0])):
            found.append(("position", (shapes[0].colour, shapes[0].shape), quadrant))
    if len(static) == len(shapes):  # counts are asked of static scenes only
        found += [q for colour in ANSWER_COLOURS if (q := _count_question(shapes, colour))]
    for s in shapes:
        if sum(o.colour == s.colour for o in shapes) != 1 or s in static:
            continue
        (x0, y0), (x1, y1) = s.centres[0], s.centres[-1]
        if (x0, y0) != (x1, y1) and len(s.visible) == frames:
            way = ("right" if x1 > x0 else "left") if x1 != x0 else ("down" if y1 > y0 else "up")
            found.append(("direction", (s.colour, s.shape), way))
        first = str(s.visible[0] + 1)
        if (x0, y0) == (x1, y1) and frames > 1 and first in answer_values("frame", frames):
            found.append(("frame", (s.colour, s.shape), first))
    return found


def _count_question(shapes: list[Shape], colour: str) -> tuple[str, object, str] | None:
    """The count question of `colour` if its shapes are 1-4 equal shapes of `COUNT_AREA` pixels."""
    same = [s for s in shapes if s.colour == colour]
    counted = {(same[0].shape, area_size(same[0].shape, COUNT_AREA))} if same else set()
    if not 1 <= len(same) <= MAX_COUNT or {(s.shape, s.size) for s in same} != counted:
        return None
    return ("count", (colour, same[0].shape), str(len(same)))


def training_example(
    rng: np.random.Generator,
    is_video: bool,
    num_frames: int,
    free_form: float,
    types: tuple[str, ...] = QUESTION_TYPES,
    colour_size: tuple[int, int] = COLOUR_SIZE,
) -> tuple[Scene, list[tuple[str, str]]]:
    """A random scene and (prompt, answer) turns for every question of `types` it answers.

    The scene is drawn for a question of uniform type (among `types` this medium can ask) and
    answer, like a data set item; the turns ask it and any other question of `types` the scene
    answers, in random order. Videos of 1 frame are fine (cheap); `free_form` is the probability
    of a free-form turn (the answer text instead of the letter); `colour_size` as in `make_scene`.
    """
    num_frames = num_frames if is_video else 1
    possible = (
        ["colour", "count"]
        + ["direction"] * (num_frames > 1)
        + ["frame"] * (num_frames >= len(LETTERS))
        + ["position"] * (not is_video)
    )
    allowed = [t for t in types if t in possible]
    if not allowed:
        raise ValueError(f"no question of {types} can be asked of {num_frames} frame(s)")
    qtype = allowed[int(rng.integers(len(allowed)))]
    values = answer_values(qtype, num_frames)
    value = values[int(rng.integers(len(values)))]
    scene, _ = make_scene(rng, qtype, value, is_video, num_frames, colour_size)
    questions = [q for q in scene_questions(scene) if q[0] in allowed]
    turns = []
    for index in rng.permutation(len(questions)):
        q = make_question(*questions[index], scene.num_frames)
        if rng.random() < free_form:
            turns.append((prompt_text(q.question), q.answer_text))
        else:
            turns.append((prompt_text(q.question, q.options), q.answer))
    return scene, turns


# ---------------------------------------------------------------- data sets


def _balanced(seed: int, name: str, j: int, n: int) -> int:
    """The j-th draw of a sequence over range(n) that is a fresh permutation every n draws."""
    perm = np.random.default_rng([seed, _tag(name), j // n]).permutation(n)
    return int(perm[j % n])


def _tag(name: str) -> int:
    return int.from_bytes(name.encode(), "little")


def make_item(
    seed: int,
    index: int,
    num_frames: int = NUM_FRAMES,
    types: tuple[str, ...] = QUESTION_TYPES,
    colour_size: tuple[int, int] = COLOUR_SIZE,
) -> Item:
    """Item `index` of the data set of `seed`: `types` cycle; answers and media balance per type
    (`position` items are images)."""
    unknown = set(types) - set(ALL_QUESTION_TYPES)
    if unknown or not types:
        raise ValueError(
            f"question types {sorted(unknown)}; expected some of {', '.join(ALL_QUESTION_TYPES)}"
        )
    qtype = types[index % len(types)]
    j = index // len(types)  # this item's rank among its type
    values = answer_values(qtype, num_frames)
    value = values[_balanced(seed, qtype + "/value", j, len(values))]
    is_video = qtype in ("frame", "direction") or (
        qtype != "position" and _balanced(seed, qtype + "/media", j, 2) == 1
    )
    rng = np.random.default_rng([seed, index])
    scene, target = make_scene(rng, qtype, value, is_video, num_frames, colour_size)
    return Item(f"syn-s{seed}-{index:06d}", scene, make_question(qtype, target, value, scene.num_frames))


def iter_items(
    seed: int,
    n: int,
    num_frames: int = NUM_FRAMES,
    types: tuple[str, ...] = QUESTION_TYPES,
    colour_size: tuple[int, int] = COLOUR_SIZE,
) -> Iterator[Item]:
    for index in range(n):
        yield make_item(seed, index, num_frames, types, colour_size)


def write_dataset(
    out_dir: Path,
    n: int,
    seed: int = 0,
    num_frames: int = NUM_FRAMES,
    types: tuple[str, ...] = QUESTION_TYPES,
    colour_size: tuple[int, int] = COLOUR_SIZE,
) -> Path:
    """Write `n` items (JSONL + PNG media) into `out_dir`; returns the JSONL path."""
    out_dir = Path(out_dir)
    (out_dir / "media").mkdir(parents=True, exist_ok=True)
    path = out_dir / "items.jsonl"
    with open(path, "w") as f:
        for index, item in enumerate(iter_items(seed, n, num_frames, types, colour_size)):
            media = _write_media(out_dir, f"media/{index:06d}", item.scene)
            f.write(json.dumps(item_record(item, media)) + "\n")
    return path


def item_record(item: Item, media: list[dict]) -> dict:
    q = item.question
    return {
        "id": item.id,
        "type": q.type,
        "media": media,
        "question": q.question,
        "options": list(q.options),
        "answer": q.answer,
        "answer_text": q.answer_text,
    }


def _write_media(root: Path, stem: str, scene: Scene) -> list[dict]:
    frames = render(scene)
    if not scene.is_video:
        Image.fromarray(frames[0]).save(root / f"{stem}.png")
        return [{"type": "image", "path": f"{stem}.png"}]
    (root / stem).mkdir(exist_ok=True)
    for t, frame in enumerate(frames):
        Image.fromarray(frame).save(root / stem / f"{t:02d}.png")
    return [{"type": "video", "path": stem}]


def read_dataset(path: Path) -> list[dict]:
    """The items of a JSONL file (blank lines ignored); raises ValueError on a malformed item."""
    items = []
    for number, line in enumerate(Path(path).read_text().splitlines(), 1):
        if not line.strip():
            continue
        item = json.loads(line)
        missing = {"id", "media", "question", "options", "answer"} - item.keys()
        if missing or item["answer"] not in LETTERS[: len(item["options"])]:
            raise ValueError(f"{path}:{number}: item needs {sorted(missing)} and a valid answer letter")
        items.append(item)
    return items


def load_media(entry: dict, root: Path) -> Image.Image | np.ndarray:
    """An image entry as a PIL RGB image; a video entry as frames [F, H, W, 3] uint8."""
    path = Path(root) / entry["path"]
    if entry["type"] == "image":
        return Image.open(path).convert("RGB")
    if entry["type"] != "video":
        raise ValueError(f"media type {entry['type']!r}; expected 'image' or 'video'")
    if path.suffix == ".npy":
        return np.load(path)
    frames = sorted(path.glob("*.png"))
    return np.stack([np.asarray(Image.open(f).convert("RGB")) for f in frames])
