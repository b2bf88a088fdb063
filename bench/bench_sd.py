"""Stable Diffusion 1.5-shaped text-to-image, libdiffusion vs diffusers, side by side (`make bench-sd`).

Both engines load the same folder (tools/make_sd15_random.py: SD1.5 shapes, random weights stored
F16), run StableDiffusionPipeline's job — prompt + empty negative prompt, guidance 7.5, DPM++ 2M,
512x512, seed 0 — for --steps steps on --threads threads, each in its own child process, and
report load time, seconds per step, VAE decode time, peak RSS, and how far latents and images
differ. diffusers runs in float32 (its CPU default; the F16 weights are widened on load).

    make bench-sd                        # builds the model on first use, then runs both engines
    python bench/bench_sd.py --steps 4 --model bench/.models/sd15-random --engines lib,torch
"""
import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time

import numpy as np

PROMPT = "a photograph of an astronaut riding a horse"


def child_lib(a, out):
    import diffusion
    t0 = time.perf_counter()
    p = diffusion.load(a.model, threads=a.threads, precision="bf16" if a.child == "lib-bf16" else "f32")
    load = time.perf_counter() - t0
    # The prompts encoded up front, as the torch child does (a sampler given prompt strings encodes
    # them in its first step, which would count them as step time).
    t0 = time.perf_counter()
    states = p.encode_prompt([PROMPT, ""])
    emb, neg = states[:1], states[1:]
    encode = time.perf_counter() - t0
    s = p.sampler(prompt_embeds=emb, negative_prompt_embeds=neg, guidance_scale=7.5, steps=a.steps, seed=0,
                  height=a.size, width=a.size, scheduler="dpmpp_2m")
    steps = []
    while True:
        t0 = time.perf_counter()
        more = s.step()
        steps.append(time.perf_counter() - t0)
        if not more:
            break
    latents = s.latents
    t0 = time.perf_counter()
    images = s.images()
    decode = time.perf_counter() - t0
    return dict(load=load, encode=encode, steps=steps, decode=decode), latents, images


def child_torch(a, out):
    import torch
    from diffusers import DPMSolverMultistepScheduler, StableDiffusionPipeline
    torch.set_num_threads(a.threads)
    t0 = time.perf_counter()
    pipe = StableDiffusionPipeline.from_pretrained(a.model, dtype=torch.float32, safety_checker=None)
    pipe.scheduler = DPMSolverMultistepScheduler.from_config(pipe.scheduler.config)
    load = time.perf_counter() - t0
    marks = []

    def on_step(pipe_, i, t, kw):
        marks.append(time.perf_counter())
        return kw

    t0 = time.perf_counter()
    with torch.inference_mode():
        emb, neg = pipe.encode_prompt(PROMPT, "cpu", 1, True, "")
        encode = time.perf_counter() - t0
        start = time.perf_counter()
        lat = pipe(prompt_embeds=emb, negative_prompt_embeds=neg, guidance_scale=7.5, num_inference_steps=a.steps,
                   height=a.size, width=a.size, generator=torch.Generator().manual_seed(0), output_type="latent",
                   callback_on_step_end=on_step).images
        steps = np.diff([start] + marks).tolist()
        t0 = time.perf_counter()
        img = pipe.vae.decode(lat / pipe.vae.config.scaling_factor).sample
        decode = time.perf_counter() - t0
    images = ((img / 2 + 0.5).clamp(0, 1).permute(0, 2, 3, 1).numpy() * 255).round().astype(np.uint8)
    return dict(load=load, encode=encode, steps=steps, decode=decode), lat.numpy(), images


def run_child(a):
    result, latents, images = (child_lib if a.child.startswith("lib") else child_torch)(a, a.out)
    result["peak_rss_gb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6
    np.save(a.out + ".latents.npy", latents)
    np.save(a.out + ".images.npy", images)
    with open(a.out + ".json", "w") as f:
        json.dump(result, f)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default=os.path.join(os.path.dirname(__file__), ".models", "sd15-random"))
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--engines", default="lib,torch", help="comma list of lib, lib-bf16 (precision bf16), torch")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--out", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child:
        return run_child(a)
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for engine in a.engines.split(","):
            out = os.path.join(tmp, engine)
            cmd = [sys.executable, __file__, "--child", engine, "--out", out, "--model", a.model, "--steps", str(a.steps),
                   "--size", str(a.size), "--threads", str(a.threads)]
            print(f"running {engine} ...", flush=True)
            subprocess.run(cmd, check=True)
            with open(out + ".json") as f:
                r = json.load(f)
            r["latents"] = np.load(out + ".latents.npy")
            r["images"] = np.load(out + ".images.npy")
            results[engine] = r
    names = {"lib": "libdiffusion", "lib-bf16": "libdiffusion bf16", "torch": "diffusers (PyTorch f32)"}
    print(f"\nSD1.5-shaped, {a.size}x{a.size}, DPM++ 2M, guidance 7.5, {a.steps} steps, {a.threads} threads")
    print("| engine | load s | prompt s | s/step (median) | decode s | peak RSS GB |")
    print("| --- | --- | --- | --- | --- | --- |")
    for e, r in results.items():
        print(f"| {names.get(e, e)} | {r['load']:.1f} | {r['encode']:.2f} | {np.median(r['steps']):.2f} | "
              f"{r['decode']:.2f} | {r['peak_rss_gb']:.2f} |")
    if "lib" in results and "torch" in results:
        lib, ref = results["lib"], results["torch"]
        ratio = np.median(lib["steps"]) / np.median(ref["steps"])
        dl = np.max(np.abs(lib["latents"] - ref["latents"])) / max(np.max(np.abs(ref["latents"])), 1e-12)
        di = int(np.max(np.abs(lib["images"].astype(int) - ref["images"].astype(int))))
        print(f"\nseconds per step: {ratio:.2f}x PyTorch (bar 1.2x); decode {lib['decode'] / ref['decode']:.2f}x; "
              f"peak RSS {lib['peak_rss_gb']:.2f} GB vs {ref['peak_rss_gb']:.2f} GB (bar 3.0 GB)")
        print(f"final latents: max |lib - torch| / max |torch| = {dl:.2e}; images differ by at most {di}/255 (bar 3)")
    if "lib-bf16" in results:
        b = results["lib-bf16"]
        print(f"\nbf16: peak RSS {b['peak_rss_gb']:.2f} GB (bar 2.5 GB), s/step {np.median(b['steps']):.2f}")
        if "lib" in results:
            f = results["lib"]
            mse = np.mean((b["images"].astype(np.float64) - f["images"].astype(np.float64)) ** 2)
            psnr = float("inf") if mse == 0 else 10 * np.log10(255.0 ** 2 / mse)
            print(f"bf16 vs f32: s/step {np.median(b['steps']) / np.median(f['steps']):.2f}x; image PSNR {psnr:.1f} dB "
                  f"(bar 30 dB)")


if __name__ == "__main__":
    main()
