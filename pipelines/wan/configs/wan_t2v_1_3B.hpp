#pragma once
/// \file
/// Port of Wan-Video/Wan2.1@9737cba, wan/configs/wan_t2v_1_3B.py (`t2v_1_3B`).

#include "wan/configs/shared_config.hpp"

namespace wan::configs {

/// `t2v_1_3B`
inline WanConfig t2v_1_3B() {
  WanConfig c = wan_shared_cfg();
  c.name = "Config: Wan T2V 1.3B";
  // t5
  c.t5_checkpoint = "models_t5_umt5-xxl-enc-bf16.pth";
  c.t5_tokenizer = "google/umt5-xxl";
  // vae
  c.vae_checkpoint = "Wan2.1_VAE.pth";
  c.vae_stride = {4, 8, 8};
  // transformer
  c.patch_size = {1, 2, 2};
  c.dim = 1536;
  c.ffn_dim = 8960;
  c.freq_dim = 256;
  c.num_heads = 12;
  c.num_layers = 30;
  c.window_size = {-1, -1};
  c.qk_norm = true;
  c.cross_attn_norm = true;
  c.eps = 1e-6;
  return c;
}

} // namespace wan::configs
