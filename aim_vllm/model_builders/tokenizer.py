"""A small byte-level BPE tokenizer trained locally, with a ChatML chat template.

Every model built offline by this project shares it: no hub access is needed. Byte-level BPE
encodes any text; the corpus below only decides which merges exist. The vocabulary can be padded
with never-produced filler entries up to a published model's vocabulary size, so real-shape
models (dummy weights) can decode any id they sample.
"""

from __future__ import annotations

import itertools

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

IM_START, IM_END, END_OF_TEXT = "<|im_start|>", "<|im_end|>", "<|endoftext|>"

# ChatML with string content. vLLM renders OpenAI content parts for a string-content template by
# putting the model's placeholder (<image>, <video>) before the text, one line each.
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)

_COLOURS = ["red", "green", "blue", "yellow", "purple", "orange", "white", "black", "pink", "cyan"]
_SHAPES = ["square", "circle", "triangle", "star", "cross", "ring"]
_WORDS = (
    "what which how many where is are the a an of in on at to from this that image video frame "
    "colour color shape count moving moves left right up down first last answer question yes no "
    "describe see there one two three four five six seven eight nine ten you can please tell me "
    "system user assistant helpful and or with it its object objects background picture"
).split()


def _corpus() -> list[str]:
    """Deterministic sentences covering the words the demos and tests use."""
    lines = [" ".join(_WORDS)]
    for colour, shape in itertools.product(_COLOURS, _SHAPES):
        lines.append(f"What colour is the {shape}? The {shape} is {colour}.")
        lines.append(f"How many {colour} {shape}s are there? There are 3 {colour} {shape}s.")
        lines.append(f"Where does the {colour} {shape} move? It moves left, then right, up and down.")
    lines += [f"Answer with the letter: (A) {a} (B) {b}" for a, b in zip(_COLOURS, _SHAPES, strict=False)]
    lines.append("0123456789 .,:;!?()[]{}'\"-+*/=<>")
    return lines


def build_tokenizer(
    vocab_size: int = 1024, pad_to: int | None = None, extra_special_tokens: tuple[str, ...] = ()
) -> Tokenizer:
    """Train the BPE tokenizer; special tokens are `special_tokens(extra_special_tokens)` in this order.

    Args:
        vocab_size: size of the trained vocabulary (specials and byte alphabet included).
        pad_to: if given, append filler entries so the vocabulary has exactly this many ids.
        extra_special_tokens: a model's own special tokens (e.g. Qwen2.5-VL's `<|vision_start|>`),
            given ids right after the shared ones; none leaves the tokenizer exactly as before.
    """
    specials = special_tokens(extra_special_tokens)
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(_corpus(), trainer=trainer)
    if pad_to is not None:
        tokenizer = _pad_vocab(tokenizer, pad_to, specials)
    return tokenizer


def special_tokens(extra: tuple[str, ...] = ()) -> list[str]:
    return [END_OF_TEXT, IM_START, IM_END, "<image>", "<video>", *extra]


def _pad_vocab(tokenizer: Tokenizer, size: int, specials: list[str]) -> Tokenizer:
    """Rebuild the BPE model with filler entries `<|filler_i|>` up to `size` ids (never produced)."""
    vocab = tokenizer.get_vocab()
    if size < len(vocab):
        raise ValueError(f"cannot pad a vocabulary of {len(vocab)} down to {size}")
    vocab.update({f"<|filler_{i}|>": i for i in range(len(vocab), size)})
    merges = _merges(tokenizer)
    padded = Tokenizer(models.BPE(vocab=vocab, merges=merges))
    padded.pre_tokenizer = tokenizer.pre_tokenizer
    padded.decoder = tokenizer.decoder
    padded.add_special_tokens(specials)
    return padded


def _merges(tokenizer: Tokenizer) -> list[tuple[str, str]]:
    import json

    model = json.loads(tokenizer.to_str())["model"]
    return [tuple(m.split(" ", 1)) if isinstance(m, str) else tuple(m) for m in model["merges"]]
