"""Small math problems with exact answers, in English, French, German, Spanish and Italian:
data for reinforcement fine-tuning (and its cold start) that a tenant can upload.

    python -m souverain.training.mathgen --split train --count 400 [--worked] [--skip N]
        [--level 0,1,2]
    souverain datasets math --split heldout --count 100 > heldout.jsonl
    souverain datasets math --split heldout-templates --count 50 >> heldout.jsonl

Deterministic: the same split, count and seed give the same file. The splits never share a
problem (each problem is drawn from a generator seeded by split and index, and a problem
whose text also occurs in another split of the same templates is skipped). Problems are
made from templates (a phrasing per kind and language): `train` and `heldout` share theirs
(the held-out change then measures the same phrasing on new numbers), `heldout-templates`
uses templates no other split uses (it measures whether what was learnt carries over to a
phrasing never trained on, rather than memorised wording). Each line is a chat with a
user task and an `answer` field (an integer), plus `language`, `kind` and `template` (the
template's name, the same in every language: a GRPO job reports its held-out prompts
apart by whether their template is in its training file); `--worked` adds the assistant's
reply: its thinking inside `<think>…</think>`, then the answer with its result in
`\\boxed{}`, both in the task's language (the cold-start examples of the Magistral recipe).

Difficulty levels (`--level`, a level or a comma-separated mix drawn in turn), so that a
reinforcement job's prompts can sit in the band where a small model sometimes succeeds
(a group whose completions are all wrong teaches nothing):

- 0: sums of two one-digit numbers (word problems: gains of one-digit counts);
- 1: one-digit sums and differences (gains and losses);
- 2: a two-digit and a one-digit operand, sums and differences;
- 3 (the default): two-digit sums and differences, products up to 12 × 12, word problems
  with counts up to 40. Its output is the same as before levels existed, byte for byte.

A line of a level below 3 carries a `level` field. The small levels have few distinct
problems (level 0: about 1,600 over both splits and all languages), so their train and
held-out splits are kept apart by a hash of the question (a fifth of the problems belong
to the held-out split) rather than by looking ahead in the other split, and they leave
out the other split's default-level questions (which can be the same text); asking for
more problems than a level has is an error, not an endless search.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import random
import sys
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from souverain.core.reasoning import SYSTEM_PROMPT

LANGUAGES = ("en", "fr", "de", "es", "it")
SPLITS = ("train", "heldout", "heldout-templates")
# The template set each split draws from: "seen" is the training phrasing, "unseen" one no
# training file of this generator holds.
SPLIT_TEMPLATES = {"train": "seen", "heldout": "seen", "heldout-templates": "unseen"}
TEMPLATES = {"seen": ("arithmetic-1", "word-1"), "unseen": ("arithmetic-2", "word-2")}
LEVELS = (0, 1, 2, 3)
DEFAULT_LEVEL = 3


@dataclass(frozen=True)
class Problem:
    language: str
    kind: str
    question: str
    thinking: str
    answer_text: str
    answer: int
    template: str  # its template's name (TEMPLATES)
    level: int = DEFAULT_LEVEL

    def chat(self, *, worked: bool, system: str | None = None) -> dict[str, Any]:
        messages: list[dict[str, str]] = []
        if system:
            messages.append({"role": "system", "content": system})
        messages.append({"role": "user", "content": self.question})
        if worked:
            messages.append(
                {
                    "role": "assistant",
                    "content": f"<think>\n{self.thinking}\n</think>\n\n{self.answer_text}",
                }
            )
        line: dict[str, Any] = {
            "messages": messages,
            "answer": str(self.answer),
            "language": self.language,
            "kind": self.kind,
            "template": self.template,
        }
        if self.level != DEFAULT_LEVEL:  # the default's lines stay as they always were
            line["level"] = self.level
        return line


# Per language: (question, thinking, answer) templates. {a} {b} {c} numbers, {r} result.
_ARITHMETIC = {
    "en": ("Please work out how much {a} {op} {b} is, and give the result.", "I need to compute {a} {op} {b}. {step} So the result is {r}.",
           "{a} {op} {b} = {r}, so the answer is $\\boxed{{{r}}}$."),
    "fr": ("Calculez combien font {a} {op} {b}, et donnez le résultat.", "Je dois calculer {a} {op} {b}. {step} Le résultat est donc {r}.",
           "{a} {op} {b} = {r}, donc la réponse est $\\boxed{{{r}}}$."),
    "de": ("Rechne bitte aus, wie viel {a} {op} {b} ist, und nenne das Ergebnis.", "Ich muss {a} {op} {b} berechnen. {step} Das Ergebnis ist also {r}.",
           "{a} {op} {b} = {r}, also lautet die Antwort $\\boxed{{{r}}}$."),
    "es": ("Calcula cuánto es {a} {op} {b} y da el resultado, por favor.", "Tengo que calcular {a} {op} {b}. {step} Entonces el resultado es {r}.",
           "{a} {op} {b} = {r}, así que la respuesta es $\\boxed{{{r}}}$."),
    "it": ("Calcola quanto fa {a} {op} {b} e scrivi il risultato, per favore.", "Devo calcolare {a} {op} {b}. {step} Quindi il risultato è {r}.",
           "{a} {op} {b} = {r}, quindi la risposta è $\\boxed{{{r}}}$."),
}  # fmt: skip
_STEP = {
    "+": {"en": "Adding {b} to {a} gives {r}.", "fr": "En ajoutant {b} à {a}, on obtient {r}.",
          "de": "Wenn ich {b} zu {a} addiere, erhalte ich {r}.", "es": "Sumando {b} a {a} se obtiene {r}.",
          "it": "Sommando {b} a {a} si ottiene {r}."},
    "-": {"en": "Taking {b} away from {a} leaves {r}.", "fr": "En retirant {b} de {a}, il reste {r}.",
          "de": "Wenn ich {b} von {a} abziehe, bleiben {r}.", "es": "Quitando {b} de {a} quedan {r}.",
          "it": "Togliendo {b} da {a} restano {r}."},
    "×": {"en": "Multiplying {a} by {b} gives {r}.", "fr": "En multipliant {a} par {b}, on obtient {r}.",
          "de": "Wenn ich {a} mit {b} multipliziere, erhalte ich {r}.", "es": "Multiplicando {a} por {b} se obtiene {r}.",
          "it": "Moltiplicando {a} per {b} si ottiene {r}."},
}  # fmt: skip
# The unseen set's arithmetic questions (the thinking and answer are the seen set's).
_ARITHMETIC_UNSEEN = {
    "en": "What number do you get when you compute {a} {op} {b}? Give that number.",
    "fr": "Quel nombre obtient-on en effectuant le calcul {a} {op} {b} ? Indiquez ce nombre.",
    "de": "Welche Zahl erhält man, wenn man {a} {op} {b} rechnet? Gib diese Zahl an.",
    "es": "¿Qué número se obtiene al hacer la operación {a} {op} {b}? Indica ese número.",
    "it": "Quale numero si ottiene facendo il calcolo {a} {op} {b}? Indica quel numero.",
}
# Word problems: someone has a things, gets b more (or gives b away); how many now?
_NAMES = {"en": ("Anna", "Tom", "Sara"), "fr": ("Léa", "Hugo", "Camille"),
          "de": ("Lena", "Jonas", "Mia"), "es": ("Lucía", "Pablo", "Sofía"),
          "it": ("Giulia", "Marco", "Sofia")}  # fmt: skip
_WORD: dict[str, dict[str, Any]] = {
    "en": {"gain": ("{n} has {a} apples and buys {b} more. How many apples does {n} have now?",
                    "{n} starts with {a} apples and buys {b} more, so I add: {a} + {b} = {r}."),
           "loss": ("{n} has {a} apples and gives {b} to a friend. How many apples does {n} have left?",
                    "{n} starts with {a} apples and gives away {b}, so I subtract: {a} - {b} = {r}."),
           "answer": "In the end {n} has {r} apples, so the answer is $\\boxed{{{r}}}$."},
    "fr": {"gain": ("{n} a {a} pommes et en achète {b} de plus. Combien de pommes {n} a-t-elle maintenant ?",
                    "{n} commence avec {a} pommes et en achète {b}, donc j'additionne : {a} + {b} = {r}."),
           "loss": ("{n} a {a} pommes et en donne {b} à une amie. Combien de pommes reste-t-il à {n} ?",
                    "{n} commence avec {a} pommes et en donne {b}, donc je soustrais : {a} - {b} = {r}."),
           "answer": "À la fin, {n} a {r} pommes, donc la réponse est $\\boxed{{{r}}}$."},
    "de": {"gain": ("{n} hat {a} Äpfel und kauft {b} dazu. Wie viele Äpfel hat {n} jetzt?",
                    "{n} hat zuerst {a} Äpfel und kauft {b} dazu, also addiere ich: {a} + {b} = {r}."),
           "loss": ("{n} hat {a} Äpfel und schenkt {b} einer Freundin. Wie viele Äpfel hat {n} noch?",
                    "{n} hat zuerst {a} Äpfel und verschenkt {b}, also subtrahiere ich: {a} - {b} = {r}."),
           "answer": "Am Ende hat {n} {r} Äpfel, also lautet die Antwort $\\boxed{{{r}}}$."},
    "es": {"gain": ("{n} tiene {a} manzanas y compra {b} más. ¿Cuántas manzanas tiene {n} ahora?",
                    "{n} empieza con {a} manzanas y compra {b} más, así que sumo: {a} + {b} = {r}."),
           "loss": ("{n} tiene {a} manzanas y le da {b} a una amiga. ¿Cuántas manzanas le quedan a {n}?",
                    "{n} empieza con {a} manzanas y regala {b}, así que resto: {a} - {b} = {r}."),
           "answer": "Al final {n} tiene {r} manzanas, así que la respuesta es $\\boxed{{{r}}}$."},
    "it": {"gain": ("{n} ha {a} mele e ne compra altre {b}. Quante mele ha {n} adesso?",
                    "{n} parte da {a} mele e ne compra {b}, quindi sommo: {a} + {b} = {r}."),
           "loss": ("{n} ha {a} mele e ne regala {b} a un'amica. Quante mele restano a {n}?",
                    "{n} parte da {a} mele e ne regala {b}, quindi sottraggo: {a} - {b} = {r}."),
           "answer": "Alla fine {n} ha {r} mele, quindi la risposta è $\\boxed{{{r}}}$."},
}  # fmt: skip

# The unseen set's word problems: books given or sold, asked another way.
_WORD_UNSEEN: dict[str, dict[str, Any]] = {
    "en": {"gain": ("{n} owns {a} books and is given {b} more as a present. How many books does {n} own now?",
                    "{n} owns {a} books and is given {b} more, so I add: {a} + {b} = {r}."),
           "loss": ("{n} owns {a} books and sells {b} of them. How many books does {n} still own?",
                    "{n} owns {a} books and sells {b}, so I subtract: {a} - {b} = {r}."),
           "answer": "Now {n} owns {r} books, so the answer is $\\boxed{{{r}}}$."},
    "fr": {"gain": ("{n} possède {a} livres et en reçoit {b} de plus en cadeau. Combien de livres possède {n} maintenant ?",
                    "{n} possède {a} livres et en reçoit {b} de plus, donc j'additionne : {a} + {b} = {r}."),
           "loss": ("{n} possède {a} livres et en vend {b}. Combien de livres reste-t-il à {n} ?",
                    "{n} possède {a} livres et en vend {b}, donc je soustrais : {a} - {b} = {r}."),
           "answer": "Maintenant, {n} possède {r} livres, donc la réponse est $\\boxed{{{r}}}$."},
    "de": {"gain": ("{n} besitzt {a} Bücher und bekommt {b} weitere geschenkt. Wie viele Bücher besitzt {n} jetzt?",
                    "{n} besitzt {a} Bücher und bekommt {b} weitere, also addiere ich: {a} + {b} = {r}."),
           "loss": ("{n} besitzt {a} Bücher und verkauft {b} davon. Wie viele Bücher besitzt {n} noch?",
                    "{n} besitzt {a} Bücher und verkauft {b} davon, also subtrahiere ich: {a} - {b} = {r}."),
           "answer": "Jetzt besitzt {n} noch {r} Bücher, also lautet die Antwort $\\boxed{{{r}}}$."},
    "es": {"gain": ("{n} tiene {a} libros y le regalan {b} más. ¿Cuántos libros tiene {n} ahora?",
                    "{n} tiene {a} libros y le regalan {b} más, así que sumo: {a} + {b} = {r}."),
           "loss": ("{n} tiene {a} libros y vende {b} de ellos. ¿Cuántos libros le quedan a {n}?",
                    "{n} tiene {a} libros y vende {b}, así que resto: {a} - {b} = {r}."),
           "answer": "Ahora {n} tiene {r} libros, así que la respuesta es $\\boxed{{{r}}}$."},
    "it": {"gain": ("{n} possiede {a} libri e ne riceve altri {b} in regalo. Quanti libri possiede {n} adesso?",
                    "{n} possiede {a} libri e ne riceve altri {b}, quindi sommo: {a} + {b} = {r}."),
           "loss": ("{n} possiede {a} libri e ne vende {b}. Quanti libri restano a {n}?",
                    "{n} possiede {a} libri e ne vende {b}, quindi sottraggo: {a} - {b} = {r}."),
           "answer": "Ora {n} possiede {r} libri, quindi la risposta è $\\boxed{{{r}}}$."},
}  # fmt: skip


def _small_operands(rng: random.Random, level: int, op: str) -> tuple[int, int]:
    """Operands of levels 0–2 for `op` (+ or -); a difference is never negative."""
    if level == 2:
        return rng.randint(10, 99), rng.randint(1, 9)
    a, b = rng.randint(1, 9), rng.randint(1, 9)
    return (b, a) if op == "-" and b > a else (a, b)


def _arithmetic(
    rng: random.Random, language: str, unseen: bool, level: int = DEFAULT_LEVEL
) -> Problem:
    if level < DEFAULT_LEVEL:
        op = "+" if level == 0 else rng.choice(["+", "-"])
        a, b = _small_operands(rng, level, op)
        r = a + b if op == "+" else a - b
    elif (op := rng.choice(["+", "-", "×"])) == "×":
        a, b = rng.randint(2, 12), rng.randint(2, 12)
        r = a * b
    else:
        a, b = rng.randint(10, 99), rng.randint(2, 60)
        if op == "-" and b > a:
            a, b = b, a
        r = a + b if op == "+" else a - b
    question, thinking, answer = _ARITHMETIC[language]
    question = _ARITHMETIC_UNSEEN[language] if unseen else question
    fill = {"a": a, "b": b, "op": op, "r": r}
    step = _STEP[op][language].format(**fill)
    return Problem(
        language,
        "arithmetic",
        question.format(**fill),
        thinking.format(**fill, step=step),
        answer.format(**fill),
        r,
        TEMPLATES["unseen" if unseen else "seen"][0],
        level,
    )


def _word(rng: random.Random, language: str, unseen: bool, level: int = DEFAULT_LEVEL) -> Problem:
    if level < DEFAULT_LEVEL:
        kind = "gain" if level == 0 else rng.choice(["gain", "loss"])
        a, b = _small_operands(rng, level, "+" if kind == "gain" else "-")
    else:
        kind = rng.choice(["gain", "loss"])
        a, b = rng.randint(3, 40), rng.randint(1, 20)
        if kind == "loss" and b >= a:
            a, b = b + rng.randint(1, 10), a
    r = a + b if kind == "gain" else a - b
    fill = {"n": rng.choice(_NAMES[language]), "a": a, "b": b, "r": r}
    table = _WORD_UNSEEN[language] if unseen else _WORD[language]
    question, thinking = table[kind]
    return Problem(
        language,
        "word",
        question.format(**fill),
        thinking.format(**fill),
        table["answer"].format(**fill),
        r,
        TEMPLATES["unseen" if unseen else "seen"][1],
        level,
    )


_KINDS: tuple[Callable[[random.Random, str, bool, int], Problem], ...] = (_arithmetic, _word)
_MISSES = 20_000  # draws in a row that bring no new problem: the level is exhausted


def _draw(split: str, index: int, seed: int, level: int = DEFAULT_LEVEL) -> Problem:
    key = f"{seed}:{split}:{index}" + ("" if level == DEFAULT_LEVEL else f":{level}")
    digest = hashlib.sha256(key.encode()).digest()
    rng = random.Random(int.from_bytes(digest[:8], "big"))  # noqa: S311 - data, not secrets
    language = LANGUAGES[index % len(LANGUAGES)]
    return rng.choice(_KINDS)(rng, language, SPLIT_TEMPLATES[split] == "unseen", level)


def parse_levels(text: str) -> tuple[int, ...]:
    """'0,1,2' → (0, 1, 2); a clear error for anything but levels of LEVELS."""
    try:
        levels = tuple(int(part) for part in text.split(","))
    except ValueError:
        raise ValueError(f"levels are comma-separated integers among {LEVELS}") from None
    if not levels or any(level not in LEVELS for level in levels):
        raise ValueError(f"levels must be among {LEVELS}, got {text!r}")
    return levels


def problems(
    split: str, count: int, *, seed: int = 0, levels: Sequence[int] = (DEFAULT_LEVEL,)
) -> Iterator[Problem]:
    """`count` distinct problems of `split`, none of which occurs in another split (the
    splits of other templates cannot share a question: their wording differs); with
    several `levels`, draw i is of level levels[i % len(levels)]."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}")
    if not levels or any(level not in LEVELS for level in levels):
        raise ValueError(f"levels must be among {LEVELS}")
    others = [s for s in SPLITS if s != split and SPLIT_TEMPLATES[s] == SPLIT_TEMPLATES[split]]
    seen: set[str] = set()
    index = misses = 0
    while len(seen) < count:
        problem = _draw(split, index, seed, levels[index % len(levels)])
        index += 1
        if problem.question in seen or any(_belongs_to(o, problem, seed) for o in others):
            misses += 1
            if misses > _MISSES:
                raise ValueError(
                    f"levels {tuple(levels)} have only {len(seen)} distinct {split} problems"
                )
            continue
        misses = 0
        seen.add(problem.question)
        yield problem


def _belongs_to(split: str, problem: Problem, seed: int) -> bool:
    """Whether `problem` is one of `split`'s, among the splits of its templates. The small
    levels are train or held-out by a hash of the question, and also leave out what the
    default level's `split` draws (a one-digit word problem of level 3 reads like one of
    level 0), so that no question is on both sides across levels either."""
    if problem.level != DEFAULT_LEVEL:
        digest = hashlib.sha256(f"{seed}:{problem.question}".encode()).digest()
        if (digest[0] % 5 == 0) == (split == "heldout"):
            return True
    return _in_split(split, problem.question, seed)


_OTHER: dict[tuple[str, int], set[str]] = {}


def _in_split(split: str, question: str, seed: int, horizon: int = 20_000) -> bool:
    """Whether `question` is among the first `horizon` draws of `split`."""
    key = (split, seed)
    if key not in _OTHER:
        _OTHER[key] = {_draw(split, i, seed).question for i in range(horizon)}
    return question in _OTHER[key]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--split", choices=SPLITS, default="train")
    parser.add_argument("--count", type=int, default=200)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--skip", type=int, default=0, help="leave out the first N problems")
    parser.add_argument("--worked", action="store_true", help="add the worked answer")
    parser.add_argument(
        "--level",
        default=str(DEFAULT_LEVEL),
        help="difficulty 0–3 or a mix such as 0,1,2 (3: the default distribution)",
    )
    parser.add_argument(
        "--system",
        default=None,
        help="a system prompt for every chat ('magistral': the reasoning one)",
    )
    args = parser.parse_args(argv)
    try:
        levels = parse_levels(args.level)
    except ValueError as error:
        parser.error(str(error))
    system = SYSTEM_PROMPT if args.system == "magistral" else args.system
    chosen = problems(args.split, args.skip + args.count, seed=args.seed, levels=levels)
    for number, problem in enumerate(chosen):
        if number < args.skip:
            continue
        line = problem.chat(worked=args.worked, system=system)
        sys.stdout.write(json.dumps(line, ensure_ascii=False) + "\n")


if __name__ == "__main__":
    main()
