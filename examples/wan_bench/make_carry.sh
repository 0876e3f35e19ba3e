#!/usr/bin/env bash
# Prepares .device/ (ignored by git) for examples/wan_bench/device_run.sh. Run it here, in the
# repository, before a device call that carries ".device":
#
#   examples/wan_bench/make_carry.sh            # then: run(command="bash examples/wan_bench/device_run.sh",
#                                               #           carry=[".device"], timeout_s=600)
#
# The GPU machine has PyTorch (LibTorch 2.x, CUDA), CMake, ninja and a compiler, but not the
# header-only libraries this project builds with, and no copy of the Python reference. This copies:
#   .device/include/      range-v3 (range, meta, concepts, std), fmt, nlohmann, CLI11 and stb's two
#                         image headers, from this machine's Debian packages (docs/building.md);
#   .device/cmake/<pkg>/  a small package config per library that declares its header-only target
#                         (fmt in header-only mode: no compiled libfmt is needed there);
#   .device/wanref/       the reference sources (wan/ of Wan-Video/Wan2.1 at 9737cba) and the Python
#                         harness ../shared/tools/wan_py_memory.py.
# Environment: WAN_GIT (a git directory or checkout of Wan-Video/Wan2.1 holding commit 9737cba;
# default: the search tool's mirror), SHARED (default: ../shared beside the repository).
set -euo pipefail
root=$(git rev-parse --show-toplevel)
dst=$root/.device
wan_git=${WAN_GIT:-/work/.mirror/Wan-Video+Wan2.1/repo}
shared=${SHARED:-$root/../shared}

fail() { echo "make_carry: $*" >&2; exit 1; }
for d in /usr/include/range /usr/include/meta /usr/include/concepts /usr/include/std /usr/include/fmt \
         /usr/include/nlohmann /usr/include/CLI /usr/include/stb/stb_image.h /usr/include/stb/stb_image_write.h; do
  [[ -e $d ]] || fail "$d not found: install librange-v3-dev libfmt-dev nlohmann-json3-dev libcli11-dev libstb-dev"
done
git --git-dir="$wan_git" cat-file -e 9737cba 2>/dev/null || git -C "$wan_git" cat-file -e 9737cba 2>/dev/null ||
  fail "WAN_GIT='$wan_git' does not hold Wan-Video/Wan2.1 commit 9737cba; point WAN_GIT at a clone of it"
[[ -f $shared/tools/wan_py_memory.py ]] || fail "$shared/tools/wan_py_memory.py not found; set SHARED"
grep -qx '/.device/' "$root/.gitignore" || fail "/.device/ is not in .gitignore: it would be committed"

rm -rf "$dst"
mkdir -p "$dst/include/stb" "$dst/cmake" "$dst/wanref"
cp -r /usr/include/range /usr/include/meta /usr/include/concepts /usr/include/std /usr/include/fmt \
      /usr/include/nlohmann /usr/include/CLI "$dst/include/"
cp /usr/include/stb/stb_image.h /usr/include/stb/stb_image_write.h "$dst/include/stb/"

# config <file name> <target> [compile definition]: an INTERFACE IMPORTED target on .device/include.
config() {
  local pkg_dir=$dst/cmake/${1%%-config.cmake}
  pkg_dir=${pkg_dir%%Config.cmake}
  mkdir -p "$pkg_dir"
  cat > "$pkg_dir/$1" <<EOF
# Written by examples/wan_bench/make_carry.sh: the header-only $2 from .device/include.
if(NOT TARGET $2)
  add_library($2 INTERFACE IMPORTED)
  set_target_properties($2 PROPERTIES INTERFACE_INCLUDE_DIRECTORIES "\${CMAKE_CURRENT_LIST_DIR}/../../include")
  ${3:+set_property(TARGET $2 APPEND PROPERTY INTERFACE_COMPILE_DEFINITIONS $3)}
endif()
EOF
}
config fmt-config.cmake fmt::fmt FMT_HEADER_ONLY=1
config range-v3-config.cmake range-v3::range-v3
config nlohmann_jsonConfig.cmake nlohmann_json::nlohmann_json
config CLI11Config.cmake CLI11::CLI11

if git --git-dir="$wan_git" cat-file -e 9737cba 2>/dev/null; then
  git --git-dir="$wan_git" archive 9737cba wan | tar -x -C "$dst/wanref"
else
  git -C "$wan_git" archive 9737cba wan | tar -x -C "$dst/wanref"
fi
cp "$shared/tools/wan_py_memory.py" "$dst/wanref/"
echo "make_carry: $(du -sh "$dst" | cut -f1) in $dst:"
ls "$dst" "$dst/cmake" "$dst/wanref"
