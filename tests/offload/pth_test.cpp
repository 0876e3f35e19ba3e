#include <offload/pth.hpp>

#include <torch/torch.h>

#include <boost/test/unit_test.hpp>

#include <caffe2/serialize/inline_container.h>
#include <nlohmann/json.hpp>

#include <cstdint>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <string>
#include <unistd.h>
#include <vector>

namespace fs = std::filesystem;

namespace {

fs::path golden_dir() {
  if (const char* env = std::getenv("OFFLOAD_TEST_DATA"); env != nullptr && *env != '\0')
    return fs::path(env) / "golden";
  return fs::path(__FILE__).parent_path().parent_path() / "data" / "golden";
}

const nlohmann::json& manifest_keys(const std::string& file) {
  static const nlohmann::json m = nlohmann::json::parse(std::ifstream(golden_dir() / "manifest.json"));
  for (const auto& f : m.at("files"))
    if (f.at("file") == file) return f.at("keys");
  throw std::runtime_error("no manifest entry " + file);
}

std::string dtype_name(c10::ScalarType t) {
  switch (t) {
  case c10::ScalarType::Float: return "float32";
  case c10::ScalarType::BFloat16: return "bfloat16";
  default: return c10::toString(t);
  }
}

struct temp_dir {
  fs::path path;
  temp_dir() {
    static int counter = 0;
    path = fs::temp_directory_path() /
           ("offload_pth_test_" + std::to_string(::getpid()) + "_" + std::to_string(counter++));
    fs::remove_all(path);
    fs::create_directories(path);
  }
  ~temp_dir() {
    std::error_code ec;
    fs::remove_all(path, ec);
  }
};

// Emits pickle opcodes the way torch.save (protocol 2) does, for crafting test archives.
struct pickler {
  std::string b;
  pickler& raw(std::string_view s) { b.append(s); return *this; }
  pickler& op(unsigned char c) { b += static_cast<char>(c); return *this; }
  pickler& proto(int v = 2) { op(0x80); return op(static_cast<unsigned char>(v)); }
  pickler& mark() { return op('('); }
  pickler& global(std::string_view mod, std::string_view name) {
    op('c');
    b.append(mod);
    b += '\n';
    b.append(name);
    b += '\n';
    return *this;
  }
  pickler& str(std::string_view s) {
    op('X');
    auto n = static_cast<std::uint32_t>(s.size());
    b.append(reinterpret_cast<const char*>(&n), 4);
    b.append(s);
    return *this;
  }
  pickler& integer(std::int64_t v) {
    if (v >= 0 && v < 256) return op('K').op(static_cast<unsigned char>(v));
    if (v >= 0 && v < 65536) {
      op('M');
      auto u = static_cast<std::uint16_t>(v);
      b.append(reinterpret_cast<const char*>(&u), 2);
      return *this;
    }
    if (v >= INT32_MIN && v <= INT32_MAX) {
      op('J');
      auto i = static_cast<std::int32_t>(v);
      b.append(reinterpret_cast<const char*>(&i), 4);
      return *this;
    }
    op(0x8a).op(8); // LONG1, 8 bytes little-endian two's complement
    b.append(reinterpret_cast<const char*>(&v), 8);
    return *this;
  }
  pickler& ints(const std::vector<std::int64_t>& v) { // a tuple of ints
    if (v.empty()) return op(')');
    mark();
    for (auto x : v) integer(x);
    return op('t');
  }
  // One `key: _rebuild_tensor_v2(persistent storage, offset, size, stride, False, OrderedDict())`.
  pickler& tensor(std::string_view key, std::string_view storage_type, std::string_view storage_key,
                  std::int64_t numel, std::int64_t offset, const std::vector<std::int64_t>& size,
                  const std::vector<std::int64_t>& stride) {
    str(key);
    global("torch._utils", "_rebuild_tensor_v2");
    mark();
    mark().str("storage").global("torch", storage_type).str(storage_key).str("cpu").integer(numel).op('t');
    op('Q'); // BINPERSID
    integer(offset);
    ints(size);
    ints(stride);
    op(0x89); // NEWFALSE
    global("collections", "OrderedDict").op(')').op('R');
    op('t').op('R');
    return *this;
  }
  // OrderedDict() + MARK ... SETITEMS + {'_metadata': OrderedDict()} BUILD + STOP.
  pickler& begin_dict() { proto().global("collections", "OrderedDict").op('q').op(0).op(')').op('R'); return mark(); }
  pickler& end_dict() {
    op('u');
    op('}').str("_metadata").op('h').op(0).op(')').op('R').op('s').op('b');
    return op('.');
  }
};

struct record {
  std::string name;
  std::string bytes;
};

void write_archive(const fs::path& p, const std::vector<record>& records) {
  caffe2::serialize::PyTorchStreamWriter w(p.string());
  for (const auto& r : records) w.writeRecord(r.name, r.bytes.data(), r.bytes.size());
  w.writeEndOfFile();
}

template <class T>
std::string bytes_of(const std::vector<T>& v) {
  return std::string(reinterpret_cast<const char*>(v.data()), v.size() * sizeof(T));
}

std::string load_error(const fs::path& p) {
  try {
    (void)offload::load_pth(p);
  } catch (const offload::checkpoint_error& e) {
    return e.what();
  }
  BOOST_ERROR("loading " << p << " did not throw");
  return {};
}

bool contains(const std::string& s, const std::string& sub) { return s.find(sub) != std::string::npos; }

// The error of loading an archive of `pkl` and the `extra` records.
std::string error_of_pickle(const std::string& pkl, std::vector<record> extra = {}) {
  temp_dir d;
  const auto p = d.path / "test.pth";
  extra.insert(extra.begin(), {"data.pkl", pkl});
  write_archive(p, extra);
  return load_error(p);
}

} // namespace

BOOST_AUTO_TEST_SUITE(pth)

BOOST_AUTO_TEST_CASE(golden_checkpoints_match_the_manifest) {
  for (const char* rel : {"checkpoints/models_t5_umt5-xxl-enc-bf16.pth", "checkpoints/Wan2.1_VAE.pth",
                          "checkpoints/models_clip_open-clip-xlm-roberta-large-vit-huge-14.pth"}) {
    BOOST_TEST_CONTEXT(rel) {
      const auto sd = offload::load_pth(golden_dir() / rel);
      const auto& keys = manifest_keys(rel);
      BOOST_TEST(sd.size() == keys.size());
      for (const auto& [name, spec] : keys.items()) {
        BOOST_TEST_CONTEXT(name) {
          auto it = sd.find(name);
          BOOST_TEST_REQUIRE((it != sd.end()));
          BOOST_TEST(it->second.sizes().vec() == spec.at("shape").get<std::vector<int64_t>>(),
                     boost::test_tools::per_element());
          BOOST_TEST(dtype_name(it->second.scalar_type()) == spec.at("dtype").get<std::string>());
          BOOST_TEST(it->second.is_contiguous());
          BOOST_TEST(it->second.device().is_cpu());
        }
      }
    }
  }
}

BOOST_AUTO_TEST_CASE(golden_checkpoint_values) {
  // Reference sums computed from the same files by an independent reader (Python's pickle with
  // stub classes + struct decoding of the storage records, bf16 widened to float32).
  struct ref {
    const char* file;
    const char* key;
    double sum;
  };
  const ref refs[] = {
      {"models_t5_umt5-xxl-enc-bf16.pth", "token_embedding.weight", -178.908},
      {"models_t5_umt5-xxl-enc-bf16.pth", "blocks.0.attn.k.weight", -12.9923},
      {"models_t5_umt5-xxl-enc-bf16.pth", "norm.weight", 63.1445},
      {"Wan2.1_VAE.pth", "encoder.conv1.weight", 0.081936},
      {"Wan2.1_VAE.pth", "decoder.head.2.bias", 0.0313936},
      {"Wan2.1_VAE.pth", "conv1.weight", 0.741067},
      {"models_clip_open-clip-xlm-roberta-large-vit-huge-14.pth", "log_scale", 2.65926},
      {"models_clip_open-clip-xlm-roberta-large-vit-huge-14.pth", "visual.patch_embedding.weight", -4.15859},
      {"models_clip_open-clip-xlm-roberta-large-vit-huge-14.pth", "textual.token_embedding.weight", 36.2102},
  };
  for (const auto& r : refs) {
    BOOST_TEST_CONTEXT(r.file << " " << r.key) {
      const auto sd = offload::load_pth(golden_dir() / "checkpoints" / r.file);
      const double s = sd.at(r.key).to(torch::kDouble).sum().item<double>();
      BOOST_TEST(s == r.sum, boost::test_tools::tolerance(1e-5));
    }
  }
  const auto t5 = offload::load_pth(golden_dir() / "checkpoints/models_t5_umt5-xxl-enc-bf16.pth");
  BOOST_TEST(t5.at("token_embedding.weight").scalar_type() == torch::kBFloat16);
  BOOST_TEST(t5.at("blocks.0.attn.q.weight").strides().vec() == std::vector<int64_t>({64, 1}),
             boost::test_tools::per_element());
}

BOOST_AUTO_TEST_CASE(views_share_storage_with_offset_and_stride) {
  temp_dir d;
  const auto p = d.path / "views.pth";
  pickler pk;
  pk.begin_dict()
      .tensor("a", "FloatStorage", "0", 6, 0, {2, 3}, {3, 1})
      .tensor("a_t", "FloatStorage", "0", 6, 0, {3, 2}, {1, 3})
      .tensor("tail", "FloatStorage", "0", 6, 2, {2}, {2})
      .tensor("h", "BFloat16Storage", "1", 2, 0, {2}, {1})
      .tensor("i", "LongStorage", "2", 3, 0, {3}, {1})
      .tensor("m", "BoolStorage", "3", 2, 0, {2}, {1})
      .tensor("s", "DoubleStorage", "4", 1, 0, {}, {})
      .tensor("e", "HalfStorage", "5", 0, 0, {0, 3}, {3, 1})
      .end_dict();
  const std::vector<float> a = {0, 1, 2, 3, 4, 5};
  const std::vector<std::uint16_t> h = {0x3fc0, 0xc000}; // bf16 1.5, -2
  const std::vector<std::int64_t> i = {-1, 0, 1LL << 40};
  const std::vector<std::uint8_t> m = {1, 0};
  const std::vector<double> s = {2.25};
  write_archive(p, {{"data.pkl", pk.b}, {"data/0", bytes_of(a)}, {"data/1", bytes_of(h)},
                    {"data/2", bytes_of(i)}, {"data/3", bytes_of(m)}, {"data/4", bytes_of(s)},
                    {"data/5", ""}});
  const auto sd = offload::load_pth(p);
  BOOST_TEST(sd.size() == 8u);
  const auto& ta = sd.at("a");
  const auto& tt = sd.at("a_t");
  BOOST_TEST(torch::equal(tt, ta.t()));
  BOOST_TEST(tt.strides().vec() == std::vector<int64_t>({1, 3}), boost::test_tools::per_element());
  BOOST_TEST(ta.data_ptr() == tt.data_ptr()); // one shared storage
  BOOST_TEST(sd.at("tail").storage_offset() == 2);
  BOOST_TEST(torch::equal(sd.at("tail"), torch::tensor({2.0f, 4.0f})));
  BOOST_TEST(sd.at("h").scalar_type() == torch::kBFloat16);
  BOOST_TEST(torch::equal(sd.at("h").to(torch::kFloat), torch::tensor({1.5f, -2.0f})));
  BOOST_TEST(torch::equal(sd.at("i"), torch::tensor(std::vector<int64_t>{-1, 0, int64_t{1} << 40})));
  BOOST_TEST(torch::equal(sd.at("m"), torch::tensor({true, false})));
  BOOST_TEST(sd.at("s").dim() == 0);
  BOOST_TEST(sd.at("s").item<double>() == 2.25);
  BOOST_TEST(sd.at("e").sizes().vec() == std::vector<int64_t>({0, 3}), boost::test_tools::per_element());
}

BOOST_AUTO_TEST_CASE(rejects_unsafe_or_unsupported_pickles) {
  const std::string f4 = bytes_of(std::vector<float>{1, 2, 3, 4});
  {
    pickler pk;
    pk.proto().global("os", "system").str("echo hi").op(0x85).op('R').op('.');
    auto m = error_of_pickle(pk.b);
    BOOST_TEST(contains(m, "offload.checkpoint.pickle"));
    BOOST_TEST(contains(m, "GLOBAL 'os system' is not allowed"));
    BOOST_TEST(contains(m, "data.pkl offset 2"));
  }
  {
    pickler pk;
    pk.begin_dict().str("x").raw("S'abc'\n").op('u').op('.');
    auto m = error_of_pickle(pk.b);
    BOOST_TEST(contains(m, "unsupported pickle opcode 0x53 (STRING)"));
    BOOST_TEST(contains(m, "offset " + std::to_string(pk.b.find("S'abc'"))));
  }
  {
    pickler pk;
    pk.proto(4).op('}').op('.');
    BOOST_TEST(contains(error_of_pickle(pk.b), "pickle protocol 4 is not supported"));
  }
  {
    pickler pk;
    pk.begin_dict().tensor("w", "FloatStorage", "0", 4, 0, {4}, {1});
    auto m = error_of_pickle(pk.b, {{"data/0", f4}}); // no SETITEMS / STOP
    BOOST_TEST(contains(m, "unexpected end of data before STOP"));
  }
  {
    pickler pk;
    pk.begin_dict().tensor("w", "FloatStorage", "0", 4, 0, {4}, {1}).end_dict();
    auto m = error_of_pickle(pk.b); // storage record absent
    BOOST_TEST(contains(m, "storage record 'data/0' referenced by data.pkl is missing"));
  }
  {
    pickler pk;
    pk.begin_dict().tensor("w", "FloatStorage", "0", 5, 0, {5}, {1}).end_dict();
    auto m = error_of_pickle(pk.b, {{"data/0", f4}});
    BOOST_TEST(contains(m, "storage record 'data/0' holds 16 bytes, expected 20"));
  }
  {
    pickler pk;
    pk.begin_dict().tensor("w", "FloatStorage", "0", 4, 1, {2, 2}, {2, 1}).end_dict();
    auto m = error_of_pickle(pk.b, {{"data/0", f4}});
    BOOST_TEST(contains(m, "reaches element 4 of a storage of 4 elements"));
  }
  {
    pickler pk;
    pk.begin_dict().tensor("w", "QInt8Storage", "0", 4, 0, {4}, {1}).end_dict();
    BOOST_TEST(contains(error_of_pickle(pk.b, {{"data/0", f4}}), "GLOBAL 'torch QInt8Storage' is not allowed"));
  }
  {
    pickler pk;
    pk.begin_dict().str("step").integer(3).end_dict();
    BOOST_TEST(contains(error_of_pickle(pk.b), "value of 'step' is a int, expected a tensor"));
  }
  {
    pickler pk;
    pk.proto().op(']').op('.');
    BOOST_TEST(contains(error_of_pickle(pk.b), "the saved object is a list, expected a state_dict"));
  }
  {
    pickler pk;
    pk.proto().op('h').op(9).op('.');
    BOOST_TEST(contains(error_of_pickle(pk.b), "BINGET: memo index 9 was never stored"));
  }
  {
    pickler pk;
    pk.proto().op('s').op('.');
    BOOST_TEST(contains(error_of_pickle(pk.b), "SETITEM: stack underflow"));
  }
}

// Pickles no torch.save writes, built to break a reader: sizes that overflow, reference cycles,
// nesting deep enough to exhaust the stack of a recursive destructor.
namespace {

const std::string two_floats = bytes_of(std::vector<float>{1, 2});

offload::detail::torch_unpickler unpickler_of(const std::string& pkl) {
  return {reinterpret_cast<const unsigned char*>(pkl.data()), pkl.size(), "test",
          [](const std::string&, c10::ScalarType dtype, std::int64_t numel) {
            return torch::zeros({numel}, torch::TensorOptions().dtype(dtype)).storage();
          }};
}

} // namespace

BOOST_AUTO_TEST_CASE(a_numel_that_wraps_around_2_64_is_refused) {
  // numel * 4 wraps around 2^64 to the record's 8 bytes: a 2^62-element view of 8 bytes.
  const std::int64_t numel = (std::int64_t{1} << 62) + 2;
  pickler pk;
  pk.begin_dict().tensor("w", "FloatStorage", "0", numel, 0, {std::int64_t{1} << 62}, {1}).end_dict();
  const auto m = error_of_pickle(pk.b, {{"data/0", two_floats}});
  BOOST_TEST(contains(m, "storage record 'data/0' holds 8 bytes, expected more than 2^64 "
                         "(4611686018427387906 x Float)"),
             m);
}

BOOST_AUTO_TEST_CASE(a_view_past_int64_is_refused_without_overflow) {
  // The sum of (size - 1) * stride over three dimensions passes 2^127: it must not wrap negative.
  const std::int64_t big = INT64_MAX;
  pickler pk;
  pk.begin_dict().tensor("w", "FloatStorage", "0", 2, 0, {big, big, big}, {big, big, big}).end_dict();
  const auto m = error_of_pickle(pk.b, {{"data/0", two_floats}});
  BOOST_TEST(contains(m, "reaches element 2^63 or beyond of a storage of 2 elements"), m);
}

BOOST_AUTO_TEST_CASE(reference_cycles_are_freed_with_the_unpickler) {
  // A list appended to itself through the memo.
  pickler pk;
  pk.proto().op(']').op('q').op(0).op('h').op(0).op('a').op('.');
  std::weak_ptr<offload::detail::pickle_object> seen;
  {
    auto up = unpickler_of(pk.b);
    const auto root = up.run();
    BOOST_TEST(root->items.size() == 1u);
    BOOST_TEST(root->items[0].get() == root.get());
    seen = root;
  }
  BOOST_TEST(seen.expired());
  BOOST_TEST(contains(error_of_pickle(pk.b), "the saved object is a list, expected a state_dict"));
}

BOOST_AUTO_TEST_CASE(deeply_nested_containers_are_freed_without_recursion) {
  // A million nested lists: a recursive destructor would need a million frames.
  constexpr int depth = 1'000'000;
  pickler pk;
  pk.proto();
  pk.b.append(depth, ']');
  pk.b.append(depth - 1, 'a');
  pk.op('.');
  BOOST_TEST(contains(error_of_pickle(pk.b), "the saved object is a list, expected a state_dict"));
}

BOOST_AUTO_TEST_CASE(a_repeated_key_keeps_its_place_and_its_last_value) {
  // Python's dict: the first position, the last value.
  pickler pk;
  pk.begin_dict()
      .tensor("a", "FloatStorage", "0", 2, 0, {1}, {1})
      .tensor("b", "FloatStorage", "0", 2, 0, {2}, {1})
      .tensor("a", "FloatStorage", "0", 2, 1, {1}, {1})
      .end_dict();
  auto up = unpickler_of(pk.b);
  std::vector<std::string> order;
  for (const auto& [k, v] : up.run()->entries) {
    order.push_back(k->text);
    if (k->text == "a") BOOST_TEST(v->tensor.storage_offset() == 1);
  }
  BOOST_TEST(order == std::vector<std::string>({"a", "b"}), boost::test_tools::per_element());
  temp_dir d;
  write_archive(d.path / "twice.pth", {{"data.pkl", pk.b}, {"data/0", two_floats}});
  const auto sd = offload::load_pth(d.path / "twice.pth");
  BOOST_TEST(sd.size() == 2u);
  BOOST_TEST(sd.at("a").item<float>() == 2.0f);
}

BOOST_AUTO_TEST_CASE(rejects_bad_archives) {
  temp_dir d;
  const auto src = golden_dir() / "checkpoints/models_t5_umt5-xxl-enc-bf16.pth";
  std::string whole;
  {
    std::ifstream in(src, std::ios::binary);
    whole.assign(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
  }
  {
    const auto p = d.path / "truncated.pth";
    std::ofstream(p, std::ios::binary) << whole.substr(0, whole.size() / 2);
    auto m = load_error(p);
    BOOST_TEST(contains(m, "offload.checkpoint.zip"));
    BOOST_TEST(contains(m, "truncated or corrupt"));
    BOOST_TEST(contains(m, p.string()));
  }
  {
    const auto p = d.path / "legacy.pth";
    std::ofstream(p, std::ios::binary) << "\x80\x02legacy";
    auto m = load_error(p);
    BOOST_TEST(contains(m, "offload.checkpoint.format"));
    BOOST_TEST(contains(m, "not a zip-format torch.save file"));
  }
  {
    const auto p = d.path / "nopkl.pth";
    write_archive(p, {{"something", "x"}});
    BOOST_TEST(contains(load_error(p), "without a data.pkl record"));
  }
  BOOST_TEST(contains(load_error(d.path / "absent.pth"), "offload.checkpoint.io"));
}

BOOST_AUTO_TEST_SUITE_END()
