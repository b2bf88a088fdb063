import os
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
# Test the package in this source tree (bindings/python), and make helpers importable.
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

import diffusion  # noqa: E402
import helpers  # noqa: E402


def pytest_report_header(config):
    try:
        lib = diffusion.library_path()
    except Exception as e:  # reported properly by pytest_sessionstart
        lib = f"NOT FOUND ({type(e).__name__})"
    return [f"diffusion package: {Path(diffusion.__file__).parent}", f"libdiffusion: {lib}",
            f"fixtures: {helpers.fixtures_dir()}"]


def pytest_sessionstart(session):
    # Missing prerequisites fail the run loudly; nothing is skipped silently.
    try:
        diffusion.library_path()
    except OSError as e:
        pytest.exit(f"libdiffusion not found; set DIFFUSION_LIBRARY to the built library.\n{e}", returncode=1)
    if not helpers.unet_cases() or not helpers.sampling_cases():
        pytest.exit(
            f"reference fixtures not found under {helpers.fixtures_dir()} (set DIFFUSION_FIXTURES to Tests/Fixtures)",
            returncode=1,
        )
    try:
        for name in helpers.SD_PIPELINES:
            helpers.sd_pipeline(name)
    except FileNotFoundError as e:
        pytest.exit(f"Stable Diffusion fixtures missing: {e}", returncode=1)


@pytest.fixture(scope="session")
def plain_dir():
    return helpers.unet_dir("plain")


@pytest.fixture(scope="session")
def class_dir():
    return helpers.unet_dir("class_cond")


@pytest.fixture
def plain(plain_dir):
    with diffusion.load(plain_dir) as m:
        yield m


@pytest.fixture
def class_model(class_dir):
    with diffusion.load(class_dir) as m:
        yield m
