"""bench/peers.py's pure parts: the Nebula and tinc configurations it writes, the statistics and
table it prints, the /proc and `ss` parsers it measures with, its options. No timing here."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import peers_config as cfg
import peers_report as report
import procstat
import pytest
from peers import PHASES, parse_args

LIGHTHOUSE = cfg.Overlay("lighthouse", "10.42.0.1", "nebl1")
DEVICE = cfg.Overlay("a", "10.42.0.2", "neba2")
HUB = cfg.Overlay("hub", "10.43.0.1", "tinch1")


# --- Nebula ---------------------------------------------------------------------------------------


def test_nebula_device_reaches_the_lighthouse_with_equal_mtu_and_buffers() -> None:
    conf = cfg.nebula_config(DEVICE, pki_dir="/pki", lighthouse=LIGHTHOUSE, lighthouse_public="203.0.113.13",
                             use_relay=True)
    assert conf["static_host_map"] == {"10.42.0.1": ["203.0.113.13:4242"]}
    assert conf["lighthouse"] == {"am_lighthouse": False, "hosts": ["10.42.0.1"]}
    assert conf["relay"] == {"am_relay": False, "use_relays": True, "relays": ["10.42.0.1"]}
    assert conf["tun"]["mtu"] == 1420 == cfg.TUNNEL_MTU
    assert conf["tun"]["dev"] == "neba2"
    assert conf["listen"]["port"] == 4242
    # The kernel doubles what is asked: 16 MiB, as meshctl's wireguard-go gets.
    assert conf["listen"]["read_buffer"] == conf["listen"]["write_buffer"] == 8 * 1024 * 1024
    assert conf["punchy"] == {"punch": True, "respond": True}
    assert conf["pki"] == {"ca": "/pki/ca.crt", "cert": "/pki/a.crt", "key": "/pki/a.key"}


def test_nebula_without_relay_and_the_lighthouse_itself() -> None:
    direct = cfg.nebula_config(DEVICE, pki_dir="/pki", lighthouse=LIGHTHOUSE, lighthouse_public="203.0.113.13",
                               use_relay=False)
    assert direct["relay"] == {"am_relay": False, "use_relays": False}
    lh = cfg.nebula_config(LIGHTHOUSE, pki_dir="/pki", lighthouse=LIGHTHOUSE, lighthouse_public="203.0.113.13",
                           use_relay=False)
    assert lh["lighthouse"] == {"am_lighthouse": True, "hosts": []}
    assert lh["relay"]["am_relay"] is True
    # YAML is a superset of JSON: the text Nebula reads parses back to the same document.
    assert json.loads(cfg.nebula_config_text(lh)) == lh


def test_nebula_refuses_bad_input() -> None:
    with pytest.raises(ValueError):
        cfg.nebula_config(DEVICE, pki_dir="/pki", lighthouse=LIGHTHOUSE, lighthouse_public="not-an-ip",
                          use_relay=True)
    with pytest.raises(ValueError):
        cfg.Overlay("a b", "10.42.0.2", "x")
    with pytest.raises(ValueError):
        cfg.Overlay("a", "10.42.0.2", "name-longer-than-15")
    with pytest.raises(ValueError):
        cfg.overlay_ip(cfg.NEBULA_NET, 255)


@pytest.mark.skipif(shutil.which("nebula") is None or shutil.which("nebula-cert") is None,
                    reason="needs Debian's nebula (in the Makefile's APT_PACKAGES)")
def test_nebula_accepts_the_generated_config(tmp_path: Path) -> None:
    """`nebula -test` loads the configuration, the certificates and the tun settings and exits 0."""
    subprocess.run(["nebula-cert", "ca", "-name", "t", "-out-crt", f"{tmp_path}/ca.crt", "-out-key",
                    f"{tmp_path}/ca.key"], check=True, capture_output=True)
    for node in (LIGHTHOUSE, DEVICE):
        subprocess.run(["nebula-cert", *cfg.nebula_cert_sign_args(node, str(tmp_path))], check=True,
                       capture_output=True)
        for use_relay in (False, True):
            conf = cfg.nebula_config(node, pki_dir=str(tmp_path), lighthouse=LIGHTHOUSE,
                                     lighthouse_public="203.0.113.13", use_relay=use_relay)
            path = tmp_path / f"{node.name}-{use_relay}.yml"
            path.write_text(cfg.nebula_config_text(conf))
            proc = subprocess.run(["nebula", "-test", "-config", str(path)], capture_output=True, text=True)
            assert proc.returncode == 0, proc.stderr


# --- tinc -----------------------------------------------------------------------------------------


def test_tinc_device_connects_to_the_hub_and_keeps_the_nat_open() -> None:
    device = cfg.Overlay("a", "10.43.0.2", "tinca2")
    conf = cfg.tinc_conf(device, ["hub"]).splitlines()
    assert "Name = a" in conf and "ConnectTo = hub" in conf and "Interface = tinca2" in conf
    assert "Port = 655" in conf and "Mode = router" in conf
    # Under the lab NATs' 30 s UDP timeout (tinc's default 60 s lets the direct path die).
    assert f"PingInterval = {cfg.TINC_PING_INTERVAL_S}" in conf and cfg.TINC_PING_INTERVAL_S < 30
    assert not any(line.startswith("ConnectTo") for line in cfg.tinc_conf(HUB, []).splitlines())


def test_tinc_host_files_and_tinc_up() -> None:
    assert cfg.tinc_host(HUB, "203.0.113.14").splitlines() == [
        "Address = 203.0.113.14 655", "Subnet = 10.43.0.1/32", "Port = 655"]
    assert "Address" not in cfg.tinc_host(cfg.Overlay("a", "10.43.0.2", "t2"))  # behind a NAT
    up = cfg.tinc_up(HUB)
    assert up.startswith("#!/bin/sh\n")
    assert 'ip addr add 10.43.0.1/24 dev "$INTERFACE"' in up
    assert 'mtu 1420 up' in up
    args = cfg.tincd_args("/etc/x", "/run/x.pid")
    assert args[:2] == ["tincd", "-D"] and "--pidfile=/run/x.pid" in args and "-c" in args
    with pytest.raises(ValueError):
        cfg.tinc_conf(HUB, ["bad name"])
    with pytest.raises(ValueError):
        cfg.tinc_host(HUB, "203.0.113")


def test_the_block_drops_both_directions_between_the_two_nats() -> None:
    rules = cfg.block_between_ruleset("203.0.113.10", "203.0.113.11")
    assert "ip saddr 203.0.113.10 ip daddr 203.0.113.11 drop" in rules
    assert "ip saddr 203.0.113.11 ip daddr 203.0.113.10 drop" in rules
    assert "hook forward" in rules and f"table ip {cfg.BLOCK_TABLE}" in rules
    with pytest.raises(ValueError):
        cfg.block_between_ruleset("203.0.113.10; flush ruleset", "203.0.113.11")


# --- statistics and the table ---------------------------------------------------------------------


def test_one_side_rows_give_the_pooled_median_and_each_side() -> None:
    samples: report.Samples = {}
    for a, b in ((0.8, None), (1.0, None), (None, 1.9), (None, 1.8)):
        report.record(samples, "first_reply", "meshctl", {"a": a} if a is not None else {"b": b})
    cell = report.cell(report.ROWS[0], samples, "meshctl")
    assert cell is not None
    assert cell.value == pytest.approx(1.4)  # median of 0.8, 1.0, 1.8, 1.9
    assert cell.detail["by_side"] == {"a": pytest.approx(0.9), "b": pytest.approx(1.85)}
    assert cell.text == "1.40 (0.90 / 1.85)"


def test_a_side_without_reply_counts_as_a_failure_not_a_number() -> None:
    samples: report.Samples = {}
    report.record(samples, "first_reply_both", "tinc", {"a": 0.05, "b": None})
    report.record(samples, "first_reply_both", "tinc", {"a": 0.07, "b": 0.06})
    row = next(r for r in report.ROWS if r.key == "first-reply-both")
    cell = report.cell(row, samples, "tinc")
    assert cell is not None and cell.value == pytest.approx(0.06)
    assert cell.detail["failed"] == 1 and "[1 of 4 no reply]" in cell.text


def test_parts_add_up_per_node_and_show_each_part() -> None:
    samples: report.Samples = {}
    report.record(samples, "rss_start", "meshctl", {"agent": 57.0, "wireguard-go": 5.0})
    report.record(samples, "rss_start", "meshctl", {"agent": 55.0, "wireguard-go": 7.0})
    report.record(samples, "rss_start", "meshctl", {"agent": 60.0, "wireguard-go": None})  # not measured
    row = next(r for r in report.ROWS if r.key == "rss-start")
    cell = report.cell(row, samples, "meshctl")
    assert cell is not None and cell.value == pytest.approx(62.0)
    assert cell.detail["parts"] == {"agent": pytest.approx(57.0), "wireguard-go": pytest.approx(6.0)}
    assert cell.text == "62.0 (agent 57.0 + wireguard-go 6.00)"


def test_ratio_and_pair_rows() -> None:
    samples: report.Samples = {}
    for mbit in (300.0, 320.0, 310.0):
        report.record(samples, "throughput_direct", "nebula", mbit)
    for mbit in (150.0, 160.0):
        report.record(samples, "throughput_relayed", "nebula", mbit)
    report.record(samples, "share_direct", "nebula", 0.00002)
    report.record(samples, "share_relayed", "nebula", 1.2)
    rows = dict((row.key, cells) for row, cells in report.build_rows(samples))
    ratio = rows["relayed-ratio"]["nebula"]
    assert ratio is not None and ratio.value == pytest.approx(155 / 310)
    share = rows["server-share"]["nebula"]
    assert share is not None and share.text == "0.00 / 1.20"
    assert rows["throughput"]["meshctl"] is None  # not measured: a dash in the table
    assert "| throughput direct" in report.markdown_table(report.build_rows(samples))


def test_summary_is_meshctl_over_each_peer() -> None:
    samples: report.Samples = {}
    for system, seconds in (("meshctl", 1.2), ("nebula", 1.5), ("tinc", 0.05)):
        report.record(samples, "first_reply", system, {"a": seconds})
    for system, mbit in (("meshctl", 400.0), ("nebula", 300.0)):
        report.record(samples, "throughput_direct", system, mbit)
    ratios = report.summary(report.build_rows(samples))
    assert ratios["nebula"]["first reply"] == pytest.approx(0.8)
    assert ratios["tinc"]["first reply"] == pytest.approx(24.0)
    assert ratios["nebula"]["throughput"] == pytest.approx(400 / 300)
    assert ratios["tinc"]["throughput"] is None
    line = report.summary_line(ratios)
    assert line.startswith("meshctl/Nebula: first reply 0.80, throughput 1.33 | meshctl/tinc: first reply 24.0")


def test_json_keeps_samples_rows_and_conditions() -> None:
    samples: report.Samples = {}
    report.record(samples, "server_idle_cpu", "tinc", 0.025)
    doc = report.to_json(samples, report.build_rows(samples), {"load_start": 1.5})
    assert doc["meta"] == {"load_start": 1.5}
    assert doc["samples"] == {"server_idle_cpu": {"tinc": [0.025]}}
    assert doc["rows"][0]["key"] == "server-idle-cpu"
    assert doc["rows"][0]["cells"]["tinc"]["value"] == pytest.approx(0.025)
    json.dumps(doc)  # serialisable as it is


@pytest.mark.parametrize(("value", "text"), [(1.36, "1.36"), (0.44, "0.44"), (0.0031, "0.0031"), (912.4, "912"),
                                             (12.34, "12.3"), (0.0, "0"), (None, "n/a"), (float("nan"), "n/a")])
def test_numbers_keep_their_significant_digits(value: float | None, text: str) -> None:
    assert report.fmt(value) == text


# --- /proc and ss parsers -----------------------------------------------------------------------


def test_cpu_uses_the_precise_figure_unless_threads_or_children_ended() -> None:
    tick = 0.01
    before = procstat.CpuReading(ticks_s=1.00, sched_s=1.0031)
    # The threads all lived: the nanosecond figure, below one tick of difference.
    assert procstat.cpu_used(before, procstat.CpuReading(1.00, 1.0049), tick) == pytest.approx(0.0018)
    # A thread (or waited child) ended with 0.5 s: only the tick figure still has it.
    assert procstat.cpu_used(before, procstat.CpuReading(1.52, 1.0200), tick) == pytest.approx(0.52)
    # Readings of a process that started in between count whole.
    assert procstat.tree_cpu_used({}, {7: procstat.CpuReading(0.02, 0.015)}, tick) == pytest.approx(0.015)


def test_stat_and_status_parsers() -> None:
    stat = "1234 (tincd (x) y) S 1 1234 1234 0 -1 4194560 1 0 0 0 300 200 5 7 20 0 1 0 100 0 0"
    fields = procstat.stat_fields(stat)
    assert fields[0] == "S" and fields[1] == "1"
    assert procstat.stat_cpu_s(stat, tick_s=0.01) == pytest.approx(5.12)
    assert procstat.schedstat_s("2500000000 100 7\n") == pytest.approx(2.5)
    status = "Name:\tpython\nvoluntary_ctxt_switches:\t4242\nnonvoluntary_ctxt_switches:\t7\n"
    assert procstat.voluntary_switches(status) == 4242
    assert procstat.rss_kib("Name:\tnebula\nVmRSS:\t   13312 kB\n") == 13312
    assert procstat.rss_kib("Name:\tzombie\n") == 0


def test_skmem_gives_each_sockets_buffers() -> None:
    out = ("UNCONN 0 0 0.0.0.0:655 0.0.0.0:*\n\t skmem:(r0,rb16777216,t0,tb16777216,f4096,w0,o0,bl0,d0)\n"
           "UNCONN 0 0 [::]:51820 [::]:*\n\t skmem:(r0,rb212992,t0,tb212992,f0,w0,o0,bl0,d3)\n")
    assert procstat.skmem_buffers(out) == [(16777216, 16777216), (212992, 212992)]
    assert procstat.skmem_buffers("") == []


# --- options --------------------------------------------------------------------------------------


def test_quick_and_only_choose_what_runs() -> None:
    quick = parse_args(["--quick"])
    assert (quick.rounds, quick.seconds, quick.idle, quick.peers) == (1, 2.0, 5.0, 0)
    assert quick.phases == {"one-side", "blocked", "idle", "direct", "relayed", "peers"}
    only = parse_args(["--only", "relay-cpu", "--only", "first-reply"])
    assert only.phases == {"blocked", "relayed", "one-side"}
    assert parse_args(["--only", "first-reply-both"]).phases == set()  # that start always runs
    assert set(PHASES) == set(report.ROW_KEYS)  # every row can be asked for
    for bad in (["--rounds", "0"], ["--only", "nonsense"], ["--seconds", "0"]):
        with pytest.raises(SystemExit):
            parse_args(bad)
