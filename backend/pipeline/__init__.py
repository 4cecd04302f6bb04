"""The DreamPolish pipeline as a package (pipeline.py tells the run step by step):

    pipeline.py           DreamPolishPipeline: the request checks and the numbered `run`
    runners.py            one StageRunner per stage (run + restore + result), listed once in STAGE_RUNNERS
    context.py            what a runner gets: JobSetup, StageCarry, StageContext
    frame.py              the job's object frame and cameras
    priors.py             where guidance comes from: DiffusionPriors, OraclePriors
    previews.py           progress and preview images of a running stage
    checkpoint_format.py  meshes and payloads as checkpoint entries
"""

from .context import JobSetup, StageCarry, StageContext
from .frame import JobFrame, camera_in_object_frame, front_camera, job_frame
from .pipeline import DreamPolishPipeline, stage_seed
from .previews import StageProgress, render_preview, rig_camera
from .priors import CombinedGuidance, DiffusionPriors, OraclePriors, PriorSource
from .runners import STAGE_RUNNERS, GeometryRunner, StageRunner

__all__ = [
    "STAGE_RUNNERS", "CombinedGuidance", "DiffusionPriors", "DreamPolishPipeline", "GeometryRunner", "JobFrame",
    "JobSetup", "OraclePriors", "PriorSource", "StageCarry", "StageContext", "StageProgress", "StageRunner",
    "camera_in_object_frame", "front_camera", "job_frame", "render_preview", "rig_camera", "stage_seed",
]
