#include <offload/safetensors.hpp>

#include <torch/torch.h>

#include <boost/test/unit_test.hpp>

#include <cstdint>
#include <filesystem>
#include <fstream>
#include <optional>
#include <string>
#include <unistd.h>

#include <offload/detail/json.hpp>
#include <offload/detail/safetensors_json.hpp>
#include <offload/state_dict.hpp>

namespace fs = std::filesystem;

namespace {

struct temp_dir {
  fs::path path;
  temp_dir() {
    static int counter = 0;
    path = fs::temp_directory_path() /
           ("offload_st_test_" + std::to_string(::getpid()) + "_" + std::to_string(counter++));
    fs::remove_all(path);
    fs::create_directories(path);
  }
  ~temp_dir() {
    std::error_code ec;
    fs::remove_all(path, ec);
  }
};

// Writes an 8-byte length (the header's size unless `len` is given), the header and `data`.
void write_raw(const fs::path& p, const std::string& header, const std::string& data = {},
               std::optional<std::uint64_t> len = std::nullopt) {
  std::ofstream out(p, std::ios::binary);
  std::uint64_t n = len.value_or(header.size());
  out.write(reinterpret_cast<const char*>(&n), 8);
  out << header << data;
}

// The message of the checkpoint_error thrown by opening `p` (fails the test if none is thrown).
std::string open_error(const fs::path& p) {
  try {
    offload::safetensors_file f(p);
  } catch (const offload::checkpoint_error& e) {
    return e.what();
  }
  BOOST_ERROR("opening " << p << " did not throw");
  return {};
}

bool contains(const std::string& s, const std::string& sub) { return s.find(sub) != std::string::npos; }

} // namespace

BOOST_AUTO_TEST_SUITE(safetensors)

BOOST_AUTO_TEST_CASE(round_trip_every_dtype_and_metadata) {
  temp_dir d;
  const auto p = d.path / "all.safetensors";
  offload::state_dict sd;
  sd["f64"] = torch::randn({2, 3}, torch::kDouble);
  sd["f32"] = torch::randn({4, 5});
  sd["f16"] = torch::randn({3}).to(torch::kHalf);
  sd["bf16"] = torch::randn({2, 2, 2}).to(torch::kBFloat16);
  sd["i64"] = torch::arange(-5, 5, torch::kLong);
  sd["i32"] = torch::arange(0, 7, torch::kInt);
  sd["i16"] = torch::arange(-3, 3, torch::kShort);
  sd["i8"] = torch::arange(-4, 4, torch::kChar);
  sd["u8"] = torch::arange(0, 255, torch::kByte);
  sd["bool"] = torch::tensor({true, false, true});
  sd["scalar"] = torch::tensor(3.5f);
  sd["empty"] = torch::zeros({0, 4});
  sd["noncontig"] = torch::arange(12, torch::kFloat).view({3, 4}).t();
  sd["name with \"quotes\" and \\ \n"] = torch::ones({1});
  offload::save_safetensors(p, sd, {{"format", "pt"}, {"note", "é \"x\""}});

  offload::safetensors_file f(p);
  BOOST_TEST(f.size() == sd.size());
  BOOST_TEST(f.metadata().at("format") == "pt");
  BOOST_TEST(f.metadata().at("note") == "é \"x\"");
  auto keys = f.keys();
  BOOST_TEST(std::is_sorted(keys.begin(), keys.end()));
  for (const auto& [name, t] : sd) {
    BOOST_TEST_CONTEXT(name) {
      BOOST_TEST_REQUIRE(f.contains(name));
      auto g = f.get(name);
      BOOST_TEST(g.scalar_type() == t.scalar_type());
      BOOST_TEST(g.sizes().vec() == t.sizes().vec(), boost::test_tools::per_element());
      BOOST_TEST(g.device().is_cpu());
      BOOST_TEST(torch::equal(g, t.contiguous()));
    }
  }
  BOOST_TEST(f.info("bf16").dtype_name == "BF16");
  BOOST_TEST(f.info("f32").end - f.info("f32").begin == 4u * 20u);
  // The header is padded to 8 bytes, so the data section starts aligned.
  std::ifstream in(p, std::ios::binary);
  std::uint64_t n = 0;
  in.read(reinterpret_cast<char*>(&n), 8);
  BOOST_TEST(n % 8 == 0u);
}

BOOST_AUTO_TEST_CASE(tensors_view_the_mapping_copy_on_write) {
  temp_dir d;
  const auto p = d.path / "w.safetensors";
  offload::save_safetensors(p, {{"w", torch::ones({4})}});
  torch::Tensor w;
  {
    offload::safetensors_file f(p);
    w = f.get("w");
  } // the mapping outlives the file object while a tensor views it
  BOOST_TEST(w.sum().item<float>() == 4.0f);
  w.add_(1); // private copy-on-write page: the file is unchanged
  BOOST_TEST(w.sum().item<float>() == 8.0f);
  BOOST_TEST(offload::safetensors_file(p).get("w").sum().item<float>() == 4.0f);
}

BOOST_AUTO_TEST_CASE(misaligned_data_is_copied) {
  temp_dir d;
  const auto p = d.path / "odd.safetensors";
  // Header of 61 bytes: the data section starts at byte 69, not 4-byte aligned.
  std::string h = R"({"x":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}})";
  while (h.size() < 61) h += ' ';
  float v[2] = {1.5f, -2.0f};
  write_raw(p, h, std::string(reinterpret_cast<const char*>(v), 8));
  auto x = offload::safetensors_file(p).get("x");
  BOOST_TEST(x[0].item<float>() == 1.5f);
  BOOST_TEST(x[1].item<float>() == -2.0f);
}

BOOST_AUTO_TEST_CASE(missing_key_names_the_key_and_closest) {
  temp_dir d;
  const auto p = d.path / "k.safetensors";
  offload::save_safetensors(p, {{"blocks.0.w", torch::ones({1})}, {"blocks.1.w", torch::ones({1})}});
  offload::safetensors_file f(p);
  BOOST_TEST(!f.contains("blocks.2.w"));
  try {
    (void)f.get("blocks.2.w");
    BOOST_ERROR("no throw");
  } catch (const offload::checkpoint_error& e) {
    BOOST_TEST(e.id() == "offload.checkpoint.missing_key");
    BOOST_TEST(contains(e.what(), "'blocks.2.w'"));
    BOOST_TEST(contains(e.what(), "blocks.0.w"));
    BOOST_TEST(contains(e.what(), p.string()));
  }
}

BOOST_AUTO_TEST_CASE(truncated_and_corrupt_headers_are_precise) {
  temp_dir d;
  const auto p = d.path / "bad.safetensors";
  const std::string good = R"({"a":{"dtype":"F32","shape":[2,3],"data_offsets":[0,24]}})";
  const std::string data24(24, '\0');

  {
    std::ofstream(p, std::ios::binary) << "abc";
    auto m = open_error(p);
    BOOST_TEST(contains(m, "offload.checkpoint.truncated"));
    BOOST_TEST(contains(m, "file is 3 bytes, expected at least 8"));
    BOOST_TEST(contains(m, p.string()));
  }
  {
    write_raw(p, good, data24, 1000);
    auto m = open_error(p);
    BOOST_TEST(contains(m, "offload.checkpoint.truncated"));
    BOOST_TEST(contains(m, "header length 1000 bytes exceeds the file"));
    BOOST_TEST(contains(m, std::to_string(good.size() + 24) + " bytes follow"));
  }
  {
    write_raw(p, good, std::string(20, '\0')); // data section 4 bytes short
    auto m = open_error(p);
    BOOST_TEST(contains(m, "offload.checkpoint.offsets"));
    BOOST_TEST(contains(m, "tensor 'a'"));
    BOOST_TEST(contains(m, "data_offsets [0, 24] end outside the data section of 20 bytes"));
  }
  {
    write_raw(p, R"({"a":{"dtype":"F32","shape":[2,3],"data_offsets":[0,20]}})", data24);
    auto m = open_error(p);
    BOOST_TEST(contains(m, "tensor 'a': dtype F32 shape [2, 3] needs 24 bytes"));
    BOOST_TEST(contains(m, "span 20 bytes"));
  }
  {
    write_raw(p, R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[8,0]}})", data24);
    BOOST_TEST(contains(open_error(p), "data_offsets [8, 0] has begin > end"));
  }
  {
    write_raw(p,
              R"({"a":{"dtype":"F32","shape":[4],"data_offsets":[0,16]},)"
              R"("b":{"dtype":"F32","shape":[2],"data_offsets":[12,20]}})",
              data24);
    auto m = open_error(p);
    BOOST_TEST(contains(m, "'a' (data_offsets [0, 16]) and 'b' (data_offsets [12, 20]) overlap"));
  }
  {
    write_raw(p, R"({"w":{"dtype":"F8_E4M3","shape":[2],"data_offsets":[0,2]}})", data24);
    auto m = open_error(p);
    BOOST_TEST(contains(m, "offload.checkpoint.dtype"));
    BOOST_TEST(contains(m, "tensor 'w': unknown or unsupported dtype 'F8_E4M3'"));
    BOOST_TEST(contains(m, "BF16"));
  }
  {
    write_raw(p, R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},)", data24);
    auto m = open_error(p);
    BOOST_TEST(contains(m, "offload.checkpoint.header"));
    BOOST_TEST(contains(m, "not valid JSON"));
  }
  {
    write_raw(p, R"([1,2])", data24);
    BOOST_TEST(contains(open_error(p), "header must be a JSON object, found a array"));
  }
  {
    write_raw(p, R"({"a":{"dtype":"F32","shape":[-2],"data_offsets":[0,8]}})", data24);
    BOOST_TEST(contains(open_error(p), "'shape' entries must be non-negative integers, found -2"));
  }
  {
    write_raw(p, R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8],"extra":1}})", data24);
    BOOST_TEST(contains(open_error(p), "tensor 'a': unexpected header field 'extra'"));
  }
  {
    write_raw(p, R"({"a":{"dtype":"F32","shape":[2]}})", data24);
    BOOST_TEST(contains(open_error(p), "tensor 'a': header entry has no 'data_offsets'"));
  }
  {
    write_raw(p, R"({"__metadata__":{"n":3}})", data24);
    BOOST_TEST(contains(open_error(p), "'__metadata__' entry 'n' must be a string, found a number"));
  }
  {
    write_raw(p,
              R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},)"
              R"("a":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}})",
              data24);
    BOOST_TEST(contains(open_error(p), "duplicate object key \"a\""));
  }
  {
    write_raw(p, "{}", "");
    offload::safetensors_file f(p); // an empty checkpoint is valid
    BOOST_TEST(f.size() == 0u);
  }
  {
    auto m = open_error(d.path / "absent.safetensors");
    BOOST_TEST(contains(m, "offload.checkpoint.io"));
    BOOST_TEST(contains(m, "absent.safetensors"));
  }
}

BOOST_AUTO_TEST_CASE(save_rejects_what_it_cannot_write) {
  temp_dir d;
  try {
    offload::save_safetensors(d.path / "c.safetensors", {{"z", torch::ones({2}, torch::kComplexFloat)}});
    BOOST_ERROR("no throw");
  } catch (const offload::checkpoint_error& e) {
    BOOST_TEST(contains(e.what(), "tensor 'z' has dtype ComplexFloat"));
  }
  BOOST_CHECK_THROW(offload::save_safetensors(d.path / "m.safetensors", {{"__metadata__", torch::ones({1})}}),
                    offload::checkpoint_error);
  BOOST_TEST(!fs::exists(d.path / "c.safetensors"));
  BOOST_TEST(!fs::exists(d.path / "m.safetensors"));
  BOOST_CHECK_THROW(offload::save_safetensors(d.path / "no" / "dir.safetensors", {{"a", torch::ones({1})}}),
                    offload::checkpoint_error);
}

BOOST_AUTO_TEST_CASE(sharded_index_loads_and_validates) {
  temp_dir d;
  offload::save_safetensors(d.path / "model-00001-of-00002.safetensors",
                            {{"a", torch::ones({2})}, {"b", torch::zeros({3})}});
  offload::save_safetensors(d.path / "model-00002-of-00002.safetensors", {{"c", torch::full({1}, 7.0)}});
  const auto index = d.path / "model.safetensors.index.json";
  const auto write_index = [&](const std::string& body) { std::ofstream(index) << body; };

  write_index(R"({"metadata":{"total_size":24},"weight_map":{"a":"model-00001-of-00002.safetensors",)"
              R"("b":"model-00001-of-00002.safetensors","c":"model-00002-of-00002.safetensors"}})");
  auto sd = offload::load_checkpoint(index);
  BOOST_TEST(sd.size() == 3u);
  BOOST_TEST(sd.at("c").item<float>() == 7.0f);
  BOOST_TEST(sd.at("b").sizes().vec() == std::vector<int64_t>{3}, boost::test_tools::per_element());

  // A key of the index that is not in its shard.
  write_index(R"({"weight_map":{"a":"model-00001-of-00002.safetensors","b":"model-00001-of-00002.safetensors",)"
              R"("c":"model-00002-of-00002.safetensors","d":"model-00002-of-00002.safetensors"}})");
  try {
    (void)offload::load_safetensors_index(index);
    BOOST_ERROR("no throw");
  } catch (const offload::checkpoint_error& e) {
    BOOST_TEST(e.id() == "offload.checkpoint.index");
    BOOST_TEST(contains(e.what(), "not in it: d"));
    BOOST_TEST(contains(e.what(), "model-00002-of-00002.safetensors"));
  }
  // A shard tensor the index does not list.
  write_index(R"({"weight_map":{"a":"model-00001-of-00002.safetensors","c":"model-00002-of-00002.safetensors"}})");
  try {
    (void)offload::load_safetensors_index(index);
    BOOST_ERROR("no throw");
  } catch (const offload::checkpoint_error& e) {
    BOOST_TEST(contains(e.what(), "does not map to it: b"));
  }
  // A shard file that does not exist.
  write_index(R"({"weight_map":{"a":"model-00003-of-00002.safetensors"}})");
  try {
    (void)offload::load_safetensors_index(index);
    BOOST_ERROR("no throw");
  } catch (const offload::checkpoint_error& e) {
    BOOST_TEST(contains(e.what(), "model-00003-of-00002.safetensors"));
  }
  // Paths escaping the directory, and malformed indexes.
  write_index(R"({"weight_map":{"a":"../x.safetensors"}})");
  BOOST_CHECK_THROW((void)offload::load_safetensors_index(index), offload::checkpoint_error);
  write_index(R"({"weight_map":{"a":3}})");
  BOOST_CHECK_THROW((void)offload::load_safetensors_index(index), offload::checkpoint_error);
  write_index(R"({"weights":{}})");
  BOOST_CHECK_THROW((void)offload::load_safetensors_index(index), offload::checkpoint_error);
}

BOOST_AUTO_TEST_CASE(json_parser_is_strict) {
  using offload::detail::json_parse_error;
  using offload::detail::parse_json;
  auto v = parse_json(R"( {"s":"a\u00e9\ud83d\ude00\n\"","n":-12,"f":1.5e3,"b":[true,false,null],"o":{}}   )");
  BOOST_TEST(v.find("s")->text == "a\xc3\xa9\xf0\x9f\x98\x80\n\"");
  BOOST_TEST(v.find("n")->is_integer);
  BOOST_TEST(v.find("n")->integer == -12);
  BOOST_TEST(!v.find("f")->is_integer);
  BOOST_TEST(v.find("f")->number == 1500.0);
  BOOST_TEST(v.find("b")->array.size() == 3u);
  BOOST_TEST(!parse_json("18446744073709551616").is_integer); // > int64: not an integer
  for (const char* bad : {"{\"a\":1,}", "[1,]", "01", "1.", "-", "+1", "NaN", "'a'", "{\"a\" 1}",
                          "\"\x01\"", "\"\\x\"", "\"\\ud800\"", "\"\xc3\"", "\"\xc0\xaf\"", "[1] x",
                          "{\"a\":1} {}", "", "tru", "{\"a\":1,\"a\":2}"})
    BOOST_CHECK_THROW(parse_json(bad), json_parse_error);
  std::string deep(100, '[');
  deep += std::string(100, ']');
  BOOST_CHECK_THROW(parse_json(deep), json_parse_error);
  std::string out;
  offload::detail::append_json_string(out, "a\"\\\n\x01");
  BOOST_TEST(out == "\"a\\\"\\\\\\n\\u0001\"");
  BOOST_TEST(parse_json(out).text == "a\"\\\n\x01");
  // Every control character round-trips, through a short escape or \u00XX.
  std::string controls;
  for (char c = 1; c < 0x20; ++c) controls += c;
  BOOST_TEST(parse_json(offload::detail::json_string(controls)).text == controls);
  BOOST_TEST(offload::detail::json_string("\b\f\x1f") == "\"\\b\\f\\u001f\"");
}

BOOST_AUTO_TEST_SUITE_END()
