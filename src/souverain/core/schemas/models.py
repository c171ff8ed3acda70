from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel, Field, model_validator

from souverain.core.schemas.common import Out, StrictRequest

Engine = Literal["llamacpp", "vllm", "embeddings"]
Capability = Literal["chat", "completions", "embeddings", "reasoning"]
ReasoningTags = Literal["<think>", "[THINK]"]  # <think>…</think> or Magistral's [THINK]…[/THINK]
Format = Literal["gguf", "safetensors", "hf"]


class ModelRegisterRequest(StrictRequest):
    name: str = Field(pattern=r"^[A-Za-z0-9](?:[A-Za-z0-9._:/-]{0,126}[A-Za-z0-9])?$")
    uri: str = Field(
        max_length=2000,
        description="file:///abs/path.gguf (visible on the nodes), or hf://owner/repo/file for online nodes.",
    )
    sha256: str | None = Field(default=None, pattern=r"^[0-9a-f]{64}$")
    size_bytes: int | None = Field(default=None, ge=0)
    format: Format = "gguf"
    engine: Engine = "llamacpp"
    capabilities: list[Capability] = Field(default=["chat", "completions"], max_length=4)
    reasoning_tags: ReasoningTags | None = Field(
        default=None,
        description="A reasoning model's tag format: `<think>` (default) or `[THINK]`.",
    )
    context_length: int = Field(default=4096, ge=128, le=1_048_576)
    license: str = Field(default="unknown", max_length=64)
    description: str = Field(default="", max_length=2000)
    org: str | None = Field(
        default=None, max_length=64, description="Private to this organisation."
    )

    @model_validator(mode="after")
    def _reasoning(self) -> ModelRegisterRequest:
        """A reasoning model is a chat model with a tag format (`<think>` unless told)."""
        if "reasoning" not in self.capabilities:
            if self.reasoning_tags is not None:
                raise ValueError("reasoning_tags is for models with the reasoning capability")
            return self
        if "chat" not in self.capabilities:
            raise ValueError("a reasoning model needs the chat capability")
        self.reasoning_tags = self.reasoning_tags or "<think>"
        return self


class ModelArtifact(Out):
    uri: str
    sha256: str | None
    size_bytes: int | None
    format: str
    license: str
    source: str


class Model(Out):
    id: str
    name: str
    owner_org_id: str | None
    engine: str
    capabilities: list[str]
    reasoning_tags: str | None = None
    context_length: int
    description: str
    artifacts: list[ModelArtifact]
    created_at: datetime


class ModelObject(BaseModel):
    """A model in OpenAI's and Mistral's `/v1/models` shape."""

    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelObject]
