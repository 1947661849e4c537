"""The test internet's own checks use the same fixtures as the integration tests."""

from tests.integration.testnet_fixtures import host_listener, testnet  # noqa: F401
