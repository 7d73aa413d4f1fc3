#!/usr/bin/env bash
# Run tests/kernel against real kernel WireGuard.
#
# The host kernel here has no WireGuard module, so this boots a stock Debian kernel (which ships
# wireguard.ko) under qemu with virtme-ng, in software emulation (TCG: nested KVM fails to boot it).
# The guest sees the host root filesystem read-only over 9p, with copy-on-write overlays on the
# usual writable trees and on this checkout. One boot runs every kernel test; the guest runs
# `python -m pytest tests/kernel` with MESHCTL_IN_VM=1 and this script exits with pytest's code.
#
# Usage: scripts/test-kernel.sh [extra pytest arguments]
# Environment:
#   MESHCTL_VENV             venv with meshctl's dependencies (default: <repo>/.venv)
#   MESHCTL_TEST_KERNEL      a /boot/vmlinuz-* to boot (default: newest one whose modules have wireguard)
#   MESHCTL_VM_TIMEOUT_S     wall-clock limit for the whole guest run (default: 900)
#   MESHCTL_VM_MEMORY        guest memory (default: 1G)
#   MESHCTL_VM_CPUS          guest vCPUs (default: 2)
#
# Exit codes: pytest's exit code from the guest; 0 with a "SKIP kernel tests: ..." line only when the
# kernel package or qemu cannot be installed; 1 on any other failure (no boot, timeout, no result).
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
VENV=${MESHCTL_VENV:-$REPO/.venv}
PY=$VENV/bin/python
TIMEOUT_S=${MESHCTL_VM_TIMEOUT_S:-900}
MEMORY=${MESHCTL_VM_MEMORY:-1G}
CPUS=${MESHCTL_VM_CPUS:-2}
# The guest prints this line last; without it the guest never finished (boot failure, panic, hang).
RC_MARK=MESHCTL_KERNEL_TESTS_RC
# The virtme-ng release this script was debugged with (flags and guest layout differ across releases).
VNG_REQUIREMENT="virtme-ng==1.42"

say() { echo "test-kernel: $*"; }
skip() { echo "SKIP kernel tests: $*"; exit 0; }
fail() { echo "FAIL kernel tests: $*" >&2; exit 1; }

is_root() { [ "$(id -u)" = 0 ]; }

apt_updated=0
apt_install() {
    # Install Debian packages quietly; the log goes to stderr only on failure.
    local log
    log=$(mktemp)
    if [ "$apt_updated" = 0 ]; then
        apt-get update -qq >"$log" 2>&1 || true
        apt_updated=1
    fi
    if ! DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "$@" \
        >>"$log" 2>&1; then
        tail -n 5 "$log" >&2
        rm -f "$log"
        return 1
    fi
    rm -f "$log"
}

# --- the kernel: a /boot/vmlinuz-* whose modules include wireguard ------------------------------
has_wireguard() {
    [ -n "$(find "/usr/lib/modules/$1" -name 'wireguard.ko*' -print -quit 2>/dev/null)" ]
}

find_kernel() {
    local image version best=""
    for image in /boot/vmlinuz-*; do
        [ -e "$image" ] || continue
        version=${image#/boot/vmlinuz-}
        if has_wireguard "$version"; then
            best=$image # glob order is lexical; good enough to prefer one stable choice
        fi
    done
    echo "$best"
}

KERNEL=${MESHCTL_TEST_KERNEL:-}
if [ -n "$KERNEL" ]; then
    [ -r "$KERNEL" ] || fail "MESHCTL_TEST_KERNEL=$KERNEL is not a readable file"
else
    KERNEL=$(find_kernel)
    if [ -z "$KERNEL" ]; then
        is_root || skip "no /boot/vmlinuz-* with wireguard.ko and not root, cannot install linux-image-amd64"
        say "installing linux-image-amd64 (a Debian kernel that ships wireguard.ko)"
        apt_install linux-image-amd64 ||
            skip "linux-image-amd64 could not be installed (apt-get install failed, see above)"
        KERNEL=$(find_kernel)
        [ -n "$KERNEL" ] || skip "linux-image-amd64 installed but no /boot/vmlinuz-* has wireguard.ko"
    fi
fi
KVER=${KERNEL#/boot/vmlinuz-}

# --- qemu -----------------------------------------------------------------------------------------
have_qemu() {
    local q
    q=$(command -v qemu-system-x86_64) && [ -x "$q" ]
}
if ! have_qemu; then
    is_root || skip "qemu-system-x86_64 missing and not root, cannot install qemu-system-x86"
    say "installing qemu-system-x86"
    apt_install qemu-system-x86 ||
        skip "qemu-system-x86 could not be installed (apt-get install failed, see above)"
    have_qemu ||
        skip "qemu-system-x86 installed but qemu-system-x86_64 is not on PATH"
fi

# --- what virtme-ng needs: a static busybox for its initramfs, and vng itself ---------------------
static_busybox() {
    local b
    for b in busybox-static busybox.static busybox; do
        b=$(command -v "$b" 2>/dev/null) || continue
        # ldd says "not a dynamic executable" (exit 1) for a static binary.
        if ! ldd "$b" >/dev/null 2>&1; then return 0; fi
    done
    return 1
}
if ! static_busybox; then
    is_root || fail "virtme-ng needs a static busybox: install busybox-static (as root)"
    say "installing busybox-static (virtme-ng builds its initramfs with it)"
    apt_install busybox-static || fail "busybox-static could not be installed"
fi

[ -x "$PY" ] || fail "no python venv at $VENV (create it with meshctl's dev dependencies first)"
if [ ! -x "$VENV/bin/vng" ]; then
    say "installing virtme-ng into $VENV"
    "$PY" -m pip install -q "$VNG_REQUIREMENT" || fail "pip install $VNG_REQUIREMENT failed"
fi

# --- boot once, run every kernel test inside ------------------------------------------------------
# Inside the guest: / is the host root over 9p, read-only; vng overlays /etc /var /tmp ... and the
# --overlay-rwdir below (the checkout) copy-on-write, so pytest and Python caches never touch the host.
# /var/run is a symlink to the guest's tmpfs /run, so wireguard-go/UAPI paths exist there.
quote() { printf '%q ' "$@"; }
PYTEST_ARGS=""
[ "$#" = 0 ] || PYTEST_ARGS=$(quote "$@") # printf %q with no arguments would print ''

GUEST_CMD="echo \"test-kernel: guest userspace up, kernel uptime \$(cut -d' ' -f1 /proc/uptime) s\"; \
cd $(quote "$REPO") && mkdir -p /run/netns /var/run/wireguard && \
MESHCTL_IN_VM=1 PYTHONDONTWRITEBYTECODE=1 $(quote "$PY") -m pytest tests/kernel -q \
-p no:cacheprovider $PYTEST_ARGS; echo \"$RC_MARK=\$?\""

say "booting $KERNEL under qemu TCG (virtme-ng $("$VENV/bin/vng" --version 2>/dev/null | awk '{print $NF}'), $CPUS vCPUs, $MEMORY)"
LOG=$(mktemp)
trap 'rm -f "$LOG"' EXIT
for attempt in 1 2; do
    start=$(date +%s)
    set +e
    # vng runs virtme-run and qemu from PATH.
    PATH="$VENV/bin:$PATH" timeout --kill-after=10 "$TIMEOUT_S" \
        "$VENV/bin/vng" --run "$KERNEL" --disable-kvm --force-9p \
        --memory "$MEMORY" --cpus "$CPUS" \
        --overlay-rwdir "$REPO" --cwd "$REPO" \
        --exec "$GUEST_CMD" </dev/null 2>&1 | tee "$LOG"
    vng_rc=${PIPESTATUS[0]}
    set -e
    elapsed=$(($(date +%s) - start))
    # A start that dies within seconds, before the guest printed anything, was seen once
    # (vng exit 255 after 7 s, then fine): start it once more. A slow or failing boot is not retried.
    if grep -aq "$RC_MARK=" "$LOG" || [ "$elapsed" -ge 60 ] || [ "$attempt" = 2 ]; then
        break
    fi
    say "vng exited $vng_rc after ${elapsed}s without starting the guest; trying once more"
done

[ "$vng_rc" != 124 ] && [ "$vng_rc" != 137 ] ||
    fail "guest did not finish within ${TIMEOUT_S}s (kernel $KVER)"
guest_rc=$(grep -ao "$RC_MARK=[0-9]*" "$LOG" | tail -n 1 | cut -d= -f2 || true)
[ -n "$guest_rc" ] ||
    fail "guest never reported a result (boot failure? vng exit $vng_rc, kernel $KVER, ${elapsed}s)"
say "kernel $KVER: pytest exit $guest_rc, ${elapsed}s in the VM (boot + tests)"
exit "$guest_rc"
