#!/usr/bin/env bash
# Installs the peer servers that `make bench` compares dynastore with, when they are missing:
# etcd (Debian's etcd-server: the 3-node Raft peer), redis-server (the single-node ceiling), and the C
# load generators of `dynastore bench wrk`: wrk, and redis-benchmark (Debian's redis-tools).
# The benchmark starts its own instances on free loopback ports, so a system service that a package
# may start on its default port is left alone and never used.
# Needs root and apt; on any other machine it says what is missing and stops. A peer that stays
# missing is skipped by the benchmark with a message, so this script failing does not stop `make bench`.
set -euo pipefail

missing=()
command -v etcd >/dev/null 2>&1 || missing+=(etcd-server)
command -v redis-server >/dev/null 2>&1 || missing+=(redis-server)
command -v redis-benchmark >/dev/null 2>&1 || missing+=(redis-tools)
command -v wrk >/dev/null 2>&1 || missing+=(wrk)

if [ ${#missing[@]} -eq 0 ]; then
  exit 0
fi
if [ "$(id -u)" -ne 0 ] || ! command -v apt-get >/dev/null 2>&1; then
  echo "install-bench-deps: missing ${missing[*]}; install them as root (apt-get install ${missing[*]})" >&2
  exit 1
fi
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq >/dev/null
apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
echo "install-bench-deps: installed ${missing[*]}"
