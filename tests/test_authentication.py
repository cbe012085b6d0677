"""The authentication interceptor's edges that the end-to-end tests do not reach."""

from __future__ import annotations

import pytest

from gateway.api.authentication import current_caller
from gateway.core.errors import Unauthenticated


def test_a_servicer_reached_without_the_interceptor_finds_no_caller_and_refuses() -> None:
    with pytest.raises(Unauthenticated):
        current_caller()
