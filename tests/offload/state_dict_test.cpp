#include <offload/state_dict.hpp>

#include <torch/torch.h>

#include <boost/test/unit_test.hpp>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <string>
#include <unistd.h>

namespace fs = std::filesystem;

namespace {

struct NetImpl : torch::nn::Module {
  torch::nn::Linear fc{nullptr};
  torch::nn::Sequential ffn{nullptr};
  torch::Tensor steps;
  NetImpl() {
    fc = register_module("fc", torch::nn::Linear(4, 3));
    ffn = register_module("ffn", torch::nn::Sequential(torch::nn::Linear(3, 5), torch::nn::GELU(),
                                                        torch::nn::Linear(5, 3)));
    steps = register_buffer("steps", torch::zeros({2}, torch::kLong));
  }
};
TORCH_MODULE(Net);

// A state dict that matches Net exactly, with recognisable values.
offload::state_dict matching(float v = 0.5f) {
  offload::state_dict sd;
  sd["fc.weight"] = torch::full({3, 4}, v);
  sd["fc.bias"] = torch::full({3}, v);
  sd["ffn.0.weight"] = torch::full({5, 3}, v);
  sd["ffn.0.bias"] = torch::full({5}, v);
  sd["ffn.2.weight"] = torch::full({3, 5}, v);
  sd["ffn.2.bias"] = torch::full({3}, v);
  sd["steps"] = torch::tensor({7, 8}, torch::kLong);
  return sd;
}

struct temp_dir {
  fs::path path;
  temp_dir() {
    static int counter = 0;
    path = fs::temp_directory_path() /
           ("offload_sd_test_" + std::to_string(::getpid()) + "_" + std::to_string(counter++));
    fs::remove_all(path);
    fs::create_directories(path);
  }
  ~temp_dir() {
    std::error_code ec;
    fs::remove_all(path, ec);
  }
};

fs::path golden_dir() {
  if (const char* env = std::getenv("OFFLOAD_TEST_DATA"); env != nullptr && *env != '\0')
    return fs::path(env) / "golden";
  return fs::path(__FILE__).parent_path().parent_path() / "data" / "golden";
}

bool contains(const std::string& s, const std::string& sub) { return s.find(sub) != std::string::npos; }

template <class F>
offload::checkpoint_error expect_checkpoint_error(F&& f) {
  try {
    f();
  } catch (const offload::checkpoint_error& e) {
    return e;
  }
  BOOST_FAIL("no offload::checkpoint_error thrown");
  throw; // unreachable
}

} // namespace

BOOST_AUTO_TEST_SUITE(state_dict)

BOOST_AUTO_TEST_CASE(exact_state_dict_loads_all_values) {
  Net net;
  offload::load_state(*net, matching());
  BOOST_TEST(net->fc->weight.sum().item<float>() == 6.0f);
  BOOST_TEST(net->ffn[2]->as<torch::nn::Linear>()->bias.sum().item<float>() == 1.5f);
  BOOST_TEST(torch::equal(net->steps, torch::tensor({7, 8}, torch::kLong)));
  BOOST_TEST(net->fc->weight.requires_grad()); // still a parameter
}

BOOST_AUTO_TEST_CASE(missing_unexpected_and_misshaped_are_all_named_and_nothing_is_copied) {
  Net net;
  const auto before = net->fc->weight.clone();
  auto sd = matching();
  sd.erase("ffn.0.bias");                      // missing
  sd["ffn.7.weight"] = torch::ones({2});       // unexpected
  sd["fc.weight"] = torch::ones({4, 3});       // wrong shape
  auto e = expect_checkpoint_error([&] { offload::load_state(*net, sd); });
  const std::string m = e.what();
  BOOST_TEST(e.id() == "offload.checkpoint.state_mismatch");
  BOOST_TEST(contains(m, "'ffn.0.bias' [5] Float"));
  BOOST_TEST(contains(m, "'ffn.7.weight' [2] Float"));
  BOOST_TEST(contains(m, "'fc.weight': module expects [3, 4], checkpoint has [4, 3]"));
  BOOST_TEST(contains(m, "1 missing key(s)"));
  BOOST_TEST(contains(m, "1 unexpected key(s)"));
  BOOST_TEST(contains(m, "1 shape mismatch(es)"));
  BOOST_TEST(torch::equal(net->fc->weight, before)); // validated before copying anything
  BOOST_TEST(net->steps.sum().item<int64_t>() == 0);
}

BOOST_AUTO_TEST_CASE(long_lists_are_truncated_with_a_count) {
  struct Wide : torch::nn::Module {
    Wide() {
      for (int i = 0; i < 30; ++i) register_parameter("p" + std::to_string(i), torch::zeros({1}));
    }
  } wide;
  auto e = expect_checkpoint_error([&] { offload::load_state(wide, offload::state_dict{}); });
  const std::string m = e.what();
  BOOST_TEST(contains(m, "30 missing key(s)"));
  BOOST_TEST(contains(m, "... and 10 more"));
  e = expect_checkpoint_error([&] { offload::load_state(wide, offload::state_dict{}, {.max_listed = 5}); });
  BOOST_TEST(contains(e.what(), "... and 25 more"));
}

BOOST_AUTO_TEST_CASE(opt_outs_are_explicit_and_dotted) {
  Net net;
  auto sd = matching();
  sd["extra.a"] = torch::ones({1});
  sd["extra.b.c"] = torch::ones({1});
  sd["extrax"] = torch::ones({1});
  // "extra" covers extra.a and extra.b.c but not extrax.
  auto e = expect_checkpoint_error(
      [&] { offload::load_state(*net, sd, {.ignore_unexpected_prefixes = {"extra"}}); });
  BOOST_TEST(contains(e.what(), "'extrax'"));
  BOOST_TEST(!contains(e.what(), "'extra.a'"));
  offload::load_state(*net, sd, {.ignore_unexpected_prefixes = {"extra", "extrax"}});
  BOOST_TEST(net->fc->bias.sum().item<float>() == 1.5f);

  Net net2;
  auto partial = matching(2.0f);
  partial.erase("steps");
  partial.erase("ffn.2.weight");
  partial.erase("ffn.2.bias");
  offload::load_state(*net2, partial, {.ignore_missing_prefixes = {"steps", "ffn.2."}});
  BOOST_TEST(net2->fc->bias.sum().item<float>() == 6.0f);
  BOOST_TEST(net2->steps.sum().item<int64_t>() == 0); // kept its value
}

BOOST_AUTO_TEST_CASE(dtype_is_converted_explicitly_within_a_kind) {
  Net net;
  auto sd = matching(1.25f);
  for (auto& [k, v] : sd)
    if (v.is_floating_point()) v = v.to(torch::kBFloat16);
  offload::load_state(*net, sd);
  BOOST_TEST(net->fc->weight.scalar_type() == torch::kFloat); // the module keeps its dtype
  BOOST_TEST(net->fc->weight.sum().item<float>() == 15.0f);

  auto bad = matching();
  bad["steps"] = torch::tensor({7.0f, 8.0f});      // float into an int64 buffer
  bad["fc.bias"] = torch::ones({3}, torch::kLong);  // int into a float parameter
  auto e = expect_checkpoint_error([&] { offload::load_state(*net, bad); });
  BOOST_TEST(contains(e.what(), "2 dtype mismatch(es)"));
  BOOST_TEST(contains(e.what(), "'steps': module tensor is Long, checkpoint has Float"));
  BOOST_TEST(contains(e.what(), "'fc.bias': module tensor is Float, checkpoint has Long"));
}

BOOST_AUTO_TEST_CASE(load_checkpoint_dispatches_by_name) {
  temp_dir d;
  const auto sd = matching(3.0f);
  offload::save_safetensors(d.path / "net.safetensors", sd);
  Net a;
  offload::load_state(*a, offload::load_checkpoint(d.path / "net.safetensors"));
  BOOST_TEST(a->fc->bias.sum().item<float>() == 9.0f);

  // A diffusers-style directory: one file, or shards with or without an index.
  fs::create_directories(d.path / "one");
  offload::save_safetensors(d.path / "one" / "diffusion_pytorch_model.safetensors", sd);
  BOOST_TEST(offload::load_checkpoint(d.path / "one").size() == sd.size());

  fs::create_directories(d.path / "sharded");
  offload::state_dict s1, s2;
  for (const auto& [k, v] : sd) (k < "ffn.2" ? s1 : s2).emplace(k, v);
  offload::save_safetensors(d.path / "sharded" / "diffusion_pytorch_model-00001-of-00002.safetensors", s1);
  offload::save_safetensors(d.path / "sharded" / "diffusion_pytorch_model-00002-of-00002.safetensors", s2);
  BOOST_TEST(offload::load_checkpoint(d.path / "sharded").size() == sd.size()); // no index: merged
  {
    std::ofstream idx(d.path / "sharded" / "diffusion_pytorch_model.safetensors.index.json");
    idx << R"({"weight_map":{)";
    bool first = true;
    for (const auto& [k, v] : sd) {
      idx << (first ? "" : ",") << '"' << k << "\":\"diffusion_pytorch_model-0000"
          << (k < "ffn.2" ? 1 : 2) << "-of-00002.safetensors\"";
      first = false;
    }
    idx << "}}";
  }
  Net b;
  offload::load_state(*b, d.path / "sharded"); // through the index
  BOOST_TEST(b->steps.sum().item<int64_t>() == 15);

  // The same key in two shards without an index is ambiguous.
  fs::create_directories(d.path / "dup");
  offload::save_safetensors(d.path / "dup" / "diffusion_pytorch_model-1.safetensors", {{"w", torch::ones({1})}});
  offload::save_safetensors(d.path / "dup" / "diffusion_pytorch_model-2.safetensors", {{"w", torch::ones({1})}});
  auto e = expect_checkpoint_error([&] { (void)offload::load_checkpoint(d.path / "dup"); });
  BOOST_TEST(e.id() == "offload.checkpoint.duplicate_key");
  BOOST_TEST(contains(e.what(), "'w'"));

  fs::create_directories(d.path / "empty");
  e = expect_checkpoint_error([&] { (void)offload::load_checkpoint(d.path / "empty"); });
  BOOST_TEST(contains(e.what(), "holds no diffusion_pytorch_model*.safetensors"));
  std::ofstream(d.path / "weights.npz") << "x";
  e = expect_checkpoint_error([&] { (void)offload::load_checkpoint(d.path / "weights.npz"); });
  BOOST_TEST(contains(e.what(), "cannot tell the format of"));
  e = expect_checkpoint_error([&] { (void)offload::load_checkpoint(d.path / "nope.pth"); });
  BOOST_TEST(contains(e.what(), "does not exist"));

  // .pth through the same entry point; a mismatch names the file.
  const auto vae = golden_dir() / "checkpoints" / "Wan2.1_VAE.pth";
  BOOST_TEST(offload::load_checkpoint(vae).size() == 194u);
  Net c;
  e = expect_checkpoint_error([&] { offload::load_state(*c, vae); });
  BOOST_TEST(contains(e.what(), "Wan2.1_VAE.pth"));
  BOOST_TEST(contains(e.what(), "194 unexpected key(s)"));
}

BOOST_AUTO_TEST_CASE(corrupt_safetensors_surface_through_load_checkpoint) {
  temp_dir d;
  const auto p = d.path / "bad.safetensors";
  {
    std::ofstream out(p, std::ios::binary);
    std::uint64_t n = 4096;
    out.write(reinterpret_cast<const char*>(&n), 8);
    out << "{}";
  }
  auto e = expect_checkpoint_error([&] { (void)offload::load_checkpoint(p); });
  BOOST_TEST(e.id() == "offload.checkpoint.truncated");
  BOOST_TEST(contains(e.what(), "header length 4096 bytes exceeds the file"));
}

BOOST_AUTO_TEST_SUITE_END()
