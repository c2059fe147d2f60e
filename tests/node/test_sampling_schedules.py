"""The sigmas each sampler samples at equal ComfyUI's KSampler's for the sampler + scheduler pair it claims.

ComfyUI's own ``comfy.samplers.calculate_sigmas`` runs in a fresh interpreter from the installed ComfyUI
(``comfy_sigmas_probe.py``), so what is compared is the schedule the server samples, not a transcription of it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from sketch_rag.cli.comfyui_install import install_comfyui
from sketch_rag.rendering.architectures import SD15_CONFIG_DIR
from sketch_rag.rendering.schedulers import (
    DISCARD_PENULTIMATE,
    FINAL_SIGMA,
    SAMPLERS,
    make_scheduler,
    model_sigmas,
)

REPO = Path(__file__).resolve().parents[2]
PROBE = Path(__file__).with_name("comfy_sigmas_probe.py")
STEPS = (4, 8, 20, 30)
CLAIMED = {name: spec.comfy for name, spec in SAMPLERS.items() if spec.comfy is not None}


@pytest.fixture(scope="module")
def comfy() -> Any:
    comfy_dir = install_comfyui(REPO / ".comfyui", requirements=False)
    args = {"pairs": sorted(set(CLAIMED.values())), "steps": list(STEPS)}
    ours = [os.path.abspath(p) for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    done = subprocess.run(
        [sys.executable, str(PROBE), json.dumps(args)],
        cwd=comfy_dir,
        env={**os.environ, "PYTHONPATH": os.pathsep.join([str(comfy_dir), *ours])},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def sampled_sigmas(scheduler: Any) -> np.ndarray:
    """The sigmas a set-up scheduler steps through, final 0 included, whatever the class keeps."""
    if not hasattr(scheduler, "sigmas"):  # LCM: whole timesteps of the model's schedule
        table = model_sigmas(scheduler.alphas_cumprod)
        return np.concatenate([table[scheduler.timesteps.numpy()], [0.0]])
    sigmas = scheduler.sigmas.double().numpy()
    if type(scheduler).__name__ == "DPMSolverSDEScheduler":  # each sigma but the first and last twice (midpoints)
        return np.concatenate([sigmas[0:-1:2], sigmas[-1:]])
    return sigmas


def test_every_sampler_but_tcd_claims_a_comfyui_pair() -> None:
    assert set(SAMPLERS) - set(CLAIMED) == {"tcd"}
    assert CLAIMED["dpmpp_2m_karras"] == ("dpmpp_2m", "karras") and CLAIMED["ddim"] == ("ddim", "normal")


def test_the_penultimate_rule_is_comfyuis_for_our_samplers(comfy: Any) -> None:
    ours = {sampler for sampler, _ in CLAIMED.values()}
    assert set(comfy["discard_penultimate"]) & ours == DISCARD_PENULTIMATE


@pytest.mark.parametrize("steps", STEPS)
@pytest.mark.parametrize("name", sorted(CLAIMED))
def test_the_sigmas_equal_comfyuis_ksampler(comfy: Any, name: str, steps: int) -> None:
    shipped = json.loads((SD15_CONFIG_DIR / "scheduler" / "scheduler_config.json").read_text())
    assert shipped["timestep_spacing"] == "leading"  # what the schedule must not follow
    scheduler = make_scheduler(name, shipped, seed=0)
    scheduler.set_timesteps(steps, device=torch.device("cpu"))
    sampler, schedule = CLAIMED[name]
    expected = np.asarray(comfy["sigmas"][f"{sampler}/{schedule}/{steps}"])
    if sampler in FINAL_SIGMA:  # the sampler's own last sigma (ComfyUI's sample_unipc: 0.001 for a final 0)
        assert expected[-1] == 0.0
        expected[-1] = FINAL_SIGMA[sampler]
    ours = sampled_sigmas(scheduler)
    assert ours.shape == expected.shape == (steps + 1,)
    np.testing.assert_allclose(ours, expected, rtol=0, atol=1e-4)
