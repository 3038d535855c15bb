#!/usr/bin/env bash
# Installs the Debian packages uvc builds on (OpenBLAS, the Python headers, pkg-config) and the
# Fashion-MNIST the demo trains on, with sudo only when not already root (containers and CI
# machines have no sudo).
set -euo pipefail
SUDO=""
[ "$(id -u)" = 0 ] || SUDO="sudo"
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq libopenblas-dev python3-dev pkg-config dataset-fashion-mnist >/dev/null
