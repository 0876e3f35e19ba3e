# Writes docs/pipelines/timelines.md from wan_generate's dry runs, or checks that it is current.
#
#   cmake -DEXE=build/examples/wan_generate/wan_generate -DUPDATE=ON -P docs/pipelines/timelines.cmake
#
# rewrites the file; without -DUPDATE=ON it only compares (the CTest docs_timelines_current, which
# fails when a change to the sizes, the workspace models or the scheduler moved a figure).
cmake_minimum_required(VERSION 3.19)
cmake_policy(SET CMP0007 NEW)
if(NOT EXE)
  message(FATAL_ERROR "timelines.cmake: set -DEXE=<path of wan_generate>")
endif()
set(_doc "${CMAKE_CURRENT_LIST_DIR}/timelines.md")

string(CONCAT _text
  "# Stage diagrams and memory timelines of the Wan pipelines\n\n"
  "Generated with `wan_generate --dry_run --report table` (no weights needed) by\n"
  "`docs/pipelines/timelines.cmake`; the CTest `docs_timelines_current` fails when they are out of date\n"
  "(regenerate: `cmake -DEXE=build/examples/wan_generate/wan_generate -DUPDATE=ON -P\n"
  "docs/pipelines/timelines.cmake`). The stages each pipeline declares to the scheduler, with per-stage\n"
  "resident sets and predicted accelerator peaks under each of the reference's flag combinations. Sizes\n"
  "are the preset models as the reference stores them; workspace models are explained in\n"
  "`pipelines/wan/stages.hpp` (the denoise activations are this port's, lower than the reference's:\n"
  "[wan.md](wan.md#dit-activation-memory)).\n\n"
  "```\n"
  "t2v / t2i:   text_encode{t5} ──► denoise{dit} × steps ──► decode{vae}\n"
  "i2v / flf2v: text_encode{t5} ──► clip_encode{clip} ──► vae_encode{vae} ──► denoise{dit} × steps ──► decode{vae}\n"
  "vace:        text_encode{t5} ──► vae_encode{vae} ──► denoise{dit} × steps ──► decode{vae}\n"
  "```\n")

set(_flag_sets
  "--offload_model False"
  "--offload_model True"
  "--offload_model True --vae_cpu"
  "--offload_model True --t5_cpu"
  "--offload_model True --t5_cpu --vae_cpu")
foreach(_case "t2v-1.3B 832*480" "t2v-14B 1280*720" "i2v-14B 832*480" "flf2v-14B 1280*720" "vace-1.3B 832*480")
  separate_arguments(_c UNIX_COMMAND "${_case}")
  list(GET _c 0 _task)
  list(GET _c 1 _size)
  string(APPEND _text "\n## ${_task} at ${_size}, 81 frames\n")
  foreach(_flags IN LISTS _flag_sets)
    separate_arguments(_f UNIX_COMMAND "${_flags}")
    execute_process(COMMAND "${EXE}" --task ${_task} --size ${_size} --frame_num 81 --dry_run --report table ${_f}
                    RESULT_VARIABLE _rc OUTPUT_VARIABLE _out ERROR_VARIABLE _err)
    if(NOT _rc EQUAL 0)
      message(FATAL_ERROR "wan_generate --task ${_task} --size ${_size} ${_flags} --dry_run exited ${_rc}:\n${_err}")
    endif()
    string(APPEND _text "\n### `${_flags}`\n\n```\n${_out}```\n")
  endforeach()
endforeach()

if(UPDATE)
  file(WRITE "${_doc}" "${_text}")
  message(STATUS "wrote ${_doc}")
  return()
endif()
file(READ "${_doc}" _current)
if(NOT _current STREQUAL _text)
  # Lines as lists: the text's own semicolons and brackets are masked first.
  foreach(_v _text _current)
    string(REPLACE ";" "<semicolon>" ${_v} "${${_v}}")
    string(REPLACE "[" "<lbracket>" ${_v} "${${_v}}")
    string(REPLACE "]" "<rbracket>" ${_v} "${${_v}}")
  endforeach()
  string(REPLACE "\n" ";" _want "${_text}")
  string(REPLACE "\n" ";" _have "${_current}")
  list(LENGTH _want _nw)
  list(LENGTH _have _nh)
  set(_i 0)
  while(_i LESS _nw AND _i LESS _nh)
    list(GET _want ${_i} _a)
    list(GET _have ${_i} _b)
    if(NOT _a STREQUAL _b)
      break()
    endif()
    math(EXPR _i "${_i} + 1")
  endwhile()
  math(EXPR _line "${_i} + 1")
  if(_i LESS _nw)
    list(GET _want ${_i} _a)
  else()
    set(_a "<end of file>")
  endif()
  if(_i LESS _nh)
    list(GET _have ${_i} _b)
  else()
    set(_b "<end of file>")
  endif()
  foreach(_v _a _b)
    string(REPLACE "<semicolon>" ";" ${_v} "${${_v}}")
    string(REPLACE "<lbracket>" "[" ${_v} "${${_v}}")
    string(REPLACE "<rbracket>" "]" ${_v} "${${_v}}")
  endforeach()
  message(FATAL_ERROR "${_doc} is out of date: line ${_line} reads\n  ${_b}\nwhere wan_generate now prints\n  ${_a}\n"
                      "regenerate it: cmake -DEXE=${EXE} -DUPDATE=ON -P ${CMAKE_CURRENT_LIST_FILE}")
endif()
message(STATUS "${_doc} is current")
