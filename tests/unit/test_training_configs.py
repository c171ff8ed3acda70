"""The one typed configuration per training method (training/configs.py): its bounds are
what the API refuses and what the recipes refuse, settings that cannot learn are refused
with the reason before any compute, and a reinforcement job whose format rate collapses
stops itself (training/collapse.py)."""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path

import pytest

from souverain.core.errors import InvalidRequestError
from souverain.jobs.fine_tuning.recipe import (
    Asked,
    Limits,
    resolve_evaluation,
    resolve_hyperparameters,
    resolve_reinforcement,
)
from souverain.training import configs
from souverain.training.collapse import Collapse
from souverain.training.configs import GRPOConfig, SettingError, SFTConfig

LIMITS = Limits(max_steps=1000, max_epochs=20, max_seq_len=4096, max_dataset_bytes=2**20,
                max_samples=10_000, cpus=1.0)  # fmt: skip


def reinforcement(**fields: object) -> Asked:
    given = {"shape": "openai", "model": "m", "training_files": [("f", 1.0)],
             "validation_file": None, "method": "reinforcement",
             "grader": {"type": "magistral"}} | fields  # fmt: skip
    return Asked(**given)  # type: ignore[arg-type]


def refusal(asked: Asked, *, supervised: bool = False) -> InvalidRequestError:
    resolve = resolve_hyperparameters if supervised else resolve_reinforcement
    with pytest.raises(InvalidRequestError) as refused:
        resolve(asked, samples=10, context_length=2048, limits=LIMITS)
    return refused.value


class TestConfigs:
    def test_the_recipes_defaults_are_the_configs(self) -> None:
        resolved = resolve_reinforcement(reinforcement(), samples=10, context_length=8192,
                                         limits=LIMITS)  # fmt: skip
        defaults = dataclasses.asdict(GRPOConfig())
        kept = {"max_steps", "save_steps", "seed"}  # the job's length, its own
        assert {k: v for k, v in resolved.items() if k in defaults and k not in kept} == {
            k: v for k, v in defaults.items() if k not in kept
        }

    def test_every_default_lies_within_its_bounds(self) -> None:
        for config in (SFTConfig(), GRPOConfig()):
            configs.check(config)

    def test_a_recipe_refuses_a_spec_outside_the_bounds_or_with_unknown_names(self) -> None:
        with pytest.raises(SettingError, match="group_size") as refused:
            configs.built(GRPOConfig, {"group_size": 1})
        assert refused.value.name == "group_size"
        with pytest.raises(SettingError, match="colour"):
            configs.built(SFTConfig, {"colour": 1})
        assert configs.built(GRPOConfig, {"group_size": 4}).group_size == 4

    def test_settings_that_bound_each_other_are_checked_together(self) -> None:
        for values, name in (({"batch_size": 8, "group_size": 16}, "batch_size"),
                             ({"minibatches": 4, "batch_size": 2}, "minibatches"),
                             ({"max_tokens": 500, "seq_len": 510}, "seq_len")):  # fmt: skip
            with pytest.raises(SettingError) as refused:
                configs.built(GRPOConfig, values)
            assert refused.value.name == name

    def test_a_nucleus_is_refused_for_training_and_allowed_for_an_evaluation(self) -> None:
        with pytest.raises(SettingError, match="not be on-policy") as refused:
            configs.built(GRPOConfig, {"top_p": 0.9})
        assert refused.value.name == "top_p"
        assert configs.built(GRPOConfig, {"top_p": 0.9, "max_steps": 0}).top_p == 0.9

    def test_types_are_the_configs(self) -> None:
        for value in (True, 2.5, "8", float("nan")):
            with pytest.raises(SettingError):
                configs.check_setting(GRPOConfig, "group_size", value)
        assert configs.check_setting(GRPOConfig, "temperature", 1) == 1  # an int is a number


class TestSettingsThatCannotLearn:
    @pytest.mark.parametrize(
        ("fields", "param", "reason"),
        [
            ({"reinforcement": {"group_size": 1}}, "group_size", "no advantage"),
            ({"learning_rate_multiplier": 0.0}, "learning_rate_multiplier", "nothing is learnt"),
            ({"learning_rate_multiplier": 100}, "learning_rate_multiplier", "diverges"),
            ({"reinforcement": {"max_tokens": 40}}, "max_tokens", "thinking block"),
            ({"reinforcement": {"temperature": 0.0}}, "temperature", "the same"),
            ({"reinforcement": {"colour": "red"}}, "colour", "unknown"),
            ({"reinforcement": {"top_p": 0.9}}, "top_p", "not be on-policy"),
        ],
    )
    def test_refused_with_the_setting_and_why(
        self, fields: dict[str, object], param: str, reason: str
    ) -> None:
        refused = refusal(reinforcement(**fields))
        assert refused.param == param and reason in str(refused)

    def test_the_recipe_itself_refuses_a_budget_too_short_to_think(self, tmp_path: Path) -> None:
        """A spec handed to the recipe directly is refused as the API refuses it, before
        the model is loaded."""
        pytest.importorskip("torch")
        from souverain.training import grpo
        from souverain.training.sft import Progress

        spec = {"hyperparameters": {"max_tokens": 40, "length_cache": 8},
                "grader": {"type": "magistral"}, "output_dir": str(tmp_path)}  # fmt: skip
        with pytest.raises(SettingError, match="thinking block") as refused:
            grpo.Job(spec, Progress(tmp_path / "progress.jsonl"))
        assert refused.value.name == "max_tokens"
        string_check = {
            "type": "string_check",
            "name": "s",
            "operation": "eq",
            "input": "{{ sample.output_text }}",
            "reference": "{{ item.answer }}",
        }
        grpo.Job(spec | {"grader": string_check}, Progress(tmp_path / "progress.jsonl"))

    def test_a_recipe_refuses_a_rate_that_cannot_learn(self) -> None:
        for rate, why in ((0.0, "nothing is learnt"), (0.5, "diverges")):
            with pytest.raises(SettingError, match=why) as refused:
                configs.built(GRPOConfig, {"learning_rate": rate})
            assert refused.value.name == "learning_rate"

    def test_an_evaluation_may_sample_from_a_nucleus(self) -> None:
        asked = reinforcement(reinforcement={"top_p": 0.9})
        resolved = resolve_evaluation(asked, samples=10, context_length=2048, limits=LIMITS)
        assert resolved["top_p"] == 0.9 and resolved["max_steps"] == 0

    def test_a_supervised_rate_of_zero_or_a_huge_one_is_refused(self) -> None:
        for rate in (0.0, 0.5):
            refused = refusal(reinforcement(method="supervised", shape="mistral",
                                            learning_rate=rate), supervised=True)  # fmt: skip
            assert refused.param == "learning_rate" and "diverges" in str(refused)

    def test_a_short_budget_is_fine_for_a_grader_that_needs_no_thinking(self) -> None:
        asked = reinforcement(grader={"type": "string_check", "name": "s", "operation": "eq",
                                      "input": "{{ sample.output_text }}",
                                      "reference": "{{ item.answer }}"},
                              reinforcement={"max_tokens": 32})  # fmt: skip
        resolved = resolve_reinforcement(asked, samples=10, context_length=2048, limits=LIMITS)
        assert resolved["max_tokens"] == 32


class TestCollapse:
    def test_a_steady_format_rate_never_stops(self) -> None:
        monitor = Collapse(margin=0.3, window=3)
        assert not any(monitor.add(rate) for rate in [0.8, 0.7, 0.9] * 10)

    def test_a_fall_beyond_the_margin_stops_and_says_why(self) -> None:
        monitor = Collapse(margin=0.3, window=3)
        rates = [0.9, 0.8, 0.7, 0.6, 0.5, 0.3]  # start 0.8; now 0.6 then 0.467
        stopped = [monitor.add(rate) for rate in rates]
        assert stopped == [False, False, False, False, False, True]
        assert monitor.start == pytest.approx(0.8)
        assert monitor.now == pytest.approx(1.4 / 3)
        reason = monitor.reason(6)
        assert "80%" in reason and "47%" in reason and "step 6" in reason

    def test_not_before_the_start_window_is_past(self) -> None:
        monitor = Collapse(margin=0.1, window=4)
        assert not any(monitor.add(rate) for rate in (1.0, 0.0, 0.0, 0.0))
        assert monitor.add(0.0)  # now 0 against a start of 0.25

    def test_a_margin_of_one_never_stops(self) -> None:
        monitor = Collapse(margin=1.0, window=1)
        assert not any(monitor.add(rate) for rate in (1.0, 0.0, 0.0))


def plain(output: str) -> str:
    """Rich's boxed output as words: borders and line breaks are spaces."""
    return " ".join(re.sub(r"[│╭╮╰╯─]", " ", output).split())


class TestCli:
    """`souverain finetune create` refuses what cannot learn before it sends anything (no
    server is running here: a request would fail differently)."""

    @pytest.mark.parametrize(
        ("arguments", "reason"),
        [
            (["--group-size", "1"], "no advantage"),
            (["--set", "temperature=0"], "the same"),
            (["--set", "colour=red"], "NAME=VALUE"),
            (["--set", "group_size=eight"], "an integer"),
            (["--lr-multiplier", "1000"], "diverges"),
        ],
    )
    def test_refused_with_the_reason(self, arguments: list[str], reason: str) -> None:
        from typer.testing import CliRunner

        from souverain.cli.main import app

        ran = CliRunner().invoke(app, ["finetune", "create", "file-x", "--method",
                                       "reinforcement", *arguments])  # fmt: skip
        assert ran.exit_code == 2, ran.output
        assert reason in plain(ran.output), ran.output

    def test_its_help_lists_the_settings_with_their_bounds(self) -> None:
        from typer.testing import CliRunner

        from souverain.cli.main import app

        shown = CliRunner().invoke(app, ["finetune", "create", "--help"], terminal_width=200)
        text = plain(shown.output)
        for name in configs.tenant_settings(GRPOConfig):
            assert name in text
        assert "2 to 32" in text


class TestCollapseWiring:
    """The recipe's loop stops on a collapse with a `collapsed` line and exit code 4, and
    that line becomes an error event naming the cause (the node fails the job with code
    `reward_collapsed` and this message)."""

    def test_the_recipe_stops_itself_and_says_why(self, tmp_path: Path) -> None:
        pytest.importorskip("torch")
        from souverain.jobs.fine_tuning.events import event_words
        from souverain.training import grpo
        from souverain.training.collapse import REWARD_COLLAPSED
        from souverain.training.sft import Progress

        spec = {"hyperparameters": {"max_steps": 50, "collapse_margin": 0.2,
                                    "collapse_window": 2, "save_steps": 100},
                "grader": {"type": "magistral"}, "output_dir": str(tmp_path)}  # fmt: skip
        job = grpo.Job(spec, Progress(tmp_path / "progress.jsonl"))
        rates = iter([0.9, 0.9, 0.5, 0.4, 0.3])  # start 0.9; then 0.7, then 0.45

        def one_step() -> None:
            job.step += 1
            job.last_metrics = {"format_rate": next(rates)}

        job.step, job._one_step = 0, one_step  # type: ignore[method-assign]
        job.rollouts = type("Closed", (), {"close": lambda self: None})()
        assert job._train() == REWARD_COLLAPSED
        lines = [json.loads(x) for x in (tmp_path / "progress.jsonl").read_text().splitlines()]
        [collapsed] = [x for x in lines if x["type"] == "collapsed"]
        assert (collapsed["step"], collapsed["start"], collapsed["now"]) == (4, 0.9, 0.45)
        message, _, data = event_words(collapsed)
        assert message.startswith("the reward collapsed") and "step 4" in message
        assert data == {"step": 4, "start": 0.9, "now": 0.45, "margin": 0.2}
