"""A training worker's progress line as a job event: words a person reads, and numbers
(never training text). The worker writes one JSON line per event (`progress.jsonl`); the
controller records each as a `fine_tuning_events` row."""

from __future__ import annotations

from typing import Any

REINFORCEMENT_METRICS = (
    "step", "total", "loss", "tokens", "tokens_per_s", "learning_rate", "reward_mean",
    "format_rate", "correct_rate", "consistency", "zero_advantage_fraction", "step_s",
    "rollout_s", "train_s", "generated_tokens", "informative_groups", "refill_rounds",
    "band_skipped", "logprob_gap_mean", "logprob_gap_p99", "ratio_outside_fraction",
    "tis_capped_fraction", "tis_cap", "staleness_max", "staleness_mean",
    "stale_discarded_groups", "trainer_wait_s", "generator_wait_s",
)  # fmt: skip


def event_words(event: dict[str, Any]) -> tuple[str, str, dict[str, Any] | None]:
    """A worker's progress line as a job event: words, and numbers (never training text)."""
    kind = event["type"]
    if kind == "dev" or (kind == "step" and "reward_mean" in event):  # reinforcement
        return _reinforcement(event)
    if kind == "step":
        data = {k: event.get(k) for k in ("step", "total", "loss", "tokens", "tokens_per_s",
                                          "learning_rate", "mean_token_accuracy")}  # fmt: skip
        data["train_loss"] = data.pop("loss")
        return (
            f"Step {event['step']}/{event['total']}: training loss={event['loss']:.4f}",
            "metrics",
            data,
        )
    if kind == "eval" and "metrics" in event:  # reinforcement: held-out evaluation
        overall = event["metrics"].get("overall") or {}
        return (
            f"Evaluation at step {event['step']}: pass@1={overall.get('pass_at_1')}, "
            f"format={overall.get('format_rate')}, mean reward={overall.get('mean_reward')}, "
            f"language consistency={overall.get('language_consistency')}",
            "metrics",
            {"step": event["step"], "evaluation": event["metrics"]},
        )
    if kind == "eval":
        return (
            f"Step {event['step']}: validation loss={event['valid_loss']:.4f}",
            "metrics",
            {"step": event["step"], "valid_loss": event["valid_loss"]},
        )
    if kind == "checkpoint":
        return f"Checkpoint saved at step {event['step']}", "message", {"step": event["step"]}
    if kind == "validated":
        return (
            f"Training data checked on the node: {event['samples']} samples, {event['tokens']} tokens",
            "message",
            None,
        )
    if kind == "invalid":
        return (
            str(event.get("message", "invalid training data")),
            "message",
            {"line": event.get("line")},
        )
    if kind == "collapsed":  # reinforcement: the job stopped itself
        data = {k: event.get(k) for k in ("step", "start", "now", "margin")}
        return str(event.get("message", "the reward collapsed")), "message", data
    if kind == "loaded":
        return f"Base model loaded in {event['seconds']} s", "message", None
    return _supervisor_words(event), "message", None


def _supervisor_words(event: dict[str, Any]) -> str:
    """The node's own events about its worker ('' for a kind it does not know)."""
    kind = event["type"]
    if kind == "restart":
        return (
            f"The training worker died ({event.get('reason', '')}); "
            "restarting from the last checkpoint"
        )
    if kind == "halted":
        return (
            f"Stopped at the energy it holds ({event.get('energy_j', 0) / 3.6e6:.4f} kWh) before "
            "its next checkpoint: resuming carries on from the last checkpoint"
        )
    if kind == "resumed":
        return f"Checkpoint at step {event['step']} restored on the node"
    return ""


def _reinforcement(event: dict[str, Any]) -> tuple[str, str, dict[str, Any] | None]:
    if event["type"] == "dev":  # reinforcement: the dev split, for the best checkpoint
        return (
            f"Dev split at step {event['step']}: mean reward={event['mean_reward']} "
            f"(best so far at step {event['best_step']})",
            "metrics",
            {k: event.get(k) for k in ("step", "mean_reward", "best_step")},
        )
    data = {k: event.get(k) for k in REINFORCEMENT_METRICS}
    data["train_loss"] = data.pop("loss")
    return (
        f"Step {event['step']}/{event['total']}: mean reward={event['reward_mean']:.3f}, "
        f"format={event['format_rate']:.0%}, zero-advantage groups="
        f"{event['zero_advantage_fraction']:.0%}, {event['step_s']:.1f} s",
        "metrics",
        data,
    )
