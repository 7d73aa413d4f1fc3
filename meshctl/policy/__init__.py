"""The access policy (Tailscale's format), all pure code. Entry points:

- `check.check_policy(text, netmap) -> list[str]`: may this policy be signed? Its parse error
  or each failed policy test, one line each; empty when fit. (`repo verify`, `admin sign`.)
- `compile.compile_filter(policy, netmap, node) -> PacketFilter`: what a node enforces (nft),
  cut from the mesh's one RuleSet (`compile.compile_rules`, `compile.node_filter`).
- `evaluate.evaluate(policy, netmap, src, dst, port, proto) -> Decision`: `meshctl acl check`;
  `evaluate.run_policy_tests`: the policy's `tests`. Both decide against that same RuleSet.
- `approvers.auto_approved(policy, device, advertised_routes, exit_node) -> AutoApproval`: the
  routes and exit-node use `autoApprovers` approves, for `meshctl admin approve`.

Nothing is imported here: `protocols` is read by the nft renderer on every sync pass.
"""
