"""Unattended joins and key lifecycle, end to end: real wireguard-go, a real git daemon as the host,
network namespaces (lab).

- A server joins with `--auth-key` from a script (no terminal, nobody to answer) and every node
  (an agent, and a cron-synced server) accepts it on its next sync: tunnels both ways.
- Made-up, expired and revoked keys, and a key used outside its scope (another tag, an address
  outside its pool), add nobody; the git host forging or replaying an enrollment is refused.
- After `rotate-keys` a running peer regains its tunnel to the rotated device within one sync.
- A membership that expires is warned about ahead in `status`, then dropped by every node.
"""

from __future__ import annotations

import json
import time

from enroll_support import EnrollMesh, GitHost, crafted_enrollment, lan_mesh, resign_enrollment

from lab import Lab
from lab.core import wait_for
from meshctl.coord.enrollment import key_text
from meshctl.keys import SigningKey

SYNC_S = 2  # the agents' sync interval here ("one sync" below allows twice that, and the handshake)


def test_a_server_joins_from_a_script_and_every_node_accepts_it_on_its_next_sync(lab: Lab) -> None:
    em = lan_mesh(lab, ("desk", "cron"), spare=1)
    mesh = em.mesh
    mesh.up("desk", "--sync-interval", str(SYNC_S))
    assert mesh.meshctl("cron", "sync").returncode == 0
    key = em.create_key("--tag", "tag:server", "--pool", "100.64.1.0/24")
    web = em.server("web")
    began = time.monotonic()
    proc = em.enroll_by_script(web, "web", key)
    scripted = time.monotonic() - began
    assert proc.returncode == 0, proc.stderr
    assert "enrolled web in enroll with auth key" in proc.stdout and "tags tag:server" in proc.stdout
    web_ip = mesh.members["web"].mesh_ipv4
    assert web_ip.startswith("100.64.1."), web_ip
    assert mesh.meshctl("cron", "sync").returncode == 0  # the cron server's next sync
    assert em.peers_of("cron")["web"]["mesh_ips"][0] == web_ip
    assert wait_for(lambda: "web" in em.peers_of("desk"), 3 * SYNC_S) is not None  # the agent's next sync
    for src in ("desk", "cron"):
        assert mesh.ping(src, web_ip), src
        assert mesh.ping("web", mesh.members[src].mesh_ipv4), src
    print(f"join --auth-key + sync on the server: {scripted:.1f} s; its script's start to both nodes' pings "
          f"answered: {time.monotonic() - began:.1f} s (agent sync interval {SYNC_S} s)")
    assert em.peers_of("desk")["web"]["enrolled_with"] is not None
    mesh.up("web", "--sync-interval", str(SYNC_S))  # the enrolled server's own agent: a member to itself too
    assert mesh.status("web")["self"]["enrolled_with"] is not None
    assert wait_for(lambda: mesh.ping("web", mesh.members["desk"].mesh_ipv4, 1, 1), 10.0) is not None
    # The next admin signing command makes it an ordinary member (in its diff); the single-use key is used up.
    out = mesh.admin("admin", "renew")
    assert "+ member web: 100.64.1." in out and "tags tag:server" in out and "- authkey" in out, out
    em.push()
    assert mesh.meshctl("cron", "sync").returncode == 0
    assert em.peers_of("cron")["web"]["enrolled_with"] is None
    assert mesh.ping("cron", web_ip)


def test_made_up_expired_revoked_and_out_of_scope_keys_add_nobody(lab: Lab) -> None:
    em = lan_mesh(lab, ("cron",), spare=1)
    mesh = em.mesh
    host = GitHost(mesh.repo_dir)
    node = em.server("web")
    made_up = key_text(SigningKey.generate())  # well-formed, never listed
    proc = em.enroll_by_script(node, "web", made_up)
    assert proc.returncode == 2 and "is not in the mesh's signed state" in proc.stderr, proc.stderr
    expired = em.create_key("--expires", "1s")
    time.sleep(1.5)
    proc = em.enroll_by_script(node, "web", expired)
    assert proc.returncode == 2 and "expired at" in proc.stderr, proc.stderr
    revoked = em.create_key("--reusable")
    mesh.admin("admin", "authkey", "revoke", revoked.split("-")[2])
    em.push()
    proc = em.enroll_by_script(node, "web", revoked)
    assert proc.returncode == 2 and "made up, revoked" in proc.stderr, proc.stderr
    scoped = em.create_key("--tag", "tag:server", "--pool", "100.64.1.0/24", "--reusable")
    proc = em.enroll_by_script(node, "web", scoped, "--tag", "tag:db")
    assert proc.returncode == 2 and "--tag tag:db: outside auth key" in proc.stderr, proc.stderr
    assert not [b for b in host.branches() if "endpoints/" in b], host.branches()  # nothing was published
    # Someone holding the key asks nodes directly for more than it allows: nodes refuse it.
    host.plant("endpoints/far", crafted_enrollment(mesh, scoped, "far", "100.64.2.9"))
    host.plant("endpoints/db", crafted_enrollment(mesh, scoped, "db", "100.64.1.9", ("tag:db",)))
    assert mesh.meshctl("cron", "sync").returncode == 0
    status = mesh.status("cron")
    assert {p["name"] for p in status["peers"]} == set()
    refused = status["refused_enrollments"]
    assert "address 100.64.2.9 is outside auth key" in refused["far"], refused
    assert "asks for tag:db, outside auth key" in refused["db"], refused
    human = mesh.meshctl("cron", "status").stdout
    assert "enrollment on endpoints/far refused: address 100.64.2.9 is outside" in human, human


def test_the_git_host_forging_or_replaying_an_enrollment_is_refused(lab: Lab) -> None:
    em = lan_mesh(lab, ("cron",), spare=1)
    mesh = em.mesh
    host = GitHost(mesh.repo_dir)
    key = em.create_key("--tag", "tag:server", "--reusable")
    assert em.enroll_by_script(em.server("web"), "web", key).returncode == 0
    genuine = host.files("endpoints/web")
    network_id = json.loads(genuine["enrollment.json"])["network_id"]
    # Forged: the enrollment re-signed by a key of the host's own (it has not the auth key).
    host.plant("endpoints/fake", resign_enrollment({**genuine}, network_id, SigningKey.generate()))
    # Replayed: web's genuine files on another device's branch.
    host.plant("endpoints/copy", genuine)
    assert mesh.meshctl("cron", "sync").returncode == 0
    status = mesh.status("cron")
    assert {p["name"] for p in status["peers"]} == {"web"}
    assert "but it is on endpoints/fake" in status["refused_enrollments"]["fake"]
    assert "but it is on endpoints/copy" in status["refused_enrollments"]["copy"]
    # Replayed after the device is gone: the admin absorbs and revokes web in one command; the host
    # serves its old enrollment again (a valid, reusable key still listed): its keys are revoked.
    out = mesh.admin("admin", "revoke", "web")
    assert "absorbed web: " in out and "+ revoked keys of web" in out, out
    em.push()
    host.plant("endpoints/web", genuine)
    assert mesh.meshctl("cron", "sync").returncode == 0
    status = mesh.status("cron")
    assert "web" not in {p["name"] for p in status["peers"]}
    assert "is revoked device web's" in status["refused_enrollments"]["web"], status["refused_enrollments"]


def test_after_rotate_keys_a_running_peer_regains_its_tunnel_within_one_sync(lab: Lab) -> None:
    em = lan_mesh(lab, ("desk", "laptop", "cron"), spare=0)
    mesh = em.mesh
    mesh.up("desk", "--sync-interval", str(SYNC_S))
    mesh.up("laptop", "--sync-interval", str(SYNC_S))
    assert mesh.meshctl("cron", "sync").returncode == 0
    desk_ip, laptop_ip = mesh.members["desk"].mesh_ipv4, mesh.members["laptop"].mesh_ipv4
    assert wait_for(lambda: mesh.ping("desk", laptop_ip, 1, 1), 15.0) is not None
    before = mesh.status("laptop")["self"]
    began = time.monotonic()
    out = mesh.meshctl("laptop", "rotate-keys").stdout  # through laptop's agent
    assert f"rotated: WireGuard key {before['wg_public_key']} -> " in out, out
    after = mesh.status("laptop")["self"]
    assert after["wg_public_key"] != before["wg_public_key"] and after["mesh_ips"] == before["mesh_ips"]
    assert interface_key(em, "laptop") == after["wg_public_key"]  # the interface switched with it
    assert wait_for(lambda: mesh.ping("desk", laptop_ip, 1, 1), 2 * SYNC_S + 8.0) is not None
    took = time.monotonic() - began
    assert em.peers_of("desk")["laptop"]["wg_public_key"] == after["wg_public_key"]
    assert mesh.ping("laptop", desk_ip)
    # A cron-synced server rotates (no agent: rotate-keys runs the pass itself); the agent keeps up.
    cron_before = mesh.status("cron")["self"]["wg_public_key"]
    out = mesh.meshctl("cron", "rotate-keys", "--rotate-every", "90d").stdout
    assert "next rotation in 90d" in out, out
    cron_after = mesh.status("cron")["self"]["wg_public_key"]
    assert cron_after != cron_before and interface_key(em, "cron") == cron_after
    cron_ip = mesh.members["cron"].mesh_ipv4
    assert wait_for(lambda: mesh.ping("desk", cron_ip, 1, 1), 2 * SYNC_S + 8.0) is not None
    assert em.peers_of("desk")["cron"]["wg_public_key"] == cron_after
    # Automatic rotation from cron: `sync` rotates once the keys are older than --rotate-every.
    mesh.meshctl("cron", "rotate-keys", "--rotate-every", "3s")
    assert "rotated keys" not in mesh.meshctl("cron", "sync").stdout  # not due yet
    time.sleep(3.5)
    out = mesh.meshctl("cron", "sync").stdout
    assert "rotated keys: WireGuard" in out, out
    auto = interface_key(em, "cron")
    assert auto != cron_after and auto == mesh.status("cron")["self"]["wg_public_key"]
    assert wait_for(lambda: em.peers_of("desk")["cron"]["wg_public_key"] == auto, 3 * SYNC_S) is not None
    assert wait_for(lambda: mesh.ping("desk", cron_ip, 1, 1), 2 * SYNC_S + 8.0) is not None
    print(f"tunnel back {took:.1f} s after rotate-keys began (sync interval {SYNC_S} s)")


def interface_key(em: EnrollMesh, name: str) -> str:
    """The public key the member's WireGuard interface has now (as `wg` reads it)."""
    node = em.mesh.members[name].node
    ifname = em.lab.meshctl_env(node)["MESHCTL_INTERFACE"]
    return em.lab.run(node, ["wg", "show", ifname, "public-key"]).stdout.strip()


def test_an_expired_membership_is_warned_ahead_then_dropped(lab: Lab) -> None:
    em = lan_mesh(lab, ("desk", "phone"), spare=0, phone=("--expires", "40s"))
    mesh = em.mesh
    mesh.up("desk", "--sync-interval", str(SYNC_S))
    assert mesh.meshctl("phone", "sync").returncode == 0
    status = mesh.status("phone")
    assert status["self"]["membership_expires"] is not None
    assert any("the membership of phone expires at" in w for w in status["warnings"]), status["warnings"]
    assert "warning: the membership of phone expires at" in mesh.meshctl("phone", "status").stdout
    phone_ip = mesh.members["phone"].mesh_ipv4
    assert wait_for(lambda: mesh.ping("desk", phone_ip, 1, 1), 15.0) is not None
    assert em.peers_of("desk")["phone"]["membership_expires"] == status["self"]["membership_expires"]
    left = status["self"]["membership_expires"] - time.time()
    time.sleep(max(0.0, left))
    assert "phone" not in em.peers_of("desk")
    assert wait_for(lambda: not mesh.ping("desk", phone_ip, 1, 1), 3 * SYNC_S) is not None  # the agent's next pass
    proc = mesh.meshctl("phone", "sync", check=False)
    assert proc.returncode != 0 and "no longer a member of mesh enroll: membership expired at" in proc.stderr
    assert any("phone is no longer a member" in w for w in mesh.status("phone")["warnings"])
