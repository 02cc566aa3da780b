"""Writing jobs search knowledge bases: the knowledge tests' fixtures serve here too."""

from knowledge.tests.conftest import (  # noqa: F401 - fixtures
    _fresh_search_cache,
    kb,
    no_broker,
)
