"""/v1 files, batches and fine-tuning jobs, and model evaluations, as the CLI uses them."""

from __future__ import annotations

import os
from typing import Any

import httpx

from souverain.client.errors import error_of, stream_into


class FilesAndBatches:
    """/v1 files and batches, as the CLI uses them (plain dictionaries, OpenAI's shape)."""

    def __init__(self, http: httpx.Client) -> None:
        self._http = http

    def _json(self, response: httpx.Response) -> Any:
        if response.status_code >= 400:
            raise error_of(response)
        return response.json()

    def upload(self, path: str, purpose: str) -> dict[str, Any]:
        with open(path, "rb") as handle:
            files = {"file": (os.path.basename(path), handle)}
            return self._json(  # type: ignore[no-any-return]
                self._http.post("/v1/files", data={"purpose": purpose}, files=files, timeout=None)
            )

    def list_files(self) -> list[dict[str, Any]]:
        return self._json(self._http.get("/v1/files"))["data"]  # type: ignore[no-any-return]

    def delete_file(self, file_id: str) -> dict[str, Any]:
        return self._json(self._http.delete(f"/v1/files/{file_id}"))  # type: ignore[no-any-return]

    def download(self, file_id: str, into: Any) -> int:
        return stream_into(self._http, f"/v1/files/{file_id}/content", into)

    def create_batch(self, file_id: str, endpoint: str) -> dict[str, Any]:
        body = {"input_file_id": file_id, "endpoint": endpoint, "completion_window": "24h"}
        return self._json(self._http.post("/v1/batches", json=body))  # type: ignore[no-any-return]

    def batch(self, batch_id: str) -> dict[str, Any]:
        return self._json(self._http.get(f"/v1/batches/{batch_id}"))  # type: ignore[no-any-return]

    def batches(self) -> list[dict[str, Any]]:
        return self._json(self._http.get("/v1/batches"))["data"]  # type: ignore[no-any-return]

    def cancel_batch(self, batch_id: str) -> dict[str, Any]:
        return self._json(self._http.post(f"/v1/batches/{batch_id}/cancel"))  # type: ignore[no-any-return]

    def create_fine_tuning_job(self, body: dict[str, Any]) -> dict[str, Any]:
        return self._json(self._http.post("/v1/fine_tuning/jobs", json=body))  # type: ignore[no-any-return]

    def fine_tuning_job(self, job_id: str) -> dict[str, Any]:
        return self._json(self._http.get(f"/v1/fine_tuning/jobs/{job_id}"))  # type: ignore[no-any-return]

    def fine_tuning_jobs(self) -> list[dict[str, Any]]:
        return self._json(self._http.get("/v1/fine_tuning/jobs"))["data"]  # type: ignore[no-any-return]

    def fine_tuning_action(self, job_id: str, action: str) -> dict[str, Any]:
        return self._json(self._http.post(f"/v1/fine_tuning/jobs/{job_id}/{action}"))  # type: ignore[no-any-return]

    def fine_tuning_events(self, job_id: str, limit: int = 1000) -> list[dict[str, Any]]:
        answer = self._http.get(f"/v1/fine_tuning/jobs/{job_id}/events", params={"limit": limit})
        return list(reversed(self._json(answer)["data"]))  # oldest first

    def evaluate(self, model: str, body: dict[str, Any]) -> dict[str, Any]:
        return self._json(self._http.post(f"/api/models/{model}/evaluations", json=body))  # type: ignore[no-any-return]

    def evaluations(self, model: str) -> list[dict[str, Any]]:
        return self._json(self._http.get(f"/api/models/{model}/evaluations"))["data"]  # type: ignore[no-any-return]

    def model_card(self, model: str, *, markdown: bool) -> Any:
        answer = self._http.get(
            f"/api/models/{model}/card", params={"format": "markdown" if markdown else "json"}
        )
        if answer.status_code >= 400:
            raise error_of(answer)
        return answer.text if markdown else answer.json()
