"""Which language a text is written in: for reasoning answers (usage records) and for the
language reward of reinforcement fine-tuning.

The identifier is py3langid (a retrained langid.py, whose model ships inside its wheel):
measured beside lingua on short EN/FR/DE/ES/IT sentences it was as accurate (20/20 each)
and faster (0.036 against 0.052 ms a text). LaTeX, code and numbers say nothing about a
language and are taken out first; what is left must have a few words, else the language is
unknown (None), never a guess.
"""

from __future__ import annotations

import os
import re
import threading
from typing import Any

MIN_LETTERS = 12  # fewer letters than this: no language is claimed
MAX_CHARS = 2000  # the first part of a long text says its language as well as all of it

_FENCED = re.compile(r"```.*?(?:```|\Z)", re.S)
_INLINE_CODE = re.compile(r"`[^`\n]*`")
_DISPLAY_MATH = re.compile(r"\$\$.*?\$\$|\\\[.*?\\\]|\\\(.*?\\\)", re.S)
_INLINE_MATH = re.compile(r"\$[^$\n]*\$")
_COMMAND = re.compile(r"\\[a-zA-Z]+\*?(\{[^{}]*\})?")
_NOT_WORDS = re.compile(r"[\d_=+\-*/^<>|{}\[\]()#~\\]+")
_LETTER = re.compile(r"[^\W\d_]", re.U)

_lock = threading.Lock()
_identifier: Any = None


def prose(text: str) -> str:
    """The text without code, LaTeX, markup and numbers."""
    text = _FENCED.sub(" ", text[: MAX_CHARS * 2])
    text = _INLINE_CODE.sub(" ", text)
    text = _DISPLAY_MATH.sub(" ", text)
    text = _INLINE_MATH.sub(" ", text)
    text = _COMMAND.sub(" ", text)
    text = _NOT_WORDS.sub(" ", text)
    return " ".join(text.split())[:MAX_CHARS]


def identify(text: str | None) -> str | None:
    """ISO 639-1 code of the text's language, or None when there is too little prose."""
    if not text:
        return None
    words = prose(text)
    if len(_LETTER.findall(words)) < MIN_LETTERS:
        return None
    language, _ = _model().classify(words)
    return str(language)


def agree(*languages: str | None) -> bool | None:
    """Whether the known languages are one; None when fewer than two are known."""
    known = {lang for lang in languages if lang}
    if len([lang for lang in languages if lang]) < 2:
        return None
    return len(known) == 1


def _model() -> Any:
    global _identifier
    if _identifier is None:
        with _lock:
            if _identifier is None:
                import py3langid
                from py3langid.langid import MODEL_FILE, LanguageIdentifier

                path = os.path.join(os.path.dirname(py3langid.__file__), MODEL_FILE)
                _identifier = LanguageIdentifier.from_modelpath(path, norm_probs=False)
    return _identifier
