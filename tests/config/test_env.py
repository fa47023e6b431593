from __future__ import annotations

from pathlib import Path

import pytest

from config.env import env, envbool, envint, envlist


def test_it_reads_a_secret_from_the_file_named_by_name_file(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    secret = tmp_path / "secret"
    secret.write_text("from-file\n")
    monkeypatch.setenv("SOME_SECRET", "from-env")
    monkeypatch.setenv("SOME_SECRET_FILE", str(secret))
    assert env("SOME_SECRET") == "from-file"


def test_it_falls_back_to_the_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NOT_SET_ANYWHERE", raising=False)
    assert env("NOT_SET_ANYWHERE", "dflt") == "dflt"
    assert envint("NOT_SET_ANYWHERE", 7) == 7
    assert envbool("NOT_SET_ANYWHERE", True) is True


def test_it_parses_booleans_and_refuses_nonsense(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FLAG", "Yes")
    assert envbool("FLAG") is True
    monkeypatch.setenv("FLAG", "off")
    assert envbool("FLAG") is False
    monkeypatch.setenv("FLAG", "maybe")
    with pytest.raises(ValueError, match="FLAG"):
        envbool("FLAG")


def test_it_splits_lists(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOSTS", " a.example, ,b.example ")
    assert envlist("HOSTS") == ["a.example", "b.example"]
