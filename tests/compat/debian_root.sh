# Sourced by the tests/compat/debian_*.sh scripts: prepare_root SUITE ROOT SRC [EXTRA_PACKAGES]
# debootstraps ROOT (Debian SUITE, minbase, this project's build dependencies and EXTRA_PACKAGES)
# unless it has cmake already, mounts /proc and /dev in it until the script exits, and clones the
# last commit of SRC into ROOT/src.
prepare_root() {
  local suite=$1 root=$2 src=$3 extra=${4:-}
  local packages=g++,cmake,ninja-build,ccache,libfmt-dev,librange-v3-dev,libboost-test-dev,nlohmann-json3-dev
  packages+=,libsentencepiece-dev,libcli11-dev,libstb-dev,libopenblas0-pthread,ffmpeg,ca-certificates${extra:+,$extra}
  if [[ ! -x $root/usr/bin/cmake ]]; then
    debootstrap --variant=minbase --include="$packages" "$suite" "$root" http://deb.debian.org/debian
  fi
  _root_mounts=()
  local m
  for m in proc dev; do
    if ! mountpoint -q "$root/$m"; then
      if [[ $m == proc ]]; then mount -t proc proc "$root/proc"; else mount --bind /dev "$root/dev"; fi
      _root_mounts+=("$root/$m")
    fi
  done
  trap 'for m in "${_root_mounts[@]}"; do umount "$m" || true; done' EXIT
  rm -rf "$root/src"
  git clone -q "$src" "$root/src"
}
