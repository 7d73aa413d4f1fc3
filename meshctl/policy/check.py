"""The policy checks a pull request and `meshctl admin sign` run (pure).

`check_policy(text, netmap)` is the one entry point: a policy is fit to sign when it parses
(file:line:col on any fault) and every entry of its `tests` holds against the members of
`netmap` (compiled and decided by the same code every node's filter comes from). It returns
one line per problem, empty when the policy may be signed.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from meshctl.coord.netmap import NetMap
from meshctl.errors import MeshctlError, ParseError
from meshctl.policy.evaluate import run_policy_tests
from meshctl.policy.parse import parse_policy

if TYPE_CHECKING:
    from meshctl.coord.verify import Verified


def check_policy(policy_text: str, netmap: NetMap) -> list[str]:
    """Problems with a policy text: its parse error, or each failed policy test."""
    try:
        policy = parse_policy(policy_text)
        return run_policy_tests(policy, netmap)
    except ParseError as exc:
        return [exc.message]
    except MeshctlError as exc:  # a test cannot be placed (every mesh address named)
        return [f"policy.hujson: tests: {exc.message}"]


def policy_warnings(policy_text: str) -> list[str]:
    """Sections loaded but not enforced (`ssh`, `sshTests`), one line each; empty if it does not parse."""
    try:
        return list(parse_policy(policy_text).warnings)
    except ParseError:
        return []


def policy_problems(verified: Verified) -> list[str]:
    """The hook `meshctl repo verify` calls with the verified repository."""
    return check_policy(verified.policy_text, verified.netmap)
