from __future__ import annotations

import ipaddress
import json
import subprocess
from pathlib import Path

import pytest
from firewall_lab import SAMPLE_POLICY, sample_filter

from meshctl.firewall.apply import read_table
from meshctl.firewall.nft import (
    Layout,
    delete_document,
    listed_objects,
    render_text,
    replace_document,
    table_objects,
)
from meshctl.policy.compile import FilterRule, PacketFilter
from meshctl.policy.protocols import PortRange

GOLDEN = Path(__file__).with_name("golden")


def test_prod_text_matches_golden() -> None:
    assert render_text(sample_filter("prod"), "mesh0") == (GOLDEN / "prod.nft").read_text()


def test_prod_text_in_the_hooks_layout_matches_golden() -> None:
    assert render_text(sample_filter("prod"), "mesh0", Layout.HOOKS) == (GOLDEN / "prod-hooks.nft").read_text()


def test_dev_laptop_text_matches_golden() -> None:
    assert render_text(sample_filter("dev-laptop"), "mesh0") == (GOLDEN / "dev-laptop.nft").read_text()


def test_prod_json_matches_golden() -> None:
    got = json.dumps(replace_document(sample_filter("prod"), "mesh0"), indent=1) + "\n"
    assert got == (GOLDEN / "prod.json").read_text()


def test_replace_is_one_transaction_that_tolerates_a_missing_table() -> None:
    commands = replace_document(sample_filter("prod"), "mesh0")["nftables"]
    assert isinstance(commands, list)
    netdev, inet = ({"table": {"family": f, "name": "meshctl"}} for f in ("netdev", "inet"))
    # both of meshctl's tables go (an older meshctl's inet table too), then the new one is built
    deletes = [{"add": netdev}, {"delete": netdev}, {"add": inet}, {"delete": inet}]
    assert commands[1:6] == [*deletes, {"add": netdev}]
    assert delete_document()["nftables"] == [commands[0], *deletes]


def test_replace_keeps_the_reply_sets_when_the_layout_is_unchanged() -> None:
    """Only the rules are swapped (flush table leaves set elements), so recorded UDP flows stay."""
    before = table_objects(sample_filter("prod"), "mesh0")
    after = sample_filter("prod", SAMPLE_POLICY.read_text().replace("tag:prod:443", "tag:prod:444"))
    commands = replace_document(after, "mesh0", before)["nftables"]
    assert isinstance(commands, list)
    netdev, inet = ({"table": {"family": f, "name": "meshctl"}} for f in ("netdev", "inet"))
    assert commands[1:5] == [{"add": netdev}, {"flush": netdev}, {"add": inet}, {"flush": inet}]
    added = [c["add"] for c in commands[5:] if isinstance(c, dict)]
    assert added and all(list(a) == ["rule"] for a in added)  # no set, chain or table is re-created
    assert [{"rule": a["rule"]} for a in added] == [o for o in table_objects(after, "mesh0") if "rule" in o]


def test_replace_rebuilds_a_table_of_another_layout() -> None:
    """An older meshctl's table (input and forward chains, no sets) is replaced whole."""
    old_layout = [{"table": {"family": "inet", "name": "meshctl"}},
                  {"chain": {"family": "inet", "table": "meshctl", "name": "input", "type": "filter",
                             "hook": "input", "prio": 0, "policy": "accept"}}]
    commands = replace_document(sample_filter("prod"), "mesh0", old_layout)["nftables"]
    assert isinstance(commands, list)
    assert {"delete": {"table": {"family": "inet", "name": "meshctl"}}} in commands
    assert sum(1 for c in commands if isinstance(c, dict) and "set" in c.get("add", {})) == 2


def test_the_filter_uses_no_connection_tracking() -> None:
    """Any ct expression turns conntrack on for every packet of the host (10 % of throughput)."""
    for node in ("prod", "dev-laptop", "ops-laptop", "monitor", "dana-phone"):
        for layout in Layout:
            doc = json.dumps(replace_document(sample_filter(node), "mesh0", layout=layout))
            assert '"ct"' not in doc and "conntrack" not in doc
            assert "ct state" not in render_text(sample_filter(node), "mesh0", layout)


def test_the_device_layout_hooks_only_the_mesh_interface() -> None:
    """The filter's chains are bound to mesh0; the one chain that sees other interfaces (the strong
    host) lets the mesh interface's packets go at its first rule and drops only mesh addresses."""
    doc = replace_document(sample_filter("prod"), "mesh0")
    chains = [c["add"]["chain"] for c in doc["nftables"] if isinstance(c, dict)  # type: ignore[union-attr]
              and "chain" in c.get("add", {})]
    assert [(c["family"], c["name"], c["hook"], c.get("dev")) for c in chains] == [
        ("netdev", "ingress", "ingress", "mesh0"), ("netdev", "egress", "egress", "mesh0"),
        ("inet", "strong-host", "prerouting", None)]
    netdev_text, inet_text = render_text(sample_filter("prod"), "mesh0").split("table inet meshctl")
    assert "iifname" not in netdev_text
    strong_host = [line.strip() for line in inet_text.splitlines()[3:-2]]
    assert strong_host[0].startswith('iifname "mesh0" accept') and strong_host[1].startswith('iif "lo" accept')
    assert all(line.split(" comment ")[0].endswith("drop") for line in strong_host[2:])


def test_only_the_nodes_own_sources_appear() -> None:
    text = render_text(sample_filter("prod"), "mesh0")
    # monitor (.4) may reach prod on 9100-9101 only; nobody else's rules are on prod
    assert "100.64.0.4 ip daddr 100.64.0.1 tcp dport 9100-9101 accept" in text
    assert "100.64.50." not in text  # prod's own outbound DNS rule is enforced elsewhere
    chain = [line.strip() for line in text.split("chain ingress {")[1].split("chain egress {")[0].splitlines()]
    assert chain[-3] == 'drop comment "default deny"'
    # Packets of a connection (to prod's own addresses: nearly all traffic) first, then non-IP;
    # then what is not addressed to prod is dropped before anything but neighbour discovery is
    # accepted.
    assert chain[2].startswith("ip daddr 100.64.0.1 tcp flags != syn / syn,ack accept")
    assert chain[3].startswith("ip6 daddr fd7a:115c:a1e0::1 tcp flags != syn / syn,ack accept")
    assert chain[4].startswith("meta protocol != { ip, ip6 } accept")
    assert "neighbour discovery" in chain[5]
    assert chain[6:8] == ["ip daddr != 100.64.0.1 drop", "ip6 daddr != fd7a:115c:a1e0::1 drop"]


def _one_rule(sources: list[str], ports: tuple[PortRange, ...] = (PortRange(22, 22),)) -> PacketFilter:
    addrs = (ipaddress.ip_address("100.64.0.1"), ipaddress.ip_address("fd7a::1"))
    rule = FilterRule(tuple(ipaddress.ip_network(s) for s in sources), addrs, (6, 17), ports, 0, 3)
    return PacketFilter("n", addrs, (rule,), ())


def test_slash_10_prefix_is_encoded_as_a_prefix() -> None:
    pf = _one_rule(["100.64.0.0/10"])
    rules = [o["rule"] for o in table_objects(pf, "mesh0") if "rule" in o]
    acl = [r for r in rules if r.get("comment") == "acls[0] line 3"]  # type: ignore[union-attr]
    saddr = acl[0]["expr"][0]  # type: ignore[index]
    assert saddr == {
        "match": {
            "op": "==",
            "left": {"payload": {"protocol": "ip", "field": "saddr"}},
            "right": {"prefix": {"addr": "100.64.0.0", "len": 10}},
        }
    }


def test_address_sets_are_written_as_nft_lists_them() -> None:
    # adjacent blocks merge; an aligned block is a prefix, anything else a range
    pf = _one_rule(["10.0.0.2/31", "10.0.0.4/31", "10.0.0.8/30", "10.0.0.12/30", "10.1.0.1/32"])
    text = render_text(pf, "if0")
    assert "ip saddr { 10.0.0.2-10.0.0.5, 10.0.0.8/29, 10.1.0.1 }" in text
    ports = (PortRange(80, 80), PortRange(81, 90), PortRange(443, 443), PortRange(22, 22))
    assert "th dport { 22, 80-90, 443 }" in render_text(_one_rule(["0.0.0.0/0"], ports), "if0")


def test_any_source_omits_the_saddr_match() -> None:
    text = render_text(_one_rule(["0.0.0.0/0", "::/0"]), "if0")
    acl_lines = [line.strip() for line in text.splitlines() if "acls[0]" in line]
    assert acl_lines == [
        'ip daddr 100.64.0.1 meta l4proto { tcp, udp } th dport 22 accept comment "acls[0] line 3"',
        'ip6 daddr fd7a::1 meta l4proto { tcp, udp } th dport 22 accept comment "acls[0] line 3"',
    ]


def test_listed_objects_drops_handles_and_metainfo() -> None:
    listing = {"nftables": [{"metainfo": {"version": "1"}}, {"table": {"family": "inet", "name": "t", "handle": 3}},
                            {"set": {"name": "s", "handle": 4, "elem": [{"elem": {"val": 1, "expires": 9}}]}}]}
    assert listed_objects(listing) == [{"table": {"family": "inet", "name": "t"}}, {"set": {"name": "s"}}]
    with pytest.raises(ValueError):
        listed_objects({"nope": []})


@pytest.mark.netns
def test_golden_text_and_json_load_in_nft(scratch_ns: str) -> None:
    for golden in ("prod.nft", "prod-hooks.nft"):
        check = subprocess.run(
            ["ip", "netns", "exec", scratch_ns, "nft", "-c", "-f", str(GOLDEN / golden)],
            capture_output=True,
            text=True,
        )
        assert check.returncode == 0, check.stderr
    load = subprocess.run(
        ["ip", "netns", "exec", scratch_ns, "nft", "-j", "-f", str(GOLDEN / "prod.json")],
        capture_output=True,
        text=True,
    )
    assert load.returncode == 0, load.stderr
    listed = subprocess.run(
        ["ip", "netns", "exec", scratch_ns, "nft", "list", "table", "netdev", "meshctl"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert "tcp dport 9100-9101 accept" in listed


@pytest.mark.netns
@pytest.mark.parametrize("layout", list(Layout), ids=lambda la: la.name)
@pytest.mark.parametrize("node", ["prod", "dev-laptop", "ops-laptop", "monitor", "dana-phone"])
def test_nft_lists_back_exactly_what_we_wrote(scratch_ns: str, node: str, layout: Layout) -> None:
    """The read-back comparison works: nft's listing equals table_objects() for each node."""
    pf = sample_filter(node)
    doc = json.dumps(replace_document(pf, "mesh0", layout=layout))
    subprocess.run(["ip", "netns", "exec", scratch_ns, "nft", "-j", "-f", "-"], input=doc, text=True, check=True)
    assert read_table(scratch_ns) == table_objects(pf, "mesh0", layout)


@pytest.mark.netns
def test_merged_sets_and_slash_10_list_back_exactly(scratch_ns: str) -> None:
    ports = (PortRange(80, 80), PortRange(81, 90), PortRange(443, 443))
    pf = _one_rule(["100.64.0.0/10", "10.0.0.2/31", "10.0.0.4/31", "fd00::/64", "fd01::1/128"], ports)
    doc = json.dumps(replace_document(pf, "mesh0"))
    subprocess.run(["ip", "netns", "exec", scratch_ns, "nft", "-j", "-f", "-"], input=doc, text=True, check=True)
    assert read_table(scratch_ns) == table_objects(pf, "mesh0")
