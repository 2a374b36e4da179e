"""Cost of rangewatch.watch_pipeline on a small random-init StableDiffusionPipeline (CPU), interleaved pairs.

    python benchmarks/bench_pipeline.py [--size 64] [--steps 10] [--pairs 10] [--threads 1]

Each pair runs the same generation plain and watched (``trace="vae"``, the default, and ``trace="none"``)
in alternating order and prints the median watched/plain ratio of the process CPU time
(``time.process_time``: on a shared, loaded machine it scatters far less than wall time, which is printed too). ``--size`` is the latent side (the image
is twice that: the tiny VAE has two blocks). A tiny denoiser makes the per-step statistics and the decode
tracing look expensive next to it: with a real UNet the ratios only shrink.
"""

from __future__ import annotations

import argparse
import statistics
import time
import warnings

import torch


def build(size: int):
    from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel

    torch.manual_seed(0)
    unet = UNet2DConditionModel(
        block_out_channels=(32, 64), layers_per_block=1, sample_size=size, cross_attention_dim=32,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        norm_num_groups=8, attention_head_dim=8,
    )
    vae = AutoencoderKL(block_out_channels=[16, 32], down_block_types=["DownEncoderBlock2D"] * 2,
                        up_block_types=["UpDecoderBlock2D"] * 2, latent_channels=4, norm_num_groups=8)
    sched = DDIMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, clip_sample=False,
                          set_alpha_to_one=False, steps_offset=1)
    pipe = StableDiffusionPipeline(vae=vae, unet=unet, scheduler=sched, text_encoder=None, tokenizer=None,
                                   safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=64, help="latent side (default 64)")
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--pairs", type=int, default=10)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    warnings.filterwarnings("ignore")
    torch.set_num_threads(args.threads)
    import rangewatch

    pipe = build(args.size)
    pe = torch.randn(1, 8, 32)
    side = 2 * args.size

    def gen() -> tuple[float, float]:
        t0, c0 = time.perf_counter(), time.process_time()
        pipe(prompt_embeds=pe, negative_prompt_embeds=torch.zeros_like(pe), num_inference_steps=args.steps,
             height=side, width=side, generator=torch.Generator().manual_seed(0), output_type="pt")
        return time.process_time() - c0, time.perf_counter() - t0

    def watched(trace: str) -> tuple[float, float]:
        with rangewatch.watch_pipeline(pipe, trace=trace):
            return gen()

    gen(), watched("vae")  # warm-up
    cpu: dict[str, list[float]] = {"vae": [], "none": []}
    wall: dict[str, list[float]] = {"vae": [], "none": []}
    plain_cpu = []
    for k in range(args.pairs):
        for trace in ("vae", "none"):
            if k % 2:
                w, p = watched(trace), gen()
            else:
                p, w = gen(), watched(trace)
            cpu[trace].append(w[0] / p[0])
            wall[trace].append(w[1] / p[1])
            plain_cpu.append(p[0])
    print(f"latents 4x{args.size}x{args.size}, {args.steps} steps, {args.pairs} pairs, {args.threads} thread(s); "
          f"plain generation median {statistics.median(plain_cpu):.3f} s CPU")
    for trace in cpu:
        c, w = cpu[trace], wall[trace]
        print(f"watch_pipeline(trace={trace!r}) / plain: CPU time median {statistics.median(c):.3f} "
              f"(min {min(c):.3f}, max {max(c):.3f}); wall time median {statistics.median(w):.3f}")


if __name__ == "__main__":
    main()
