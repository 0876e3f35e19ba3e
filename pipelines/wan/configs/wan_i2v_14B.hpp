#pragma once
/// \file
/// Port of Wan-Video/Wan2.1@9737cba, wan/configs/wan_i2v_14B.py (`i2v_14B`).

#include "wan/configs/shared_config.hpp"

namespace wan::configs {

/// `i2v_14B`
inline WanConfig i2v_14B() {
  WanConfig c = wan_shared_cfg();
  c.name = "Config: Wan I2V 14B";
  c.sample_neg_prompt = "镜头晃动，" + c.sample_neg_prompt;

  c.t5_checkpoint = "models_t5_umt5-xxl-enc-bf16.pth";
  c.t5_tokenizer = "google/umt5-xxl";
  // clip
  c.clip_model = "clip_xlm_roberta_vit_h_14";
  c.clip_dtype = c10::ScalarType::Half;
  c.clip_checkpoint = "models_clip_open-clip-xlm-roberta-large-vit-huge-14.pth";
  c.clip_tokenizer = "xlm-roberta-large";
  // vae
  c.vae_checkpoint = "Wan2.1_VAE.pth";
  c.vae_stride = {4, 8, 8};
  // transformer
  c.patch_size = {1, 2, 2};
  c.dim = 5120;
  c.ffn_dim = 13824;
  c.freq_dim = 256;
  c.num_heads = 40;
  c.num_layers = 40;
  c.window_size = {-1, -1};
  c.qk_norm = true;
  c.cross_attn_norm = true;
  c.eps = 1e-6;
  return c;
}

} // namespace wan::configs
