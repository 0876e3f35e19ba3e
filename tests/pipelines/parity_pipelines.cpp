// Parity of the Wan pipelines (pipelines/wan/{text2video,image2video,first_last_frame2video,vace})
// with the official Python reference: the golden cases e2e_t2v, e2e_t2v_dpmpp, e2e_t2i, e2e_i2v,
// e2e_flf2v and e2e_vace. Each case runs the pipeline from the stored token ids and inputs with the
// parameters of its manifest `spec`, through offload on the host (policy: every component on the
// cpu), and compares every stored out.* tensor (noise and timesteps exactly).
#include "wan/first_last_frame2video.hpp"
#include "wan/vace.hpp"

#include <torch/torch.h>

#include <boost/test/unit_test.hpp>

#include <offload/testing/mock_device.hpp>

#include <fmt/format.h>

#include <map>
#include <set>
#include <string>

#include "parity_harness.hpp"

namespace wt = wan::testing;

namespace {

/// The tiny CLIP's head count (not in its weights) from the golden manifest.
wan::component_options options() {
  wan::component_options o;
  o.clip_vision_heads = wt::manifest_entry("checkpoints/models_clip_open-clip-xlm-roberta-large-vit-huge-14.pth")
                            .at("config").at("vision_heads").get<int64_t>();
  return o;
}

std::shared_ptr<wan::WanComponents> load_components(const std::string& kind, const std::string& dit_dir) {
  wan::component_paths p;
  p.t5_checkpoint = wt::checkpoint_path("models_t5_umt5-xxl-enc-bf16.pth");
  p.vae_checkpoint = wt::checkpoint_path("Wan2.1_VAE.pth");
  if (kind == "i2v" || kind == "flf2v")
    p.clip_checkpoint = wt::checkpoint_path("models_clip_open-clip-xlm-roberta-large-vit-huge-14.pth");
  p.dit_dir = wt::checkpoint_path(dit_dir);
  return wan::WanComponents::load(kind, p, options());
}

/// Every component on the host: the reference's CPU run.
std::string host_policy(const std::string& kind) {
  return kind == "i2v" || kind == "flf2v" ? "t5=cpu,clip=cpu,dit=cpu,vae=cpu" : "t5=cpu,dit=cpu,vae=cpu";
}

/// Collects a pipeline's intermediates and compares them with every stored out.* tensor.
class recording {
public:
  wan::recorder fn() {
    return [this](const std::string& name, const torch::Tensor& value) { values_[name] = value.to(torch::kCPU); };
  }

  torch::Tensor get(const std::string& name) const {
    if (const auto it = values_.find(name); it != values_.end()) return it->second;
    // per-step tensors: name.0, name.1, ... stacked
    std::vector<torch::Tensor> steps;
    for (int i = 0;; ++i) {
      const auto it = values_.find(fmt::format("{}.{}", name, i));
      if (it == values_.end()) break;
      steps.push_back(it->second);
    }
    BOOST_TEST_REQUIRE(!steps.empty(), "the pipeline recorded no '" << name << "'");
    return torch::stack(steps);
  }

  void compare_all(wt::golden_case& g) const {
    std::set<std::string> compared;
    for (const auto& name : g.names()) {
      if (name.rfind("out.", 0) != 0) continue;
      BOOST_TEST_CONTEXT(name) { g.expect_close(name, get(name.substr(4))); }
      compared.insert(name);
    }
    BOOST_TEST(compared.size() > 5u);
  }

private:
  std::map<std::string, torch::Tensor> values_;
};

struct host_run {
  offload::device_set devices;
  wan::execution exec;
  explicit host_run(const std::string& kind) {
    offload::testing::add_mock(devices, 0);
    exec = {&devices, offload::device_id::mock(0), offload::parse_policy(host_policy(kind))};
  }
};

void run_t2v_case(const std::string& case_name, const std::string& task) {
  wt::golden_case g(case_name);
  const auto& spec = g.entry().at("spec");
  host_run h("t2v");
  wan::WanT2V pipe(task, load_components("t2v", "t2v"), h.exec);
  recording rec;
  pipe.record = rec.fn();
  wan::t2v_params p;
  p.size = {spec.at("size")[0].get<int64_t>(), spec.at("size")[1].get<int64_t>()};
  p.frame_num = spec.at("frames").get<int64_t>();
  p.shift = spec.at("shift").get<double>();
  p.sample_solver = spec.at("solver").get<std::string>();
  p.sampling_steps = spec.at("steps").get<int64_t>();
  p.guide_scale = spec.at("guide").get<double>();
  p.seed = g.tensor("in.seed").item<int64_t>();
  const auto video = pipe.generate(g.tensor("in.prompt_ids"), g.tensor("in.neg_prompt_ids"), p);
  rec.compare_all(g);
  BOOST_TEST(torch::equal(video, rec.get("video")));
}

} // namespace

BOOST_AUTO_TEST_SUITE(parity_pipelines)

BOOST_AUTO_TEST_CASE(e2e_t2v) { run_t2v_case("e2e_t2v", "t2v-1.3B"); }

BOOST_AUTO_TEST_CASE(e2e_t2v_dpmpp) { run_t2v_case("e2e_t2v_dpmpp", "t2v-1.3B"); }

BOOST_AUTO_TEST_CASE(e2e_t2i) { run_t2v_case("e2e_t2i", "t2i-14B"); }

BOOST_AUTO_TEST_CASE(e2e_i2v) {
  wt::golden_case g("e2e_i2v");
  const auto& spec = g.entry().at("spec");
  host_run h("i2v");
  wan::WanI2V pipe("i2v-14B", load_components("i2v", "i2v"), h.exec);
  recording rec;
  pipe.record = rec.fn();
  wan::i2v_params p;
  p.max_area = spec.at("max_area").get<int64_t>();
  p.frame_num = spec.at("frames").get<int64_t>();
  p.shift = spec.at("shift").get<double>();
  p.sample_solver = spec.at("solver").get<std::string>();
  p.sampling_steps = spec.at("steps").get<int64_t>();
  p.guide_scale = spec.at("guide").get<double>();
  p.seed = g.tensor("in.seed").item<int64_t>();
  (void)pipe.generate(g.tensor("in.prompt_ids"), g.tensor("in.neg_prompt_ids"), g.tensor("in.image_u8.0"), p);
  rec.compare_all(g);
}

BOOST_AUTO_TEST_CASE(e2e_flf2v) {
  wt::golden_case g("e2e_flf2v");
  const auto& spec = g.entry().at("spec");
  host_run h("flf2v");
  wan::WanFLF2V pipe("flf2v-14B", load_components("flf2v", "flf2v"), h.exec);
  recording rec;
  pipe.record = rec.fn();
  wan::flf2v_params p;
  p.max_area = spec.at("max_area").get<int64_t>();
  p.frame_num = spec.at("frames").get<int64_t>();
  p.shift = spec.at("shift").get<double>();
  p.sample_solver = spec.at("solver").get<std::string>();
  p.sampling_steps = spec.at("steps").get<int64_t>();
  p.guide_scale = spec.at("guide").get<double>();
  p.seed = g.tensor("in.seed").item<int64_t>();
  (void)pipe.generate(g.tensor("in.prompt_ids"), g.tensor("in.neg_prompt_ids"), g.tensor("in.image_u8.0"),
                      g.tensor("in.image_u8.1"), p);
  rec.compare_all(g);
}

BOOST_AUTO_TEST_CASE(e2e_vace) {
  wt::golden_case g("e2e_vace");
  const auto& spec = g.entry().at("spec");
  host_run h("vace");
  wan::WanVace pipe("vace-1.3B", load_components("vace", "vace"), h.exec);
  recording rec;
  pipe.record = rec.fn();
  wan::vace_params p;
  p.context_scale = spec.at("context_scale").get<double>();
  p.shift = spec.at("shift").get<double>();
  p.sample_solver = spec.at("solver").get<std::string>();
  p.sampling_steps = spec.at("steps").get<int64_t>();
  p.guide_scale = spec.at("guide").get<double>();
  p.seed = g.tensor("in.seed").item<int64_t>();
  (void)pipe.generate(g.tensor("in.prompt_ids"), g.tensor("in.neg_prompt_ids"), {g.tensor("in.src_video")},
                      {g.tensor("in.src_mask")}, {{g.tensor("in.src_ref_image")}}, p);
  rec.compare_all(g);
}

BOOST_AUTO_TEST_SUITE_END()
