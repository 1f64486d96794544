"""The engine's default level from `AIM_VLLM_DEFAULT` (set by `aim-vllm engine --aim-default`)."""

import pytest

from aim_vllm.config import DEFAULT_ENV, default_level
from aim_vllm.core.level import AimLevel, LevelError
from aim_vllm.core.schedule import AimSchedule


def test_server_default_from_environment(monkeypatch) -> None:
    monkeypatch.delenv(DEFAULT_ENV, raising=False)
    assert default_level() is None
    monkeypatch.setenv(DEFAULT_ENV, "light")
    assert default_level() == AimLevel(preset="light")
    monkeypatch.setenv(DEFAULT_ENV, "merge:0.25,prune:2-5")
    assert default_level() == AimLevel(schedule=AimSchedule(0.25, (2, 5)))
    monkeypatch.setenv(DEFAULT_ENV, "turbo")
    with pytest.raises(LevelError, match=f"{DEFAULT_ENV}='turbo' is not a level"):
        default_level()
