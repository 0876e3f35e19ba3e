#pragma once
/// \file
/// Strict safetensors reader (memory-mapped), writer, and sharded-index loader.
///
/// **Memory model.** A safetensors_file maps the whole file once (`MAP_PRIVATE`, copy-on-write).
/// `get()` returns a CPU tensor that *views* the mapping (zero copy); every such tensor holds a
/// reference to the mapping, so it stays valid after the safetensors_file is destroyed. Writing
/// into such a tensor changes a private copy of the page, never the file. When a tensor's data is
/// not aligned to its element size (the format does not require alignment) `get()` copies it
/// into a freshly allocated tensor instead.
///
/// **Validation.** The constructor validates the whole header before any tensor is touched:
/// the 8-byte little-endian header length lies inside the file; the header is strict JSON
/// (detail/safetensors_json.hpp) holding an object; every entry other than `__metadata__` is an
/// object with exactly `dtype`, `shape` and `data_offsets`; the dtype is one of F64, F32, F16,
/// BF16, I64, I32, I16, I8, U8, BOOL; shape entries are non-negative integers;
/// `begin <= end <= size of the data section`; `prod(shape) * itemsize == end - begin`; no two
/// tensors' byte ranges overlap (gaps are allowed); `__metadata__` is an object of strings.
/// Every violation throws offload::checkpoint_error naming the file, the key, what was expected
/// and what was found.
///
/// **Example**
/// \code
/// offload::safetensors_file f("diffusion_pytorch_model.safetensors");
/// torch::Tensor w = f.get("patch_embedding.weight");        // views the mapping
/// offload::save_safetensors("out.safetensors", {{"w", w}}, {{"format", "pt"}});
/// \endcode

#include <algorithm>
#include <bit>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <limits>
#include <map>
#include <memory>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/from_blob.h>
#include <c10/core/ScalarType.h>
#include <fmt/format.h>
#include <fmt/ranges.h> // fmt::join (in fmt/format.h before fmt 11)

#include <offload/detail/json.hpp>
#include <offload/detail/mmap_file.hpp>
#include <offload/detail/safetensors_json.hpp>
#include <offload/errors.hpp>

static_assert(std::endian::native == std::endian::little,
              "offload: the safetensors/pth readers assume a little-endian host");

namespace offload {

/// A flat name -> tensor map, sorted by name (same alias as in state_dict.hpp and pth.hpp).
using state_dict = std::map<std::string, at::Tensor, std::less<>>;

/// Header entry of one tensor in a safetensors file.
struct safetensors_tensor_info {
  c10::ScalarType dtype = c10::ScalarType::Float;
  std::string dtype_name;       ///< as written in the file, e.g. "BF16"
  std::vector<std::int64_t> shape;
  std::uint64_t begin = 0;      ///< byte offset inside the data section
  std::uint64_t end = 0;        ///< one past the last byte
  [[nodiscard]] std::int64_t numel() const {
    std::int64_t n = 1;
    for (auto s : shape) n *= s;
    return n;
  }
};

namespace detail {

struct safetensors_dtype_entry {
  std::string_view name;
  c10::ScalarType type;
  std::size_t itemsize;
};

inline constexpr safetensors_dtype_entry safetensors_dtypes[] = {
    {"F64", c10::ScalarType::Double, 8},  {"F32", c10::ScalarType::Float, 4},
    {"F16", c10::ScalarType::Half, 2},    {"BF16", c10::ScalarType::BFloat16, 2},
    {"I64", c10::ScalarType::Long, 8},    {"I32", c10::ScalarType::Int, 4},
    {"I16", c10::ScalarType::Short, 2},   {"I8", c10::ScalarType::Char, 1},
    {"U8", c10::ScalarType::Byte, 1},     {"BOOL", c10::ScalarType::Bool, 1},
};

inline const safetensors_dtype_entry* find_safetensors_dtype(std::string_view name) {
  for (const auto& e : safetensors_dtypes)
    if (e.name == name) return &e;
  return nullptr;
}

inline const safetensors_dtype_entry* find_safetensors_dtype(c10::ScalarType t) {
  for (const auto& e : safetensors_dtypes)
    if (e.type == t) return &e;
  return nullptr;
}

inline std::string supported_safetensors_dtypes() {
  std::string s;
  for (const auto& e : safetensors_dtypes) {
    if (!s.empty()) s += ", ";
    s += e.name;
  }
  return s;
}

inline std::string format_shape(const std::vector<std::int64_t>& shape) {
  return fmt::format("[{}]", fmt::join(shape, ", "));
}

/// Multiplies without overflow; returns false on overflow.
inline bool checked_mul(std::uint64_t a, std::uint64_t b, std::uint64_t& out) {
  if (a != 0 && b > std::numeric_limits<std::uint64_t>::max() / a) return false;
  out = a * b;
  return true;
}

} // namespace detail

/// A validated, memory-mapped safetensors file. See the file comment for the memory model.
class safetensors_file {
public:
  /// Largest header accepted (the reference implementation uses the same 100 MB limit).
  static constexpr std::uint64_t max_header_bytes = 100'000'000;

  /// Maps and validates `path`; throws offload::checkpoint_error.
  explicit safetensors_file(const std::filesystem::path& path)
      : map_(std::make_shared<detail::mapped_file>(path)) {
    parse_header();
  }

  /// The file this was opened from.
  [[nodiscard]] const std::filesystem::path& path() const noexcept { return map_->path(); }

  /// All tensor names, sorted.
  [[nodiscard]] std::vector<std::string> keys() const {
    std::vector<std::string> k;
    k.reserve(tensors_.size());
    for (const auto& [name, _] : tensors_) k.push_back(name);
    return k;
  }

  /// Number of tensors.
  [[nodiscard]] std::size_t size() const noexcept { return tensors_.size(); }

  /// Whether a tensor of that name exists.
  [[nodiscard]] bool contains(std::string_view key) const { return tensors_.find(key) != tensors_.end(); }

  /// Header entry of `key`; throws checkpoint_error (`offload.checkpoint.missing_key`) if absent.
  [[nodiscard]] const safetensors_tensor_info& info(std::string_view key) const {
    auto it = tensors_.find(key);
    if (it == tensors_.end())
      throw checkpoint_error(
          "offload.checkpoint.missing_key",
          fmt::format("'{}' has no tensor '{}' ({} tensors in the file{}); check the key name or "
                      "the checkpoint variant",
                      path().string(), key, tensors_.size(), closest_hint(key)));
    return it->second;
  }

  /// The tensor `key` on the CPU (views the mapping, or a copy when misaligned).
  [[nodiscard]] at::Tensor get(std::string_view key) const {
    const auto& ti = info(key);
    const auto* dt = detail::find_safetensors_dtype(ti.dtype_name);
    auto options = at::TensorOptions().dtype(ti.dtype).device(c10::kCPU);
    if (ti.end == ti.begin) return at::empty(ti.shape, options);
    unsigned char* ptr = map_->data() + data_start_ + ti.begin;
    if (reinterpret_cast<std::uintptr_t>(ptr) % dt->itemsize != 0) {
      at::Tensor t = at::empty(ti.shape, options);
      std::memcpy(t.data_ptr(), ptr, ti.end - ti.begin);
      return t;
    }
    auto keep = map_;
    return at::from_blob(ptr, ti.shape, [keep](void*) {}, options);
  }

  /// The `__metadata__` string map (empty when the header has none).
  [[nodiscard]] const std::map<std::string, std::string>& metadata() const noexcept { return metadata_; }

  /// Every tensor, by name (views of the mapping).
  [[nodiscard]] state_dict load_all() const {
    state_dict sd;
    for (const auto& [name, _] : tensors_) sd.emplace(name, get(name));
    return sd;
  }

private:
  std::shared_ptr<detail::mapped_file> map_;
  std::map<std::string, safetensors_tensor_info, std::less<>> tensors_;
  std::map<std::string, std::string> metadata_;
  std::size_t data_start_ = 0;

  [[noreturn]] void fail(const char* id, const std::string& msg) const {
    throw checkpoint_error(id, fmt::format("'{}': {}", path().string(), msg));
  }

  std::string closest_hint(std::string_view key) const {
    // Suggest up to three names sharing the longest prefix with `key`.
    std::size_t best = 0;
    std::vector<std::string_view> hits;
    for (const auto& [name, _] : tensors_) {
      std::size_t n = 0;
      while (n < name.size() && n < key.size() && name[n] == key[n]) ++n;
      if (n > best) {
        best = n;
        hits.clear();
      }
      if (n == best && n > 0 && hits.size() < 3) hits.push_back(name);
    }
    if (hits.empty()) return {};
    return fmt::format("; closest: {}", fmt::join(hits, ", "));
  }

  void parse_header() {
    const std::size_t file_size = map_->size();
    if (file_size < 8)
      fail("offload.checkpoint.truncated",
           fmt::format("file is {} bytes, expected at least 8 (the little-endian header length); "
                       "the file is truncated or not a safetensors file",
                       file_size));
    std::uint64_t header_len = 0;
    std::memcpy(&header_len, map_->data(), 8);
    if (header_len > file_size - 8)
      fail("offload.checkpoint.truncated",
           fmt::format("header length {} bytes exceeds the file: only {} bytes follow the 8-byte "
                       "length prefix (file size {}); the file is truncated or not a safetensors file",
                       header_len, file_size - 8, file_size));
    if (header_len > max_header_bytes)
      fail("offload.checkpoint.header",
           fmt::format("header length {} bytes exceeds the limit of {} bytes", header_len,
                       max_header_bytes));
    if (header_len < 2)
      fail("offload.checkpoint.header",
           fmt::format("header length is {} bytes, expected at least 2 (a JSON object)", header_len));
    data_start_ = 8 + static_cast<std::size_t>(header_len);
    const std::uint64_t data_size = file_size - data_start_;

    std::string_view text(reinterpret_cast<const char*>(map_->data()) + 8,
                          static_cast<std::size_t>(header_len));
    detail::json_value root;
    try {
      root = detail::parse_json(text);
    } catch (const detail::json_parse_error& e) {
      fail("offload.checkpoint.header",
           fmt::format("header is not valid JSON: {} (header is {} bytes at file offset 8)",
                       e.what(), header_len));
    }
    if (root.type != detail::json_value::kind::object)
      fail("offload.checkpoint.header",
           fmt::format("header must be a JSON object, found a {}", detail::json_kind_name(root.type)));

    for (const auto& m : root.object) {
      if (m.key == "__metadata__") {
        parse_metadata(m.value);
        continue;
      }
      tensors_.emplace(m.key, parse_entry(m.key, m.value, data_size));
    }
    check_overlaps();
  }

  void parse_metadata(const detail::json_value& v) {
    using K = detail::json_value::kind;
    if (v.type != K::object)
      fail("offload.checkpoint.header",
           fmt::format("'__metadata__' must be an object of strings, found a {}",
                       detail::json_kind_name(v.type)));
    for (const auto& m : v.object) {
      if (m.value.type != K::string)
        fail("offload.checkpoint.header",
             fmt::format("'__metadata__' entry '{}' must be a string, found a {}", m.key,
                         detail::json_kind_name(m.value.type)));
      metadata_.emplace(m.key, m.value.text);
    }
  }

  safetensors_tensor_info parse_entry(const std::string& key, const detail::json_value& v,
                                      std::uint64_t data_size) const {
    using K = detail::json_value::kind;
    const auto bad = [&](const std::string& what) {
      fail("offload.checkpoint.header", fmt::format("tensor '{}': {}", key, what));
    };
    if (v.type != K::object)
      bad(fmt::format("header entry must be an object with dtype, shape and data_offsets, found a {}",
                      detail::json_kind_name(v.type)));
    for (const auto& m : v.object)
      if (m.key != "dtype" && m.key != "shape" && m.key != "data_offsets")
        bad(fmt::format("unexpected header field '{}' (expected only dtype, shape, data_offsets)",
                        m.key));
    const auto* dtype = v.find("dtype");
    const auto* shape = v.find("shape");
    const auto* offsets = v.find("data_offsets");
    if (dtype == nullptr) bad("header entry has no 'dtype'");
    if (shape == nullptr) bad("header entry has no 'shape'");
    if (offsets == nullptr) bad("header entry has no 'data_offsets'");
    if (dtype->type != K::string)
      bad(fmt::format("'dtype' must be a string, found a {}", detail::json_kind_name(dtype->type)));

    safetensors_tensor_info ti;
    ti.dtype_name = dtype->text;
    const auto* dt = detail::find_safetensors_dtype(ti.dtype_name);
    if (dt == nullptr)
      fail("offload.checkpoint.dtype",
           fmt::format("tensor '{}': unknown or unsupported dtype '{}'; expected one of {}", key,
                       ti.dtype_name, detail::supported_safetensors_dtypes()));
    ti.dtype = dt->type;

    if (shape->type != K::array)
      bad(fmt::format("'shape' must be an array of integers, found a {}",
                      detail::json_kind_name(shape->type)));
    std::uint64_t numel = 1;
    for (const auto& d : shape->array) {
      if (d.type != K::number || !d.is_integer || d.integer < 0)
        bad(fmt::format("'shape' entries must be non-negative integers, found {}",
                        d.type == K::number ? d.text : detail::json_kind_name(d.type)));
      ti.shape.push_back(d.integer);
      if (!detail::checked_mul(numel, static_cast<std::uint64_t>(d.integer), numel))
        bad(fmt::format("shape {} overflows", detail::format_shape(ti.shape)));
    }
    if (offsets->type != K::array || offsets->array.size() != 2)
      bad("'data_offsets' must be an array of two integers [begin, end]");
    for (const auto& o : offsets->array)
      if (o.type != K::number || !o.is_integer || o.integer < 0)
        bad(fmt::format("'data_offsets' entries must be non-negative integers, found {}",
                        o.type == K::number ? o.text : detail::json_kind_name(o.type)));
    ti.begin = static_cast<std::uint64_t>(offsets->array[0].integer);
    ti.end = static_cast<std::uint64_t>(offsets->array[1].integer);
    if (ti.begin > ti.end)
      fail("offload.checkpoint.offsets",
           fmt::format("tensor '{}': data_offsets [{}, {}] has begin > end", key, ti.begin, ti.end));
    if (ti.end > data_size)
      fail("offload.checkpoint.offsets",
           fmt::format("tensor '{}': data_offsets [{}, {}] end outside the data section of {} bytes "
                       "(file truncated or header corrupt)",
                       key, ti.begin, ti.end, data_size));
    std::uint64_t nbytes = 0;
    if (!detail::checked_mul(numel, dt->itemsize, nbytes) || nbytes != ti.end - ti.begin)
      fail("offload.checkpoint.offsets",
           fmt::format("tensor '{}': dtype {} shape {} needs {} bytes, but data_offsets [{}, {}] "
                       "span {} bytes",
                       key, ti.dtype_name, detail::format_shape(ti.shape), nbytes, ti.begin, ti.end,
                       ti.end - ti.begin));
    return ti;
  }

  void check_overlaps() const {
    std::vector<std::pair<const std::string*, const safetensors_tensor_info*>> v;
    for (const auto& [name, ti] : tensors_)
      if (ti.end > ti.begin) v.emplace_back(&name, &ti);
    std::sort(v.begin(), v.end(), [](const auto& a, const auto& b) {
      return a.second->begin < b.second->begin;
    });
    for (std::size_t i = 1; i < v.size(); ++i) {
      const auto& [pn, prev] = v[i - 1];
      const auto& [cn, cur] = v[i];
      if (cur->begin < prev->end)
        fail("offload.checkpoint.offsets",
             fmt::format("tensors '{}' (data_offsets [{}, {}]) and '{}' (data_offsets [{}, {}]) "
                         "overlap; the header is corrupt",
                         *pn, prev->begin, prev->end, *cn, cur->begin, cur->end));
    }
  }
};

/// Writes `tensors` to `path` as safetensors (header sorted by name, data in the same order,
/// header padded with spaces to a multiple of 8 bytes). Tensors may live on any device and be
/// non-contiguous; they are copied to contiguous CPU memory. Validates every tensor (defined,
/// supported dtype, name not `__metadata__`) before creating the file, then writes to
/// `<path>.tmp` and renames it over `path`.
inline void save_safetensors(const std::filesystem::path& path, const state_dict& tensors,
                             const std::map<std::string, std::string>& metadata = {}) {
  for (const auto& [name, t] : tensors) {
    if (name == "__metadata__")
      throw checkpoint_error("offload.checkpoint.save",
                             fmt::format("cannot save '{}': '__metadata__' is reserved and cannot "
                                         "be a tensor name",
                                         path.string()));
    if (!t.defined())
      throw checkpoint_error("offload.checkpoint.save",
                             fmt::format("cannot save '{}': tensor '{}' is undefined", path.string(),
                                         name));
    if (detail::find_safetensors_dtype(t.scalar_type()) == nullptr)
      throw checkpoint_error(
          "offload.checkpoint.dtype",
          fmt::format("cannot save '{}': tensor '{}' has dtype {}, expected one of {}",
                      path.string(), name, c10::toString(t.scalar_type()),
                      detail::supported_safetensors_dtypes()));
  }

  std::string header = "{";
  bool first = true;
  if (!metadata.empty()) {
    header += "\"__metadata__\":{";
    bool f2 = true;
    for (const auto& [k, v] : metadata) {
      if (!f2) header += ',';
      f2 = false;
      detail::append_json_string(header, k);
      header += ':';
      detail::append_json_string(header, v);
    }
    header += '}';
    first = false;
  }
  std::uint64_t offset = 0;
  for (const auto& [name, t] : tensors) {
    const auto* dt = detail::find_safetensors_dtype(t.scalar_type());
    std::uint64_t nbytes = static_cast<std::uint64_t>(t.numel()) * dt->itemsize;
    if (!first) header += ',';
    first = false;
    detail::append_json_string(header, name);
    header += fmt::format(":{{\"dtype\":\"{}\",\"shape\":[{}],\"data_offsets\":[{},{}]}}", dt->name,
                          fmt::join(t.sizes(), ","), offset, offset + nbytes);
    offset += nbytes;
  }
  header += '}';
  while (header.size() % 8 != 0) header += ' ';

  const std::filesystem::path tmp = std::filesystem::path(path.string() + ".tmp");
  {
    std::ofstream out(tmp, std::ios::binary | std::ios::trunc);
    if (!out)
      throw checkpoint_error("offload.checkpoint.io",
                             fmt::format("cannot create '{}'; check that the directory exists and "
                                         "is writable",
                                         tmp.string()));
    std::uint64_t n = header.size();
    out.write(reinterpret_cast<const char*>(&n), 8);
    out.write(header.data(), static_cast<std::streamsize>(header.size()));
    for (const auto& [name, t] : tensors) {
      at::Tensor c = t.detach().to(c10::kCPU).contiguous();
      const auto* dt = detail::find_safetensors_dtype(c.scalar_type());
      out.write(static_cast<const char*>(c.data_ptr()),
                static_cast<std::streamsize>(static_cast<std::size_t>(c.numel()) * dt->itemsize));
    }
    out.flush();
    if (!out)
      throw checkpoint_error("offload.checkpoint.io",
                             fmt::format("writing '{}' failed (disk full?)", tmp.string()));
  }
  std::error_code ec;
  std::filesystem::rename(tmp, path, ec);
  if (ec)
    throw checkpoint_error("offload.checkpoint.io",
                           fmt::format("cannot rename '{}' to '{}': {}", tmp.string(), path.string(),
                                       ec.message()));
}

/// Every tensor of one safetensors file (views of its mapping).
inline state_dict load_safetensors(const std::filesystem::path& path) {
  return safetensors_file(path).load_all();
}

/// Loads a sharded checkpoint through its `*.safetensors.index.json`: `weight_map` maps each key
/// to a shard file in the index's directory. Every shard is validated; every key of the index
/// must be in its shard, and every tensor of a shard must be listed in the index for that shard.
inline state_dict load_safetensors_index(const std::filesystem::path& index_path) {
  using K = detail::json_value::kind;
  const auto fail = [&](const std::string& msg) -> void {
    throw checkpoint_error("offload.checkpoint.index",
                           fmt::format("'{}': {}", index_path.string(), msg));
  };
  std::string text;
  {
    std::ifstream in(index_path, std::ios::binary);
    if (!in)
      throw checkpoint_error("offload.checkpoint.io",
                             fmt::format("cannot open '{}'; check the path", index_path.string()));
    text.assign(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
  }
  detail::json_value root;
  try {
    root = detail::parse_json(text);
  } catch (const detail::json_parse_error& e) {
    fail(fmt::format("not valid JSON: {}", e.what()));
  }
  const detail::json_value* wm = root.find("weight_map");
  if (root.type != K::object || wm == nullptr || wm->type != K::object)
    fail("expected a JSON object with a 'weight_map' object (tensor name -> shard file)");
  if (wm->object.empty()) fail("'weight_map' is empty");

  std::map<std::string, std::vector<std::string>> by_shard;
  for (const auto& m : wm->object) {
    if (m.value.type != K::string)
      fail(fmt::format("weight_map['{}'] must be a shard file name, found a {}", m.key,
                       detail::json_kind_name(m.value.type)));
    std::filesystem::path rel(m.value.text);
    bool escapes = rel.empty() || rel.is_absolute();
    for (const auto& part : rel)
      if (part == "..") escapes = true;
    if (escapes)
      fail(fmt::format("weight_map['{}'] = '{}' must be a relative file name inside the index's "
                       "directory",
                       m.key, m.value.text));
    by_shard[m.value.text].push_back(m.key);
  }

  state_dict sd;
  const auto dir = index_path.parent_path();
  for (auto& [shard, keys] : by_shard) {
    safetensors_file f(dir / shard);
    std::vector<std::string> missing;
    for (const auto& k : keys)
      if (!f.contains(k)) missing.push_back(k);
    if (!missing.empty()) {
      const std::size_t shown = std::min<std::size_t>(missing.size(), 20);
      fail(fmt::format("{} key(s) listed for shard '{}' are not in it: {}{}", missing.size(), shard,
                       fmt::join(missing.begin(), missing.begin() + static_cast<long>(shown), ", "),
                       missing.size() > shown ? fmt::format(" ... and {} more", missing.size() - shown)
                                              : std::string{}));
    }
    std::sort(keys.begin(), keys.end());
    std::vector<std::string> extra;
    for (const auto& k : f.keys())
      if (!std::binary_search(keys.begin(), keys.end(), k)) extra.push_back(k);
    if (!extra.empty()) {
      const std::size_t shown = std::min<std::size_t>(extra.size(), 20);
      fail(fmt::format("shard '{}' holds {} tensor(s) that the index does not map to it: {}{}",
                       shard, extra.size(),
                       fmt::join(extra.begin(), extra.begin() + static_cast<long>(shown), ", "),
                       extra.size() > shown ? fmt::format(" ... and {} more", extra.size() - shown)
                                            : std::string{}));
    }
    for (const auto& k : keys) sd.emplace(k, f.get(k));
  }
  return sd;
}

} // namespace offload
