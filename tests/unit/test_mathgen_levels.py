"""The generator's difficulty levels: easier prompts for a small model's band, the default
distribution unchanged (held-out files written before levels existed keep their meaning)."""

from __future__ import annotations

import hashlib
import io
import json
import re
from contextlib import redirect_stdout

import pytest

from souverain.core.reasoning import SYSTEM_PROMPT
from souverain.training import mathgen, rewards

# sha256 of `mathgen --split train --count 60 --worked` and `--split heldout --count 40`,
# written before the levels were added: the default level must keep producing these bytes
TRAIN_60_WORKED = "21613c01fcefe70633d7e869afbf856ae7ff7f34dd5b4c0f59d58dee8ab9654c"
HELDOUT_40 = "d9b5417ad019ab5af01a1b0ac8db5fa1979d90626367a6a4b10849a4c2c9e6a2"


def cli(*argv: str) -> str:
    out = io.StringIO()
    with redirect_stdout(out):
        mathgen.main(list(argv))
    return out.getvalue()


def operands(problem: mathgen.Problem) -> tuple[int, str, int]:
    """The two numbers of a problem and the operation that joins them."""
    if problem.kind == "arithmetic":
        a, op, b = re.findall(r"(\d+) ([+\-×]) (\d+)", problem.question)[0]
        return int(a), op, int(b)
    a, b = (int(x) for x in re.findall(r"\d+", problem.question)[:2])
    return a, "+" if problem.answer == a + b else "-", b


def sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


class TestDefaultLevel:
    def test_the_default_output_is_byte_for_byte_what_it_was(self) -> None:
        assert sha(cli("--split", "train", "--count", "60", "--worked")) == TRAIN_60_WORKED
        assert sha(cli("--split", "heldout", "--count", "40", "--level", "3")) == HELDOUT_40

    def test_default_lines_carry_no_level_field(self) -> None:
        for line in cli("--count", "20").splitlines():
            assert "level" not in json.loads(line)


class TestEasyLevels:
    @pytest.mark.parametrize("split", mathgen.SPLITS)
    def test_level_0_is_one_digit_sums(self, split: str) -> None:
        for problem in mathgen.problems(split, 150, levels=(0,)):
            a, op, b = operands(problem)
            assert op == "+" and 1 <= a <= 9 and 1 <= b <= 9, problem.question
            assert problem.answer == a + b and problem.level == 0

    def test_level_1_is_one_digit_sums_and_differences_never_negative(self) -> None:
        ops = set()
        for problem in mathgen.problems("train", 200, levels=(1,)):
            a, op, b = operands(problem)
            ops.add(op)
            assert 1 <= a <= 9 and 1 <= b <= 9, problem.question
            assert problem.answer == (a + b if op == "+" else a - b) >= 0
        assert ops == {"+", "-"}

    def test_level_2_has_a_two_digit_and_a_one_digit_operand(self) -> None:
        kinds = set()
        for problem in mathgen.problems("train", 200, levels=(2,)):
            a, op, b = operands(problem)
            kinds.add((problem.kind, op))
            assert 10 <= a <= 99 and 1 <= b <= 9, problem.question
            assert problem.answer == (a + b if op == "+" else a - b)
        assert kinds == {(k, op) for k in ("arithmetic", "word") for op in "+-"}

    def test_lines_record_their_level_and_a_mix_holds_each_level_in_about_equal_share(
        self,
    ) -> None:
        lines = [json.loads(x) for x in cli("--count", "40", "--level", "0,2").splitlines()]
        levels = [x["level"] for x in lines]
        assert 14 <= levels.count(0) <= 26 and levels.count(0) + levels.count(2) == 40
        assert {x["language"] for x in lines} == set(mathgen.LANGUAGES)

    @pytest.mark.parametrize("level", [0, 1, 2])
    def test_splits_stay_apart_and_worked_answers_earn_the_full_reward(self, level: int) -> None:
        train = list(mathgen.problems("train", 300, levels=(level,)))
        heldout = {p.question for p in mathgen.problems("heldout", 100, levels=(level,))}
        assert len({p.question for p in train}) == 300
        assert not heldout & {p.question for p in train}
        for problem in train[:20]:
            chat = problem.chat(worked=True, system=SYSTEM_PROMPT)
            scored = rewards.magistral(chat["messages"][-1]["content"], prompt=problem.question,
                                       reference=chat["answer"], tokens=60, l_max=192,
                                       l_cache=64)  # fmt: skip
            assert scored.reward == pytest.approx(1.1)

    @pytest.mark.parametrize("level", [0, 1, 2])
    def test_no_question_is_on_both_sides_across_levels(self, level: int) -> None:
        """A cold start trained on level 3 and evaluated on an easier level must not have
        seen the held-out questions (a level-3 word problem may have one-digit counts)."""
        train_3 = {p.question for p in mathgen.problems("train", 2000)}
        heldout_3 = {p.question for p in mathgen.problems("heldout", 1000)}
        heldout = {p.question for p in mathgen.problems("heldout", 250, levels=(level,))}
        train = {p.question for p in mathgen.problems("train", 300, levels=(level,))}
        assert not heldout & train_3 and not train & heldout_3


class TestBadInput:
    def test_asking_more_than_a_level_holds_is_an_error_not_an_endless_search(self) -> None:
        with pytest.raises(ValueError, match=r"only \d+ distinct train problems"):
            list(mathgen.problems("train", 5000, levels=(0,)))

    @pytest.mark.parametrize("text", ["4", "-1", "one", "0,,1", ""])
    def test_unknown_levels_are_refused_with_the_reason(self, text: str) -> None:
        with pytest.raises(ValueError, match="levels"):
            mathgen.parse_levels(text)
        with pytest.raises(SystemExit):
            cli("--level", text)
