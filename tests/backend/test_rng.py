"""A job's modules start from its own seed, whatever another job in the process does meanwhile."""

from __future__ import annotations

import threading

import torch
from dreampolish.backend.stages.step import seeded_init


def _build(seed: int) -> torch.Tensor:
    with seeded_init(torch.Generator().manual_seed(seed)):
        return torch.nn.Linear(8, 8).weight.detach().clone()


def test_a_seeded_block_is_not_reseeded_by_another_thread():
    alone = _build(3)
    first_inside, second_inside, first_drew = threading.Event(), threading.Event(), threading.Event()
    got: dict[str, torch.Tensor] = {}

    def first() -> None:
        with seeded_init(torch.Generator().manual_seed(3)):
            first_inside.set()
            # Give the other job every chance to be inside its own seeded block now (it is, without the lock).
            second_inside.wait(0.5)
            got["first"] = torch.nn.Linear(8, 8).weight.detach().clone()
            first_drew.set()

    def second() -> None:
        first_inside.wait(5)
        with seeded_init(torch.Generator().manual_seed(11)):
            second_inside.set()
            first_drew.wait(0.5)
            got["second"] = torch.nn.Linear(8, 8).weight.detach().clone()

    threads = [threading.Thread(target=first), threading.Thread(target=second)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    torch.testing.assert_close(got["first"], alone, rtol=0, atol=0)
    torch.testing.assert_close(got["second"], _build(11), rtol=0, atol=0)


def test_the_global_rng_is_left_as_it_was():
    torch.manual_seed(5)
    expected = torch.rand(4)
    torch.manual_seed(5)
    _build(3)
    torch.testing.assert_close(torch.rand(4), expected, rtol=0, atol=0)
