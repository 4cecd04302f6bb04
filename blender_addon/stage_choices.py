"""The stages the artist can choose (Run Up To, Pause After, Stop After), as the connected backend
announced them: its welcome's `stage_chains` (each mode's chain, in order, from the pipeline's runners).
The add-on keeps no list of stages of its own; before a welcome there is nothing to choose."""

from __future__ import annotations

from .protocol.errors import ValidationError

NOT_CONNECTED = "Connect to the backend to choose stages: it lists its own"
NO_CHAINS = "This backend does not list its stages (protocol 1.0): every job runs all of its mode's stages"


def _welcome():
    from . import bridge  # bridge imports the add-on's UI modules; read the welcome at call time

    return bridge.current_welcome()


def why_no_choice() -> str:
    """Why no stage can be chosen now ("" when the backend announced its stages)."""
    welcome = _welcome()
    if welcome is None:
        return NOT_CONNECTED
    return "" if welcome.stage_chains else NO_CHAINS


def announced_stages() -> list[str]:
    """Every stage the backend's chains name, in chain order (generate's first); [] before a welcome."""
    welcome = _welcome()
    chains = welcome.stage_chains if welcome is not None else {}
    ordered = list(chains.get("generate", []))
    for chain in chains.values():
        ordered += [s for s in chain if s not in ordered]
    return ordered


def mode_chain(mode: str) -> list[str]:
    """The stages a job of `mode` runs, in order, as announced (ValidationError saying why when none are)."""
    reason = why_no_choice()
    if reason:
        raise ValidationError(reason)
    welcome = _welcome()
    chain = list(welcome.stage_chains.get(mode, []))
    if not chain:
        raise ValidationError(f"this backend runs no {mode} jobs (its stages: {', '.join(announced_stages())})")
    return chain


def default_run_until() -> str:
    """Run Up To when the artist has chosen nothing: the generate chain's last stage ("" before a welcome)."""
    stages = announced_stages()
    return stages[-1] if stages else ""


def stage_plan(mode: str, run_until: str) -> list[str]:
    """The stages a job of `mode` runs when the artist asks to run up to `run_until` ("" or the chain's
    last stage: all of them)."""
    chain = mode_chain(mode)
    if not run_until:
        return chain
    if run_until not in chain:
        first = chain[0].capitalize()
        raise ValidationError(
            f"Run Up To is {run_until.capitalize()}, before a {mode} refine's first stage ({first}): pick "
            f"{first} or a later stage")
    return chain[: chain.index(run_until) + 1]
