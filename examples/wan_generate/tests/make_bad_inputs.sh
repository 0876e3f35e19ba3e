#!/bin/sh
# Builds damaged copies of a tiny T2V checkpoint folder for the CLI's bad-input tests
# (docs/bad_inputs.md): each sub-folder of OUT differs from TINY in one way.
#   make_bad_inputs.sh TINY OUT
set -eu
tiny=$1
out=$2
rm -rf "$out"
mkdir -p "$out"
dit=diffusion_pytorch_model.safetensors
vae=Wan2.1_VAE.pth
t5=models_t5_umt5-xxl-enc-bf16.pth

copy() { # copy <name>: a full copy of the tiny folder
  cp -r "$tiny" "$out/$1"
}
# A safetensors file: 8-byte little-endian header length, the JSON header, then `data` bytes.
safetensors() { # safetensors <file> <header json> <data bytes>
  n=$(printf '%s' "$2" | wc -c)
  {
    printf "$(printf '\\%03o\\%03o\\%03o\\%03o' $((n & 255)) $(((n >> 8) & 255)) $(((n >> 16) & 255)) $(((n >> 24) & 255)))"
    printf '\000\000\000\000'
    printf '%s' "$2"
    head -c "$3" /dev/zero
  } >"$1"
}

copy missing_vae && rm "$out/missing_vae/$vae"
copy missing_dit && rm "$out/missing_dit/$dit"
copy truncated_safetensors
head -c 1000000 "$tiny/$dit" >"$out/truncated_safetensors/$dit"
copy header_not_json
safetensors "$out/header_not_json/$dit" '{"patch_embedding.weight": {"dtype": "F32", "shape": [128' 64
copy offsets_outside
safetensors "$out/offsets_outside/$dit" \
  '{"patch_embedding.bias":{"dtype":"F32","shape":[128],"data_offsets":[0,512]},"head.head.bias":{"dtype":"F32","shape":[64],"data_offsets":[512,768]}}' 600
copy offsets_overlap
safetensors "$out/offsets_overlap/$dit" \
  '{"patch_embedding.bias":{"dtype":"F32","shape":[128],"data_offsets":[0,512]},"head.head.bias":{"dtype":"F32","shape":[64],"data_offsets":[256,512]}}' 512
copy unknown_dtype
safetensors "$out/unknown_dtype/$dit" '{"patch_embedding.bias":{"dtype":"Q7","shape":[128],"data_offsets":[0,512]}}' 512
copy truncated_pth
head -c 1000000 "$tiny/$vae" >"$out/truncated_pth/$vae"
copy corrupted_pth # bytes of the pickle (data.pkl, the first record) overwritten
dd if=/dev/zero of="$out/corrupted_pth/$t5" bs=1 seek=1000 count=200 conv=notrunc 2>/dev/null
copy not_a_pth
printf 'this is not a checkpoint\n' >"$out/not_a_pth/$t5"
copy config_disagrees # config.json says dim 256; the weights are dim 128
sed 's/"dim": 128/"dim": 256/' "$tiny/config.json" >"$out/config_disagrees/config.json"
copy config_more_layers # config.json says 3 layers; the weights hold 2
sed 's/"num_layers": 2/"num_layers": 3/' "$tiny/config.json" >"$out/config_more_layers/config.json"
copy config_not_json
printf '{"dim": 128,' >"$out/config_not_json/config.json"
