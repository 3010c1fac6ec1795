"""The running-app fixtures of the integration suite, shared by the security tests."""

from tests.integration.conftest import api, api_factory  # noqa: F401 - re-exported fixtures
