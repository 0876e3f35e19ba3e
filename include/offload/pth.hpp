#pragma once
/// \file
/// Reader for `.pth` / `.pt` files written by `torch.save(state_dict)` (zip serialization).
///
/// LibTorch's `torch::pickle_load` cannot read these files (it rejects
/// `collections.OrderedDict`), so the zip archive is read with caffe2's `PyTorchStreamReader`
/// (records `<archive>/data.pkl` and `<archive>/data/<key>`) and `data.pkl` is interpreted by
/// the strict unpickler in detail/pickle_reader.hpp, which accepts only the protocol-2 subset
/// torch.save emits for a flat state dict and never executes anything.
///
/// Tensors come back on the CPU with the dtype, shape, stride and storage offset that were
/// saved; tensors that shared a storage in Python share it here. Each storage record is read
/// into memory once (no copy beyond the read itself). The legacy pre-1.6 (non-zip) format is
/// rejected with an error saying how to re-save.
///
/// **Example**
/// \code
/// offload::state_dict sd = offload::load_pth("models_t5_umt5-xxl-enc-bf16.pth");
/// \endcode

#include <cstdint>
#include <filesystem>
#include <fstream>
#include <functional>
#include <limits>
#include <map>
#include <memory>
#include <string>
#include <tuple>

#include <ATen/core/Tensor.h>
#include <c10/core/ScalarType.h>
#include <c10/core/Storage.h>
#include <c10/util/Exception.h>
#include <caffe2/serialize/inline_container.h>
#include <fmt/format.h>

#include <offload/detail/pickle_reader.hpp>
#include <offload/errors.hpp>

namespace offload {

/// A flat name -> tensor map, sorted by name (same alias as in state_dict.hpp and safetensors.hpp).
using state_dict = std::map<std::string, at::Tensor, std::less<>>;

namespace detail {

inline std::string first_line(const char* s) {
  std::string m(s);
  auto nl = m.find('\n');
  if (nl != std::string::npos) m.resize(nl);
  return m;
}

} // namespace detail

/// Loads a zip-format `torch.save(state_dict)` file; throws offload::checkpoint_error.
inline state_dict load_pth(const std::filesystem::path& path) {
  const std::string file = path.string();
  {
    std::ifstream in(path, std::ios::binary);
    if (!in)
      throw checkpoint_error("offload.checkpoint.io",
                             fmt::format("cannot open '{}'; check the path and permissions", file));
    char magic[4] = {};
    in.read(magic, 4);
    if (in.gcount() < 4 || magic[0] != 'P' || magic[1] != 'K' || magic[2] != '\x03' ||
        magic[3] != '\x04')
      throw checkpoint_error(
          "offload.checkpoint.format",
          fmt::format("'{}' is not a zip-format torch.save file (expected the zip signature "
                      "PK\\x03\\x04 at offset 0); the legacy pre-1.6 format is not supported: "
                      "re-save it with torch.save(torch.load(f), f2) from PyTorch >= 1.6",
                      file));
  }

  std::unique_ptr<caffe2::serialize::PyTorchStreamReader> reader;
  try {
    reader = std::make_unique<caffe2::serialize::PyTorchStreamReader>(file);
  } catch (const c10::Error& e) {
    throw checkpoint_error("offload.checkpoint.zip",
                           fmt::format("'{}': cannot read the zip archive ({}); the file is "
                                       "truncated or corrupt",
                                       file, detail::first_line(e.what_without_backtrace())));
  }

  const auto read_record = [&](const std::string& name) {
    try {
      return reader->getRecord(name);
    } catch (const c10::Error& e) {
      throw checkpoint_error("offload.checkpoint.zip",
                             fmt::format("'{}': cannot read record '{}' ({}); the file is "
                                         "truncated or corrupt",
                                         file, name, detail::first_line(e.what_without_backtrace())));
    }
  };

  if (reader->hasRecord("byteorder")) {
    auto [ptr, size] = read_record("byteorder");
    std::string order(static_cast<const char*>(ptr.get()), size);
    if (order != "little")
      throw checkpoint_error("offload.checkpoint.format",
                             fmt::format("'{}': byteorder record is '{}', expected 'little'", file,
                                         order));
  }
  if (!reader->hasRecord("data.pkl"))
    throw checkpoint_error("offload.checkpoint.format",
                           fmt::format("'{}' is a zip archive without a data.pkl record; it is not "
                                       "a torch.save file (a TorchScript archive needs torch::jit::load)",
                                       file));
  auto [pkl, pkl_size] = read_record("data.pkl");

  detail::pickle_storage_loader loader = [&](const std::string& key, c10::ScalarType dtype,
                                             std::int64_t numel) -> at::Storage {
    const std::string name = "data/" + key;
    if (!reader->hasRecord(name))
      throw checkpoint_error("offload.checkpoint.zip",
                             fmt::format("'{}': storage record '{}' referenced by data.pkl is "
                                         "missing; the file is truncated or corrupt",
                                         file, name));
    auto [ptr, size] = read_record(name);
    // numel * element size in 128 bits: a hostile numel must not wrap around to the record's size.
    const auto expected = static_cast<unsigned __int128>(numel) * c10::elementSize(dtype);
    if (static_cast<unsigned __int128>(size) != expected)
      throw checkpoint_error(
          "offload.checkpoint.zip",
          fmt::format("'{}': storage record '{}' holds {} bytes, expected {} ({} x {})", file, name, size,
                      expected <= std::numeric_limits<std::uint64_t>::max()
                          ? fmt::to_string(static_cast<std::uint64_t>(expected))
                          : std::string("more than 2^64"),
                      numel, c10::toString(dtype)));
    return at::Storage(c10::Storage::use_byte_size_t(), size, std::move(ptr), nullptr, false);
  };

  detail::torch_unpickler up(static_cast<const unsigned char*>(pkl.get()), pkl_size,
                             fmt::format("'{}': data.pkl", file), std::move(loader));
  detail::pickle_ref root = up.run();

  using K = detail::pickle_object::kind;
  if (root->type != K::dict)
    throw checkpoint_error("offload.checkpoint.format",
                           fmt::format("'{}': the saved object is a {}, expected a state_dict "
                                       "(an OrderedDict of tensors)",
                                       file, detail::pickle_kind_name(root->type)));
  state_dict sd;
  for (const auto& [k, v] : root->entries) {
    if (k->type != K::string)
      throw checkpoint_error("offload.checkpoint.format",
                             fmt::format("'{}': state_dict key is a {}, expected a str", file,
                                         detail::pickle_kind_name(k->type)));
    if (v->type != K::tensor)
      throw checkpoint_error(
          "offload.checkpoint.format",
          fmt::format("'{}': value of '{}' is a {}, expected a tensor; the file is not a flat "
                      "state_dict (extract the nested dict in Python and re-save it)",
                      file, k->text, detail::pickle_kind_name(v->type)));
    sd.emplace(k->text, v->tensor);
  }
  return sd;
}

} // namespace offload
