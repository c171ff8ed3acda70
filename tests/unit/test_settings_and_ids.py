from __future__ import annotations

import pytest
from pydantic import ValidationError

from souverain.core.ids import (
    hash_secret,
    new_api_key,
    parse_api_key,
    replica_secret,
    secret_matches,
)
from souverain.settings import Settings, normalise_database_url


class TestSettings:
    def test_placeholder_master_key_is_refused(self, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.delenv("SOUVERAIN_DEV_MODE", raising=False)
        with pytest.raises(ValidationError):
            Settings(secret_key="changeme")  # type: ignore[arg-type]

    def test_database_urls_get_async_drivers(self) -> None:
        assert normalise_database_url("postgresql://u@h/db") == "postgresql+asyncpg://u@h/db"
        assert normalise_database_url("sqlite:///x.db") == "sqlite+aiosqlite:///x.db"

    def test_environment_prefix(self, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setenv("SOUVERAIN_PORT", "9123")
        assert Settings().port == 9123

    def test_the_batch_share_is_by_replica_unless_the_operator_sets_one(
        self, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        assert Settings().queue_batch_share is None
        monkeypatch.setenv("SOUVERAIN_QUEUE_BATCH_SHARE", "0.5")
        assert Settings().queue_batch_share == 0.5

    def test_a_batch_line_ages_before_the_queue_gives_up_on_it(self) -> None:
        assert Settings().queue_batch_max_wait_s == 30.0
        with pytest.raises(ValidationError, match="queue_batch_max_wait_s"):
            Settings(queue_batch_max_wait_s=120.0, queue_wait_s=120.0)
        with pytest.raises(ValidationError):
            Settings(queue_batch_max_wait_s=-1.0)

    def test_a_queue_that_waits_30_s_or_less_still_starts_with_ageing_unset(
        self, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        monkeypatch.setenv("SOUVERAIN_QUEUE_WAIT_S", "30")
        assert Settings().queue_batch_max_wait_s == 15.0  # half the queue's wait
        assert Settings(queue_wait_s=100.0).queue_batch_max_wait_s == 30.0
        monkeypatch.setenv("SOUVERAIN_QUEUE_BATCH_MAX_WAIT_S", "30")  # set: checked
        with pytest.raises(ValidationError, match="queue_batch_max_wait_s"):
            Settings()

    def test_an_operator_may_turn_ageing_off(self, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setenv("SOUVERAIN_QUEUE_BATCH_MAX_WAIT_S", "0")
        assert Settings().queue_batch_max_wait_s == 0.0


class TestKeys:
    def test_round_trip(self) -> None:
        key_id, secret, full = new_api_key()
        assert parse_api_key(full) == (key_id, secret)
        assert secret_matches(secret, hash_secret(secret))
        assert not secret_matches(secret + "x", hash_secret(secret))

    @pytest.mark.parametrize(
        "bad", ["", "sk-souv-", "sk-souv-xyz_abc", "Bearer sk-souv-0123456789abcdef_" + "a" * 43]
    )
    def test_malformed_keys_do_not_parse(self, bad: str) -> None:
        assert parse_api_key(bad) is None

    def test_replica_secrets_differ_per_replica_and_installation(self) -> None:
        assert replica_secret(b"a" * 32, "rep_1") != replica_secret(b"a" * 32, "rep_2")
        assert replica_secret(b"a" * 32, "rep_1") != replica_secret(b"b" * 32, "rep_1")
