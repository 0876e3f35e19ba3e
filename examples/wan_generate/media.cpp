// Images and videos for wan_generate (see media.hpp).
#include "media.hpp"

#include <torch/torch.h>

#include <fmt/format.h>

#include <cstdio>
#include <cstdlib>
#include <memory>
#include <stdexcept>
#include <vector>

#include <sys/wait.h>
#include <unistd.h>

// stb (Debian libstb-dev): implementations compiled here, private to this file.
#define STB_IMAGE_IMPLEMENTATION
#define STB_IMAGE_STATIC
#define STBI_ONLY_PNG
#define STBI_ONLY_JPEG
#define STB_IMAGE_WRITE_IMPLEMENTATION
#define STB_IMAGE_WRITE_STATIC
#if defined(__GNUC__)
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wunused-function"
#pragma GCC diagnostic ignored "-Wmissing-field-initializers"
#pragma GCC diagnostic ignored "-Wsign-compare"
#endif
#include <stb_image.h>
#include <stb_image_write.h>
#if defined(__GNUC__)
#pragma GCC diagnostic pop
#endif

namespace wan_cli {

namespace fs = std::filesystem;

namespace {

/// A path quoted for /bin/sh.
std::string shell_quote(const std::string& s) {
  std::string out = "'";
  for (char c : s) out += c == '\'' ? std::string("'\\''") : std::string(1, c);
  return out + "'";
}

struct pipe_closer {
  void operator()(FILE* f) const {
    if (f) pclose(f);
  }
};

int close_pipe(std::unique_ptr<FILE, pipe_closer>& p) {
  const int status = pclose(p.release());
  return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
}

} // namespace

std::optional<fs::path> find_on_path(const std::string& name) {
  const char* path = std::getenv("PATH");
  if (!path) return std::nullopt;
  std::string p = path;
  std::size_t start = 0;
  while (start <= p.size()) {
    const auto colon = p.find(':', start);
    const std::string dir = p.substr(start, colon == std::string::npos ? std::string::npos : colon - start);
    const fs::path candidate = fs::path(dir.empty() ? "." : dir) / name;
    if (::access(candidate.c_str(), X_OK) == 0 && !fs::is_directory(candidate)) return candidate;
    if (colon == std::string::npos) break;
    start = colon + 1;
  }
  return std::nullopt;
}

bool probe_image(const std::string& path, std::string* why) {
  int w = 0, h = 0, c = 0;
  if (stbi_info(path.c_str(), &w, &h, &c)) return true;
  if (why) *why = stbi_failure_reason() ? stbi_failure_reason() : "unknown format";
  return false;
}

std::pair<int, int> image_size(const std::string& path) {
  int w = 0, h = 0, c = 0;
  if (!stbi_info(path.c_str(), &w, &h, &c))
    throw std::runtime_error(fmt::format("cannot read image '{}': {}; give a PNG or JPEG file", path,
                                         stbi_failure_reason() ? stbi_failure_reason() : "unknown error"));
  return {w, h};
}

at::Tensor read_image(const std::string& path) {
  int w = 0, h = 0, c = 0;
  unsigned char* data = stbi_load(path.c_str(), &w, &h, &c, 3);
  if (!data)
    throw std::runtime_error(fmt::format("cannot read image '{}': {}; give a PNG or JPEG file", path,
                                         stbi_failure_reason() ? stbi_failure_reason() : "unknown error"));
  auto t = torch::from_blob(data, {h, w, 3}, torch::kUInt8).clone(); // [H, W, 3]
  stbi_image_free(data);
  return t;
}

at::Tensor read_video(const std::string& path, const video_fit& fit) {
  // Size of the first video stream.
  const std::string probe = fmt::format(
      "ffprobe -v error -select_streams v:0 -show_entries stream=width,height -of csv=p=0:s=x {}",
      shell_quote(path));
  std::unique_ptr<FILE, pipe_closer> p(popen(probe.c_str(), "r"));
  if (!p) throw std::runtime_error(fmt::format("cannot run ffprobe for '{}'", path));
  char buf[128] = {};
  const std::size_t n = std::fread(buf, 1, sizeof buf - 1, p.get());
  buf[n] = 0;
  int w = 0, h = 0;
  if (close_pipe(p) != 0 || std::sscanf(buf, "%dx%d", &w, &h) != 2 || w <= 0 || h <= 0)
    throw std::runtime_error(fmt::format("cannot read video '{}': ffprobe found no video stream; give a "
                                         "video file ffmpeg can decode",
                                         path));
  std::string filters;
  auto add_filter = [&](const std::string& f) { filters += (filters.empty() ? "" : ",") + f; };
  if (fit.fps > 0) add_filter(fmt::format("fps={}", fit.fps));
  if (fit.width > 0 && fit.height > 0) {
    add_filter(fmt::format("scale={}:{}:force_original_aspect_ratio=increase", fit.width, fit.height));
    add_filter(fmt::format("crop={}:{}", fit.width, fit.height));
    w = fit.width;
    h = fit.height;
  }
  const std::string decode = fmt::format(
      "ffmpeg -v error -nostdin -i {}{}{} -f rawvideo -pix_fmt rgb24 -", shell_quote(path),
      filters.empty() ? std::string() : " -vf " + shell_quote(filters),
      fit.max_frames > 0 ? fmt::format(" -frames:v {}", fit.max_frames) : std::string());
  std::unique_ptr<FILE, pipe_closer> d(popen(decode.c_str(), "r"));
  if (!d) throw std::runtime_error(fmt::format("cannot run ffmpeg for '{}'", path));
  const std::size_t frame_bytes = static_cast<std::size_t>(w) * h * 3;
  std::vector<at::Tensor> frames;
  while (true) {
    auto f = torch::empty({h, w, 3}, torch::kUInt8);
    const std::size_t got = std::fread(f.data_ptr(), 1, frame_bytes, d.get());
    if (got < frame_bytes) break;
    frames.push_back(f);
  }
  if (close_pipe(d) != 0 || frames.empty())
    throw std::runtime_error(fmt::format("cannot read video '{}': ffmpeg decoded no frame", path));
  return torch::stack(frames); // [F, H, W, 3]
}

at::Tensor to_uint8_frames(const at::Tensor& video, bool round) {
  // [C, F, H, W] in [-1, 1] -> [F, H, W, C] in [0, 255]
  auto x = video.detach().to(torch::kCPU, torch::kFloat32).clamp(-1, 1);
  x = (x + 1) / 2; // make_grid(normalize=True, value_range=(-1, 1))
  x = round ? (x * 255 + 0.5).clamp(0, 255) : x * 255;
  return x.permute({1, 2, 3, 0}).to(torch::kUInt8).contiguous(); // [F, H, W, C]
}

void write_png(const at::Tensor& frame, const std::string& path) {
  const auto f = frame.contiguous();
  const int h = static_cast<int>(f.size(0)), w = static_cast<int>(f.size(1));
  if (!stbi_write_png(path.c_str(), w, h, 3, f.data_ptr(), w * 3))
    throw std::runtime_error(fmt::format("cannot write PNG '{}'; check that the folder is writable", path));
}

std::string write_video(const at::Tensor& frames, const std::string& path, int fps) {
  const auto f = frames.contiguous(); // [F, H, W, 3]
  const int64_t n = f.size(0), h = f.size(1), w = f.size(2);
  if (find_on_path("ffmpeg")) {
    const std::string cmd = fmt::format(
        "ffmpeg -v error -y -f rawvideo -pix_fmt rgb24 -s {}x{} -r {} -i - -pix_fmt yuv420p {}", w, h, fps,
        shell_quote(path));
    std::unique_ptr<FILE, pipe_closer> p(popen(cmd.c_str(), "w"));
    if (!p) throw std::runtime_error(fmt::format("cannot run ffmpeg to write '{}'", path));
    const std::size_t bytes = static_cast<std::size_t>(f.numel());
    const std::size_t written = std::fwrite(f.data_ptr(), 1, bytes, p.get());
    const int rc = close_pipe(p);
    if (written != bytes || rc != 0)
      throw std::runtime_error(fmt::format("ffmpeg failed to write '{}' (exit {}); see its message above",
                                           path, rc));
    return fmt::format("wrote {} ({} frames, {}x{}, {} fps, ffmpeg)", path, n, w, h, fps);
  }
  fs::path dir = fs::path(path);
  dir.replace_extension();
  dir += "_frames";
  fs::create_directories(dir);
  for (int64_t i = 0; i < n; ++i) write_png(f[i], (dir / fmt::format("{:04d}.png", i)).string());
  return fmt::format("ffmpeg is not on PATH: wrote {} PNG frames ({}x{}) to {}/ instead of {}", n, w, h,
                     dir.string(), path);
}

} // namespace wan_cli
