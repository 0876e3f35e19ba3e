#pragma once
/// \file
/// Images and videos for wan_generate: reading inputs (PNG/JPEG through stb_image, videos through
/// ffmpeg) and writing results (.mp4 through ffmpeg when it is on PATH, PNG frames otherwise; one
/// PNG for single-frame tasks). The conversion of the generated tensor follows the reference's
/// wan/utils/utils.py (cache_video / cache_image: clamp to [-1, 1], map to [0, 1], then x 255
/// truncated for videos, rounded for images as torchvision.save_image does).

#include <ATen/core/Tensor.h>

#include <filesystem>
#include <optional>
#include <string>
#include <utility>

namespace wan_cli {

/// The full path of an executable found on PATH, or nullopt.
std::optional<std::filesystem::path> find_on_path(const std::string& name);

/// True when `path` holds an image stb_image can decode (reads the header only); `why` gets the
/// reason otherwise.
bool probe_image(const std::string& path, std::string* why);

/// Width and height of an image (header only). Throws std::runtime_error.
std::pair<int, int> image_size(const std::string& path);

/// An RGB image as uint8 [H, W, 3] (alpha dropped, grey expanded). Throws std::runtime_error.
at::Tensor read_image(const std::string& path);

/// How read_video brings a video to the generation's shape (0 = keep).
struct video_fit {
  int width = 0, height = 0; ///< scale to cover width x height, then center-crop to it
  int fps = 0;               ///< resample to this frame rate
  int max_frames = 0;        ///< keep at most this many frames
};

/// A video as uint8 [F, H, W, 3] RGB, decoded by ffmpeg (`-f rawvideo -pix_fmt rgb24`), fitted
/// as `fit` says. Throws std::runtime_error.
at::Tensor read_video(const std::string& path, const video_fit& fit = {});

/// A generated video float [C, F, H, W] in [-1, 1] -> uint8 [F, H, W, C] as cache_video does
/// (truncation); `round` = true as cache_image/save_image does (x * 255 + 0.5).
at::Tensor to_uint8_frames(const at::Tensor& video, bool round);

/// Writes one RGB uint8 [H, W, 3] image as PNG. Throws std::runtime_error.
void write_png(const at::Tensor& frame, const std::string& path);

/// Writes uint8 [F, H, W, 3] frames: through ffmpeg to `path` (libx264/yuv420p via
/// `-pix_fmt yuv420p`) when ffmpeg is on PATH, otherwise as PNG files in the folder
/// `<path without extension>_frames/`. Returns a sentence saying what was written.
std::string write_video(const at::Tensor& frames, const std::string& path, int fps);

} // namespace wan_cli
