"""What a fine-tuning or evaluation job request may say, in OpenAI's and Mistral's shapes,
and how it becomes the one `recipe.Asked` the service takes.

The shape is recognised from the body, not guessed: OpenAI's has `training_file` (and
`method`), Mistral's has `training_files`; a body with both, or neither, is refused.
Bounds of the values are the recipes' typed configurations (training/configs.py), checked
when the service resolves the request (jobs/fine_tuning/recipe.py); here only the shape,
the names and the types. The GRPO settings a tenant may name come from `GRPOConfig`.
"""

from __future__ import annotations

from typing import Any, Literal, get_type_hints

from pydantic import Field, ValidationError, create_model

from souverain.core.errors import InvalidRequestError, validation_message
from souverain.core.schemas.common import Metadata, StrictRequest
from souverain.jobs.fine_tuning import recipe
from souverain.settings import Settings
from souverain.training.configs import GRPOConfig, tenant_settings

Auto = Literal["auto"]


class SupervisedHyperparameters(StrictRequest):
    n_epochs: int | Auto | None = None
    batch_size: int | Auto | None = None
    learning_rate_multiplier: float | Auto | None = None


class Supervised(StrictRequest):
    hyperparameters: SupervisedHyperparameters | None = None


class OpenAIReinforcementHyperparameters(StrictRequest):
    """OpenAI's reinforcement hyperparameters, and souverain's `training_steps` and
    `seq_len`; the GRPO settings a tenant may set are added from `GRPOConfig` below."""

    n_epochs: int | Auto | None = None
    batch_size: int | Auto | None = None
    learning_rate_multiplier: float | Auto | None = None
    eval_samples: int | Auto | None = None
    eval_interval: int | Auto | None = None  # accepted; evaluation runs before and after
    compute_multiplier: float | Auto | None = None  # accepted; no effect
    reasoning_effort: Literal["default", "low", "medium", "high"] | None = None  # accepted
    training_steps: int | None = None
    seq_len: int | None = None


def _grpo_settings() -> dict[str, Any]:
    """Each setting `GRPOConfig` marks `tenant`, by its name and type, optional: the
    bounds are the config's, checked when the request is resolved (recipe.py)."""
    types = get_type_hints(GRPOConfig)
    own = set(OpenAIReinforcementHyperparameters.model_fields)
    return {name: (types[name] | None, None)
            for name in tenant_settings(GRPOConfig) if name not in own}  # fmt: skip


ReinforcementHyperparameters = create_model(
    "ReinforcementHyperparameters",
    __base__=OpenAIReinforcementHyperparameters,
    **_grpo_settings(),
)


class Reinforcement(StrictRequest):
    grader: dict[str, Any]
    hyperparameters: dict[str, Any] | None = None  # a ReinforcementHyperparameters


class Method(StrictRequest):
    type: Literal["supervised", "reinforcement"]
    supervised: Supervised | None = None
    reinforcement: Reinforcement | None = None


class OpenAIJobRequest(StrictRequest):
    model: str = Field(max_length=128)
    training_file: str = Field(max_length=64)
    validation_file: str | None = Field(default=None, max_length=64)
    suffix: str | None = Field(default=None, max_length=64)
    seed: int | None = Field(default=None, ge=0, le=2**31 - 1)
    metadata: Metadata = None
    method: Method | None = None
    hyperparameters: SupervisedHyperparameters | None = None  # the older, top-level form
    integrations: list[dict[str, Any]] | None = Field(default=None, max_length=0)
    jurisdictions: list[str] | None = Field(default=None, max_length=32)  # souverain


class MistralFile(StrictRequest):
    file_id: str = Field(max_length=64)
    weight: float = 1.0


class MistralHyperparameters(StrictRequest):
    """Mistral's names; bounds are the supervised recipe's (`SFTConfig`)."""

    training_steps: int | None = Field(default=None, ge=1)
    learning_rate: float | None = None
    epochs: float | None = Field(default=None, gt=0)
    seq_len: int | None = None
    warmup_fraction: float | None = None
    weight_decay: float | None = None
    fim_ratio: float | None = None


class MistralJobRequest(StrictRequest):
    model: str = Field(max_length=128)
    training_files: list[MistralFile] = Field(min_length=1, max_length=32)
    validation_files: list[str] | None = Field(default=None, max_length=1)
    hyperparameters: MistralHyperparameters
    suffix: str | None = Field(default=None, max_length=64)
    auto_start: bool = True
    job_type: Literal["completion"] | None = None
    integrations: list[dict[str, Any]] | None = Field(default=None, max_length=0)
    repositories: list[dict[str, Any]] | None = Field(default=None, max_length=0)
    classifier_targets: None = None
    invalid_sample_skip_percentage: float | None = Field(default=None, ge=0, le=0)
    jurisdictions: list[str] | None = Field(default=None, max_length=32)  # souverain


def _auto(value: Any) -> Any:
    return None if value == "auto" else value


def _asked_reinforcement(body: OpenAIJobRequest) -> recipe.Asked:
    assert body.method is not None
    if body.method.reinforcement is None:
        raise InvalidRequestError(
            "method.reinforcement (with its grader) is needed for a reinforcement job.",
            param="method.reinforcement",
        )
    hp = ReinforcementHyperparameters.model_validate(
        body.method.reinforcement.hyperparameters or {}
    )
    own = {
        name: value
        for name, value in hp.model_dump(exclude_none=True).items()
        if name in tenant_settings(GRPOConfig) and value != "auto"
    }
    return recipe.Asked(
        shape="openai", model=body.model, training_files=[(body.training_file, 1.0)],
        validation_file=body.validation_file, n_epochs=_auto(hp.n_epochs),
        batch_size=_auto(hp.batch_size), learning_rate_multiplier=_auto(hp.learning_rate_multiplier),
        training_steps=hp.training_steps, seq_len=hp.seq_len,
        suffix=body.suffix, seed=body.seed, metadata=body.metadata,
        jurisdictions=body.jurisdictions, method="reinforcement",
        grader=body.method.reinforcement.grader, reinforcement=own,
        hyperparameters=hp.model_dump(exclude_none=True),
    )  # fmt: skip


def _asked_openai(body: OpenAIJobRequest) -> recipe.Asked:
    if body.method is not None and body.method.type == "reinforcement":
        return _asked_reinforcement(body)
    hp = body.hyperparameters
    if body.method is not None and body.method.supervised is not None:
        hp = body.method.supervised.hyperparameters or hp
    hp = hp or SupervisedHyperparameters()
    return recipe.Asked(
        shape="openai", model=body.model, training_files=[(body.training_file, 1.0)],
        validation_file=body.validation_file, n_epochs=_auto(hp.n_epochs),
        batch_size=_auto(hp.batch_size), learning_rate_multiplier=_auto(hp.learning_rate_multiplier),
        suffix=body.suffix, seed=body.seed, metadata=body.metadata,
        jurisdictions=body.jurisdictions,
        hyperparameters={"n_epochs": hp.n_epochs or "auto", "batch_size": hp.batch_size or "auto",
                         "learning_rate_multiplier": hp.learning_rate_multiplier or "auto"},
    )  # fmt: skip


def _asked_mistral(body: MistralJobRequest) -> recipe.Asked:
    hp = body.hyperparameters
    if hp.training_steps is not None and hp.epochs is not None:
        raise InvalidRequestError(
            "Give training_steps or epochs, not both.", param="hyperparameters"
        )
    epochs = None if hp.epochs is None else max(1, round(hp.epochs))
    return recipe.Asked(
        shape="mistral", model=body.model,
        training_files=[(f.file_id, f.weight) for f in body.training_files],
        validation_file=body.validation_files[0] if body.validation_files else None, n_epochs=epochs,
        learning_rate=hp.learning_rate if hp.learning_rate is not None else 1e-4,
        training_steps=hp.training_steps, seq_len=hp.seq_len,
        warmup_fraction=hp.warmup_fraction if hp.warmup_fraction is not None else 0.05,
        weight_decay=hp.weight_decay if hp.weight_decay is not None else 0.1,
        suffix=body.suffix, auto_start=body.auto_start, jurisdictions=body.jurisdictions,
        hyperparameters=hp.model_dump(exclude_none=True),
    )  # fmt: skip


class EvaluationRequest(StrictRequest):
    file_id: str = Field(max_length=64)
    grader: dict[str, Any] = Field(default_factory=lambda: {"type": "magistral"})
    max_tokens: int | None = None
    samples: int | None = None
    seq_len: int | None = None
    seed: int | None = Field(default=None, ge=0, le=2**31 - 1)
    jurisdictions: list[str] | None = Field(default=None, max_length=32)


def asked_of(raw: Any) -> recipe.Asked:
    """A create-job body, in either shape, as the service takes it (400 otherwise)."""
    if not isinstance(raw, dict) or ("training_file" in raw) == ("training_files" in raw):
        raise InvalidRequestError(
            "Give training_file (OpenAI's shape) or training_files (Mistral's), not both.",
            param="training_file",
        )
    try:
        if "training_file" in raw:
            return _asked_openai(OpenAIJobRequest.model_validate(raw))
        return _asked_mistral(MistralJobRequest.model_validate(raw))
    except ValidationError as error:
        message, param = validation_message(error.errors())
        raise InvalidRequestError(message, param=param) from None


def asked_evaluation(model: str, body: EvaluationRequest) -> recipe.Asked:
    own = {name: value for name, value in (("max_tokens", body.max_tokens),
                                           ("eval_samples", body.samples)) if value is not None}  # fmt: skip
    return recipe.Asked(
        shape="openai", model=model, training_files=[(body.file_id, 1.0)],
        validation_file=body.file_id, seq_len=body.seq_len, seed=body.seed,
        jurisdictions=body.jurisdictions, method="evaluation", grader=body.grader,
        reinforcement=own, hyperparameters=body.model_dump(exclude_none=True),
    )  # fmt: skip


def limits_of(settings: Settings) -> recipe.Limits:
    """The installation's bounds on jobs."""
    s = settings
    return recipe.Limits(
        max_steps=s.finetune_max_steps, max_epochs=s.finetune_max_epochs,
        max_seq_len=s.finetune_max_seq_len, max_dataset_bytes=s.finetune_max_dataset_bytes,
        max_samples=s.finetune_max_samples, cpus=s.finetune_cpus,
        max_active_jobs=s.finetune_max_active_jobs,
    )  # fmt: skip
