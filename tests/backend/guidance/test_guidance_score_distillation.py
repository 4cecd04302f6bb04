"""SDS / CSD / VSD / BSD / DSD on the tiny Stable Diffusion: gradients, the identities between objectives,
the LoRA variational copy's training, view-dependent prompts and timestep annealing."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from dreampolish.backend.guidance.base import GuidanceInput
from dreampolish.backend.guidance.lora import LoraConfig, camera_features, frozen_unet
from dreampolish.backend.guidance.score_distillation import (
    OBJECTIVES,
    BootstrapConfig,
    ScoreDistillation,
    ScoreDistillationConfig,
    TimestepSchedule,
    add_noise,
    clean_gradient,
    encode_render,
    reparameterised_loss,
    timestep_weight,
)
from dreampolish.backend.guidance.text_prior import (
    VIEW_DIRECTIONS,
    ViewPromptConfig,
    encode_prompts,
    view_directions,
)
from dreampolish.backend.schedules import Ramp

SIZE = 32


def fast_config(objective: str, **kw) -> ScoreDistillationConfig:
    return ScoreDistillationConfig(
        objective=objective,
        lora=LoraConfig(train_steps=1),
        bootstrap=BootstrapConfig(interval=1, train_steps=1),
        **kw,
    )


def make_guidance(priors, config: ScoreDistillationConfig) -> ScoreDistillation:
    models = priors.text_to_image
    return ScoreDistillation(models, encode_prompts(models, "a red teapot", ""), config)


def render_batch(orbit, seed: int = 0, step: int = 0, total: int = 10) -> GuidanceInput:
    g = torch.Generator().manual_seed(seed)
    rgb = torch.rand(2, SIZE, SIZE, 3, generator=g).requires_grad_(True)
    return GuidanceInput(
        rgb=rgb,
        opacity=torch.ones(2, SIZE, SIZE, 1),
        cameras=orbit([10.0, 30.0], [0.0, 120.0], size=SIZE),
        step=step,
        total_steps=total,
    )


def randomise_adapter(copy, seed: int) -> None:
    """Give a variational copy the same non-trivial weights in two objects (it starts equal to the frozen UNet)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in copy.parameters():
            p.copy_(0.05 * torch.randn(p.shape, generator=g))


@pytest.mark.parametrize("objective", OBJECTIVES)
def test_every_objective_gives_a_finite_loss_whose_gradient_reaches_the_render(tiny_priors, orbit, objective):
    guidance = make_guidance(tiny_priors, fast_config(objective))
    inp = render_batch(orbit)
    out = guidance(inp)
    assert out.loss.ndim == 0 and torch.isfinite(out.loss)
    out.loss.backward()
    assert inp.rgb.grad is not None
    assert torch.isfinite(inp.rgb.grad).all() and inp.rgb.grad.abs().sum() > 0
    assert out.diagnostics["grad_norm"] > 0 and 0.0 <= out.diagnostics["t"] <= 1.0


def test_sds_with_cfg_scale_one_is_the_plain_noise_residual(tiny_priors, orbit):
    guidance = make_guidance(tiny_priors, fast_config("sds", guidance_scale=1.0))
    models = tiny_priors.text_to_image
    g = torch.Generator().manual_seed(3)
    latents = torch.randn(2, 4, 16, 16, generator=g)
    noise = torch.randn(2, 4, 16, 16, generator=g)
    t = torch.tensor([150, 700])
    cams = orbit([0.0, 0.0], [0.0, 180.0])
    cond, uncond = guidance.prompts.for_cameras(cams)
    grad, _ = guidance.latent_gradient(latents, t, noise, cond, uncond, None)
    with torch.no_grad():
        eps = models.unet(add_noise(models.scheduler, latents, noise, t), t, encoder_hidden_states=cond).sample
    expected = timestep_weight(models.scheduler, t, "sds") * (eps - noise)
    torch.testing.assert_close(grad, expected, rtol=1e-4, atol=1e-5)
    # The reparameterised loss hands exactly g / B to the latents.
    x = latents.clone().requires_grad_(True)
    reparameterised_loss(x, grad).backward()
    torch.testing.assert_close(x.grad, grad / 2)


def test_dsd_without_the_variational_term_is_csd(tiny_priors, fresh_priors, orbit):


    csd = make_guidance(tiny_priors, fast_config("csd", lambda_cfg=Ramp(4.0)))
    other = fresh_priors()
    dsd = make_guidance(other, fast_config("dsd", lambda_cfg=Ramp(4.0), lambda_var=Ramp(0.0)))
    randomise_adapter(dsd.variational, seed=1)
    a, b = render_batch(orbit), render_batch(orbit)
    out_csd, out_dsd = csd(a), dsd(b)
    out_csd.loss.backward()
    out_dsd.loss.backward()
    torch.testing.assert_close(out_dsd.loss, out_csd.loss, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(b.rgb.grad, a.rgb.grad, rtol=1e-5, atol=1e-7)


def test_dsd_with_cfg_weight_s_minus_one_and_unit_variational_weight_is_vsd(tiny_priors, fresh_priors, orbit):


    s = 7.5
    vsd = make_guidance(tiny_priors, fast_config("vsd", guidance_scale=s))
    other = fresh_priors()
    dsd = make_guidance(other, fast_config("dsd", lambda_cfg=Ramp(s - 1), lambda_var=Ramp(1.0)))
    randomise_adapter(vsd.variational, seed=2)
    randomise_adapter(dsd.variational, seed=2)
    a, b = render_batch(orbit), render_batch(orbit)
    out_vsd, out_dsd = vsd(a), dsd(b)
    out_vsd.loss.backward()
    out_dsd.loss.backward()
    torch.testing.assert_close(out_dsd.loss, out_vsd.loss, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(b.rgb.grad, a.rgb.grad, rtol=1e-4, atol=1e-7)
    # ... and the variational term is really there: VSD differs from CSD with the same CFG weight.
    third = fresh_priors()
    csd = make_guidance(third, fast_config("csd", lambda_cfg=Ramp(s - 1)))
    c = render_batch(orbit)
    out_csd = csd(c)
    assert not torch.allclose(out_csd.loss, out_vsd.loss, rtol=1e-3)


def test_lora_step_changes_the_adapter_and_leaves_the_frozen_unet_alone(tiny_priors, orbit):
    guidance = make_guidance(tiny_priors, fast_config("vsd"))
    unet = tiny_priors.text_to_image.unet
    copy = guidance.variational
    adapter_ids = {id(p) for p in copy.lora_parameters}
    frozen_before = {n: p.detach().clone() for n, p in unet.named_parameters() if id(p) not in adapter_ids}
    adapter_before = [p.detach().clone() for p in copy.parameters()]
    out = guidance(render_batch(orbit))
    out.loss.backward()
    assert out.diagnostics["lora_loss"] > 0
    for n, p in unet.named_parameters():
        if id(p) not in adapter_ids:
            assert torch.equal(p, frozen_before[n]), n
            assert p.grad is None, n
    changed = sum(not torch.equal(p, q) for p, q in zip(copy.parameters(), adapter_before))
    assert changed >= len(adapter_before) // 2
    # LoRA B matrices started at zero: ε_φ now differs from the frozen model.
    x = torch.randn(1, 4, 16, 16)
    t = torch.tensor([500])
    text = guidance.prompts.conditional[:1]
    with torch.no_grad(), frozen_unet(unet):
        frozen = unet(x, t, encoder_hidden_states=text).sample
    adapted = copy.predict(x, t, text, camera_features(torch.eye(4)[None]))
    assert not torch.allclose(frozen, adapted)


def test_dsd_weights_follow_their_schedules(tiny_priors, orbit):
    config = fast_config("dsd", lambda_cfg=Ramp(10.0, 2.0), lambda_var=Ramp(0.5, 1.5))
    config.lora.train_steps = 0  # the weights alone are under test
    guidance = make_guidance(tiny_priors, config)
    first = guidance(render_batch(orbit, step=0, total=10)).diagnostics
    last = guidance(render_batch(orbit, step=10, total=10)).diagnostics
    assert (first["lambda_cfg"], first["lambda_var"]) == (10.0, 0.5)
    assert (last["lambda_cfg"], last["lambda_var"]) == (2.0, 1.5)


def test_timestep_range_anneals_from_high_to_low_noise():
    schedule = TimestepSchedule(t_range=(0.7, 0.85), t_range_end=(0.2, 0.5), anneal_until=0.4)
    assert schedule.range_at(0.0) == (0.7, 0.85)
    assert schedule.range_at(0.2) == pytest.approx((0.45, 0.675))
    assert schedule.range_at(1.0) == pytest.approx((0.2, 0.5))
    g = torch.Generator().manual_seed(0)
    early = schedule.sample(0.0, 256, 1000, g)
    late = schedule.sample(0.8, 256, 1000, g)
    assert early.min() >= 700 and early.max() <= 850
    assert late.min() >= 200 and late.max() <= 500


def test_non_finite_gradients_are_zeroed_and_clipped():
    grad = torch.tensor([float("nan"), float("inf"), -float("inf"), 3.0, -0.5])
    assert clean_gradient(grad, None).tolist() == [0.0, 0.0, 0.0, 3.0, -0.5]
    assert clean_gradient(grad, 1.0).tolist() == [0.0, 0.0, 0.0, 1.0, -0.5]


def test_view_suffix_follows_the_camera_around_the_front():
    el = torch.tensor([0.0, 0.0, 0.0, 0.0, 75.0])
    az = torch.tensor([10.0, 90.0, 180.0, -100.0, 180.0])
    names = [VIEW_DIRECTIONS[i] for i in view_directions(el, az, ViewPromptConfig())]
    assert names == ["front", "side", "back", "side", "overhead"]
    turned = [VIEW_DIRECTIONS[i] for i in view_directions(el, az, ViewPromptConfig(front_azimuth_deg=180.0))]
    assert turned[:3] == ["back", "side", "front"]


def test_prompt_embeddings_differ_by_view_direction(tiny_priors, orbit):
    prompts = encode_prompts(tiny_priors.text_to_image, "a red teapot", "blurry")
    cond, uncond = prompts.for_cameras(orbit([0.0, 0.0], [0.0, 180.0]))
    assert cond.shape[0] == uncond.shape[0] == 2
    assert not torch.allclose(cond[0], cond[1])
    assert torch.equal(uncond[0], uncond[1])


def test_release_takes_the_adapters_off_the_shared_unet(tiny_priors, orbit):
    unet = tiny_priors.text_to_image.unet
    guidance = make_guidance(tiny_priors, fast_config("bsd"))
    assert len(unet.peft_config) == 2
    guidance.release()
    assert not getattr(unet, "peft_config", {})
    # The frozen model still serves a fresh objective.
    out = make_guidance(tiny_priors, fast_config("sds"))(render_batch(orbit))
    assert torch.isfinite(out.loss)


def _is_a_special_case(config: ScoreDistillationConfig, progress: float) -> str | None:
    """Which objective DSD reduces to at this point of the stage (METHOD.md: VSD is λ_cfg = s−1, λ_var = 1;
    CSD is λ_var = 0), or None."""
    lam_cfg, lam_var = config.lambda_cfg.at(progress), config.lambda_var.at(progress)
    if abs(lam_var) < 1e-9:
        return "csd"
    if abs(lam_cfg - (config.guidance_scale - 1)) < 1e-6 and abs(lam_var - 1) < 1e-6:
        return "vsd"
    return None


def test_the_shipped_dsd_is_not_one_of_the_objectives_it_generalises():
    from dreampolish.backend.presets import get_preset

    configs = {"ScoreDistillationConfig()": ScoreDistillationConfig(objective="dsd")}
    configs.update({name: get_preset(name).texture.guidance for name in ("draft", "standard", "high")})
    for name, config in configs.items():
        assert config.objective == "dsd", name
        cases = [_is_a_special_case(config, p / 10) for p in range(1, 11)]
        assert cases == [None] * 10, f"{name}: DSD reduces to {cases}"
        # and over the stage as a whole: the mean CFG weight is below VSD's s − 1
        mean_cfg = sum(config.lambda_cfg.at(p / 100) for p in range(101)) / 101
        assert mean_cfg < config.guidance_scale - 1 - 0.5, name


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
def test_bsd_refinement_recovers_the_clean_latent_for_both_prediction_types(tiny_priors, prediction_type):
    # A teacher that knows the clean latent x0 exactly: the img2img refinement must land on x0 whatever the
    # checkpoint predicts (SD 2.1 at 768 px is v-prediction); the DDIM step is fed ε, not v.
    import dataclasses

    from diffusers import DDIMScheduler

    base = tiny_priors.text_to_image
    scheduler = DDIMScheduler.from_config(base.scheduler.config, prediction_type=prediction_type)
    models = dataclasses.replace(base, scheduler=scheduler)
    config = fast_config("bsd")
    config.bootstrap = BootstrapConfig(interval=1, train_steps=1, refine_t=0.8, refine_steps=8)
    guidance = ScoreDistillation(models, encode_prompts(models, "a red teapot", ""), config)
    x0 = 0.8 * torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(3))
    alphas = scheduler.alphas_cumprod

    def exact_eps(copy, x_t, t, text, camera):
        a = alphas[t].reshape(-1, 1, 1, 1)
        return (x_t - a.sqrt() * x0) / (1 - a).sqrt()

    refined = {}
    guidance._adapter_eps = exact_eps
    guidance.teacher.train_step = lambda x, *a, **k: refined.setdefault("x", x) is None or 0.0
    cond, uncond = guidance.prompts.conditional[:2], guidance.prompts.unconditional.expand(2, -1, -1)
    guidance._refresh_teacher(x0, cond, uncond, None)
    # DDIM's last step stops at timestep 0's noise level (√(1−ᾱ_0) ≈ 0.03 of noise left)
    assert (refined["x"].float() - x0).abs().mean() < 0.03
    guidance.release()


def test_an_fp16_vae_backward_keeps_small_render_gradients(tiny_model_root):
    # Cards without bf16 run the priors in fp16: a small render gradient must not vanish in the VAE backward.
    from diffusers import AutoencoderKL

    vae32 = AutoencoderKL.from_pretrained(tiny_model_root / "text_to_image", subfolder="vae").requires_grad_(False)
    vae16 = AutoencoderKL.from_pretrained(tiny_model_root / "text_to_image", subfolder="vae").requires_grad_(False)
    vae16 = vae16.half()
    rgb = torch.rand(1, 32, 32, 3, generator=torch.Generator().manual_seed(0))
    upstream = 1e-6 * torch.randn(1, 4, 16, 16, generator=torch.Generator().manual_seed(1))
    grads = []
    for vae in (vae32, vae16):
        x = rgb.clone().requires_grad_(True)
        latents = encode_render(vae, x, 32)
        (latents.float() * upstream).sum().backward()
        grads.append(x.grad.float())
    ref, half = grads
    assert half.abs().max() > 0
    cosine = F.cosine_similarity(ref.flatten(), half.flatten(), dim=0)
    assert cosine > 0.98 and (half.norm() / ref.norm() - 1).abs() < 0.05


def _lora_grads_of_one_step(root, dtype):
    from diffusers import DDIMScheduler, UNet2DConditionModel
    from dreampolish.backend.guidance.lora import VariationalCopy

    unet = UNet2DConditionModel.from_pretrained(root, subfolder="unet", torch_dtype=dtype).requires_grad_(False)
    scheduler = DDIMScheduler.from_pretrained(root, subfolder="scheduler")
    copy = VariationalCopy(unet, scheduler, LoraConfig(camera_conditioning=False), seed=0)
    with torch.no_grad():
        g = torch.Generator().manual_seed(0)
        for p in copy.lora_parameters:
            p.copy_(0.05 * torch.randn(p.shape, generator=g))
    seen = {}
    step = copy.optimizer.step

    def spy(*a, **k):
        # The fused AdamW unscales inside its kernel: GradScaler hands it the scale (and the inf check) as
        # device tensors, so what it steps on is the gradient divided by `grad_scale`.
        scale = getattr(copy.optimizer, "grad_scale", None)
        seen["scale"] = scale
        grad = torch.cat([p.grad.flatten().float() for p in copy.lora_parameters])
        seen["grad"] = grad if scale is None else grad / scale.float()
        return step(*a, **k)

    copy.optimizer.step = spy
    latents = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(1)).to(dtype)
    text = torch.randn(2, 77, unet.config.cross_attention_dim, generator=torch.Generator().manual_seed(2))
    copy.train_step(latents, text.to(dtype), None)
    if dtype == torch.float16:
        assert seen["scale"] is not None and copy.optimizer.defaults["fused"]
    return copy, seen["grad"]


def test_an_fp16_unet_trains_its_adapter_with_loss_scaling(tiny_model_root):
    root = tiny_model_root / "text_to_image"
    copy16, grad16 = _lora_grads_of_one_step(root, torch.float16)
    _, grad32 = _lora_grads_of_one_step(root, torch.float32)
    # the backward ran on a scaled loss, and the optimiser saw the unscaled gradient
    assert copy16.scaler.is_enabled() and copy16.scaler.get_scale() > 1
    assert F.cosine_similarity(grad16, grad32, dim=0) > 0.999
    assert (grad16.norm() / grad32.norm() - 1).abs() < 0.01
    assert all(p.dtype == torch.float32 and torch.isfinite(p).all() for p in copy16.lora_parameters)
