"""The reasoning system prompt: what the gateway adds in reasoning mode, and what
reinforcement fine-tuning and its cold-start data train under."""

from __future__ import annotations

# After the system prompt of Magistral (Mistral AI, "Magistral", 2025), in our words: draft
# the thinking inside <think>, then a concise, self-contained answer, both in the language
# of the user's task.
SYSTEM_PROMPT = (
    "A user will ask you to solve a task. First think it through as an inner monologue, "
    "like working on scratch paper, for as long as you need to be confident of the answer. "
    "Then write a concise, self-contained answer that gives the key steps and a clear final "
    "result, without saying that it is a summary. Write both your thinking and your answer "
    "in the language of the user's task. Use Markdown.\n\n"
    "Your thinking must follow this template:\n"
    "<think>\nYour thoughts and drafts.\n</think>\n\nYour answer."
)


def system_prompt(tags: str | None = None) -> str:
    """The reasoning system prompt, its template in the model's tag format (`[THINK]` for
    Magistral's; `<think>`, the default, for others)."""
    if tags != "[THINK]":
        return SYSTEM_PROMPT
    return SYSTEM_PROMPT.replace("<think>", "[THINK]").replace("</think>", "[/THINK]")
