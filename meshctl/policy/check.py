"""The policy checks `meshctl repo verify` runs on a pull request (pure).

The policy must parse (with file:line:col on any fault) and every entry of its
`tests` must hold against the verified map; one line per problem.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from meshctl.coord.netmap import NetMap
from meshctl.errors import ParseError
from meshctl.policy.compile import run_policy_tests
from meshctl.policy.parse import parse_policy

if TYPE_CHECKING:
    from meshctl.coord.verify import Verified


def check_policy(policy_text: str, netmap: NetMap) -> list[str]:
    """Problems with a policy text: its parse error, or each failed policy test."""
    try:
        policy = parse_policy(policy_text)
    except ParseError as exc:
        return [exc.message]
    return run_policy_tests(policy, netmap)


def policy_problems(verified: Verified) -> list[str]:
    """The hook `meshctl repo verify` calls with the verified repository."""
    return check_policy(verified.policy_text, verified.netmap)
