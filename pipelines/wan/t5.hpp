#pragma once
// Port of Wan-Video/Wan2.1@9737cba, wan/modules/t5.py (the encoder half that Wan uses).
//
// Ported: GELU, T5LayerNorm, T5Attention, T5FeedForward, T5SelfAttention, T5RelativeEmbedding,
// T5Encoder, the umt5_xxl preset (as T5Config::umt5_xxl()) and the T5EncoderModel wrapper.
// Class, member and registration names equal the Python ones, so the official
// models_t5_umt5-xxl-enc-bf16.pth loads with no rename table.
//
// Deliberate deviations:
//  * T5CrossAttention / T5Decoder / T5Model / init_weights are not ported (Wan never runs them).
//    Freshly built modules get LibTorch's default initialisation: the pipelines load a checkpoint;
//    benchmarks use the random weights (T5EncoderModel's config overload).
//  * T5Encoder takes a T5Config instead of positional arguments; it cannot share an external
//    nn.Embedding (`vocab` as module), which only T5Model uses.
//  * T5EncoderModel builds the encoder from a config inferred from the checkpoint
//    (T5Config::infer_from_weights) unless a config is given; the reference hard-codes umt5_xxl.
//    For the official file both are the same.
//  * T5EncoderModel keeps the model on `device` as the reference does, but tokenization runs through
//    HuggingfaceTokenizer (tokenizers.hpp; see its header for the differences to the HF tokenizer).
//  * Dropout modules are registered like the Python ones: call eval() (T5EncoderModel does).
//  * `T5Encoder::forward_branches` (an addition) encodes several token sequences block-major:
//    every sequence goes through block i before block i+1, each computing exactly what forward()
//    computes. A streamed T5 (`t5=cuda:stream=K`, offload block streaming) then copies each block
//    once per text encode for the prompt and the negative prompt together. `block_stream` (not a
//    module member) is set by the offload wiring; null means resident.

#include <cstdint>
#include <filesystem>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include <torch/nn/module.h>
#include <torch/nn/modules/container/modulelist.h>
#include <torch/nn/modules/container/sequential.h>
#include <torch/nn/modules/dropout.h>
#include <torch/nn/modules/embedding.h>
#include <torch/nn/modules/linear.h>
#include <torch/nn/pimpl.h>

#include <offload/state_dict.hpp>

namespace offload {
class block_stream;
}

#include "tokenizers.hpp"

namespace wan {

/// Hyper-parameters of the umT5 model family (wan/modules/t5.py, umt5_xxl()).
struct T5Config {
  std::int64_t vocab_size = 256384;
  std::int64_t dim = 4096;
  std::int64_t dim_attn = 4096;
  std::int64_t dim_ffn = 10240;
  std::int64_t num_heads = 64;
  std::int64_t encoder_layers = 24;
  std::int64_t decoder_layers = 24;  ///< unused by the encoder; kept so the preset matches the Python
  std::int64_t num_buckets = 32;
  bool shared_pos = false;
  double dropout = 0.1;

  /// The umT5-XXL preset Wan uses (text_encoder of every wan/configs/*.py).
  static T5Config umt5_xxl();
  /// Reads the encoder hyper-parameters off an encoder state dict: vocab,dim from
  /// token_embedding.weight; dim_attn from blocks.0.attn.q.weight; dim_ffn from
  /// blocks.0.ffn.fc1.weight; num_buckets,num_heads from (blocks.0.)pos_embedding.embedding.weight;
  /// encoder_layers = number of blocks.N. Throws offload::checkpoint_error when a key is missing.
  static T5Config infer_from_weights(const offload::state_dict& sd);

  bool operator==(const T5Config&) const = default;
};

/// Number of parameters of the T5Encoder built from `cfg` (umT5-XXL: 5,680,910,336).
std::int64_t parameter_count(const T5Config& cfg);

/// Numbers of elements of the tensors of one encoder block (norm1, attn.q/k/v/o, norm2,
/// ffn.gate.0/fc1/fc2, and pos_embedding unless shared): what its block list streams.
std::vector<std::int64_t> block_tensor_numels(const T5Config& cfg);

/// Numbers of elements of every parameter of the T5Encoder built from `cfg` (token_embedding, the
/// shared pos_embedding, every block's, norm): what parameter_count sums, and the sizes the
/// preset's pinned bytes pack.
std::vector<std::int64_t> tensor_numels(const T5Config& cfg);

/// tanh-approximated GELU, written out exactly like t5.py's GELU.
class GELUImpl : public torch::nn::Module {
public:
  torch::Tensor forward(const torch::Tensor& x);
};
TORCH_MODULE(GELU);

/// RMS norm with weight only; the statistic is computed in float32 (T5 style).
class T5LayerNormImpl : public torch::nn::Module {
public:
  explicit T5LayerNormImpl(std::int64_t dim, double eps = 1e-6);
  torch::Tensor forward(const torch::Tensor& x);

  std::int64_t dim;
  double eps;
  torch::Tensor weight;
};
TORCH_MODULE(T5LayerNorm);

/// Multi-head attention without biases and without 1/sqrt(d) scaling (T5).
class T5AttentionImpl : public torch::nn::Module {
public:
  T5AttentionImpl(std::int64_t dim, std::int64_t dim_attn, std::int64_t num_heads,
                  double dropout = 0.1);
  /// x: [B, L1, C]; context: [B, L2, C] or undefined (= x); mask: [B, L2] or [B, L1, L2] or
  /// undefined; pos_bias: [1 or B, N, L1, L2] or undefined.
  torch::Tensor forward(const torch::Tensor& x, const torch::Tensor& context = {},
                        const torch::Tensor& mask = {}, const torch::Tensor& pos_bias = {});

  std::int64_t dim, dim_attn, num_heads, head_dim;
  torch::nn::Linear q{nullptr}, k{nullptr}, v{nullptr}, o{nullptr};
  torch::nn::Dropout dropout{nullptr};
};
TORCH_MODULE(T5Attention);

/// Gated-GELU feed-forward: fc2(fc1(x) * gate(x)), gate = Sequential(Linear, GELU).
class T5FeedForwardImpl : public torch::nn::Module {
public:
  T5FeedForwardImpl(std::int64_t dim, std::int64_t dim_ffn, double dropout = 0.1);
  torch::Tensor forward(const torch::Tensor& x);

  std::int64_t dim, dim_ffn;
  torch::nn::Sequential gate{nullptr};
  torch::nn::Linear fc1{nullptr}, fc2{nullptr};
  torch::nn::Dropout dropout{nullptr};
};
TORCH_MODULE(T5FeedForward);

/// Learned relative-position bias over log-spaced buckets.
class T5RelativeEmbeddingImpl : public torch::nn::Module {
public:
  T5RelativeEmbeddingImpl(std::int64_t num_buckets, std::int64_t num_heads, bool bidirectional,
                          std::int64_t max_dist = 128);
  /// Returns the bias [1, N, Lq, Lk] on the device of the embedding weight.
  torch::Tensor forward(std::int64_t lq, std::int64_t lk);
  /// rel_pos (int64, key index - query index) -> bucket index (int64, same shape).
  /// (`_relative_position_bucket` in the Python.)
  torch::Tensor relative_position_bucket(torch::Tensor rel_pos) const;

  std::int64_t num_buckets, num_heads;
  bool bidirectional;
  std::int64_t max_dist;
  torch::nn::Embedding embedding{nullptr};
};
TORCH_MODULE(T5RelativeEmbedding);

/// Pre-norm encoder block: self-attention with relative bias, then gated FFN.
class T5SelfAttentionImpl : public torch::nn::Module {
public:
  T5SelfAttentionImpl(std::int64_t dim, std::int64_t dim_attn, std::int64_t dim_ffn,
                      std::int64_t num_heads, std::int64_t num_buckets, bool shared_pos = true,
                      double dropout = 0.1);
  /// x: [B, L, C]; mask: [B, L] or undefined; pos_bias: the shared bias when shared_pos.
  torch::Tensor forward(const torch::Tensor& x, const torch::Tensor& mask = {},
                        const torch::Tensor& pos_bias = {});

  std::int64_t dim, dim_attn, dim_ffn, num_heads, num_buckets;
  bool shared_pos;
  T5LayerNorm norm1{nullptr};
  T5Attention attn{nullptr};
  T5LayerNorm norm2{nullptr};
  T5FeedForward ffn{nullptr};
  T5RelativeEmbedding pos_embedding{nullptr};  ///< null when shared_pos
};
TORCH_MODULE(T5SelfAttention);

/// The umT5 text encoder: token embedding, encoder blocks, final T5LayerNorm.
class T5EncoderImpl : public torch::nn::Module {
public:
  /// Built part by part in `dtype`: each part is created (float32, as LibTorch initialises) and
  /// converted before the next, so the host never holds the whole encoder in float32. umT5-XXL's
  /// is 21.2 GiB in float32 and 10.6 in bf16; built whole and then converted (as t5.py's `_t5`
  /// does), the host would hold both at once. The values are those of the whole build converted.
  explicit T5EncoderImpl(const T5Config& cfg, torch::Dtype dtype = torch::kFloat32);
  /// ids: int64 [B, L]; mask: int [B, L] (1 = valid) or undefined. Returns [B, L, dim].
  torch::Tensor forward(const torch::Tensor& ids, const torch::Tensor& mask = {});
  /// forward() of each (ids, mask), block-major (see the file comment): the same results.
  std::vector<torch::Tensor> forward_branches(const std::vector<std::pair<torch::Tensor, torch::Tensor>>& inputs);

  T5Config config;
  torch::nn::Embedding token_embedding{nullptr};
  T5RelativeEmbedding pos_embedding{nullptr};  ///< only when shared_pos (null for umT5)
  torch::nn::Dropout dropout{nullptr};
  torch::nn::ModuleList blocks{nullptr};  ///< of T5SelfAttention
  T5LayerNorm norm{nullptr};
  /// Set by the offload wiring when the component streams `blocks`; null: resident.
  offload::block_stream* block_stream = nullptr;
};
TORCH_MODULE(T5Encoder);

/// The wrapper the Wan pipelines use (T5EncoderModel in t5.py): encoder + tokenizer.
///
/// **Example**
/// \code
/// wan::T5EncoderModel t5(512, torch::kBFloat16, torch::kCPU,
///                        "Wan2.1-T2V-1.3B/models_t5_umt5-xxl-enc-bf16.pth",
///                        "Wan2.1-T2V-1.3B/google/umt5-xxl");
/// std::vector<torch::Tensor> ctx = t5({"a cat surfing"}, torch::kCPU);  // [L_i, 4096] each
/// \endcode
class T5EncoderModel {
public:
  /// Builds the encoder (config inferred from the checkpoint unless given) in `dtype`, loads the
  /// checkpoint strictly (bf16 -> dtype conversion is explicit in offload::load_state), switches to
  /// eval mode and moves it to `device`. An empty tokenizer_path builds no tokenizer: then only
  /// encode(ids, mask) is available.
  T5EncoderModel(std::int64_t text_len, torch::Dtype dtype, torch::Device device,
                 const std::filesystem::path& checkpoint_path,
                 const std::filesystem::path& tokenizer_path = {},
                 std::optional<T5Config> config = std::nullopt);
  /// Builds the encoder of `config` without a checkpoint (random weights, LibTorch's default
  /// initialisation; benchmarks), in `dtype`, eval mode, on `device`. No tokenizer.
  T5EncoderModel(std::int64_t text_len, torch::Dtype dtype, torch::Device device, const T5Config& config);

  /// Tokenizes, encodes and returns one [seq_len_i, dim] tensor per text (trimmed to the mask).
  std::vector<torch::Tensor> operator()(const std::vector<std::string>& texts,
                                        torch::Device device);
  /// The same from already tokenized ids/mask (int64 [B, L]).
  std::vector<torch::Tensor> encode(const torch::Tensor& ids, const torch::Tensor& mask);
  /// encode() of each (ids, mask) through forward_branches: one pass over the blocks for all.
  std::vector<std::vector<torch::Tensor>> encode_branches(
      const std::vector<std::pair<torch::Tensor, torch::Tensor>>& inputs);
  /// The tokenizer's (ids, mask) for `texts` on `device`; config_error without a tokenizer.
  std::pair<torch::Tensor, torch::Tensor> tokenize(const std::vector<std::string>& texts, torch::Device device);

  std::int64_t text_len;
  torch::Dtype dtype;
  torch::Device device;
  std::filesystem::path checkpoint_path;
  std::filesystem::path tokenizer_path;
  T5Encoder model{nullptr};
  std::optional<HuggingfaceTokenizer> tokenizer;
};

} // namespace wan
