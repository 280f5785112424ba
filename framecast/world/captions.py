"""The built-in world's closed caption grammar and vocabulary.

    "a red circle moving right"
    "a red circle moving right and a blue square moving down"

`tokenize` maps a prompt to ids over `VOCABULARY` ("<pad>" = 0, "</s>" = 1); a word outside the
vocabulary raises `UnknownWordsError` naming the first few unknown words, in prompt order (never
silently dropped; at most `NAMED_UNKNOWN`, each cut to `NAMED_CHARS` characters, then "and N more").
`parse_prompt` reads the grammar back into `ObjectSpec`s; `caption` writes it. A prompt names at
most `MAX_OBJECTS` objects, in distinct colours (the metrics find objects by colour).
"""
from __future__ import annotations

import re
from dataclasses import dataclass

COLOURS = ("red", "green", "blue", "yellow", "magenta", "cyan")
SHAPES = ("circle", "square", "triangle")
DIRECTIONS = ("left", "right", "up", "down")
ACTIONS = ("none", "up", "down", "left", "right")
MAX_OBJECTS = 2  # a world clip holds 1-2 shapes; also what fits in 16 tokens (11 words + "</s>")
VOCABULARY = ("<pad>", "</s>", "a", "an", "and", "moving", "the", "player", "white") + COLOURS + SHAPES + DIRECTIONS \
    + ("none", "still")
WORD_IDS = {w: i for i, w in enumerate(VOCABULARY)}
NAMED_UNKNOWN = 5  # an error names this many unknown words; a prompt may hold thousands
NAMED_CHARS = 24  # and quotes at most this much of each


class UnknownWordsError(ValueError):
    """A prompt uses words the built-in world does not know."""


@dataclass(frozen=True)
class ObjectSpec:
    colour: str
    shape: str
    direction: str


def words(prompt: str) -> list[str]:
    return [w for w in re.split(r"[\s,.;!?]+", prompt.lower()) if w]


def tokenize(prompt: str, max_len: int = 16) -> list[int]:
    ws = words(prompt)
    unknown = list(dict.fromkeys(w for w in ws if w not in WORD_IDS))  # first-seen order, linear time
    if unknown:
        named = ", ".join(repr(w) if len(w) <= NAMED_CHARS else repr(w[:NAMED_CHARS]) + "..."
                          for w in unknown[:NAMED_UNKNOWN])
        more = f" and {len(unknown) - NAMED_UNKNOWN} more" if len(unknown) > NAMED_UNKNOWN else ""
        raise UnknownWordsError(f"the built-in world does not know the word(s) {named}{more}; "
                                f"known words: {' '.join(VOCABULARY[2:])}")
    ids = [WORD_IDS[w] for w in ws] + [1]
    if len(ids) > max_len:
        raise ValueError(f"prompt has {len(ids) - 1} words; at most {max_len - 1} fit the text encoder")
    return ids + [0] * (max_len - len(ids))


def parse_prompt(prompt: str) -> list[ObjectSpec]:
    """'a red circle moving right and a blue square moving down' -> [ObjectSpec, ObjectSpec]."""
    tokenize(prompt, max_len=64)  # unknown words first
    specs = []
    for part in " ".join(words(prompt)).split(" and "):
        m = re.fullmatch(r"(?:a|an|the) (\w+) (\w+) moving (\w+)", part.strip())
        if not m or m.group(1) not in COLOURS or m.group(2) not in SHAPES or m.group(3) not in DIRECTIONS:
            raise ValueError(f"cannot parse {part.strip()!r}; expected 'a COLOUR SHAPE moving DIRECTION' "
                             f"(colours {', '.join(COLOURS)}; shapes {', '.join(SHAPES)}; "
                             f"directions {', '.join(DIRECTIONS)})")
        specs.append(ObjectSpec(*m.groups()))
    if len(specs) > MAX_OBJECTS:
        raise ValueError(f"the prompt names {len(specs)} objects; the built-in world holds at most {MAX_OBJECTS}")
    colours = [s.colour for s in specs]
    if len(set(colours)) != len(colours):
        raise ValueError(f"the prompt names the colour {max(colours, key=colours.count)!r} twice; "
                         f"objects in one clip have distinct colours")
    return specs


def caption(specs: list[ObjectSpec]) -> str:
    """[ObjectSpec, ...] -> 'a red circle moving right and a blue square moving down'."""
    return " and ".join(f"a {s.colour} {s.shape} moving {s.direction}" for s in specs)
