"""The samplers users know from ComfyUI, as diffusers scheduler classes built from the checkpoint's own config.

ComfyUI picks a sampler (``euler``, ``dpmpp_2m``, ...) and a sigma schedule (``normal``, ``karras``) separately;
diffusers folds both into one scheduler class + options. The names here are ComfyUI's sampler names, with
``_karras`` appended where the Karras schedule is part of the choice (ComfyUI's "dpmpp_2m" + "karras"), so a
ComfyUI user recognises each entry. Each entry samples at the sigmas ComfyUI's KSampler uses for its pair
(:func:`comfy_sigmas`), not at the timestep spacing the checkpoint's scheduler config names: SD1.5's shipped
"leading" spacing starts at sigma ~11 at 20 steps where ComfyUI starts at the model's sigma_max (~14.6).
Nothing here imports diffusers until a scheduler is built.
"""

from __future__ import annotations

import functools
import importlib.util
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..errors import InvalidParameterError

DEFAULT_SAMPLER = "uni_pc"  # ComfyUI's uni_pc on its normal schedule: a good 20-step sampler for SD1.5

DISCARD_PENULTIMATE = frozenset({"uni_pc"})
"""ComfyUI samplers whose KSampler computes one sigma more and drops the penultimate one (``comfy.samplers.KSampler``
``.DISCARD_PENULTIMATE_SIGMA_SAMPLERS``): uni_pc at 20 steps samples the 21-step schedule without its last sigma."""

FINAL_SIGMA = {"uni_pc": 0.001}
"""ComfyUI samplers that end above 0: ComfyUI's ``sample_unipc`` (``comfy/extra_samplers/uni_pc.py``) steps to
sigma 0.001 where the schedule ends at 0, as its bh1 update needs a finite log-SNR (diffusers' bh1 gives NaN at 0)."""

# The keys of a scheduler config that describe the model's noise schedule, not one sampler's algorithm.
# A fresh scheduler is built from these only: after a run with UniPC the pipeline holds UniPC's config, whose
# own keys (solver_type "bh2", ...) must not leak into, say, DPM-Solver's.
MODEL_SCHEDULE_KEYS = (
    "num_train_timesteps",
    "beta_start",
    "beta_end",
    "beta_schedule",
    "trained_betas",
    "prediction_type",
    "timestep_spacing",
    "steps_offset",
    "set_alpha_to_one",
    "rescale_betas_zero_snr",
)


@dataclass(frozen=True)
class SamplerSpec:
    """One selectable sampler: the diffusers class, its options, and what the pipeline call needs for it.

    ``comfy``: the ComfyUI sampler and scheduler this entry samples as; its sigmas are ComfyUI's
    (:func:`comfy_sigmas`) whatever spacing the checkpoint's config names. None: the class's own schedule.
    ``eta`` goes to the pipeline call (only schedulers whose ``step`` takes it use it: TCD's gamma).
    ``max_steps``: distilled samplers (LCM, TCD) are made for few steps out of ``original_inference_steps`` (50).
    ``needs``: a package the class imports lazily (DPM++ SDE's Brownian tree is torchsde's).
    """

    class_name: str
    options: Mapping[str, Any] = field(default_factory=dict)
    comfy: tuple[str, str] | None = None
    eta: float = 0.0
    max_steps: int | None = None
    needs: str | None = None
    seeds_noise_sampler: bool = False  # True: the request's seed seeds the scheduler's own noise (SDE samplers)


DISTILLED_MAX_STEPS = 50  # LCMScheduler/TCDScheduler default original_inference_steps

SAMPLERS: dict[str, SamplerSpec] = {
    "euler": SamplerSpec("EulerDiscreteScheduler", comfy=("euler", "normal")),
    "euler_ancestral": SamplerSpec("EulerAncestralDiscreteScheduler", comfy=("euler_ancestral", "normal")),
    # ComfyUI's dpmpp_2m stays second order up to the last step, which goes straight to the denoised image.
    "dpmpp_2m": SamplerSpec(
        "DPMSolverMultistepScheduler",
        {"algorithm_type": "dpmsolver++", "solver_order": 2, "lower_order_final": False},
        comfy=("dpmpp_2m", "normal"),
    ),
    "dpmpp_2m_karras": SamplerSpec(
        "DPMSolverMultistepScheduler",
        {"algorithm_type": "dpmsolver++", "solver_order": 2, "lower_order_final": False},
        comfy=("dpmpp_2m", "karras"),
    ),
    "dpmpp_sde_karras": SamplerSpec(
        "DPMSolverSDEScheduler",
        {"use_karras_sigmas": True},
        comfy=("dpmpp_sde", "karras"),
        needs="torchsde",
        seeds_noise_sampler=True,
    ),
    # ComfyUI's ddim sampler is its euler sampler (comfy.samplers.sampler_object): deterministic DDIM is the
    # Euler step in sigma space, and diffusers' DDIMScheduler can only step between whole timesteps, which the
    # normal schedule falls between. So ddim renders exactly as euler, as it does in ComfyUI.
    "ddim": SamplerSpec("EulerDiscreteScheduler", comfy=("ddim", "normal")),
    # ComfyUI's uni_pc: the bh1 variant, up to third order.
    "uni_pc": SamplerSpec(
        "UniPCMultistepScheduler", {"solver_type": "bh1", "solver_order": 3}, comfy=("uni_pc", "normal")
    ),
    # LCM steps between whole timesteps; ComfyUI's "simple" schedule is whole timesteps (its "normal" is not).
    "lcm": SamplerSpec("LCMScheduler", comfy=("lcm", "simple"), max_steps=DISTILLED_MAX_STEPS),
    # gamma (diffusers' eta) 0.3 is TCD's recommended stochasticity; the pipeline's default eta 0 would remove it.
    "tcd": SamplerSpec("TCDScheduler", eta=0.3, max_steps=DISTILLED_MAX_STEPS),
}
SAMPLER_NAMES = tuple(SAMPLERS)


def check_sampler(name: object, steps: int) -> SamplerSpec:
    """The spec for sampler ``name``, refusing what could only fail inside sampling.

    Raises:
        InvalidParameterError: an unknown name, a sampler whose package is missing, or too many steps for a
            distilled sampler.
    """
    spec = SAMPLERS.get(name) if isinstance(name, str) else None
    if spec is None:
        raise InvalidParameterError(f"sampler is {name!r}; pick one of {', '.join(SAMPLER_NAMES)}.")
    if spec.needs is not None and importlib.util.find_spec(spec.needs) is None:
        raise InvalidParameterError(
            f"sampler {name!r} needs the {spec.needs} package, which is not installed; "
            f"`pip install {spec.needs}` (ComfyUI ships it) or pick another sampler."
        )
    if spec.max_steps is not None and steps > spec.max_steps:
        raise InvalidParameterError(
            f"num_inference_steps is {steps}; sampler {name!r} takes at most {spec.max_steps} (it is made for "
            "4-8 steps with an LCM/TCD LoRA or checkpoint). Lower the steps or pick another sampler."
        )
    return spec


def make_scheduler(name: str, config: Mapping[str, Any], seed: int) -> Any:
    """A fresh diffusers scheduler for sampler ``name`` on the noise schedule of ``config``.

    ``config`` is any scheduler config of the checkpoint (the shipped SD1.5 one, or whatever scheduler ran
    last): only its model-schedule keys are used. ``seed`` seeds the noise an SDE sampler draws itself; the
    others take their noise from the pipeline's generator. Its ``set_timesteps(steps)`` gives ComfyUI's
    sigmas for the sampler's ComfyUI pair (see :func:`comfy_sigmas`).
    """
    import diffusers

    spec = SAMPLERS[name]
    base = {key: config[key] for key in MODEL_SCHEDULE_KEYS if key in config}
    options: dict[str, Any] = {**base, **spec.options}
    if spec.seeds_noise_sampler:
        options["noise_sampler_seed"] = seed
    scheduler = getattr(diffusers, spec.class_name).from_config(options)
    if spec.needs == "torchsde":
        scheduler.step = _quiet_brownian_tree(scheduler.step)
    if spec.comfy is not None:
        scheduler.set_timesteps = _comfy_timesteps(scheduler, spec.comfy)
    return scheduler


def model_sigmas(alphas_cumprod: Any) -> np.ndarray:
    """The model's sigma at each training timestep (``sqrt((1 - ᾱ) / ᾱ)``), as ComfyUI keeps them: float32."""
    cumprod = np.asarray(alphas_cumprod, dtype=np.float64)
    return np.asarray(((1 - cumprod) / cumprod) ** 0.5, dtype=np.float32)


def comfy_sigmas(sampler: str, schedule: str, steps: int, sigmas: np.ndarray) -> np.ndarray:
    """The sigmas ComfyUI's KSampler samples ``steps`` steps at, for a ComfyUI sampler + scheduler pair.

    ``sigmas`` is :func:`model_sigmas`. The schedules follow ``comfy.samplers`` (``normal_scheduler``,
    ``simple_scheduler``, k-diffusion's ``get_sigmas_karras``), and the KSampler's rule of dropping the penultimate
    sigma of some samplers; ``steps + 1`` values, the last one 0.

    Raises:
        ValueError: a schedule this function does not know.
    """
    if sampler in DISCARD_PENULTIMATE:
        longer = comfy_sigmas("", schedule, steps + 1, sigmas)
        return np.concatenate([longer[:-2], longer[-1:]])
    log_sigmas = np.log(sigmas.astype(np.float64))
    if schedule == "normal":
        # The timesteps of sigma_max and sigma_min (the table's ends), evenly spaced; sigma(t) interpolates log-sigma.
        timesteps = np.linspace(len(sigmas) - 1, 0, steps)
        low, high = np.floor(timesteps).astype(int), np.ceil(timesteps).astype(int)
        frac = timesteps - low
        values = np.exp((1 - frac) * log_sigmas[low] + frac * log_sigmas[high])
    elif schedule == "karras":
        rho = 7.0
        ramp = np.linspace(0, 1, steps)
        min_inv, max_inv = float(sigmas[0]) ** (1 / rho), float(sigmas[-1]) ** (1 / rho)
        values = (max_inv + ramp * (min_inv - max_inv)) ** rho
    elif schedule == "simple":
        stride = len(sigmas) / steps
        values = np.array([sigmas[-(1 + int(x * stride))] for x in range(steps)], dtype=np.float64)
    else:
        raise ValueError(f"schedule {schedule!r}; known: normal, karras, simple")
    return np.concatenate([values, [0.0]])


def sigma_timesteps(values: np.ndarray, sigmas: np.ndarray) -> np.ndarray:
    """The (fractional) training timestep of each sigma in ``values``: log-sigma interpolated, as diffusers does."""
    log_sigmas = np.log(sigmas.astype(np.float64))
    return np.interp(np.log(values), log_sigmas, np.arange(len(sigmas), dtype=np.float64))


def _comfy_timesteps(scheduler: Any, pair: tuple[str, str]) -> Callable[..., Any]:
    """``scheduler.set_timesteps`` that lays ComfyUI's sigmas for ``pair`` over the class's own schedule.

    The class's own ``set_timesteps(steps)`` runs first, so everything it resets for a run is reset; then its
    sigmas and timesteps are replaced. The config's timestep spacing stays as shipped ("leading") because it
    also sets ``init_noise_sigma``: sqrt(sigma_max² + 1) for Euler-type classes, ComfyUI's starting noise at full
    denoise. Most classes step from ``sigmas[i]`` to ``sigmas[i + 1]`` and give the UNet ``timesteps[i]``; DPM++
    SDE keeps each inner sigma twice with a midpoint timestep between (as its own ``set_timesteps`` lays them
    out); LCM, which has no sigmas, steps between whole timesteps of its ``alphas_cumprod`` (ComfyUI's simple
    schedule lies on them). Custom ``timesteps=``/``sigmas=`` pass through.
    """
    import torch

    set_timesteps = scheduler.set_timesteps
    table = model_sigmas(scheduler.alphas_cumprod)

    @functools.wraps(set_timesteps)  # keeps the signature the pipelines inspect
    def set_comfy_timesteps(num_inference_steps: int | None = None, device: Any = None, **custom: Any) -> None:
        if custom or num_inference_steps is None:
            set_timesteps(num_inference_steps, device, **custom)
            return
        set_timesteps(num_inference_steps, device)
        sigmas = comfy_sigmas(*pair, num_inference_steps, table)
        sigmas[-1] = FINAL_SIGMA.get(pair[0], sigmas[-1])
        timesteps = sigma_timesteps(sigmas[:-1], table)
        if hasattr(scheduler, "_second_order_timesteps"):  # DPMSolverSDEScheduler
            inner = torch.from_numpy(sigmas.astype(np.float32))
            scheduler.sigmas = torch.cat([inner[:1], inner[1:-1].repeat_interleave(2), inner[-1:]])
            steps = torch.from_numpy(timesteps)
            steps = torch.cat([steps[:1], steps[1:].repeat_interleave(2)])
            steps[1::2] = torch.from_numpy(scheduler._second_order_timesteps(sigmas[:-1], np.log(table)))
            scheduler.timesteps = steps.to(device)
        elif hasattr(scheduler, "sigmas"):
            scheduler.sigmas = torch.from_numpy(sigmas.astype(np.float32))
            scheduler.timesteps = torch.from_numpy(timesteps.astype(np.float32)).to(device)
        else:
            scheduler.timesteps = torch.from_numpy(np.rint(timesteps).astype(np.int64)).to(device)

    return set_comfy_timesteps


def _quiet_brownian_tree(step: Callable[..., Any]) -> Callable[..., Any]:
    """``step`` without torchsde's float-rounding complaint; every other warning passes.

    diffusers hands the Brownian tree its end time as a Python float and later queries it at the float32 sigma,
    which can lie 1e-7 beyond it; torchsde then warns "Should have tb<=t1" and clamps, which is exactly right.
    """

    @functools.wraps(step)  # keeps the signature the pipeline inspects for ``generator``/``eta``
    def quiet_step(*args: Any, **kwargs: Any) -> Any:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=r"Should have t[ab][<>]=t[01]", category=UserWarning)
            return step(*args, **kwargs)

    return quiet_step
