"""The test internet's own checks use the same fixtures as the integration tests."""

from tests.integration.testnet_fixtures import (  # noqa: F401
    beyond_host, beyond_listener, host_listener, metadata_guard, testnet)
