"""Shared pytest fixtures: a fixed evaluation time, the translator, compiled rules."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from datetime import UTC, datetime
from typing import Any

import pytest

from cds.engine import Engine, load_elm_dir
from cds.engine.translator import TranslationError, Translator
from cds.paths import ELM_DIR, RULES_DIR

# Every test evaluates "as of" this moment, so look-back windows are reproducible.
EVAL_AT = datetime(2026, 11, 26, 9, 0, tzinfo=UTC)


@pytest.fixture(scope="session")
def eval_at() -> datetime:
    return EVAL_AT


@pytest.fixture(scope="session")
def translator() -> Iterator[Translator]:
    with Translator([RULES_DIR]) as t:
        yield t


@pytest.fixture(scope="session")
def compiled_rules() -> dict[str, dict[str, Any]]:
    """The committed ELM of every rules library (FHIRHelpers, SLECommon, trials)."""
    return load_elm_dir(ELM_DIR)


def compile_libraries(translator: Translator, texts: Sequence[str]) -> dict[str, dict[str, Any]]:
    """Translate test-only CQL libraries (includes resolve from rules/); raise on errors."""
    out = {}
    for text in texts:
        t = translator.translate(text)
        if not t.ok:
            raise TranslationError([t])
        assert t.library and t.elm
        out[t.library] = t.elm
    return out


def engine_with(translator: Translator, compiled: dict[str, dict[str, Any]], texts: Sequence[str]) -> Engine:
    """An engine (one worker) holding the committed rules plus the given test libraries."""
    libs = dict(compiled)
    libs.update(compile_libraries(translator, texts))
    return Engine(libs, pool_size=1).start()
