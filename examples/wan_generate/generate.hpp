#pragma once
/// \file
/// wan_generate's two modes: the dry run (plan only, no weights) and the real run (load the
/// checkpoint, generate on --device, write the result).

#include "options.hpp"

#include "wan/stages.hpp"

namespace wan_cli {

/// The shape the planner sees: --size, or for i2v/flf2v the size the reference derives from the
/// input image's aspect ratio and MAX_AREA_CONFIGS[size] when the image is given.
wan::generation_shape generation_shape_of(const options& o);

/// Prints the plan (table or JSON on stdout) for the policy on an accelerator of --gpu_memory.
/// Returns exit_ok when it fits, exit_does_not_fit otherwise (one line on stderr).
int dry_run(const options& o);

/// Loads the pipeline from --ckpt_dir, generates on --device and writes --save_file.
int generate(const options& o);

} // namespace wan_cli
