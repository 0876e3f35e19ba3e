#pragma once
/// \file
/// Port of Wan-Video/Wan2.1@9737cba, wan/configs/shared_config.py (`wan_shared_cfg`).
///
/// The reference configs are EasyDicts that each preset updates; here they are one struct,
/// `wan::configs::WanConfig`, whose fields are the union of the keys the presets set. Keys a preset
/// does not set keep the "unset" values documented per field (empty strings, std::nullopt).
/// Deviation: the EasyDict `__name__` key is the field `name`.

#include <c10/core/ScalarType.h>

#include <array>
#include <cstdint>
#include <optional>
#include <string>

namespace wan::configs {

struct WanConfig {
  std::string name; ///< EasyDict `__name__`, e.g. "Config: Wan T2V 14B"

  // t5
  std::string t5_model;             ///< 'umt5_xxl'
  c10::ScalarType t5_dtype{};       ///< torch.bfloat16
  int64_t text_len = 0;             ///< 512
  std::string t5_checkpoint;        ///< 'models_t5_umt5-xxl-enc-bf16.pth'
  std::string t5_tokenizer;         ///< 'google/umt5-xxl'

  // transformer storage dtype
  c10::ScalarType param_dtype{};    ///< torch.bfloat16

  // inference
  int64_t num_train_timesteps = 0;  ///< 1000
  int64_t sample_fps = 0;           ///< 16
  std::string sample_neg_prompt;    ///< UTF-8

  // clip (i2v / flf2v only; unset elsewhere)
  std::string clip_model;                          ///< 'clip_xlm_roberta_vit_h_14'
  std::optional<c10::ScalarType> clip_dtype;       ///< torch.float16
  std::string clip_checkpoint;
  std::string clip_tokenizer;                      ///< 'xlm-roberta-large'

  // vae
  std::string vae_checkpoint;                      ///< 'Wan2.1_VAE.pth'
  std::array<int64_t, 3> vae_stride{0, 0, 0};      ///< (4, 8, 8)

  // transformer
  std::array<int64_t, 3> patch_size{0, 0, 0};      ///< (1, 2, 2)
  int64_t dim = 0;
  int64_t ffn_dim = 0;
  int64_t freq_dim = 0;
  int64_t num_heads = 0;
  int64_t num_layers = 0;
  std::array<int64_t, 2> window_size{-1, -1};
  bool qk_norm = false;
  bool cross_attn_norm = false;
  double eps = 0.0;
};

/// `wan_shared_cfg`
inline WanConfig wan_shared_cfg() {
  WanConfig c;
  // t5
  c.t5_model = "umt5_xxl";
  c.t5_dtype = c10::ScalarType::BFloat16;
  c.text_len = 512;
  // transformer
  c.param_dtype = c10::ScalarType::BFloat16;
  // inference
  c.num_train_timesteps = 1000;
  c.sample_fps = 16;
  c.sample_neg_prompt =
      "色调艳丽，过曝，静态，细节模糊不清，字幕，风格，作品，画作，画面，静止，整体发灰，最差质量，"
      "低质量，JPEG压缩残留，丑陋的，残缺的，多余的手指，画得不好的手部，画得不好的脸部，畸形的，毁容"
      "的，形态畸形的肢体，手指融合，静止不动的画面，杂乱的背景，三条腿，背景人很多，倒着走";
  return c;
}

} // namespace wan::configs
