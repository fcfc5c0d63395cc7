"""A toy word-level n-gram language model, trained at start-up on text shipped in this repository.

It is not a neural LLM: it counts which word follows which pair of words in the project's own
markdown docs and samples from those counts, with backoff to shorter contexts for pairs it has
never seen. That is enough to stream plausible-looking tokens one by one, with real timing,
without downloading anything.

    model = NgramModel.train(corpus_text(DEFAULT_CORPUS))
    for token in model.generate("How do traces reach the store?", max_tokens=30, rng=random.Random(1)):
        print(token.text, end="")

API
    ``tokenize(text)``          words (letters, digits, ``'``, ``-``, ``_``) and sentence punctuation.
    ``clean_markdown(text)``    the prose of a markdown file: no code blocks, links keep their text.
    ``corpus_text(paths)``      the cleaned text of files (relative to the repository root).
    ``NgramModel.train(text, order=3)``    counts of every context of length order-1 down to 0.
    ``model.generate(prompt, max_tokens, rng, temperature)``  an iterator of ``Token`` (text, word, finish).
    ``detokenize(words)``       the text of a list of words (no space before punctuation).
"""

from __future__ import annotations

import random
import re
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
#: The project's own docs: README.md, the telemetry contract and the analyzer's README.
DEFAULT_CORPUS: tuple[str, ...] = ("README.md", "generator/TELEMETRY.md", "analyzer/README.md")

BOS = "<s>"  # the start of a sentence (context padding, never emitted)
EOS = "</s>"  # the end of a sentence (ends a generation with finish reason "stop")
SENTENCE_END = frozenset({".", "!", "?"})
PUNCTUATION = frozenset({".", ",", ";", ":", "!", "?"})

_TOKEN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_'-]*[A-Za-z0-9]|[A-Za-z0-9]|[.,;:!?]")
_FENCE = re.compile(r"^\s*(```|~~~)")
_LINK = re.compile(r"!?\[([^\]]*)\]\([^)]*\)")
_INLINE_CODE = re.compile(r"`[^`]*`")
_HTML = re.compile(r"<[^>]+>")
_URL = re.compile(r"https?://\S+")
_BLOCK_START = re.compile(r"^(#|[-*+] |\d+[.)] |>|\|)")


def tokenize(text: str) -> list[str]:
    """Words and the punctuation that ends or splits a sentence (one mark where several follow each
    other, as in ``e.g.,``); everything else is dropped."""
    tokens: list[str] = []
    for token in _TOKEN.findall(text):
        if token in PUNCTUATION and (not tokens or tokens[-1] in PUNCTUATION):
            continue
        tokens.append(token)
    return tokens


def clean_markdown(text: str) -> str:
    """The prose of a markdown document, one block (paragraph, heading, list item, table row) per
    line, each ending a sentence: fenced code, inline code, URLs, HTML and table rules go, a link
    keeps its text, and a paragraph's wrapped lines join again."""
    blocks: list[str] = []
    current: list[str] = []

    def close() -> None:
        block = " ".join(current).strip().rstrip(",;:")
        current.clear()
        if any(c.isalnum() for c in block):
            blocks.append(block if block[-1] in SENTENCE_END else block + ".")

    in_fence = False
    for raw in text.splitlines():
        if _FENCE.match(raw):
            in_fence = not in_fence
            close()
            continue
        if in_fence:
            continue
        line = _URL.sub(" ", _HTML.sub(" ", _INLINE_CODE.sub(" ", _LINK.sub(r"\1", raw)))).strip()
        if not line:
            close()
            continue
        if _BLOCK_START.match(line):  # a heading, list item, quote or table row starts a block
            close()
        current.append(line.replace("|", " ").lstrip("#>*-+ \t"))
    close()
    return "\n".join(blocks)


def corpus_text(paths: Iterable[str | Path], root: Path = ROOT) -> str:
    """The cleaned text of the files (relative to ``root`` unless absolute); a missing file is an error."""
    texts = []
    for p in paths:
        path = Path(p) if Path(p).is_absolute() else root / p
        texts.append(clean_markdown(path.read_text(encoding="utf-8")))
    return "\n".join(texts)


def sentences(tokens: Sequence[str]) -> Iterator[list[str]]:
    """Split a token stream after each sentence end."""
    current: list[str] = []
    for token in tokens:
        current.append(token)
        if token in SENTENCE_END:
            yield current
            current = []
    if current:
        yield current


def detokenize(words: Iterable[str]) -> str:
    out = ""
    for word in words:
        out += word if (not out or word in PUNCTUATION) else " " + word
    return out


@dataclass(frozen=True)
class Token:
    """One generated token: ``text`` is what to stream (with its leading space), ``word`` the token
    itself, ``finish`` the finish reason on the last token (``stop`` or ``length``), else None."""

    text: str
    word: str
    finish: str | None = None


@dataclass
class NgramModel:
    """Counts of the next word after every context of 0 to ``order - 1`` words (Katz-style backoff
    without discounting: the longest context seen in training decides)."""

    order: int
    counts: dict[tuple[str, ...], Counter[str]] = field(default_factory=dict)
    vocabulary: frozenset[str] = frozenset()

    @classmethod
    def train(cls, text: str, order: int = 3) -> NgramModel:
        if order < 1:
            raise ValueError(f"order must be at least 1, got {order}")
        counts: dict[tuple[str, ...], Counter[str]] = {}
        vocabulary: set[str] = set()
        for sentence in sentences(tokenize(text)):
            vocabulary.update(sentence)
            padded = [BOS] * (order - 1) + sentence + [EOS]
            for i in range(order - 1, len(padded)):
                word = padded[i]
                for n in range(order):  # contexts of n words before it
                    context = tuple(padded[i - n:i])
                    counts.setdefault(context, Counter())[word] += 1
        if not vocabulary:
            raise ValueError("the corpus has no words")
        return cls(order=order, counts=counts, vocabulary=frozenset(vocabulary))

    def distribution(self, history: Sequence[str]) -> Counter[str]:
        """The next-word counts of the longest suffix of ``history`` seen in training (backoff)."""
        padded = [BOS] * (self.order - 1) + list(history)
        for n in range(self.order - 1, -1, -1):
            context = tuple(padded[len(padded) - n:]) if n else ()
            found = self.counts.get(context)
            if found:
                return found
        raise AssertionError("the empty context always has counts")  # train() guarantees it

    def sample(self, history: Sequence[str], rng: random.Random, temperature: float = 1.0) -> str:
        dist = self.distribution(history)
        words = sorted(dist)  # a fixed order: the same seed gives the same text
        if temperature <= 0:
            return max(words, key=lambda w: (dist[w], w))
        weights = [dist[w] ** (1.0 / temperature) for w in words]
        return rng.choices(words, weights=weights, k=1)[0]

    def context_of(self, prompt: str) -> list[str]:
        """The prompt's last words that the model knows, as the start of the answer's context; a
        prompt that ends a sentence (a question) makes the answer start a new one."""
        known = [t for t in tokenize(prompt) if t in self.vocabulary]
        if not known or known[-1] in SENTENCE_END:
            return []
        return known[-(self.order - 1):] if self.order > 1 else []

    def generate(self, prompt: str, max_tokens: int, rng: random.Random, temperature: float = 1.0) -> Iterator[Token]:
        """Tokens one at a time, each drawn when it is asked for: up to ``max_tokens``, ending early
        (finish ``stop``) when a sentence ends after at least a third of them."""
        if max_tokens < 1:
            return
        history = self.context_of(prompt)
        emitted: list[str] = []
        while True:
            word = self.sample(history, rng, temperature)
            if word == EOS or (not emitted and word in PUNCTUATION):  # an answer starts with a word
                history = []
                continue
            emitted.append(word)
            history = [] if word in SENTENCE_END or self.order == 1 else (history + [word])[-(self.order - 1):]
            text = word if (len(emitted) == 1 or word in PUNCTUATION) else " " + word
            if len(emitted) >= max_tokens:
                yield Token(text, word, "length")
                return
            if word in SENTENCE_END and len(emitted) >= max(1, max_tokens // 3):
                yield Token(text, word, "stop")
                return
            yield Token(text, word)
