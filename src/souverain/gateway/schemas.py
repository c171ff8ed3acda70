"""Request bodies of /v1, bounded before any engine sees them.

OpenAI's and Mistral's fields are both accepted (Mistral's `random_seed` becomes `seed`).
Unknown fields are refused with a 400 naming the field: a silently ignored typo in a
parameter is worse than an error. Every number is bounded and every list is capped.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from souverain.gateway.grammar_bounds import check_response_format, check_schema

MAX_MESSAGES = 2048
MAX_TEXT = 1_000_000  # characters in one message or prompt
MAX_STOP = 4

Text = Annotated[str, Field(max_length=MAX_TEXT)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


class TextPart(_Strict):
    type: Literal["text"]
    text: Text


class ImageUrl(_Strict):
    url: Annotated[str, Field(max_length=MAX_TEXT)]
    detail: Literal["auto", "low", "high"] | None = None


class ImagePart(_Strict):
    type: Literal["image_url"]
    image_url: ImageUrl | Annotated[str, Field(max_length=MAX_TEXT)]


ContentPart = Annotated[TextPart | ImagePart, Field(discriminator="type")]


class FunctionCall(_Strict):
    name: Annotated[str, Field(max_length=256)]
    arguments: Text


class ToolCall(_Strict):
    id: Annotated[str, Field(max_length=256)] | None = None
    type: Literal["function"] = "function"
    function: FunctionCall
    index: int | None = Field(default=None, ge=0, le=1024)


class Message(_Strict):
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: Text | Annotated[list[ContentPart], Field(max_length=256)] | None = None
    name: Annotated[str, Field(max_length=256)] | None = None
    tool_calls: Annotated[list[ToolCall], Field(max_length=128)] | None = None
    tool_call_id: Annotated[str, Field(max_length=256)] | None = None
    prefix: bool | None = None  # Mistral: continue from this assistant message


class StreamOptions(_Strict):
    include_usage: bool | None = None


class FunctionDef(_Strict):
    name: Annotated[str, Field(max_length=256)]
    description: Annotated[str, Field(max_length=8192)] | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None

    @model_validator(mode="after")
    def _bounded_schema(self) -> FunctionDef:
        if self.parameters is not None:
            check_schema(self.parameters, "tools.function.parameters")
        return self


class ToolChoiceFunction(_Strict):
    name: Annotated[str, Field(max_length=256)]


class ToolChoice(_Strict):
    type: Literal["function"] = "function"
    function: ToolChoiceFunction


class Tool(_Strict):
    type: Literal["function"] = "function"
    function: FunctionDef


class _Sampling(_Strict):
    model: Annotated[str, Field(min_length=1, max_length=128)]
    max_tokens: int | None = Field(default=None, ge=1, le=1_048_576)
    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, ge=0, le=1)
    top_k: int | None = Field(default=None, ge=0, le=1000)
    min_p: float | None = Field(default=None, ge=0, le=1)
    n: int | None = Field(default=None, ge=1, le=1)
    stream: bool | None = False
    stream_options: StreamOptions | None = None
    stop: (
        Annotated[str, Field(max_length=512)]
        | Annotated[list[Annotated[str, Field(max_length=512)]], Field(max_length=MAX_STOP)]
        | None
    ) = None
    seed: int | None = Field(default=None, ge=-(2**63), le=2**63 - 1)
    random_seed: int | None = Field(default=None, ge=0, le=2**63 - 1)
    presence_penalty: float | None = Field(default=None, ge=-2, le=2)
    frequency_penalty: float | None = Field(default=None, ge=-2, le=2)
    repetition_penalty: float | None = Field(default=None, ge=0, le=10)
    logit_bias: (
        Annotated[
            dict[
                Annotated[str, Field(pattern=r"^[0-9]{1,9}$")],  # token ids
                Annotated[float, Field(ge=-100, le=100)],
            ],
            Field(max_length=300),
        ]
        | None
    ) = None
    user: Annotated[str, Field(max_length=256)] | None = None
    metadata: (
        Annotated[dict[str, Annotated[str, Field(max_length=512)]], Field(max_length=16)] | None
    ) = None

    @model_validator(mode="after")
    def _mistral_seed(self) -> _Sampling:
        if self.random_seed is not None and self.seed is None:
            self.seed = self.random_seed
        return self

    @property
    def include_usage(self) -> bool:
        return bool(self.stream and self.stream_options and self.stream_options.include_usage)

    def upstream_body(self, *, max_tokens_cap: int) -> dict[str, Any]:
        """What the engine receives: our fields only, bounded, with the engine's names."""
        body = self.model_dump(
            exclude_none=True,
            exclude={
                "stream_options",
                "random_seed",
                "user",
                "metadata",
                "safe_prompt",
                "prompt_mode",
            },
        )
        if self.max_tokens is not None:
            body["max_tokens"] = min(self.max_tokens, max_tokens_cap)
        if "repetition_penalty" in body:
            body["repeat_penalty"] = body.pop("repetition_penalty")
        return body


class ChatCompletionRequest(_Sampling):
    messages: Annotated[list[Message], Field(min_length=1, max_length=MAX_MESSAGES)]
    max_completion_tokens: int | None = Field(default=None, ge=1, le=1_048_576)
    logprobs: bool | None = None
    top_logprobs: int | None = Field(default=None, ge=0, le=20)
    response_format: dict[str, Any] | None = None
    tools: Annotated[list[Tool], Field(max_length=128)] | None = None
    tool_choice: Literal["none", "auto", "required", "any"] | ToolChoice | None = None
    parallel_tool_calls: bool | None = None
    safe_prompt: bool | None = None  # Mistral; souverain adds no system prompt of its own
    prompt_mode: Literal["reasoning"] | None = None  # Mistral
    reasoning_effort: Literal["none", "minimal", "low", "medium", "high"] | None = None  # OpenAI

    @model_validator(mode="after")
    def _completion_tokens(self) -> ChatCompletionRequest:
        if self.max_completion_tokens is not None and self.max_tokens is None:
            self.max_tokens = self.max_completion_tokens
        check_response_format(self.response_format)
        return self

    def upstream_body(self, *, max_tokens_cap: int) -> dict[str, Any]:
        body = super().upstream_body(max_tokens_cap=max_tokens_cap)
        body.pop("max_completion_tokens", None)
        body.pop("reasoning_effort", None)
        return body


class CompletionRequest(_Sampling):
    prompt: Text | Annotated[list[Text], Field(min_length=1, max_length=1)]
    echo: bool | None = None
    logprobs: int | None = Field(default=None, ge=0, le=5)
    suffix: Annotated[str, Field(max_length=MAX_TEXT)] | None = None
    best_of: int | None = Field(default=None, ge=1, le=1)


class EmbeddingRequest(_Strict):
    model: Annotated[str, Field(min_length=1, max_length=128)]
    input: Text | Annotated[list[Text], Field(min_length=1, max_length=2048)]
    encoding_format: Literal["float", "base64"] | None = None
    dimensions: int | None = Field(default=None, ge=1, le=65536)
    user: Annotated[str, Field(max_length=256)] | None = None
    output_dtype: Literal["float"] | None = None  # Mistral
    output_dimension: int | None = Field(default=None, ge=1, le=65536)  # Mistral's `dimensions`

    def upstream_body(self) -> dict[str, Any]:
        body = self.model_dump(
            exclude_none=True, exclude={"user", "output_dtype", "output_dimension"}
        )
        if self.output_dimension is not None and self.dimensions is None:
            body["dimensions"] = self.output_dimension
        return body


InferenceBody = ChatCompletionRequest | CompletionRequest | EmbeddingRequest

# The inference endpoints by path (a batch names one): the pipeline's name and the body.
ENDPOINTS: dict[str, tuple[str, type[InferenceBody]]] = {
    "/v1/chat/completions": ("chat", ChatCompletionRequest),
    "/v1/completions": ("completions", CompletionRequest),
    "/v1/embeddings": ("embeddings", EmbeddingRequest),
}
