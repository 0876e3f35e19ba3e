#pragma once
/// \file
/// Spatial tiling options of the Wan VAE (WanVAE::decode / WanVAE::encode with a VaeTiling).
///
/// Kept free of LibTorch headers so that the planner (wan/stages.hpp, generation_shape) can
/// carry the option; the tiled decode/encode themselves are in wan/vae.hpp / vae.cpp.
///
/// ## What tiling does
/// The latent frame grid [h, w] is cut into tiles of `tile_latent_h x tile_latent_w` latent
/// pixels (8x that many video pixels) that overlap their neighbours by `overlap_latent` latent
/// pixels. Each tile is decoded (encoded) on its own through the WHOLE temporal sequence with its
/// own causal feature cache (clear_cache per tile; within a tile the cache is used exactly as the
/// untiled path uses it), and the tiles are blended back with linear weight ramps across each
/// overlap (in video pixels for decode, in latent pixels for encode), so there are no seams.
/// Tiles start every `tile - overlap` latent pixels; the last tile of a row/column is moved back
/// to end at the border (so it may overlap its neighbour by more). Where one tile covers the whole
/// latent in both directions, the untiled path runs: the result is bit-identical to it.
///
/// The decoder's activation peak then scales with the tile's pixel area instead of the frame's
/// (see pipeline_stages in wan/stages.hpp); the result differs from the untiled decode near
/// the seams (zero padding at tile borders) and everywhere a little (the decoder's and encoder's
/// middle AttentionBlock attends within the tile only). docs/pipelines/wan.md ("Tiled VAE decode and
/// encode") gives the measured errors.

#include <cstdint>

namespace wan {

/// Spatial tiling of the Wan VAE. The defaults are 256x256-pixel tiles overlapping by 64 pixels.
struct VaeTiling {
  /// Tile height in latent pixels (x8 video pixels); > 0.
  std::int64_t tile_latent_h = 32;
  /// Tile width in latent pixels (x8 video pixels); > 0.
  std::int64_t tile_latent_w = 32;
  /// Latent pixels shared by neighbouring tiles (blended linearly); >= 0 and less than both tile
  /// sizes. 0 leaves visible seams; a quarter of the tile is a good default.
  std::int64_t overlap_latent = 8;

  /// Square tiles of `tile_latent` latent pixels overlapping by `overlap_latent`.
  static constexpr VaeTiling square(std::int64_t tile_latent, std::int64_t overlap_latent) {
    return VaeTiling{tile_latent, tile_latent, overlap_latent};
  }

  /// Throws offload::config_error ("offload.wan.vae.tile_size" for a non-positive tile size,
  /// "offload.wan.vae.tile_overlap" for a negative overlap or one not smaller than both tile
  /// sizes). Defined in vae.cpp.
  void validate() const;

  /// True when one tile covers a latent of `latent_h x latent_w` (the untiled path runs).
  [[nodiscard]] constexpr bool covers(std::int64_t latent_h, std::int64_t latent_w) const {
    return tile_latent_h >= latent_h && tile_latent_w >= latent_w;
  }

  bool operator==(const VaeTiling&) const = default;
};

} // namespace wan
