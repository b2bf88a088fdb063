"""Test helpers: a minimal safetensors reader/writer and the fixture locations."""

from __future__ import annotations

import json
import os
import struct
from pathlib import Path

import numpy as np

_DTYPES = {"F32": np.float32, "F16": np.float16, "F64": np.float64, "I64": np.int64, "I32": np.int32,
           "U8": np.uint8, "BF16": np.uint16}


def read_safetensors_raw(path):
    """(header dict without __metadata__, data bytes) of a safetensors file."""
    blob = Path(path).read_bytes()
    (n,) = struct.unpack("<Q", blob[:8])
    header = json.loads(blob[8 : 8 + n])
    header.pop("__metadata__", None)
    return header, blob[8 + n :]


def read_safetensors(path) -> dict:
    """{name: ndarray} (little-endian; BF16 comes back as its raw uint16 bits)."""
    header, data = read_safetensors_raw(path)
    out = {}
    for name, info in header.items():
        lo, hi = info["data_offsets"]
        dtype = np.dtype(_DTYPES[info["dtype"]]).newbyteorder("<")
        out[name] = np.frombuffer(data[lo:hi], dtype=dtype).reshape(info["shape"]).copy()
    return out


def write_safetensors_raw(path, tensors: dict) -> None:
    """Writes {name: (dtype string, shape, raw bytes)}."""
    header, chunks, offset = {}, [], 0
    for name, (dtype, shape, raw) in tensors.items():
        header[name] = {"dtype": dtype, "shape": list(shape), "data_offsets": [offset, offset + len(raw)]}
        chunks.append(raw)
        offset += len(raw)
    text = json.dumps(header).encode()
    text += b" " * (-len(text) % 8)
    Path(path).write_bytes(struct.pack("<Q", len(text)) + text + b"".join(chunks))


def repo_root() -> Path | None:
    for d in Path(__file__).resolve().parents:
        if (d / "Tests" / "Fixtures").is_dir():
            return d
    return None


def fixtures_dir() -> Path | None:
    env = os.environ.get("DIFFUSION_FIXTURES")
    if env:
        return Path(env)
    root = repo_root()
    return root / "Tests" / "Fixtures" if root else None


def header_path() -> Path | None:
    root = repo_root()
    p = root / "include" / "diffusion.h" if root else None
    return p if p and p.is_file() else None


def unet_cases() -> list[str]:
    d = fixtures_dir()
    if not d or not (d / "unet").is_dir():
        return []
    return sorted(p.name for p in (d / "unet").iterdir() if (p / "io.safetensors").is_file())


def sampling_cases() -> list[str]:
    d = fixtures_dir()
    if not d or not (d / "sampling").is_dir():
        return []
    return sorted(p.name for p in (d / "sampling").iterdir() if (p / "run.json").is_file())


def unet_dir(case: str) -> Path:
    return fixtures_dir() / "unet" / case


def sampling_run(case: str):
    """(run dict, model folder, expected tensors) of a sampling fixture."""
    d = fixtures_dir() / "sampling" / case
    run = json.loads((d / "run.json").read_text())
    model = (d / run["model"]).resolve()
    return run, model, read_safetensors(d / "expected.safetensors")


def sampler_kwargs(run: dict) -> dict:
    """Model.sampler(...) keyword arguments for a sampling fixture's run.json."""
    kw = dict(
        scheduler=run["scheduler"],
        steps=run["steps"],
        seed=run["seed"],
        batch=run["batch"],
        height=run["height"],
        width=run["width"],
        scheduler_config=run.get("scheduler_config") or None,
    )
    if run.get("eta") is not None:
        kw["eta"] = run["eta"]
    if run.get("class_labels") is not None:
        kw["class_label"] = run["class_labels"]
    if run.get("guidance_scale") is not None:
        kw["guidance_scale"] = run["guidance_scale"]
    return kw


def sampler_cases() -> list[str]:
    """The toy-denoiser sampler traces Tests/Fixtures/samplers/<case>.json (+ .safetensors)."""
    d = fixtures_dir()
    if not d or not (d / "samplers").is_dir():
        return []
    return sorted(p.stem for p in (d / "samplers").glob("*.json") if p.with_suffix(".safetensors").is_file())


def sampler_case(case: str):
    """(meta dict, tensors) of a sampler trace (see tools/README.md, make_sampler_fixtures.py)."""
    d = fixtures_dir() / "samplers"
    return json.loads((d / f"{case}.json").read_text()), read_safetensors(d / f"{case}.safetensors")


def train_alphas_cumprod(n: int = 1000, beta_start: float = 1e-4, beta_end: float = 0.02) -> np.ndarray:
    """ᾱ_t of diffusers' default linear beta schedule, in float64."""
    return np.cumprod(1.0 - np.linspace(beta_start, beta_end, n, dtype=np.float64))


def assert_parallel_runs_match(make_sampler, settings) -> None:
    """Runs one sampler per settings dict alone, then all at once on their own threads: every final
    sample must be bit-identical (samplers share nothing but the model)."""
    import threading

    alone = []
    for kw in settings:
        with make_sampler(**kw) as s:
            alone.append(s.run())
    together = [None] * len(settings)

    def work(i):
        with make_sampler(**settings[i]) as s:
            together[i] = s.run()

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(settings))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for a, b in zip(alone, together):
        assert b is not None and np.array_equal(a, b)


# ---- Stable Diffusion fixtures (Tests/Fixtures/sd, see its README.md) ---------------------

SD_PIPELINES = ("sd1", "sd2", "sd1_inpaint", "sd1_legacy")
# Every end-to-end run the fixture README lists, as <pipeline>/<case>: listed here, not globbed, so
# that a missing fixture fails its test instead of silently running nothing.
SD_RUNS = (
    "sd1/txt2img_pndm",
    "sd1/txt2img_ddim_g1",
    "sd1/txt2img_euler_a_negative",
    "sd1/txt2img_dpmpp_2m_batch4",
    "sd1/img2img_ddim",
    "sd1/img2img_euler",
    "sd1/inpaint_4ch_ddim",
    "sd2/txt2img_ddim_vpred",
    "sd2/txt2img_dpmpp_2m_rescale",
    "sd1_inpaint/inpaint_9ch_ddim",
    "sd1_legacy/txt2img_pndm",
)


def sd_dir() -> Path:
    d = fixtures_dir()
    if d is None or not (d / "sd").is_dir():
        raise FileNotFoundError(f"Stable Diffusion fixtures not found: {d and d / 'sd'} (set DIFFUSION_FIXTURES)")
    return d / "sd"


def sd_pipeline(name: str) -> Path:
    d = sd_dir() / name
    if not (d / "model_index.json").is_file():
        raise FileNotFoundError(f"{d}/model_index.json not found")
    return d


def sd_refs(name: str, what: str) -> dict:
    """{name: ndarray} of Tests/Fixtures/sd/refs/<name>/<what>.safetensors (text, unet, vae)."""
    return read_safetensors(sd_dir() / "refs" / name / f"{what}.safetensors")


def sd_text_json(name: str) -> dict:
    return json.loads((sd_dir() / "refs" / name / "text.json").read_text())


def sd_scaling_factor(name: str) -> float:
    """The VAE's scaling_factor (diffusers' default 0.18215 when the config has none)."""
    return float(json.loads((sd_pipeline(name) / "vae" / "config.json").read_text()).get("scaling_factor", 0.18215))


def sd_run(case: str):
    """(run dict, pipeline folder, tensors) of refs/<pipeline>/runs/<case>."""
    pipeline, name = case.split("/")
    d = sd_dir() / "refs" / pipeline / "runs"
    run = json.loads((d / f"{name}.json").read_text())
    return run, (d / run["pipeline"]).resolve(), read_safetensors(d / f"{name}.safetensors")


def sd_sampler_kwargs(run: dict, tensors: dict) -> dict:
    """Model.sampler(...) keyword arguments for a run: what the diffusers call was given."""
    kw = dict(prompt=run["prompt"], steps=run["steps"], seed=run["seed"], height=run["height"], width=run["width"],
              guidance_scale=run["guidance_scale"], batch=run["num_images_per_prompt"])
    if run["scheduler_source"] != "the pipeline's own scheduler as loaded":
        kw["scheduler"] = run["scheduler"]  # Cls.from_config(pipe.scheduler.config)
    if run.get("negative_prompt") is not None:
        kw["negative_prompt"] = run["negative_prompt"]
    if run.get("guidance_rescale"):
        kw["guidance_rescale"] = run["guidance_rescale"]
    if run.get("eta"):
        kw["eta"] = run["eta"]
    if run.get("init_image"):
        kw["init_image"] = tensors[run["init_image"]]
    if run.get("mask"):
        kw["mask"] = tensors[run["mask"]]  # strength: the inpaint default (1.0)
    elif run.get("strength") is not None:
        kw["strength"] = run["strength"]
    return kw


def max_rel_err(got, want) -> float:
    """max |got - want| / max |want| (NaN anywhere counts as infinitely wrong)."""
    got, want = np.asarray(got, dtype=np.float64), np.asarray(want, dtype=np.float64)
    assert got.shape == want.shape, (got.shape, want.shape)
    err = np.abs(got - want).max() / max(np.abs(want).max(), 1e-30)
    return float("inf") if not np.isfinite(err) else float(err)
