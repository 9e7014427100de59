#!/usr/bin/env bash
# The aarch64 (NEON) kernels, on an x86-64 machine: cross-built with Debian's rustc-web (its
# aarch64 standard library comes as a Debian package; rustup's toolchain has none) and run
# under qemu-aarch64 user emulation, twice:
#   -cpu max         NEON + the dot-product extension: the `neon` and `neon-dot` kernels;
#   -cpu cortex-a53  ARMv8.0 without dotprod: the dispatcher must offer `neon` only.
# Runs bitnet-kernels' unit and parity tests (every kernel against its scalar twin) and, unless
# --kernels-only, the engine's fixture criteria with BITNET_KERNEL=neon and neon-dot forced.
# Usage: scripts/test-aarch64.sh [--install] [--kernels-only]
#   --install   apt-get the tools when missing (Debian registry: rustc-web, cargo-web,
#               libstd-rust-web-dev:arm64, gcc-aarch64-linux-gnu, libc6-dev-arm64-cross, libc6:arm64,
#               qemu-user-static)
# Exit status 77: the tools are missing or too old (and --install was not given); every test
# run is bounded by a timeout (status 124 is a failure).
set -euo pipefail
cd "$(dirname "$0")/.."
install=0
kernels_only=0
for a in "$@"; do
  case $a in
    --install) install=1 ;;
    --kernels-only) kernels_only=1 ;;
    *) echo "usage: $0 [--install] [--kernels-only]"; exit 64 ;;
  esac
done
say() { printf '[aarch64] %s\n' "$*"; }
T=aarch64-unknown-linux-gnu
SKIP=77
# The workspace's rust-version (Cargo.toml) is the oldest rustc that builds it.
min_minor=$(sed -n 's/^rust-version = "1\.\([0-9]*\).*/\1/p' Cargo.toml)
have_tools() {
  [ -x /usr/bin/rustc ] && [ -d "/usr/lib/rustlib/$T/lib" ] &&
    command -v aarch64-linux-gnu-gcc >/dev/null && command -v qemu-aarch64-static >/dev/null &&
    [ -e /usr/aarch64-linux-gnu/lib/crti.o ] && [ -e /lib/ld-linux-aarch64.so.1 ] || return 1
  local minor
  minor=$(/usr/bin/rustc --version | sed -n 's/^rustc 1\.\([0-9]*\).*/\1/p')
  [ -n "$minor" ] && [ "$minor" -ge "${min_minor:-0}" ]
}
if ! have_tools; then
  if [ $install = 0 ]; then
    say "cross tools missing or too old (rustc 1.${min_minor}+): Debian's rustc-web with"
    say "libstd-rust-web-dev:arm64, gcc-aarch64-linux-gnu with libc6-dev-arm64-cross (the"
    say "linker's crti.o), libc6:arm64 (the loader) and qemu-user-static (--install gets them)"
    exit $SKIP
  fi
  say "installing the cross tools (Debian packages)"
  dpkg --add-architecture arm64
  apt-get update -q
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
    rustc-web cargo-web libstd-rust-web-dev:arm64 gcc-aarch64-linux-gnu libc6-dev-arm64-cross \
    libc6:arm64 qemu-user-static
fi
# Debian's rustc (with the aarch64 std) builds; rustup's cargo drives it. The multiarch
# libc6:arm64 under /lib/aarch64-linux-gnu is the run-time loader (qemu finds
# /lib/ld-linux-aarch64.so.1 itself; the older cross libc under /usr/aarch64-linux-gnu hung
# in pthread_create under this qemu).
export RUSTC=/usr/bin/rustc
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR_AARCH64:-$HOME/.cache/bitnet-aarch64-target}"
export CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_LINKER=aarch64-linux-gnu-gcc
say "$("$RUSTC" --version) for $T; $(qemu-aarch64-static --version | sed -n 1p)"
# Crates only the aarch64 target needs (a no-op when the registry cache has them).
cargo fetch --locked --target $T -q
# A test run: bounded, its output kept for the log.
runs() { timeout 1800 cargo test --offline --locked -q --target $T "$@" 2>&1; }
for cpu in max cortex-a53; do
  export CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_RUNNER="qemu-aarch64-static -cpu $cpu"
  say "bitnet-kernels tests under qemu -cpu $cpu"
  out=$(runs -p bitnet-kernels --tests -- --nocapture) || { printf '%s\n' "$out"; exit 1; }
  grep -E 'kernels tested|test result' <<<"$out" | sed 's/^/  /'
  case $cpu in
    max) want="[Scalar, Neon, NeonDot]" ;;
    *) want="[Scalar, Neon]" ;;
  esac
  grep -qF -- "kernels tested: $want" <<<"$out" \
    || { say "FAIL: expected the kernels $want under -cpu $cpu"; exit 1; }
done
if [ $kernels_only = 0 ]; then
  # The reference fixtures (as .ci/run finds them): the tests' own search starts from the
  # directory the test binary was built in, which a shared target directory may not match.
  if [ -z "${BITNET_FIXTURES:-}" ]; then
    for d in ../shared/fixtures /work/shared/fixtures; do
      [ -f "$d/README.md" ] && { BITNET_FIXTURES=$(cd "$d" && pwd); break; }
    done
  fi
  [ -n "${BITNET_FIXTURES:-}" ] || { say "FAIL: reference fixtures not found: set BITNET_FIXTURES"; exit 1; }
  export BITNET_FIXTURES
  export CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_RUNNER="qemu-aarch64-static -cpu max"
  for k in neon neon-dot; do
    say "engine fixture criteria with BITNET_KERNEL=$k under qemu -cpu max"
    out=$(BITNET_KERNEL=$k runs -p bitnet-engine --test fixtures --test gguf_fixtures \
      --test convert) || { printf '%s\n' "$out"; exit 1; }
    grep -E 'test result' <<<"$out" | sed 's/^/  /'
  done
fi
say "OK"
