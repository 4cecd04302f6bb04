"""The add-on's properties, grouped: what the artist asks for lives on the scene (saved in the
.blend); connection and job state live on the window manager (runtime only, never saved)."""

from __future__ import annotations

import bpy
from bpy.props import (
    BoolProperty,
    CollectionProperty,
    EnumProperty,
    FloatProperty,
    IntProperty,
    PointerProperty,
    StringProperty,
)

from . import stage_choices
from .protocol.job import MAX_VARIANTS
from .reference_image import SOURCES as REFERENCE_SOURCES

BACKEND_DEFAULT = "BACKEND_DEFAULT"
"""The preset item that sends the backend's own default (what `serve --preset` announced)."""

_preset_items_cache: list[tuple[str, str, str, int]] = []


def available_presets() -> list[str]:
    """The presets the connected backend announced (none before a connection)."""
    from . import bridge  # the welcome message of the current connection lists the presets

    welcome = bridge.current_welcome()
    return list(welcome.presets) if welcome is not None else []


def _announced_default() -> str:
    from . import bridge

    welcome = bridge.current_welcome()
    return welcome.default_preset if welcome is not None else ""


def preset_memory_gb() -> dict[str, float]:
    """GPU memory each preset needs on the backend's card (welcome.preset_memory_gb; empty before a
    connection, from a backend that does not say, and from one without a card)."""
    from . import bridge

    welcome = bridge.current_welcome()
    return dict(getattr(welcome, "preset_memory_gb", None) or {}) if welcome is not None else {}


def preset_label(name: str, memory: dict[str, float]) -> tuple[str, str]:
    """(label, tooltip) of a preset in the dropdown: with the GPU memory it needs, where the backend says."""
    gb = memory.get(name)
    if gb is None:
        return name, f"Backend preset {name!r}"
    return f"{name} · {gb:.1f} GB", f"Backend preset {name!r}: needs about {gb:.1f} GB of the backend's GPU memory"


def _preset_items(self, context):
    default = _announced_default()
    memory = preset_memory_gb()
    shown = preset_label(default, memory)[0] if default else ""
    items = [(BACKEND_DEFAULT, f"Backend Default ({shown})" if default else "Backend Default",
              "The preset the backend was started with", 0)]
    items += [(p, *preset_label(p, memory), i + 1) for i, p in enumerate(available_presets())]
    # Blender keeps only pointers to these strings: hold the list at module level.
    _preset_items_cache[:] = items
    return _preset_items_cache


def _get_preset(self) -> int:
    # The choice is stored by name (preset_name): a dynamic enum's stored number would point at
    # another preset as soon as a backend announces a different list.
    names = [item[0] for item in _preset_items(self, None)]
    return names.index(self.preset_name) if self.preset_name in names else 0


def _set_preset(self, value: int) -> None:
    names = [item[0] for item in _preset_items(self, None)]
    name = names[value] if 0 <= value < len(names) else BACKEND_DEFAULT
    self.preset_name = "" if name == BACKEND_DEFAULT else name




# -- the stages: the connected backend's (stage_choices.py), chosen by name -------------------------------
# Like the preset, a stage choice is stored by name (run_until_name ...): the items come from the backend's
# welcome, and an item's number would point at another stage as soon as a backend announces other chains.

_stage_items_cache: list[tuple[str, str, str, int]] = []
_stage_flag_items_cache: list[tuple[str, str, str, int]] = []


def _stage_items(self, context):
    _stage_items_cache[:] = [(s, s.capitalize(), f"The {s} stage", i)
                             for i, s in enumerate(stage_choices.announced_stages())]
    return _stage_items_cache  # Blender keeps only pointers to these strings


def _stage_flag_items(self, context):
    _stage_flag_items_cache[:] = [(s, s.capitalize(), f"The {s} stage", 1 << i)
                                  for i, s in enumerate(stage_choices.announced_stages())]
    return _stage_flag_items_cache


def _index_getter(name_prop: str, fallback):
    def get(self) -> int:
        stages = stage_choices.announced_stages()
        name = getattr(self, name_prop) or fallback()
        return stages.index(name) if name in stages else max(len(stages) - 1, 0)
    return get


def _index_setter(name_prop: str):
    def set_(self, value: int) -> None:
        stages = stage_choices.announced_stages()
        if 0 <= value < len(stages):
            setattr(self, name_prop, stages[value])
    return set_


def _get_pause_after(self) -> int:
    stages = stage_choices.announced_stages()
    chosen = set(self.pause_after_names.split(",")) if self.pause_after_names else set()
    return sum(1 << i for i, s in enumerate(stages) if s in chosen)


def _set_pause_after(self, value: int) -> None:
    self.pause_after_names = ",".join(s for i, s in enumerate(stage_choices.announced_stages()) if value & (1 << i))


class DreamPolishSceneSettings(bpy.types.PropertyGroup):
    """What to make and how; saved with the scene."""

    prompt: StringProperty(name="Prompt", description="What to make (or what the selected mesh is); optional "
                           "with a reference image", default="")
    reference_source: EnumProperty(
        name="Reference", description="Where the reference view comes from; an image is seen from the active "
        "camera", items=REFERENCE_SOURCES, default="NONE")
    reference_image: PointerProperty(
        name="Reference Image", type=bpy.types.Image,
        description="The artist's picture of the object, seen from the active camera (transparency is its mask)")
    negative_prompt: StringProperty(name="Negative", description="What to avoid", default="")
    seed: IntProperty(name="Seed", description="Seed of every random choice", default=0, min=0)
    preset: EnumProperty(name="Preset", description="Backend preset (quality vs. time); the backend announces them",
                         items=_preset_items, get=_get_preset, set=_set_preset)
    preset_name: StringProperty(name="Preset Name", description="The chosen preset; empty: the backend's default",
                                default="")
    run_until: EnumProperty(
        name="Run Up To", description="Last stage to run (each stage starts from the one before it); "
        "a refine starts at its own first stage. The backend lists its stages",
        items=_stage_items, get=_index_getter("run_until_name", stage_choices.default_run_until),
        set=_index_setter("run_until_name"),
    )
    run_until_name: StringProperty(name="Run Up To Stage", description="The chosen last stage; empty: all of "
                                   "them", default="")
    pause_after: EnumProperty(
        name="Pause After", description="Stop after these stages so the mesh can be edited before resuming "
        "(only stages the job runs count)",
        items=_stage_flag_items, options={"ENUM_FLAG"}, get=_get_pause_after, set=_set_pause_after,
    )
    pause_after_names: StringProperty(name="Pause After Stages", description="The chosen stage gates, comma "
                                      "separated", default="")
    variants: IntProperty(
        name="Variants", description="Seeds Generate Variants tries side by side (Seed, Seed + 1, …); each "
        "stops after Stop After for you to pick one to continue",
        default=2, min=2, max=MAX_VARIANTS,
    )
    variants_up_to: EnumProperty(
        name="Stop After", description="The stage after which the variants wait for your pick",
        items=_stage_items, get=_index_getter("variants_up_to_name", lambda: ""),
        set=_index_setter("variants_up_to_name"),
    )
    variants_up_to_name: StringProperty(name="Stop After Stage", description="The stage the variants stop "
                                        "after (DMTet when the backend has one and nothing was chosen)",
                                        default="dmtet")
    refine_mode: EnumProperty(
        name="Refine", description="What Refine Selected does",
        items=[
            ("geometry", "Geometry + Texture", "Polish the selected mesh's surface, then texture it"),
            ("texture", "Texture Only", "Keep the mesh and its UVs; bake a texture onto them"),
        ],
        default="geometry",
    )
    # -- a masked refine (refine_mask.py): a vertex group of the selected mesh, its border and prompts
    mask_group: StringProperty(
        name="Mask", description="Refine only this vertex group of the selected mesh (assign it in Edit Mode or "
        "paint it in Weight Paint); empty refines the whole object. Outside the group and its border nothing "
        "changes", default="")
    mask_feather: FloatProperty(
        name="Border", description="Width of the border around the mask where the change fades out (0: a hard "
        "edge); at most the object's size", default=0.0, min=0.0, soft_max=1.0, subtype="DISTANCE", unit="LENGTH")
    mask_prompt: StringProperty(
        name="Region Prompt", description="What the masked region becomes (e.g. 'worn brass'); empty uses the "
        "prompt", default="")
    mask_negative_prompt: StringProperty(
        name="Region Negative", description="What the masked region should not become; empty uses the negative "
        "prompt", default="")
    texture_sets: IntProperty(
        name="Texture Sets", description="How many texture sets Texture Sets makes (seeds Seed, Seed + 1, …)",
        default=3, min=2, max=8)
    texture_set_prompts: StringProperty(
        name="Set Prompts", description="One prompt per texture set, separated by ';' (e.g. 'red paint; blue "
        "paint; bare wood'): as many sets as prompts; empty: Texture Sets seeds of the prompt", default="")
    texture_faces: EnumProperty(
        name="Texture Faces", description="Which faces show a Texture Only refine's texture",
        items=[
            ("ACTIVE_SLOT", "Active Slot", "The faces of the object's active material slot: the texture takes "
             "that slot, and the material it held stays in the file (kept with a fake user)"),
            ("ALL", "All Faces", "Every face, through a slot of its own: your materials stay in their slots"),
        ],
        default="ACTIVE_SLOT",
    )
    import_mode: EnumProperty(
        name="Import", description="How stage results appear in the scene",
        items=[
            ("update", "Update One Object", "One object per job, updated in place by each stage"),
            ("per_stage", "Object per Stage", "Keep every stage's mesh in the job's collection"),
        ],
        default="update",
    )
    placement: EnumProperty(
        name="Place At", description="Where Generate puts the new object",
        items=[
            ("CAMERA", "Camera View", "Where the centre of the active camera's view meets the scene (at its focus "
             "object or focus distance when its depth of field is on)"),
            ("CURSOR", "3D Cursor", "At the 3D cursor, turned to the active camera as its reference view shows it"),
        ],
        default="CAMERA",
    )
    rest_on_surface: BoolProperty(
        name="Rest on Surface",
        description="Stand the new object on the surface below the placement point instead of centring it "
        "on the point (nothing of it goes under the surface)",
        default=True,
    )
    size_mode: EnumProperty(
        name="Size", description="How large Generate makes the new object",
        items=[
            ("VIEW", "Fill the View", "As large as fills the active camera's frame at the placement distance"),
            ("SET", "Set Size", "The size in metres set below (the object's largest extent at most)"),
        ],
        default="VIEW",
    )
    object_size: FloatProperty(
        name="Object Size", description="The new object's size in metres: the diameter of the sphere it fits in",
        default=1.0, min=0.01, max=1000.0, soft_max=20.0, subtype="DISTANCE", unit="LENGTH",
    )
    camera_collection: PointerProperty(
        name="Rig Cameras", type=bpy.types.Collection,
        description="Cameras of this collection join the active camera in the camera rig",
    )
    overrides: StringProperty(
        name="Overrides",
        description="Preset overrides for this job, as stage.field=value separated by commas "
        "(e.g. nerf.steps=500, texture.guidance.objective=sds)",
        default="",
    )
    game_ready: BoolProperty(
        name="Game-ready",
        description="Also remesh the polished object to a face budget, with UVs made for it, the polished detail "
        "in a normal map and optional levels of detail (the backend's finish stage)",
        default=False,
    )
    game_faces: IntProperty(
        name="Faces", description="The face budget, counted as Blender counts faces (a quad is one face)",
        default=3000, min=500, max=1_000_000, soft_max=50_000,
    )
    game_quads: BoolProperty(name="Quads", description="Quad-dominant faces (off: triangles)", default=True)
    game_lods: IntProperty(
        name="LODs", description="Levels of detail made beside the object, each half the faces of the one before",
        default=0, min=0, max=3,
    )
    orbit_views: IntProperty(
        name="Orbit Views", description="Cameras of the default orbit used when the scene has no camera",
        default=4, min=1, max=32,
    )


class DreamPolishHistoryItem(bpy.types.PropertyGroup):
    """One job of the history list."""

    job_id: StringProperty(name="Job")
    prompt: StringProperty(name="Prompt")
    seed: IntProperty(name="Seed")
    preset: StringProperty(name="Preset")
    mode: StringProperty(name="Mode")
    status: StringProperty(name="Status")
    last_stage: StringProperty(name="Last Stage", description="Latest stage result received")


class DreamPolishJobItem(bpy.types.PropertyGroup):
    """One job this window follows (the panel's job list)."""

    job_id: StringProperty(name="Job")
    prompt: StringProperty(name="Prompt")
    state: StringProperty(name="State")
    stage: StringProperty(name="Stage")
    progress: FloatProperty(name="Stage Progress", subtype="FACTOR", min=0.0, max=1.0)
    paused_stage: StringProperty(name="Paused After")


class DreamPolishRuntime(bpy.types.PropertyGroup):
    """Connection and job state; lives on the window manager, so it is never saved in a .blend."""

    connection: EnumProperty(
        name="Connection",
        items=[
            ("disconnected", "Disconnected", ""),
            ("connecting", "Connecting", ""),
            ("connected", "Connected", ""),
            ("error", "Error", ""),
        ],
        default="disconnected",
    )
    device: StringProperty(name="Device", description="The backend's compute device")
    message: StringProperty(name="Message", description="Last status or error message")
    failure: StringProperty(name="Failure", description="The latest failure, shown until the next job starts")
    job_id: StringProperty(name="Job", description="The job this window follows")
    job_state: StringProperty(name="State", default="")
    stage: StringProperty(name="Stage")
    step: IntProperty(name="Step")
    total: IntProperty(name="Total")
    progress: FloatProperty(name="Progress", subtype="FACTOR", min=0.0, max=1.0)
    overall: FloatProperty(name="Overall", description="Progress of the whole job", subtype="FACTOR",
                           min=0.0, max=1.0)
    eta_s: FloatProperty(name="Time Left", description="Estimated seconds until the job ends; negative: unknown",
                         default=-1.0)
    last_seq: IntProperty(name="Last Event", description="Sequence number of the job's latest event seen")
    paused_stage: StringProperty(name="Paused After")
    target_object: StringProperty(
        name="Target", description="Object that receives this job's results (texture-only refine)")
    preview: PointerProperty(name="Preview", type=bpy.types.Image)
    jobs: CollectionProperty(type=DreamPolishJobItem, description="Jobs followed; the latest one is shown in full")
    history: CollectionProperty(type=DreamPolishHistoryItem)
    history_index: IntProperty(name="History Index", default=0)
    backend_running: BoolProperty(name="Local Backend Running", default=False)


classes = (DreamPolishSceneSettings, DreamPolishHistoryItem, DreamPolishJobItem, DreamPolishRuntime)


def register_properties() -> None:
    bpy.types.Scene.dreampolish = PointerProperty(type=DreamPolishSceneSettings)
    bpy.types.WindowManager.dreampolish = PointerProperty(type=DreamPolishRuntime)


def unregister_properties() -> None:
    del bpy.types.WindowManager.dreampolish
    del bpy.types.Scene.dreampolish
