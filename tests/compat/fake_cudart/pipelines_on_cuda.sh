#!/usr/bin/env bash
# Every Wan pipeline through wan_generate on cuda:0 of the fake CUDA runtime (build.sh), with the
# bundled tiny checkpoints (target wan_tiny_model): T2V with both solvers, resident, offload_model and
# a streamed / bf16-stored / tiled policy; I2V resident and streamed; FLF2V with offload_model (it
# needs 81 frames; untiled, which is quicker here); VACE resident and streamed. Four steps (three
# for FLF2V): UniPC runs its second-order corrector, which solves on the latents' device, from its
# third step.
#
# The mock devices compute on the host, so they cannot see a tensor left on the host that meets one
# on the GPU; here LibTorch's CUDA device checks every operation's operands (kernels do nothing, so
# the videos are noise). UniPC's solve on the host failed here at its third step until it was fixed.
# LibTorch reads linalg's error codes back through kernels (which do nothing here): with the caching
# allocator off and device memory zeroed (FAKE_CUDART_ZERO) they read 0.
#   pipelines_on_cuda.sh BUILD_DIR MEDIA_DIR      (run with LD_LIBRARY_PATH at the fake runtime and
#                                                  LD_PRELOAD=no_cudnn.so, as debian_torch_cuda.sh does)
set -uo pipefail
build=${1:?build directory}
media=${2:?tests/data/media}
gen=$build/examples/wan_generate/wan_generate
export PYTORCH_NO_CUDA_MEMORY_CACHING=1 FAKE_CUDART_ZERO=1
tiny=$build/tiny
out=$(mktemp -d)
streamed="t5=cuda:on_demand:stream=1,dit=cuda:on_demand:stream=2:store=bf16:pinned,vae=cuda:on_demand:tile=8:overlap=2:pinned"
streamed_clip="t5=cuda:on_demand:stream=1,clip=cuda:on_demand,${streamed#t5=cuda:on_demand:stream=1,}"
failures=0
run() {
  local name=$1
  shift
  if "$gen" "$@" --device cuda:0 --save_file "$out/$name.mp4" > "$out/$name.log" 2>&1 && [[ -s $out/$name.mp4 ]]; then
    echo "pipelines_on_cuda: $name: ok ($(grep -o 'cuda:0: peak [^,;]*' "$out/$name.log" | head -n 1))"
  else
    echo "pipelines_on_cuda: $name: FAILED"
    tail -n 15 "$out/$name.log"
    failures=$((failures + 1))
  fi
}
t2v=(--task t2v-1.3B --size 832*480 --ckpt_dir "$tiny/Wan2.1-T2V-tiny" --prompt "a cat" --frame_num 5 --sample_steps 4)
i2v=(--task i2v-14B --size 832*480 --ckpt_dir "$tiny/Wan2.1-I2V-tiny" --prompt "a test card" --image "$media/first.png"
  --frame_num 5 --sample_steps 4)
vace=(--task vace-1.3B --size 832*480 --ckpt_dir "$tiny/Wan2.1-VACE-tiny" --prompt "fill the box"
  --src_video "$media/src_video.mp4" --src_mask "$media/src_mask.mp4" --src_ref_images "$media/first.png"
  --frame_num 5 --sample_steps 4)
run t2v_resident "${t2v[@]}"
run t2v_resident_dpm "${t2v[@]}" --sample_solver dpm++
run t2v_offload_model "${t2v[@]}" --offload_model True
run t2v_streamed "${t2v[@]}" --placement "$streamed"
run i2v_resident "${i2v[@]}"
run i2v_streamed "${i2v[@]}" --placement "$streamed_clip"
run flf2v_offload_model --task flf2v-14B --size 832*480 --ckpt_dir "$tiny/Wan2.1-FLF2V-tiny" --prompt "a test card" \
  --first_frame "$media/first.png" --last_frame "$media/last.png" --frame_num 81 --sample_steps 3 --offload_model True
run vace_resident "${vace[@]}"
run vace_streamed "${vace[@]}" --placement "$streamed"
rm -rf "$out"
echo "pipelines_on_cuda: $failures failed"
((failures == 0))
