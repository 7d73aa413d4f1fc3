"""Fixtures for policy tests: the sample policy and a small mesh that uses it."""

from __future__ import annotations

import pytest
from policy_samples import SAMPLE_PEERS, SAMPLE_POLICY, make_netmap, make_peer

from meshctl.coord.netmap import NetMap
from meshctl.policy.parse import Policy, parse_policy


@pytest.fixture
def sample_text() -> str:
    return SAMPLE_POLICY.read_text()


@pytest.fixture
def sample_policy(sample_text: str) -> Policy:
    return parse_policy(sample_text)


@pytest.fixture
def sample_netmap(sample_text: str) -> NetMap:
    return make_netmap([make_peer(*p) for p in SAMPLE_PEERS], sample_text)
