// Links offload::offload through add_subdirectory and plans the seed's configuration.
#include <offload/offload.hpp>

int main() {
  using namespace offload::literals;
  const auto gpu = offload::device_id::mock(0);
  const auto plan = offload::schedule({{"text_encode", {"t5"}, {{"t5", 0.28_GiB}}}, {"denoise", {"dit"}, {{"dit", 2.06_GiB}}, 50},
                                       {"decode", {"vae"}, {{"vae", 8.28_GiB}}}},
                                      {{"t5", 10.58_GiB}, {"dit", 5.29_GiB}, {"vae", 0.47_GiB}},
                                      offload::parse_policy("offload_model+vae_cpu"),
                                      {.accelerator = gpu, .devices = {{gpu, 11.49_GiB}}});
  return plan.fits() && plan.peak_of(gpu) < 11_GiB ? 0 : 1;
}
