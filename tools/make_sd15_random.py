"""An SD1.5-shaped Stable Diffusion pipeline with random weights stored F16, for benchmarks.

Writes a diffusers pipeline folder (about 2 GB) with the shapes of runwayml/stable-diffusion-v1-5:
UNet2DConditionModel (860 M parameters, cross-attention 768), AutoencoderKL (128/256/512/512,
2 layers per block), CLIPTextModel (ViT-L/14 text tower: 12 layers, width 768, quick_gelu), the
real CLIP tokenizer vocabulary (tools/clip_vocab.py) and SD1.5's PNDM scheduler config. Weights are
PyTorch's default initialisation under torch.manual_seed(0), stored as F16 (the layout people
download as the fp16 variant). Nothing here is a trained model: images are noise.

Usage:  /work/venv/bin/python tools/make_sd15_random.py [--out bench/.models/sd15-random]
Needs torch, diffusers, transformers, safetensors (the tools venv).
"""
import argparse
import json
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from clip_vocab import write_clip_vocab  # noqa: E402


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "..", "bench", ".models", "sd15-random"))
    args = ap.parse_args()
    out = os.path.abspath(args.out)
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(0)
    os.makedirs(out, exist_ok=True)
    unet = UNet2DConditionModel(sample_size=64, cross_attention_dim=768, attention_head_dim=8)
    unet.half().save_pretrained(os.path.join(out, "unet"), safe_serialization=True)
    del unet
    vae = AutoencoderKL(in_channels=3, out_channels=3, latent_channels=4, sample_size=512, layers_per_block=2,
                        block_out_channels=(128, 256, 512, 512),
                        down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4)
    vae.half().save_pretrained(os.path.join(out, "vae"), safe_serialization=True)
    del vae
    text = CLIPTextModel(CLIPTextConfig(vocab_size=49408, hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
                                        num_attention_heads=12, max_position_embeddings=77, hidden_act="quick_gelu",
                                        projection_dim=768))
    text.half().save_pretrained(os.path.join(out, "text_encoder"), safe_serialization=True)
    del text
    tok = os.path.join(out, "tokenizer")
    write_clip_vocab(tok)
    special = {"bos_token": "<|startoftext|>", "eos_token": "<|endoftext|>", "unk_token": "<|endoftext|>",
               "pad_token": "<|endoftext|>"}
    with open(os.path.join(tok, "special_tokens_map.json"), "w") as f:
        json.dump(special, f, indent=2)
    with open(os.path.join(tok, "tokenizer_config.json"), "w") as f:
        json.dump(dict(special, model_max_length=77, do_lower_case=True, errors="replace",
                       tokenizer_class="CLIPTokenizer"), f, indent=2)
    os.makedirs(os.path.join(out, "scheduler"), exist_ok=True)
    with open(os.path.join(out, "scheduler", "scheduler_config.json"), "w") as f:
        json.dump({"_class_name": "PNDMScheduler", "_diffusers_version": "0.6.0", "beta_end": 0.012,
                   "beta_schedule": "scaled_linear", "beta_start": 0.00085, "num_train_timesteps": 1000,
                   "set_alpha_to_one": False, "skip_prk_steps": True, "steps_offset": 1, "trained_betas": None,
                   "clip_sample": False}, f, indent=2)
    with open(os.path.join(out, "model_index.json"), "w") as f:
        json.dump({"_class_name": "StableDiffusionPipeline", "_diffusers_version": "0.42.1",
                   "feature_extractor": [None, None], "safety_checker": [None, None], "requires_safety_checker": False,
                   "scheduler": ["diffusers", "PNDMScheduler"], "text_encoder": ["transformers", "CLIPTextModel"],
                   "tokenizer": ["transformers", "CLIPTokenizer"], "unet": ["diffusers", "UNet2DConditionModel"],
                   "vae": ["diffusers", "AutoencoderKL"]}, f, indent=2)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
