"""The guidance's compiled model calls capture whole graphs (issue 28 item 2).

One step of each objective (text SDS, Zero123 SDS, DSD with its LoRA training step) runs on the CPU with the
tiny models through the functions production compiles (guidance/compiled.py), compiled here with
`fullgraph=True` and a backend that only counts the graphs it is handed and runs them eagerly: a graph break
raises, and no code is generated, so this costs Dynamo's tracing alone.
"""

from __future__ import annotations

import pytest
import torch
import torch._dynamo
from dreampolish.backend.guidance.base import GuidanceInput
from dreampolish.backend.guidance.compiled import GuidanceCompile
from dreampolish.backend.guidance.lora import LoraConfig
from dreampolish.backend.guidance.score_distillation import ScoreDistillation, ScoreDistillationConfig
from dreampolish.backend.guidance.text_prior import encode_prompts
from dreampolish.backend.guidance.zero123 import ReferenceView, Zero123Guidance

SIZE = 32


class GraphCounter:
    """A torch.compile backend: records each captured graph's ops and runs it as traced (no compiler)."""

    def __init__(self) -> None:
        self.graphs: list[list[str]] = []

    def __call__(self, gm: torch.fx.GraphModule, example_inputs: list) -> object:
        self.graphs.append([str(n.target) for n in gm.graph.nodes if n.op in ("call_function", "call_module",
                                                                               "call_method")])
        return gm.forward


@pytest.fixture
def counter():
    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    yield GraphCounter()
    torch._dynamo.reset()


def full_graphs(counter: GraphCounter) -> GuidanceCompile:
    return GuidanceCompile(enabled=True, backend=counter, fullgraph=True)


def renders(orbit) -> GuidanceInput:
    rgb = torch.rand(2, SIZE, SIZE, 3, generator=torch.Generator().manual_seed(0)).requires_grad_(True)
    return GuidanceInput(rgb=rgb, opacity=torch.ones(2, SIZE, SIZE, 1), cameras=orbit([10.0, 30.0], [0.0, 120.0]))


def one_step(guidance, inp: GuidanceInput) -> None:
    out = guidance(inp)
    out.loss.backward()  # the render gradient leaves the VAE encoder's graph
    assert torch.isfinite(out.loss) and inp.rgb.grad.abs().sum() > 0


def assert_no_breaks(counter: GraphCounter, graphs: int) -> None:
    breaks = dict(torch._dynamo.utils.counters["graph_break"])
    assert not breaks, breaks
    assert len(counter.graphs) == graphs, [len(g) for g in counter.graphs]
    # each captured graph holds a whole model call, not a fragment of one
    assert all(sum("conv" in op for op in ops) >= 2 for ops in counter.graphs), [len(g) for g in counter.graphs]


@pytest.mark.slow  # see BENCHMARKS.md, Test durations
def test_text_sds_step_compiles_to_whole_graphs(tiny_priors, orbit, counter):
    models = tiny_priors.text_to_image
    guidance = ScoreDistillation(models, encode_prompts(models, "a red teapot", ""),
                                 ScoreDistillationConfig(objective="sds"), full_graphs(counter))
    one_step(guidance, renders(orbit))
    assert_no_breaks(counter, graphs=2)  # VAE encoder, frozen CFG pair


@pytest.mark.slow  # see BENCHMARKS.md, Test durations
def test_dsd_step_and_its_lora_training_compile_to_whole_graphs(tiny_priors, orbit, counter):
    models = tiny_priors.text_to_image
    config = ScoreDistillationConfig(objective="dsd", lora=LoraConfig(train_steps=1))
    guidance = ScoreDistillation(models, encode_prompts(models, "a red teapot", ""), config, full_graphs(counter))
    before = [p.detach().clone() for p in guidance.variational.parameters()]
    one_step(guidance, renders(orbit))
    assert_no_breaks(counter, graphs=4)  # VAE encoder, frozen CFG pair, ε_φ, the adapter's diffusion loss
    assert any(not torch.equal(p, q) for p, q in zip(guidance.variational.parameters(), before))
    guidance.release()


@pytest.mark.slow  # see BENCHMARKS.md, Test durations
def test_zero123_step_compiles_to_whole_graphs(tiny_priors, orbit, counter):
    yy, xx = torch.meshgrid(torch.linspace(-1, 1, SIZE), torch.linspace(-1, 1, SIZE), indexing="ij")
    mask = ((xx**2 + yy**2) < 0.5).float()[..., None]
    rgb = torch.stack([0.8 * torch.ones_like(xx), 0.3 + 0.2 * xx, 0.2 * torch.ones_like(xx)], dim=-1)
    guidance = Zero123Guidance(tiny_priors.zero123, rgb, mask, ReferenceView(0.0, 0.0, 3.8),
                               compile=full_graphs(counter))
    one_step(guidance, renders(orbit))
    assert_no_breaks(counter, graphs=2)  # VAE encoder, CFG pair with the reference latent


@pytest.mark.parametrize(("choice", "device", "enabled"), [
    ("auto", "cuda", True), ("auto", "cpu", False), ("auto", "meta", False),
    ("on", "cpu", True), ("on", "meta", False), ("off", "cuda", False),
])
def test_compilation_is_on_for_cuda_unless_the_preset_turns_it_off(choice, device, enabled):
    assert GuidanceCompile.choose(choice, device).enabled is enabled
